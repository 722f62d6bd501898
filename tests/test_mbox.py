"""mbox storage (issue 11): Dovecot's file format, locking and interop.

* Format: the headers Dovecot writes (X-IMAPbase, X-UID, Status,
  X-Status, X-Keywords, Content-Length) and hides, the From_ line, a
  foreign mbox (no Content-Length, ``>From`` kept, no UIDs: they are
  assigned and written), crash safety of the rewrite (temp + rename, and
  the journaled in-place rewrite where the directory is not writable).
* The generic storage semantics (attributes, \\Recent, search) run
  against mbox too, by subclassing the Maildir suites.
* Interop with Debian's Dovecot both ways, on the same files: its
  ``imap`` binary pre-authenticated with a private config, and
  ``doveadm -o mail_location=… fetch``.
* Locks: our dotlock makes Dovecot's APPEND wait; a classic fcntl lock
  (what Dovecot takes) makes us wait, bounded by mbox_lock_timeout.
* LMTP delivery into a /var/mail-style INBOX and IMAP through the real
  master.
"""

from __future__ import annotations

import datetime
import fcntl
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

import tests.test_imap_remote_storage as tir
import tests.test_storage_attributes as tsa
import tests.test_storage_search as tss
import tests.test_storage_status as tst
from pydovecot.storage import open_storage
from pydovecot.storage.interfaces import StorageError
from pydovecot.storage.mbox import MboxStorage, from_line, parse_from_line
from pydovecot.storage.uidlist import Dotlock
from tests import dovecot_side, harness
from tests.remote_storage import RemoteStorage
from tests.storage_now import now, result_now

R = result_now

UTC = datetime.UTC
M1 = b"Subject: one\r\nFrom: a@example.org\r\n\r\nFrom me\r\n>From you\r\n"
M2 = b"Subject: two\r\n\r\nbody\r\n"


def storage(d: str) -> MboxStorage:
    return MboxStorage("alice", os.path.join(d, "mail"), inbox=os.path.join(d, "inbox"), home=d)


class FormatTests(unittest.TestCase):
    def setUp(self) -> None:
        self.d = os.path.abspath(self.mktemp())
        self.s = storage(self.d)

    def read(self, name: str = "inbox") -> bytes:
        with open(os.path.join(self.d, name), "rb") as f:
            return f.read()

    def test_headers_as_dovecot_writes_them(self) -> None:
        self.assertEqual(R(self.s.append("INBOX", io.BytesIO(M1)))[1], 1)
        when = datetime.datetime(2020, 1, 1, 8, 0, tzinfo=UTC)
        self.assertEqual(R(self.s.append("INBOX", io.BytesIO(M2), ["\\Seen", "$Foo"], when))[1], 2)
        box = R(self.s.open("INBOX"))
        self.addCleanup(box.close)
        R(box.store([1], ["\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "Kw2"], "+"))
        data = self.read()
        uidvalidity = box.uidvalidity
        self.assertTrue(data.startswith(b"From alice@"), data)
        self.assertIn(b"\nFrom alice@", data)
        self.assertIn(b"  Wed Jan 01 08:00:00 2020\n", data)
        # the flags were written in place: X-IMAPbase keeps the last used UID
        # of its last rewrite, as Dovecot's does (readers take the X-UIDs too)
        self.assertIn(b"X-IMAPbase: %d 0000000001\n" % uidvalidity, data)
        self.assertEqual(data.count(b"X-IMAPbase:"), 1)
        self.assertIn(b"X-UID: 1\n", data)
        self.assertIn(b"X-Status: AFTD\n", data)
        self.assertRegex(data, rb"\nX-Keywords: Kw2 {40,}\n")  # padded, as Dovecot pads it
        self.assertIn(b"Status: R", data)  # O follows at the next rewrite
        self.assertIn(b"Content-Length: 18\n", data)  # LF body, no escaping
        self.assertIn(b"\n\nFrom me\n>From you\n\nFrom ", data)
        self.assertTrue(data.endswith(b"body\n\n"))
        # what clients see: the message as given, the state headers hidden
        self.assertEqual(R(box.message_file(1)).read().replace(b"\n", b"\r\n"), M1)
        self.assertEqual([m.size for m in box.messages], [len(M1), len(M2)])
        self.assertEqual(box.messages[1].internaldate, when)
        self.assertEqual(box.messages[0].flags,
                         {"\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "Kw2"})
        # a second process reads the same UIDs, flags and UIDVALIDITY
        other = R(storage(self.d).open("INBOX"))
        self.addCleanup(other.close)
        self.assertEqual([(m.uid, m.flags) for m in other.messages],
                         [(m.uid, m.flags) for m in box.messages])
        self.assertEqual(other.uidvalidity, uidvalidity)
        self.assertEqual(R(box.expunge()), [1])
        self.assertEqual(R(other.sync()).expunged, [1])
        self.assertEqual(self.read().count(b"X-IMAPbase: %d 0000000002" % uidvalidity), 1)

    def test_from_line(self) -> None:
        line = from_line(b"bob@example.org", 1577865600.0)
        self.assertEqual(line, b"From bob@example.org  Wed Jan 01 08:00:00 2020")
        self.assertEqual(parse_from_line(line), (b"bob@example.org", 1577865600.0))
        self.assertEqual(parse_from_line(b"From bob Wed Jan  1 08:00:00 2020")[1], 1577865600.0)
        self.assertIsNone(parse_from_line(b"From me"))

    def test_foreign_mbox_gets_uids_written(self) -> None:
        """Another MDA's mbox: no Content-Length, no X-UID, a From_-looking
        line that is not one, ``>From`` kept as it is."""
        with open(os.path.join(self.d, "inbox"), "wb") as f:
            f.write(b"From x@y Mon Dec  7 10:00:00 2026\nSubject: a\n\nFrom the top\n>From q\n\n"
                    b"From z@y Mon Dec  7 11:00:00 2026\nSubject: b\nStatus: RO\n\nsecond\n")
        box = R(self.s.open("INBOX"))
        self.addCleanup(box.close)
        self.assertEqual([m.uid for m in box.messages], [1, 2])
        self.assertEqual(R(box.message_file(1)).read(), b"Subject: a\n\nFrom the top\n>From q\n")
        self.assertEqual(R(box.message_file(2)).read(), b"Subject: b\n\nsecond\n")
        self.assertEqual(box.messages[1].flags, {"\\Seen"})
        self.assertEqual(box.recent, {1})
        data = self.read()
        self.assertIn(b"X-IMAPbase: %d 0000000002" % box.uidvalidity, data)
        self.assertIn(b"X-UID: 2\n", data)
        self.assertIn(b"Content-Length: 7\n", data)

    def test_index_is_rebuilt(self) -> None:
        R(self.s.append("INBOX", io.BytesIO(M1), ["\\Seen", "$A"]))
        R(self.s.append("INBOX", io.BytesIO(M2)))
        box = R(self.s.open("INBOX"))
        self.addCleanup(box.close)
        R(box.store([2], ["\\Flagged"], "+"))
        shutil.rmtree(os.path.join(self.d, "mail", ".imap"))
        again = R(storage(self.d).open("INBOX"))
        self.addCleanup(again.close)
        self.assertEqual((again.uidvalidity, again.uidnext), (box.uidvalidity, box.uidnext))
        self.assertEqual([(m.uid, m.flags, m.size) for m in again.messages],
                         [(m.uid, m.flags, m.size) for m in box.messages])

    def test_failed_append_is_truncated_away(self) -> None:
        R(self.s.append("INBOX", io.BytesIO(M1)))
        before = self.read()
        real = os.fsync

        def full(fd: int) -> None:
            raise OSError(28, "No space left on device")

        os.fsync = full
        try:
            err = self.failureResultOf(self.s.append("INBOX", io.BytesIO(M2)), StorageError)
        finally:
            os.fsync = real
        self.assertEqual(err.value.code, "OVERQUOTA")
        self.assertEqual(self.read(), before)
        self.assertEqual(R(self.s.append("INBOX", io.BytesIO(M2)))[1], 2)
        self.assertEqual(R(self.s.status("INBOX")).messages, 2)

    def test_uw_imap_pseudo_message_is_hidden(self) -> None:
        with open(os.path.join(self.d, "inbox"), "wb") as f:
            f.write(b"From MAILER-DAEMON Mon Dec  7 10:00:00 2026\n"
                    b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
                    b"X-IMAP: 1234567 0000000007 $Work\nStatus: RO\n\nThis text is part of the "
                    b"internal format of your mail folder.\n\n"
                    b"From x@y Mon Dec  7 11:00:00 2026\nSubject: b\nX-UID: 7\nStatus: RO\n"
                    b"X-Keywords: $Work\n\nsecond\n")
        box = R(self.s.open("INBOX"))
        self.addCleanup(box.close)
        self.assertEqual((box.uidvalidity, box.uidnext), (1234567, 8))
        self.assertEqual([(m.uid, m.flags) for m in box.messages], [(7, {"\\Seen", "$Work"})])
        R(box.store([7], ["\\Flagged"], "+"))
        data = self.read()
        self.assertTrue(data.startswith(b"From x@y  Mon Dec 07 11:00:00 2026\n"), data[:80])
        self.assertIn(b"X-IMAPbase: 1234567 0000000007 $Work\n", data)

    def test_rewrite_failure_keeps_the_old_file(self) -> None:
        R(self.s.append("INBOX", io.BytesIO(M1)))
        box = R(self.s.open("INBOX"))
        self.addCleanup(box.close)
        ino = os.stat(os.path.join(self.d, "inbox")).st_ino
        R(box.store([1], ["\\Deleted"], "+"))  # in place
        self.assertEqual(os.stat(os.path.join(self.d, "inbox")).st_ino, ino)
        before = self.read()
        real = os.rename

        def broken(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        os.rename = broken
        try:
            self.failureResultOf(box.expunge(), OSError)
        finally:
            os.rename = real
        self.assertEqual(self.read(), before)
        self.assertEqual([e for e in os.listdir(self.d) if e.endswith(".tmp")], [])
        self.assertFalse(os.path.exists(os.path.join(self.d, "inbox.lock")))

    def test_interrupted_in_place_rewrite_is_finished(self) -> None:
        """Where the spool directory is not writable the rewrite goes through
        a journal; a crash after the journal is repaired at the next lock,
        keeping what was appended meanwhile."""
        R(self.s.append("INBOX", io.BytesIO(M1)))
        box = R(self.s.open("INBOX"))
        self.addCleanup(box.close)
        b = box.box
        with b.locked(True) as f:
            p, data = b._read(f)
            p.msgs[0].flags.add("\\Seen")
            real_unlink, real_ftruncate = os.unlink, os.ftruncate

            def crash(*a: object) -> None:
                raise RuntimeError("crash")

            os.ftruncate = crash  # the image written in place, not truncated
            try:
                self.assertRaises(RuntimeError, b._overwrite, f, b"From a  Wed Jan 01 08:00:00 2020\n"
                                  b"X-IMAPbase: 1 0000000002\nX-UID: 1\nStatus: RO\n"
                                  b"Content-Length: 2\n\nx\n\n", len(data))
            finally:
                os.ftruncate, os.unlink = real_ftruncate, real_unlink
        self.assertTrue(os.path.exists(b.journal))
        s2 = storage(self.d)
        box2 = R(s2.open("INBOX"))
        self.addCleanup(box2.close)
        self.assertFalse(os.path.exists(b.journal))
        self.assertEqual([(m.uid, m.flags) for m in box2.messages], [(1, {"\\Seen"})])
        self.assertEqual(R(box2.message_file(1)).read(), b"\nx\n")

    def test_layout_and_subscriptions(self) -> None:
        R(self.s.create("Sub/Folder"))
        R(self.s.subscribe("Sub/Folder"))
        self.assertTrue(os.path.isfile(os.path.join(self.d, "mail", "Sub", "Folder")))
        with open(os.path.join(self.d, "mail", ".subscriptions"), "rb") as f:
            self.assertEqual(f.read(), b"V\t2\n\nSub\tFolder\n")
        listed = {m.name: m.attributes for m in R(self.s.list_mailboxes())}
        self.assertEqual(set(listed), {"INBOX", "Sub", "Sub/Folder"})
        self.assertIn("\\Noselect", listed["Sub"])
        box = R(self.s.open("INBOX"))
        self.addCleanup(box.close)
        R(self.s.append("INBOX", io.BytesIO(M2), ["\\Flagged"]))
        R(box.sync())
        uidv, pairs = R(self.s.copy(box, [1], "Sub/Folder"))
        self.assertEqual(pairs, [(1, 1)])
        self.assertEqual(R(self.s.status("Sub/Folder")).messages, 1)
        R(self.s.rename("Sub/Folder", "Other"))
        self.assertEqual(R(self.s.status("Other")).uidvalidity, uidv)
        self.failureResultOf(self.s.create("Other/Child"))
        R(self.s.delete("Other"))
        for bad in (".imap", "a/.imap", "..", "a/../b", "x.lock", "../x", "a/b/"):
            self.failureResultOf(self.s.create(bad))
        R(self.s.create("v1.2/r.c"))  # dots are fine in mbox names, as in Dovecot
        self.assertTrue(os.path.isfile(os.path.join(self.d, "mail", "v1.2", "r.c")))
        self.assertIn("v1.2/r.c", [m.name for m in R(self.s.list_mailboxes())])

    def test_index_and_control_options(self) -> None:
        s = open_storage("alice", f"mbox:~/mail:INBOX=~/in:INDEX={self.d}/idx:CONTROL=~/ctl",
                         self.d)
        R(s.append("INBOX", io.BytesIO(M2)))
        R(s.create("A/B"))
        R(s.subscribe("A/B"))
        R(s.status("A/B"))
        self.assertTrue(os.path.exists(os.path.join(self.d, "idx", "INBOX", "dovecot.index.pydovecot-mbox")))
        self.assertTrue(os.path.exists(os.path.join(self.d, "idx", "A", "B", "dovecot.index.pydovecot-mbox")))
        self.assertTrue(os.path.exists(os.path.join(self.d, "ctl", ".subscriptions")))
        self.assertFalse(os.path.exists(os.path.join(self.d, "mail", ".imap")))

    def test_settings_classified(self) -> None:
        from pydovecot.config.settings import classify
        for name in ("mbox_lock_timeout", "mbox_dotlock_change_timeout", "mbox_read_locks",
                     "mbox_write_locks"):
            self.assertEqual(classify(name), "implemented", name)
        for name in ("mbox_dirty_syncs", "mbox_lazy_writes", "mbox_min_index_size",
                     "mbox_very_dirty_syncs", "mbox_md5"):
            self.assertEqual(classify(name), "warned", name)

    def test_location(self) -> None:
        s = open_storage("alice", "mbox:~/mail:INBOX=~/spool/alice:LAYOUT=fs", self.d)
        self.assertIsInstance(s, MboxStorage)
        self.assertEqual(s.inbox_path, os.path.join(self.d, "spool", "alice"))
        from pydovecot.config.settings import check_location
        self.assertIsNone(check_location("mbox:~/mail:INBOX=/var/mail/%u"))
        self.assertIn("LAYOUT", check_location("mbox:~/mail:LAYOUT=maildir++"))
        self.assertIn("not supported", check_location("mdbox:~/mdbox"))


class LockTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.d = os.path.abspath(self.mktemp())
        self.s = storage(self.d)
        R(self.s.append("INBOX", io.BytesIO(M1)))

    @defer.inlineCallbacks
    def test_fcntl_lock_of_another_process_blocks_us_bounded(self):
        """A classic fcntl write lock (Dovecot's) held by another process:
        our open waits for it on the reactor (its Deferred fires later,
        nothing blocks), and gives up after mbox_lock_timeout."""
        path = os.path.join(self.d, "inbox")
        args = [sys.executable, "-c", "import fcntl,sys,time\nf=open(sys.argv[1],'r+b')\n"
                "fcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\n"
                "time.sleep(float(sys.argv[2]))", path]
        holder = subprocess.Popen(args + ["2"], stdout=subprocess.PIPE)
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline(), b"locked\n")
        start = time.monotonic()
        d = storage(self.d).open("INBOX")
        self.assertFalse(d.called)  # waiting, not blocking
        box = yield d
        self.addCleanup(box.close)
        self.assertGreater(time.monotonic() - start, 0.5)
        self.assertEqual([m.uid for m in box.messages], [1])
        holder.wait(30)
        # held longer than mbox_lock_timeout: a clear error
        holder = subprocess.Popen(args + ["30"], stdout=subprocess.PIPE)
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline(), b"locked\n")
        s3 = storage(self.d)
        R(s3.configure({"mbox_lock_timeout": "1 secs"}))
        start = time.monotonic()
        try:
            yield s3.open("INBOX")
        except StorageError as e:
            self.assertIn("Timeout", str(e))
        else:
            self.fail("no timeout")
        self.assertGreater(time.monotonic() - start, 0.9)

    def test_lock_methods(self) -> None:
        """mbox_write_locks = flock: an flock held elsewhere holds us back;
        unknown methods are refused."""
        s = storage(self.d)
        R(s.configure({"mbox_write_locks": "dotlock_try flock", "mbox_lock_timeout": "1 secs"}))
        box = R(s.open("INBOX"))
        self.addCleanup(box.close)
        with open(os.path.join(self.d, "inbox"), "rb") as other:  # another open file
            fcntl.flock(other.fileno(), fcntl.LOCK_EX)
            d = box.store([1], ["\\Seen"], "+")
            self.assertFalse(d.called)
            fcntl.flock(other.fileno(), fcntl.LOCK_UN)
        self.assertEqual(R(s.configure({"mbox_read_locks": "fcntl"})), None)
        self.failureResultOf(s.configure({"mbox_read_locks": "fcntl bogus"}), StorageError)
        return d.addCallback(self.assertEqual, [1])

    def test_stale_dotlock_is_overridden(self) -> None:
        lock = os.path.join(self.d, "inbox.lock")
        with open(lock, "w") as f:
            f.write("999999:nohost")
        old = time.time() - 600
        os.utime(lock, (old, old))
        box = R(self.s.open("INBOX"))
        self.addCleanup(box.close)
        self.assertEqual(R(box.store([1], ["\\Seen"], "+")), [1])
        self.assertFalse(os.path.exists(lock))


# -- the generic storage suites, on mbox ----------------------------------


class MboxAttributeTests(tsa._Semantics, unittest.TestCase):
    def make(self) -> MboxStorage:
        self.home = os.path.abspath(self.mktemp())
        return now(storage(self.home))

    def test_rename_keeps_delete_drops(self) -> None:
        """mbox (LAYOUT=fs): ``A`` of ``A/B`` is a directory, which holds
        no attributes (as in Dovecot); the child's follow the rename."""
        s = self.make()
        s.create("A/B")
        s.set_attribute("A/B", "/shared/comment", b"child")
        s.rename("A", "Z")
        self.assertEqual(s.get_attribute("Z/B", "/shared/comment"), b"child")
        s.delete("Z/B")
        s.create("Z/B")
        self.assertEqual(s.attribute_keys("Z/B"), [])


class MboxRecentTests(unittest.TestCase):
    def test_same_process(self) -> None:
        d = os.path.abspath(self.mktemp())
        self.assertEqual(tst._Ours(now(storage(d))).run(), tst.EXPECTED)

    def test_other_process(self) -> None:
        d = os.path.abspath(self.mktemp())
        self.assertEqual(tst._Ours(now(storage(d)), now(storage(d))).run(), tst.EXPECTED)


class MboxEvaluatorTests(tss.MaildirEvaluatorTests):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="stsearch-mbox-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.storage = storage(self.dir)
        for i, m in enumerate(tss.MESSAGES):
            flags = {0: ["\\Seen"], 1: ["\\Seen", "\\Answered"], 3: ["$Work", "\\Flagged"]}.get(i, [])
            result_now(self.storage.append("INBOX", io.BytesIO(m), flags))
        self.mbox = result_now(self.storage.open("INBOX"))
        self.addCleanup(self.mbox.close)

    def test_index_keeps_values(self):
        """A second fetch_data of parsed values reads no message."""
        items = ["envelope", "bodystructure", "body", "preview", "header:cc", "sentdate"]
        first = self.successResultOf(self.mbox.fetch_data(3, items))
        opened = []
        real = self.mbox._open
        self.mbox._open = lambda uid: (opened.append(uid), real(uid))[1]
        again = result_now(storage(self.dir).open("INBOX"))
        self.addCleanup(again.close)
        again._open = lambda uid: (opened.append(uid), real(uid))[1]
        self.assertEqual(self.successResultOf(again.fetch_data(3, items)), first)
        self.assertEqual(opened, [])


class MboxFlowsTests(unittest.TestCase):
    """The scripted IMAP flows of tests.test_imap_remote_storage (two
    sessions: FETCH, STORE, SEARCH, SORT, APPEND, COPY/MOVE, EXPUNGE,
    RENAME, IDLE, NOTIFY, CONDSTORE/QRESYNC, URLAUTH, …) answer on mbox as
    on Maildir, directly and behind the remote-like proxy."""

    timeout = 240

    @defer.inlineCallbacks
    def test_flows_answer_as_on_maildir(self):
        flows = tir.RemoteStorageFlows("run_flows")
        on_maildir = yield flows.run_flows(lambda s: s)
        ext_maildir = yield flows.run_extensions(lambda s: s)
        self.patch(tir, "MaildirStorage",
                   lambda user, root, home=None: MboxStorage(user, root, home=home))
        on_mbox = yield flows.run_flows(lambda s: s)
        ext_mbox = yield flows.run_extensions(lambda s: s)
        remote = yield flows.run_flows(RemoteStorage)
        self.maxDiff = None
        uidv = re.compile(rb"UIDVALIDITY \d+|\[APPENDUID \d+|\[COPYUID \d+|;UIDVALIDITY=\d+")

        def clean(run):
            out = [(step, uidv.sub(b"UIDV", text)) for step, text in run]
            # Dovecot keeps \\Recent through RENAME (its mbox does, checked
            # with its imap binary); pydovecot's Maildir drops it
            after = {"a27 EXAMINE Old", "a28 FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])"}
            return [(step, re.sub(rb"\* \d+ RECENT", b"* n RECENT", text).replace(b"\\Recent ", b"")
                     if step in after else text) for step, text in out]

        modseq = re.compile(rb"(MODSEQ \(?|CHANGEDSINCE |MODIFIED )\d+")

        def modseqs(run):  # the numbers are each storage's own; their use is compared
            return [(re.sub(r"QRESYNC \(N \d+", "QRESYNC (N N", re.sub(r"(CHANGEDSINCE) \d+", r"\1 N", step)),
                     modseq.sub(rb"\1N", text))
                    for step, text in run]

        for mine, theirs in ((on_mbox, on_maildir), (ext_mbox, ext_maildir), (remote, on_maildir)):
            mine, theirs = modseqs(clean(mine)), modseqs(clean(theirs))
            self.assertEqual([s for s, _ in mine], [s for s, _ in theirs])
            for (step, a), (_s, b) in zip(mine, theirs, strict=True):
                if step == "a20 FETCH 1 (BODY[] BODYSTRUCTURE)":
                    # a CATENATE result without a final line end: mbox adds
                    # one, as Dovecot's mbox does (SideBySideTests shows it)
                    self.assertIn(b"BODY[] {42}", a)
                    continue
                self.assertEqual(a, b, step)


# -- Dovecot on the same files --------------------------------------------

FETCH_RE = re.compile(rb"\* \d+ FETCH \(UID (\d+) FLAGS \(([^)]*)\) RFC822\.SIZE (\d+) "
                      rb"INTERNALDATE \"([^\"]+)\"")


class DovecotInteropTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        dovecot_side.require()
        self.dir = tempfile.mkdtemp(prefix="mbox-dv-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)
        self.home = os.path.join(self.dir, "home")
        os.makedirs(os.path.join(self.home, "mail"))
        self.location = f"mbox:{self.home}/mail:INBOX={self.home}/inbox"
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
mail_location = {self.location}
mail_uid = nobody
mail_gid = nogroup
first_valid_uid = 1
first_valid_gid = 1
ssl = no
namespace inbox {{
  inbox = yes
  separator = /
}}
""")

    def chown(self) -> None:
        for root, dirs, files in os.walk(self.home):
            for n in dirs + files:
                shutil.chown(os.path.join(root, n), "nobody", "nogroup")
        shutil.chown(self.home, "nobody", "nogroup")

    def dovecot(self, commands: list[bytes], wait: bool = True):
        self.chown()
        script = b"".join(b"T%d %s\r\n" % (i, c) for i, c in enumerate(commands)) + b"Z LOGOUT\r\n"
        env = {"USER": "nobody", "HOME": self.home, "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen([dovecot_side.DOVECOT_IMAP, "-c", self.conf], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        if not wait:
            return proc, script
        out, err = proc.communicate(script, timeout=60)
        return out

    def doveadm_fetch(self) -> bytes:
        self.chown()
        env = {"USER": "nobody", "HOME": self.home, "PATH": "/usr/bin:/bin"}
        proc = subprocess.run(["doveadm", "-c", self.conf, "-o", f"mail_location={self.location}",
                               "fetch", "uid flags", "mailbox", "INBOX"],
                              capture_output=True, timeout=60, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout

    def ours(self) -> MboxStorage:
        return MboxStorage("nobody", os.path.join(self.home, "mail"),
                           inbox=os.path.join(self.home, "inbox"), home=self.home)

    def test_dovecot_reads_ours(self) -> None:
        s = self.ours()
        R(s.append("INBOX", io.BytesIO(M1)))
        when = datetime.datetime(2020, 1, 1, 8, 0, tzinfo=UTC)
        R(s.append("INBOX", io.BytesIO(M2), ["\\Seen", "$Foo"], when))
        R(s.append("INBOX", io.BytesIO(M2), ["\\Deleted"]))
        box = R(s.open("INBOX"))
        R(box.store([1], ["\\Answered", "\\Flagged", "Kw2"], "+"))
        self.assertEqual(R(box.expunge()), [3])
        R(s.append("INBOX", io.BytesIO(M1), ["\\Draft"]))
        R(box.sync())
        R(box.store([4], ["\\Flagged"], "+"))  # in place
        uidvalidity = box.uidvalidity
        box.close()
        out = self.dovecot([b"SELECT INBOX", b"FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)",
                            b"UID FETCH 1 BODY.PEEK[]"])
        self.assertIn(b"[UIDVALIDITY %d]" % uidvalidity, out)
        self.assertIn(b"[UIDNEXT 5]", out)
        got = [(int(u), set(f.decode().split()) - {"\\Recent"}, int(z), d)
               for u, f, z, d in FETCH_RE.findall(out)]
        self.assertEqual([g[:3] for g in got], [
            (1, {"\\Answered", "\\Flagged", "Kw2"}, len(M1)),
            (2, {"\\Seen", "$Foo"}, len(M2)),
            (4, {"\\Draft", "\\Flagged"}, len(M1))])
        self.assertEqual(got[1][3], b"01-Jan-2020 08:00:00 +0000")
        self.assertIn(b"{%d}\r\n%s" % (len(M1), M1), out)
        fetched = self.doveadm_fetch()
        self.assertEqual(re.findall(rb"uid: (\d+)", fetched), [b"1", b"2", b"4"])
        self.assertIn(b"flags: \\Answered \\Flagged Kw2\n", fetched)

    def test_we_read_dovecots(self) -> None:
        lit = b"{%d+}\r\n" % len(M1) + M1
        lit2 = b"{%d+}\r\n" % len(M2) + M2
        out = self.dovecot([b"CREATE Sub/Folder", b"APPEND INBOX " + lit,
                            b"APPEND INBOX (\\Seen $Foo) \"01-Jan-2020 10:00:00 +0200\" " + lit2,
                            b"APPEND INBOX " + lit2, b"SELECT INBOX",
                            b"STORE 1 +FLAGS (\\Answered \\Flagged \\Deleted \\Draft Kw2)",
                            b"STORE 3 +FLAGS (\\Deleted)", b"EXPUNGE", b"SUBSCRIBE Sub/Folder",
                            b"APPEND Sub/Folder " + lit2])
        self.assertIn(b"T9 OK", out)
        uidv = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))
        s = self.ours()
        box = R(s.open("INBOX"))
        self.addCleanup(box.close)
        self.assertEqual(box.uidvalidity, uidv)
        self.assertEqual([(m.uid, m.flags) for m in box.messages], [(2, {"\\Seen", "$Foo"})])
        self.assertEqual(box.uidnext, 4)
        self.assertEqual(box.messages[0].internaldate, datetime.datetime(2020, 1, 1, 8, tzinfo=UTC))
        self.assertEqual(R(box.message_file(2)).read().replace(b"\n", b"\r\n"), M2)
        self.assertEqual(R(s.subscriptions()), ["Sub/Folder"])
        self.assertEqual(R(s.status("Sub/Folder")).messages, 1)
        # and our change is Dovecot's next view
        R(box.store([2], ["\\Flagged"], "+"))
        R(s.append("INBOX", io.BytesIO(M1)))
        out = self.dovecot([b"SELECT INBOX", b"FETCH 1:* (UID FLAGS)"])
        self.assertIn(b"* 1 FETCH (UID 2 FLAGS (\\Flagged \\Seen $Foo))", out)
        self.assertIn(b"* 2 FETCH (UID 4 FLAGS (\\Recent))", out)

    def test_dovecots_changes_reach_our_open_view(self) -> None:
        s = self.ours()
        for m in (M1, M2, M2):
            R(s.append("INBOX", io.BytesIO(m)))
        box = R(s.open("INBOX"))
        self.addCleanup(box.close)
        lit = b"{%d+}\r\n" % len(M1) + M1
        # two sessions: Dovecot 2.3.19's own mbox skips an EXPUNGE pipelined
        # after a STORE that adds a new keyword (seen on a file it wrote too)
        self.dovecot([b"SELECT INBOX", b"STORE 1 +FLAGS (\\Answered $Dv)"])
        out = self.dovecot([b"SELECT INBOX", b"STORE 2 +FLAGS (\\Deleted)", b"EXPUNGE",
                            b"APPEND INBOX " + lit])
        self.assertIn(b"* 2 EXPUNGE", out)
        self.assertIn(b"T3 OK [APPENDUID %d 4]" % box.uidvalidity, out)
        result = R(box.sync())
        self.assertEqual((result.expunged, result.flags_changed, result.added), ([2], [1], [4]))
        self.assertEqual([(m.uid, m.flags) for m in box.messages],
                         [(1, {"\\Answered", "$Dv"}), (3, set()), (4, set())])
        self.assertIn("$Dv", box.keywords)
        self.assertGreater(box.highestmodseq, 1)
        self.assertEqual(R(box.message_file(4)).read().replace(b"\n", b"\r\n"), M1)

    def test_our_dotlock_makes_dovecot_wait(self) -> None:
        s = self.ours()
        R(s.append("INBOX", io.BytesIO(M1)))
        self.chown()
        lock = Dotlock(os.path.join(self.home, "inbox"))
        lock.acquire()
        lit = b"{%d+}\r\n" % len(M2) + M2
        proc, script = self.dovecot([b"APPEND INBOX " + lit], wait=False)
        self.addCleanup(proc.kill)
        proc.stdin.write(script)
        proc.stdin.flush()
        time.sleep(2)
        self.assertIsNone(proc.poll())  # still waiting for the lock
        with open(os.path.join(self.home, "inbox"), "rb") as f:
            self.assertNotIn(b"Subject: two", f.read())
        lock.release()
        out, _ = proc.communicate(timeout=60)
        self.assertIn(b"T0 OK [APPENDUID", out)
        box = R(s.open("INBOX"))
        self.addCleanup(box.close)
        self.assertEqual([m.uid for m in box.messages], [1, 2])

    @defer.inlineCallbacks
    def test_dovecot_saving_makes_us_wait(self):
        """Dovecot holds its write locks (dotlock + fcntl) while an APPEND's
        literal streams in: our APPEND gives up after mbox_lock_timeout, or
        waits (on the reactor) until Dovecot is done, then follows its UID."""
        s = self.ours()
        R(s.append("INBOX", io.BytesIO(M1)))
        big = (b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n") * 2000
        proc, _ = self.dovecot([], wait=False)
        self.addCleanup(proc.kill)
        proc.stdin.write(b"T0 APPEND INBOX {%d}\r\n" % len(big))
        proc.stdin.flush()
        self.assertTrue(proc.stdout.readline().startswith(b"* PREAUTH"))
        self.assertTrue(proc.stdout.readline().startswith(b"+ "))
        proc.stdin.write(big[:len(big) // 2])
        proc.stdin.flush()
        lock = os.path.join(self.home, "inbox.lock")
        deadline = time.monotonic() + 20
        while not os.path.exists(lock) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(os.path.exists(lock), "Dovecot took no dotlock")
        waiting = self.ours()
        R(waiting.configure({"mbox_lock_timeout": "1 secs"}))
        start = time.monotonic()
        try:
            yield waiting.append("INBOX", io.BytesIO(M2))
        except StorageError as e:
            self.assertIn("Timeout", str(e))
        else:
            self.fail("no timeout")
        self.assertGreater(time.monotonic() - start, 0.9)

        def finish() -> None:
            proc.stdin.write(big[len(big) // 2:] + b"\r\nZ LOGOUT\r\n")
            proc.stdin.flush()

        call = reactor.callLater(1.5, finish)
        self.addCleanup(lambda: call.active() and call.cancel())
        start = time.monotonic()
        d = self.ours().append("INBOX", io.BytesIO(M2))
        self.assertFalse(d.called)
        _uidvalidity, uid = yield d
        self.assertGreater(time.monotonic() - start, 1.0)
        out, _ = proc.communicate(timeout=60)
        self.assertIn(b"T0 OK [APPENDUID", out)
        self.assertEqual(uid, 3)
        box = R(self.ours().open("INBOX"))
        self.addCleanup(box.close)
        self.assertEqual([m.uid for m in box.messages], [1, 2, 3])
        self.assertEqual(box.messages[1].size, len(big))


class MboxSideBySide(dovecot_side.SideBySide):
    """SideBySide with Dovecot and pydovecot each on an mbox of their own."""

    def _setup(self, messages: list[bytes]) -> None:
        os.chmod(self.dir, 0o755)
        self.dhome = os.path.join(self.dir, "dovecot")
        os.makedirs(os.path.join(self.dhome, "mail"))
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
mail_location = mbox:{self.dhome}/mail:INBOX={self.dhome}/inbox
mail_uid = nobody
mail_gid = nogroup
first_valid_uid = 1
first_valid_gid = 1
ssl = no
namespace inbox {{
  inbox = yes
  separator = /
}}
""")
        for path in (self.dhome, os.path.join(self.dhome, "mail")):
            shutil.chown(path, "nobody", "nogroup")
        appends = [b"A%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(m), m) for i, m in enumerate(messages)]
        got = self._run_dovecot(b"".join(appends), [b"A%d" % i for i in range(len(messages))])
        assert all(got[b"A%d" % i][-1] == b"A%d OK" % i for i in range(len(messages))), got
        ours = os.path.join(self.dir, "ours")
        self.storage = MboxStorage("alice", os.path.join(ours, "mail"),
                                   inbox=os.path.join(ours, "inbox"), home=ours)
        for m in messages:
            R(self.storage.append("INBOX", io.BytesIO(m)))


class SideBySideTests(unittest.TestCase):
    timeout = 120

    def test_imap_flows_answer_as_dovecot_on_mbox(self) -> None:
        side = MboxSideBySide([M1, M2, b"Subject: three\r\nCc: c@example.org\r\n\r\nthree\r\n",
                               b"Subject: four\r\n\r\nno line end"])
        self.addCleanup(side.cleanup)
        commands = [
            b"FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER] BODYSTRUCTURE ENVELOPE)",
            b"STORE 1 +FLAGS (\\Seen $Work)", b"STORE 2 +FLAGS (\\Deleted \\Draft)",
            b"SEARCH KEYWORD $Work", b"SEARCH DRAFT", b"FETCH 2 BODY.PEEK[TEXT]",
            b"STORE 2 +FLAGS.SILENT (\\Seen)",
            b"EXPUNGE", b"FETCH 1:* (UID FLAGS)", b"UID SEARCH ALL",
            b"FETCH 3 (RFC822.SIZE BODY.PEEK[])"]
        theirs, ours = side.both(commands)
        self.maxDiff = None
        self.assertEqual(_flag_order(ours), _flag_order(theirs))
        again = side.both([b"FETCH 1:* (UID FLAGS)"])
        self.assertEqual(_flag_order(again[1]), _flag_order(again[0]))


def _flag_order(answers: list[list[bytes]]) -> list[list[bytes]]:
    """Flag lists sorted (the order is the protocol layer's, not storage)."""
    def fix(m: re.Match) -> bytes:
        return b"FLAGS (" + b" ".join(sorted(m.group(1).split())) + b")"
    return [[re.sub(rb"FLAGS \(([^)]*)\)", fix, r) for r in a] for a in answers]


IMPORT_CHILD = r"""
import io, os, sys, tempfile, shutil
import pydovecot.mailproc.main as main
from twisted.internet import reactor, defer
from pydovecot.mailproc.rehearsal import rehearse
from pydovecot.storage import open_storage
from pydovecot.storage.search import SearchProgram

main.preload_codecs()

class Guard:
    def find_spec(self, name, path=None, target=None):
        raise ImportError(f"imported after the rehearsal: {name}")

@defer.inlineCallbacks
def go():
    yield rehearse({})
    root = tempfile.mkdtemp()
    sys.meta_path.insert(0, Guard())
    s = open_storage("u", f"mbox:{root}/mail:INBOX={root}/inbox", root)
    yield s.configure({"mbox_lock_timeout": "10 secs", "mbox_write_locks": "fcntl dotlock"})
    msg = b"Return-Path: <a@b>\r\nSubject: x\r\nFrom: A <a@b>\r\n\r\nFrom here\r\n"
    yield s.append("INBOX", io.BytesIO(msg), ["\\Seen", "$K"])
    yield s.create("Sub/F")
    yield s.subscribe("Sub/F")
    box = yield s.open("INBOX")
    yield box.store([1], ["\\Flagged"], "+")
    yield box.fetch_data(1, ["envelope", "bodystructure", "preview", "header:subject"])
    yield s.copy(box, [1], "Sub/F")
    yield s.set_attribute("Sub/F", "/private/comment", b"c")
    yield box.store([1], ["\\Deleted"], "+")
    yield box.expunge()
    yield s.rename("Sub/F", "G")
    yield s.rename("INBOX", "Old")
    yield s.status("G")
    yield s.list_mailboxes()
    yield s.delete("G")
    box.close()
    sys.meta_path.remove(sys.meta_path[0])
    shutil.rmtree(root)
    print("DONE")

def run():
    d = go()
    d.addErrback(lambda f: print("FAILED", f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())

reactor.callWhenRunning(run)
reactor.run()
"""


class ImportsTests(unittest.TestCase):
    def test_no_import_after_the_rehearsal(self) -> None:
        """What the mail process does on mbox imports nothing new (after the
        privilege drop it could not)."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run([sys.executable, "-c", IMPORT_CHILD], capture_output=True,
                              env=dict(os.environ, PYTHONPATH=root), timeout=120, cwd=root)
        out = proc.stdout.decode() + proc.stderr.decode()
        self.assertNotIn("imported after the rehearsal", out)
        self.assertNotIn("FAILED", out)
        self.assertIn("DONE", out)


# -- through the real master ----------------------------------------------


class MasterDeliveryTests(unittest.TestCase):
    timeout = 120

    def test_lmtp_into_spool_and_imap(self) -> None:
        if os.geteuid() != 0 and harness.IN_CI:
            self.fail("needs root")
        kwargs = harness.privileged()
        master = harness.Master(extra_config="", **kwargs)
        self.addCleanup(master.cleanup)
        spool = os.path.join(master.dir, "spool")
        os.makedirs(spool)
        with open(master.config_path) as f:
            text = f.read().replace("mail_location = maildir:~/Maildir",
                                    f"mail_location = mbox:~/mail:INBOX={spool}/%Ln")
        with open(master.config_path, "w") as f:
            f.write(text)
        if kwargs:
            shutil.chown(spool, "pdvmail", "pdvmail")
        master.start()
        from tests.test_isolation_deliver import lmtp_session
        for subject in ("first", "second"):
            rcpt, data = lmtp_session(master, [b"alice@example.org"], subject)
            self.assertTrue(data and data[0].startswith(b"250"), (rcpt, data, master.log()[-2000:]))
        with open(os.path.join(spool, "alice"), "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"From sender@example.org  "), data[:200])
        self.assertIn(b"X-UID: 2\n", data)
        imap = harness.LineClient(master.ports["imap"], greeting=True)
        self.addCleanup(imap.close)
        imap.tagged(b"LOGIN alice secret")
        sel = b"".join(imap.tagged(b"SELECT INBOX"))
        self.assertIn(b"* 2 EXISTS", sel)
        got = b"".join(imap.tagged(b"FETCH 2 (FLAGS BODY[HEADER.FIELDS (SUBJECT)])"))
        self.assertIn(b"Subject: second", got)
        got = b"".join(imap.tagged(b"STORE 1 +FLAGS (\\Deleted)"))
        got = b"".join(imap.tagged(b"EXPUNGE"))
        self.assertIn(b"* 1 EXPUNGE", got)
        with open(os.path.join(spool, "alice"), "rb") as f:
            data = f.read()
        self.assertNotIn(b"Subject: first", data)
        self.assertIn(b"X-UID: 2\n", data)
        self.assertIn(b"X-IMAPbase: ", data)


class QuotaOnMboxTests(unittest.TestCase):
    """Quota is counted on Maildir only: the quota plugin with an mbox
    mail_location is refused at start (usage would not be enforced), and
    the mbox storage answers as a storage without quota."""

    def test_config_refuses_quota_with_mbox(self):
        from pydovecot.config import ConfigError, load_config

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("mail_location = mbox:~/mail:INBOX=/var/mail/%u\n"
                    "mail_plugins = $mail_plugins quota\n"
                    "plugin {\n  quota = count:User quota\n  quota_vsizes = yes\n"
                    "  quota_rule = *:storage=1G\n}\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertIn("mbox", str(caught.exception))

    def test_no_quota_roots(self):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        storage = open_storage("alice", f"mbox:{d}/mail:INBOX={d}/inbox", d)
        self.assertEqual(self.successResultOf(storage.quota_roots("INBOX")), [])
        self.assertEqual(self.successResultOf(storage.recalc_quota()), [])
        self.successResultOf(storage.check_quota("INBOX", 10**9))
        self.failureResultOf(storage.get_quota("User quota"), StorageError)
