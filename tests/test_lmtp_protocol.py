"""Tests for pydovecot.lmtp.protocol: smtplib.LMTP and raw sockets."""

from __future__ import annotations

import smtplib
import socket

from twisted.internet import defer, threads
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from pydovecot.lmtp.protocol import LMTPFactory
from pydovecot.log import format_line
from tests.login_fakes import FakeDeliveryBackend, ListeningMixin

MESSAGE = (b"From: bob@example.org\r\nTo: alice@example.com\r\n"
           b"Message-ID: <m1@example.org>\r\nSubject: hi\r\n\r\n"
           b"Hello\r\n.leading dot\r\n..two dots\r\nend\r\n")


def raw_lmtp(port: int, data: bytes, replies: int) -> list[bytes]:
    """Send ``data`` at once after the greeting; read ``replies`` final lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(data)
        out = []
        while len(out) < replies:
            line = f.readline()
            if not line:
                break
            if line[3:4] != b"-":
                out.append(line.rstrip(b"\r\n"))
        return out


class LMTPTests(ListeningMixin, unittest.TestCase):
    def setUp(self):
        self.backend = FakeDeliveryBackend(delay=0.01)
        self.port = self.listen(LMTPFactory(self.backend, "mx.example.com", 10000))

    @defer.inlineCallbacks
    def test_two_recipients_one_unknown(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        def run():
            s = smtplib.LMTP("127.0.0.1", self.port)
            code, lhlo = s.ehlo()
            refused = s.sendmail("bob@example.org",
                                 ["alice@example.com", "nobody@example.com",
                                  "carol@example.com"], MESSAGE)
            second = s.getreply()
            s.quit()
            return code, lhlo, refused, second
        code, lhlo, refused, second = yield threads.deferToThread(run)
        self.assertEqual(code, 250)
        for ext in (b"PIPELINING", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SIZE 10000",
                    b"CHUNKING", b"DSN", b"SMTPUTF8"):
            self.assertIn(ext, lhlo)
        self.assertEqual(refused, {"nobody@example.com": (
            550, b"5.1.1 <nobody@example.com> User doesn't exist: nobody@example.com")})
        self.assertEqual(second[0], 250)
        self.assertIn(b"<carol@example.com>", second[1])
        self.assertTrue(second[1].endswith(b"Saved"))
        users = [d[0] for d in self.backend.delivered]
        self.assertEqual(users, ["alice", "carol"])
        body = self.backend.delivered[0][1]
        # Two recipients: no Delivered-To:, a Received: without "for".
        self.assertRegex(body, rb"^Return-Path: <bob@example.org>\r\nReceived: from "
                               rb"\S+ \(\[127.0.0.1\]\)\r\n\tby mx.example.com with LMTP"
                               rb"\r\n\tid \S+\r\n\t\(envelope-from <bob@example.org>\); "
                               rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\nFrom: ")
        # smtplib dot-stuffed the lines; the server unstuffed them again.
        self.assertTrue(body.endswith(b"\r\n" + MESSAGE))
        self.assertEqual(self.backend.delivered[1][3], "carol@example.com")
        lines = [format_line(e, "lmtp") for e in events if "msgid" in e]
        self.assertEqual(len(lines), 2)
        self.assertRegex(lines[0], r"^lmtp\(alice\)<\d+><[^>:]+>: Info: "
                                   r"msgid=<m1@example.org>: saved mail to INBOX$")

    @defer.inlineCallbacks
    def test_size_limit(self):
        big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
        big = big * 200

        def run():
            s = smtplib.LMTP("127.0.0.1", self.port)
            s.ehlo()
            code1 = s.mail("bob@example.org", ["SIZE=20000"])
            s.rset()
            s.mail("bob@example.org")
            s.rcpt("alice@example.com")
            code2 = s.data(big)
            s.quit()
            return code1, code2
        code1, code2 = yield threads.deferToThread(run)
        self.assertEqual(code1[0], 552)
        self.assertEqual(code2[0], 552)
        self.assertIn(b"5.2.3", code2[1])
        self.assertEqual(self.backend.delivered, [])

    @defer.inlineCallbacks
    def test_pipelining(self):
        data = (b"LHLO mta\r\nMAIL FROM:<bob@example.org> BODY=8BITMIME\r\n"
                b"RCPT TO:<alice@example.com>\r\nRCPT TO:<temp@example.com>\r\n"
                b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<carol@example.com>\r\n"
                b"DATA\r\n" + MESSAGE + b".\r\nNOOP\r\nQUIT\r\n")
        replies = yield threads.deferToThread(raw_lmtp, self.port, data, 11)
        codes = [r[:9] for r in replies]
        self.assertEqual(codes, [b"250 SMTPU", b"250 2.1.0", b"250 2.1.5", b"451 4.3.0", b"550 5.1.1",
                                 b"250 2.1.5", b"354 OK", b"250 2.0.0", b"250 2.0.0",
                                 b"250 2.0.0", b"221 2.0.0"])
        self.assertEqual(replies[0], b"250 SMTPUTF8")
        self.assertIn(b"<alice@example.com>", replies[7])
        self.assertIn(b"<carol@example.com>", replies[8])
        self.assertEqual(len(self.backend.delivered), 2)
        # Sent raw (not stuffed): one leading dot of each line is removed.
        self.assertIn(b"\r\nleading dot\r\n.two dots\r\n", self.backend.delivered[0][1])

    @defer.inlineCallbacks
    def test_sequence_errors_and_long_line(self):
        data = (b"HELO x\r\nMAIL FROM:<a@b>\r\nLHLO x\r\nRCPT TO:<alice@example.com>\r\n"
                b"DATA\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA\r\n"
                b"NOOP " + b"x" * 2000 + b"\r\nVRFY alice\r\nFOO\r\nRSET\r\n")
        replies = yield threads.deferToThread(raw_lmtp, self.port, data, 12)
        self.assertEqual([r[:9] for r in replies], [
            b"500 5.5.1", b"250 2.1.0", b"250 SMTPU", b"503 5.5.0", b"503 5.5.0",
            b"250 2.1.0", b"503 5.5.0", b"503 5.5.0", b"500 5.5.2", b"252 2.3.3",
            b"500 5.5.1", b"250 2.0.0"])

    @defer.inlineCallbacks
    def test_delivery_failure(self):
        self.backend.fail_users.add("alice")
        data = (b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.com>\r\n"
                b"RCPT TO:<carol@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        replies = yield threads.deferToThread(raw_lmtp, self.port, data, 7)
        self.assertTrue(replies[5].startswith(b"451 4.2.0 <alice@example.com>"))
        self.assertTrue(replies[6].startswith(b"250 2.0.0 <carol@example.com>"))
        self.assertTrue(self.backend.delivered[0][1].startswith(b"Return-Path: <>\r\n"))
        self.flushLoggedErrors(OSError)


class LMTPUnitTests(unittest.TestCase):
    def test_inactivity(self):
        clock = Clock()
        proto = LMTPFactory(FakeDeliveryBackend(), "mx", 100, clock=clock).buildProtocol(None)
        t = StringTransport()
        proto.makeConnection(t)
        self.assertEqual(t.value(), b"220 mx Dovecot ready.\r\n")
        clock.advance(301)
        self.assertIn(b"421 4.4.2 mx Disconnected for inactivity", t.value())
        self.assertTrue(t.disconnecting)
        proto.connectionLost(None)
