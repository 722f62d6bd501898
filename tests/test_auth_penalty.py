"""Tests of the auth penalty (authd.penalty) and its hook in auth-login."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial import unittest

from authd.penalty import AuthPenalty
from authd.server import AuthEngine, LoginProtocol
from authd.settings import AuthSettings
from tests.test_auth_chain import FakePassdb, FakeUserdb, db, request


class PenaltyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.penalty = AuthPenalty(self.clock, ["10.0.0.0/8"])

    def test_doubling_capped_at_15_seconds(self):
        ip = "192.0.2.1"
        self.assertEqual(self.penalty.delay(ip, 2.0), 2.0)
        delays = []
        for _ in range(6):
            self.penalty.failed(ip)
            delays.append(self.penalty.delay(ip, 2.0))
        self.assertEqual(delays, [2, 4, 8, 15, 15, 15])
        # Scaled by auth_failure_delay / 2.
        self.assertAlmostEqual(self.penalty.delay(ip, 0.02), 0.15)
        self.assertEqual(self.penalty.delay("192.0.2.2", 2.0), 2.0)

    def test_success_resets_and_expiry(self):
        ip = "192.0.2.1"
        self.penalty.failed(ip)
        self.penalty.failed(ip)
        self.penalty.succeeded(ip)
        self.assertEqual(self.penalty.failures(ip), 0)
        self.penalty.failed(ip)
        self.clock.advance(3599)
        self.assertEqual(self.penalty.failures(ip), 1)
        self.clock.advance(1)
        self.assertEqual(self.penalty.failures(ip), 0)
        self.assertEqual(len(self.penalty), 0)

    def test_trusted_networks_and_ipv6(self):
        for _ in range(5):
            self.penalty.failed("10.1.2.3")
            self.penalty.failed("2001:db8:1:2::1")
        self.assertEqual(self.penalty.delay("10.1.2.3", 2.0), 2.0)
        self.assertEqual(self.penalty.delay("::ffff:10.1.2.3", 2.0), 2.0)
        self.assertEqual(self.penalty.failures("2001:db8:1:ffff::9"), 5)  # same /48
        self.assertEqual(self.penalty.failures("2001:db8:2::1"), 0)
        self.assertEqual(self.penalty.failures("not an ip"), 0)

    def test_bounded(self):
        penalty = AuthPenalty(self.clock, max_entries=10)
        for i in range(50):
            penalty.failed(f"192.0.2.{i}")
        self.assertEqual(len(penalty), 10)
        self.assertEqual(penalty.failures("192.0.2.49"), 1)


class LoginDelayTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        settings = AuthSettings(auth_failure_delay=0.02, mail_uid="1000", mail_gid="1000",
                                login_trusted_networks=["127.0.0.0/8"])
        self.engine = AuthEngine(settings, self.clock,
                                 passdbs=[(FakePassdb({"alice": "a"}), db())],
                                 userdbs=[(FakeUserdb({"alice": {}}), db())])
        self.proto = LoginProtocol(self.engine)

    def fail(self, ip: str, temporary: bool = False) -> float:
        """The delay _fail waits before answering."""
        fired = []
        self.proto._fail("no", temporary, remote_ip=ip).addCallback(fired.append)
        waited = 0.0
        while not fired:
            self.clock.advance(0.005)
            waited += 0.005
        return round(waited, 3)

    @defer.inlineCallbacks
    def test_fail_uses_penalty(self):
        ip = "192.0.2.9"
        self.assertEqual([self.fail(ip) for _ in range(4)], [0.02, 0.04, 0.08, 0.15])
        self.assertEqual(self.fail("127.0.0.1"), 0.02)
        self.assertEqual(self.fail("192.0.2.10", temporary=True), 0.02)
        self.assertEqual(self.engine.penalty.failures("192.0.2.10"), 0)
        req = request("")
        req.remote_ip = ip
        outcome = yield self.engine.authenticate(req, "alice", "a")
        self.assertTrue(outcome.ok)
        self.assertEqual(self.fail(ip), 0.02)
