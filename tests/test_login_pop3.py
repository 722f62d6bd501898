"""Tests for pydovecot.login.pop3: real poplib clients over 127.0.0.1."""

from __future__ import annotations

import base64
import poplib

from twisted.internet import defer, threads
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pydovecot.login.pop3 import POP3LoginFactory
from pydovecot.master.protocol import LimitExceeded
from tests.login_fakes import (
    FakeLoginBackend,
    ListeningMixin,
    UntrustedMixin,
    client_tls_context,
    server_tls_context,
)
from tests.test_login_imap import raw_exchange


class UntrustedPOP3Factory(UntrustedMixin, POP3LoginFactory):
    pass


class POP3LoginTests(ListeningMixin, unittest.TestCase):
    def setUp(self):
        self.backend = FakeLoginBackend()
        self.port = self.listen(POP3LoginFactory(self.backend, False))

    def client(self) -> poplib.POP3:
        return poplib.POP3("127.0.0.1", self.port, timeout=5)

    @defer.inlineCallbacks
    def test_greeting_capa_quit(self):
        def run():
            p = self.client()
            welcome, capa = p.getwelcome(), p.capa()
            p.quit()
            return welcome, capa
        welcome, capa = yield threads.deferToThread(run)
        self.assertEqual(welcome, b"+OK pydovecot ready.")
        self.assertEqual(capa["SASL"], ["PLAIN", "LOGIN"])
        for cap in ("TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "USER"):
            self.assertIn(cap, capa)
        self.assertNotIn("STLS", capa)
        self.assertEqual(self.backend.disconnects[-1][1], "Aborted login by logging out")

    @defer.inlineCallbacks
    def test_user_pass_ok(self):
        def run():
            p = self.client()
            p.user("alice")
            resp = p.pass_("secret")
            p.close()
            return resp
        resp = yield threads.deferToThread(run)
        self.assertEqual(resp, b"+OK Logged in.")
        h = self.backend.handoffs[0]
        self.assertEqual((h["user"], h["service"], h["tag"], h["mechanism"]),
                         ("alice", "pop3", None, "PLAIN"))

    @defer.inlineCallbacks
    def test_user_pass_wrong(self):
        def run():
            p = self.client()
            p.user("alice")
            try:
                p.pass_("nope")
            except poplib.error_proto as e:
                err = e.args[0]
            p.quit()
            return err
        err = yield threads.deferToThread(run)
        self.assertEqual(err, b"-ERR [AUTH] Authentication failed.")
        self.assertEqual(self.backend.disconnects[-1][2:], ("alice", 1))

    @defer.inlineCallbacks
    def test_auth_sasl_ir_and_continuation(self):
        ir = base64.b64encode(b"\0alice\0secret")
        data = (b"AUTH PLAIN " + base64.b64encode(b"\0alice\0bad") + b"\r\n"
                b"AUTH PLAIN\r\n" + ir + b"\r\nNOOP\r\n")
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"Logged in")
        self.assertIn(b"-ERR [AUTH] Authentication failed.\r\n+ \r\n+OK Logged in.", got)
        self.assertEqual(self.backend.handoffs[0]["pending"], b"NOOP\r\n")

    @defer.inlineCallbacks
    def test_auth_listing_cancel_bad_base64(self):
        data = b"AUTH\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n%%%\r\nAPOP a b\r\nFOO\r\nNOOP\r\n"
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"FOO\r\n+OK\r\n")
        self.assertIn(b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n", got)
        self.assertIn(b"+ " + base64.b64encode(b"Username:") + b"\r\n"
                      b"-ERR Authentication aborted by client.", got)
        self.assertIn(b"-ERR Invalid base64 data in continued response", got)
        self.assertIn(b"-ERR APOP not supported.", got)
        self.assertIn(b"-ERR Unknown command: FOO", got)

    @defer.inlineCallbacks
    def test_overlong_line(self):
        data = b"USER " + b"a" * 10000 + b"\r\nUSER alice\r\nPASS secret\r\n"
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"Logged in")
        self.assertIn(b"-ERR Input line too long.\r\n+OK\r\n+OK Logged in.", got)

    @defer.inlineCallbacks
    def test_pass_without_user(self):
        got = yield threads.deferToThread(raw_exchange, self.port, b"PASS x\r\n", b"\r\n-")
        self.assertIn(b"-ERR No username given.", got)

    @defer.inlineCallbacks
    def test_temporary_failure(self):
        self.backend.temporary_failure = True
        got = yield threads.deferToThread(raw_exchange, self.port,
                                          b"USER alice\r\nPASS secret\r\n", b"\r\n-")
        self.assertIn(b"-ERR [SYS/TEMP] Temporary authentication failure.", got)


class UntrustedPOP3Tests(ListeningMixin, unittest.TestCase):
    def setUp(self):
        self.backend = FakeLoginBackend(server_tls_context())
        self.port = self.listen(UntrustedPOP3Factory(self.backend, False))

    @defer.inlineCallbacks
    def test_plaintext_refused(self):
        def run():
            p = poplib.POP3("127.0.0.1", self.port, timeout=5)
            capa = p.capa()
            try:
                p.user("alice")
            except poplib.error_proto as e:
                err = e.args[0]
            p.quit()
            return capa, err
        capa, err = yield threads.deferToThread(run)
        self.assertIn("STLS", capa)
        self.assertNotIn("USER", capa)
        self.assertEqual(capa["SASL"], [])
        self.assertEqual(err, b"-ERR [AUTH] Plaintext authentication disallowed "
                              b"on non-secure (SSL/TLS) connections.")

    @defer.inlineCallbacks
    def test_stls_then_login(self):
        def run():
            p = poplib.POP3("127.0.0.1", self.port, timeout=5)
            p.stls(client_tls_context())
            capa = p.capa()
            p.user("alice")
            resp = p.pass_("secret")
            bye = p.quit()
            return capa, resp, bye
        capa, resp, bye = yield threads.deferToThread(run)
        self.assertNotIn("STLS", capa)
        self.assertIn("USER", capa)
        self.assertEqual(resp, b"+OK Logged in.")
        self.assertEqual(bye, b"+OK Logging out.")
        self.assertTrue(self.backend.handoffs[0]["tls"])


class POP3IdleTests(unittest.TestCase):
    def test_inactivity(self):
        clock = Clock()
        backend = FakeLoginBackend()
        proto = POP3LoginFactory(backend, False, clock=clock).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(181)
        self.assertIn(b"-ERR Disconnected for inactivity.\r\n", transport.value())
        self.assertTrue(transport.disconnecting)


class POP3LimitTests(unittest.TestCase):
    def connect(self, backend):
        backend.disable_plaintext_auth = False
        proto = POP3LoginFactory(backend, False, clock=Clock()).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_userip_limit_is_sys_temp(self):
        backend = FakeLoginBackend()
        reason = ("Maximum number of connections from user+IP exceeded "
                  "(mail_max_userip_connections=10)")
        backend.handoff_error = LimitExceeded(reason)
        proto, t = self.connect(backend)
        proto.dataReceived(b"USER alice\r\nPASS secret\r\n")
        self.assertTrue(t.value().endswith(b"-ERR [SYS/TEMP] " + reason.encode() + b"\r\n"))
        self.assertTrue(t.disconnecting)

    def test_input_buffer_full(self):
        backend = FakeLoginBackend()
        backend.hold_auth = True
        proto, t = self.connect(backend)
        proto.dataReceived(b"USER alice\r\nPASS secret\r\n" + b"NOOP\r\n" * 200)
        self.assertFalse(t.disconnecting)  # 1.2 KiB pending: kept
        proto.dataReceived(b"NOOP\r\n" * 2000)
        self.assertIn(b"-ERR Input buffer full, aborting\r\n", t.value())
        self.assertTrue(t.disconnecting)
