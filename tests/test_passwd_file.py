"""Tests for the passwd-file and static drivers."""

from __future__ import annotations

import os

from twisted.trial import unittest

from authd.drivers import passwd_file, static
from authd.interfaces import AuthBackendError, AuthRequest, IPassdb, IUserdb, PassdbStatus

SAMPLE = """\
# comment
alice:{PLAIN}secret:1000:1000::/home/alice::userdb_mail=maildir:~/Maildir userdb_quota_rule=*:storage=1G allow_nets=127.0.0.0/8
bob:{SHA256.HEX}2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b
carol::::::: nopassword
dave:secret:2000
eve:{PLAIN}x::::/home/%u::nologin reason=go\\ away
"""


class ParseTests(unittest.TestCase):
    def test_parse(self) -> None:
        entries = passwd_file.parse_text(SAMPLE)
        self.assertEqual(sorted(entries), ["alice", "bob", "carol", "dave", "eve"])
        alice = entries["alice"]
        self.assertEqual((alice.uid, alice.gid, alice.home), ("1000", "1000", "/home/alice"))
        self.assertEqual(alice.extra["userdb_mail"], "maildir:~/Maildir")
        self.assertEqual(alice.extra["userdb_quota_rule"], "*:storage=1G")
        self.assertEqual(entries["carol"].extra, {"nopassword": ""})
        self.assertEqual(entries["bob"].uid, "")
        self.assertEqual((entries["dave"].password, entries["dave"].uid), ("secret", "2000"))

    def test_blank_and_comment(self) -> None:
        self.assertIsNone(passwd_file.parse_line("   "))
        self.assertIsNone(passwd_file.parse_line("# x:y"))


class DbTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "users")
        self.write(SAMPLE)
        self.db = passwd_file.PasswdFileDb(f"scheme=PLAIN {self.path}")
        self.req = AuthRequest(user="alice", service="imap", remote_ip="127.0.0.1")

    def write(self, text: str, path: str | None = None) -> None:
        with open(path or self.path, "w") as f:
            f.write(text)

    def verify(self, user: str, password: str):
        return self.successResultOf(self.db.verify_plain(user, password, self.req))

    def test_interfaces(self) -> None:
        self.assertTrue(IPassdb.providedBy(self.db))
        self.assertTrue(IUserdb.providedBy(self.db))

    def test_verify(self) -> None:
        result = self.verify("alice", "secret")
        self.assertEqual(result.status, PassdbStatus.OK)
        self.assertEqual(result.allow_nets, ["127.0.0.0/8"])
        self.assertEqual(
            result.userdb_fields(),
            {
                "mail": "maildir:~/Maildir",
                "quota_rule": "*:storage=1G",
                "uid": "1000",
                "gid": "1000",
                "home": "/home/alice",
            },
        )
        self.assertEqual(self.verify("alice", "wrong").status, PassdbStatus.PASSWORD_MISMATCH)
        self.assertEqual(self.verify("nobody", "x").status, PassdbStatus.USER_UNKNOWN)
        self.assertEqual(self.verify("bob", "secret").status, PassdbStatus.OK)
        self.assertEqual(self.verify("dave", "secret").status, PassdbStatus.OK)  # scheme=PLAIN
        self.assertEqual(self.verify("carol", "anything").status, PassdbStatus.OK)
        self.assertTrue(self.verify("eve", "x").nologin)

    def test_userdb(self) -> None:
        fields = self.successResultOf(self.db.lookup("alice", self.req))
        self.assertEqual(
            fields,
            {
                "uid": "1000",
                "gid": "1000",
                "home": "/home/alice",
                "mail": "maildir:~/Maildir",
                "quota_rule": "*:storage=1G",
            },
        )
        self.assertEqual(self.successResultOf(self.db.lookup("bob", self.req)), {})
        self.assertIsNone(self.successResultOf(self.db.lookup("nobody", self.req)))

    def test_reread_on_change(self) -> None:
        self.assertEqual(self.verify("alice", "secret").status, PassdbStatus.OK)
        self.write("alice:{PLAIN}newpass\n")
        self.assertEqual(self.verify("alice", "newpass").status, PassdbStatus.OK)
        self.assertEqual(self.verify("bob", "secret").status, PassdbStatus.USER_UNKNOWN)

    def test_missing_file_is_internal_failure(self) -> None:
        db = passwd_file.PasswdFileDb(os.path.join(self.dir, "nope"))
        result = self.successResultOf(db.verify_plain("alice", "x", self.req))
        self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertIn("nope", result.error)
        self.failureResultOf(db.lookup("alice", self.req), AuthBackendError)

    def test_per_domain_files(self) -> None:
        self.write("alice@example.org:{PLAIN}pw1\n", os.path.join(self.dir, "example.org"))
        self.write("alice:{PLAIN}pw2\n", os.path.join(self.dir, "example.net"))
        db = passwd_file.PasswdFileDb(os.path.join(self.dir, "%d"))
        ok = self.successResultOf(db.verify_plain("alice@example.org", "pw1", self.req))
        self.assertEqual(ok.status, PassdbStatus.OK)
        db = passwd_file.PasswdFileDb("username_format=%n " + os.path.join(self.dir, "%Ld"))
        ok = self.successResultOf(db.verify_plain("alice@EXAMPLE.net", "pw2", self.req))
        self.assertEqual(ok.status, PassdbStatus.OK)
        unknown = self.successResultOf(db.verify_plain("alice@other.org", "pw2", self.req))
        self.assertEqual(unknown.status, PassdbStatus.USER_UNKNOWN)

    def test_crypt_hash_verified_in_thread(self) -> None:
        self.write("zed:{BLF-CRYPT}$2y$05$VGyHNgLhe.akdtFugjDr6u6wT94.LB1IMTaTuKE/2fieV.tErgNcu\n")
        d = self.db.verify_plain("zed", "secret", self.req)
        d.addCallback(lambda r: self.assertEqual(r.status, PassdbStatus.OK))
        return d

    def test_bad_hash_is_internal_failure(self) -> None:
        self.write("zed:{NOSUCH}abc\n")
        self.assertEqual(self.verify("zed", "abc").status, PassdbStatus.INTERNAL_FAILURE)

    def test_lookup_credentials(self) -> None:
        result = self.successResultOf(self.db.lookup_credentials("alice", "SHA256", self.req))
        self.assertEqual(result.credentials, "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=")
        result = self.successResultOf(self.db.lookup_credentials("bob", "PLAIN", self.req))
        self.assertEqual(result.status, PassdbStatus.SCHEME_NOT_AVAILABLE)


class StaticTests(unittest.TestCase):
    def test_userdb(self) -> None:
        db = static.StaticUserdb("uid=vmail gid=vmail home=/var/vmail/%d/%n allow_all_users=yes")
        req = AuthRequest(user="alice@example.org")
        fields = self.successResultOf(db.lookup("alice@example.org", req))
        self.assertEqual(
            fields, {"uid": "vmail", "gid": "vmail", "home": "/var/vmail/example.org/alice"}
        )

    def test_passdb(self) -> None:
        db = static.StaticPassdb("password=secret")
        req = AuthRequest(user="x")
        self.assertTrue(self.successResultOf(db.verify_plain("x", "secret", req)).ok)
        self.assertFalse(self.successResultOf(db.verify_plain("x", "nope", req)).ok)
        db = static.StaticPassdb("nopassword")
        self.assertTrue(self.successResultOf(db.verify_plain("x", "", req)).ok)
