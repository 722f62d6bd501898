"""Tests for the per-mailbox index (pydovecot.storage.index) and the
CONDSTORE/QRESYNC state the Maildir storage keeps in it.

Two :class:`MaildirStorage` objects on one root stand for two mail
processes; forked children are real concurrent processes.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import tempfile
import time

from twisted.trial import unittest

from pydovecot.storage import index as I
from pydovecot.storage import maildir as M
from pydovecot.storage.interfaces import StorageError
from pydovecot.storage.maildir import MaildirStorage
from pydovecot.storage.uidlist import read_uidlist
from tests.storage_now import now

MSG = b"Subject: hi\r\n\r\nhello\r\n"


def _age_dirs(path: str) -> None:
    """Make new/ and cur/ look untouched for a while (a trusted stamp)."""
    old = time.time() - 10
    for sub in ("new", "cur"):
        os.utime(os.path.join(path, sub), (old, old))


class Base(unittest.TestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root, True)
        self.st = now(MaildirStorage("u", self.root))

    def fill(self, n: int, flags: tuple[str, ...] = ()) -> None:
        for _ in range(n):
            self.st.append("INBOX", io.BytesIO(MSG), flags=flags)

    def index_path(self, suffix: str = "") -> str:
        return os.path.join(self.root, I.INDEX + suffix)


class FormatTests(unittest.TestCase):
    def test_ops_are_checksummed(self) -> None:
        line = I.encode_op(["x", 3, 7])
        self.assertEqual(I.decode_op(line[:-1]), ["x", 3, 7])
        self.assertIsNone(I.decode_op(line[:-1].replace(b"3", b"4")))
        self.assertIsNone(I.decode_op(b"garbage"))

    def test_snapshot_roundtrip_and_corruption(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        idx = I.MailboxIndex(d)
        state = I.IndexState(uidvalidity=5, nextuid=3, modseq=9, stamp=(1, 2), confirmed=True)
        state.records[1] = I.IndexRecord(1, "a", "cur", "a:2,S", 10, 1.5, 4, 2.5)
        state.records[2] = I.IndexRecord(2, "b", "new", "b", 11, 3.0, 9, 0.0)
        with idx.locked():
            idx.write_snapshot(state)
            idx.append([["b"], ["f", 1, 10, "cur", "a:2,FS"], ["e", 1, 2, True, 5, 3, 10]])
        loaded = idx.load()
        self.assertEqual(loaded.records[1].fname, "a:2,FS")
        self.assertEqual(loaded.records[1].info, "FS")
        self.assertEqual(loaded.records[2], state.records[2])
        self.assertEqual((loaded.modseq, loaded.stamp, loaded.clean), (10, (1, 2), True))
        # a torn log tail stops the replay; the state is not clean
        with open(idx.log_path, "ab") as f:
            f.write(I.encode_op(["b"]) + b"12345678 [\"x\",")
        again = I.MailboxIndex(d).load()
        self.assertFalse(again.clean)
        self.assertEqual(again.records[1].fname, "a:2,FS")
        with open(idx.path, "rb") as f:
            data = f.read()
        for bad in (data[:-5], data[:40], b"junk" + data[4:], data.replace(b"\"modseq\":9", b"\"modseq\":8"),
                    b""):
            with open(idx.path, "wb") as f:
                f.write(bad)
            self.assertIsNone(I.MailboxIndex(d).load(), bad[:60])

    def test_cache_file(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        c = I.CacheFile(os.path.join(d, "c"))
        c.add(7, 1, "envelope", "E")
        c.add(7, 2, "k", [1, 2])
        self.assertEqual(I.CacheFile(c.path).items(7), {1: {"envelope": "E"}, 2: {"k": [1, 2]}})
        self.assertEqual(I.CacheFile(c.path).items(8), {})  # another UIDVALIDITY
        c.rewrite(7, {2})
        self.assertEqual(I.CacheFile(c.path).items(7), {2: {"k": [1, 2]}})


class CondstoreTests(Base):
    def test_modseqs(self) -> None:
        self.fill(3)
        box = self.st.open("INBOX")
        m = [i.modseq for i in box.messages]
        self.assertEqual(m, sorted(m))
        self.assertEqual(len(set(m)), 3)
        hms = box.highestmodseq
        self.assertGreaterEqual(hms, m[-1])
        box.store([2], ["\\Seen"], "+")
        self.assertGreater(box.messages[1].modseq, hms)
        self.assertEqual(box.store([2], ["\\Seen"], "+"), [])  # no change, no bump
        after_store = self.st.status("INBOX").highestmodseq
        self.assertEqual(after_store, box.messages[1].modseq)
        box.store([1], ["\\Deleted"], "+")
        box.expunge()
        st = self.st.status("INBOX")
        self.assertGreater(st.highestmodseq, after_store + 1)
        box.sync()
        self.assertEqual(box.highestmodseq, st.highestmodseq)
        # persistent across a restart, and monotonic even when the index is lost
        again = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual(again.highestmodseq, st.highestmodseq)
        self.assertEqual([(i.uid, i.modseq) for i in again.messages],
                         [(i.uid, i.modseq) for i in box.messages])
        os.unlink(self.index_path())
        rebuilt = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertGreater(rebuilt.highestmodseq, st.highestmodseq)
        self.assertTrue(all(i.modseq > st.highestmodseq for i in rebuilt.messages))
        self.assertEqual([(i.uid, i.flags) for i in rebuilt.messages],
                         [(i.uid, i.flags) for i in box.messages])
        # `rm dovecot.index*` takes the ceiling file too: still monotonic
        rebuilt.store([1], ["\\Answered"], "+")
        hms = rebuilt.box.modseq
        for name in os.listdir(self.root):
            if name.startswith("dovecot.index"):
                os.unlink(os.path.join(self.root, name))
        again = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertGreater(again.highestmodseq, hms)
        self.assertLess(again.highestmodseq, 2**63)

    def test_savedate(self) -> None:
        before = time.time()
        self.fill(1)
        box = self.st.open("INBOX")
        saved = box.messages[0].savedate.timestamp()
        self.assertTrue(before - 1 <= saved <= time.time() + 1)
        self.st.create("Dest")
        self.st.copy(box, [1], "Dest")
        self.assertIsNotNone(self.st.open("Dest").messages[0].savedate)
        # a file delivered by someone else: the time in its name
        with open(os.path.join(self.root, "new", "1600000000.M5P1.host"), "wb") as f:
            f.write(MSG)
        box.sync()
        self.assertEqual(box.messages[-1].savedate.timestamp(), 1600000000.000005)

    def test_store_unchanged_since(self) -> None:
        self.fill(3)
        box = self.st.open("INBOX")
        ms = box.highestmodseq
        box.store([2], ["\\Flagged"], "+")
        changed, failed = box.store_unchanged_since([1, 2, 3], ["\\Seen"], "+", ms)
        self.assertEqual((changed, failed), ([1, 3], [2]))
        self.assertNotIn("\\Seen", box.messages[1].flags)
        # another process changed message 1 after we read its modseq
        ms1 = box.messages[0].modseq
        other = now(MaildirStorage("u", self.root)).open("INBOX")
        other.store([1], ["\\Answered"], "+")
        changed, failed = box.store_unchanged_since([1], ["\\Draft"], "+", ms1)
        self.assertEqual((changed, failed), ([], [1]))
        ro = self.st.open("INBOX", readonly=True)
        self.assertRaises(StorageError, ro.store_unchanged_since, [1], ["\\Seen"], "+", 0)

    def test_vanished_since(self) -> None:
        self.fill(5)
        box = self.st.open("INBOX")
        start = box.highestmodseq
        box.store([2, 4], ["\\Deleted"], "+")
        mid = self.st.status("INBOX").highestmodseq
        box.expunge([2])
        after2 = self.st.status("INBOX").highestmodseq
        box.expunge([4])
        self.assertEqual(box.vanished_since(start), [2, 4])
        self.assertEqual(box.vanished_since(mid), [2, 4])
        self.assertEqual(box.vanished_since(after2), [4])
        self.assertEqual(box.vanished_since(self.st.status("INBOX").highestmodseq), [])
        # survives a restart (kept in the index)
        again = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual(again.vanished_since(start), [2, 4])
        # lost index: over-report every UID that is not here
        os.unlink(self.index_path())
        rebuilt = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual(rebuilt.vanished_since(start), [2, 4])
        self.assertEqual(rebuilt.vanished_since(0), [2, 4])

    def test_vanished_trimmed_over_reports(self) -> None:
        self.patch(M, "EXPUNGE_KEEP", 2)
        self.fill(6)
        box = self.st.open("INBOX")
        start = box.highestmodseq
        for uid in (1, 2, 3, 4, 5):
            box.store([uid], ["\\Deleted"], "+")
            box.expunge([uid])
        self.assertGreater(box.box.vanished_floor, start)
        self.assertEqual(box.vanished_since(start), [1, 2, 3, 4, 5])
        self.assertEqual(box.vanished_since(self.st.status("INBOX").highestmodseq - 1), [5])

    def test_deferred_expunge(self) -> None:
        self.fill(3)
        a = self.st.open("INBOX")
        b = self.st.open("INBOX")
        hms = b.highestmodseq
        a.store([2], ["\\Deleted", "\\Seen"], "+")
        a.expunge()
        r = b.sync(allow_expunge=False)
        self.assertEqual((r.expunged, r.flags_changed), ([], []))
        self.assertEqual([m.uid for m in b.messages], [1, 2, 3])
        self.assertLessEqual(b.highestmodseq, self.st.status("INBOX").highestmodseq)
        self.assertLess(b.highestmodseq, a.box.expunged[-1][0])
        self.assertGreaterEqual(b.highestmodseq, hms)
        err = self.assertRaises(StorageError, b.message_file, 2)
        self.assertEqual(err.code, "EXPUNGEISSUED")
        with b.message_file(1) as f:
            self.assertTrue(f.read().startswith(b"Subject"))
        self.st.append("INBOX", io.BytesIO(MSG))
        r = b.sync(allow_expunge=False)
        self.assertEqual((r.expunged, r.added), ([], [4]))
        r = b.sync(allow_expunge=True)
        self.assertEqual(r.expunged, [2])
        self.assertEqual([m.uid for m in b.messages], [1, 3, 4])
        self.assertEqual(b.highestmodseq, self.st.status("INBOX").highestmodseq)

    def test_deferred_expunge_file_still_there(self) -> None:
        """Expunged in the index but the file is still there: readable."""
        self.fill(2)
        a = self.st.open("INBOX")
        b = self.st.open("INBOX")
        a.store([1], ["\\Deleted"], "+")
        rec = a.box.by_uid[1]
        keep = os.path.join(self.root, "tmp", "keep")
        os.link(a.box.rec_path(rec), keep)
        a.expunge()
        os.link(keep, a.box.rec_path(rec))  # e.g. still being renamed by a slow writer
        with b.message_file(1) as f:
            self.assertTrue(f.read().startswith(b"Subject"))
        os.unlink(a.box.rec_path(rec))
        err = self.assertRaises(StorageError, b.message_file, 1)
        self.assertEqual(err.code, "EXPUNGEISSUED")

    def test_cached_values(self) -> None:
        self.fill(2)
        box = self.st.open("INBOX")
        self.assertIsNone(box.cached(1, "envelope"))
        box.set_cached(1, "envelope", b"(\"date\" NIL)")
        box.set_cached(1, "header.subject", "hi")
        box.set_cached(2, "bodystructure", ["text", "plain"])
        box.set_cached(99, "envelope", "x")  # unknown: ignored
        self.assertEqual(box.cached(1, "envelope"), b"(\"date\" NIL)")
        again = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual(again.cached(1, "envelope"), b"(\"date\" NIL)")
        self.assertEqual(again.cached(1, "header.subject"), "hi")
        self.assertEqual(again.cached(2, "bodystructure"), ["text", "plain"])
        self.assertIsNone(again.cached(99, "envelope"))


class IndexTests(Base):
    def test_warm_open_does_not_scan(self) -> None:
        self.fill(3, flags=("\\Seen", "kw"))
        self.st.open("INBOX").store([2], ["\\Flagged"], "+")
        _age_dirs(self.root)
        now(MaildirStorage("u", self.root)).open("INBOX")  # confirms the aged stamp
        st = now(MaildirStorage("u", self.root))
        self.patch(M._Box, "_list", lambda box: self.fail("scanned"))
        box = st.open("INBOX")
        self.assertEqual([(m.uid, m.flags) for m in box.messages],
                         [(1, {"\\Seen", "kw"}), (2, {"\\Seen", "kw", "\\Flagged"}), (3, {"\\Seen", "kw"})])

    def _check_rebuilt(self, damage) -> None:
        self.fill(4, flags=("\\Seen",))
        box = self.st.open("INBOX")
        box.store([2], ["\\Flagged", "Work"], "+")
        box.store([3], ["\\Deleted"], "+")
        box.expunge()
        want = [(m.uid, m.flags, m.size) for m in box.messages]
        hms = box.highestmodseq
        damage()
        again = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual([(m.uid, m.flags, m.size) for m in again.messages], want)
        self.assertGreaterEqual(again.highestmodseq, hms)
        self.assertEqual(again.uidnext, 5)
        self.assertEqual(again.uidvalidity, box.uidvalidity)
        # and the rebuilt index is valid again
        self.assertIsNotNone(I.MailboxIndex(self.root).load())
        self.assertEqual(now(MaildirStorage("u", self.root)).append("INBOX", io.BytesIO(MSG))[1], 5)

    def test_rebuild_when_missing(self) -> None:
        self._check_rebuilt(lambda: os.unlink(self.index_path()))

    def test_rebuild_when_truncated(self) -> None:
        def damage() -> None:
            with open(self.index_path(), "r+b") as f:
                f.truncate(os.path.getsize(self.index_path()) // 2)
        self._check_rebuilt(damage)

    def test_rebuild_when_garbage(self) -> None:
        def damage() -> None:
            for suffix in ("", ".log", ".cache"):
                with open(self.index_path(suffix), "wb") as f:
                    f.write(os.urandom(300))
        self._check_rebuilt(damage)

    def test_rebuild_when_log_torn(self) -> None:
        def damage() -> None:
            with open(self.index_path(".log"), "ab") as f:
                f.write(b"0000")
        self._check_rebuilt(damage)

    def test_stale_index_rescans(self) -> None:
        self.fill(2)
        self.st.open("INBOX")
        _age_dirs(self.root)
        now(MaildirStorage("u", self.root)).open("INBOX")
        # Dovecot (or a shell) changes flags and delivers behind our back
        cur = os.path.join(self.root, "cur")
        name = sorted(os.listdir(cur))[0]
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,FS"))
        with open(os.path.join(self.root, "new", "1600000000.x"), "wb") as f:
            f.write(b"a\n")
        box = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual([(m.uid, m.flags) for m in box.messages],
                         [(1, {"\\Flagged", "\\Seen"}), (2, set()), (3, set())])

    def test_dangling_transaction_forces_rescan(self) -> None:
        """A writer killed between its rename and its log record."""
        self.fill(2)
        self.st.open("INBOX")
        _age_dirs(self.root)
        now(MaildirStorage("u", self.root)).open("INBOX")
        with open(self.index_path(".log"), "ab") as f:
            f.write(I.encode_op(["b"]))
        cur = os.path.join(self.root, "cur")
        name = sorted(os.listdir(cur))[0]
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,S"))
        _age_dirs(self.root)  # even with an unchanged-looking directory
        box = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual(box.messages[0].flags, {"\\Seen"})

    def test_hostile_log_is_not_followed(self) -> None:
        """A checksummed op naming a path outside the mailbox is refused."""
        self.fill(2)
        box = self.st.open("INBOX")
        with open(self.index_path(".log"), "ab") as f:
            f.write(I.encode_op(["f", 1, 99, "cur", "../../etc/passwd"]))
        box.sync()
        with box.message_file(1) as f:
            self.assertTrue(f.read().startswith(b"Subject"))
        again = now(MaildirStorage("u", self.root)).open("INBOX")
        with again.message_file(1) as f:
            self.assertTrue(f.read().startswith(b"Subject"))

    def test_cache_follows_uidvalidity(self) -> None:
        self.fill(1)
        box = self.st.open("INBOX")
        box.set_cached(1, "k", "old")
        for name in ("dovecot-uidlist", I.INDEX, I.INDEX + ".log"):
            os.unlink(os.path.join(self.root, name))
        fresh = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertNotEqual(fresh.uidvalidity, box.uidvalidity)
        self.assertIsNone(fresh.cached(1, "k"))
        fresh.set_cached(1, "k", "new")
        self.assertEqual(now(MaildirStorage("u", self.root)).open("INBOX").cached(1, "k"), "new")

    def test_uidlist_lost_index_keeps_uids(self) -> None:
        self.fill(3)
        v = self.st.status("INBOX").uidvalidity
        os.unlink(os.path.join(self.root, "dovecot-uidlist"))
        box = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual((box.uidvalidity, [m.uid for m in box.messages]), (v, [1, 2, 3]))
        ul = read_uidlist(os.path.join(self.root, "dovecot-uidlist"))
        self.assertEqual((ul.uidvalidity, [r.uid for r in ul.records]), (v, [1, 2, 3]))

    def test_compaction(self) -> None:
        self.patch(M, "LOG_COMPACT_BYTES", 2000)
        self.fill(5)
        a = self.st.open("INBOX")
        b_st = now(MaildirStorage("u", self.root))
        b = b_st.open("INBOX")
        with open(self.index_path(".log"), "rb") as f:
            log_id = f.readline()
        for i in range(30):
            a.store([1 + i % 5], ["\\Seen"], "+" if i % 2 else "-")
        with open(self.index_path(".log"), "rb") as f:
            self.assertNotEqual(f.readline(), log_id)
        self.assertLess(os.path.getsize(self.index_path(".log")), 2500)
        b.sync()
        self.assertEqual([(m.uid, m.flags, m.modseq) for m in b.messages],
                         [(m.uid, m.flags, m.modseq) for m in a.messages])


def _flagger(root: str, uids: list[int], flag: str, rounds: int) -> None:
    st = now(MaildirStorage("u", root))
    box = st.open("INBOX")
    for _ in range(rounds):
        box.sync()
        box.store(uids, [flag], "+")
        st.append("INBOX", io.BytesIO(MSG))


class ConcurrencyTests(Base):
    def test_two_processes_share_modseqs(self) -> None:
        self.fill(3)
        a = self.st.open("INBOX")
        other = now(MaildirStorage("u", self.root))
        b = other.open("INBOX")
        b.store([1], ["\\Seen"], "+")
        a.store([2], ["\\Seen"], "+")
        r = a.sync()
        self.assertEqual(r.flags_changed, [1])
        self.assertNotEqual(a.messages[0].modseq, a.messages[1].modseq)
        b.sync()
        self.assertEqual(a.highestmodseq, b.highestmodseq)
        self.assertEqual([(m.uid, m.modseq, m.flags) for m in a.messages],
                         [(m.uid, m.modseq, m.flags) for m in b.messages])
        uid = other.append("INBOX", io.BytesIO(MSG))[1]
        self.assertEqual(self.st.append("INBOX", io.BytesIO(MSG))[1], uid + 1)

    def test_concurrent_processes_lose_nothing(self) -> None:
        self.fill(4)
        ctx = multiprocessing.get_context("fork")
        flags = ["\\Seen", "\\Flagged", "\\Answered", "kw"]
        procs = [ctx.Process(target=_flagger, args=(self.root, [1, 2, 3, 4], f, 10)) for f in flags]
        for p in procs:
            p.start()
        # and two sessions in this process at the same time
        a, b = self.st.open("INBOX"), self.st.open("INBOX")
        for _i in range(10):
            a.store([1], ["\\Draft"], "+")
            b.sync()
            self.st.append("INBOX", io.BytesIO(MSG))
        for p in procs:
            p.join()
            self.assertEqual(p.exitcode, 0)
        ul = read_uidlist(os.path.join(self.root, "dovecot-uidlist"))
        self.assertEqual([r.uid for r in ul.records], list(range(1, 4 + 40 + 10 + 1)))
        fresh = now(MaildirStorage("u", self.root)).open("INBOX")
        self.assertEqual(len(fresh.messages), 54)
        want = set(flags)
        self.assertEqual(fresh.messages[0].flags, want | {"\\Draft"})
        for m in fresh.messages[1:4]:
            self.assertEqual(m.flags, want)
        a.sync()
        self.assertEqual([(m.uid, m.flags) for m in a.messages],
                         [(m.uid, m.flags) for m in fresh.messages])
        self.assertEqual(len({m.modseq for m in fresh.messages[:4]}), 4)


class TimingTests(unittest.TestCase):
    """Open a generated Maildir cold (no index) and warm; prints the times.

    ``PYDOVECOT_BENCH_N`` sets the size (default 5000; the report's numbers
    are for 100000).  Only the structure is asserted (the warm open reads
    no directory), not the times, which depend on the machine's load.
    """

    def test_open_timings(self) -> None:
        n = int(os.environ.get("PYDOVECOT_BENCH_N", "5000"))
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(root, sub))
        body = b"From: a@example.org\nSubject: x\n\nhello\n"
        base = int(time.time()) - n
        for i in range(n):
            name = f"{base + i}.M{i}P1Q1.host,S={len(body)},W={len(body) + 4}:2,{'S' if i % 3 else ''}"
            with open(os.path.join(root, "cur", name), "wb") as f:
                f.write(body)
        _age_dirs(root)
        times = {}
        t = time.perf_counter()
        box = now(MaildirStorage("u", root)).open("INBOX")
        times["cold"] = time.perf_counter() - t
        self.assertEqual(len(box.messages), n)
        self.patch(M._Box, "_list", lambda box: self.fail("warm open scanned"))
        t = time.perf_counter()
        warm = now(MaildirStorage("u", root)).open("INBOX")
        times["warm"] = time.perf_counter() - t
        self.assertEqual([(m.uid, m.flags) for m in warm.messages],
                         [(m.uid, m.flags) for m in box.messages])
        print(f"\n{n} messages: cold open {times['cold']:.3f} s, warm open {times['warm']:.3f} s")
