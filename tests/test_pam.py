"""Tests of the PAM passdb and the passwd userdb.

The real tests create a system user and a PAM service file, so they need
root; without it they skip (and fail when CI=true, where they must run).
The status mapping and argument tests use a fake conversation and always run.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess

from twisted.internet import defer, reactor, task
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from authd import drivers
from authd.drivers import pam
from authd.drivers.passwd import PasswdUserdb, passwd_fields
from authd.interfaces import AuthRequest, PassdbStatus
from authd.server import AuthEngine
from authd.settings import AuthSettings, DbSettings


def _pool(test: unittest.TestCase) -> ThreadPool:
    pool = ThreadPool(minthreads=0, maxthreads=4, name="test-pam")
    pool.start()
    test.addCleanup(pool.stop)
    return pool


def _need_root(test: unittest.TestCase) -> None:
    if os.geteuid() == 0:
        return
    reason = "needs root: creates a system user and /etc/pam.d/pydovecot-test-*"
    if os.environ.get("CI", "").lower() == "true":
        test.fail(reason + " (CI=true: these tests must run)")
    raise unittest.SkipTest(reason)


class FakeConversationTests(unittest.TestCase):
    """Result mapping and args, without libpam."""

    def passdb(self, code: int, args: str = "", messages: list[str] | None = None):
        calls = []

        def conversation(service, user, password, rip, session, setcred):
            calls.append((service, user, password, rip, session, setcred))
            return pam.PamOutcome(code, "text", user, list(messages or []))

        db = pam.PamPassdb(args, reactor=reactor, pool=_pool(self), conversation=conversation)
        return db, calls

    @defer.inlineCallbacks
    def test_status_mapping(self):
        request = AuthRequest(user="u", service="imap", remote_ip="192.0.2.1")
        expected = {
            pam.PAM_SUCCESS: PassdbStatus.OK,
            pam.PAM_USER_UNKNOWN: PassdbStatus.USER_UNKNOWN,
            pam.PAM_AUTH_ERR: PassdbStatus.PASSWORD_MISMATCH,
            pam.PAM_ACCT_EXPIRED: PassdbStatus.PASSWORD_MISMATCH,
            pam.PAM_SYSTEM_ERR: PassdbStatus.INTERNAL_FAILURE,
            pam.PAM_SERVICE_ERR: PassdbStatus.INTERNAL_FAILURE,
        }
        for code, status in expected.items():
            db, calls = self.passdb(code)
            result = yield db.verify_plain("u", "pw", request)
            self.assertIs(result.status, status, code)
            self.assertEqual(calls, [("dovecot", "u", "pw", "192.0.2.1", False, False)])
        self.assertIn("text", result.error)

    @defer.inlineCallbacks
    def test_args(self):
        db, calls = self.passdb(
            pam.PAM_AUTH_ERR,
            "session=yes setcred=yes failure_show_msg=yes max_requests=100 %s",
            messages=["Account locked"],
        )
        self.assertEqual(db.cache_key, "%u\t%s")
        result = yield db.verify_plain("u", "pw", AuthRequest(user="u", service="pop3"))
        self.assertEqual(calls[0][0], "pop3")
        self.assertEqual(calls[0][4:], (True, True))
        self.assertEqual(result.extra["reason"], "Account locked")
        self.assertEqual(pam.PamPassdb("*").service_template, "%s")
        self.assertEqual(pam.PamPassdb("cache_key=%u%r").cache_key, "%u%r")
        self.assertRaises(ValueError, pam.PamPassdb, "max_requests=x")
        self.assertRaises(ValueError, pam.PamPassdb, "one two")

    @defer.inlineCallbacks
    def test_nul_and_crash(self):
        def boom(*args):
            raise RuntimeError("libpam exploded")

        db = pam.PamPassdb("", reactor=reactor, pool=_pool(self), conversation=boom)
        result = yield db.verify_plain("u", "pw", AuthRequest(user="u"))
        self.assertIs(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.flushLoggedErrors(RuntimeError)
        db = pam.PamPassdb("", reactor=reactor, pool=_pool(self))
        result = yield db.verify_plain("u", "p\0w", AuthRequest(user="u"))
        self.assertIs(result.status, PassdbStatus.PASSWORD_MISMATCH)

    def test_registered(self):
        drivers.create_passdb(DbSettings("pam", ""))
        drivers.create_userdb(DbSettings("passwd", ""))
        drivers.create_passdb(DbSettings("passwd-file", "/nonexistent"))

    @defer.inlineCallbacks
    def test_passwd_userdb(self):
        db = PasswdUserdb("", reactor=reactor, pool=_pool(self))
        root = pwd.getpwuid(0)
        fields = yield db.lookup(root.pw_name, AuthRequest(user=root.pw_name))
        self.assertEqual(fields["uid"], "0")
        self.assertEqual(fields["home"], root.pw_dir)
        self.assertEqual(fields["system_groups_user"], root.pw_name)
        missing = yield db.lookup("no-such-user-x", AuthRequest(user="no-such-user-x"))
        self.assertIsNone(missing)
        self.assertIsNone(passwd_fields("a@b/c"))


class RealPamTests(unittest.TestCase):
    """pam_unix with a real user and a real /etc/pam.d service file."""

    timeout = 60

    def setUp(self) -> None:
        _need_root(self)
        suffix = secrets.token_hex(4)
        self.user = f"pdpamtest{suffix}"
        self.password = "Pw-" + secrets.token_hex(8)
        self.service = f"pydovecot-test-{suffix}"
        subprocess.run(["useradd", "-m", self.user], check=True, capture_output=True)
        self.addCleanup(subprocess.run, ["userdel", "-r", self.user], capture_output=True)
        subprocess.run(
            ["chpasswd"], input=f"{self.user}:{self.password}\n", text=True, check=True,
            capture_output=True,
        )
        path = f"/etc/pam.d/{self.service}"
        with open(path, "w") as f:
            f.write("auth required pam_unix.so\naccount required pam_unix.so\n")
        self.addCleanup(os.unlink, path)
        self.pool = _pool(self)

    @defer.inlineCallbacks
    def test_passwords_and_reactor_keeps_ticking(self):
        db = pam.PamPassdb(self.service, reactor=reactor, pool=self.pool)
        ticks = []
        loop = task.LoopingCall(lambda: ticks.append(reactor.seconds()))
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        request = AuthRequest(user=self.user, service="imap", remote_ip="192.0.2.7")
        started = reactor.seconds()
        results = yield defer.gatherResults([
            db.verify_plain(self.user, self.password, request),
            db.verify_plain(self.user, "wrong", request),
            db.verify_plain("pdpamnosuchuser", "x", request),
        ])
        elapsed = reactor.seconds() - started
        loop.stop()
        self.assertEqual(
            [r.status for r in results],
            [PassdbStatus.OK, PassdbStatus.PASSWORD_MISMATCH, PassdbStatus.USER_UNKNOWN],
        )
        # pam_unix sleeps ~2 s after a failure; the reactor ran all along.
        self.assertGreater(elapsed, 0.5)
        self.assertGreater(len(ticks), elapsed / 0.01 * 0.5)
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        self.assertLess(max(gaps), 0.5)

    @defer.inlineCallbacks
    def test_engine_with_passwd_userdb(self):
        settings = AuthSettings(
            auth_failure_delay=0,
            auth_username_format="%Lu",
            passdbs=[DbSettings("pam", self.service)],
            userdbs=[DbSettings("passwd", "")],
        )
        passdb = pam.PamPassdb(self.service, reactor=reactor, pool=self.pool)
        userdb = PasswdUserdb("", reactor=reactor, pool=self.pool)
        engine = AuthEngine(
            settings, reactor, passdbs=[(passdb, settings.passdbs[0])],
            userdbs=[(userdb, settings.userdbs[0])],
        )
        outcome = yield engine.authenticate(
            AuthRequest(user="", service="imap"), self.user, self.password
        )
        self.assertTrue(outcome.ok)
        entry = pwd.getpwnam(self.user)
        self.assertEqual(outcome.fields["uid"], str(entry.pw_uid))
        self.assertEqual(outcome.fields["home"], entry.pw_dir)
        outcome = yield engine.authenticate(AuthRequest(user="", service="imap"), self.user, "x")
        self.assertFalse(outcome.ok)
        self.assertFalse(outcome.temporary)
