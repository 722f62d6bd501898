"""Tests of passdb/userdb chains with Dovecot's result rules (authd.chain)."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from authd.chain import PassdbChain, UserdbChain
from authd.interfaces import (
    AuthBackendError,
    AuthRequest,
    IPassdb,
    IUserdb,
    PassdbResult,
    PassdbStatus,
)
from authd.server import AuthEngine
from authd.settings import AuthSettings, DbSettings

ERROR = object()  # a user entry that makes the backend fail


@implementer(IPassdb)
class FakePassdb:
    """users: name -> password (ERROR: internal failure)."""

    driver = "fake"

    def __init__(self, users: dict, extra: dict | None = None):
        self.users = users
        self.extra = extra or {}
        self.calls: list[tuple[str, str]] = []

    def verify_plain(self, user, password, request):
        self.calls.append(("verify", user))
        if user not in self.users:
            return defer.succeed(PassdbResult(PassdbStatus.USER_UNKNOWN))
        if self.users[user] is ERROR:
            return defer.succeed(
                PassdbResult(PassdbStatus.INTERNAL_FAILURE, error="backend timed out"))
        ok = self.users[user] == password
        status = PassdbStatus.OK if ok else PassdbStatus.PASSWORD_MISMATCH
        return defer.succeed(PassdbResult(status, dict(self.extra)))

    def lookup_credentials(self, user, scheme, request):
        self.calls.append(("lookup", user))
        if user not in self.users:
            return defer.succeed(PassdbResult(PassdbStatus.USER_UNKNOWN))
        if self.users[user] is ERROR:
            return defer.succeed(PassdbResult(PassdbStatus.INTERNAL_FAILURE, error="down"))
        return defer.succeed(PassdbResult(
            PassdbStatus.OK, dict(self.extra), credentials="{PLAIN}" + self.users[user]))


@implementer(IUserdb)
class FakeUserdb:
    driver = "fakeuser"

    def __init__(self, users: dict):
        self.users = users
        self.calls = 0

    def lookup(self, user, request):
        self.calls += 1
        value = self.users.get(user)
        if value is ERROR:
            return defer.fail(AuthBackendError("userdb timed out"))
        return defer.succeed(dict(value) if value is not None else None)


def db(driver: str = "fake", **options: str) -> DbSettings:
    return DbSettings(driver, options=options)


def request(user: str = "alice") -> AuthRequest:
    return AuthRequest(user=user, service="imap", remote_ip="192.0.2.1")


class PassdbChainTests(unittest.TestCase):
    def chain(self, *pairs) -> PassdbChain:
        return PassdbChain(list(pairs), AuthSettings(auth_verbose=True))

    @defer.inlineCallbacks
    def test_defaults_first_ok_wins(self):
        a = FakePassdb({"bob": "b"})
        b = FakePassdb({"alice": "a"}, {"x": "1"})
        c = FakePassdb({"alice": "a"})
        chain = self.chain((a, db()), (b, db()), (c, db()))
        result = yield chain.verify_plain(request(), "a")
        self.assertIs(result.status, PassdbStatus.OK)
        self.assertEqual(result.extra, {"x": "1"})
        self.assertEqual(c.calls, [])
        result = yield chain.verify_plain(request(), "wrong")
        self.assertIs(result.status, PassdbStatus.PASSWORD_MISMATCH)
        result = yield chain.verify_plain(request("carol"), "x")
        self.assertIs(result.status, PassdbStatus.USER_UNKNOWN)

    @defer.inlineCallbacks
    def test_internal_failure_is_temporary_unless_another_succeeds(self):
        broken = FakePassdb({"alice": ERROR})
        good = FakePassdb({"alice": "a"})
        chain = self.chain((broken, db()), (good, db()))
        result = yield chain.verify_plain(request(), "a")
        self.assertIs(result.status, PassdbStatus.OK)
        result = yield chain.verify_plain(request(), "wrong")
        self.assertIs(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertTrue(result.error)
        chain = self.chain((broken, db(result_internalfail="return-fail")), (good, db()))
        result = yield chain.verify_plain(request(), "a")
        self.assertIs(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertEqual(good.calls, [("verify", "alice"), ("verify", "alice")])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_continue_ok_then_lookup_without_password(self):
        first = FakePassdb({"alice": "a"}, {"a": "1", "both": "first"})
        second = FakePassdb({"alice": "zzz"}, {"b": "2", "both": "second"})
        chain = self.chain((first, db(result_success="continue-ok")), (second, db()))
        result = yield chain.verify_plain(request(), "a")
        self.assertIs(result.status, PassdbStatus.OK)
        self.assertEqual(result.extra, {"a": "1", "b": "2", "both": "second"})
        self.assertEqual(second.calls, [("lookup", "alice")])  # no password check

        # continue-ok, then the user is unknown in the second: still OK.
        chain = self.chain((first, db(result_success="continue-ok")), (FakePassdb({}), db()))
        result = yield chain.verify_plain(request(), "a")
        self.assertIs(result.status, PassdbStatus.OK)
        self.assertEqual(result.extra, {"a": "1", "both": "first"})

    @defer.inlineCallbacks
    def test_return_fail_and_continue_fail(self):
        first = FakePassdb({"alice": "a"})
        second = FakePassdb({"alice": "a"})
        chain = self.chain((first, db(result_failure="return-fail")), (second, db()))
        result = yield chain.verify_plain(request(), "wrong")
        self.assertIs(result.status, PassdbStatus.PASSWORD_MISMATCH)
        self.assertEqual(second.calls, [])
        # continue-fail after success: a later failure decides.
        chain = self.chain(
            (first, db(result_success="continue")),
            (FakePassdb({"alice": "a"}), db(result_success="return-fail")),
        )
        result = yield chain.verify_plain(request(), "a")
        self.assertIsNot(result.status, PassdbStatus.OK)

    @defer.inlineCallbacks
    def test_skip(self):
        first = FakePassdb({"alice": "a"})
        only_unauth = FakePassdb({"alice": "b"})
        only_auth = FakePassdb({"alice": "a"}, {"late": "y"})
        chain = self.chain(
            (first, db(result_success="continue-ok", result_failure="continue")),
            (only_unauth, db(skip="authenticated")),
            (only_auth, db(skip="unauthenticated")),
        )
        result = yield chain.verify_plain(request(), "a")
        self.assertIs(result.status, PassdbStatus.OK)
        self.assertEqual(only_unauth.calls, [])
        self.assertEqual(result.extra, {"late": "y"})
        result = yield chain.verify_plain(request(), "b")
        self.assertIs(result.status, PassdbStatus.OK)  # via only_unauth
        self.assertEqual(len(only_auth.calls), 1)  # skipped the second time
        self.assertRaises(ValueError, self.chain, (first, db(skip="sometimes")))
        self.assertRaises(ValueError, self.chain, (first, db(result_success="maybe")))

    @defer.inlineCallbacks
    def test_deny(self):
        deny = FakePassdb({"mallory": "", "broken": ERROR})
        good = FakePassdb({"alice": "a", "mallory": "m", "broken": "b"})
        chain = self.chain((deny, db(deny="yes")), (good, db()))
        result = yield chain.verify_plain(request(), "a")
        self.assertIs(result.status, PassdbStatus.OK)
        result = yield chain.verify_plain(request("mallory"), "m")
        self.assertIs(result.status, PassdbStatus.PASSWORD_MISMATCH)
        result = yield chain.verify_plain(request("broken"), "b")
        self.assertIs(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertEqual(good.calls, [("verify", "alice")])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_master_users(self):
        masters = FakePassdb({"admin": "adminpw"})
        normal = FakePassdb({"alice": "a"}, {"home": "/h"})
        chain = self.chain((masters, db(master="yes")), (normal, db()))
        # Without pass: the login user is not looked up in passdbs.
        req = request("ignored")
        result = yield chain.verify_master(req, "ghost", "admin", "adminpw")
        self.assertIs(result.status, PassdbStatus.OK)
        self.assertEqual(req.user, "ghost")
        self.assertEqual(result.extra["master_user"], "admin")
        self.assertEqual(normal.calls, [])
        result = yield chain.verify_master(request(), "alice", "admin", "a")
        self.assertIs(result.status, PassdbStatus.PASSWORD_MISMATCH)
        # Master passdbs are not used for normal logins.
        result = yield chain.verify_plain(request("admin"), "adminpw")
        self.assertIs(result.status, PassdbStatus.USER_UNKNOWN)

        chain = self.chain((masters, db(master="yes", **{"pass": "yes"})), (normal, db()))
        req = request()
        result = yield chain.verify_master(req, "alice", "admin", "adminpw")
        self.assertIs(result.status, PassdbStatus.OK)
        self.assertEqual(result.extra, {"home": "/h", "master_user": "admin"})
        self.assertEqual(normal.calls[-1], ("lookup", "alice"))
        result = yield chain.verify_master(request(), "ghost", "admin", "adminpw")
        self.assertIs(result.status, PassdbStatus.USER_UNKNOWN)

    @defer.inlineCallbacks
    def test_lookup_credentials(self):
        chain = self.chain((FakePassdb({}), db()), (FakePassdb({"alice": "a"}), db()))
        result = yield chain.lookup_credentials(request(), "PLAIN")
        self.assertIs(result.status, PassdbStatus.OK)
        self.assertEqual(result.credentials, "{PLAIN}a")


class UserdbChainTests(unittest.TestCase):
    def chain(self, *pairs) -> UserdbChain:
        return UserdbChain(list(pairs), AuthSettings())

    @defer.inlineCallbacks
    def test_rules_and_skip(self):
        a = FakeUserdb({"alice": {"uid": "1", "home": "/a"}})
        b = FakeUserdb({"alice": {"mail": "maildir:~/M"}, "bob": {"uid": "2"}})
        chain = self.chain((a, db()), (b, db()))
        fields = yield chain.lookup(request(), {"quota": "1G"})
        self.assertEqual(fields, {"quota": "1G", "uid": "1", "home": "/a"})
        fields = yield chain.lookup(request("bob"), {})
        self.assertEqual(fields, {"uid": "2"})
        fields = yield chain.lookup(request("carol"), {})
        self.assertIsNone(fields)

        chain = self.chain((a, db(result_success="continue-ok")), (b, db()))
        fields = yield chain.lookup(request(), {})
        self.assertEqual(fields, {"uid": "1", "home": "/a", "mail": "maildir:~/M"})

        c = FakeUserdb({"alice": {"extra": "x"}})
        chain = self.chain((a, db(result_success="continue-ok")), (c, db(skip="found")))
        fields = yield chain.lookup(request(), {})
        self.assertEqual(c.calls, 0)
        chain = self.chain((a, db()), (c, db(skip="notfound")))
        fields = yield chain.lookup(request("bob"), {})
        self.assertEqual(c.calls, 0)
        self.assertIsNone(fields)

    @defer.inlineCallbacks
    def test_internal_failure(self):
        broken = FakeUserdb({"alice": ERROR})
        good = FakeUserdb({"alice": {"uid": "1"}})
        fields = yield self.chain((broken, db()), (good, db())).lookup(request(), {})
        self.assertEqual(fields, {"uid": "1"})
        d = self.chain((broken, db()), (FakeUserdb({}), db())).lookup(request(), {})
        yield self.assertFailure(d, AuthBackendError)
        d = self.chain((broken, db(result_internalfail="return-fail")),
                       (good, db())).lookup(request(), {})
        yield self.assertFailure(d, AuthBackendError)


class EngineTests(unittest.TestCase):
    """Temporary failures and master logins through AuthEngine."""

    def engine(self, passdbs, userdbs) -> AuthEngine:
        settings = AuthSettings(auth_failure_delay=0, auth_username_format="%Lu",
                                mail_uid="1000", mail_gid="1000")
        return AuthEngine(settings, task.Clock(), passdbs=passdbs, userdbs=userdbs)

    @defer.inlineCallbacks
    def test_temporary_failure_preserved_and_logged(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        engine = self.engine(
            [(FakePassdb({"alice": ERROR}), db()), (FakePassdb({}), db())],
            [(FakeUserdb({"alice": {}}), db())],
        )
        outcome = yield engine.authenticate(request(""), "alice", "a")
        self.assertFalse(outcome.ok)
        self.assertTrue(outcome.temporary)
        logged = [e for e in events if "backend timed out" in str(e.get("error", ""))]
        self.assertTrue(logged)
        # A userdb failure after a good password is temporary too.
        engine = self.engine([(FakePassdb({"alice": "a"}), db())],
                             [(FakeUserdb({"alice": ERROR}), db())])
        outcome = yield engine.authenticate(request(""), "alice", "a")
        self.assertTrue(outcome.temporary)
        lookup = yield engine.user_lookup("alice", "lmtp")
        self.assertEqual(lookup, {"found": False, "temporary": True})
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_authenticate_master(self):
        engine = self.engine(
            [(FakePassdb({"admin": "pw"}), db(master="yes", result_success="continue")),
             (FakePassdb({"alice": "a"}), db())],
            [(FakeUserdb({"alice": {"home": "/home/alice"}}), db())],
        )
        outcome = yield engine.authenticate_master(request(""), "Alice", "Admin", "pw")
        self.assertTrue(outcome.ok)
        self.assertEqual(outcome.user, "alice")
        self.assertEqual(outcome.fields["master_user"], "admin")
        outcome = yield engine.authenticate_master(request(""), "alice", "admin", "a")
        self.assertFalse(outcome.ok)
        self.assertFalse(outcome.temporary)
