"""Mailbox attributes (RFC 5464 entries) in the Maildir storage and the fake.

Round-trips, entry-name checks, limits, RENAME/DELETE, the one-time
migration of pydovecot's older files, crash safety (a writer killed with
SIGKILL mid-write never leaves a torn or half-written value, and its
dotlock does not block the next writer), and interop with Debian's
Dovecot (``doveadm mailbox metadata`` on the same home with
``mail_attribute_dict = file:%h/dovecot-attributes``).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from pydovecot.storage import attributes as A
from pydovecot.storage.interfaces import (
    AttributeTooLarge,
    MailboxNotFound,
    StorageError,
    TooManyAttributes,
)
from pydovecot.storage.maildir import MaildirStorage, uidlist_guid
from tests.dovecot_local import LocalDovecot
from tests.imap_fakes import FakeStorage
from tests.storage_now import now


class _Semantics:
    """What every IMailStorage must do with attributes."""

    def make(self):
        raise NotImplementedError

    def test_round_trip(self) -> None:
        s = self.make()
        s.create("Foo")
        self.assertIsNone(s.get_attribute("Foo", "/private/comment"))
        value = b"line1\r\nline2\ttab \x01 \x00 end"
        s.set_attribute("Foo", "/private/Comment", value)
        self.assertEqual(s.get_attribute("Foo", "/private/comment"), value)
        self.assertEqual(s.get_attribute("Foo", "/PRIVATE/COMMENT"), value)
        s.set_attribute("Foo", "/shared/comment", b"shared")
        s.set_attribute("Foo", "/private/vendor/example.com/a/b", b"deep")
        s.set_attribute("Foo", "/private/commentary", b"other")
        self.assertEqual(s.attribute_keys("Foo"), [
            "/private/comment", "/private/commentary", "/private/vendor/example.com/a/b",
            "/shared/comment"])
        self.assertEqual(s.attribute_keys("Foo", "/private/comment"), ["/private/comment"])
        self.assertEqual(s.attribute_keys("Foo", "/shared"), ["/shared/comment"])
        self.assertEqual(s.attribute_keys("Foo", "/private/vendor/"),
                         ["/private/vendor/example.com/a/b"])
        self.assertEqual(s.get_attribute("INBOX", "/private/comment"), None)
        s.set_attribute("Foo", "/private/comment", None)
        self.assertIsNone(s.get_attribute("Foo", "/private/comment"))
        s.set_attribute("Foo", "/private/comment", None)  # deleting nothing is fine
        self.assertNotIn("/private/comment", s.attribute_keys("Foo"))

    def test_server_entries_are_not_inbox_entries(self) -> None:
        s = self.make()
        s.set_attribute("", "/private/comment", b"server")
        s.set_attribute("INBOX", "/private/comment", b"inbox")
        self.assertEqual(s.get_attribute("", "/private/comment"), b"server")
        self.assertEqual(s.get_attribute("INBOX", "/private/comment"), b"inbox")
        self.assertEqual(s.attribute_keys(""), ["/private/comment"])
        self.assertEqual(s.attribute_keys("INBOX"), ["/private/comment"])

    def test_rename_keeps_delete_drops(self) -> None:
        s = self.make()
        s.create("A/B")
        s.set_attribute("A", "/private/comment", b"parent")
        s.set_attribute("A/B", "/shared/comment", b"child")
        s.rename("A", "Z")
        self.assertEqual(s.get_attribute("Z", "/private/comment"), b"parent")
        self.assertEqual(s.get_attribute("Z/B", "/shared/comment"), b"child")
        s.delete("Z/B")
        s.create("Z/B")
        self.assertEqual(s.attribute_keys("Z/B"), [])
        self.assertEqual(s.get_attribute("Z", "/private/comment"), b"parent")

    def test_missing_mailbox(self) -> None:
        s = self.make()
        for call in (lambda: s.get_attribute("Nope", "/private/comment"),
                     lambda: s.set_attribute("Nope", "/private/comment", b"x"),
                     lambda: s.attribute_keys("Nope")):
            self.assertRaises(MailboxNotFound, call)

    def test_bad_entry_names(self) -> None:
        s = self.make()
        for key in ("/private", "/private/", "/other/x", "private/x", "/private/a//b",
                    "/private/a/", "/private/a*", "/private/a%", "/private/a\nb",
                    "/private/" + "x" * 1100):
            with self.assertRaises(StorageError, msg=key) as cm:
                s.set_attribute("INBOX", key, b"v")
            self.assertEqual(cm.exception.code, "CANNOT")

    def test_limits(self) -> None:
        s = self.make()
        s.configure({"mail_attribute_max_value_size": "10", "mail_attribute_max_entries": "3"})
        with self.assertRaises(AttributeTooLarge) as cm:
            s.set_attribute("INBOX", "/private/a", b"x" * 11)
        self.assertEqual(cm.exception.code, "METADATA MAXSIZE 10")
        for name in "abc":
            s.set_attribute("INBOX", f"/private/{name}", b"x" * 10)
        with self.assertRaises(TooManyAttributes) as cm2:
            s.set_attribute("INBOX", "/private/d", b"x")
        self.assertEqual(cm2.exception.code, "METADATA TOOMANY")
        s.set_attribute("INBOX", "/private/a", b"replaced")  # not a new entry
        self.assertEqual(s.get_attribute("INBOX", "/private/a"), b"replaced")
        self.assertEqual(s.attribute_keys("INBOX"), ["/private/a", "/private/b", "/private/c"])

    def test_default_limits(self) -> None:
        s = self.make()
        limit = A.AttributeLimits().max_value_size
        self.assertEqual(limit, 65536)
        s.set_attribute("INBOX", "/private/big", b"\n" * limit)
        self.assertEqual(s.get_attribute("INBOX", "/private/big"), b"\n" * limit)
        self.assertRaises(AttributeTooLarge, s.set_attribute, "INBOX", "/private/big",
                          b"x" * (limit + 1))


class FakeAttributeTests(_Semantics, unittest.TestCase):
    def make(self) -> FakeStorage:
        return now(FakeStorage())


class MaildirAttributeTests(_Semantics, unittest.TestCase):
    def make(self) -> MaildirStorage:
        self.home = os.path.abspath(self.mktemp())
        self.root = os.path.join(self.home, "Maildir")
        return now(MaildirStorage("alice", self.root, home=self.home))

    def dict_file(self) -> bytes:
        with open(os.path.join(self.home, "dovecot-attributes"), "rb") as f:
            return f.read()

    def test_file_format_is_dovecots(self) -> None:
        s = self.make()
        s.create("Foo")
        s.set_attribute("Foo", "/private/comment", b"a\nb\tc\x01d")
        s.set_attribute("Foo", "/shared/comment", b"s")
        s.set_attribute("", "/private/comment", b"srv")
        guid = uidlist_guid(os.path.join(self.root, ".Foo", "dovecot-uidlist"))
        inbox = uidlist_guid(os.path.join(self.root, "dovecot-uidlist"))
        self.assertEqual(len(guid), 32)
        self.assertEqual(self.dict_file(), b"".join(sorted([
            f"priv/{guid}/comment\na\x01nb\x01tc\x011d\n".encode(),
            f"shared/{guid}/comment\ns\n".encode(),
            f"priv/{inbox}/vendor/vendor.dovecot/pvt/server/comment\nsrv\n".encode()])))
        self.assertEqual(os.stat(os.path.join(self.home, "dovecot-attributes")).st_mode & 0o777,
                         0o600)

    def test_no_home_means_the_mail_root(self) -> None:
        root = os.path.abspath(self.mktemp())
        s = now(MaildirStorage("alice", root))
        s.set_attribute("INBOX", "/private/comment", b"x")
        self.assertTrue(os.path.exists(os.path.join(root, "dovecot-attributes")))

    def test_uidlist_without_guid_gets_one(self) -> None:
        s = self.make()
        s.create("Old")
        path = os.path.join(self.root, ".Old", "dovecot-uidlist")
        with open(path, "w") as f:
            f.write("3 V1234 N5\n4 :1700000000.M1P1.host\n")
        s2 = now(MaildirStorage("alice", self.root, home=self.home))
        self.assertEqual(s2.attribute_keys("Old"), [])
        self.assertEqual(uidlist_guid(path), "")  # reading does not write
        s2.set_attribute("Old", "/private/comment", b"x")
        guid = uidlist_guid(path)
        self.assertEqual(len(guid), 32)
        with open(path) as f:
            text = f.read()
        self.assertTrue(text.startswith(f"3 V1234 N5 G{guid}\n"), text)
        self.assertIn("4 :1700000000.M1P1.host\n", text)
        self.assertIn(f"priv/{guid}/comment\n".encode(), self.dict_file())

    def test_rename_inbox_leaves_its_attributes(self) -> None:
        s = self.make()
        s.set_attribute("INBOX", "/private/comment", b"inbox")
        s.set_attribute("", "/private/comment", b"server")
        s.rename("INBOX", "Old")
        self.assertEqual(s.get_attribute("INBOX", "/private/comment"), b"inbox")
        self.assertEqual(s.get_attribute("", "/private/comment"), b"server")
        self.assertEqual(s.attribute_keys("Old"), [])

    def test_lost_uidlist_keeps_the_guid(self) -> None:
        s = self.make()
        s.create("Foo")
        s.append("Foo", io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))
        s.set_attribute("Foo", "/private/comment", b"kept")
        os.unlink(os.path.join(self.root, ".Foo", "dovecot-uidlist"))
        s.append("Foo", io.BytesIO(b"Subject: y\r\n\r\nbody\r\n"))  # rebuilds it
        self.assertEqual(s.get_attribute("Foo", "/private/comment"), b"kept")

    def test_another_process_sees_changes(self) -> None:
        a = self.make()
        b = now(MaildirStorage("alice", self.root, home=self.home))
        a.set_attribute("INBOX", "/private/comment", b"one")
        self.assertEqual(b.get_attribute("INBOX", "/private/comment"), b"one")
        b.set_attribute("INBOX", "/private/other", b"two")
        a.set_attribute("INBOX", "/private/comment", b"three")  # keeps b's entry
        self.assertEqual(b.attribute_keys("INBOX"), ["/private/comment", "/private/other"])
        self.assertEqual(b.get_attribute("INBOX", "/private/comment"), b"three")

    def test_torn_file_keeps_complete_pairs(self) -> None:
        s = self.make()
        guid = s._box("INBOX").mailbox_guid(True)
        with open(os.path.join(self.home, "dovecot-attributes"), "wb") as f:
            f.write(f"priv/{guid}/comment\nok\npriv/{guid}/torn".encode())
        self.assertEqual(s.attribute_keys("INBOX"), ["/private/comment"])
        s.set_attribute("INBOX", "/private/x", b"y")
        self.assertEqual(s.attribute_keys("INBOX"), ["/private/comment", "/private/x"])

    def test_failed_write_leaves_the_old_file(self) -> None:
        s = self.make()
        s.set_attribute("INBOX", "/private/comment", b"old")
        before = self.dict_file()
        real = os.fsync
        calls = []

        def failing(fd: int) -> None:
            calls.append(fd)
            raise OSError(5, "Input/output error")

        os.fsync = failing
        try:
            self.assertRaises(StorageError, s.set_attribute, "INBOX", "/private/comment", b"new")
        finally:
            os.fsync = real
        self.assertTrue(calls)
        self.assertEqual(self.dict_file(), before)
        self.assertEqual(s.get_attribute("INBOX", "/private/comment"), b"old")
        self.assertEqual([f for f in os.listdir(self.home) if f.startswith("dovecot-attributes.")],
                         [])  # no temp file nor lock left behind

    def test_writer_killed_mid_write(self) -> None:
        """SIGKILL a process that rewrites the file in a loop: what is left
        parses, every value is whole, and its dotlock does not block us."""
        s = self.make()
        s.create("Foo")
        child = textwrap.dedent(f"""
            import sys
            from pydovecot.storage.maildir import MaildirStorage
            s = MaildirStorage("alice", {self.root!r}, home={self.home!r})
            i = 0
            while True:
                i += 1
                s.set_attribute("Foo", "/private/n%d" % (i % 50), (b"%08d" % i) * 4096)
                if i == 60:
                    print("ready", flush=True)  # the file exists; keep rewriting it
        """)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, env=env)
        self.addCleanup(proc.wait)
        self.assertEqual(proc.stdout.readline(), b"ready\n")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        keys = s.attribute_keys("Foo")
        self.assertTrue(keys)
        for key in keys:
            value = s.get_attribute("Foo", key)
            self.assertEqual(len(value), 8 * 4096)
            self.assertEqual(value, value[:8] * 4096)
        s.set_attribute("Foo", "/private/after", b"ok")  # a left lock is stale: its pid is gone
        self.assertEqual(s.get_attribute("Foo", "/private/after"), b"ok")

    def test_legacy_files_are_migrated_once(self) -> None:
        s = self.make()
        s.create("Sent")
        s.create("Old")
        validity = s.status("Sent").uidvalidity
        with open(os.path.join(self.root, "pydovecot-special-use"), "w") as f:
            f.write("Sent\t\\Sent \\bogus\nGone\t\\Trash\nbad line\n")
        with open(os.path.join(self.root, "pydovecot-urlauth-keys"), "w") as f:
            json.dump({"version": 1, "keys": {
                "Sent": {"uidvalidity": validity, "key": "ab" * 32},
                "Old": {"uidvalidity": 1, "key": "cd" * 32}}}, f)
        s2 = now(MaildirStorage("alice", self.root, home=self.home))
        self.assertEqual(s2.get_attribute("Sent", A.SPECIALUSE), b"\\Sent")
        self.assertEqual(s2.get_attribute("Sent", A.URLAUTH_KEY), b"ab" * 32)
        self.assertIsNone(s2.get_attribute("Old", A.URLAUTH_KEY))  # an earlier "Old"'s key
        self.assertEqual(sorted(f for f in os.listdir(self.root) if f.startswith("pydovecot-")),
                         ["pydovecot-special-use.migrated", "pydovecot-urlauth-keys.migrated"])
        s2.set_attribute("Sent", A.SPECIALUSE, b"\\Sent \\Archive")
        s3 = now(MaildirStorage("alice", self.root, home=self.home))
        self.assertEqual(s3.get_attribute("Sent", A.SPECIALUSE), b"\\Sent \\Archive")


class TabEscapeTests(unittest.TestCase):
    def test_round_trip(self) -> None:
        for data in (b"", b"plain", b"\x01", b"\x01\x01n", b"a\tb\rc\nd\x00e\x01f"):
            self.assertEqual(A.tabunescape(A.tabescape(data)), data)
            self.assertNotIn(b"\n", A.tabescape(data))
        self.assertEqual(A.tabescape(b"a\nb\tc\x01"), b"a\x01nb\x01tc\x011")
        self.assertEqual(A.parse(A.serialize({b"k\n1": b"v\t1", b"k2": b""})),
                         {b"k\n1": b"v\t1", b"k2": b""})


class DovecotInteropTests(unittest.TestCase):
    """Dovecot's doveadm and our storage on the same home."""

    def setUp(self) -> None:
        self.dovecot = LocalDovecot(self)

    def storage(self) -> MaildirStorage:
        return now(MaildirStorage("alice", self.dovecot.maildir, home=self.dovecot.home))

    def get(self, mailbox: str, key: str) -> str:
        args = ["-s", ""] if mailbox == "" else [mailbox]
        return self.dovecot.doveadm("mailbox", "metadata", "get", *args, key).rstrip("\n")

    def test_dovecot_reads_ours(self) -> None:
        s = self.storage()
        s.create("Foo/Bar")
        s.set_attribute("Foo/Bar", "/private/Comment", b"two\nlines\tand a tab")
        s.set_attribute("Foo/Bar", "/shared/comment", b"shared one")
        s.set_attribute("", "/private/comment", b"server note")
        s.set_attribute("INBOX", "/private/vendor/vendor.dovecot/x", b"vendor")
        self.assertEqual(self.get("Foo/Bar", "/private/comment"), "two\nlines\tand a tab")
        self.assertEqual(self.get("Foo/Bar", "/shared/comment"), "shared one")
        self.assertEqual(self.get("", "/private/comment"), "server note")
        self.assertEqual(self.get("INBOX", "/private/vendor/vendor.dovecot/x"), "vendor")
        self.assertEqual(self.get("INBOX", "/private/comment"), "")
        s.rename("Foo", "Moved")
        self.assertEqual(self.get("Moved/Bar", "/private/comment"), "two\nlines\tand a tab")
        s.delete("Moved/Bar")
        self.dovecot.doveadm("mailbox", "create", "Moved/Bar")
        self.assertEqual(self.get("Moved/Bar", "/private/comment"), "")

    def test_we_read_dovecots(self) -> None:
        d = self.dovecot
        d.doveadm("mailbox", "create", "Work")
        d.doveadm("mailbox", "metadata", "set", "Work", "/private/comment", "from\ndovecot")
        d.doveadm("mailbox", "metadata", "set", "Work", "/shared/Vendor/vendor.x/k", "v")
        d.doveadm("mailbox", "metadata", "set", "-s", "", "/private/comment", "its server")
        s = self.storage()
        self.assertEqual(s.get_attribute("Work", "/private/comment"), b"from\ndovecot")
        self.assertEqual(s.get_attribute("Work", "/shared/vendor/vendor.x/k"), b"v")
        self.assertEqual(s.get_attribute("", "/private/comment"), b"its server")
        self.assertEqual(s.attribute_keys("Work"),
                         ["/private/comment", "/shared/vendor/vendor.x/k"])
        s.set_attribute("Work", "/private/comment", b"ours now")  # rewrites Dovecot's file
        d.doveadm("mailbox", "metadata", "unset", "Work", "/shared/vendor/vendor.x/k")
        self.assertEqual(self.get("Work", "/private/comment"), "ours now")
        self.assertEqual(s.attribute_keys("Work"), ["/private/comment"])
        self.assertEqual(s.get_attribute("", "/private/comment"), b"its server")
