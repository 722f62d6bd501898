"""CONDSTORE (RFC 7162) in IMAPSession, over a StringTransport.

Uses :class:`ModseqStorage`, the in-memory fake of ``tests.imap_fakes``
extended with the parts of the storage contract CONDSTORE and QRESYNC need
(modseqs, an expunge log, ``sync(allow_expunge)``, ``vanished_since``,
``store_unchanged_since``), so the protocol layer is tested apart from the
Maildir storage.  Also imported by the QRESYNC, NOTIFY and concurrency tests.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from twisted.trial import unittest

from pydovecot.imap import ext_sync
from pydovecot.imap.parser import Atom, ParseError
from pydovecot.storage.deferred import answers
from pydovecot.storage.interfaces import MailboxStatus, SyncResult
from tests.imap_fakes import FakeMailbox, FakeStorage
from tests.test_imap_session import Client


class ModseqMailbox(FakeMailbox):
    """A FakeMailbox view with modseqs and deferred expunges."""

    def __init__(self, storage: ModseqStorage, name: str, readonly: bool):
        super().__init__(storage, name, readonly)
        self.highestmodseq = storage.modseq
        for info in self.messages:
            info.modseq = storage.modseqs[(name, info.uid)]

    def _info(self, m):
        info = super()._info(m)
        info.modseq = self.storage.modseqs.get((self.name, m.uid), 1)
        return info

    @answers
    def sync(self, allow_expunge: bool = True) -> SyncResult:
        box = self.storage.boxes.get(self.name)
        current = {m.uid: m for m in box.messages} if box else {}
        result = SyncResult()
        kept = []
        for info in self.messages:
            m = current.get(info.uid)
            if m is None:
                if allow_expunge:
                    result.expunged.append(info.uid)
                    self.recent.discard(info.uid)
                    continue
                kept.append(info)
                continue
            modseq = self.storage.modseqs[(self.name, info.uid)]
            if m.flags != info.flags:
                info.flags = set(m.flags)
                result.flags_changed.append(info.uid)
            info.modseq = modseq
            kept.append(info)
        self.messages = kept
        last = self.messages[-1].uid if self.messages else 0
        result.added = self._take([m for m in box.messages if m.uid > last] if box else [])
        self.highestmodseq = self.storage.modseq
        return result

    @answers
    def store(self, uids: Iterable[int], flags: Iterable[str], mode: str) -> list[int]:
        changed = FakeMailbox.store.now(self, uids, flags, mode)
        for uid in changed:
            self.storage.modseqs[(self.name, uid)] = self.storage.bump()
        for info in self.messages:
            info.modseq = self.storage.modseqs.get((self.name, info.uid), info.modseq)
        self.highestmodseq = max(self.highestmodseq, self.storage.modseq) if changed \
            else self.highestmodseq
        return changed

    @answers
    def store_unchanged_since(self, uids, flags, mode, unchangedsince):
        uids = list(uids)
        failed = [u for u in uids if self.storage.modseqs[(self.name, u)] > unchangedsince]
        changed = ModseqMailbox.store.now(self, [u for u in uids if u not in failed], flags, mode)
        return changed, failed

    @answers
    def expunge(self, uids=None) -> list[int]:
        gone = FakeMailbox.expunge.now(self, uids)
        for uid in gone:
            self.storage.expunged.append((self.storage.bump(), self.name, uid))
        if gone:
            self.highestmodseq = self.storage.modseq
        return gone

    @answers
    def vanished_since(self, modseq: int) -> list[int]:
        return [u for m, n, u in self.storage.expunged if n == self.name and m > modseq]


class ModseqStorage(FakeStorage):
    def __init__(self, user: str = "alice"):
        super().__init__(user)
        self.modseq = 1
        self.modseqs: dict[tuple[str, int], int] = {}
        self.expunged: list[tuple[int, str, int]] = []

    def bump(self) -> int:
        self.modseq += 1
        return self.modseq

    @answers
    def open(self, name: str, readonly: bool = False) -> ModseqMailbox:
        if name not in self.boxes:
            from pydovecot.storage.interfaces import MailboxNotFound

            raise MailboxNotFound("Mailbox doesn't exist")
        return ModseqMailbox(self, name, readonly)

    @answers
    def append(self, name, message, flags=(), internaldate=None):
        validity, uid = FakeStorage.append.now(self, name, message, flags, internaldate)
        self.modseqs[(name, uid)] = self.bump()
        return validity, uid

    @answers
    def copy(self, source, uids, dest):
        validity, pairs = FakeStorage.copy.now(self, source, uids, dest)
        for _s, d in pairs:
            self.modseqs[(dest, d)] = self.bump()
        return validity, pairs

    @answers
    def status(self, name: str) -> MailboxStatus:
        st = FakeStorage.status.now(self, name)
        st.highestmodseq = self.modseq
        return st

    def set_flags_elsewhere(self, name: str, uid: int, flags: set[str]) -> None:
        """Another session (or process) changes flags."""
        for m in self.boxes[name].messages:
            if m.uid == uid:
                m.flags = set(flags)
        self.modseqs[(name, uid)] = self.bump()
        self.notify(name)

    def expunge_elsewhere(self, name: str, uid: int) -> None:
        box = self.boxes[name]
        box.messages = [m for m in box.messages if m.uid != uid]
        self.expunged.append((self.bump(), name, uid))
        self.notify(name)


def message(n: int) -> io.BytesIO:
    return io.BytesIO(b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n))


def filled(count: int = 3) -> ModseqStorage:
    storage = ModseqStorage()
    for i in range(1, count + 1):
        storage.append("INBOX", message(i))
    return storage


def client(storage: ModseqStorage) -> Client:
    c = Client(storage)
    c.start()
    return c


class ParseTests(unittest.TestCase):
    def test_modseq_range(self):
        self.assertEqual(ext_sync.parse_modseq(Atom(b"9223372036854775807")), 2**63 - 1)
        for bad in (b"0", b"9223372036854775808", b"-1", b"x"):
            self.assertRaises(ParseError, ext_sync.parse_modseq, Atom(bad))
        self.assertEqual(ext_sync.parse_modseq(Atom(b"0"), zero=True), 0)


class CondstoreTests(unittest.TestCase):
    def setUp(self):
        self.storage = filled()
        self.c = client(self.storage)

    def test_capability_and_enable(self):
        out = self.c.send(b"a CAPABILITY\r\n")
        for cap in (b" CONDSTORE", b" QRESYNC", b" NOTIFY"):
            self.assertIn(cap, out)
        self.assertEqual(self.c.send(b"e ENABLE CONDSTORE\r\n"),
                         b"* ENABLED CONDSTORE\r\ne OK Enabled.\r\n")
        self.assertEqual(self.c.send(b"e ENABLE CONDSTORE X-FOO\r\n"),
                         b"* ENABLED\r\ne OK Enabled.\r\n")

    def test_select_condstore_reports_highestmodseq(self):
        out = self.c.send(b"s SELECT INBOX (CONDSTORE)\r\n")
        self.assertIn(b"* OK [HIGHESTMODSEQ 4] Highest\r\n", out)
        self.assertTrue(out.endswith(b"s OK [READ-WRITE] Select completed.\r\n"))
        plain = client(self.storage).send(b"s SELECT INBOX\r\n")
        self.assertNotIn(b"HIGHESTMODSEQ", plain)
        self.assertIn(b"BAD", self.c.send(b"s SELECT INBOX (FOO)\r\n"))

    def test_fetch_modseq_enables_and_reports(self):
        self.c.send(b"s SELECT INBOX\r\n")
        out = self.c.send(b"f FETCH 1:* (UID MODSEQ)\r\n")
        self.assertEqual(out, b"* OK [HIGHESTMODSEQ 4] Highest\r\n"
                              b"* 1 FETCH (UID 1 MODSEQ (2))\r\n* 2 FETCH (UID 2 MODSEQ (3))\r\n"
                              b"* 3 FETCH (UID 3 MODSEQ (4))\r\nf OK Fetch completed.\r\n")
        out = self.c.send(b"f FETCH 2 FLAGS\r\n")
        self.assertEqual(out, b"* 2 FETCH (FLAGS (\\Recent) MODSEQ (3))\r\nf OK Fetch completed.\r\n")

    def test_fetch_changedsince(self):
        self.c.send(b"s SELECT INBOX (CONDSTORE)\r\n")
        self.c.send(b"t STORE 2 +FLAGS.SILENT (\\Seen)\r\n")
        out = self.c.send(b"f UID FETCH 1:* (FLAGS) (CHANGEDSINCE 4)\r\n")
        self.assertEqual(out, b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen) MODSEQ (5))\r\n"
                              b"f OK Fetch completed.\r\n")
        self.assertIn(b"f BAD", self.c.send(b"f FETCH 1 FLAGS (CHANGEDSINCE 0)\r\n"))
        self.assertIn(b"f BAD", self.c.send(b"f FETCH 1 FLAGS (FOO 1)\r\n"))
        self.assertIn(b"f BAD", self.c.send(b"f UID FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)\r\n"))

    def test_store_unchangedsince(self):
        self.c.send(b"s SELECT INBOX (CONDSTORE)\r\n")
        out = self.c.send(b"t STORE 1:3 (UNCHANGEDSINCE 3) +FLAGS (\\Flagged)\r\n")
        self.assertEqual(out, b"* 1 FETCH (FLAGS (\\Recent \\Flagged) MODSEQ (5))\r\n"
                              b"* 2 FETCH (FLAGS (\\Recent \\Flagged) MODSEQ (6))\r\n"
                              b"t OK [MODIFIED 3] Conditional STORE failed.\r\n")
        out = self.c.send(b"t UID STORE 1:3 (UNCHANGEDSINCE 6) -FLAGS.SILENT (\\Flagged)\r\n")
        self.assertEqual(out, b"* 1 FETCH (UID 1 MODSEQ (7))\r\n* 2 FETCH (UID 2 MODSEQ (8))\r\n"
                              b"t OK Store completed.\r\n")
        out = self.c.send(b"t UID STORE 2 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)\r\n")
        self.assertEqual(out, b"t OK [MODIFIED 2] Conditional STORE failed.\r\n")

    def test_status_highestmodseq(self):
        out = self.c.send(b"s STATUS INBOX (MESSAGES HIGHESTMODSEQ)\r\n")
        self.assertEqual(out, b"* STATUS INBOX (MESSAGES 3 HIGHESTMODSEQ 4)\r\n"
                              b"s OK Status completed.\r\n")
        self.assertTrue(self.c.session.condstore)

    def test_unsolicited_fetch_carries_modseq(self):
        self.c.send(b"e ENABLE CONDSTORE\r\ns SELECT INBOX\r\n")
        self.storage.set_flags_elsewhere("INBOX", 2, {"\\Answered"})
        out = self.c.send(b"n NOOP\r\n")
        self.assertEqual(out, b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Answered) MODSEQ (5))\r\n"
                              b"n OK NOOP completed.\r\n")
