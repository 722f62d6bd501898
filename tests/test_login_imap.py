"""Tests for pydovecot.login.imap: real imaplib clients over 127.0.0.1."""

from __future__ import annotations

import base64
import imaplib
import socket

from twisted.internet import defer, reactor, task, threads
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pydovecot.login.common import ClientRegistry
from pydovecot.login.imap import IMAPLoginFactory, parse_arguments
from pydovecot.master.protocol import LimitExceeded
from tests.login_fakes import (
    FakeLoginBackend,
    ListeningMixin,
    UntrustedMixin,
    client_tls_context,
    server_tls_context,
)


class UntrustedIMAPFactory(UntrustedMixin, IMAPLoginFactory):
    pass


def raw_exchange(port: int, data: bytes, until: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` in one packet and read until ``until`` shows up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        got = b""
        while b"\r\n" not in got:
            got += s.recv(4096)
        s.sendall(data)
        while until not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


class IMAPLoginTests(ListeningMixin, unittest.TestCase):
    def setUp(self):
        self.backend = FakeLoginBackend()
        self.port = self.listen(IMAPLoginFactory(self.backend, False))

    def client(self, **kw) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.port, **kw)

    @defer.inlineCallbacks
    def test_greeting_and_capability(self):
        def run():
            m = self.client()
            welcome = m.welcome
            typ, data = m.capability()
            m.logout()
            return welcome, typ, data
        welcome, typ, data = yield threads.deferToThread(run)
        self.assertTrue(welcome.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 SASL-IR"))
        self.assertTrue(welcome.endswith(b"pydovecot ready."))
        self.assertEqual(typ, "OK")
        caps = data[0].split()
        self.assertIn(b"AUTH=PLAIN", caps)
        self.assertIn(b"LITERAL+", caps)
        self.assertNotIn(b"STARTTLS", caps)
        self.assertNotIn(b"LOGINDISABLED", caps)
        self.assertEqual(self.backend.disconnects[-1][1], "Aborted login by logging out")

    @defer.inlineCallbacks
    def test_login_ok(self):
        def run():
            m = self.client()
            typ, data = m.login("alice", "secret")
            m.shutdown()
            return typ, data
        typ, data = yield threads.deferToThread(run)
        self.assertEqual((typ, data), ("OK", [b"Logged in"]))
        h = self.backend.handoffs[0]
        self.assertEqual((h["user"], h["service"], h["mechanism"]), ("alice", "imap", "PLAIN"))
        self.assertEqual(h["pending"], b"")
        self.assertEqual(self.backend.disconnects, [])

    @defer.inlineCallbacks
    def test_login_wrong_password(self):
        def run():
            m = self.client()
            try:
                m.login("alice", "wrong")
            except imaplib.IMAP4.error as e:
                err = str(e)
            m.logout()
            return err
        err = yield threads.deferToThread(run)
        self.assertIn("[AUTHENTICATIONFAILED] Authentication failed.", err)
        self.assertEqual(self.backend.disconnects[-1][2:], ("alice", 1))

    @defer.inlineCallbacks
    def test_too_many_failures_disconnect(self):
        data = b"".join(b"a%d LOGIN alice wrong\r\n" % i for i in range(3))
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"* BYE")
        self.assertEqual(got.count(b"NO [AUTHENTICATIONFAILED]"), 3)
        self.assertIn(b"* BYE Too many failed authentication attempts.", got)

    @defer.inlineCallbacks
    def test_authenticate_plain_continuation(self):
        def run():
            m = self.client()
            typ, data = m.authenticate("PLAIN", lambda _: b"\0alice\0secret")
            m.shutdown()
            return typ
        typ = yield threads.deferToThread(run)
        self.assertEqual(typ, "OK")
        self.assertEqual(self.backend.handoffs[0]["mechanism"], "PLAIN")

    @defer.inlineCallbacks
    def test_authenticate_login_mechanism(self):
        answers = iter([b"alice", b"secret"])

        def run():
            m = self.client()
            typ, data = m.authenticate("LOGIN", lambda _: next(answers))
            m.shutdown()
            return typ
        typ = yield threads.deferToThread(run)
        self.assertEqual(typ, "OK")
        self.assertEqual(self.backend.handoffs[0]["mechanism"], "LOGIN")

    @defer.inlineCallbacks
    def test_authenticate_sasl_ir(self):
        ir = base64.b64encode(b"\0alice\0secret").decode()

        def run():
            m = self.client()
            typ, data = m._simple_command("AUTHENTICATE", "PLAIN", ir)
            m.shutdown()
            return typ
        typ = yield threads.deferToThread(run)
        self.assertEqual(typ, "OK")

    @defer.inlineCallbacks
    def test_authenticate_cancel_and_bad_base64(self):
        data = b"a AUTHENTICATE PLAIN\r\n*\r\nb AUTHENTICATE PLAIN\r\n!!!\r\nc NOOP\r\n"
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"c OK")
        self.assertIn(b"a BAD Authentication aborted by client.", got)
        self.assertIn(b"b BAD Invalid base64 data in continued response", got)
        self.assertEqual(self.backend.cancelled, 2)

    @defer.inlineCallbacks
    def test_authenticate_unknown_mechanism(self):
        got = yield threads.deferToThread(raw_exchange, self.port,
                                          b"a AUTHENTICATE X-FOO\r\n", b"a ")
        self.assertIn(b"a BAD Unsupported authentication mechanism.", got)

    @defer.inlineCallbacks
    def test_login_literal(self):
        def run():
            m = self.client()
            m.literal = b"secret"
            typ, data = m._simple_command("LOGIN", "alice")
            m.shutdown()
            return typ
        typ = yield threads.deferToThread(run)
        self.assertEqual(typ, "OK")
        self.assertEqual(self.backend.handoffs[0]["user"], "alice")

    @defer.inlineCallbacks
    def test_login_literal_plus_and_quoted(self):
        data = b'a LOGIN {5+}\r\nalice "sec\\\\ret"\r\nb LOGIN "alice" {6+}\r\nsecret\r\n'
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"b OK")
        self.assertIn(b"a NO [AUTHENTICATIONFAILED]", got)
        self.assertIn(b"b OK Logged in", got)
        self.assertNotIn(b"+ OK", got)

    @defer.inlineCallbacks
    def test_pipelined_bytes_reach_handoff(self):
        data = b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc FETCH 1 (FLAGS)\r\n"
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"a OK")
        self.assertIn(b"a OK Logged in", got)
        self.assertNotIn(b"b ", got)
        self.assertEqual(self.backend.handoffs[0]["pending"],
                         b"b SELECT INBOX\r\nc FETCH 1 (FLAGS)\r\n")

    @defer.inlineCallbacks
    def test_malformed_lines(self):
        data = (b"a FOO\r\nb SELECT INBOX\r\n\"x NOOP\r\nc LOGIN alice\r\n"
                b'd LOGIN "alice secret\r\ne ID ("a")\r\nf ID NIL\r\nz NOOP\r\n')
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"z OK")
        self.assertIn(b"a BAD Error in IMAP command FOO: Unknown command.", got)
        self.assertIn(b"b BAD Error in IMAP command SELECT: Not logged in.", got)
        self.assertIn(b"* BAD Error in IMAP command received by server.", got)
        self.assertIn(b"c BAD Error in IMAP command LOGIN: Invalid arguments.", got)
        self.assertIn(b"d BAD Error in IMAP command LOGIN: Missing '\"'.", got)
        self.assertIn(b"e BAD Error in IMAP command ID: Invalid parameters.", got)
        self.assertIn(b'* ID ("name" "pydovecot")\r\nf OK ID completed.', got)
        self.assertNotIn(b"Traceback", got)

    @defer.inlineCallbacks
    def test_too_many_bad_commands(self):
        data = b"".join(b"x%d BOGUS\r\n" % i for i in range(12))
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"* BYE")
        self.assertEqual(got.count(b"Unknown command."), 10)
        self.assertIn(b"* BYE Too many invalid IMAP commands.", got)

    @defer.inlineCallbacks
    def test_overlong_line_refused_session_continues(self):
        data = b"a NOOP " + b"x" * 70000 + b"\r\nb LOGIN alice secret\r\n"
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"b OK")
        self.assertIn(b"a BAD Error in IMAP command: Too long argument.", got)
        self.assertIn(b"b OK Logged in", got)

    @defer.inlineCallbacks
    def test_huge_sync_literal_refused(self):
        data = b"a LOGIN alice {100000}\r\nb NOOP\r\n"
        got = yield threads.deferToThread(raw_exchange, self.port, data, b"b OK")
        self.assertIn(b"a BAD Error in IMAP command: Too long argument.", got)
        self.assertNotIn(b"+ OK", got)

    @defer.inlineCallbacks
    def test_temporary_failure(self):
        self.backend.temporary_failure = True
        got = yield threads.deferToThread(raw_exchange, self.port,
                                          b"a LOGIN alice secret\r\n", b"a ")
        self.assertIn(b"a NO [UNAVAILABLE] Temporary authentication failure.", got)

    @defer.inlineCallbacks
    def test_handoff_failure(self):
        self.backend.handoff_fails = True
        got = yield threads.deferToThread(raw_exchange, self.port,
                                          b"a LOGIN alice secret\r\n", b"a ")
        self.assertIn(b"a NO [UNAVAILABLE] Internal error occurred.", got)
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_starttls_unavailable(self):
        got = yield threads.deferToThread(raw_exchange, self.port, b"a STARTTLS\r\n", b"a ")
        self.assertIn(b"a BAD TLS support isn't enabled.", got)


class UntrustedIMAPTests(ListeningMixin, unittest.TestCase):
    def setUp(self):
        self.backend = FakeLoginBackend(server_tls_context())
        self.port = self.listen(UntrustedIMAPFactory(self.backend, False))

    @defer.inlineCallbacks
    def test_plaintext_refused(self):
        def run():
            m = imaplib.IMAP4("127.0.0.1", self.port)
            caps = m.capabilities
            try:
                m.login("alice", "secret")
            except imaplib.IMAP4.error as e:
                err = str(e)
            typ, data = m._simple_command(
                "AUTHENTICATE", "PLAIN", base64.b64encode(b"\0alice\0secret").decode())
            m.logout()
            return caps, err, typ, data
        caps, err, typ, data = yield threads.deferToThread(run)
        self.assertIn("LOGINDISABLED", caps)
        self.assertIn("STARTTLS", caps)
        self.assertNotIn("AUTH=PLAIN", caps)
        self.assertIn("[PRIVACYREQUIRED] Plaintext authentication disallowed", err)
        self.assertEqual(typ, "NO")
        self.assertEqual(self.backend.handoffs, [])

    @defer.inlineCallbacks
    def test_starttls_then_login(self):
        def run():
            m = imaplib.IMAP4("127.0.0.1", self.port)
            m.starttls(ssl_context=client_tls_context())
            caps = m.capabilities
            typ, _ = m.login("alice", "secret")
            typ2, _ = m.noop()
            m.logout()
            return caps, typ, typ2
        caps, typ, typ2 = yield threads.deferToThread(run)
        self.assertNotIn("STARTTLS", caps)
        self.assertNotIn("LOGINDISABLED", caps)
        self.assertIn("AUTH=PLAIN", caps)
        self.assertEqual((typ, typ2), ("OK", "OK"))
        h = self.backend.handoffs[0]
        self.assertTrue(h["tls"])
        self.assertIn("relay", h)

    @defer.inlineCallbacks
    def test_starttls_discards_pipelined_commands(self):
        def run():
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.recv(4096)
                s.sendall(b"a STARTTLS\r\nb LOGIN alice secret\r\n")
                got = b""
                while b"a OK" not in got:
                    got += s.recv(4096)
                tls = client_tls_context().wrap_socket(s, server_hostname="localhost")
                tls.sendall(b"c NOOP\r\n")
                got2 = b""
                while b"c OK" not in got2:
                    got2 += tls.recv(4096)
                tls.sendall(b"d LOGOUT\r\n")
                while b"d OK" not in got2:
                    got2 += tls.recv(4096)
                return got, got2
        got, got2 = yield threads.deferToThread(run)
        self.assertIn(b"a OK Begin TLS negotiation now.", got)
        self.assertNotIn(b"b ", got + got2)
        self.assertEqual(self.backend.handoffs, [])

    @defer.inlineCallbacks
    def test_tls_handshake_failure_reason(self):
        def run():
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.recv(4096)
                s.sendall(b"a STARTTLS\r\n")
                got = b""
                while b"a OK" not in got:
                    got += s.recv(4096)
                s.sendall(b"this is not a TLS client hello\r\n" * 4)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
        yield threads.deferToThread(run)
        for _ in range(50):
            if self.backend.disconnects:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(self.backend.disconnects[0][1].startswith("TLS handshaking: "))


class IdleTimeoutTests(unittest.TestCase):
    def test_inactivity(self):
        clock = Clock()
        backend = FakeLoginBackend()
        factory = IMAPLoginFactory(backend, False, clock=clock)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"* OK [CAPABILITY"))
        # The login timeout counts from connect: input does not extend it.
        for _ in range(179):
            clock.advance(1)
            proto.dataReceived(b"a")
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertIn(b"* BYE Disconnected for inactivity.\r\n", transport.value())
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(backend.disconnects, [("imap", "inactivity", None, 0)])

    def test_implicit_tls_flag(self):
        factory = IMAPLoginFactory(FakeLoginBackend(server_tls_context()), True, clock=Clock())
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.assertTrue(proto.conn.tls)
        self.assertTrue(proto.conn.secured)
        self.assertEqual(len(proto.conn.session_id), 16)


class ParserTests(unittest.TestCase):
    def test_arguments(self):
        args = parse_arguments(b'"a\\"b" atom {3}\r\nxyz (1 "two" NIL)')
        self.assertEqual(args, [b'a"b', b"atom", b"xyz", [b"1", b"two", b"NIL"]])


def _connected(factory, transport=None):
    """A protocol from ``factory`` on a StringTransport (peer 192.168.1.1),
    greeted; plaintext auth allowed."""
    factory.backend.disable_plaintext_auth = False
    proto = factory.buildProtocol(None)
    transport = transport or StringTransport()
    proto.makeConnection(transport)
    return proto, transport


class InputBoundTests(unittest.TestCase):
    """Pre-login input is bounded: while a command runs, and inside an
    over-long command (its literals included)."""

    def setUp(self):
        self.backend = FakeLoginBackend()
        self.factory = IMAPLoginFactory(self.backend, False, clock=Clock())

    def test_pipeline_kept_while_auth_runs(self):
        self.backend.hold_auth = True
        proto, t = _connected(self.factory)
        proto.dataReceived(b"a LOGIN alice secret\r\n")
        self.assertEqual(len(self.backend.held), 1)
        proto.dataReceived(b"b NOOP\r\n" * 100)  # 800 bytes: kept
        proto.dataReceived(b"c NOOP\r\n" * 100)  # 1.6 KiB: kept, still read
        self.assertEqual(t.producerState, "producing")
        self.assertFalse(t.disconnecting)
        self.backend.held[0].callback(None)
        # The pipeline went with the handoff, unparsed.
        self.assertEqual(self.backend.handoffs[0]["pending"],
                         b"b NOOP\r\n" * 100 + b"c NOOP\r\n" * 100)

    def test_reading_resumes_after_a_failed_auth(self):
        self.backend.hold_auth = True
        proto, t = _connected(self.factory)
        proto.dataReceived(b"a LOGIN alice wrong\r\n" + b"b NOOP\r\n" * 200)
        self.assertFalse(t.disconnecting)
        self.backend.held[0].callback(None)
        self.assertEqual(t.producerState, "producing")
        self.assertEqual(t.value().count(b" OK NOOP completed."), 200)

    def test_input_buffer_full_disconnects(self):
        self.backend.hold_auth = True
        proto, t = _connected(self.factory)
        proto.dataReceived(b"a LOGIN alice secret\r\n" + b"x" * 70000)
        self.assertIn(b"* BYE Input buffer full, aborting\r\n", t.value())
        self.assertTrue(t.disconnecting)
        self.assertEqual(proto._buffer, b"")
        proto.connectionLost(None)
        self.assertEqual(self.backend.disconnects[-1][1], "Input buffer full")
        self.assertEqual(self.backend.handoffs, [])

    def test_overlong_literal_plus_is_skipped_whole(self):
        proto, t = _connected(self.factory)
        size = 1_000_000
        proto.dataReceived(b"a LOGIN {%d+}\r\n" % size)
        body = (b"b LOGOUT\r\nc LOGIN alice secret\r\n" * (size // 30 + 1))[:size]
        # In odd-sized pieces, so the literal's end falls anywhere.
        for i in range(0, size, 7919):
            proto.dataReceived(body[i:i + 7919])
        proto.dataReceived(b" {3+}\r\n\r\n\n secret\r\nd NOOP\r\n")
        out = t.value()
        self.assertIn(b"a BAD Error in IMAP command: Too long argument.\r\n", out)
        self.assertIn(b"d OK NOOP completed.\r\n", out)
        self.assertNotIn(b"BYE", out)
        self.assertNotIn(b"c ", out)
        self.assertEqual(self.backend.handoffs, [])
        self.assertLess(len(proto._buffer), 100)

    def test_login_timeout_counts_from_connect(self):
        clock = Clock()
        factory = IMAPLoginFactory(self.backend, False, clock=clock, login_timeout=10)
        proto, t = _connected(factory)
        for _ in range(9):
            clock.advance(1)
            proto.dataReceived(b"a NOOP\r\n")
        self.assertFalse(t.disconnecting)
        clock.advance(1)
        self.assertIn(b"* BYE Disconnected for inactivity.\r\n", t.value())
        self.assertTrue(t.disconnecting)

    def test_one_sasl_exchange_at_a_time(self):
        self.backend.hold_auth = True
        proto, t = _connected(self.factory)
        ir = base64.b64encode(b"\0alice\0wrong")
        proto.dataReceived(b"".join(b"a%d AUTHENTICATE PLAIN %s\r\n" % (i, ir) for i in range(3)))
        self.assertEqual(len(self.backend.held), 1)
        while len(self.backend.held) < 3:
            self.backend.held[-1].callback(None)
        self.backend.held[-1].callback(None)
        self.assertEqual(self.backend.max_active, 1)
        self.assertEqual(t.value().count(b"NO [AUTHENTICATIONFAILED]"), 3)


class ClientLimitTests(unittest.TestCase):
    def test_client_limit_disconnects_the_oldest_prelogin_client(self):
        registry = ClientRegistry(client_limit=2)
        factory = IMAPLoginFactory(FakeLoginBackend(), False, clock=Clock(), registry=registry)
        (p1, t1), (p2, t2), (p3, t3) = (_connected(factory) for _ in range(3))
        self.assertIn(b"* BYE Connection queue full\r\n", t1.value())
        self.assertTrue(t1.disconnecting)
        self.assertFalse(t2.disconnecting or t3.disconnecting)
        self.assertEqual(list(registry.clients), [p2, p3])

    def test_per_ip_cap(self):
        registry = ClientRegistry(max_ip_connections=2)
        factory = IMAPLoginFactory(FakeLoginBackend(), False, clock=Clock(), registry=registry)
        conns = [_connected(factory) for _ in range(3)]
        self.assertFalse(conns[0][1].disconnecting or conns[1][1].disconnecting)
        self.assertEqual(conns[2][1].value(),
                         b"* BYE [LIMIT] Maximum number of connections from your IP exceeded "
                         b"(login_max_ip_connections=2)\r\n")
        self.assertTrue(conns[2][1].disconnecting)
        conns[0][0].connectionLost(None)
        p, t = _connected(factory)
        self.assertTrue(t.value().startswith(b"* OK [CAPABILITY"))
        # A login frees the slot too.
        conns[1][0].dataReceived(b"a LOGIN alice secret\r\n")
        self.assertEqual(registry.preauth_by_ip, {"192.168.1.1": 1})


class LimitExceededTests(unittest.TestCase):
    def test_userip_limit_is_bye_limit(self):
        backend = FakeLoginBackend()
        reason = ("Maximum number of connections from user+IP exceeded "
                  "(mail_max_userip_connections=10)")
        backend.handoff_error = LimitExceeded(reason)
        proto, t = _connected(IMAPLoginFactory(backend, False, clock=Clock()))
        proto.dataReceived(b"a LOGIN alice secret\r\n")
        self.assertTrue(t.value().endswith(b"* BYE [LIMIT] " + reason.encode() + b"\r\n"))
        self.assertTrue(t.disconnecting)
        self.assertEqual(t.producerState, "producing")
        proto.connectionLost(None)
        self.assertEqual(backend.disconnects, [("imap", reason, "alice", 1)])
        self.flushLoggedErrors()


class AuthLinkTests(unittest.TestCase):
    """The login process's authd connection: a request never hangs."""

    def link(self):
        from pydovecot.login.process import AuthLink

        class Silent:
            transport = object()

            def __init__(self):
                self.sent = []

            def callRemote(self, command, **kwargs):
                self.sent.append(command)
                return defer.Deferred()  # authd stopped: no answer, ever

        clock = Clock()
        link = AuthLink("/nonexistent", timeout=2, clock=clock)
        link.amp = Silent()
        return link, clock

    def test_unanswered_request_fails_after_the_timeout(self):
        from pydovecot.login.process import AuthUnavailable

        link, clock = self.link()
        d = link.call(object)
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, AuthUnavailable)

    def test_waiting_for_a_connection_counts_too(self):
        from pydovecot.login.process import AuthUnavailable

        link, clock = self.link()
        link.amp = None
        d = link.call(object)
        clock.advance(2.1)
        self.failureResultOf(d, AuthUnavailable)


class IDMaximaTests(unittest.TestCase):
    """RFC 2971's maxima (30 pairs, 1024-octet values) are accepted before
    login and after it; one pair more is refused."""

    def id_command(self, pairs: int, size: int = 1024) -> bytes:
        fields = b" ".join(b'"f%02d" "%s"' % (i, b"v" * size) for i in range(pairs))
        return b"a ID (" + fields + b")\r\n"

    def test_before_login(self):
        proto, t = _connected(IMAPLoginFactory(FakeLoginBackend(), False, clock=Clock()))
        proto.dataReceived(self.id_command(30) + self.id_command(31).replace(b"a ID", b"b ID"))
        got = t.value()
        self.assertIn(b'* ID ("name" "pydovecot")\r\na OK ID completed.', got)
        self.assertIn(b"b BAD Error in IMAP command ID: Invalid parameters.", got)
        self.assertEqual(len(proto.client_id), 30)
        self.assertFalse(t.disconnecting)

    def test_after_login(self):
        from twisted.internet.testing import StringTransport

        from pydovecot.imap.session import IMAPSession
        from pydovecot.session import SessionContext
        from tests.imap_fakes import FakeStorage

        transport = StringTransport()
        session = IMAPSession(FakeStorage(), SessionContext("alice", "t", settings={}))
        session.clock = Clock()
        session.slice = 60.0
        session.makeConnection(transport)
        session.start(None, b"")
        session.dataReceived(self.id_command(30) + self.id_command(31).replace(b"a ID", b"b ID")
                             + b"c ID NIL\r\n")
        got = transport.value()
        self.assertIn(b'* ID ("name" "pydovecot")\r\na OK ID completed.', got)
        self.assertIn(b"b BAD Error in IMAP command ID: Invalid parameters.", got)
        self.assertIn(b"c OK ID completed.", got)
