"""STATUS RECENT while another session has the mailbox selected (issue 8).

RFC 3501 / RFC 9051: a message is \\Recent in the first session notified
of it; "if the session is read-write, subsequent sessions will not see
\\Recent set for this message".  Dovecot's STATUS accordingly counts only
the messages no session has claimed yet: once a read-write session has
selected the mailbox, another session's STATUS RECENT is 0, and a read-only
(EXAMINE) session claims nothing.  The same script runs against Debian's
Dovecot (its ``imap`` binary in PREAUTH mode) and against the Maildir
storage, with the other session in the same process (one storage) and in
another one (a second storage over the same directory); the numbers must
be the same.
"""

from __future__ import annotations

import io
import os
import re

from twisted.trial import unittest

from pydovecot.storage.maildir import MaildirStorage
from tests.dovecot_local import DovecotSession, LocalDovecot
from tests.imap_fakes import FakeStorage
from tests.storage_now import now

MSG = b"Subject: recent\r\n\r\nbody\r\n"

#: Dovecot 2.3.19's answers to the script below (asserted against the
#: real one in DovecotRecentTests, so this is not a guess)
EXPECTED = [
    ("status before anyone selected", 2),
    ("examine sees", 2),
    ("status after examine", 2),
    ("select sees", 2),
    ("status while selected elsewhere", 0),
    ("status after a new message", 1),
    ("noop in the selecting session sees", 3),
    ("status after that noop", 0),
    ("status after the close", 0),
    ("a later examine sees", 0),
]


class _Script:
    """The sessions of the script, as callables over some server."""

    def run(self) -> list[tuple[str, int]]:
        out = []
        self.append()
        self.append()
        out.append(("status before anyone selected", self.status()))
        out.append(("examine sees", self.open("d", readonly=True)))
        out.append(("status after examine", self.status()))
        out.append(("select sees", self.open("a", readonly=False)))
        out.append(("status while selected elsewhere", self.status()))
        self.append()
        out.append(("status after a new message", self.status()))
        out.append(("noop in the selecting session sees", self.noop("a")))
        out.append(("status after that noop", self.status()))
        self.close("a")
        self.close("d")
        out.append(("status after the close", self.status()))
        out.append(("a later examine sees", self.open("c", readonly=True)))
        self.close("c")
        return out


class _Ours(_Script):
    def __init__(self, storage, other=None):
        self.storage = storage
        self.other = other or storage  # the session asking STATUS and appending
        self.views = {}

    def append(self) -> None:
        self.other.append("INBOX", io.BytesIO(MSG))

    def status(self) -> int:
        return self.other.status("INBOX").recent

    def open(self, who: str, readonly: bool) -> int:
        self.views[who] = self.storage.open("INBOX", readonly=readonly)
        return len(self.views[who].recent)

    def noop(self, who: str) -> int:
        self.views[who].sync()
        return len(self.views[who].recent)

    def close(self, who: str) -> None:
        self.views.pop(who).close()


class _Dovecot(_Script):
    def __init__(self, dovecot: LocalDovecot, case: unittest.TestCase):
        self.dovecot = dovecot
        self.case = case
        self.b = self._session()
        self.sessions: dict[str, DovecotSession] = {}

    def _session(self) -> DovecotSession:
        s = self.dovecot.imap()
        self.case.addCleanup(s.close)
        return s

    def _ok(self, lines: list[str]) -> list[str]:
        self.case.assertIn(" OK ", lines[-1], lines)
        return lines

    def append(self) -> None:
        self._ok(self.b.command(f"APPEND INBOX {{{len(MSG)}+}}\r\n{MSG.decode()}"))

    def status(self) -> int:
        lines = self._ok(self.b.command("STATUS INBOX (RECENT)"))
        return int(re.search(r"\(RECENT (\d+)\)", lines[0]).group(1))

    def _recent(self, lines: list[str]) -> int:
        found = [int(m.group(1)) for ln in lines if (m := re.match(r"\* (\d+) RECENT", ln))]
        return found[-1] if found else -1

    def open(self, who: str, readonly: bool) -> int:
        self.sessions[who] = s = self._session()
        return self._recent(self._ok(s.command(("EXAMINE" if readonly else "SELECT") + " INBOX")))

    def noop(self, who: str) -> int:
        return self._recent(self._ok(self.sessions[who].command("NOOP")))

    def close(self, who: str) -> None:
        s = self.sessions.pop(who)
        self._ok(s.command("LOGOUT"))
        s.close()


class MaildirRecentTests(unittest.TestCase):
    def storage(self) -> MaildirStorage:
        self.root = os.path.abspath(self.mktemp())
        return now(MaildirStorage("alice", self.root))

    def test_same_process(self) -> None:
        self.assertEqual(_Ours(self.storage()).run(), EXPECTED)

    def test_other_process(self) -> None:
        first = self.storage()
        second = now(MaildirStorage("alice", self.root))
        self.assertEqual(_Ours(first, second).run(), EXPECTED)

    def test_selecting_session_keeps_its_recent(self) -> None:
        s = self.storage()
        s.append("INBOX", io.BytesIO(MSG))
        a = s.open("INBOX")
        self.addCleanup(a.close)
        self.assertEqual(a.recent, {1})
        self.assertEqual(s.status("INBOX").recent, 0)
        b = s.open("INBOX")
        self.addCleanup(b.close)
        self.assertEqual(b.recent, set())
        self.assertEqual(a.recent, {1})

    def test_fake_follows_the_same_rule(self) -> None:
        self.assertEqual(_Ours(now(FakeStorage())).run(), EXPECTED)


class DovecotRecentTests(unittest.TestCase):
    def test_dovecot_answers_the_same(self) -> None:
        dovecot = LocalDovecot(self)
        self.assertEqual(_Dovecot(dovecot, self).run(), EXPECTED)
