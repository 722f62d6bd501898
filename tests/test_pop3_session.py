"""POP3 session tests with a real poplib client over loopback TCP."""

from __future__ import annotations

import io
import poplib
import shutil
import socket
import tempfile

from twisted.internet import protocol, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from pydovecot.pop3.session import POP3Session, format_uidl, pop3_lines
from pydovecot.session import SessionContext
from pydovecot.storage.maildir import MaildirStorage

MSG1 = b"Subject: one\n\nline1\n.dot line\nline3\n"
BIG = b"Subject: big\n\n" + b"x" * 1000 + b"\n" + b".y\n" * 200_000


class _Factory(protocol.ServerFactory):
    def __init__(self, storage: MaildirStorage, pending: bytes = b""):
        self.storage = storage
        self.pending = pending
        self.sessions: list[POP3Session] = []

    def buildProtocol(self, addr: object) -> POP3Session:
        factory = self

        class Started(POP3Session):
            def connectionMade(self) -> None:
                factory.sessions.append(self)
                self.start(factory.pending)

        return Started(self.storage, SessionContext(user="alice", session_id="abc"))


class HelperTests(unittest.TestCase):
    def test_uidl_format(self) -> None:
        self.assertEqual(format_uidl("%08Xu%08Xv", 26, 1700000000), "0000001A6553F100")
        self.assertEqual(format_uidl("%v.%u%%", 3, 9), "9.3%")
        self.assertRaises(ValueError, format_uidl, "%m", 1, 1)

    def test_lines(self) -> None:
        out = b"".join(pop3_lines(io.BytesIO(b"A: b\r\n\r\n.x\ny\nz")))
        self.assertEqual(out, b"A: b\r\n\r\n..x\r\ny\r\nz\r\n")
        top = b"".join(pop3_lines(io.BytesIO(b"A: b\n\n1\n2\n3\n"), 1))
        self.assertEqual(top, b"A: b\r\n\r\n1\r\n")


class POP3SessionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.storage = MaildirStorage("alice", self.dir)
        self.storage.append("INBOX", io.BytesIO(MSG1))
        self.storage.append("INBOX", io.BytesIO(BIG))
        self.storage.append("INBOX", io.BytesIO(b"Subject: three\r\n\r\nbody\r\n"))
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def listen(self, pending: bytes = b"") -> tuple[_Factory, int]:
        factory = _Factory(self.storage, pending)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    @inlineCallbacks
    def test_transaction(self) -> None:
        factory, port = self.listen()
        box = yield self.storage.open("INBOX", readonly=True)
        v = box.uidvalidity
        box.close()

        def client() -> dict:
            c = poplib.POP3("127.0.0.1", port, timeout=10)
            r = {"welcome": c.getwelcome(), "stat": c.stat(), "list": c.list(),
                 "list2": c.list(2), "uidl": c.uidl(), "uidl1": c.uidl(1),
                 "capa": c.capa(), "retr1": c.retr(1), "top3": c.top(3, 0)}
            r["retr2"] = c.retr(2)
            r["noop"] = c.noop()
            r["dele"] = c.dele(3)
            try:
                c.retr(3)
            except poplib.error_proto as e:
                r["retr_deleted"] = e.args[0]
            try:
                c.retr(9)
            except poplib.error_proto as e:
                r["retr9"] = e.args[0]
            r["stat2"] = c.stat()
            r["rset"] = c.rset()
            r["dele1"] = c.dele(1)
            r["quit"] = c.quit()
            return r

        r = yield deferToThread(client)
        for _ in range(100):  # let the server see the close
            if any("Disconnected" in e.get("log_format", "") for e in self.events):
                break
            yield deferLater(reactor, 0.01)
        self.assertEqual(r["welcome"], b"+OK Logged in.")
        sizes = [len(MSG1) + MSG1.count(b"\n"), len(BIG) + BIG.count(b"\n"), 24]
        self.assertEqual(r["stat"], (3, sum(sizes)))
        self.assertEqual(r["list"][1], [b"%d %d" % (i + 1, s) for i, s in enumerate(sizes)])
        self.assertEqual(r["list2"], b"+OK 2 %d" % sizes[1])
        self.assertEqual(r["uidl1"], b"+OK 1 00000001%08X" % v)
        self.assertEqual(len(r["uidl"][1]), 3)
        self.assertIn("UIDL", r["capa"])
        self.assertIn("PIPELINING", r["capa"])
        self.assertEqual(r["retr1"][1], [b"Subject: one", b"", b"line1", b".dot line", b"line3"])
        self.assertEqual(r["retr1"][2], sizes[0])
        self.assertEqual(r["top3"][1], [b"Subject: three", b""])
        self.assertEqual(len(r["retr2"][1]), 200_003)
        self.assertEqual(r["retr2"][1][-1], b".y")
        self.assertEqual(r["retr_deleted"], b"-ERR Message is deleted.")
        self.assertEqual(r["retr9"], b"-ERR There's no message 9.")
        self.assertEqual(r["stat2"], (2, sizes[0] + sizes[1]))
        self.assertEqual(r["quit"], b"+OK Logging out.")
        box = yield self.storage.open("INBOX")
        self.assertEqual([m.uid for m in box.messages], [2, 3])
        self.assertEqual(box.messages[0].flags, {"\\Seen"})
        self.assertEqual(box.messages[1].flags, set())
        msgs = [e for e in self.events if "Disconnected" in e.get("log_format", "")]
        self.assertEqual(len(msgs), 1)
        self.assertTrue(msgs[0]["log_prefix"].startswith("pop3(alice)<"))
        self.assertEqual((msgs[0]["retr"], msgs[0]["dele"], msgs[0]["top"]), (2, 1, 1))

    @inlineCallbacks
    def test_pipelined_and_errors(self) -> None:
        factory, port = self.listen(pending=b"STAT\r\n")

        def client() -> bytes:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"RETR 2\r\nNOOP\r\nFOO\r\n" + b"X" * 600 + b"\r\nLIST x\r\nQUIT\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            return data

        data = yield deferToThread(client)
        self.assertTrue(data.startswith(b"+OK Logged in.\r\n+OK 3 "))
        tail = data.split(b"\r\n.\r\n", 1)[1]
        self.assertEqual(tail, b"+OK\r\n-ERR Unknown command: FOO\r\n-ERR Command too long\r\n"
                               b"-ERR Invalid message number: x\r\n+OK Logging out.\r\n")
