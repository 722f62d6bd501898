"""Tests of the auth cache (authd.cache) with a fake clock."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial import unittest

from authd.cache import AuthCache
from authd.interfaces import PassdbResult, PassdbStatus
from authd.server import AuthEngine, MasterProtocol
from authd.settings import AuthSettings
from tests.test_auth_chain import FakePassdb, FakeUserdb, db, request

OK = PassdbResult(PassdbStatus.OK, {"k": "v"})


class CacheUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.cache = AuthCache(self.clock, size=10_000, ttl=100, negative_ttl=10)

    def test_disabled(self):
        cache = AuthCache(self.clock, size=0)
        cache.passdb_put("k", "alice", "pw", OK)
        self.assertIsNone(cache.passdb_get("k", "pw"))
        self.assertEqual(len(cache), 0)

    def test_positive_entry_never_holds_the_password(self):
        self.cache.passdb_put("k", "alice", "s3cret-pw", OK)
        entry = self.cache._entries["Pk"]
        self.assertNotIn(b"s3cret-pw", entry.digest + entry.salt)
        self.assertNotIn("s3cret-pw", repr(entry))
        hit = self.cache.passdb_get("k", "s3cret-pw")
        self.assertIs(hit.status, PassdbStatus.OK)
        self.assertEqual(hit.extra, {"k": "v"})
        self.clock.advance(100)
        self.assertIsNone(self.cache.passdb_get("k", "s3cret-pw"))  # ttl over

    def test_salted(self):
        self.cache.passdb_put("a", "alice", "same", OK)
        self.cache.passdb_put("b", "bob", "same", OK)
        self.assertNotEqual(self.cache._entries["Pa"].digest, self.cache._entries["Pb"].digest)

    def test_mismatch_after_success_goes_to_backend(self):
        self.cache.passdb_put("k", "alice", "old", OK)
        self.assertIsNone(self.cache.passdb_get("k", "new"))  # maybe changed
        self.assertEqual(len(self.cache), 0)

    def test_mismatch_remembered_for_negative_ttl(self):
        self.cache.passdb_put("k", "alice", "good", OK)
        self.cache.passdb_put("k", "alice", "bad", PassdbResult(PassdbStatus.PASSWORD_MISMATCH))
        self.assertIs(self.cache.passdb_get("k", "bad2").status, PassdbStatus.PASSWORD_MISMATCH)
        self.assertIs(self.cache.passdb_get("k", "good").status, PassdbStatus.OK)
        self.cache.passdb_put("k", "alice", "bad", PassdbResult(PassdbStatus.PASSWORD_MISMATCH))
        self.clock.advance(10)
        self.assertIsNone(self.cache.passdb_get("k", "bad3"))

    def test_negative_and_internal(self):
        self.cache.passdb_put("k", "ghost", "x", PassdbResult(PassdbStatus.USER_UNKNOWN))
        self.assertIs(self.cache.passdb_get("k", "y").status, PassdbStatus.USER_UNKNOWN)
        self.clock.advance(10)
        self.assertIsNone(self.cache.passdb_get("k", "y"))
        self.cache.passdb_put("k", "x", "x", PassdbResult(PassdbStatus.INTERNAL_FAILURE))
        self.assertEqual(len(self.cache), 0)

    def test_size_limit_evicts_least_recently_used(self):
        cache = AuthCache(self.clock, size=600)
        for i in range(10):
            cache.passdb_put(f"k{i}", f"u{i}", "pw", OK)
            cache.passdb_get("k0", "pw")  # keep k0 hot
        self.assertLess(len(cache), 10)
        self.assertLessEqual(cache._used, 600)
        self.assertIsNotNone(cache.passdb_get("k0", "pw"))
        self.assertIsNone(cache.passdb_get("k1", "pw"))

    def test_userdb_and_flush(self):
        self.cache.userdb_put("a", "alice", {"uid": "1"})
        self.cache.userdb_put("g", "ghost", None)
        self.cache.passdb_put("a", "alice", "pw", OK)
        self.assertEqual(self.cache.userdb_get("a"), (True, {"uid": "1"}))
        self.assertEqual(self.cache.userdb_get("g"), (True, None))
        self.assertEqual(self.cache.userdb_get("x"), (False, None))
        self.assertEqual(self.cache.flush(["alice"]), 2)
        self.assertEqual(self.cache.flush([]), 1)
        self.assertEqual(len(self.cache), 0)


class EngineCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.passdb = FakePassdb({"alice": "a"})
        self.userdb = FakeUserdb({"alice": {"home": "/h"}})
        settings = AuthSettings(auth_failure_delay=0, auth_cache_size=1 << 20,
                                auth_cache_ttl=3600, auth_cache_negative_ttl=60,
                                mail_uid="1000", mail_gid="1000")
        self.engine = AuthEngine(settings, self.clock, passdbs=[(self.passdb, db())],
                                 userdbs=[(self.userdb, db())])

    @defer.inlineCallbacks
    def test_cached_logins_and_flush_command(self):
        for _ in range(3):
            outcome = yield self.engine.authenticate(request(""), "alice", "a")
            self.assertTrue(outcome.ok)
        self.assertEqual(len(self.passdb.calls), 1)
        self.assertEqual(self.userdb.calls, 1)
        for _ in range(2):
            outcome = yield self.engine.authenticate(request(""), "ghost", "x")
            self.assertFalse(outcome.ok)
        self.assertEqual(len(self.passdb.calls), 2)
        proto = MasterProtocol(self.engine)
        self.assertEqual(proto.flush_cache(users=["ALICE"]), {"count": 2})
        outcome = yield self.engine.authenticate(request(""), "alice", "a")
        self.assertEqual(len(self.passdb.calls), 3)
        self.assertEqual(proto.flush_cache(users=[]), {"count": 3})

    @defer.inlineCallbacks
    def test_cache_key_includes_service(self):
        yield self.engine.authenticate(request(""), "alice", "a")
        req = request("")
        req.service = "pop3"
        yield self.engine.authenticate(req, "alice", "a")
        self.assertEqual(len(self.passdb.calls), 2)
