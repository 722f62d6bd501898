"""authd's auth-client socket (Dovecot auth protocol 1.2) over a real UNIX
socket: handshake, PLAIN and LOGIN exchanges, the failure delay, limits and
malformed input, and Dovecot's tab-escaping."""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial import unittest

from authd import client_protocol
from authd.client_protocol import format_reply, parse_params, tabescape, tabunescape
from authd.exchange import Reply
from authd.server import build_factories
from authd.settings import AuthSettings, DbSettings

USERS = """\
alice:{PLAIN}secret:1000:1001::/home/alice::
bob:{PLAIN}builder:1002:1002::::
"""

DELAY = 0.2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ALICE_NOPE = b64(b"\0alice\0nope")
ALICE_OK = b64(b"\0alice\0secret")
ALICE_UPPER = b64(b"\0Alice\0secret")
ALICE_WRONG = b64(b"\0alice\0wrong")
BOB_OK = b64(b"\0bob\0builder")
NOBODY = b64(b"\0nobody\0x")


class RawClient(LineOnlyReceiver):
    """Collects the server's lines; ``closed`` fires on disconnect."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self.lines: defer.DeferredQueue = defer.DeferredQueue()
        self.closed: defer.Deferred = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.lines.put(line.decode())

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)

    def send(self, *lines: str | bytes) -> None:
        for line in lines:
            data = line.encode() if isinstance(line, str) else line
            self.transport.write(data + b"\n")

    def line(self, timeout: float = 5) -> defer.Deferred:
        d = self.lines.get()
        d.addTimeout(timeout, reactor)
        return d


class AuthClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="authc-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        passwd = os.path.join(self.dir, "users")
        with open(passwd, "w") as f:
            f.write(USERS)
        self.settings = AuthSettings(
            base_dir=self.dir,
            auth_mechanisms=["plain", "login"],
            auth_username_format="%Ln",
            auth_failure_delay=DELAY,
            auth_verbose=True,
            passdbs=[DbSettings("passwd-file", f"scheme=PLAIN {passwd}")],
            userdbs=[DbSettings("passwd-file", passwd)],
        )
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.path = os.path.join(self.dir, "auth-client")
        factory = build_factories(self.settings)["auth-client"]
        port = reactor.listenUNIX(self.path, factory)
        self.addCleanup(port.stopListening)

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    @defer.inlineCallbacks
    def connect(self, handshake: bool = True):
        """A connected client that has read the server's handshake and
        (``handshake``) sent its own."""
        client = yield connectProtocol(UNIXClientEndpoint(reactor, self.path), RawClient())
        self.addCleanup(self._close, client)
        client.greeting = []
        while True:
            line = yield client.line()
            client.greeting.append(line)
            if line == "DONE":
                break
        if handshake:
            client.send("VERSION\t1\t2", f"CPID\t{os.getpid()}")
        return client

    @staticmethod
    def _close(client: RawClient) -> defer.Deferred:
        client.transport.loseConnection()
        return client.closed

    @defer.inlineCallbacks
    def assert_disconnected(self, client: RawClient, problem: str):
        yield client.closed.addTimeout(5, reactor)
        self.assertIn(problem, self.log_text())
        self.assertNotIn("Traceback", self.log_text())
        self.assertFalse([e for e in self.events if e.get("log_failure")])

    # -- handshake ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_handshake(self):
        client = yield self.connect()
        lines = client.greeting
        self.assertEqual(lines[0], "VERSION\t1\t2")
        self.assertEqual(lines[1:3], ["MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext"])
        self.assertEqual(lines[3], f"SPID\t{os.getpid()}")
        self.assertEqual(lines[4], "CUID\t1")
        self.assertRegex(lines[5], r"^COOKIE\t[0-9a-f]{32}$")
        self.assertEqual(lines[6:], ["DONE"])
        second = yield self.connect()
        self.assertEqual(second.greeting[4], "CUID\t2")
        self.assertNotEqual(second.greeting[5], lines[5])

    @defer.inlineCallbacks
    def test_major_version_mismatch_disconnects(self):
        client = yield self.connect(handshake=False)
        client.send("VERSION\t2\t0")
        yield self.assert_disconnected(client, "protocol version 2")

    @defer.inlineCallbacks
    def test_auth_before_handshake_disconnects(self):
        client = yield self.connect(handshake=False)
        client.send(f"AUTH\t1\tPLAIN\tservice=smtp\tresp={ALICE_OK}")
        yield self.assert_disconnected(client, "expected VERSION")

    @defer.inlineCallbacks
    def test_older_minor_version_and_pipelined_handshake(self):
        """Postfix sends VERSION 1 0 and its first AUTH may follow at once."""
        client = yield self.connect(handshake=False)
        client.transport.write(
            b"VERSION\t1\t0\nCPID\t4242\nAUTH\t7\tPLAIN\tservice=smtp\tsecured\tresp="
            + b64(b"\0alice\0secret").encode() + b"\n")
        self.assertEqual((yield client.line()), "OK\t7\tuser=alice")

    # -- exchanges --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_plain_with_initial_response(self):
        client = yield self.connect()
        client.send(f"AUTH\t1\tPLAIN\tservice=smtp\tsecured\tnologin\tlip=127.0.0.1"
                    f"\trip=192.0.2.1\tlport=25\trport=51000\tno-penalty\tsession=abc"
                    f"\tlocal_name=mx.example.org\tssl_cipher=x\tresp={ALICE_UPPER}")
        self.assertEqual((yield client.line()), "OK\t1\tuser=alice")

    @defer.inlineCallbacks
    def test_plain_without_initial_response(self):
        client = yield self.connect()
        client.send("AUTH\t1\tPLAIN\tservice=smtp\tsecured")
        self.assertEqual((yield client.line()), "CONT\t1\t")
        client.send(f"CONT\t1\t{BOB_OK}")
        self.assertEqual((yield client.line()), "OK\t1\tuser=bob")

    @defer.inlineCallbacks
    def test_wrong_password_fails_after_delay(self):
        client = yield self.connect()
        started = time.monotonic()
        client.send(f"AUTH\t2\tPLAIN\tservice=smtp\tsecured\tresp={ALICE_WRONG}")
        self.assertEqual((yield client.line()), "FAIL\t2\tuser=alice")
        self.assertGreaterEqual(time.monotonic() - started, DELAY * 0.9)
        # The connection stays usable.
        client.send(f"AUTH\t3\tPLAIN\tservice=smtp\tsecured\tresp={ALICE_OK}")
        self.assertEqual((yield client.line()), "OK\t3\tuser=alice")

    @defer.inlineCallbacks
    def timed_failure(self, client: RawClient, rid: int, extra: str = ""):
        started = time.monotonic()
        client.send(f"AUTH\t{rid}\tPLAIN\tservice=smtp\tsecured\trip=192.0.2.7{extra}"
                    f"\tresp={ALICE_WRONG}")
        self.assertEqual((yield client.line()), f"FAIL\t{rid}\tuser=alice")
        return time.monotonic() - started

    @defer.inlineCallbacks
    def test_failures_from_one_ip_are_penalised(self):
        client = yield self.connect()
        first = yield self.timed_failure(client, 1)
        second = yield self.timed_failure(client, 2)
        self.assertLess(first, DELAY * 1.5)
        self.assertGreaterEqual(second, DELAY * 1.8)

    @defer.inlineCallbacks
    def test_no_penalty(self):
        client = yield self.connect()
        for rid in (1, 2):
            elapsed = yield self.timed_failure(client, rid, "\tno-penalty")
            self.assertGreaterEqual(elapsed, DELAY * 0.9)
            self.assertLess(elapsed, DELAY * 1.5)

    @defer.inlineCallbacks
    def test_unknown_user_fails(self):
        client = yield self.connect()
        client.send(f"AUTH\t2\tPLAIN\tservice=smtp\tsecured\tresp={NOBODY}")
        self.assertTrue((yield client.line()).startswith("FAIL\t2"))

    @defer.inlineCallbacks
    def test_login_round_trips(self):
        client = yield self.connect()
        client.send("AUTH\t5\tLOGIN\tservice=smtp\tsecured")
        self.assertEqual((yield client.line()), f"CONT\t5\t{b64(b'Username:')}")
        client.send(f"CONT\t5\t{b64(b'alice')}")
        self.assertEqual((yield client.line()), f"CONT\t5\t{b64(b'Password:')}")
        client.send(f"CONT\t5\t{b64(b'secret')}")
        self.assertEqual((yield client.line()), "OK\t5\tuser=alice")

    @defer.inlineCallbacks
    def test_concurrent_requests_interleave(self):
        client = yield self.connect()
        client.send("AUTH\t1\tLOGIN\tservice=smtp\tsecured", "AUTH\t2\tLOGIN\tservice=smtp\tsecured")
        self.assertEqual(sorted([(yield client.line()), (yield client.line())]),
                         [f"CONT\t1\t{b64(b'Username:')}", f"CONT\t2\t{b64(b'Username:')}"])
        client.send(f"CONT\t2\t{b64(b'bob')}", f"CONT\t1\t{b64(b'alice')}")
        yield client.line()
        yield client.line()
        client.send(f"CONT\t1\t{b64(b'secret')}")
        self.assertEqual((yield client.line()), "OK\t1\tuser=alice")
        client.send(f"CONT\t2\t{b64(b'builder')}")
        self.assertEqual((yield client.line()), "OK\t2\tuser=bob")

    @defer.inlineCallbacks
    def test_plaintext_needs_secured(self):
        client = yield self.connect()
        client.send(f"AUTH\t1\tPLAIN\tservice=smtp\tresp={ALICE_OK}")
        line = yield client.line()
        self.assertTrue(line.startswith("FAIL\t1\treason=Plaintext authentication disallowed"),
                        line)
        self.settings.disable_plaintext_auth = False
        client.send(f"AUTH\t2\tPLAIN\tservice=smtp\tresp={ALICE_OK}")
        self.assertEqual((yield client.line()), "OK\t2\tuser=alice")

    @defer.inlineCallbacks
    def test_unsupported_mechanism_and_bad_base64(self):
        client = yield self.connect()
        client.send("AUTH\t1\tGSSAPI\tservice=smtp\tsecured")
        self.assertEqual((yield client.line()),
                         "FAIL\t1\treason=Unsupported authentication mechanism.")
        client.send("AUTH\t2\tPLAIN\tservice=smtp\tsecured\tresp=!!!notbase64")
        self.assertEqual((yield client.line()),
                         "FAIL\t2\treason=Invalid base64 data in initial response")
        client.send("AUTH\t3\tLOGIN\tservice=smtp\tsecured")
        yield client.line()
        client.send("CONT\t3\t%%%")
        self.assertEqual((yield client.line()),
                         "FAIL\t3\treason=Invalid base64 data in continued response")

    @defer.inlineCallbacks
    def test_cont_for_unknown_request(self):
        client = yield self.connect()
        client.send(f"CONT\t9\t{b64(b'x')}")
        self.assertEqual((yield client.line()),
                         "FAIL\t9\treason=Authentication request timed out")

    @defer.inlineCallbacks
    def test_request_times_out(self):
        self.patch(client_protocol, "REQUEST_TIMEOUT", 0.1)
        client = yield self.connect()
        client.send("AUTH\t1\tLOGIN\tservice=smtp\tsecured")
        yield client.line()
        self.assertEqual((yield client.line()),
                         "FAIL\t1\treason=Authentication request timed out")

    @defer.inlineCallbacks
    def test_too_many_requests(self):
        self.patch(client_protocol, "MAX_REQUESTS", 2)
        client = yield self.connect()
        client.send(*(f"AUTH\t{n}\tLOGIN\tservice=smtp\tsecured" for n in (1, 2, 3)))
        lines = []
        for _ in range(3):
            lines.append((yield client.line()))
        self.assertIn("FAIL\t3\ttemp\treason=Temporary authentication failure.", lines)

    @defer.inlineCallbacks
    def test_disconnect_during_failure_delay(self):
        """The pending delay is cancelled: trial would see a dirty reactor."""
        client = yield self.connect()
        client.send(f"AUTH\t1\tPLAIN\tservice=smtp\tsecured\tresp={ALICE_NOPE}")
        yield _sleep(DELAY / 2)
        client.transport.loseConnection()
        yield client.closed
        yield _sleep(0.01)

    # -- malformed input ------------------------------------------------------

    @defer.inlineCallbacks
    def check_violation(self, line: bytes, problem: str):
        client = yield self.connect()
        client.send(line)
        yield self.assert_disconnected(client, problem)

    def test_unknown_command(self):
        return self.check_violation(b"HELLO\tthere", "unknown command 'HELLO'")

    def test_duplicate_id(self):
        return self.check_violation(
            b"AUTH\t1\tLOGIN\tservice=smtp\tsecured\nAUTH\t1\tLOGIN\tservice=smtp\tsecured",
            "duplicate request id 1")

    def test_bad_id(self):
        return self.check_violation(b"AUTH\tx1\tPLAIN\tservice=smtp", "invalid request id")

    def test_huge_id(self):
        return self.check_violation(b"AUTH\t99999999999\tPLAIN\tservice=smtp",
                                    "invalid request id")

    def test_missing_service(self):
        return self.check_violation(b"AUTH\t1\tPLAIN\tsecured", "AUTH without service")

    def test_short_auth_and_cont(self):
        return self.check_violation(b"AUTH\t1", "AUTH without id and mechanism")

    def test_short_cont(self):
        return self.check_violation(b"CONT\t1", "CONT without id and data")

    def test_not_utf8(self):
        return self.check_violation(b"AUTH\t1\tPLAIN\tservice=\xff\xfe", "not valid UTF-8")

    def test_line_too_long(self):
        return self.check_violation(b"AUTH\t1\tPLAIN\tservice=smtp\tresp=" + b"A" * 20000,
                                    "line longer than 16384 bytes")

    @defer.inlineCallbacks
    def test_cont_while_busy(self):
        client = yield self.connect()
        client.send(f"AUTH\t1\tPLAIN\tservice=smtp\tsecured\tresp={ALICE_NOPE}",
                    f"CONT\t1\t{b64(b'x')}")
        yield self.assert_disconnected(client, "while it is being checked")

    @defer.inlineCallbacks
    def test_line_just_under_limit_is_fine(self):
        client = yield self.connect()
        resp = b64(b"\0alice\0" + b"x" * 9000)
        line = f"AUTH\t1\tPLAIN\tservice=smtp\tsecured\tresp={resp}"
        self.assertLess(len(line), client_protocol.MAX_LINE)
        client.send(line)
        self.assertTrue((yield client.line()).startswith("FAIL\t1"))

    # -- escaping ------------------------------------------------------------------

    def test_tabescape_round_trip(self):
        for text in ("", "plain", "a\tb", "x\ny\r", "\x01", "\x011t", "tab\t\x01n\n"):
            self.assertEqual(tabunescape(tabescape(text)), text)
            self.assertNotRegex(tabescape(text), r"[\t\r\n]")
        self.assertEqual(tabescape("a\tb\nc\x01"), "a\x01tb\x01nc\x011")
        self.assertEqual(tabunescape("a\x01tb\x01rc\x01n\x011"), "a\tb\rc\n\x01")
        self.assertEqual(tabunescape("x\x01"), "x")

    def test_params_are_unescaped(self):
        params = parse_params(["service=smtp", "secured", "session=a\x01tb", "=x", "resp="])
        self.assertEqual(params, {"service": "smtp", "secured": "", "session": "a\tb", "resp": ""})

    def test_replies_are_escaped(self):
        line = format_reply(4, Reply("fail", user="a\tb", reason="no\nway", temporary=True))
        self.assertEqual(line, b"FAIL\t4\tuser=a\x01tb\ttemp\treason=no\x01nway\n")
        self.assertEqual(format_reply(4, Reply("ok", user="u\x01")), b"OK\t4\tuser=u\x011\n")
        self.assertEqual(format_reply(1, Reply("continue", challenge=b"\0\xff")),
                         b"CONT\t1\tAP8=\n")

    @defer.inlineCallbacks
    def test_escaped_session_in_log_is_harmless(self):
        client = yield self.connect()
        client.send(f"AUTH\t1\tPLAIN\tservice=smtp\tsecured\tsession=s\x01n1"
                    f"\tresp={ALICE_OK}")
        self.assertEqual((yield client.line()), "OK\t1\tuser=alice")
        self.assertFalse(re.search(r"\ns1", self.log_text()))


def _sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
