"""pydovecot's per-mailbox index: a rebuildable cache next to the mail.

Files in the mailbox directory (named so they never collide with
Dovecot's own ``dovecot.index*``):

``dovecot.index.pydovecot``
    The snapshot: a magic line, a JSON header line (UIDVALIDITY, next UID,
    HIGHESTMODSEQ, the ``new/``/``cur/`` mtimes it reflects, the expunge log,
    the id of the change log that continues it), packed binary rows (UID,
    modseq, RFC822.SIZE, internal date, save date, in ``new/``), the file
    names joined by LF, and ``END <crc32> <count>``.  Written as temp file +
    fsync + rename; loading 100k messages takes about 0.13 s.
``dovecot.index.pydovecot.log``
    The append-only change log that continues the snapshot: ``L <id>``, then
    one ``<crc32> <json>`` line per change, appended and fsynced under the
    lock.  A log whose id is not the snapshot's is stale and ignored.
``dovecot.index.pydovecot.cache``
    Cached values (envelope, bodystructure, headers): ``<crc32> <json>``
    lines ``[uid, key, value]`` after a ``C <uidvalidity>`` header; bounded
    by :class:`CacheLimits` (Dovecot's ``mail_cache_max_size``,
    ``mail_cache_max_headers_count``, ``mail_cache_max_header_name_length``).
``dovecot.index.pydovecot.modseq``
    A ceiling above every modseq ever handed out, so HIGHESTMODSEQ stays
    monotonic when the index is lost and rebuilt.
``dovecot.index.pydovecot.lock``
    ``flock`` target serialising writers across processes (released by the
    kernel when a writer is killed).

Trusts nothing it reads: a bad magic, version, checksum or truncated
snapshot makes :meth:`MailboxIndex.load` return None (the caller rebuilds
from the mail files and ``dovecot-uidlist``); a torn or corrupt log line
ends the replay and marks the state unconfirmed, which forces a rescan.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import struct
import sys
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydovecot.storage.uidlist import write_atomic

INDEX = "dovecot.index.pydovecot"
MAGIC = b"PYDOVECOT-INDEX 2\n"
#: modseqs handed out ahead of the persisted ceiling
CEILING_STEP = 4096
#: expunge log entries kept; older expunges are over-reported
EXPUNGE_KEEP = 10000

Stamp = tuple[int, int]  # new/ and cur/ mtime_ns
#: a snapshot row: uid, modseq, RFC822.SIZE, internal date, save date, in new/
_ROW = struct.Struct("<IQQdd?")


@dataclass(slots=True)
class IndexRecord:
    """One message: what the Maildir storage keeps in memory too."""

    uid: int
    base: str  # the file name without its ``:2,`` info
    sub: str  # "new" or "cur"
    fname: str
    size: int  # RFC822.SIZE
    mtime: float  # internal date
    modseq: int
    savedate: float = 0.0

    @property
    def info(self) -> str:
        _, sep, info = self.fname.partition(":2,")
        return info if sep else ""


@dataclass
class IndexState:
    """What the snapshot plus its change log say."""

    uidvalidity: int = 0
    nextuid: int = 1
    modseq: int = 1
    stamp: Stamp | None = None  # dir mtimes this state reflects
    confirmed: bool = False  # the stamp was old enough to be trusted
    records: dict[int, IndexRecord] = field(default_factory=dict)
    expunged: list[tuple[int, int]] = field(default_factory=list)  # (modseq, uid)
    vanished_floor: int = 0  # expunges at or below this modseq are forgotten
    clean: bool = True  # the log ended on a complete transaction


#: Objects built at once above which they are moved out of the cyclic
#: GC's reach (:func:`settle`).
SETTLE_OVER = 5000


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic GC while building many objects (it would walk all
    of them again and again: 2-3x slower on a 100k-message mailbox)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _GCPauses:
    """Process-wide pauses of the cyclic GC while long commands run (see
    :func:`pause_gc`)."""

    count = 0
    resume = False


def pause_gc() -> Callable[[], None]:
    """Pause the cyclic GC until the returned function is called (once).

    A long command builds many short-lived objects (a search context per
    message, thread nodes); each full collection meanwhile walks all of
    them while holding the GIL, 100-200 ms stalls for every session of the
    process.  Paused, they are freed by reference counting as usual; the
    GC resumes when the last pause ends.  Pauses nest across sessions."""
    if _GCPauses.count == 0:
        _GCPauses.resume = gc.isenabled()
        gc.disable()
    _GCPauses.count += 1
    done = False

    def release() -> None:
        nonlocal done
        if done:
            return
        done = True
        _GCPauses.count -= 1
        if _GCPauses.count == 0 and _GCPauses.resume:
            gc.enable()

    return release


def settle(count: int) -> None:
    """After building ``count`` long-lived objects (a big mailbox's records
    or a view of it): move everything alive into the GC's permanent
    generation (``gc.freeze``).  A full collection walks every tracked
    object in the process while holding the GIL: with a 20k-message view
    it took 100-200 ms, a stall for every session of the mail process.
    Frozen objects are still freed by reference counting; only cycles that
    are garbage already at this moment stay (young generations are
    collected first, which is cheap)."""
    if count >= SETTLE_OVER and gc.isenabled():
        gc.collect(1)
        gc.freeze()


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def encode_op(op: list) -> bytes:
    data = json.dumps(op, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    return _crc(data).encode() + b" " + data + b"\n"


def decode_op(line: bytes) -> list | None:
    """One log/cache line (without its newline); None if corrupt."""
    crc, _, data = line.partition(b" ")
    if len(crc) != 8 or _crc(data).encode() != crc:
        return None
    try:
        op = json.loads(data.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    return op if isinstance(op, list) and op else None


def apply_op(state: IndexState, op: list) -> tuple[str, int] | None:
    """Apply one change-log op to ``state``; returns (kind, uid) for
    message changes.  Ops:

    ``["a", uid, modseq, sub, fname, size, mtime, savedate]`` added,
    ``["f", uid, modseq, sub, fname]`` renamed (flags or new/ → cur/),
    ``["x", uid, modseq]`` expunged,
    ``["b"]`` a transaction begins,
    ``["e", new_ns, cur_ns, confirmed, uidvalidity, nextuid, modseq]`` it ends,
    ``["v", uidvalidity]`` UIDVALIDITY changed: every message is gone.
    """
    kind = op[0]
    if kind in ("a", "f") and (op[3] not in ("new", "cur") or "/" in op[4]):
        raise ValueError("bad file name in the index log")
    if kind == "a":
        _, uid, modseq, sub, fname, size, mtime, savedate = op
        state.records[uid] = IndexRecord(uid, fname.split(":", 1)[0], sub, fname, size, mtime,
                                         modseq, savedate)
        state.modseq = max(state.modseq, modseq)
        state.nextuid = max(state.nextuid, uid + 1)
        return ("a", uid)
    if kind == "f":
        _, uid, modseq, sub, fname = op
        rec = state.records.get(uid)
        if rec is not None:
            rec.sub, rec.fname = sub, fname
            rec.modseq = max(rec.modseq, modseq)
        state.modseq = max(state.modseq, modseq)
        return ("f", uid)
    if kind == "x":
        _, uid, modseq = op
        state.records.pop(uid, None)
        state.expunged.append((modseq, uid))
        state.modseq = max(state.modseq, modseq)
        return ("x", uid)
    if kind == "b":
        state.clean = False
        return None
    if kind == "e":
        _, new_ns, cur_ns, confirmed, uidvalidity, nextuid, modseq = op
        state.stamp = (new_ns, cur_ns)
        state.confirmed = bool(confirmed)
        state.uidvalidity = uidvalidity
        state.nextuid = max(state.nextuid, nextuid)
        state.modseq = max(state.modseq, modseq)
        state.clean = True
        return None
    if kind == "v":
        state.uidvalidity = op[1]
        state.records.clear()
        state.expunged.clear()
        state.vanished_floor = state.modseq
        return None
    raise ValueError(f"unknown index op {kind!r}")


def trim_expunged(state: IndexState) -> None:
    if len(state.expunged) > EXPUNGE_KEEP:
        cut = len(state.expunged) - EXPUNGE_KEEP
        state.vanished_floor = max(state.vanished_floor, state.expunged[cut - 1][0])
        del state.expunged[:cut]


class MailboxIndex:
    """The index files of one mailbox directory."""

    def __init__(self, mailbox_path: str):
        self.dir = mailbox_path
        base = os.path.join(mailbox_path, INDEX)
        self.path = base
        self.log_path = base + ".log"
        self.cache_path = base + ".cache"
        self.ceiling_path = base + ".modseq"
        self.lock_path = base + ".lock"
        self.log_id = ""
        self.log_ino = 0  # 0: no usable log (write a snapshot next)
        self.log_offset = 0  # bytes of the log already applied
        self.log_stamp: tuple[int, int, int] | None = None  # (ino, size, mtime_ns) seen
        self._lock_fd: int | None = None
        self._lock_depth = 0

    # -- locking ----------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes (flock), re-entrant within one."""
        if self._lock_depth == 0:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    # -- modseq ceiling -----------------------------------------------------

    def read_ceiling(self) -> int:
        try:
            with open(self.ceiling_path, "rb") as f:
                return int(f.read().strip() or b"0")
        except (FileNotFoundError, ValueError):
            return 0

    def raise_ceiling(self, modseq: int) -> int:
        """Persist a ceiling above ``modseq``; returns it."""
        ceiling = modseq + CEILING_STEP
        write_atomic(self.ceiling_path, b"%d\n" % ceiling)
        return ceiling

    # -- snapshot + log -----------------------------------------------------

    def log_identity(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime_ns) of the change log, or None if missing."""
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _seen(self, fd: int) -> None:
        st = os.fstat(fd)
        self.log_stamp = (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> IndexState | None:
        """Snapshot + log; None if missing or corrupt (rebuild)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        with no_gc():
            state = parse_snapshot(data)
        if state is None:
            return None
        log_id = state_log_id(data)
        self.log_id, self.log_ino, self.log_offset = log_id, 0, 0
        try:
            with open(self.log_path, "rb") as f:
                st = os.fstat(f.fileno())
                head = f.readline()
                if head.rstrip(b"\n") == b"L " + log_id.encode():
                    self.log_ino = st.st_ino
                    self.log_offset = len(head)
                    ops = self._read_ops(f)
                    for op in ops:
                        apply_op(state, op)
                    self._seen(f.fileno())
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, KeyError):
            return None
        return state

    def _read_ops(self, f) -> list[list]:
        """Complete, valid ops from the current position; advances
        ``log_offset`` past them.  Stops at the first torn/corrupt line."""
        f.seek(self.log_offset)
        data = f.read()
        ops: list[list] = []
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            op = decode_op(data[pos:nl])
            if op is None:
                break
            ops.append(op)
            pos = nl + 1
        self.log_offset += pos
        return ops

    def read_new(self) -> list[list] | None:
        """Ops appended by others since the last read; None if the log was
        replaced (compacted: another id) and the caller must :meth:`load`."""
        try:
            with open(self.log_path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.log_ino:
                    return None
                if f.readline().rstrip(b"\n") != b"L " + self.log_id.encode():
                    return None  # replaced by a file that got the same inode
                if st.st_size < self.log_offset:
                    return None
                ops = self._read_ops(f) if st.st_size > self.log_offset else []
                self._seen(f.fileno())
                return ops
        except FileNotFoundError:
            return None

    def append(self, ops: list[list]) -> None:
        """Append ops (caller holds the lock), fsync."""
        if not ops:
            return
        data = b"".join(encode_op(op) for op in ops)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        try:
            st = os.fstat(fd)
            if st.st_ino != self.log_ino:
                raise RuntimeError("index log replaced under the lock")
            if st.st_size != self.log_offset:  # a torn tail: cut it off
                os.ftruncate(fd, self.log_offset)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            self.log_offset += len(data)
            self._seen(fd)
        finally:
            os.close(fd)

    def write_snapshot(self, state: IndexState) -> None:
        """Compaction (caller holds the lock): a new snapshot and a new,
        empty change log with a fresh id."""
        log_id = uuid.uuid4().hex
        trim_expunged(state)
        header = {
            "uidvalidity": state.uidvalidity,
            "nextuid": state.nextuid,
            "modseq": state.modseq,
            "stamp": list(state.stamp) if state.stamp else None,
            "confirmed": state.confirmed and state.clean,
            "expunged": state.expunged,
            "floor": state.vanished_floor,
            "log": log_id,
        }
        recs = [r for r in sorted(state.records.values(), key=lambda r: r.uid)
                if "\n" not in r.fname]
        if len(recs) != len(state.records):  # unrepresentable names: rescan next time
            header["confirmed"] = False
        header["count"] = len(recs)
        names = "\n".join(r.fname for r in recs).encode("utf-8", "surrogateescape")
        nums = b"".join(_ROW.pack(r.uid, r.modseq, r.size, r.mtime, r.savedate, r.sub == "new")
                        for r in recs)
        body = b"".join([MAGIC, json.dumps(header, separators=(",", ":")).encode(), b"\n",
                         nums, names, b"\n"])
        body += f"END {_crc(body)} {len(recs)}\n".encode()
        tmp_log = f"{self.log_path}.{os.getpid()}.tmp"
        head = f"L {log_id}\n".encode()
        _write_file(tmp_log, head)
        write_atomic(self.path, body)
        os.rename(tmp_log, self.log_path)
        self.log_id = log_id
        ident = self.log_identity()
        self.log_ino = ident[0] if ident else 0
        self.log_offset = len(head)
        self.log_stamp = ident

    def remove(self) -> None:
        for path in (self.path, self.log_path, self.cache_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def state_log_id(data: bytes) -> str:
    header = data[len(MAGIC):data.index(b"\n", len(MAGIC))]
    return str(json.loads(header)["log"])


def parse_snapshot(data: bytes) -> IndexState | None:
    """A snapshot's state, or None if it is not a valid, complete one.

    Layout: magic line, JSON header line (``count`` messages), ``count``
    packed rows (:data:`_ROW`: uid, modseq, size, internal date, save date,
    in new/), the ``count`` file names joined by LF, LF, ``END <crc32 of
    everything before> <count>`` LF.
    """
    if not data.startswith(MAGIC) or not data.endswith(b"\n"):
        return None
    end = data.rfind(b"\nEND ", 0, len(data) - 1) + 1
    if end <= 0:
        return None
    try:
        _, crc, count_s = data[end:-1].decode().split(" ")
        if crc != _crc(data[:end]):
            return None
        hl = data.index(b"\n", len(MAGIC))
        header = json.loads(data[len(MAGIC):hl])
        count = int(header["count"])
        if count != int(count_s):
            return None
        state = IndexState(
            uidvalidity=int(header["uidvalidity"]),
            nextuid=int(header["nextuid"]),
            modseq=int(header["modseq"]),
            stamp=tuple(header["stamp"]) if header["stamp"] else None,  # type: ignore[arg-type]
            confirmed=bool(header["confirmed"]),
            expunged=[(int(m), int(u)) for m, u in header["expunged"]],
            vanished_floor=int(header["floor"]),
        )
        start = hl + 1
        names_at = start + count * _ROW.size
        rows = _ROW.iter_unpack(data[start:names_at])
        names = data[names_at:end - 1].decode("utf-8", "surrogateescape").split("\n") if count else []
        if len(names) != count:
            return None
        records = state.records
        rec = IndexRecord
        if any("/" in n for n in names):
            return None  # never a Maildir file name: not ours
        for (uid, modseq, size, mtime, savedate, new), fname in zip(rows, names, strict=True):
            records[uid] = rec(uid, fname.partition(":")[0], "new" if new else "cur", fname,
                               size, mtime, modseq, savedate)
    except (ValueError, KeyError, TypeError, UnicodeError, struct.error):
        return None
    return state


@dataclass
class CacheLimits:
    """Bounds of a mailbox's cache file, under Dovecot's setting names.

    ``mail_cache_max_size`` (Dovecot 2.3, default 1 GB): past it the file
    is emptied and filled again.  ``mail_cache_max_headers_count`` and
    ``mail_cache_max_header_name_length`` (Dovecot 2.4): header fields
    (``header.<name>`` keys) beyond that many distinct names per mailbox, or
    with longer names, are not cached (SEARCH reads the message instead).
    Dovecot's default count is 100; ours is lower, since a cached value
    costs more memory here.
    """

    max_size: int = 1024 * 1024 * 1024
    max_headers: int = 32
    max_header_name: int = 100

    @classmethod
    def from_settings(cls, settings: dict) -> CacheLimits:
        def number(name: str, default: int) -> int:
            raw = settings.get(name)
            try:
                return int(str(raw).strip()) if raw not in (None, "") else default
            except ValueError:
                return default

        return cls(_size(settings.get("mail_cache_max_size"), cls.max_size),
                   number("mail_cache_max_headers_count", cls.max_headers),
                   number("mail_cache_max_header_name_length", cls.max_header_name))


def _size(value: object, default: int) -> int:
    """``1G``, ``64 M``, ``65536`` → bytes; ``default`` if unset or invalid."""
    if isinstance(value, int):
        return value
    text = str(value or "").strip().lower().removesuffix("b").strip()
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    scale = units.get(text[-1:], 1)
    digits = text[:-1].strip() if text[-1:] in units else text
    return int(digits) * scale if digits.isdigit() else default


_PACKED = "\x01"


def _pack(value: object) -> object:
    """A list of strings (a cached header field) as one string in memory:
    a dict of strings is not tracked by the cyclic GC, so a big cache costs
    no GC time (lists and the dicts holding them would be walked)."""
    if isinstance(value, list) and all(isinstance(v, str) and "\x00" not in v for v in value):
        return _PACKED + "\x00".join(value) if value else _PACKED
    return value


def _unpack(value: object) -> object:
    if isinstance(value, str) and value.startswith(_PACKED):
        return value[1:].split("\x00") if len(value) > 1 else []
    return value


class CacheFile:
    """Append-only cached values, loaded lazily, within :class:`CacheLimits`."""

    def __init__(self, path: str, limits: CacheLimits | None = None):
        self.path = path
        self.limits = limits or CacheLimits()
        self.values: dict[int, dict[str, object]] | None = None
        self.uidvalidity = 0
        self.entries = 0
        self.size = 0
        self.header_ok = False
        self.headers: set[str] = set()  # distinct ``header.*`` keys held

    def _keep(self, key: str) -> str | None:
        """The interned key if it may be cached, else None."""
        if key.startswith("header."):
            if key not in self.headers:
                limits = self.limits
                if (len(self.headers) >= limits.max_headers
                        or (limits.max_header_name and len(key) - 7 > limits.max_header_name)):
                    return None
                self.headers.add(sys.intern(key))
        return sys.intern(key)

    def load(self, uidvalidity: int) -> dict[int, dict[str, object]]:
        if self.values is not None and self.uidvalidity == uidvalidity:
            return self.values
        self.values, self.uidvalidity, self.entries, self.size = {}, uidvalidity, 0, 0
        self.headers = set()
        self.header_ok = False
        try:
            with open(self.path, "rb") as f:
                data = f.read(self.limits.max_size + 1)
        except FileNotFoundError:
            return self.values
        if len(data) > self.limits.max_size:
            return self.values  # too big: rewritten (empty) on the next add
        head, _, rest = data.partition(b"\n")
        if head != b"C %d" % uidvalidity:
            return self.values  # another mailbox's: rewritten on the next add
        self.header_ok = True
        self.size = len(data)
        for line in rest.split(b"\n"):
            op = decode_op(line) if line else None
            if op is None or len(op) != 3 or not isinstance(op[1], str):
                continue
            uid, key, value = op
            kept = self._keep(key)
            if kept is None:
                continue
            self.values.setdefault(uid, {})[kept] = _pack(value)
            self.entries += 1
        return self.values

    def get(self, uidvalidity: int, uid: int, key: str) -> object | None:
        """One cached value (as it was added), or None."""
        return _unpack(self.load(uidvalidity).get(uid, {}).get(key))

    def items(self, uidvalidity: int) -> dict[int, dict[str, object]]:
        """Every cached value, by UID and key (a copy)."""
        return {uid: {k: _unpack(v) for k, v in kv.items()}
                for uid, kv in self.load(uidvalidity).items()}

    def add(self, uidvalidity: int, uid: int, key: str, value: object) -> None:
        values = self.load(uidvalidity)
        kept = self._keep(key)
        if kept is None:
            return
        line = encode_op([uid, kept, value])
        if self.header_ok and self.size + len(line) > self.limits.max_size:
            values.clear()  # full: start again (Dovecot purges a full cache)
            self.headers = set()
            self.rewrite(uidvalidity, set())
            kept = self._keep(key) or kept
        values.setdefault(uid, {})[kept] = _pack(value)
        if not self.header_ok:
            self.rewrite(uidvalidity, set(values))
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            self.rewrite(uidvalidity, set(values))
            return
        try:
            os.write(fd, line)  # one write: a torn line fails its checksum
        finally:
            os.close(fd)
        self.entries += 1
        self.size += len(line)

    def rewrite(self, uidvalidity: int, live: set[int]) -> None:
        """Compact: keep only values of ``live`` UIDs."""
        values = self.load(uidvalidity)
        for uid in [u for u in values if u not in live]:
            del values[uid]
        out = [b"C %d\n" % uidvalidity]
        n = 0
        for uid, kv in values.items():
            for key, value in kv.items():
                out.append(encode_op([uid, key, _unpack(value)]))
                n += 1
        data = b"".join(out)
        write_atomic(self.path, data)
        self.entries = n
        self.size = len(data)
        self.header_ok = True


__all__ = ["MailboxIndex", "IndexState", "IndexRecord", "CacheFile", "apply_op", "encode_op",
           "decode_op", "parse_snapshot", "INDEX", "CacheLimits", "settle", "pause_gc"]
