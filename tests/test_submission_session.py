"""Tests for pydovecot.submission.session against a scripted relay, over 127.0.0.1:
relay replies passed back, size limits, bad sequences, a relay that is down."""

from __future__ import annotations

import socket

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.interfaces import IPushProducer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.config.parser import parse_config
from pydovecot.session import SessionContext
from pydovecot.submission.session import SubmissionSession, _Output
from tests.login_fakes import server_tls_context


class FakeRelay(protocol.Protocol):
    """A minimal MTA: CHUNKING, and a RCPT it refuses (nobody@)."""

    def connectionMade(self):
        self.buf, self.bdat, self.messages = b"", 0, self.factory.messages
        self.data = False
        self.transport.write(b"220 relay.test ESMTP\r\n")

    def dataReceived(self, data):
        self.buf += data
        while True:
            if self.data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                stuffed = b"\r\n" + self.buf[:end + 2]
                self.messages.append(stuffed.replace(b"\r\n..", b"\r\n.")[2:])
                self.buf, self.data = self.buf[end + 5:], False
                self.transport.write(b"250 2.0.0 Ok: queued as D\r\n")
                continue
            if self.bdat:
                if len(self.buf) < self.bdat:
                    return
                self.messages.append(self.buf[:self.bdat])
                self.buf, self.bdat = self.buf[self.bdat:], 0
                self.transport.write(b"250 2.0.0 Ok: queued as X\r\n")
                continue
            if b"\n" not in self.buf:
                return
            line, self.buf = self.buf.split(b"\n", 1)
            cmd = line.strip().upper()
            if cmd.startswith(b"EHLO"):
                tls = b"" if self.factory.tls is None else b"250-STARTTLS\r\n"
                chunking = b"250-CHUNKING\r\n" if self.factory.chunking else b""
                self.transport.write(b"250-relay.test\r\n" + tls + chunking +
                                     b"250-SMTPUTF8\r\n250 SIZE 5000\r\n")
            elif cmd == b"DATA":
                self.data = True
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif cmd == b"STARTTLS":
                self.transport.write(b"220 2.0.0 Ready to start TLS\r\n")
                self.transport.startTLS(self.factory.tls)
                self.factory.tls_used = True
            elif cmd.startswith(b"RCPT") and b"NOBODY" in cmd:
                self.transport.write(b"550 5.1.1 <nobody@x>: Recipient address rejected\r\n")
            elif cmd.startswith(b"BDAT"):
                self.bdat = int(cmd.split()[1])
            elif cmd.startswith(b"QUIT"):
                self.transport.loseConnection()
                return
            else:
                self.transport.write(b"250 2.0.0 Ok\r\n")


def reply(f) -> list[bytes]:
    lines = []
    while True:
        line = f.readline()
        if not line:
            return lines + [b"<eof>"]
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return lines


def converse(port: int, commands: list[bytes]) -> list[list[bytes]]:
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        f = s.makefile("rb")
        out = [reply(f)]
        for cmd in commands:
            s.sendall(cmd)
            out.append(reply(f))
        return out


class SessionTests(unittest.TestCase):
    def setUp(self):
        self.messages: list[bytes] = []
        rf = protocol.Factory.forProtocol(FakeRelay)
        rf.messages = self.messages
        rf.tls, rf.tls_used, rf.chunking = server_tls_context(), False, True
        self.relay_factory = rf
        relay = reactor.listenTCP(0, rf, interface="127.0.0.1")
        self.addCleanup(relay.stopListening)
        self.relay_port = relay.getHost().port

    def serve(self, relay_port: int, extra: str = "") -> int:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"submission_relay_host = 127.0.0.1\nsubmission_relay_port = {relay_port}\n"
                    f"hostname = sub.test\nsubmission_max_mail_size = 100\n{extra}")
        config = parse_config(path)
        sessions = []

        class Session(SubmissionSession):
            def connectionMade(self):
                sessions.append(self)
                self.start(b"client.test")

        def build():
            ctx = SessionContext(user="alice", session_id="s1", remote_ip="127.0.0.1")
            session = Session(config, None, ctx)
            verifyObject(IPushProducer, _Output(session))
            return session

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(build), interface="127.0.0.1")

        @defer.inlineCallbacks
        def stop():
            for s in sessions:
                s.transport.loseConnection()
            yield port.stopListening()
            for _ in range(100):  # relay connections (TLS ones) close asynchronously
                if all(s.relay is None or s.relay.lost for s in sessions):
                    break
                yield task.deferLater(reactor, 0.05, lambda: None)

        self.addCleanup(stop)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_relay_replies_and_limits(self):
        port = self.serve(self.relay_port)
        out = yield threads.deferToThread(converse, port, [
            b"EHLO client.test\r\n", b"DATA\r\n", b"BDAT 3 LAST\r\nabc", b"MAIL FROM:<a@x.test>\r\n",
            b"RCPT TO:<nobody@x.test>\r\n", b"DATA\r\n", b"RCPT TO:<b@x.test>\r\n",
            b"DATA\r\n", b"Subject: hi\r\n\r\n..dot\r\n.\r\n",
            b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@x.test>\r\n",
            b"BDAT 200 LAST\r\n" + b"z" * 200,
            b"MAIL FROM:<a@x.test> SIZE=1000\r\n", b"BURL nonsense LAST\r\n", b"QUIT\r\n",
        ])
        self.assertEqual(out[0], [b"235 2.7.0 Logged in."])
        self.assertIn(b"250-SIZE 100", out[1])  # submission_max_mail_size < the relay's
        self.assertEqual(out[1][-1], b"250 SMTPUTF8")  # offered as the relay offers it
        self.assertEqual(out[2][0][:3], b"503")
        self.assertEqual(out[3][0][:3], b"503")  # BDAT before MAIL
        self.assertEqual(out[4], [b"250 2.0.0 Ok"])
        # The relay's refusal, passed back unchanged.
        self.assertEqual(out[5], [b"550 5.1.1 <nobody@x>: Recipient address rejected"])
        self.assertEqual(out[6][0][:3], b"554")  # no valid recipients
        self.assertEqual(out[8], [b"354 OK"])
        self.assertEqual(out[9], [b"250 2.0.0 Ok: queued as X"])
        self.assertEqual(self.messages[0], b"Subject: hi\r\n\r\n.dot\r\n")
        self.assertEqual(out[12], [b"552 5.3.4 Message size exceeds fixed maximum message size"])
        self.assertEqual(out[13], [b"552 5.3.4 Message size exceeds fixed maximum message size"])
        self.assertEqual(out[14][0][:3], b"503")  # the MAIL was refused: no transaction
        self.assertEqual(out[15], [b"221 2.0.0 Bye"])

    @defer.inlineCallbacks
    def test_relay_starttls(self):
        port = self.serve(self.relay_port, "submission_relay_ssl = starttls\n"
                                           "submission_relay_ssl_verify = no\n")
        out = yield threads.deferToThread(converse, port, [
            b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@x.test>\r\n",
            b"BDAT 5 LAST\r\nhello"])
        self.assertEqual([x[0][:3] for x in out[1:]], [b"250", b"250", b"250"])
        self.assertTrue(self.relay_factory.tls_used)
        self.assertEqual(self.messages, [b"hello"])

    @defer.inlineCallbacks
    def test_relay_without_chunking_gets_dot_stuffed_data(self):
        self.relay_factory.chunking = False
        port = self.serve(self.relay_port)
        body = b".lead\r\nmid\r\n.\r\nend"
        out = yield threads.deferToThread(converse, port, [
            b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@x.test>\r\n",
            b"BDAT %d LAST\r\n%s" % (len(body), body)])
        self.assertEqual(out[3], [b"250 2.0.0 Ok: queued as D"])
        self.assertEqual(self.messages, [body + b"\r\n"])

    @defer.inlineCallbacks
    def test_relay_down(self):
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        self.addCleanup(closed.close)
        port = self.serve(closed.getsockname()[1])
        out = yield threads.deferToThread(converse, port, [
            b"MAIL FROM:<a@x.test>\r\n", b"NOOP\r\n"])
        self.assertEqual(out[1], [b"451 4.4.0 Failed to relay command to the mail server"])
        self.assertEqual(out[2], [b"250 2.0.0 OK"])

    @defer.inlineCallbacks
    def test_relay_that_stops_answering(self):
        class Silent(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"220 relay.test\r\n")  # then nothing, ever

        silent = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        port = self.serve(silent.getHost().port, "submission_relay_command_timeout = 1 secs\n")
        out = yield threads.deferToThread(converse, port, [b"MAIL FROM:<a@x.test>\r\n",
                                                           b"NOOP\r\n"])
        self.assertEqual(out[1], [b"451 4.4.0 Failed to relay command to the mail server"])
        self.assertEqual(out[2], [b"250 2.0.0 OK"])
