"""Maildir++ storage laid out as Dovecot lays it out.

INBOX is the root (``cur/ new/ tmp/``); folder ``A/B`` is ``.A.B`` with its
own ``cur/ new/ tmp/`` and ``maildirfolder``.  Flags live in file names
(``:2,`` + sorted system letters + keyword letters), UIDs in
``dovecot-uidlist``, keyword letters in ``dovecot-keywords``.

Runs in a mail process that already has the user's uid: it trusts its
caller, validates every mailbox name (:mod:`pydovecot.storage.names`) and
keeps every path inside the root.  It trusts the directory contents only
as data: unknown files, bad names and bad uidlist lines are skipped, and a
lost uidlist is rebuilt.  One :class:`MaildirStorage` per user per process
keeps a per-mailbox state (:class:`_Box`, by UID and base name) shared by
every session's view.

The state is persisted in the index (:mod:`pydovecot.storage.index`): a
warm open reads it instead of the directories when their mtimes match.
Every change runs in a transaction (:meth:`_Box.tx`) under the index's
flock: catch up with what other processes logged, rescan if the
directories changed behind the index (another server, a shell, a writer
killed mid-change), do the file operation, log it with a fresh modseq.
Modseqs are therefore global across pydovecot processes; the file name
stays the truth for flags, the uidlist for UIDs (its dotlock is taken
inside the index lock, never the other way round).
"""

from __future__ import annotations

import bisect
import datetime
import errno
import itertools
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

from twisted.logger import Logger
from zope.interface import implementer

from pydovecot.log import sanitize
from pydovecot.storage import attributes as A
from pydovecot.storage import names as N
from pydovecot.storage import quota as Q
from pydovecot.storage import search as S
from pydovecot.storage.deferred import answers
from pydovecot.storage.index import (
    EXPUNGE_KEEP,
    CacheFile,
    CacheLimits,
    IndexRecord,
    IndexState,
    MailboxIndex,
    no_gc,
    settle,
)
from pydovecot.storage.interfaces import (
    AttributeTooLarge,
    IMailbox,
    IMailStorage,
    MailboxExists,
    MailboxInfo,
    MailboxNameError,
    MailboxNotFound,
    MailboxStatus,
    MessageInfo,
    QuotaResource,
    StorageError,
    SyncResult,
)
from pydovecot.storage.keywords import Keywords
from pydovecot.storage.subscriptions import Subscriptions
from pydovecot.storage.uidlist import (
    Dotlock,
    UidList,
    UidRecord,
    append_records,
    base_name,
    read_uidlist,
    read_uidlist_header,
    write_atomic,
)

log = Logger()

UIDLIST = "dovecot-uidlist"
UIDVALIDITY = "dovecot-uidvalidity"
TRASH_PREFIX = "..DOVECOT-TRASHED"
CHUNK = 65536

FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}
_CANON = {f.lower(): f for f in FLAG_LETTERS}

_counter = itertools.count(1)


def _host() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def unique_name() -> str:
    """A new Maildir base name: ``<secs>.M<usecs>P<pid>Q<n>.<host>``."""
    now = time.time()
    secs = int(now)
    usecs = int((now - secs) * 1_000_000)
    return f"{secs}.M{usecs}P{os.getpid()}Q{next(_counter)}.{_host()}"


def name_sizes(base: str) -> tuple[int | None, int | None]:
    """``S=`` (file size) and ``W=`` (RFC822.SIZE) from a base name."""
    size = vsize = None
    for part in base.split(",")[1:]:
        if part.startswith("S=") and part[2:].isdigit():
            size = int(part[2:])
        elif part.startswith("W=") and part[2:].isdigit():
            vsize = int(part[2:])
    return size, vsize


def crlf_size(f: BinaryIO) -> int:
    """RFC822.SIZE of a stream: every LF not after CR counts 2."""
    total = 0
    prev = b""
    while chunk := f.read(CHUNK):
        bare = chunk.count(b"\n") - chunk.count(b"\r\n")
        if prev == b"\r" and chunk.startswith(b"\n"):
            bare -= 1
        total += len(chunk) + bare
        prev = chunk[-1:]
    return total


def copy_to_lf(src: BinaryIO, out: BinaryIO) -> tuple[int, int]:
    """Copy with CRLF → LF (as Dovecot stores mail); (stored size, vsize)."""
    size = vsize = 0
    held_cr = False
    while chunk := src.read(CHUNK):
        if held_cr:
            chunk = b"\r" + chunk
        held_cr = chunk.endswith(b"\r")
        if held_cr:
            chunk = chunk[:-1]
        data = chunk.replace(b"\r\n", b"\n")
        out.write(data)
        size += len(data)
        vsize += len(data) + data.count(b"\n") - data.count(b"\r\n")
    if held_cr:
        out.write(b"\r")
        size += 1
        vsize += 1
    return size, vsize


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def canon_flag(flag: str) -> str:
    return _CANON.get(flag.lower(), flag)


_Rec = IndexRecord


def _name_time(base: str) -> float | None:
    """The creation time in a Maildir base name (``<secs>.M<usecs>…``)."""
    secs, _, rest = base.partition(".")
    if not secs.isdigit():
        return None
    if rest.startswith("M"):
        usecs = rest[1:].split("P", 1)[0]
        if usecs.isdigit():
            return int(secs) + int(usecs) / 1_000_000
    return float(secs)


def _recent_margin(stamp: tuple[int, int]) -> int:
    """How long a directory mtime may still hide a later change: file
    systems with whole-second times need 2 s; others stamp with the
    kernel's coarse clock (a jiffy, at most 10 ms) — 20 ms is safe."""
    return 2_000_000_000 if all(m % 1_000_000_000 == 0 for m in stamp) else 20_000_000


def _is_recent(stamp: tuple[int, int]) -> bool:
    """Changes within the file system's timestamp granularity of ``stamp``
    could still be invisible: such a stamp is not trusted."""
    return time.time_ns() - max(stamp) < _recent_margin(stamp)


#: compact the change log into a new snapshot past this size
LOG_COMPACT_BYTES = 1 << 20
#: events kept in memory for views' syncs
EVENTS_KEEP = 20000

@contextmanager
def _entered(cm) -> Iterator[None]:
    """Exit an already entered context manager when the block ends."""
    try:
        yield
    except BaseException as e:
        if not cm.__exit__(type(e), e, e.__traceback__):
            raise
    else:
        cm.__exit__(None, None, None)


_Event = tuple[int, str, int, int, "_Rec | None"]  # (modseq, kind, uid, origin, rec)


def _encode_cached(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return {"$b": bytes(value).decode("latin-1")}
    return value


def _decode_cached(value: object) -> object:
    if isinstance(value, dict) and len(value) == 1 and "$b" in value:
        return str(value["$b"]).encode("latin-1")
    return value


class _Box:
    """The process-wide state of one mailbox (shared by its views), kept in
    step with the disk and with other processes through the index."""

    def __init__(self, storage: MaildirStorage, name: str, path: str):
        self.storage = storage
        self.name = name
        self.path = path
        self.uidlist_path = os.path.join(path, UIDLIST)
        self.keywords = Keywords(path)
        self.index = MailboxIndex(path)
        self.cache = CacheFile(self.index.cache_path, storage.cache_limits)
        self.by_base: dict[str, _Rec] = {}
        self.by_uid: dict[int, _Rec] = {}
        self.uids: list[int] = []
        self.uidvalidity = 0
        self.nextuid = 1
        self.guid = ""
        self._ul: tuple[tuple[int, int, int], UidList, dict[str, UidRecord]] | None = None
        self.dir_stamp: tuple[int, int] | None = None
        self.dir_recent = True
        self.dangling = False  # the index log ends inside a transaction
        self.persisted: tuple[tuple[int, int] | None, bool] = (None, False)
        self.modseq = 1
        self.ceiling = 0
        self.expunged: list[tuple[int, int]] = []  # (modseq, uid), the QRESYNC log
        self.vanished_floor = 0
        self.log: list[_Event] = []
        #: UIDs no view has claimed \\Recent for.  Across processes the
        #: claim is the move from new/ to cur/ (a read-write view moves a
        #: message out of new/ when it takes \\Recent; nothing else moves an
        #: unclaimed one: STORE needs a view, which claimed first), so a
        #: message seen leaving new/ is no longer pending anywhere.
        self.pending_recent: set[int] = set()
        self.gone: set[str] = set()  # base names confirmed missing
        self.views: list[MaildirMailbox] = []
        self.loaded = False
        self._tx_ops: list[list] | None = None

    # -- modseqs, events, index ops ------------------------------------------

    def _alloc(self) -> int:
        """The next modseq (callers hold the index lock, so it is global)."""
        self.modseq += 1
        if self.modseq > self.ceiling:
            try:
                self.ceiling = self.index.raise_ceiling(self.modseq)
            except OSError:  # mailbox deleted under us
                pass
        return self.modseq

    def _event(self, modseq: int, kind: str, uid: int, origin: int = 0, rec: _Rec | None = None) -> None:
        self.log.append((modseq, kind, uid, origin, rec))
        if len(self.log) > EVENTS_KEEP:
            floor = min((v.seen_modseq for v in self.views), default=self.modseq)
            cut = bisect.bisect_right(self.log, floor, key=lambda e: e[0])
            del self.log[:cut]

    def _op(self, op: list) -> None:
        if self._tx_ops is not None:
            self._tx_ops.append(op)

    def _bump(self, kind: str, uid: int, origin: int = 0) -> int:
        modseq = self._alloc()
        self._event(modseq, kind, uid, origin)
        return modseq

    def _drop(self, rec: _Rec, origin: int = 0, modseq: int | None = None) -> None:
        del self.by_base[rec.base]
        del self.by_uid[rec.uid]
        i = bisect.bisect_left(self.uids, rec.uid)
        if i < len(self.uids) and self.uids[i] == rec.uid:
            del self.uids[i]
        self.pending_recent.discard(rec.uid)
        self.gone.add(rec.base)
        if modseq is None:
            modseq = self._alloc()
            self._op(["x", rec.uid, modseq])
        self.expunged.append((modseq, rec.uid))
        if len(self.expunged) > 2 * EXPUNGE_KEEP:
            cut = len(self.expunged) - EXPUNGE_KEEP
            self.vanished_floor = max(self.vanished_floor, self.expunged[cut - 1][0])
            del self.expunged[:cut]
        self._event(modseq, "x", rec.uid, origin, rec)

    def _put(self, rec: _Rec) -> None:
        self.by_base[rec.base] = rec
        self.by_uid[rec.uid] = rec
        if not self.uids or rec.uid > self.uids[-1]:
            self.uids.append(rec.uid)
        else:
            bisect.insort(self.uids, rec.uid)

    def _insert(self, recs: list[_Rec], origin: int = 0, shared: bool = False) -> None:
        """Add new messages, each with a fresh modseq (one for all when
        ``shared``, as for a rescan)."""
        modseq = self._alloc() if shared and recs else 0
        for rec in sorted(recs, key=lambda r: r.uid):
            if rec.uid in self.by_uid or rec.base in self.by_base:
                continue
            rec.modseq = modseq or self._alloc()
            self._put(rec)
            self._op(["a", rec.uid, rec.modseq, rec.sub, rec.fname, rec.size, rec.mtime, rec.savedate])
            self._event(rec.modseq, "a", rec.uid, origin)

    def _renamed(self, rec: _Rec, flags_changed: bool, origin: int = 0) -> None:
        """Record a rename (a new modseq if the flags changed)."""
        if flags_changed:
            rec.modseq = self._alloc()
            self._event(rec.modseq, "f", rec.uid, origin)
        self._op(["f", rec.uid, rec.modseq, rec.sub, rec.fname])

    def _drop_all(self) -> None:
        for rec in list(self.by_uid.values()):
            self._drop(rec)

    # -- the index -------------------------------------------------------------

    def _state(self) -> IndexState:
        stamp, confirmed = self.persisted
        return IndexState(self.uidvalidity, self.nextuid, self.modseq, stamp, confirmed,
                          self.by_uid, list(self.expunged), self.vanished_floor, True)

    def _from_state(self, state: IndexState) -> None:
        """Fill an empty box from a loaded index (adopting its records)."""
        self.by_uid = state.records
        self.by_base = {r.base: r for r in state.records.values()}
        self.uids = sorted(self.by_uid)
        self.pending_recent = {r.uid for r in state.records.values() if r.sub == "new"}
        self.uidvalidity = self.uidvalidity or state.uidvalidity
        self.nextuid = max(self.nextuid, state.nextuid)
        self.modseq = max(self.modseq, state.modseq)
        self.expunged = list(state.expunged)
        self.vanished_floor = state.vanished_floor
        self.dir_stamp = state.stamp
        self.dir_recent = not state.confirmed
        self.dangling = not state.clean
        self.persisted = (state.stamp, state.confirmed and state.clean)

    def _open(self) -> None:
        """First load: the index if it fits the uidlist, else a rebuild."""
        hdr = read_uidlist_header(self.uidlist_path)
        self.ceiling = self.index.read_ceiling()
        try:
            state = self.index.load()
        except OSError:
            state = None
        if state is not None and hdr is not None and state.uidvalidity != hdr[0]:
            state = None  # a different mailbox now: rebuild
        if hdr is not None:
            self.uidvalidity, self.nextuid = hdr
        if state is not None:
            self._from_state(state)
            if hdr is not None and hdr[1] > state.nextuid:
                self.dir_recent = True  # someone assigned UIDs we don't know of
        else:
            # modseqs restart above anything ever handed out: above the
            # ceiling file, and — should that be gone too (``rm
            # dovecot.index*``) — above the clock in microseconds, which no
            # earlier modseq can have passed at one change per microsecond.
            # Expunges before now are unknown (vanished_since over-reports).
            self.modseq = max(self.modseq, self.ceiling, time.time_ns() // 1000)
            self.vanished_floor = self.modseq
            self.dir_stamp = None
        self.loaded = True

    def _apply_ops(self, ops: list[list]) -> None:
        """Another process's changes, from the index log."""
        for op in ops:
            kind = op[0]
            if kind in ("a", "f") and (op[3] not in ("new", "cur") or "/" in op[4]):
                raise ValueError("bad file name in the index log")
            if kind == "a":
                _, uid, modseq, sub, fname, size, mtime, savedate = op
                self.modseq = max(self.modseq, modseq)
                self.nextuid = max(self.nextuid, uid + 1)
                b = base_name(fname)
                if uid in self.by_uid or b in self.by_base:
                    continue
                rec = _Rec(uid, b, sub, fname, size, mtime, modseq, savedate)
                self._put(rec)
                if sub == "new":
                    self.pending_recent.add(uid)
                self._event(modseq, "a", uid)
            elif kind == "f":
                _, uid, modseq, sub, fname = op
                self.modseq = max(self.modseq, modseq)
                rec = self.by_uid.get(uid)
                if rec is not None and base_name(fname) == rec.base:
                    if sub != "new":
                        self.pending_recent.discard(uid)  # claimed elsewhere
                    rec.sub, rec.fname = sub, fname
                    if modseq > rec.modseq:
                        rec.modseq = modseq
                        self._event(modseq, "f", uid)
            elif kind == "x":
                _, uid, modseq = op
                self.modseq = max(self.modseq, modseq)
                rec = self.by_uid.get(uid)
                if rec is not None:
                    self._drop(rec, modseq=modseq)
                    self.gone.discard(rec.base)
            elif kind == "b":
                self.dangling = True
            elif kind == "e":
                _, new_ns, cur_ns, confirmed, uidvalidity, nextuid, modseq = op
                if self.uidvalidity and uidvalidity != self.uidvalidity:
                    self.dir_recent = True
                    continue
                self.dir_stamp = (new_ns, cur_ns)
                self.dir_recent = not confirmed
                self.persisted = (self.dir_stamp, bool(confirmed))
                self.nextuid = max(self.nextuid, nextuid)
                self.modseq = max(self.modseq, modseq)
                self.dangling = False
            elif kind == "v":
                self._drop_all()
                self.uidvalidity = op[1]

    def _reconcile(self, state: IndexState) -> None:
        """Another process compacted the index: adopt its full state."""
        if self.uidvalidity and state.uidvalidity != self.uidvalidity:
            self.dir_recent = True  # let the rescan sort it out against the uidlist
            return
        modseq = max(state.modseq, self.modseq + 1)
        for uid in [u for u in self.by_uid if u not in state.records]:
            self._drop(self.by_uid[uid], modseq=modseq)
        for uid, r in state.records.items():
            rec = self.by_uid.get(uid)
            if rec is None:
                b = base_name(r.fname)
                if b in self.by_base:
                    continue
                rec = _Rec(uid, b, r.sub, r.fname, r.size, r.mtime, r.modseq, r.savedate)
                self._put(rec)
                if rec.sub == "new":
                    self.pending_recent.add(uid)
                self._event(modseq, "a", uid)
            elif rec.fname != r.fname or rec.sub != r.sub or r.modseq > rec.modseq:
                if r.sub != "new":
                    self.pending_recent.discard(uid)
                rec.sub, rec.fname = r.sub, r.fname
                rec.modseq = max(rec.modseq, r.modseq)
                self._event(modseq, "f", uid)
        self.modseq = modseq
        self.nextuid = max(self.nextuid, state.nextuid)
        self.expunged = sorted(set(self.expunged) | set(state.expunged))
        self.vanished_floor = max(self.vanished_floor, state.vanished_floor)
        self.dir_stamp = state.stamp
        self.dir_recent = not state.confirmed
        self.dangling = not state.clean
        self.persisted = (state.stamp, state.confirmed and state.clean)

    def _catch_up(self) -> None:
        """Apply what other processes logged (caller holds the lock)."""
        ops = self.index.read_new()
        if ops is not None:
            try:
                self._apply_ops(ops)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                log.warn("{path}: bad index log, rescanning: {err}", path=self.index.log_path, err=e)
                self.index.log_ino = 0  # rewritten at the end of this transaction
                self.dangling = True
            return
        try:
            state = self.index.load()
        except OSError:
            state = None
        if state is None:
            self.index.log_ino = 0  # missing or corrupt: our next write rewrites it
            return
        self._reconcile(state)

    def _log_current(self) -> bool:
        ident = self.index.log_identity()
        if ident is None:
            return self.index.log_ino == 0
        return ident == self.index.log_stamp

    @contextmanager
    def tx(self, scan: bool = False) -> Iterator[None]:
        """A change under the index lock: catch up with other processes,
        rescan if the directories changed behind the index, then log the
        changes made inside (with the resulting directory mtimes)."""
        if self._tx_ops is not None:  # nested
            if scan:
                self._rescan()
            yield
            return
        try:
            lock = self.index.locked()
            lock.__enter__()
        except FileNotFoundError:
            if self.deleted():
                raise MailboxNotFound(f"Mailbox was deleted: {self.name}") from None
            raise
        with _entered(lock):
            self._catch_up()
            self._tx_ops = [["b"]]
            try:
                pre = self._stat_dirs()
                if pre is not None and (scan or self.dangling or pre != self.dir_stamp):
                    self._rescan()
                yield
            finally:
                ops, self._tx_ops = self._tx_ops, None
                self._commit(ops)

    def deleted(self) -> bool:
        """The mailbox's directory is gone (deleted or renamed away by
        another session, process or a shell)."""
        return not os.path.isdir(os.path.join(self.path, "cur"))

    def _commit(self, ops: list[list]) -> None:
        post = self._stat_dirs()
        if post is None:
            return  # the mailbox is gone
        confirmed = not _is_recent(post)
        self.dir_stamp, self.dir_recent = post, not confirmed
        if len(ops) == 1 and self.persisted == (post, confirmed) and not self.dangling:
            return
        ops.append(["e", post[0], post[1], confirmed, self.uidvalidity, self.nextuid, self.modseq])
        self.persisted = (post, confirmed)
        self.dangling = False
        try:
            if (self.index.log_ino == 0 or len(ops) > 2000
                    or self.index.log_offset > LOG_COMPACT_BYTES):
                state = self._state()
                with no_gc():
                    self.index.write_snapshot(state)
                if self.cache.entries > 2 * len(self.by_uid) + 1000:
                    self.cache.rewrite(self.uidvalidity, set(self.by_uid))
                self.vanished_floor = max(self.vanished_floor, state.vanished_floor)
                self.expunged = list(state.expunged)
            else:
                self.index.append(ops)
        except (OSError, RuntimeError) as e:  # the index is a cache: mail is safe
            log.warn("{path}: index not written: {err}", path=self.index.path, err=e)
            self.index.log_ino = 0

    # -- disk scanning ------------------------------------------------

    def _stat_dirs(self) -> tuple[int, int] | None:
        try:
            return (
                os.stat(os.path.join(self.path, "new")).st_mtime_ns,
                os.stat(os.path.join(self.path, "cur")).st_mtime_ns,
            )
        except FileNotFoundError:
            return None

    def refresh(self, force: bool = False) -> None:
        """Bring the state up to date with the disk and other processes:
        a few stat() calls when nothing changed."""
        stamp = self._stat_dirs()
        if stamp is None:  # deleted or renamed away
            self._drop_all()
            self.dir_stamp = None
            return
        self.keywords.load()
        if not self.loaded:
            with no_gc():
                self._open()
            settle(len(self.by_uid))
        if (not force and stamp == self.dir_stamp and not self.dir_recent and not self.dangling
                and self._log_current()):
            return
        with self.tx(scan=force or self.dir_recent or self.dangling):
            pass

    def _list(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for sub in ("new", "cur"):
            try:
                found[sub] = set(os.listdir(os.path.join(self.path, sub)))
            except FileNotFoundError:
                found[sub] = set()
        return found

    def _rescan(self) -> None:
        """Compare the directories with the state (under the lock); only
        the names that differ are looked at."""
        with no_gc():
            self._rescan_nogc()

    def _rescan_nogc(self) -> None:
        present = self._list()
        known: dict[str, set[str]] = {"new": set(), "cur": set()}
        k_new, k_cur = known["new"], known["cur"]
        for r in self.by_uid.values():
            (k_new if r.sub == "new" else k_cur).add(r.fname)
        if present == known:
            return
        appeared: dict[str, tuple[str, str]] = {}
        vanished: set[str] = set()
        for sub in ("new", "cur"):
            for fname in present[sub] - known[sub]:
                if not fname.startswith("."):
                    appeared[fname.split(":", 1)[0]] = (sub, fname)
            vanished.update(f.split(":", 1)[0] for f in known[sub] - present[sub])
        missing = [b for b in vanished if b not in appeared and b in self.by_base]
        if missing:  # a concurrent rename may hide a file from one listing
            again = self._list()
            names = {f.split(":", 1)[0]: (sub, f) for sub in again for f in again[sub] - known[sub]}
            for b in missing:
                if b in names:
                    appeared[b] = names[b]
        for b in missing:
            if b not in appeared:
                self._drop(self.by_base[b])
        fresh: list[tuple[str, str, str]] = []
        for b, (sub, fname) in appeared.items():
            rec = self.by_base.get(b)
            if rec is None:
                fresh.append((b, sub, fname))
            elif rec.fname != fname or rec.sub != sub:
                old_info = rec.info
                if sub != "new":
                    self.pending_recent.discard(rec.uid)
                rec.sub, rec.fname = sub, fname
                self._renamed(rec, rec.info != old_info)
        if fresh:
            self._add_found(fresh)

    def _read_ul(self) -> tuple[UidList, dict[str, UidRecord]] | None:
        """The uidlist and its records by base name, parsed again only when
        the file changed (100k records take 0.3 s to parse)."""
        try:
            st = os.stat(self.uidlist_path)
        except FileNotFoundError:
            self._ul = None
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._ul is not None and self._ul[0] == stamp:
            return self._ul[1], self._ul[2]
        ul = read_uidlist(self.uidlist_path)
        if ul is None:
            self._ul = None
            return None
        known = {r.basename: r for r in ul.records}
        self._ul = (stamp, ul, known)
        return ul, known

    def _load_uidlist(self) -> UidList | None:
        got = self._read_ul()
        if got is None:
            return None
        ul = got[0]
        if self.uidvalidity and ul.uidvalidity != self.uidvalidity:
            log.warn("{path}: UIDVALIDITY changed ({old} -> {new})", path=self.uidlist_path,
                     old=self.uidvalidity, new=ul.uidvalidity)
            self._drop_all()
            self._op(["v", ul.uidvalidity])
        self.uidvalidity, self.guid = ul.uidvalidity, ul.guid
        self.nextuid = max(self.nextuid, ul.nextuid)
        return ul

    def _add_found(self, fresh: list[tuple[str, str, str]]) -> None:
        known = self._read_ul()[1] if self._load_uidlist() is not None else {}
        known = dict(known)  # assign() below adds to the cached one
        # new UIDs in the order the files were made (their names say when)
        fresh.sort(key=lambda f: (_name_time(f[0]) or 0.0, f[0]))
        need = [b for b, _, _ in fresh if b not in known]
        uids = self.assign(need) if need else {}
        recs = []
        for b, sub, fname in fresh:
            urec = known.get(b)
            uid = urec.uid if urec else uids.get(b)
            if uid is None or uid in self.by_uid:
                continue
            path = os.path.join(self.path, sub, fname)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            _, vsize = name_sizes(b)
            if vsize is None and urec and urec.ext.get("W", "").isdigit():
                vsize = int(urec.ext["W"])
            if vsize is None:
                try:
                    with open(path, "rb") as f:
                        vsize = crlf_size(f)
                except FileNotFoundError:
                    continue
            saved = _name_time(b) or st.st_mtime
            recs.append(_Rec(uid, b, sub, fname, vsize, st.st_mtime, 0, saved))
            if sub == "new":
                self.pending_recent.add(uid)
        self._insert(recs, shared=True)

    def assign(self, bases: list[str], ext: dict[str, dict[str, str]] | None = None) -> dict[str, int]:
        """Give UIDs to ``bases`` under the uidlist lock; return them.  New
        records are appended (as Dovecot does); the file is rewritten when
        it is new, lost, torn, or holds many records of expunged files."""
        result: dict[str, int] = {}
        with Dotlock(self.uidlist_path):
            got = self._read_ul()
            if got is None:
                if self.uidvalidity:  # lost: rewrite what we know
                    ul = UidList(self.uidvalidity, self.nextuid, self.guid or uuid.uuid4().hex)
                    ul.records = [UidRecord(r.uid, r.base) for r in
                                  sorted(self.by_uid.values(), key=lambda r: r.uid)]
                else:
                    ul = UidList.new(self.storage.next_uidvalidity())
                known = {r.basename: r for r in ul.records}
            else:
                ul, known = got
            added: list[UidRecord] = []
            for b in bases:
                if b in known:
                    result[b] = known[b].uid
                    continue
                rec = UidRecord(ul.nextuid, b, dict((ext or {}).get(b, {})))
                ul.nextuid += 1
                ul.records.append(rec)
                known[b] = rec
                added.append(rec)
                result[b] = rec.uid
            prune = len(self.gone) > max(100, len(ul.records) // 20)
            try:
                if got is None or prune or (added and not append_records(self.uidlist_path, added)):
                    if self.gone:
                        ul.records = [r for r in ul.records if r.basename not in self.gone]
                        known = {r.basename: r for r in ul.records}
                    write_atomic(self.uidlist_path, ul.serialize())
                    self.gone.clear()
            except BaseException:
                self._ul = None
                raise
            if self.uidvalidity and ul.uidvalidity != self.uidvalidity:
                self._drop_all()
                self._op(["v", ul.uidvalidity])
            self.uidvalidity, self.guid = ul.uidvalidity, ul.guid
            self.nextuid = max(self.nextuid, ul.nextuid)
            st = os.stat(self.uidlist_path)
            self._ul = ((st.st_ino, st.st_size, st.st_mtime_ns), ul, known)
        return result

    def ensure_uidlist(self) -> None:
        """Create the uidlist, or rewrite a lost one from the index."""
        if read_uidlist_header(self.uidlist_path) is None:
            with self.tx():
                self.assign([])

    def mailbox_guid(self, create: bool) -> str | None:
        """The mailbox GUID (the uidlist's ``G``, as Dovecot keeps it for
        Maildir); with ``create``, one is added to a uidlist without it."""
        guid = uidlist_guid(self.uidlist_path)
        if guid:
            self.guid = guid  # kept should the uidlist be lost and rebuilt
            return guid
        if not create:
            return None
        self.ensure_uidlist()
        with Dotlock(self.uidlist_path):
            ul = read_uidlist(self.uidlist_path)
            if ul is None:
                raise StorageError(f"Mailbox has no usable uidlist: {self.name}")
            if not ul.guid:
                ul.guid = uuid.uuid4().hex
                write_atomic(self.uidlist_path, ul.serialize())
                self._ul = None
            self.guid = ul.guid
            return ul.guid

    # -- flags --------------------------------------------------------

    def flags_of(self, info: str) -> set[str]:
        flags: set[str] = set()
        for ch in info:
            if ch in LETTER_FLAGS:
                flags.add(LETTER_FLAGS[ch])
            elif "a" <= ch <= "z":
                kw = self.keywords.name_for(ch)
                if kw:
                    flags.add(kw)
        return flags

    def info_for(self, flags: Iterable[str], keep_from: str = "") -> str:
        """The ``:2,`` info letters for IMAP ``flags`` (keeps unknown
        uppercase letters such as P from ``keep_from``)."""
        letters = {FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS}
        letters |= {c for c in keep_from if c.isupper() and c not in LETTER_FLAGS}
        kws = {f for f in flags if f not in FLAG_LETTERS and not f.startswith("\\")}
        kw_letters = ""
        if kws:
            kw_letters, dropped = self.keywords.letters_for(kws)
            if dropped:
                log.warn("{box}: too many keywords, not stored: {kw}", box=sanitize(self.name),
                         kw=sanitize(" ".join(sorted(dropped))))
        return "".join(sorted(letters)) + kw_letters

    def rec_path(self, rec: _Rec) -> str:
        return os.path.join(self.path, rec.sub, rec.fname)

    def find_again(self, rec: _Rec) -> _Rec | None:
        """After ENOENT: rescan and return the record if the file still
        exists (renamed by someone else), else None."""
        self.refresh(force=True)
        return self.by_base.get(rec.base)

    def dropped_rec(self, uid: int) -> _Rec | None:
        """The last known record of an expunged message, if still known."""
        for _m, kind, u, _o, rec in reversed(self.log):
            if kind == "x" and u == uid:
                return rec
        return None

    def rename_rec(self, rec: _Rec, info: str | Callable[[_Rec], str]) -> _Rec | None:
        """Move a file to cur/ with new info (or ``info(rec)`` computed
        from its current name); None if the file is gone.  The caller
        records the rename (:meth:`_renamed`)."""
        for _ in range(3):
            new_info = info(rec) if callable(info) else info
            new_fname = f"{rec.base}:2,{new_info}"
            if rec.sub == "cur" and rec.fname == new_fname:
                return rec
            try:
                os.rename(self.rec_path(rec), os.path.join(self.path, "cur", new_fname))
            except FileNotFoundError:
                again = self.find_again(rec)
                if again is None:
                    return None
                rec = again
                continue
            rec.sub, rec.fname = "cur", new_fname
            return rec
        return None


def uidlist_guid(path: str) -> str:
    """The ``G`` field of a uidlist's header ("" if none or unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.readline(4096)
    except OSError:
        return ""
    for tok in head.split():
        if tok.startswith(b"G") and len(tok) > 1:
            value = tok[1:].decode("ascii", "replace")
            if all(c in "0123456789abcdefABCDEF" for c in value):
                return value.lower()
    return ""


_fromts = datetime.datetime.fromtimestamp
_UTC = datetime.UTC


class _Info(MessageInfo):
    """A MessageInfo whose dates are made from timestamps when first read
    (100k datetimes cost more than the rest of a SELECT)."""

    def __init__(self, uid: int, flags: set[str], size: int, mtime: float, modseq: int,
                 savedate: float):
        self.uid, self.flags, self.size, self.modseq = uid, flags, size, modseq
        self._ts = (mtime, savedate)

    @property  # type: ignore[override]
    def internaldate(self) -> datetime.datetime:
        value = self.__dict__.get("_idate")
        if value is None:
            value = self.__dict__["_idate"] = _fromts(self._ts[0], tz=_UTC)
        return value

    @internaldate.setter
    def internaldate(self, value: datetime.datetime) -> None:
        self.__dict__["_idate"] = value

    @property  # type: ignore[override]
    def savedate(self) -> datetime.datetime | None:
        if "_sdate" not in self.__dict__:
            ts = self._ts[1]
            self.__dict__["_sdate"] = _fromts(ts, tz=_UTC) if ts else None
        return self.__dict__["_sdate"]

    @savedate.setter
    def savedate(self, value: datetime.datetime | None) -> None:
        self.__dict__["_sdate"] = value


@implementer(IMailbox)
class MaildirMailbox(S.IndexedSearch):
    """One session's view of a mailbox (see :class:`IMailbox`)."""

    _ids = itertools.count(1)

    def __init__(self, storage: MaildirStorage, box: _Box, readonly: bool):
        self.storage = storage
        self.box = box
        self.name = box.name
        self.readonly = readonly
        self.id = next(self._ids)
        self.messages: list[MessageInfo] = []
        self._index: dict[int, MessageInfo] = {}
        self._ghosts: dict[int, tuple[int, _Rec | None]] = {}  # expunged, not yet reported
        self.recent: set[int] = set()
        self.seen_modseq = box.modseq
        self.closed = False
        box.views.append(self)
        flags_memo: dict[str, set[str]] = {}
        by_uid = box.by_uid
        messages = self.messages
        index = self._index
        with no_gc():
            self._fill(box, by_uid, flags_memo, messages, index)
        settle(len(messages))
        self._take_recent(list(box.pending_recent))

    def _fill(self, box: _Box, by_uid: dict[int, _Rec], flags_memo: dict[str, set[str]],
              messages: list[MessageInfo], index: dict[int, MessageInfo]) -> None:
        for uid in box.uids:
            rec = by_uid[uid]
            info = rec.info
            flags = flags_memo.get(info)
            if flags is None:
                flags = flags_memo[info] = box.flags_of(info)
            mi = _Info(uid, set(flags), rec.size, rec.mtime, rec.modseq, rec.savedate)
            messages.append(mi)
            index[uid] = mi

    @property
    def uidvalidity(self) -> int:
        return self.box.uidvalidity

    @property
    def uidnext(self) -> int:
        return max(self.box.nextuid, (self.messages[-1].uid + 1) if self.messages else 1)

    @property
    def highestmodseq(self) -> int:
        """What this view has reported: not past an expunge it holds back."""
        if self._ghosts:
            return min(self.seen_modseq, min(m for m, _ in self._ghosts.values()) - 1)
        return self.seen_modseq

    @property
    def keywords(self) -> list[str]:
        self.box.keywords.load()
        return self.box.keywords.defined()

    def _append(self, rec: _Rec) -> None:
        info = _Info(rec.uid, self.box.flags_of(rec.info), rec.size, rec.mtime, rec.modseq,
                     rec.savedate)
        self.messages.append(info)
        self._index[rec.uid] = info

    def _take_recent(self, uids: list[int]) -> None:
        box = self.box
        mine = [u for u in uids if u in box.pending_recent and u in self._index]
        if not mine:
            return
        self.recent.update(mine)
        if self.readonly:
            return
        box.pending_recent.difference_update(mine)
        moves = [box.by_uid[u] for u in mine if u in box.by_uid and box.by_uid[u].sub == "new"]
        if not moves:
            return
        with box.tx():
            for rec in moves:
                if rec.sub != "new" or box.by_uid.get(rec.uid) is not rec:
                    continue
                moved = box.rename_rec(rec, rec.info)
                if moved is not None:
                    box._renamed(moved, False)

    def _check(self) -> None:
        if self.closed:
            raise StorageError("Mailbox view is closed")

    @property
    def deleted(self) -> bool:
        """The selected mailbox no longer exists on disk (the session says
        ``* BYE Selected mailbox was deleted``, as Dovecot does)."""
        return self.box.deleted()

    @answers
    def sync(self, allow_expunge: bool = True) -> SyncResult:
        self._check()
        box = self.box
        box.refresh()
        result = SyncResult()
        start = bisect.bisect_right(box.log, self.seen_modseq, key=lambda e: e[0])
        changed: set[int] = set()
        for modseq, kind, uid, origin, rec in box.log[start:]:
            if kind == "x" and uid in self._index and origin != self.id:
                self._ghosts.setdefault(uid, (modseq, rec))
            elif kind == "f" and origin != self.id:
                changed.add(uid)
        if allow_expunge and self._ghosts:
            expunged = set(self._ghosts)
            self.messages = [m for m in self.messages if m.uid not in expunged]
            for uid in expunged:
                del self._index[uid]
            self.recent -= expunged
            result.expunged = sorted(expunged)
            self._ghosts.clear()
        for uid in sorted(changed):
            info, rec = self._index.get(uid), box.by_uid.get(uid)
            if info is None or rec is None or uid in self._ghosts:
                continue
            flags = box.flags_of(rec.info)
            info.modseq = rec.modseq
            if flags != info.flags:
                info.flags = flags
                result.flags_changed.append(uid)
        last = self.messages[-1].uid if self.messages else 0
        new_uids = box.uids[bisect.bisect_right(box.uids, last):]
        for uid in new_uids:
            self._append(box.by_uid[uid])
        result.added = list(new_uids)
        self._take_recent(result.added)
        self.seen_modseq = box.modseq
        return result

    def _expunge_issued(self, uid: int) -> StorageError:
        err = StorageError(f"Message UID {uid} has been expunged")
        err.code = "EXPUNGEISSUED"
        return err

    @answers
    def message_file(self, uid: int) -> BinaryIO:
        self._check()
        box = self.box
        rec = box.by_uid.get(uid)
        if rec is None:
            # expunged: readable while its file is still there
            ghost = self._ghosts.get(uid)
            old = ghost[1] if ghost else (box.dropped_rec(uid) if uid in self._index else None)
            if old is None:
                raise self._expunge_issued(uid)
            try:
                return open(box.rec_path(old), "rb")
            except FileNotFoundError:
                raise self._expunge_issued(uid) from None
        for _ in range(3):
            if rec is None:
                raise self._expunge_issued(uid)
            try:
                return open(box.rec_path(rec), "rb")
            except FileNotFoundError:
                rec = box.find_again(rec)
        raise StorageError(f"Message UID {uid} keeps moving")

    @answers
    def store(self, uids: Iterable[int], flags: Iterable[str], mode: str) -> list[int]:
        return self._store(uids, flags, mode, None)[0]

    @answers
    def store_unchanged_since(self, uids: Iterable[int], flags: Iterable[str], mode: str,
                              unchangedsince: int) -> tuple[list[int], list[int]]:
        return self._store(uids, flags, mode, unchangedsince)

    def _store(self, uids: Iterable[int], flags: Iterable[str], mode: str,
               unchangedsince: int | None) -> tuple[list[int], list[int]]:
        self._check()
        if self.readonly:
            raise StorageError("Mailbox is read-only")
        if mode not in ("+", "-", "="):
            raise ValueError(f"bad store mode {mode!r}")
        given = {canon_flag(f) for f in flags if f.lower() != "\\recent"}
        box = self.box
        changed: list[int] = []
        failed: list[int] = []
        with box.tx():
            for uid in uids:
                info, rec = self._index.get(uid), box.by_uid.get(uid)
                if info is None or rec is None:
                    continue
                if unchangedsince is not None and rec.modseq > unchangedsince:
                    failed.append(uid)
                    continue
                before = box.flags_of(rec.info)

                def make_info(r: _Rec) -> str:
                    current = box.flags_of(r.info)
                    if mode == "+":
                        new = current | given
                    elif mode == "-":
                        new = current - given
                    else:
                        new = set(given)
                    return box.info_for(new, keep_from=r.info)

                old_fname = rec.fname
                rec = box.rename_rec(rec, make_info)
                if rec is None:
                    continue
                stored = box.flags_of(rec.info)
                if stored != before or rec.fname != old_fname:
                    box._renamed(rec, stored != before, self.id)
                if stored != info.flags:
                    info.flags = stored
                    changed.append(uid)
                info.modseq = rec.modseq
        if changed:
            self.storage._notify(self.name)
        return changed, failed

    @answers
    def vanished_since(self, modseq: int) -> list[int]:
        box = self.box
        present = set(box.uids) | set(self._ghosts)
        if modseq < box.vanished_floor:
            # forgotten: every UID that is not here may have vanished
            return [u for u in range(1, box.nextuid) if u not in present]
        i = bisect.bisect_right(box.expunged, (modseq, 1 << 62))
        return sorted({u for _m, u in box.expunged[i:] if u not in present})

    @answers
    def cached(self, uid: int, key: str) -> object | None:
        value = self.box.cache.get(self.box.uidvalidity, uid, key)
        return None if value is None else _decode_cached(value)

    @answers
    def set_cached(self, uid: int, key: str, value: object) -> None:
        box = self.box
        if uid not in box.by_uid:
            return
        try:
            box.cache.add(box.uidvalidity, uid, key, _encode_cached(value))
        except OSError as e:
            log.warn("{path}: cache not written: {err}", path=box.cache.path, err=e)

    @answers
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        self._check()
        if self.readonly:
            raise StorageError("Mailbox is read-only")
        box = self.box
        only = set(uids) if uids is not None else None
        removed: list[int] = []
        freed = 0
        with box.tx():
            for info in list(self.messages):
                if only is not None and info.uid not in only:
                    continue
                rec = box.by_uid.get(info.uid)
                if rec is None or "\\Deleted" not in box.flags_of(rec.info):
                    continue
                for _ in range(3):
                    try:
                        os.unlink(box.rec_path(rec))
                    except FileNotFoundError:
                        rec = box.find_again(rec)
                        if rec is None:
                            break
                        continue
                    freed += self.storage._qsize(box, rec)
                    box._drop(rec, self.id)
                    removed.append(info.uid)
                    break
        if removed:
            gone = set(removed)
            self.messages = [m for m in self.messages if m.uid not in gone]
            for uid in gone:
                del self._index[uid]
                self._ghosts.pop(uid, None)
            self.recent -= gone
            self.storage._quota_changed(self.name, -freed, -len(removed))
            self.storage._notify(self.name)
        return removed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self in self.box.views:
                self.box.views.remove(self)

    # -- search, sort and parsed data (SEARCH's block: pydovecot.storage.search) --

    def _search_source(self) -> S.CallableSource:
        """The index cache and files as the evaluator reads them (directly)."""
        box = self.box

        def get(uid: int, key: str) -> object | None:
            value = box.cache.get(box.uidvalidity, uid, key)
            return None if value is None else _decode_cached(value)

        def put(uid: int, key: str, value: object) -> None:
            if uid not in box.by_uid:
                return
            try:
                box.cache.add(box.uidvalidity, uid, key, _encode_cached(value))
            except OSError as e:
                log.warn("{path}: cache not written: {err}", path=box.cache.path, err=e)

        return S.CallableSource(get, put, lambda uid: S.sync_result(self.message_file(uid)))



@implementer(IMailStorage)
class MaildirStorage:
    """One user's Maildir++ tree (see :class:`IMailStorage`)."""

    def __init__(self, user: str, root: str, utf8: bool = False, home: str | None = None):
        self.user = user
        self.root = os.path.abspath(root)
        self.utf8 = utf8
        #: Dovecot's ``mail_attribute_dict = file:%h/dovecot-attributes``
        #: (in the mail root when there is no home)
        self.attributes = A.AttributeDict(
            os.path.join(os.path.abspath(home) if home else self.root, A.FILENAME))
        self._legacy_checked = False
        self._boxes: dict[str, _Box] = {}
        #: shared by every box's cache file; :meth:`configure` updates it
        self.cache_limits = CacheLimits()
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._tree_listeners: list[Callable[[str, str, str | None], None]] = []
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        self._subs = Subscriptions(self.root, utf8)
        #: Dovecot's quota plugin (None: off); :meth:`configure` sets it up
        self.quota: Q.Quota | None = None
        self._usage_cache: dict[str, tuple[tuple, tuple[int, int]]] = {}

    @answers
    def configure(self, settings: dict) -> None:
        """Apply the user's settings (``mail_cache_*``) to this storage."""
        limits = CacheLimits.from_settings(settings)
        self.cache_limits.max_size = limits.max_size
        self.cache_limits.max_headers = limits.max_headers
        self.cache_limits.max_header_name = limits.max_header_name
        self.attributes.limits = A.AttributeLimits.from_settings(settings)
        qcfg = Q.parse_settings(settings)
        if qcfg is None:
            self.quota = None
        else:
            script = settings.get("quota_warning_executable") or ""
            warn = (lambda args, user=self.user: Q.run_warning(script, args, user)) if script \
                else None
            self.quota = Q.Quota(qcfg, self._quota_scan, self.root, warn)

    # -- paths and caches ---------------------------------------------

    def _dir(self, name: str) -> str:
        path = os.path.join(self.root, N.to_dirname(name, self.utf8))
        if name != "INBOX":
            real = os.path.realpath(path)
            if os.path.dirname(real) != self._real_root:
                raise MailboxNameError(f"Mailbox path escapes the mail root: {name}")
        return path

    def _exists(self, name: str) -> bool:
        return os.path.isdir(os.path.join(self._dir(name), "cur"))

    def _box(self, name: str) -> _Box:
        name = N.normalize(name)
        box = self._boxes.get(name)
        if box is not None and box.dir_stamp is not None:
            box.refresh()
            if box.dir_stamp is not None:
                return box
        if not self._exists(name):
            self._boxes.pop(name, None)
            raise MailboxNotFound(f"Mailbox doesn't exist: {name}")
        box = _Box(self, name, self._dir(name))
        box.refresh()
        box.ensure_uidlist()
        self._boxes[name] = box
        return box

    def _forget(self, name: str) -> None:
        box = self._boxes.pop(name, None)
        if box is not None:
            box.refresh()  # views see everything expunged at their sync

    def next_uidvalidity(self) -> int:
        """Dovecot's scheme: ``dovecot-uidvalidity`` holds the last one
        (hex); the next is max(now, last + 1)."""
        path = os.path.join(self.root, UIDVALIDITY)
        with Dotlock(path):
            try:
                with open(path) as f:
                    last = int(f.read().strip() or "0", 16)
            except (FileNotFoundError, ValueError):
                last = 0
            value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
            write_atomic(path, f"{value:08x}".encode())
        return value

    def _notify(self, name: str) -> None:
        for cb in list(self._listeners.get(name, ())):
            try:
                cb()
            except Exception:
                log.failure("mailbox change listener failed")

    # -- mailbox tree -------------------------------------------------

    @answers
    def list_mailboxes(self) -> list[MailboxInfo]:
        real: set[str] = {"INBOX"}
        for entry in os.listdir(self.root):
            if not entry.startswith(".") or entry.startswith(".."):
                continue
            name = N.from_dirname(entry, self.utf8)
            if name is None:
                continue
            if os.path.isdir(os.path.join(self.root, entry)):
                real.add(name)
        implicit = {p for n in real for p in N.parents(n)} - real
        everything = real | implicit
        has_children = {p for n in everything for p in N.parents(n)}
        result = []
        for name in sorted(everything, key=lambda n: (n != "INBOX", n)):
            attrs = {"\\HasChildren" if name in has_children else "\\HasNoChildren"}
            if name in implicit:
                attrs.add("\\Noselect")
            result.append(MailboxInfo(name, attrs))
        return result

    def _make(self, name: str) -> None:
        path = self._dir(name)
        os.mkdir(path, 0o700)
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(path, sub), 0o700)
        open(os.path.join(path, "maildirfolder"), "wb").close()
        _fsync_dir(self.root)

    @answers
    def create(self, name: str) -> None:
        name = N.normalize(name, for_create=True)
        if name == "INBOX" or self._exists(name):
            raise MailboxExists(f"Mailbox already exists: {name}")
        for parent in N.parents(name):
            if parent != "INBOX" and not os.path.exists(self._dir(parent)):
                try:
                    self._make(parent)
                except FileExistsError:
                    pass
        try:
            self._make(name)
        except FileExistsError:
            raise MailboxExists(f"Mailbox already exists: {name}") from None
        self._tree_changed("create", name)

    @answers
    def delete(self, name: str) -> None:
        name = N.normalize(name)
        if name == "INBOX":
            raise StorageError("INBOX can't be deleted.")
        path = self._dir(name)
        if not os.path.isdir(path):
            raise MailboxNotFound(f"Mailbox doesn't exist: {name}")
        guid = uidlist_guid(os.path.join(path, UIDLIST))
        freed = self._box_usage(name) if self.quota is not None else (0, 0)
        trash = os.path.join(self.root, f"{TRASH_PREFIX}.{uuid.uuid4().hex}")
        os.rename(path, trash)  # atomic: children (separate dirs) stay
        shutil.rmtree(trash, ignore_errors=True)
        self._forget(name)
        if guid:  # its attributes go with it
            try:
                self.attributes.change({}, drop_prefixes=[f"{A.DICT_PRIVATE}{guid}/",
                                                          f"{A.DICT_SHARED}{guid}/"])
            except StorageError as e:
                log.warn("{name}: attributes of the deleted mailbox not removed: {err}",
                         name=sanitize(name), err=sanitize(e))
        self._quota_changed(name, -freed[0], -freed[1])
        self._notify(name)
        self._tree_changed("delete", name)

    @answers
    def rename(self, old: str, new: str) -> None:
        old, new = N.normalize(old), N.normalize(new, for_create=True)
        if new == "INBOX" or self._exists(new):
            raise MailboxExists(f"Mailbox already exists: {new}")
        if new.startswith(old + "/"):
            raise MailboxNameError("Can't rename a mailbox under itself")
        if old == "INBOX":
            self._rename_inbox(new)
            self._tree_changed("rename", old, new)
            return
        children = [m.name for m in MaildirStorage.list_mailboxes.now(self)
                    if m.name.startswith(old + "/") and "\\Noselect" not in m.attributes]
        if not os.path.isdir(self._dir(old)) and not children:
            raise MailboxNotFound(f"Mailbox doesn't exist: {old}")
        moves = [(n, new + n[len(old):]) for n in [old, *children]]
        for _, dst in moves:
            N.normalize(dst)
            if os.path.exists(self._dir(dst)):
                raise MailboxExists(f"Mailbox already exists: {dst}")
        for parent in N.parents(new):
            if parent != "INBOX" and not os.path.exists(self._dir(parent)):
                self._make(parent)
        for src, dst in moves:
            if os.path.isdir(self._dir(src)):
                os.rename(self._dir(src), self._dir(dst))
            self._forget(src)
        _fsync_dir(self.root)
        self._tree_changed("rename", old, new)

    def _rename_inbox(self, new: str) -> None:
        """RFC 3501: move INBOX's messages to ``new``; INBOX stays, empty,
        with its UIDVALIDITY and next UID."""
        inbox = self._box("INBOX")
        MaildirStorage.create.now(self, new)
        dest = self._dir(new)
        with Dotlock(inbox.uidlist_path):
            ul = read_uidlist(inbox.uidlist_path) or UidList.new(self.next_uidvalidity())
            moved = UidList(self.next_uidvalidity(), ul.nextuid, uuid.uuid4().hex)
            moved.records = ul.records
            write_atomic(os.path.join(dest, UIDLIST), moved.serialize())
            kw = os.path.join(inbox.path, "dovecot-keywords")
            if os.path.exists(kw):
                shutil.copyfile(kw, os.path.join(dest, "dovecot-keywords"))
            for sub in ("new", "cur"):
                for fname in os.listdir(os.path.join(inbox.path, sub)):
                    os.rename(os.path.join(inbox.path, sub, fname), os.path.join(dest, sub, fname))
                _fsync_dir(os.path.join(dest, sub))
            ul.records = []
            write_atomic(inbox.uidlist_path, ul.serialize())
        inbox.refresh(force=True)
        self._notify("INBOX")

    # -- subscriptions ------------------------------------------------

    @answers
    def subscriptions(self) -> list[str]:
        return self._subs.read()

    @answers
    def subscribe(self, name: str) -> None:
        self._subs.change(N.normalize(name), True)
        self._tree_changed("subscribe", name)

    @answers
    def unsubscribe(self, name: str) -> None:
        self._subs.change(N.normalize(name), False)
        self._tree_changed("unsubscribe", name)

    # -- messages -----------------------------------------------------

    @answers
    def status(self, name: str) -> MailboxStatus:
        box = self._box(name)
        recs = box.by_uid.values()
        unseen = deleted = size = deleted_size = 0
        for rec in recs:
            info = rec.info
            unseen += "S" not in info
            if "T" in info:
                deleted += 1
                deleted_size += rec.size
            size += rec.size
        return MailboxStatus(
            messages=len(box.uids),
            # Dovecot: \Recent another session has taken is nobody else's
            recent=len(box.pending_recent),
            uidnext=box.nextuid,
            uidvalidity=box.uidvalidity,
            unseen=unseen,
            size=size,
            deleted=deleted,
            highestmodseq=box.modseq,
            deleted_size=deleted_size,
        )

    @answers
    def open(self, name: str, readonly: bool = False) -> MaildirMailbox:
        return MaildirMailbox(self, self._box(name), readonly)

    def _flags_info(self, box: _Box, flags: Iterable[str]) -> str:
        return box.info_for({canon_flag(f) for f in flags if f.lower() != "\\recent"})

    @answers
    def append(
        self,
        name: str,
        message: BinaryIO,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> tuple[int, int]:
        box = self._box(name)
        flags = list(flags)
        info = self._flags_info(box, flags)
        tmpname = unique_name()
        tmppath = os.path.join(box.path, "tmp", tmpname)
        try:
            fd = os.open(tmppath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                size, vsize = copy_to_lf(message, out)
                out.flush()
                os.fsync(out.fileno())
            if self.quota is not None:
                self.quota.check(box.name, vsize if self.quota.config.vsizes else size)
            if internaldate is not None:
                ts = internaldate.timestamp()
                os.utime(tmppath, (ts, ts))
            base = f"{tmpname},S={size},W={vsize}"
            sub = "cur" if flags else "new"
            fname = f"{base}:2,{info}" if flags else base
            with box.tx():
                os.rename(tmppath, os.path.join(box.path, sub, fname))
                _fsync_dir(os.path.join(box.path, sub))
                mtime = os.stat(os.path.join(box.path, sub, fname)).st_mtime
                uid = box.assign([base])[base]
                box._insert([_Rec(uid, base, sub, fname, vsize, mtime, 0, time.time())])
        except OSError as e:
            try:
                os.unlink(tmppath)
            except OSError:
                pass
            err = StorageError(f"Saving the message failed: {e.strerror}")
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                err.code = "OVERQUOTA"
            raise err from e
        except StorageError:
            try:
                os.unlink(tmppath)
            except OSError:
                pass
            raise
        self._quota_changed(box.name, vsize if self.quota and self.quota.config.vsizes else size, 1)
        box.pending_recent.add(uid)
        self._notify(box.name)
        return box.uidvalidity, uid

    @answers
    def copy(
        self, source: IMailbox, uids: Sequence[int], dest: str
    ) -> tuple[int, list[tuple[int, int]]]:
        return self._copy(source, uids, dest, check=True)

    @answers
    def move(
        self, source: IMailbox, uids: Sequence[int], dest: str
    ) -> tuple[int, list[tuple[int, int]]]:
        return self._copy(source, uids, dest, check=False)  # one quota root for all

    def _copy(
        self, source: IMailbox, uids: Sequence[int], dest: str, check: bool
    ) -> tuple[int, list[tuple[int, int]]]:
        if not isinstance(source, MaildirMailbox):
            raise StorageError("Can't copy from a foreign mailbox")
        dbox = self._box(dest)
        sbox = source.box
        gone = [uid for uid in uids if uid in source._index and uid not in sbox.by_uid]
        if gone:  # RFC 9051 7.1: no partial copy of messages expunged elsewhere
            err = StorageError("Some of the requested messages no longer exist.")
            err.code = "EXPUNGEISSUED"
            raise err
        todo = [(uid, sbox.by_uid[uid]) for uid in uids
                if uid in sbox.by_uid and uid in source._index]
        if self.quota is not None and todo and check:
            self.quota.check(dbox.name, sum(self._qsize(sbox, r) for _, r in todo), len(todo))
        made: list[tuple[int, _Rec]] = []
        now = time.time()
        for _round in range(3):
            if not todo:
                break
            retry: list[tuple[int, _Rec]] = []
            with dbox.tx():
                recs = []
                for uid, rec in todo:
                    info = dbox.info_for(sbox.flags_of(rec.info), keep_from=rec.info)
                    tail = "".join("," + p for p in rec.base.split(",")[1:])
                    base = unique_name() + tail
                    fname = f"{base}:2,{info}"
                    try:
                        try:
                            os.link(sbox.rec_path(rec), os.path.join(dbox.path, "cur", fname))
                        except OSError as e:
                            if e.errno == errno.ENOENT:
                                raise
                            self._copy_file(sbox.rec_path(rec), dbox, fname)
                    except FileNotFoundError:
                        retry.append((uid, rec))
                        continue
                    recs.append((uid, _Rec(0, base, "cur", fname, rec.size, rec.mtime, 0, now)))
                if recs:
                    _fsync_dir(os.path.join(dbox.path, "cur"))
                    assigned = dbox.assign([r.base for _, r in recs])
                    for _uid, r in recs:
                        r.uid = assigned[r.base]
                    dbox._insert([r for _, r in recs])
                    made += recs
            todo = []
            for uid, rec in retry:  # renamed (flags) or expunged meanwhile
                again = sbox.find_again(rec)
                if again is not None:
                    todo.append((uid, again))
        if not made:
            return dbox.uidvalidity, []
        dbox.pending_recent.update(r.uid for _, r in made)
        self._quota_changed(dbox.name, sum(self._qsize(dbox, r) for _, r in made), len(made))
        self._notify(dbox.name)
        made.sort(key=lambda m: m[1].uid)
        return dbox.uidvalidity, [(uid, r.uid) for uid, r in made]

    def _copy_file(self, src: str, dbox: _Box, fname: str) -> None:
        tmp = os.path.join(dbox.path, "tmp", base_name(fname))
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        st = os.stat(src)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, os.path.join(dbox.path, "cur", fname))

    # -- quota --------------------------------------------------------

    def _qsize(self, box: _Box, rec: _Rec) -> int:
        """The size quota counts: the file's (``S=``, else stat), or
        RFC822.SIZE with ``quota_vsizes = yes``, as Dovecot counts."""
        if self.quota is not None and self.quota.config.vsizes:
            return rec.size
        size, _ = name_sizes(rec.base)
        if size is None:
            try:
                size = os.stat(box.rec_path(rec)).st_size
            except OSError:
                size = 0
        return size

    def _box_usage(self, name: str) -> tuple[int, int]:
        """(bytes, messages) of one mailbox, summed again only when the
        mailbox changed (its modseq or count moved) since the last sum."""
        try:
            box = self._box(name)
        except StorageError:
            return 0, 0
        vsizes = self.quota is not None and self.quota.config.vsizes
        key = (box.modseq, len(box.by_uid), vsizes, id(box))
        cached = self._usage_cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        total = sum(self._qsize(box, r) for r in box.by_uid.values()), len(box.by_uid)
        self._usage_cache[name] = (key, total)
        return total

    def _quota_scan(self, ignored: Callable[[str], bool]) -> tuple[int, int]:
        """(bytes, messages) of every mailbox quota counts."""
        total = [0, 0]
        for info in MaildirStorage.list_mailboxes.now(self):
            if "\\Noselect" in info.attributes or ignored(info.name):
                continue
            b, n = self._box_usage(info.name)
            total[0] += b
            total[1] += n
        return total[0], total[1]

    def _quota_changed(self, mailbox: str, dbytes: int, dcount: int) -> None:
        if self.quota is None or (not dbytes and not dcount):
            return
        try:
            self.quota.changed(mailbox, dbytes, dcount)
        except OSError as e:  # the mail is saved; maildirsize catches up at recalc
            log.warn("quota: updating the usage failed: {e}", e=sanitize(e.strerror or e))

    def _resources(self, root: Q.Root, mailbox: str = "",
                   usage: tuple[int, int] | None = None) -> list[QuotaResource]:
        b, n = root.config.limits(mailbox)
        ub, un = usage if usage is not None else root.usage()
        return [QuotaResource("STORAGE", ub, b), QuotaResource("MESSAGE", un, n)]

    @answers
    def quota_roots(self, mailbox: str) -> list[str]:
        N.normalize(mailbox)  # a bad name is refused; a missing one has roots too
        if self.quota is None:
            return []
        return [r.name for r in self.quota.roots_for(mailbox)]

    @answers
    def get_quota(self, root: str, mailbox: str = "") -> list[QuotaResource]:
        r = self.quota.root(root) if self.quota is not None else None
        if r is None:
            err = StorageError("Quota root does not exist")
            err.code = "NONEXISTENT"
            raise err
        return self._resources(r, mailbox)

    @answers
    def check_quota(self, mailbox: str, size: int, count: int = 1) -> None:
        if self.quota is not None:  # asked for a delivery: with quota_grace
            self.quota.check(N.normalize(mailbox), size, count, grace=True)

    @contextmanager
    def delivering(self) -> Iterator[None]:
        """Saves made synchronously inside are deliveries (LDA/LMTP), which
        ``quota_grace`` lets cross the limit, as in Dovecot (not part of
        the interface: a storage without it simply applies no grace)."""
        if self.quota is None:
            yield
            return
        self.quota.grace = True
        try:
            yield
        finally:
            self.quota.grace = False

    @answers
    def recalc_quota(self) -> list[QuotaResource]:
        out: list[QuotaResource] = []
        for r in self.quota.roots if self.quota is not None else ():
            out += self._resources(r, usage=r.recalc())
        return out

    # -- mailbox attributes -------------------------------------------

    def _attr_box(self, mailbox: str, create: bool) -> tuple[str | None, bool]:
        """(GUID or None, is the server) of the attribute owner."""
        server = mailbox == ""
        box = self._box("INBOX" if server else mailbox)
        self._migrate_legacy()
        return box.mailbox_guid(create), server

    @answers
    def get_attribute(self, mailbox: str, key: str) -> bytes | None:
        scope, rest = A.split_entry(key)
        guid, server = self._attr_box(mailbox, False)
        if guid is None:
            return None
        return self.attributes.get(A.dict_prefix(scope, guid, server) + rest)

    @answers
    def set_attribute(self, mailbox: str, key: str, value: bytes | None) -> None:
        scope, rest = A.split_entry(key)
        if value is not None and len(value) > self.attributes.limits.max_value_size:
            raise AttributeTooLarge(self.attributes.limits.max_value_size)
        guid, server = self._attr_box(mailbox, value is not None)
        if guid is None:
            return  # nothing to delete
        prefix = A.dict_prefix(scope, guid, server)
        self.attributes.change({prefix + rest: value}, count_prefix=prefix)

    @answers
    def set_attributes(self, mailbox: str, changes: dict[str, bytes | None]) -> None:
        entries = {key: A.split_entry(key) for key in changes}
        limit = self.attributes.limits.max_value_size
        if any(v is not None and len(v) > limit for v in changes.values()):
            raise AttributeTooLarge(limit)
        guid, server = self._attr_box(mailbox, any(v is not None for v in changes.values()))
        if guid is None:
            return  # only deletions, and nothing stored for the mailbox
        sets = {A.dict_prefix(scope, guid, server) + rest: changes[key]
                for key, (scope, rest) in entries.items()}
        prefixes = {A.dict_prefix(scope, guid, server) for scope, _ in entries.values()}
        self.attributes.change(sets, count_prefix=tuple(sorted(prefixes)))

    @answers
    def attribute_keys(self, mailbox: str, prefix: str = "") -> list[str]:
        guid, server = self._attr_box(mailbox, False)
        if guid is None:
            return []
        want = prefix.lower().rstrip("/")
        out = []
        for scope in (A.DICT_PRIVATE, A.DICT_SHARED):
            base = A.dict_prefix(scope, guid, server)
            for k in self.attributes.keys(base):
                rest = k[len(base):]
                if not server and rest.startswith(A.SERVER_PREFIX):
                    continue  # the server's entries, kept in INBOX
                entry = A.to_entry(scope, rest)
                if not want or entry == want or entry.startswith(want + "/"):
                    out.append(entry)
        return sorted(out)

    def _migrate_legacy(self) -> None:
        """Once: move what older pydovecot versions kept in files of their
        own (``pydovecot-special-use``, ``pydovecot-urlauth-keys`` in the
        mail root) into attributes; the files are renamed ``*.migrated``."""
        if self._legacy_checked:
            return
        self._legacy_checked = True
        for fname, reader in ((LEGACY_SPECIAL_USE, _legacy_special_use),
                              (LEGACY_URLAUTH, _legacy_urlauth)):
            path = os.path.join(self.root, fname)
            if not os.path.exists(path):
                continue
            try:
                with open(path, "rb") as f:
                    entries = reader(f.read(1 << 20))
                for name, key, value, uidvalidity in entries:
                    try:
                        box = self._box(name)
                    except (MailboxNotFound, MailboxNameError):
                        continue
                    if uidvalidity is not None and box.uidvalidity != uidvalidity:
                        continue  # a key of an earlier mailbox of that name
                    guid = box.mailbox_guid(True)
                    full = A.dict_prefix(A.DICT_PRIVATE, guid, False) + A.split_entry(key)[1]
                    if self.attributes.get(full) is None:
                        self.attributes.change({full: value})
                os.replace(path, path + ".migrated")
            except (OSError, StorageError, ValueError) as e:
                log.warn("{path}: not migrated to attributes: {err}", path=path, err=sanitize(e))

    # -- listeners ----------------------------------------------------

    def add_listener(self, name: str, callback: Callable[[], None]) -> None:
        self._listeners.setdefault(N.normalize(name), []).append(callback)

    def remove_listener(self, name: str, callback: Callable[[], None]) -> None:
        cbs = self._listeners.get(N.normalize(name), [])
        if callback in cbs:
            cbs.remove(callback)

    def add_tree_listener(self, callback: Callable[[str, str, str | None], None]) -> None:
        self._tree_listeners.append(callback)

    def remove_tree_listener(self, callback: Callable[[str, str, str | None], None]) -> None:
        if callback in self._tree_listeners:
            self._tree_listeners.remove(callback)

    def _tree_changed(self, kind: str, name: str, new: str | None = None) -> None:
        for cb in list(self._tree_listeners):
            cb(kind, name, new)


LEGACY_SPECIAL_USE = "pydovecot-special-use"
LEGACY_URLAUTH = "pydovecot-urlauth-keys"
_SPECIAL_USE = {a.lower(): a for a in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk",
                                       "\\Sent", "\\Trash", "\\Important")}
_Legacy = list[tuple[str, str, bytes, "int | None"]]


def _legacy_special_use(data: bytes) -> _Legacy:
    """``<name> TAB <attributes>`` lines (pydovecot/imap/specialuse.py
    before attributes) → /private/specialuse values."""
    out: _Legacy = []
    for line in data.decode("utf-8", "replace").splitlines():
        name, sep, attrs = line.partition("\t")
        found = sorted({c for a in attrs.split() if (c := _SPECIAL_USE.get(a.lower()))})
        if sep and name and found:
            out.append((name, A.SPECIALUSE, " ".join(found).encode(), None))
    return out


def _legacy_urlauth(data: bytes) -> _Legacy:
    """``{"version": 1, "keys": {name: {"uidvalidity", "key"}}}`` (the
    URLAUTH key file before attributes) → hex keys in URLAUTH_KEY."""
    keys = json.loads(data)["keys"]
    out: _Legacy = []
    for name, entry in keys.items():
        try:
            key = bytes.fromhex(entry["key"])
            uidvalidity = int(entry["uidvalidity"])
        except (KeyError, TypeError, ValueError):
            continue
        if key:
            out.append((str(name), A.URLAUTH_KEY, key.hex().encode(), uidvalidity))
    return out


__all__ = ["MaildirStorage", "MaildirMailbox", "unique_name"]
