"""A mail process's rehearsal: one IMAP and one POP3 session, before Assign.

After a mail process drops to a user's uid it cannot import anything new
when the interpreter lives under a 0700 directory, and code paths import
lazily (the email package, codecs, compression, our own helpers).  So an
idle process, still privileged, runs real sessions against a throwaway
Maildir holding a MIME-rich message, exercising the commands clients use.
Whatever those paths import is then loaded before the first client byte.

Trusts: nothing external; it only talks to itself through an in-memory
transport and removes its Maildir afterwards.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydovecot.imap.session import IMAPSession
from pydovecot.log import silence_prefix
from pydovecot.pop3.session import POP3Session
from pydovecot.session import SessionContext
from pydovecot.sieve.rehearsal import rehearse_sieve
from pydovecot.storage import open_storage

log = Logger()

SAMPLE = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <juergen@example.org>\r\n"
    b"To: Alice <alice@example.org>, group: a@example.org, b@example.org;\r\n"
    b"Cc: bob@example.org\r\n"
    b"Subject: =?iso-8859-1?q?R=E9sum=E9?= and =?utf-8?b?0J/RgNC40LLQtdGC?=\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <rehearsal@example.org>\r\n"
    b"In-Reply-To: <parent@example.org>\r\n"
    b"References: <root@example.org> <parent@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="alt"\r\n'
    b"\r\n"
    b"--alt\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=FC=DFe, caf=E9 =\r\n"
    b"soft break\r\n"
    b"--alt\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"PGh0bWw+PGJvZHk+PHA+R3LDvMOfZTwvcD48L2JvZHk+PC9odG1sPg==\r\n"
    b"--alt--\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner@example.org\r\n"
    b"Subject: inner\r\n"
    b"Content-Type: text/plain; charset=koi8-r\r\n"
    b"\r\n"
    b"\xf0\xd2\xc9\xd7\xc5\xd4\r\n"
    b"--outer\r\n"
    b'Content-Type: application/octet-stream; name="a.bin"\r\n'
    b'Content-Disposition: attachment; filename="a.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQFBgcICQ==\r\n"
    b"--outer--\r\n"
)

#: Commands real clients send: the core forms first (they must work), then
#: extension forms (BAD where an extension is missing, which is fine).
IMAP_SCRIPT = b"".join(
    line + b"\r\n"
    for line in (
        b"a1 CAPABILITY",
        b'a2 ID ("name" "rehearsal")',
        b"a3 NAMESPACE",
        b'a4 LIST "" "*"',
        b'a5 LSUB "" "*"',
        b"a6 CREATE Rehearsal/Sub",
        b"a7 SUBSCRIBE Rehearsal/Sub",
        b"a8 STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)",
        b"b1 SELECT INBOX",
        b"b2 FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)",
        b"b3 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)] BODY.PEEK[1.1]"
        b" BODY.PEEK[1.2]<0.10> BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[1.MIME])",
        b"b4 FETCH 1 (BODY[] RFC822.HEADER RFC822.TEXT)",
        b'b5 SEARCH CHARSET UTF-8 TEXT "gr\xc3\xbc\xc3\x9fe" SUBJECT "r\xc3\xa9sum\xc3\xa9"',
        b'b6 UID SEARCH OR FROM juergen BODY "caf\xc3\xa9"',
        b"b7 SEARCH SINCE 1-Jan-2020 LARGER 10 NOT DELETED",
        b"b8 STORE 1 +FLAGS (\\Flagged $Rehearsal)",
        b"b9 COPY 1 Rehearsal/Sub",
        b"c1 APPEND INBOX (\\Seen) {12}\r\nSubject: x\r\n",
        b"c2 UID MOVE 1 Rehearsal/Sub",
        b"c3 STORE 1 +FLAGS (\\Deleted)",
        b"c4 EXPUNGE",
        b"c5 NOOP",
        # Extensions.
        b"e1 ENABLE CONDSTORE QRESYNC UTF8=ACCEPT",
        b'e2 LIST "" "*" RETURN (CHILDREN SUBSCRIBED SPECIAL-USE STATUS (MESSAGES SIZE))',
        b"e3 STATUS INBOX (MESSAGES SIZE DELETED HIGHESTMODSEQ APPENDLIMIT)",
        b"e4 SELECT INBOX (CONDSTORE)",
        b"e5 FETCH 1:* (UID FLAGS MODSEQ) (CHANGEDSINCE 1)",
        b"e6 FETCH 1 (BINARY.PEEK[1.1] BINARY.PEEK[1.2] BINARY.PEEK[3] BINARY.SIZE[3]"
        b" PREVIEW SAVEDATE)",
        b"e7 UID SEARCH RETURN (MIN MAX COUNT ALL SAVE) OR FROM juergen YOUNGER 999999999",
        b"e8 SORT (REVERSE DATE SUBJECT DISPLAYFROM) UTF-8 ALL",
        b"e9 THREAD REFERENCES UTF-8 ALL",
        b"f1 THREAD ORDEREDSUBJECT UTF-8 ALL",
        b"f2 UID STORE 1:* (UNCHANGEDSINCE 999999) -FLAGS.SILENT (\\Flagged)",
        b"f3 SELECT Rehearsal/Sub (QRESYNC (1 1))",
        b"f4 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",
        b"f5 UID EXPUNGE 1:*",
        b"f6 UNSELECT",
        b"f7 RENAME Rehearsal/Sub Rehearsal/Other",
        b"f8 DELETE Rehearsal/Other",
        b"f9 DELETE Rehearsal",
        b"z9 LOGOUT",
    )
)

POP3_SCRIPT = b"STAT\r\nLIST\r\nUIDL\r\nTOP 1 5\r\nRETR 1\r\nDELE 1\r\nRSET\r\nQUIT\r\n"


@defer.inlineCallbacks
def rehearse(settings: dict, timeout: float = 10.0):
    """Run the rehearsal; fires when both sessions are done (or timed out)."""
    started = time.monotonic()
    silence_prefix("imap(rehearsal)")
    silence_prefix("pop3(rehearsal)")
    root = tempfile.mkdtemp(prefix="pydovecot-rehearsal-")
    try:
        storage = open_storage("rehearsal", f"maildir:{root}/Maildir", root)
        yield storage.append("INBOX", io.BytesIO(SAMPLE))
        yield storage.append("INBOX", io.BytesIO(SAMPLE.replace(b"<rehearsal@", b"<second@")))
        yield _run(IMAPSession(storage, _context(settings, "imap")),
                   lambda s: s.start(b"a0", IMAP_SCRIPT), b"z9 ", timeout)
        yield _run(POP3Session(storage, _context(settings, "pop3")),
                   lambda s: s.start(POP3_SCRIPT), b"+OK Logging out", timeout)
        yield rehearse_sieve(storage, root, b"Return-Path: <juergen@example.org>\r\n" + SAMPLE)
    except Exception:
        log.failure("mail process rehearsal failed (first sessions may be slower)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log.debug("rehearsal took {ms:.0f} ms", ms=(time.monotonic() - started) * 1000)


def _context(settings: dict, service: str) -> SessionContext:
    return SessionContext(user="rehearsal", session_id=f"rehearsal-{service}",
                          remote_ip="127.0.0.1", local_ip="127.0.0.1", secured=True,
                          fields={"home": ""}, settings=dict(settings))


@defer.inlineCallbacks
def _run(session, start, done_marker: bytes, timeout: float):
    transport = StringTransport()
    session.makeConnection(transport)
    start(session)
    deadline = time.monotonic() + timeout
    while done_marker not in transport.value() and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.005, lambda: None)
    session.connectionLost(_closed())


def _closed() -> Failure:
    return Failure(ConnectionDone())
