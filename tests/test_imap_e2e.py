"""End-to-end IMAP tests: imaplib and imapclient over 127.0.0.1 against
IMAPSession on the real Maildir storage (``open_storage`` in a temp dir)."""

from __future__ import annotations

import imaplib
import tempfile

from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from pydovecot.imap.session import IMAPSession
from pydovecot.session import SessionContext
from pydovecot.storage import open_storage

MULTIPART = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: parts\r\n"
    b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n"
    b"--b1\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
    b"--b1\r\nContent-Type: text/html\r\n\r\n<b>second</b>\r\n--b1--\r\n"
)


class GreetingSession(IMAPSession):
    """Test wrapper: a login process would have sent the greeting."""

    def connectionMade(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.transport.write(b"* PREAUTH test ready\r\n")
        self.start(None, b"")

    def connectionLost(self, reason=None) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class E2ETests(unittest.TestCase):
    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="imap-e2e-")
        self.storage = open_storage("alice", "maildir:~/Maildir", self.home)
        factory = Factory()
        self.sessions: list[GreetingSession] = []

        def build() -> GreetingSession:
            session = GreetingSession(self.storage, SessionContext("alice", "sess", settings={}))
            self.sessions.append(session)
            return session

        factory.protocol = build
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addr = self.port.getHost().port

    def tearDown(self):
        waits = [defer.maybeDeferred(self.port.stopListening)]
        for session in self.sessions:
            if not session.lost.called:
                session.transport.abortConnection()
            waits.append(session.lost)
        return defer.gatherResults(waits)

    def client(self) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.addr, timeout=10)

    @defer.inlineCallbacks
    def test_imaplib_session(self):
        def run():
            c = self.client()
            results = {}
            results["caps"] = c.capabilities
            results["create"] = c.create("Archive")
            for i in range(3):
                c.append("INBOX", "(\\Flagged)", None, b"Subject: msg %d\r\n\r\nbody %d\r\n" % (i, i))
            results["append"] = c.append("INBOX", None, None, MULTIPART)
            results["select"] = c.select("INBOX")
            results["fetch"] = c.fetch("1:*", "(FLAGS UID RFC822.SIZE)")
            results["part"] = c.fetch("4", "(BODY.PEEK[2] BODY[1.MIME] BODYSTRUCTURE ENVELOPE)")
            results["search"] = c.search(None, "SUBJECT", "msg")
            results["uidsearch"] = c.uid("SEARCH", "TEXT", "second")
            results["store"] = c.store("1", "+FLAGS", "(\\Deleted)")
            results["copy"] = c.copy("2:3", "Archive")
            results["move"] = c.uid("MOVE", "3", "Archive")
            results["expunge"] = c.expunge()
            results["status"] = c.status("Archive", "(MESSAGES UIDNEXT)")
            results["list"] = c.list()
            results["close"] = c.close()
            results["logout"] = c.logout()
            return results

        r = yield threads.deferToThread(run)
        self.assertIn("IDLE", r["caps"])
        self.assertIn("MOVE", r["caps"])
        self.assertEqual(r["create"][0], "OK")
        self.assertIn(b"APPENDUID", r["append"][1][0])
        self.assertEqual(r["select"], ("OK", [b"4"]))
        self.assertEqual(len(r["fetch"][1]), 4)
        self.assertIn(b"\\Flagged", r["fetch"][1][0])
        part = r["part"][1]
        self.assertEqual(part[0][1], b"<b>second</b>")
        self.assertEqual(part[1][1], b"Content-Type: text/plain\r\n\r\n")
        self.assertIn(b'"mixed" ("boundary" "b1")', part[2])
        self.assertIn(b'"parts"', part[2])
        self.assertEqual(r["search"], ("OK", [b"1 2 3"]))
        self.assertEqual(r["uidsearch"], ("OK", [b"4"]))
        self.assertIn(b"COPYUID", r["copy"][1][0])
        self.assertEqual(r["move"][0], "OK")
        self.assertEqual(r["expunge"][0], "OK")
        self.assertEqual(r["status"][1][0], b"Archive (MESSAGES 3 UIDNEXT 4)")
        self.assertTrue(any(b"Archive" in x for x in r["list"][1]))
        self.assertEqual(r["logout"][0], "BYE")

    @defer.inlineCallbacks
    def test_pipelined_async_fetch_ordering(self):
        """A FETCH large enough to run across reactor turns keeps replies in order."""
        import io

        for i in range(450):
            self.storage.append("INBOX", io.BytesIO(b"Subject: m%d\r\n\r\nx\r\n" % i))

        def run():
            import socket

            s = socket.create_connection(("127.0.0.1", self.addr), timeout=10)
            s.sendall(b"a SELECT INBOX\r\nb FETCH 1:* (UID BODY.PEEK[HEADER])\r\nc NOOP\r\n"
                      b"d FOO\r\ne LOGOUT\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            return data

        data = yield threads.deferToThread(run)
        tagged = [line.split(b" ")[0] for line in data.split(b"\r\n")
                  if line[:1] in b"abcde" and line[:2] in (b"a ", b"b ", b"c ", b"d ", b"e ")]
        self.assertEqual(tagged, [b"a", b"b", b"c", b"d", b"e"])
        self.assertEqual(data.count(b" FETCH (UID "), 450)
        self.assertLess(data.index(b"* 450 FETCH"), data.index(b"b OK Fetch completed."))

    @defer.inlineCallbacks
    def test_imapclient(self):
        import imapclient

        def run():
            c = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            c.create_folder("Ünïcode")
            c.append("Ünïcode", MULTIPART, flags=[b"\\Seen"])
            folders = [f[2] for f in c.list_folders()]
            info = c.select_folder("Ünïcode")
            data = c.fetch([1], ["ENVELOPE", "BODY[HEADER.FIELDS (SUBJECT)]", "FLAGS"])
            ids = c.search(["FROM", "alice"])
            c.logout()
            return folders, info, data, ids

        folders, info, data, ids = yield threads.deferToThread(run)
        self.assertIn("Ünïcode", folders)
        self.assertEqual(info[b"EXISTS"], 1)
        msg = data[1]
        self.assertEqual(msg[b"ENVELOPE"].subject, b"parts")
        self.assertEqual(msg[b"ENVELOPE"].from_[0].mailbox, b"alice")
        self.assertEqual(msg[b"BODY[HEADER.FIELDS (SUBJECT)]"], b"Subject: parts\r\n\r\n")
        self.assertIn(b"\\Seen", msg[b"FLAGS"])
        self.assertEqual(ids, [1])
