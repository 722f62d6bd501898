"""Tests of the LDAP passdb/userdb driver and its config parser, against a
private slapd (tests/slapd.py).  Without slapd the directory tests are
skipped, except under CI=true, where they fail."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from authd import drivers, ldapconf
from authd.drivers import ldap as ldap_driver
from authd.interfaces import AuthBackendError, AuthRequest, PassdbStatus
from authd.ldapconf import AttrMap, LdapConfigError
from authd.protocol import AuthStart, RedeemCookie
from authd.server import AuthEngine
from authd.settings import AuthSettings, DbSettings
from tests import slapd as slapd_harness
from tests.authd_clients import serve_authd, start_args

_shared: slapd_harness.Slapd | None = None


def need_slapd() -> None:
    """Skip (or, under CI=true, fail) when slapd can't run here."""
    reason = slapd_harness.available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        raise AssertionError(f"slapd is required in CI: {reason}")
    raise unittest.SkipTest(f"slapd not available: {reason}")


def shared_slapd() -> slapd_harness.Slapd:
    """One slapd for all tests that don't stop it."""
    global _shared
    need_slapd()
    if _shared is None:
        _shared = slapd_harness.Slapd()
        atexit.register(_shared.cleanup)
    _shared.start()
    return _shared


def dead_port() -> int:
    return slapd_harness.free_port()


def request(user: str) -> AuthRequest:
    return AuthRequest(user=user, service="imap", remote_ip="192.0.2.1", session="s1")


BASE_CONF = """\
# test config
uris = {uris}
dn = cn=dovecot,dc=example,dc=org
dnpass = dovecot-pw
base = ou=people,dc=example,dc=org
scope = subtree
default_pass_scheme = PLAIN
timeout = {timeout}
"""


class ConfigTests(unittest.TestCase):
    def parse(self, text: str) -> ldapconf.LdapConfig:
        return ldapconf.parse_text(text, "/etc/dovecot/dovecot-ldap.conf.ext")

    def test_dovecot_example(self):
        cfg = self.parse(
            """\
# Dovecot 2.3 style
hosts = ldap1.example.org ldap2.example.org:3890
dn = cn=admin,dc=example,dc=org
dnpass = "se#cret"   # comment after a quoted value
auth_bind = yes
auth_bind_userdn = uid=%n,ou=people,dc=example,dc=org
ldap_version = 3
base = ou=%d,dc=example,dc=org
deref = searching
scope = onelevel
tls = yes
tls_ca_cert_file = /etc/ssl/ca.pem
tls_require_cert = hard
blocking = yes
user_attrs = \\
  =home=/var/vmail/%{ldap:uid}, \\
  uidNumber=uid, gidNumber=gid, \\
  mailboxPath=mail=maildir:%{ldap:mailboxPath}
user_filter = (&(objectClass=posixAccount)(uid=%u))
pass_attrs = uid=user,userPassword=password
pass_filter = (&(objectClass=posixAccount)(uid=%u))
iterate_attrs = uid=user
iterate_filter = (objectClass=posixAccount)
default_pass_scheme = ssha
threads = 8
timeout = 2.5
"""
        )
        self.assertEqual(cfg.uris, ["ldap://ldap1.example.org", "ldap://ldap2.example.org:3890"])
        self.assertEqual(cfg.dnpass, "se#cret")
        self.assertTrue(cfg.auth_bind)
        self.assertTrue(cfg.tls)
        self.assertEqual(cfg.auth_bind_userdn, "uid=%n,ou=people,dc=example,dc=org")
        self.assertEqual(
            (cfg.scope, cfg.deref, cfg.tls_require_cert), ("onelevel", "searching", "hard")
        )
        self.assertEqual(cfg.default_pass_scheme, "SSHA")
        self.assertEqual((cfg.threads, cfg.timeout), (8, 2.5))
        self.assertEqual(
            cfg.user_attrs,
            [
                AttrMap("", "home", "/var/vmail/%{ldap:uid}"),
                AttrMap("uidNumber", "uid"),
                AttrMap("gidNumber", "gid"),
                AttrMap("mailboxPath", "mail", "maildir:%{ldap:mailboxPath}"),
            ],
        )
        self.assertNotIn("se#cret", repr(cfg))

    def test_defaults(self):
        cfg = self.parse("uris = ldap://a ldaps://b:636/\nbase = dc=x\n")
        self.assertEqual(cfg.uris, ["ldap://a", "ldaps://b:636/"])
        self.assertEqual(cfg.pass_filter, "(&(objectClass=posixAccount)(uid=%u))")
        self.assertEqual(
            cfg.pass_attrs, [AttrMap("uid", "user"), AttrMap("userPassword", "password")]
        )
        self.assertEqual(
            (cfg.scope, cfg.deref, cfg.default_pass_scheme), ("subtree", "never", "CRYPT")
        )
        self.assertFalse(cfg.auth_bind)

    def test_uris_win_over_hosts(self):
        cfg = self.parse("hosts = h\nuris = ldaps://u\nbase = dc=x\n")
        self.assertEqual(cfg.uris, ["ldaps://u"])

    def assertConfigError(self, text: str, *fragments: str) -> None:
        with self.assertRaises(LdapConfigError) as cm:
            self.parse(text)
        for fragment in fragments:
            self.assertIn(fragment, str(cm.exception))

    def test_errors_name_file_and_line(self):
        path = "/etc/dovecot/dovecot-ldap.conf.ext"
        self.assertConfigError(
            "uris = ldap://a\n\nbase = dc=x\nbogus = 1\n", f"{path}:4:", "unknown setting 'bogus'"
        )
        self.assertConfigError(
            "uris = ldap://a\nscope = everything\nbase = x\n", f"{path}:2:", "scope"
        )
        self.assertConfigError("uris = ldap://a\nauth_bind = maybe\nbase = x\n", f"{path}:2:")
        self.assertConfigError("uris = ldap://a\nldap_version = 2\nbase = x\n", f"{path}:2:")
        self.assertConfigError("uris = http://a\nbase = x\n", f"{path}:1:", "unsupported URI")
        self.assertConfigError("uris = ldap://a\njust words\n", f"{path}:2:", "key = value")
        self.assertConfigError("uris = ldap://a\nsasl_bind = yes\nbase = x\n", f"{path}:2:")
        self.assertConfigError("uris = ldap://a\ntimeout = 0\nbase = x\n", f"{path}:2:")
        self.assertConfigError("base = dc=x\n", "neither uris nor hosts")
        self.assertConfigError("uris = ldap://a\n", "base is not set")

    def test_error_never_shows_dnpass(self):
        with self.assertRaises(LdapConfigError) as cm:
            self.parse("uris = ldap://a\ndnpass = hunter2\nbase = x\nscope = nope\n")
        self.assertNotIn("hunter2", str(cm.exception))

    def test_load_missing_file(self):
        with self.assertRaises(LdapConfigError) as cm:
            ldapconf.load("/nonexistent/dovecot-ldap.conf.ext")
        self.assertIn("/nonexistent/dovecot-ldap.conf.ext", str(cm.exception))

    def test_template_values(self):
        attrs = {"uid": ["alice"], "mail": ["a@x", "b@x"]}
        self.assertEqual(
            ldapconf.ldap_template_values(
                "%{ldap:uid}/%{ldap_multi:mail}/%{ldap:quota:100}/%{ldap:none}", attrs
            ),
            {
                "ldap:uid": "alice",
                "ldap_multi:mail": "a@x,b@x",
                "ldap:quota:100": "100",
                "ldap:none": "",
            },
        )

    def test_map_fields(self):
        maps = ldapconf.parse_attrs(
            "uidNumber=uid, =home=/var/vmail/%d/%{ldap:uid}, missing=mail=x:%{ldap:missing}, "
            "quota=, =quota_rule=*:bytes=%{ldap:quota}"
        )
        attrs = {"uid": ["alice"], "uidnumber": ["1001"], "quota": ["5"]}
        fields = ldap_driver.map_fields(
            attrs, maps, {"user": "alice@example.org", "domain": "example.org"}
        )
        self.assertEqual(
            fields,
            {"uid": "1001", "home": "/var/vmail/example.org/alice", "quota_rule": "*:bytes=5"},
        )
        self.assertEqual(ldap_driver.wanted_attrs(maps), ["uidNumber", "uid", "missing", "quota"])

    def test_escaping(self):
        self.assertEqual(
            ldap_driver.filter_values({"user": "*)(uid=*))(|(uid=*\x00\\"})["user"],
            "\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a\\00\\5c",
        )
        self.assertEqual(ldap_driver.escape_dn_value("a,b=c+d\x00 "), "a\\,b\\=c\\+d\\00\\ ")
        self.assertEqual(ldap_driver.escape_dn_value(""), "")

    def test_registered(self):
        self.assertIs(drivers.PASSDB_DRIVERS["ldap"], ldap_driver.LdapDb)
        self.assertIs(drivers.USERDB_DRIVERS["ldap"], ldap_driver.LdapDb)
        self.assertIn("passwd-file", drivers.PASSDB_DRIVERS)


class _LdapTestBase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.slapd = shared_slapd()
        self.dir = tempfile.mkdtemp(prefix="ldap-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write_conf(
        self,
        extra: str = "",
        uris: str | None = None,
        timeout: float = 5,
        name: str = "dovecot-ldap.conf.ext",
    ) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(BASE_CONF.format(uris=uris or self.slapd.uri, timeout=timeout) + extra)
        return path

    def make_db(self, extra: str = "", **kw) -> ldap_driver.LdapDb:
        db = ldap_driver.LdapDb(self.write_conf(extra, **kw))
        self.addCleanup(db.close)
        return db

    @defer.inlineCallbacks
    def verify(self, db, user: str, password: str):
        result = yield db.verify_plain(user, password, request(user))
        return result


class PassdbTests(_LdapTestBase):
    @defer.inlineCallbacks
    def test_password_lookup_schemes(self):
        db = self.make_db()
        for user, (password, _, _) in slapd_harness.USERS.items():
            result = yield self.verify(db, user, password)
            self.assertEqual(result.status, PassdbStatus.OK, (user, result.error))
            self.assertEqual(result.extra.get("user"), user)
            self.assertNotIn("password", result.extra)
            result = yield self.verify(db, user, password + "x")
            self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH, user)

    @defer.inlineCallbacks
    def test_unknown_user(self):
        db = self.make_db()
        result = yield self.verify(db, "nobody", "x")
        self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN)

    @defer.inlineCallbacks
    def test_base_with_variables(self):
        db = self.make_db(
            "base = ou=%d,dc=example,dc=org\npass_filter = (&(objectClass=posixAccount)(uid=%n))\n"
        )
        result = yield self.verify(db, "carol@people", "carol-plain")
        self.assertEqual(result.status, PassdbStatus.OK, result.error)
        # A base that doesn't exist (noSuchObject) is an unknown user, and
        # the domain can't add RDNs to the base.
        for name in ("carol@nowhere", "carol@people,dc=example"):
            result = yield self.verify(db, name, "carol-plain")
            self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN, name)

    @defer.inlineCallbacks
    def test_injection_is_unknown_user(self):
        for mode in ("", "auth_bind = yes\n"):
            db = self.make_db(mode + "pass_filter = (&(objectClass=posixAccount)(uid=%u))\n")
            for name in (
                "*)(uid=*))(|(uid=*",
                "alice)(|(objectClass=*)",
                "alice\x00",
                "*",
                "al*",
                "alice)",
                "(uid=alice)",
            ):
                for password in ("alice-ssha", "bob-crypt", "carol-plain"):
                    result = yield self.verify(db, name, password)
                    self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN, (mode, name))

    @defer.inlineCallbacks
    def test_dn_injection_with_userdn_template(self):
        db = self.make_db(
            "auth_bind = yes\nauth_bind_userdn = uid=%n,ou=people,dc=example,dc=org\n"
        )
        # Without escaping this would bind as cn=dovecot.
        for name in ("x,cn=dovecot,dc=example,dc=org", "cn=dovecot,dc=example,dc=org\x00"):
            result = yield self.verify(db, name, slapd_harness.SERVICE_PW)
            self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH, name)

    @defer.inlineCallbacks
    def test_auth_bind_with_search(self):
        db = self.make_db("auth_bind = yes\npass_attrs = uid=user, mail=userdb_mail_address\n")
        for user, (password, _, _) in slapd_harness.USERS.items():
            result = yield self.verify(db, user, password)
            self.assertEqual(result.status, PassdbStatus.OK, (user, result.error))
            self.assertEqual(result.extra["userdb_mail_address"], f"{user}@example.org")
            result = yield self.verify(db, user, "wrong")
            self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH)
            result = yield self.verify(db, user, "")
            self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH)
        result = yield self.verify(db, "nobody", "x")
        self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN)

    @defer.inlineCallbacks
    def test_auth_bind_userdn(self):
        db = self.make_db(
            "auth_bind = yes\nauth_bind_userdn = uid=%n,ou=people,dc=example,dc=org\n"
        )
        result = yield self.verify(db, "bob@example.org", "bob-crypt")
        self.assertEqual(result.status, PassdbStatus.OK, result.error)
        result = yield self.verify(db, "bob", "nope")
        self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH)
        result = yield self.verify(db, "alice", "")
        self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH)

    @defer.inlineCallbacks
    def test_lookup_credentials(self):
        db = self.make_db()
        result = yield db.lookup_credentials("carol", "PLAIN", request("carol"))
        self.assertEqual(
            (result.status, result.credentials), (PassdbStatus.OK, "{PLAIN}carol-plain")
        )
        result = yield db.lookup_credentials("alice", "SSHA", request("alice"))
        self.assertEqual(result.status, PassdbStatus.OK)
        self.assertTrue(result.credentials.startswith("{SSHA}"))
        result = yield db.lookup_credentials("bob", "PLAIN", request("bob"))
        self.assertEqual(result.status, PassdbStatus.SCHEME_NOT_AVAILABLE)
        result = yield db.lookup_credentials("nobody", "PLAIN", request("nobody"))
        self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN)

    @defer.inlineCallbacks
    def test_wrong_service_password_is_internal_failure(self):
        path = self.write_conf()
        with open(path) as f:
            text = f.read().replace("dnpass = dovecot-pw", "dnpass = not-the-pw")
        with open(path, "w") as f:
            f.write(text)
        db = ldap_driver.LdapDb(path)
        self.addCleanup(db.close)
        result = yield self.verify(db, "alice", "alice-ssha")
        self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertIn("Bind as cn=dovecot,dc=example,dc=org", result.error)
        self.assertIn("invalidCredentials", result.error)
        self.assertNotIn("not-the-pw", result.error)

    @defer.inlineCallbacks
    def test_failover(self):
        dead = f"ldap://127.0.0.1:{dead_port()}"
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        db = self.make_db(uris=f"{dead} {self.slapd.uri}")
        result = yield self.verify(db, "alice", "alice-ssha")
        self.assertEqual(result.status, PassdbStatus.OK, result.error)
        yield deferLater(0.05)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn(f"Connection to {dead} failed", text)

    @defer.inlineCallbacks
    def test_concurrent_lookups(self):
        db = self.make_db("threads = 3\n")
        names = list(slapd_harness.USERS) * 4
        results = yield defer.gatherResults(
            [self.verify(db, n, slapd_harness.USERS[n][0]) for n in names]
        )
        self.assertEqual({r.status for r in results}, {PassdbStatus.OK})


def deferLater(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class TLSTests(_LdapTestBase):
    @defer.inlineCallbacks
    def check(self, uris: str, ca: str, tls: bool, ok: bool):
        extra = f"tls_ca_cert_file = {ca}\ntls_require_cert = demand\n"
        if tls:
            extra += "tls = yes\n"
        db = self.make_db(extra, uris=uris)
        result = yield self.verify(db, "alice", "alice-ssha")
        if ok:
            self.assertEqual(result.status, PassdbStatus.OK, result.error)
        else:
            self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
            self.assertIn(f"Connection to {uris} failed", result.error)
            self.assertIn("certificate verify failed", result.error.lower().replace("_", " "))
        return result

    def test_starttls_right_ca(self):
        return self.check(self.slapd.uri, self.slapd.certs["ca"], tls=True, ok=True)

    def test_starttls_wrong_ca(self):
        return self.check(self.slapd.uri, self.slapd.certs["other_ca"], tls=True, ok=False)

    def test_ldaps_right_ca(self):
        return self.check(self.slapd.ldaps_uri, self.slapd.certs["ca"], tls=False, ok=True)

    def test_ldaps_wrong_ca(self):
        return self.check(self.slapd.ldaps_uri, self.slapd.certs["other_ca"], tls=False, ok=False)

    @defer.inlineCallbacks
    def test_auth_bind_over_ldaps(self):
        db = self.make_db(
            f"auth_bind = yes\ntls_ca_cert_file = {self.slapd.certs['ca']}\n",
            uris=self.slapd.ldaps_uri,
        )
        result = yield self.verify(db, "bob", "bob-crypt")
        self.assertEqual(result.status, PassdbStatus.OK, result.error)


class UserdbTests(_LdapTestBase):
    @defer.inlineCallbacks
    def test_default_user_attrs(self):
        db = self.make_db()
        fields = yield db.lookup("alice", request("alice"))
        self.assertEqual(fields, {"home": "/home/alice", "uid": "1001", "gid": "2001"})
        fields = yield db.lookup("nobody", request("nobody"))
        self.assertIsNone(fields)

    @defer.inlineCallbacks
    def test_templates(self):
        db = self.make_db(
            "user_attrs = \\\n  =home=/var/vmail/%d/%{ldap:uid}, uidNumber=uid, \\\n"
            "  =gid=vmail, =mail=maildir:~/Maildir, missingAttr=quota_rule=*:%{ldap:missingAttr}\n"
            "user_filter = (&(objectClass=inetOrgPerson)(mail=%u))\n"
        )
        fields = yield db.lookup("bob@example.org", request("bob@example.org"))
        self.assertEqual(
            fields,
            {
                "home": "/var/vmail/example.org/bob",
                "uid": "1002",
                "gid": "vmail",
                "mail": "maildir:~/Maildir",
            },
        )

    @defer.inlineCallbacks
    def test_injection(self):
        db = self.make_db()
        for name in ("*", "*)(uid=*))(|(uid=*", "alice)(|(objectClass=*)", "alice\x00"):
            fields = yield db.lookup(name, request(name))
            self.assertIsNone(fields, name)


class OutageTests(unittest.TestCase):
    """The directory goes away and comes back."""

    timeout = 90

    def setUp(self) -> None:
        need_slapd()
        self.slapd = slapd_harness.Slapd()
        self.addCleanup(self.slapd.cleanup)
        self.slapd.start()
        self.dir = tempfile.mkdtemp(prefix="ldap-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def make_db(self, extra: str = "", uris: str | None = None, timeout: float = 2):
        path = os.path.join(self.dir, "ldap.conf.ext")
        with open(path, "w") as f:
            f.write(BASE_CONF.format(uris=uris or self.slapd.uri, timeout=timeout) + extra)
        db = ldap_driver.LdapDb(path)
        self.addCleanup(db.close)
        return db

    @defer.inlineCallbacks
    def test_stop_and_restart(self):
        passdb = self.make_db()
        binddb = self.make_db("auth_bind = yes\n")
        for db in (passdb, binddb):
            result = yield db.verify_plain("alice", "alice-ssha", request("alice"))
            self.assertEqual(result.status, PassdbStatus.OK, result.error)
        self.slapd.stop()
        for db in (passdb, binddb):
            for password in ("alice-ssha", "wrong"):
                started = time.monotonic()
                result = yield db.verify_plain("alice", password, request("alice"))
                self.assertLess(time.monotonic() - started, 2.5)
                self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
                self.assertIn(f"Connection to {self.slapd.uri} failed", result.error)
        with self.assertRaises(AuthBackendError):
            yield passdb.lookup("alice", request("alice"))
        self.slapd.start()
        for db in (passdb, binddb):
            result = yield db.verify_plain("alice", "alice-ssha", request("alice"))
            self.assertEqual(result.status, PassdbStatus.OK, result.error)
            result = yield db.verify_plain("alice", "wrong", request("alice"))
            self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH)
        fields = yield passdb.lookup("alice", request("alice"))
        self.assertEqual(fields["uid"], "1001")

    @defer.inlineCallbacks
    def test_unresponsive_server_times_out(self):
        # Accepts TCP connections (backlog) but never answers.
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        uri = f"ldap://127.0.0.1:{sock.getsockname()[1]}"
        db = self.make_db(uris=uri, timeout=1)
        started = time.monotonic()
        result = yield db.verify_plain("alice", "alice-ssha", request("alice"))
        self.assertLess(time.monotonic() - started, 1.5)
        self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertIn("timed out", result.error)
        with self.assertRaises(AuthBackendError):
            yield db.lookup("alice", request("alice"))


class EndToEndTests(_LdapTestBase):
    """authd's AMP server with passdb and userdb ldap."""

    @defer.inlineCallbacks
    def serve(self, conf: str):
        self.settings = AuthSettings(
            base_dir=self.dir,
            auth_mechanisms=["plain"],
            auth_username_format="%Lu",
            auth_failure_delay=0.01,
            auth_verbose=True,
            passdbs=[DbSettings("ldap", conf)],
            userdbs=[DbSettings("ldap", conf)],
        )
        engine = AuthEngine(self.settings)
        for db, _ in engine.passdbs + engine.userdbs:
            self.addCleanup(db.close)
        self.clients = yield serve_authd(self, self.settings, engine, self.dir)

    def start(self, initial: bytes) -> defer.Deferred:
        return self.clients["auth-login"].callRemote(
            AuthStart, **start_args(initial, remote_port=5000, session="e2e"))

    @defer.inlineCallbacks
    def test_plain_login(self):
        yield self.serve(self.write_conf())
        reply = yield self.start(b"\0bob\0bob-crypt")
        self.assertEqual(reply["status"], "ok")
        self.assertEqual(reply["user"], "bob")
        self.assertEqual(len(reply["cookie"]), 32)
        redeemed = yield self.clients["auth-master"].callRemote(
            RedeemCookie,
            cookie=reply["cookie"],
            login_pid=os.getpid(),
            local_ip="127.0.0.1",
            remote_ip="127.0.0.1",
        )
        fields = json.loads(redeemed["fields"])
        self.assertEqual(
            (fields["uid"], fields["gid"], fields["home"]), ("1002", "2002", "/home/bob")
        )
        reply = yield self.start(b"\0bob\0wrong")
        self.assertEqual(reply["status"], "fail")
        self.assertFalse(reply["temporary"])

    @defer.inlineCallbacks
    def test_directory_down_is_temporary_failure(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        dead = f"ldap://127.0.0.1:{dead_port()}"
        yield self.serve(self.write_conf(uris=dead, timeout=2))
        reply = yield self.start(b"\0alice\0alice-ssha")
        self.assertEqual(reply["status"], "fail")
        self.assertTrue(reply["temporary"])
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn(f"ldap(alice,127.0.0.1,<e2e>): Connection to {dead} failed", text)
        self.assertNotIn("dovecot-pw", text)
        self.assertNotIn("alice-ssha", text)
