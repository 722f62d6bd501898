"""IMAP over a storage that answers later (issue 8 part 3): no command may
assume a synchronous storage answer.

The same scripted flows (two concurrent sessions of one user: SELECT and
EXAMINE, FETCH with ENVELOPE/BODYSTRUCTURE, BODY[], BINARY[] and a
streamed big message, STORE, SEARCH, SORT, THREAD, APPEND with a literal,
COPY and MOVE, EXPUNGE, STATUS, LIST (with RETURN STATUS), CREATE, RENAME,
DELETE, SUBSCRIBE/LSUB, IDLE with another session's change, NOTIFY; and
ENABLE QRESYNC, SELECT (CONDSTORE)/(QRESYNC …), FETCH CHANGEDSINCE with
VANISHED, STORE UNCHANGEDSINCE, UID EXPUNGE, SEARCHRES ``$``,
CONTEXT=SEARCH updates, GENURLAUTH/URLFETCH/RESETKEY, APPEND CATENATE with
a URL part, CREATE (USE) and LIST SPECIAL-USE) run twice: on the Maildir storage directly and on the same kind of storage
behind :class:`tests.remote_storage.RemoteStorage`, whose every answer
comes a reactor turn or two after the call and whose values are copies.
The outputs must be identical (UIDVALIDITY values aside, which differ
between two fresh Maildirs).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import re

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pydovecot.imap.session import IMAPSession
from pydovecot.session import SessionContext
from pydovecot.storage.maildir import MaildirStorage
from tests.remote_storage import RemoteStorage
from tests.test_imap_session import MSG1, MSG2

WHEN = datetime.datetime(2024, 5, 3, 12, 0, tzinfo=datetime.UTC)
MULTIPART = (
    b"From: Carol <carol@example.net>\r\nTo: alice@example.com\r\nSubject: parts\r\n"
    b"Date: Fri, 3 May 2024 09:00:00 +0000\r\nMessage-ID: <parts@example.net>\r\n"
    b"In-Reply-To: <lunch@example.org>\r\n"
    b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n"
    b"--b1\r\nContent-Type: text/plain\r\n\r\nSi vis pacem, para bellum.\r\n"
    b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAECAwQ=\r\n--b1--\r\n"
)
BIG = b"Subject: big\r\nDate: Sat, 4 May 2024 09:00:00 +0000\r\n\r\n" + b"y" * 998 * 400 + b"\r\n"
NEW = b"Subject: appended\r\nFrom: dave@example.com\r\n\r\nfresh\r\n"
#: Waiting for a reply gives up after this many seconds (a busy CI machine).
TIMEOUT = 60.0


class Session:
    """One IMAP session on a StringTransport; commands wait for their
    tagged reply on the real reactor (the remote storage answers there)."""

    def __init__(self, storage, name: str):
        self.transport = StringTransport()
        self.session = IMAPSession(storage, SessionContext("alice", name, settings={}))
        self.session.clock = Clock()  # autologout and IDLE keepalive timers stay still
        self.session.makeConnection(self.transport)
        self.session.start(b"L", b"")

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    @defer.inlineCallbacks
    def until(self, marker: bytes):
        """Everything written until ``marker`` (at a line start) appears."""
        out = b""
        waited = 0.0
        while not (out.startswith(marker) or b"\r\n" + marker in out):
            if waited > TIMEOUT:
                raise AssertionError(f"no {marker!r} after {TIMEOUT} s: {out[-300:]!r}")
            yield task.deferLater(reactor, 0.001, lambda: None)
            waited += 0.001
            out += self.take()
        # what the command's own turn still writes (nothing, normally)
        yield task.deferLater(reactor, 0, lambda: None)
        return out + self.take()

    @defer.inlineCallbacks
    def command(self, line: bytes):
        tag = line.split(b" ", 1)[0]
        self.session.dataReceived(line + b"\r\n")
        out = yield self.until(tag + b" ")
        return out

    def close(self) -> None:
        self.session.connectionLost(None)


def _normalize(out: bytes) -> bytes:
    out = re.sub(rb"(UIDVALIDITY|APPENDUID|COPYUID) \d+", rb"\1 V", out)
    out = re.sub(rb"\b\d{9,}\b", b"N", out)  # modseqs and uidvalidities: time-based
    # a streamed literal: compare its digest, not 400 kB of text
    return re.sub(rb"y{1000,}", lambda m: b"<%d y %s>" % (
        len(m.group(0)), hashlib.sha1(m.group(0)).hexdigest()[:8].encode()), out)


class RemoteStorageFlows(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def run_flows(self, wrap) -> defer.Deferred:
        """The scripted flows on ``wrap(MaildirStorage(...))``: a list of
        (step, output) pairs."""
        root = os.path.abspath(self.mktemp())
        storage = wrap(MaildirStorage("alice", os.path.join(root, "Maildir"), home=root))
        for data, flags in ((MSG1, []), (MSG2, ["\\Seen"]), (MULTIPART, []), (BIG, [])):
            yield storage.append("INBOX", io.BytesIO(data), flags, WHEN)
        a, b = Session(storage, "a"), Session(storage, "b")
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        log: list[tuple[str, bytes]] = []

        @defer.inlineCallbacks
        def step(s: Session, line: bytes):
            out = yield s.command(line)
            log.append((line.decode("latin-1")[:60], _normalize(out)))
            return out

        yield step(a, b"a1 SELECT INBOX")
        yield step(b, b"b1 EXAMINE INBOX")
        yield step(a, b"a2 FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
        yield step(a, b"a3 FETCH 1 BODY[]")
        yield step(a, b"a4 FETCH 3 (BINARY[2] BINARY.SIZE[2] BODY.PEEK[HEADER.FIELDS (Subject)])")
        yield step(a, b"a5 UID FETCH 4 (BODY.PEEK[] BINARY.PEEK[]<0.10>)")
        yield step(a, b"a6 FETCH 1:3 (BODY[TEXT] BINARY[1])")  # sets \Seen
        yield step(a, b"a7 STORE 1 +FLAGS (\\Flagged $Work)")
        yield step(a, b"a8 SEARCH FLAGGED")
        yield step(a, b'a9 UID SEARCH OR SUBJECT "lunch" BODY "bellum"')
        yield step(a, b"a10 SEARCH RETURN (MIN MAX COUNT) ALL")
        yield step(a, b"a11 SORT (SUBJECT) UTF-8 ALL")
        yield step(a, b"a12 THREAD REFERENCES UTF-8 ALL")
        yield step(b, b"b2 NOOP")  # a's flag changes
        yield step(b, b"b3 STATUS INBOX (MESSAGES UNSEEN UIDNEXT)")
        yield step(a, b'a13 APPEND INBOX (\\Draft) "03-May-2024 12:00:00 +0000" {%d+}\r\n%s'
                   % (len(NEW), NEW))
        yield step(a, b"a14 NOOP")
        yield step(b, b"b4 NOOP")
        yield step(a, b"a15 COPY 1:2 Archive")  # TRYCREATE
        yield step(a, b"a16 CREATE Archive")
        yield step(a, b"a17 COPY 1:2 Archive")
        yield step(a, b"a18 MOVE 3 Archive")
        yield step(b, b"b5 NOOP")  # the move's expunge
        yield step(a, b"a19 STORE 1 +FLAGS.SILENT (\\Deleted)")
        yield step(a, b"a20 EXPUNGE")
        yield step(b, b"b6 FETCH 1:* (UID FLAGS)")
        yield step(a, b"a21 SUBSCRIBE Archive")
        yield step(a, b'a22 LIST "" "*"')
        yield step(a, b'a23 LIST "" "*" RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))')
        yield step(a, b'a24 LSUB "" "*"')
        yield step(a, b"a25 STATUS Archive (MESSAGES RECENT UIDNEXT)")
        yield step(a, b"a26 RENAME Archive Old")
        yield step(a, b"a27 EXAMINE Old")
        yield step(a, b"a28 FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])")
        yield step(a, b"a29 SELECT INBOX")
        yield step(a, b"a30 DELETE Old")
        # IDLE: b is told about a's change while it waits
        b.session.dataReceived(b"i1 IDLE\r\n")
        log.append(("i1 IDLE", (yield b.until(b"+ idling"))))
        yield step(a, b"a31 STORE 1 +FLAGS (\\Answered)")
        log.append(("IDLE push", _normalize((yield b.until(b"* 1 FETCH")))))
        b.session.dataReceived(b"DONE\r\n")
        log.append(("DONE", (yield b.until(b"i1 "))))
        # NOTIFY: a's STATUS for INBOX when b appends into it... via a's other mailbox
        yield step(b, b"b7 CREATE Other")
        yield step(a, b"a32 NOTIFY SET (mailboxes Other (MessageNew MessageExpunge))")
        yield step(b, b'b8 APPEND Other "03-May-2024 12:00:00 +0000" {%d+}\r\n%s'
                   % (len(NEW), NEW))
        log.append(("NOTIFY push", _normalize((yield a.until(b"* STATUS Other")))))
        yield step(a, b"a33 NOTIFY NONE")
        yield step(a, b"a34 CLOSE")
        yield step(a, b"a35 LOGOUT")
        return log

    @defer.inlineCallbacks
    def run_extensions(self, wrap) -> defer.Deferred:
        """CONDSTORE/QRESYNC, URLAUTH and CATENATE, special-use, SEARCHRES,
        CONTEXT=SEARCH: a list of (step, output) pairs."""
        root = os.path.abspath(self.mktemp())
        storage = wrap(MaildirStorage("alice", os.path.join(root, "Maildir"), home=root))
        for data, flags in ((MSG1, []), (MSG2, ["\\Seen"]), (MULTIPART, [])):
            yield storage.append("INBOX", io.BytesIO(data), flags, WHEN)
        a, b = Session(storage, "a"), Session(storage, "b")
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        log: list[tuple[str, bytes]] = []

        @defer.inlineCallbacks
        def step(s: Session, line: bytes):
            out = yield s.command(line)
            shown = re.sub(rb"(:internal:)[0-9a-f]+", rb"\1T", out)  # keys differ
            log.append((_normalize(line).decode("latin-1")[:60], _normalize(shown)))
            return out

        yield step(a, b"a1 ENABLE QRESYNC")
        out = yield step(a, b"a2 SELECT INBOX (CONDSTORE)")
        modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", out).group(1))
        validity = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))
        yield step(b, b"b1 SELECT INBOX")
        yield step(b, b"b2 STORE 2 +FLAGS (\\Flagged)")
        yield step(a, b"a3 FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % modseq)
        yield step(a, b"a4 STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Answered)" % modseq)
        yield step(a, b"a5 UID SEARCH RETURN (SAVE) SUBJECT parts")
        yield step(a, b"a6 FETCH $ (UID BODY.PEEK[HEADER.FIELDS (Subject)])")
        yield step(a, b"a7 SEARCH RETURN (UPDATE) UNANSWERED")
        yield step(b, b"b3 STORE 1 -FLAGS (\\Answered)")
        yield step(a, b"a8 NOOP")  # CONTEXT=SEARCH: ADDTO
        yield step(a, b"a9 CANCELUPDATE a7")
        out = yield step(a, b'a10 GENURLAUTH "imap://alice@h/INBOX;UIDVALIDITY=%d/;UID=3'
                            b'/;SECTION=1;URLAUTH=user+alice" INTERNAL' % validity)
        url = re.search(rb'\* GENURLAUTH "([^"]+)"', out).group(1)
        yield step(a, b'a11 URLFETCH ("%s" BODYPARTSTRUCTURE BODY)' % url)
        yield step(a, b"a12 CREATE Arch (USE (\\Archive))")
        yield step(a, b'a13 APPEND Arch "03-May-2024 12:00:00 +0000" CATENATE (TEXT {%d+}\r\n%s'
                      b' URL "/INBOX;UIDVALIDITY=%d/;UID=3/;SECTION=1")'
                   % (len(b"Subject: c\r\n\r\n"), b"Subject: c\r\n\r\n", validity))
        yield step(a, b'a14 LIST (SPECIAL-USE) "" "*"')
        yield step(a, b'a15 LIST "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES))')
        yield step(b, b"b4 STORE 3 +FLAGS (\\Deleted)")
        yield step(b, b"b5 UID EXPUNGE 3")
        yield step(a, b"a16 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq)
        yield step(a, b"a17 UNSELECT")
        yield step(a, b"a18 SELECT INBOX (QRESYNC (%d %d))" % (validity, modseq))
        yield step(a, b"a19 EXAMINE Arch")
        yield step(a, b"a20 FETCH 1 (BODY[] BODYSTRUCTURE)")
        yield step(a, b"a21 RESETKEY")
        yield step(a, b'a22 URLFETCH "%s"' % url)
        return log

    @defer.inlineCallbacks
    def test_extensions_same_answers(self):
        local = yield self.run_extensions(lambda s: s)
        remote = yield self.run_extensions(RemoteStorage)
        self.assertEqual([step for step, _ in remote], [step for step, _ in local])
        for (step, mine), (_step, theirs) in zip(remote, local, strict=True):
            self.assertEqual(mine, theirs, step)
        if os.environ.get("SHOW_FLOWS"):
            for name, text in local:
                print(name, text[:400])
        for step, text in local:
            self.assertNotIn(b" BAD ", text, step)
        out = dict(local)
        self.assertIn(b'* ESEARCH (TAG "a7") ADDTO (0 1)', out["a8 NOOP"])
        self.assertIn(b"[MODIFIED 2]", out["a4 STORE 1:3 (UNCHANGEDSINCE N) +FLAGS (\\Answered)"])
        self.assertIn(b"* VANISHED 3", out["a16 UID FETCH 1:* (FLAGS) (CHANGEDSINCE N VANISHED)"])
        self.assertIn(b"Si vis pacem", out["a20 FETCH 1 (BODY[] BODYSTRUCTURE)"])

    @defer.inlineCallbacks
    def test_same_answers_as_local_storage(self):
        local = yield self.run_flows(lambda s: s)
        remote_storages: list[RemoteStorage] = []

        def wrap(s):
            remote_storages.append(RemoteStorage(s))
            return remote_storages[0]

        remote = yield self.run_flows(wrap)
        self.assertEqual([step for step, _ in remote], [step for step, _ in local])
        for (step, mine), (_step, theirs) in zip(remote, local, strict=True):
            self.assertEqual(mine, theirs, step)
        self.assertEqual(remote_storages[0].pending, 0)  # no answer left behind
        # the flows did what they say (checked once, on the local run)
        out = dict(local)
        if os.environ.get("SHOW_FLOWS"):
            for name, text in local:
                print(name, text[:400])
        self.assertIn(b"* SEARCH 1\r\n", out["a8 SEARCH FLAGGED"])
        self.assertIn(b"BODY[] {%d}" % len(BIG),
                      out["a5 UID FETCH 4 (BODY.PEEK[] BINARY.PEEK[]<0.10>)"])
        self.assertIn(b"* 5 EXISTS", out["b4 NOOP"])
        self.assertIn(b"[TRYCREATE]", out["a15 COPY 1:2 Archive"])
        self.assertIn(b"* 3 EXPUNGE", out["b5 NOOP"])
        self.assertIn(b"* 1 FETCH (UID 2 FLAGS (\\Answered", out["IDLE push"])
        self.assertIn(b"* STATUS Other (MESSAGES 1", out["NOTIFY push"])
        self.assertIn(b"* SORT ", out["a11 SORT (SUBJECT) UTF-8 ALL"])
        self.assertIn(b"* THREAD ", out["a12 THREAD REFERENCES UTF-8 ALL"])

    @defer.inlineCallbacks
    def test_storage_errors_are_tagged_no(self):
        """A failed answer that arrives later is still a tagged NO, and the
        session goes on."""
        root = os.path.abspath(self.mktemp())
        storage = RemoteStorage(MaildirStorage("alice", os.path.join(root, "Maildir"), home=root))
        a = Session(storage, "a")
        self.addCleanup(a.close)
        out = yield a.command(b"a1 SELECT Nope")
        self.assertIn(b"a1 NO [NONEXISTENT]", out)
        out = yield a.command(b"a2 STATUS Nope (MESSAGES)")
        self.assertIn(b"a2 NO [NONEXISTENT]", out)
        out = yield a.command(b"a3 DELETE INBOX")
        self.assertIn(b"a3 NO ", out)
        out = yield a.command(b"a4 NOOP")
        self.assertIn(b"a4 OK", out)

    @defer.inlineCallbacks
    def test_pipelined_commands_wait_for_answers(self):
        """Pipelined commands run in order, each after the previous one's
        storage answers (and its after-command sync) are in."""
        root = os.path.abspath(self.mktemp())
        storage = RemoteStorage(MaildirStorage("alice", os.path.join(root, "Maildir"), home=root))
        yield storage.append("INBOX", io.BytesIO(MSG1), [], WHEN)
        a = Session(storage, "a")
        self.addCleanup(a.close)
        a.session.dataReceived(b"p1 SELECT INBOX\r\np2 STORE 1 +FLAGS (\\Seen)\r\n"
                               b"p3 CREATE X\r\np4 COPY 1 X\r\np5 STATUS X (MESSAGES UNSEEN)\r\n")
        out = yield a.until(b"p5 ")
        tags = re.findall(rb"^(p\d) ", out, re.M)
        self.assertEqual(tags, [b"p1", b"p2", b"p3", b"p4", b"p5"])
        self.assertIn(b"* STATUS X (MESSAGES 1 UNSEEN 0)", out)
        self.assertNotIn(b" NO ", out)


class RemotePOP3(unittest.TestCase):
    """POP3 over the same late-answering storage: the greeting waits for
    INBOX, RETR for the message file, QUIT for the UPDATE state."""

    timeout = 120

    @defer.inlineCallbacks
    def test_transaction(self):
        from pydovecot.pop3.session import POP3Session

        root = os.path.abspath(self.mktemp())
        storage = RemoteStorage(MaildirStorage("alice", os.path.join(root, "Maildir"), home=root))
        for data in (MSG1, BIG, MSG2):
            yield storage.append("INBOX", io.BytesIO(data), [], WHEN)
        transport = StringTransport()
        pop3 = POP3Session(storage, SessionContext("alice", "p"))
        pop3.makeConnection(transport)
        pop3.start(b"STAT\r\nRETR 1\r\nRETR 2\r\nDELE 3\r\nTOP 1 0\r\nQUIT\r\n")
        self.assertEqual(transport.value(), b"")  # INBOX is not open yet
        waited = 0.0
        while b"+OK Logging out." not in transport.value():
            self.assertLess(waited, TIMEOUT, transport.value()[-300:])
            yield task.deferLater(reactor, 0.001, lambda: None)
            waited += 0.001
        out = transport.value()
        replies = [line for line in out.split(b"\r\n") if line.startswith((b"+OK", b"-ERR"))]
        self.assertEqual(replies[:3], [b"+OK Logged in.", b"+OK 3 %d" % (
            sum(len(d.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")) for d in (MSG1, BIG, MSG2))),
            b"+OK %d octets" % len(MSG1)])
        self.assertIn(b"Today: soup and bread.\r\n.\r\n", out)
        self.assertIn(b"y" * 998 + b"\r\n.\r\n", out)  # the big one, streamed
        self.assertEqual(replies[-1], b"+OK Logging out.")
        pop3.connectionLost(None)
        box = yield storage.open("INBOX")
        self.assertEqual([(m.uid, m.flags) for m in box.messages],
                         [(1, {"\\Seen"}), (2, {"\\Seen"})])
        box.close()
        self.assertEqual(storage.pending, 0)


class CoreWaitsForSync(unittest.TestCase):
    """The after-command sync is awaited: no tagged reply and no next
    command before the view's sync has answered."""

    def test_tagged_reply_and_next_command_wait(self):
        from tests.imap_fakes import FakeStorage
        from tests.test_imap_session import Client

        storage = FakeStorage()
        storage.append("INBOX", io.BytesIO(MSG1))
        c = Client(storage)
        c.start()
        c.send(b"s SELECT INBOX\r\n")
        mbox = c.session.mailbox
        pending: list[defer.Deferred] = []
        real_sync = mbox.sync

        def slow_sync(allow_expunge=True):
            d = defer.Deferred()
            pending.append(d)
            d.addCallback(lambda _: real_sync(allow_expunge))
            return d

        mbox.sync = slow_sync
        storage.append("INBOX", io.BytesIO(MSG2))  # what the sync will report
        out = c.send(b"a NOOP\r\nb NOOP\r\n")
        self.assertEqual(out, b"")  # a waits for its sync; b has not started
        self.assertEqual(len(pending), 1)
        pending.pop().callback(None)
        out = c.take()
        self.assertTrue(out.startswith(b"* 2 EXISTS\r\n* 2 RECENT\r\na OK NOOP completed.\r\n"), out)
        self.assertNotIn(b"b OK", out)  # b runs now and waits for its own sync
        self.assertEqual(len(pending), 1)
        pending.pop().callback(None)
        self.assertEqual(c.take(), b"b OK NOOP completed.\r\n")
