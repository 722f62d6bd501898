"""mbox storage as Dovecot keeps it (``mbox:~/mail:INBOX=/var/mail/%u``).

Layout (Dovecot's LAYOUT=fs): INBOX is the file named by ``INBOX=``
(default ``<root>/inbox``); folder ``A/B`` is the file ``<root>/A/B`` and
``A`` a directory (a ``\\Noselect`` parent).  Subscriptions are in
``<root>/.subscriptions`` (Dovecot's format), the private index of a
mailbox in ``<root>/.imap/INBOX/`` or ``<root>/A/.imap/B/`` (or under
``INDEX=``), next to Dovecot's own ``dovecot.index*`` and named so they
never collide: ``dovecot.index.pydovecot-mbox`` (JSON: UIDVALIDITY, next
UID, HIGHESTMODSEQ, per-UID modseqs, the first UID still \\Recent, the
mailbox GUID) and ``dovecot.index.pydovecot.cache`` (parsed data).  The
index is a cache: lost, it is rebuilt from the file (modseqs restart).

The mbox file is the truth, in Dovecot's headers: ``X-IMAPbase:
<uidvalidity> <uidnext> <keywords…>`` in the first message, ``X-UID``,
``Status`` (``R`` = \\Seen, ``O`` = not \\Recent), ``X-Status`` (``A`` F``
``T`` ``D`` = \\Answered \\Flagged \\Deleted \\Draft), ``X-Keywords``
and ``Content-Length``; those headers are hidden from clients (as
Dovecot's ``mbox_hide_headers``).  Messages are separated by a
``From <sender>  <ctime date>`` line after an empty line.  Like Dovecot we
write no ``>From`` escaping: ``Content-Length`` delimits our messages; a
message without a valid one (another MDA's) ends at the next empty line
followed by a well-formed ``From_`` line, and ``>From`` lines are kept
as they are (Dovecot does not unescape either).

Locking as Dovecot's defaults: reads take an fcntl read lock
(``mbox_read_locks = fcntl``), writes ``<mbox>.lock`` (dotlock, stale
after ``mbox_dotlock_change_timeout`` or when its owner on this host is
gone) then an fcntl write lock (``mbox_write_locks = dotlock fcntl``;
``dotlock_try``, ``lockf`` and ``flock`` are honoured too).  The fcntl
locks are Linux's open-file-description locks, which conflict with
Dovecot's classic ones but survive this process closing another
descriptor of the file.  A held lock is never waited for on the reactor
(one mail process may serve many users): the answer is retried on the
reactor every 50 ms until ``mbox_lock_timeout``, then fails (``INUSE``).
Where the spool directory is not writable (``/var/mail`` without
Dovecot's ``mail_privileged_group``) the dotlock is skipped with one
warning.

Crash safety: APPEND/COPY add at the end of the file in place (under the
write locks, fsync; on an error the file is truncated back), so earlier
messages are never touched.  STORE writes the new ``Status``/``X-Status``/
``X-Keywords`` block over the old one when it fits its padding (as
Dovecot's in-place sync: one small pwrite of the same length, no byte
outside the block moves, so even a torn write can garble only that
message's state headers, never lose a message).  EXPUNGE, a STORE
that does not fit, and assigning UIDs to messages another MDA delivered
rewrite the whole file: a temp file next to it, fsync, ``rename()`` over
it, fsync of the directory, all under the locks.  At every instant the
path names a complete old or complete new file, so a crash never loses an
acknowledged message (Dovecot's in-place rewrite needs a careful ordering
to get there; the rename costs a full copy and needs write access to the
directory, which the dotlock needs anyway).  Where the directory is not
writable the new image goes to a journal in the private index first
(fsync), then over the file; a crash in between is finished from the
journal under the next write lock.  After taking the locks the inode is
checked against the path, so a writer that waited on the old inode
retries on the new one.  Offsets into a file are trusted only while it is
unchanged (or renamed away).  Appending and in-place STOREs parse nothing
when the file is as this process last read it (2000 appends: 9 s, fsync
bound; a STORE in a 2000-message mbox: 10 ms; a rewrite parses the file
twice and copies it once).

Trusts its caller (the mail process, already the user's uid); validates
every mailbox name and keeps every path inside the root; trusts the file
only as data (bad headers are ignored, bad UIDs are reassigned).
"""

from __future__ import annotations

import bisect
import calendar
import datetime
import errno
import fcntl
import functools
import io
import itertools
import json
import os
import re
import shutil
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

from pydovecot.config.settings import parse_time
from pydovecot.log import sanitize
from pydovecot.storage import attributes as A
from pydovecot.storage import names as N
from pydovecot.storage import search as S
from pydovecot.storage.deferred import answers
from pydovecot.storage.index import CacheFile, CacheLimits
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
    StorageError,
    SyncResult,
)
from pydovecot.storage.subscriptions import Subscriptions
from pydovecot.storage.uidlist import Dotlock, LockTimeout, write_atomic

log = Logger()

INDEX_DIR = ".imap"
INDEX_FILE = "dovecot.index.pydovecot-mbox"
CACHE_FILE = "dovecot.index.pydovecot.cache"
SUBSCRIPTIONS = ".subscriptions"
#: headers Dovecot keeps its state in and hides from clients
HIDDEN = frozenset({b"x-imapbase", b"x-imap", b"x-uid", b"status", b"x-status",
                    b"x-keywords", b"content-length"})
#: Dovecot's mbox_xstatus_flags: T is \\Draft, D is \\Deleted
XSTATUS = (("A", "\\Answered"), ("F", "\\Flagged"), ("T", "\\Draft"), ("D", "\\Deleted"))
_CANON = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"), 1)}
_FROM_DATE = re.compile(
    rb"(?:[A-Za-z]{3},? +)?([A-Za-z]{3}) +(\d{1,2}) +(\d{1,2}):(\d{2})(?::(\d{2}))?"
    rb"(?: +([A-Z]{3,5}|[+-]\d{4}))? +(\d{4})(?: +[+-]\d{4})?\s*$")


_DOT = "\ue000"  # stands for "." while names.normalize (Maildir++'s rules) checks


def _normalize(name: str, for_create: bool = False) -> str:
    """names.normalize, but with ``.`` allowed inside a component (mbox
    names are paths, as in Dovecot: ``v1.2``); a component that begins
    with ``.`` or ends with ``.lock`` is refused (index dirs, dotlocks)."""
    if not isinstance(name, str):
        raise MailboxNameError("Mailbox name must be text")
    if _DOT in name:
        raise MailboxNameError("Mailbox name contains invalid characters")
    name = N.normalize(name.replace(".", _DOT), for_create).replace(_DOT, ".")
    for part in name.split(N.SEP):
        if part.startswith(".") or part.lower().endswith(".lock"):
            raise MailboxNameError(f"Mailbox name component must not begin with '.' "
                                   f"or end with '.lock': {name}")
    return name


def canon_flag(flag: str) -> str:
    return _CANON.get(flag.lower(), flag)


def parse_from_line(line: bytes) -> tuple[bytes, float] | None:
    """``From sender  Wed Jan 01 08:00:00 2020`` → (sender, UTC seconds);
    None when the line is not a well-formed From_ line."""
    if not line.startswith(b"From "):
        return None
    rest = line[5:].rstrip(b"\r")
    sender, _, date = rest.strip().partition(b" ")
    m = _FROM_DATE.search(rest)
    if m is None:
        return None
    mon = _MONTHS.get(m.group(1).decode("ascii", "replace").capitalize())
    if mon is None:
        return None
    try:
        ts = calendar.timegm((int(m.group(7)), mon, int(m.group(2)), int(m.group(3)),
                              int(m.group(4)), int(m.group(5) or 0), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return (sender if m.start() > len(sender) else b"MAILER-DAEMON"), float(ts)


def from_line(sender: bytes, when: float) -> bytes:
    """Dovecot's From_ line: sender, two spaces, asctime of the UTC date."""
    t = time.gmtime(when)
    return b"From %s  %s" % (sender, time.strftime("%a %b %d %H:%M:%S %Y", t).encode())


def _crlf_size(data: bytes) -> int:
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def _split_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    """Header block → [(lowercase name, whole field bytes incl. continuations)]."""
    fields: list[tuple[bytes, bytes]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
        else:
            fields.append((line.split(b":", 1)[0].strip().lower(), line))
    return fields


def _value(raw: bytes) -> bytes:
    return raw.split(b":", 1)[1].strip() if b":" in raw else b""


@dataclass
class _Msg:
    """One message of the file as parsed."""

    uid: int
    flags: set[str]
    internaldate: float
    sender: bytes
    headers: bytes  # visible header block, without the empty line
    body_off: int
    body_len: int
    size: int  # RFC822.SIZE of headers + empty line + body
    old: bool = False  # Status: O
    src: BinaryIO | None = None  # the file (inode) the body offsets refer to
    modseq: int = 1
    region_off: int = 0  # state_region() in the file (0: not in our layout)
    region_len: int = 0


@dataclass
class _Parsed:
    uidvalidity: int = 0
    uidnext: int = 1
    keywords: list[str] = field(default_factory=list)
    msgs: list[_Msg] = field(default_factory=list)
    dirty: bool = False  # UIDs or X-IMAPbase must be written
    src: BinaryIO | None = None  # the file the offsets refer to


def parse_mbox(data: bytes, base: int = 0) -> tuple[list[dict], bool]:
    """Split an mbox image into raw message dicts (offsets + ``base``).

    Returns (messages, well-formed start).  Each dict has ``from``,
    ``fields`` (list of (name, raw)), ``body_off``, ``body_len``."""
    out: list[dict] = []
    if not data:
        return out, True
    pos = 0
    if not data.startswith(b"From "):
        return out, False
    n = len(data)
    while pos < n:
        eol = data.find(b"\n", pos)
        if eol < 0:
            eol = n
        fline = data[pos:eol]
        hstart = eol + 1
        if hstart >= n or data[hstart:hstart + 1] == b"\n":
            hend = hstart
        else:
            i = data.find(b"\n\n", hstart)
            hend = n if i < 0 else i + 1
        fields = _split_headers(data[hstart:hend])
        bstart = min(hend + 1, n)
        end = nxt = None
        for name, raw in fields:
            if name == b"content-length":
                v = _value(raw)
                if v.isdigit():
                    e = bstart + int(v)
                    if e == n or (n - e == 1 and data[e] == 0x0A):
                        end, nxt = e, n
                    elif data[e:e + 6] == b"\nFrom ":
                        end, nxt = e, e + 1
                    elif e < n and data.find(b"\nFrom ", e) < 0:
                        end, nxt = e, n  # junk at the end (as Dovecot: ignored)
                break
        if end is None:
            search = bstart - 1
            while True:
                i = data.find(b"\n\nFrom ", search)
                if i < 0:
                    end = n - 1 if data.endswith(b"\n\n") and n - 1 >= bstart else n
                    nxt = n
                    break
                le = data.find(b"\n", i + 2)
                if parse_from_line(data[i + 2:le if le >= 0 else n]) is not None:
                    end, nxt = i + 1, i + 2
                    break
                search = i + 1
        offs, off = [], base + hstart
        for _name, raw in fields:
            offs.append(off)
            off += len(raw)
        out.append({"from": fline, "fields": fields, "offs": offs, "body_off": base + bstart,
                    "body_len": max(0, end - bstart),
                    "body_size": _crlf_size(data[bstart:end])})  # no copy kept
        pos = nxt
    return out, True


def build(raws: list[dict], known: dict | None) -> _Parsed:
    """Interpret Dovecot's headers; ``known`` is the index (uidvalidity, uidnext)."""
    p = _Parsed()
    known = known or {}
    last = 0
    for i, r in enumerate(raws):
        if i == 0 and any(name == b"x-imap" for name, _raw in r["fields"]):
            # UW-IMAP's pseudo message ("DON'T DELETE THIS MESSAGE"): its
            # X-IMAP holds the state; hidden, as Dovecot hides it, and
            # replaced by X-IMAPbase in the first message at a rewrite
            for name, raw in r["fields"]:
                parts = _value(raw).split() if name == b"x-imap" else []
                if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                    p.uidvalidity, p.uidnext = int(parts[0]), int(parts[1]) + 1
                    p.keywords = [k.decode("utf-8", "replace") for k in parts[2:]]
            continue
        uid = 0
        flags: set[str] = set()
        old = False
        visible = []
        for name, raw in r["fields"]:
            if name not in HIDDEN:
                visible.append(raw)
                continue
            v = _value(raw)
            if name == b"x-imapbase" and i == 0:
                parts = v.split()
                if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                    # "last used UID" (Dovecot's wiki), i.e. UIDNEXT - 1
                    p.uidvalidity, p.uidnext = int(parts[0]), int(parts[1]) + 1
                    p.keywords = [k.decode("utf-8", "replace") for k in parts[2:]]
            elif name == b"x-uid" and v.isdigit():
                uid = int(v)
            elif name == b"status":
                if b"R" in v:
                    flags.add("\\Seen")
                old = b"O" in v
            elif name == b"x-status":
                s = v.decode("ascii", "replace")
                flags.update(f for ch, f in XSTATUS if ch in s)
            elif name == b"x-keywords":
                flags.update(k.decode("utf-8", "replace") for k in v.replace(b",", b" ").split())
        parsed = parse_from_line(r["from"])
        sender, when = parsed if parsed else (b"MAILER-DAEMON", 0.0)
        headers = b"".join(visible)
        m = _Msg(uid, flags, when, sender, headers, r["body_off"], r["body_len"],
                 _crlf_size(headers) + 2 + r["body_size"], old)
        names = [name for name, _raw in r["fields"]]
        for j in range(len(names) - 2):
            if names[j:j + 3] == [b"status", b"x-status", b"x-keywords"]:
                m.region_off = r["offs"][j]
                m.region_len = sum(len(raw) for _n, raw in r["fields"][j:j + 3])
                break
        p.msgs.append(m)
    if not p.uidvalidity:
        p.uidvalidity = known.get("uidvalidity") or 0
        if p.msgs:
            p.dirty = True
    p.uidnext = max(p.uidnext, known.get("uidnext", 1) if known.get("uidvalidity") == p.uidvalidity else 1)
    for m in p.msgs:
        if m.uid <= last or (m.uid == 0):
            m.uid = 0
        else:
            last = m.uid
    p.uidnext = max(p.uidnext, last + 1)
    for m in p.msgs:
        if m.uid == 0:
            m.uid = p.uidnext
            p.uidnext += 1
            p.dirty = True
    # UIDs out of order after reassignment would break the view: keep sorted
    if any(a.uid > b.uid for a, b in itertools.pairwise(p.msgs)):
        p.dirty = True
        for m in p.msgs:
            m.uid = 0
        for m in p.msgs:
            m.uid = p.uidnext
            p.uidnext += 1
    return p


#: spaces after X-Keywords, room for flag changes written in place (Dovecot
#: pads the same header)
KEYWORD_PAD = 50


def state_region(flags: set[str], old: bool, length: int = 0) -> bytes:
    """``Status``, ``X-Status`` and ``X-Keywords`` (padded with spaces to
    ``length``, or by KEYWORD_PAD): the block a flag change rewrites."""
    st = (b"R" if "\\Seen" in flags else b"") + (b"O" if old else b"")
    xs = "".join(ch for ch, f in XSTATUS if f in flags).encode()
    kws = " ".join(sorted(f for f in flags if not f.startswith("\\"))).encode("utf-8")
    out = b"Status: " + st + b"\nX-Status: " + xs + b"\nX-Keywords: " + kws
    pad = (length - len(out) - 1) if length else KEYWORD_PAD
    return out + b" " * max(pad, 0) + b"\n"


def status_headers(m: _Msg, first: _Parsed | None, keywords: list[str] | None = None) -> bytes:
    """The state headers Dovecot writes for a message (X-IMAPbase in the first)."""
    out = b""
    if first is not None:
        out += b"X-IMAPbase: %d %010d" % (first.uidvalidity, first.uidnext - 1)
        for k in (keywords if keywords is not None else first.keywords):
            out += b" " + k.encode("utf-8")
        out += b"\n"
    out += b"X-UID: %d\n" % m.uid
    out += state_region(m.flags, m.old)
    out += b"Content-Length: %d\n" % m.body_len
    return out


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class LockSettings:
    """Dovecot's mbox_* lock settings (seconds)."""

    lock_timeout: float = 300.0
    dotlock_change_timeout: float = 120.0
    #: mbox_read_locks / mbox_write_locks: dotlock, dotlock_try, fcntl,
    #: flock, lockf (fcntl and lockf are the same POSIX lock on Linux)
    read: frozenset[str] = frozenset({"fcntl"})
    write: frozenset[str] = frozenset({"dotlock", "fcntl"})


LOCK_KINDS = frozenset({"dotlock", "dotlock_try", "fcntl", "flock", "lockf"})


_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)


class _Busy(Exception):
    """A lock is held by someone else: try again later."""


#: seconds between two tries of a held lock
RETRY_INTERVAL = 0.05


def retrying(method: Callable[..., object]) -> Callable[..., defer.Deferred]:
    """Answer with a Deferred; while the mbox is locked by someone else,
    try again on the reactor (never blocking it: one mail process may
    serve many users) until ``mbox_lock_timeout``, then fail as Dovecot
    does.  ``method.now`` is the undecorated one."""

    @functools.wraps(method)
    def wrapper(self: object, *args: object, **kwargs: object) -> defer.Deferred:
        storage = self if isinstance(self, MboxStorage) else self.storage  # type: ignore[attr-defined]
        deadline = time.monotonic() + storage.locks.lock_timeout
        d: defer.Deferred = defer.Deferred()

        def attempt() -> None:
            try:
                result = method(self, *args, **kwargs)
            except _Busy:
                if time.monotonic() >= deadline:
                    err = StorageError("Timeout while waiting for the mbox lock")
                    err.code = "INUSE"
                    d.errback(failure.Failure(err))
                else:
                    storage.clock.callLater(RETRY_INTERVAL, attempt)
                return
            except Exception:
                d.errback(failure.Failure())
                return
            d.callback(result)

        attempt()
        return d

    wrapper.now = method  # type: ignore[attr-defined]
    return wrapper


def _fcntl_lock(fd: int, kind: int, deadline: float) -> None:
    """A whole-file fcntl lock, polled until ``deadline``.  Linux's
    open-file-description locks where available: they conflict with the
    classic fcntl locks Dovecot takes, but are not dropped when this
    process closes another descriptor of the same file."""
    delay = 0.002
    ltype = fcntl.F_WRLCK if kind == fcntl.LOCK_EX else fcntl.F_RDLCK
    while True:
        try:
            if _OFD_SETLK is not None:
                fcntl.fcntl(fd, _OFD_SETLK, struct.pack("hhqqi4x", ltype, os.SEEK_SET, 0, 0, 0))
            else:
                fcntl.lockf(fd, kind | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            raise LockTimeout(errno.EAGAIN, "Timeout waiting for fcntl lock")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class _Box:
    """Per-mailbox state shared by every view in this process."""

    def __init__(self, storage: MboxStorage, name: str, path: str, index_dir: str):
        self.storage = storage
        self.name = name
        self.path = path
        self.index_dir = index_dir
        self.msgs: dict[int, _Msg] = {}
        self.uids: list[int] = []
        self.uidvalidity = 0
        self.uidnext = 1
        self.keywords: list[str] = []
        self.modseq = 1
        self.log: list[tuple[int, str, int, int, _Msg | None]] = []
        self.expunged: list[tuple[int, int]] = []
        self.pending_recent: set[int] = set()
        self.views: list[MboxMailbox] = []
        self.stamp: tuple[int, int, int] | None = None
        self.src: BinaryIO | None = None
        self.idx = self._load_index()
        self.idx_mtime = self._index_mtime()
        self.modseq = int(self.idx.get("highestmodseq", 1))
        self.cache = CacheFile(os.path.join(index_dir, CACHE_FILE), storage.cache_limits)

    # -- the private index ---------------------------------------------

    def _load_index(self) -> dict:
        try:
            with open(os.path.join(self.index_dir, INDEX_FILE), "rb") as f:
                data = json.loads(f.read(1 << 24))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _index_mtime(self) -> int:
        try:
            return os.stat(os.path.join(self.index_dir, INDEX_FILE)).st_mtime_ns
        except OSError:
            return 0

    def _reload_recent(self) -> None:
        """Another process may have taken \\Recent (its first_recent moved)."""
        mtime = self._index_mtime()
        if mtime == self.idx_mtime:
            return
        self.idx_mtime = mtime
        first = int(self._load_index().get("first_recent", 1))
        if first > int(self.idx.get("first_recent", 1)):
            self.idx["first_recent"] = first
            self.pending_recent = {u for u in self.pending_recent if u >= first}

    def save_index(self) -> None:
        self.idx.update(uidvalidity=self.uidvalidity, uidnext=self.uidnext,
                        highestmodseq=self.modseq,
                        modseqs={str(u): m.modseq for u, m in self.msgs.items() if m.modseq > 1})
        try:
            os.makedirs(self.index_dir, 0o700, exist_ok=True)
            # a cache (the mbox is the truth): renamed into place, not fsynced
            path = os.path.join(self.index_dir, INDEX_FILE)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as out:
                out.write(json.dumps(self.idx).encode())
            os.replace(tmp, path)
            self.idx_mtime = self._index_mtime()
        except OSError as e:
            log.warn("{path}: index not written: {err}", path=self.index_dir, err=e)

    def guid(self, create: bool) -> str | None:
        g = self.idx.get("guid")
        if g is None and create:
            g = self.idx["guid"] = uuid.uuid4().hex
            self.save_index()
        return g

    # -- locks ---------------------------------------------------------

    @contextmanager
    def locked(self, write: bool) -> Iterator[BinaryIO | None]:
        """The file open and locked (None when it does not exist)."""
        ls = self.storage.locks
        kinds = ls.write if write else ls.read
        deadline = time.monotonic()  # one try: the caller retries later (see retrying)
        dot = None
        if kinds & {"dotlock", "dotlock_try"}:
            dot = Dotlock(self.path, stale=ls.dotlock_change_timeout, wait=0.0)
            try:
                dot.acquire()
            except LockTimeout:
                raise _Busy("the mbox dotlock is held") from None
            except PermissionError:
                # /var/mail without Dovecot's mail_privileged_group: the other locks only
                dot = None
                if not self.storage.warned_dotlock:
                    self.storage.warned_dotlock = True
                    log.warn("{path}: can't create the mbox dotlock (no write access to "
                             "the directory): using the other locks only",
                             path=self.path + ".lock")
            except OSError as e:
                if "dotlock" in kinds:
                    raise StorageError(f"Can't create the mbox dotlock: {e.strerror}") from e
                dot = None  # dotlock_try: go on without
        try:
            for _ in range(10):
                try:
                    f = open(self.path, "r+b" if write else "rb")
                except FileNotFoundError:
                    yield None
                    return
                try:
                    if kinds & {"fcntl", "lockf"}:
                        try:
                            _fcntl_lock(f.fileno(), fcntl.LOCK_EX if write else fcntl.LOCK_SH,
                                        deadline)
                        except LockTimeout:
                            raise _Busy("the mbox is fcntl-locked") from None
                    if "flock" in kinds:
                        try:
                            fcntl.flock(f.fileno(), (fcntl.LOCK_EX if write else fcntl.LOCK_SH)
                                        | fcntl.LOCK_NB)
                        except BlockingIOError:
                            raise _Busy("the mbox is flock-locked") from None
                    try:
                        same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:  # replaced while we waited: lock the new one
                        continue
                    if write:
                        self.repair(f)
                    yield f
                    return
                finally:
                    f.close()
            raise StorageError("mbox file keeps being replaced")
        finally:
            if dot is not None:
                dot.release()

    # -- reading -------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def deleted(self) -> bool:
        return not os.path.isfile(self.path)

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if it changed (another process, a delivery)."""
        self._reload_recent()
        if not force and self.stamp is not None and self._stat() == self.stamp:
            return
        if os.path.exists(self.journal):
            with self.locked(True) as f:
                pass
        with self.locked(False) as f:
            if f is None:
                raise MailboxNotFound(f"Mailbox doesn't exist: {self.name}")
            p, data = self._read(f)
        if p.dirty:
            with self.locked(True) as f:
                if f is None:
                    raise MailboxNotFound(f"Mailbox doesn't exist: {self.name}")
                p, data = self._read(f)
                if p.dirty:
                    self._rewrite(f, p, data)
                    return
        self._adopt(p)

    def _read(self, f: BinaryIO) -> tuple[_Parsed, bytes]:
        f.seek(0)
        data = f.read()
        raws, ok = parse_mbox(data)
        if not ok:
            raise StorageError(f"mbox file {self.name} doesn't begin with a From line")
        p = build(raws, self.idx if not self.uidvalidity else
                  {"uidvalidity": self.uidvalidity, "uidnext": self.uidnext})
        if not p.uidvalidity:
            p.uidvalidity = self.storage.next_uidvalidity()
            p.dirty = p.dirty or bool(p.msgs)
        src = open(self.path, "rb")
        if os.fstat(src.fileno()).st_ino != os.fstat(f.fileno()).st_ino:
            src.close()
            src = os.fdopen(os.dup(f.fileno()), "rb")
        st = os.fstat(f.fileno())
        src.stamp = (st.st_ino, st.st_size, st.st_mtime_ns)  # type: ignore[attr-defined]
        p.src = src
        for m in p.msgs:
            m.src = src
        st = os.fstat(f.fileno())
        self._read_stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        return p, data

    def _adopt(self, p: _Parsed, origin: int = 0) -> None:
        """Make the parsed file the state; log what changed since the last."""
        if self.uidvalidity and p.uidvalidity != self.uidvalidity:
            for uid in list(self.uids):  # a new mailbox under the same name
                self._bump("x", uid, origin, self.msgs[uid])
                self.expunged.append((self.modseq, uid))
            self.msgs, self.uids = {}, []
            self.idx.pop("modseqs", None)
            self.idx.pop("first_recent", None)
        fresh = not self.uidvalidity
        first_recent = int(self.idx.get("first_recent", 1))
        stored = self.idx.get("modseqs", {}) if fresh else {}
        new_msgs = {m.uid: m for m in p.msgs}
        for uid in self.uids:
            if uid not in new_msgs:
                self._bump("x", uid, origin, self.msgs[uid])
                self.expunged.append((self.modseq, uid))
        for m in p.msgs:
            old = self.msgs.get(m.uid)
            if old is not None:
                m.modseq = old.modseq
                if old.flags != m.flags:
                    m.modseq = self._bump("f", m.uid, origin, m)
            else:
                m.modseq = int(stored.get(str(m.uid), 1)) if fresh else self._bump("a", m.uid, origin, m)
                if not m.old and m.uid >= first_recent:
                    self.pending_recent.add(m.uid)
        self.msgs = new_msgs
        self.uids = [m.uid for m in p.msgs]
        self.pending_recent &= set(self.uids)
        self.uidvalidity = p.uidvalidity
        self.uidnext = max(p.uidnext, self.uidnext if not fresh else 1)
        kws = list(p.keywords)
        for m in p.msgs:
            for f in sorted(m.flags):
                if not f.startswith("\\") and f not in kws:
                    kws.append(f)
        self.keywords = kws
        self.stamp = self._read_stamp
        self.src = p.src
        self.save_index()

    def _bump(self, kind: str, uid: int, origin: int, m: _Msg | None) -> int:
        self.modseq += 1
        self.log.append((self.modseq, kind, uid, origin, m))
        return self.modseq

    # -- writing -------------------------------------------------------

    def _rewrite(self, f: BinaryIO, p: _Parsed, data: bytes, origin: int = 0) -> None:
        """Write ``p`` (bodies from ``data``, the locked file's image).

        Where the mbox's directory is writable: a temp file next to it,
        fsync, rename over the mbox, fsync of the directory.  Where it is
        not (``/var/mail`` without Dovecot's mail_privileged_group): the
        new image goes to a journal in the private index first (fsync),
        then over the file in place (fsync, truncate); a crash in between
        is repaired from the journal under the next write lock."""
        p.keywords = _keywords_of(p)
        blob = b"".join(
            from_line(m.sender, m.internaldate) + b"\n" + m.headers
            + status_headers(m, p if i == 0 else None) + b"\n"
            + data[m.body_off:m.body_off + m.body_len] + b"\n"
            for i, m in enumerate(p.msgs))
        directory = os.path.dirname(self.path)
        if os.access(directory, os.W_OK):
            self._replace(f, blob, directory)
        else:
            self._overwrite(f, blob, len(data))
        with open(self.path, "rb") as g:
            p2, _ = self._read(g)
        self._adopt(p2, origin)

    def _replace(self, f: BinaryIO, blob: bytes, directory: str) -> None:
        tmp = os.path.join(directory, f".{os.path.basename(self.path)}.{os.getpid()}."
                           f"{uuid.uuid4().hex[:8]}.tmp")
        st = os.fstat(f.fileno())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
        try:
            try:
                os.fchown(fd, -1, st.st_gid)
            except OSError:
                pass
            _write_all(fd, blob, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_dir(directory)

    @property
    def journal(self) -> str:
        return os.path.join(self.index_dir, INDEX_FILE + ".journal")

    def _overwrite(self, f: BinaryIO, blob: bytes, old_len: int) -> None:
        os.makedirs(self.index_dir, 0o700, exist_ok=True)
        write_atomic(self.journal, b"PYMBOXJ1 %d %d\n" % (old_len, len(blob)) + blob)
        _write_all(f.fileno(), blob, 0)
        os.ftruncate(f.fileno(), len(blob))
        os.fsync(f.fileno())
        os.unlink(self.journal)

    def repair(self, f: BinaryIO) -> None:
        """Finish an in-place rewrite a crash interrupted (under the write
        locks): the journal's image, then whatever was appended after."""
        try:
            with open(self.journal, "rb") as j:
                head = j.readline().split()
                blob = j.read()
        except FileNotFoundError:
            return
        if len(head) != 3 or head[0] != b"PYMBOXJ1" or int(head[2]) != len(blob):
            os.unlink(self.journal)  # torn before it was complete: the file is intact
            return
        old_len = int(head[1])
        f.seek(0)
        data = f.read()
        if data[:len(blob)] == blob and (len(data) == len(blob) or data[len(blob):len(blob) + 5] == b"From "):
            os.unlink(self.journal)
            return
        log.warn("{name}: finishing an interrupted mbox rewrite", name=sanitize(self.name))
        tail = data[old_len:] if len(data) > old_len else b""
        _write_all(f.fileno(), blob + tail, 0)
        os.ftruncate(f.fileno(), len(blob) + len(tail))
        os.fsync(f.fileno())
        os.unlink(self.journal)

    def mutate(self, change: Callable[[_Parsed], bool], origin: int) -> None:
        """Under the write locks: re-read, apply ``change`` (True = write)."""
        with self.locked(True) as f:
            if f is None:
                raise MailboxNotFound(f"Mailbox doesn't exist: {self.name}")
            st = os.fstat(f.fileno())
            if self.stamp != (st.st_ino, st.st_size, st.st_mtime_ns):
                p, data = self._read(f)
                self._adopt(p)  # others' changes first, logged as theirs
            p, data = self._read(f)
            for m in p.msgs:
                m.old = m.old or m.uid not in self.pending_recent
            if change(p) or p.dirty:
                self._rewrite(f, p, data, origin)

    def store_in_place(self, uids: list[int], given: set[str], mode: str,
                       unchangedsince: int | None, failed: list[int], origin: int) -> bool:
        """Flag changes written over each message's padded state headers,
        as Dovecot does (O(1), no copy of the file); False when the file
        changed since it was read or a new block does not fit (the caller
        rewrites the file instead).  Each block is one pwrite of a few
        bytes inside lines the reader parses either way."""
        with self.locked(True) as f:
            if f is None:
                raise MailboxNotFound(f"Mailbox doesn't exist: {self.name}")
            st = os.fstat(f.fileno())
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self.stamp or self.src is None:
                return False
            plan = []
            for uid in uids:
                m = self.msgs.get(uid)
                if m is None:
                    continue
                if unchangedsince is not None and m.modseq > unchangedsince:
                    failed.append(uid)
                    continue
                new = m.flags | given if mode == "+" else m.flags - given if mode == "-" else set(given)
                if new == m.flags:
                    continue
                if not m.region_len or m.src is not self.src:
                    return False
                old = m.old or uid not in self.pending_recent
                block = state_region(new, old, m.region_len)
                if len(block) != m.region_len:
                    return False
                plan.append((m, new, old, block))
            if not plan:
                return True
            fd = f.fileno()
            for m, _new, _old, block in plan:
                _write_all(fd, block, m.region_off)
            os.fsync(fd)
            st = os.fstat(fd)
            self.stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            self.src.stamp = self.stamp  # type: ignore[attr-defined]  # no offset moved
            for m, new, old, _block in plan:
                m.flags, m.old = new, old
                m.modseq = self._bump("f", m.uid, origin, m)
            for m, *_rest in plan:
                for k in sorted(m.flags):
                    if not k.startswith("\\") and k not in self.keywords:
                        self.keywords.append(k)
            self.save_index()
            return True

    def append_raw(self, items: list[tuple[bytes, bytes, float, set[str]]]) -> list[int]:
        """Append messages ((headers, body, internaldate, flags), LF ends) at
        the end of the file in place; their UIDs.  The file is parsed only
        when it changed since this process last read it."""
        for _ in range(3):
            with self.locked(True) as f:
                if f is None:
                    raise MailboxNotFound(f"Mailbox doesn't exist: {self.name}")
                st = os.fstat(f.fileno())
                if self.stamp != (st.st_ino, st.st_size, st.st_mtime_ns) or self.src is None:
                    p, data = self._read(f)
                    if p.dirty:  # UIDs first (another MDA's messages), then ours
                        self._rewrite(f, p, data)
                        continue
                    self._adopt(p)
                return self._append_locked(f, items)
        raise StorageError(f"mbox file {self.name} keeps changing")

    def _append_locked(self, f: BinaryIO,
                       items: list[tuple[bytes, bytes, float, set[str]]]) -> list[int]:
        """Under the write locks, with the state matching the file."""
        assert self.stamp is not None and self.src is not None
        fd = f.fileno()
        size = self.stamp[1]
        tail = os.pread(fd, 2, max(0, size - 2)) if size else b""
        if not size or tail == b"\n\n":
            prefix = b""
        elif tail.endswith(b"\n"):
            prefix = b"\n"
        else:
            prefix = b"\n\n"
        kws = list(self.keywords)
        for *_rest, flags in items:
            kws += [k for k in sorted(flags) if not k.startswith("\\") and k not in kws]
        uidnext = self.uidnext
        last = uidnext + len(items)
        chunks = [prefix]
        pos = size + len(prefix)
        new: list[_Msg] = []
        for i, (headers, body, when, flags) in enumerate(items):
            m = _Msg(uidnext + i, set(flags), when, self.storage.sender_of(headers), headers,
                     0, len(body), _crlf_size(headers) + 2 + _crlf_size(body))
            first = _Parsed(self.uidvalidity, last, kws) if not size and i == 0 else None
            sh = status_headers(m, first, kws)
            start = len(from_line(m.sender, when)) + 1 + len(headers)
            head = from_line(m.sender, when) + b"\n" + headers + sh + b"\n"
            m.region_off = pos + start + sh.index(b"Status: ")
            m.region_len = len(state_region(m.flags, m.old))
            m.body_off = pos + len(head)
            chunks += [head, body, b"\n"]
            pos = m.body_off + len(body) + 1
            new.append(m)
        try:
            _write_all(fd, b"".join(chunks), size)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
        st = os.fstat(fd)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        src = self.src
        if os.fstat(src.fileno()).st_ino != st.st_ino:
            src = os.fdopen(os.dup(fd), "rb")
        src.stamp = stamp  # type: ignore[attr-defined]  # appending moves no offset
        for m in new:
            m.src = src
            m.modseq = self._bump("a", m.uid, 0, m)
            self.msgs[m.uid] = m
            self.uids.append(m.uid)
        self.src = src
        self.uidnext = last
        self.keywords = kws
        self.stamp = stamp
        uids = [m.uid for m in new]
        self.pending_recent.update(uids)
        self.save_index()
        return uids


def _frozen(src: BinaryIO, now: tuple[int, int, int] | None) -> bool:
    """Are offsets read from ``src`` still right: the file is unchanged, or
    it was replaced by a rename (the old inode is kept as it was)?"""
    stamp = getattr(src, "stamp", None)
    return stamp is not None and (now is None or now[0] != stamp[0] or now == stamp)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _keywords_of(p: _Parsed) -> list[str]:
    kws = list(p.keywords)
    for m in p.msgs:
        for f in sorted(m.flags):
            if not f.startswith("\\") and f not in kws:
                kws.append(f)
    return kws


_UTC = datetime.UTC


@implementer(IMailbox)
class MboxMailbox(S.IndexedSearch):
    """One session's view of an mbox (see :class:`IMailbox`)."""

    _ids = itertools.count(1)

    def __init__(self, storage: MboxStorage, box: _Box, readonly: bool):
        self.storage = storage
        self.box = box
        self.name = box.name
        self.readonly = readonly
        self.id = next(self._ids)
        self.messages: list[MessageInfo] = []
        self._index: dict[int, MessageInfo] = {}
        self._ghosts: dict[int, tuple[int, _Msg | None]] = {}
        self.recent: set[int] = set()
        self.seen_modseq = box.modseq
        self.closed = False
        box.views.append(self)
        for uid in box.uids:
            self._append(box.msgs[uid])
        self._take_recent(list(box.pending_recent))

    def _append(self, m: _Msg) -> None:
        info = MessageInfo(m.uid, set(m.flags), m.size,
                           datetime.datetime.fromtimestamp(m.internaldate, _UTC), m.modseq)
        self.messages.append(info)
        self._index[m.uid] = info

    def _take_recent(self, uids: list[int]) -> None:
        box = self.box
        mine = [u for u in uids if u in box.pending_recent and u in self._index]
        if not mine:
            return
        self.recent.update(mine)
        if self.readonly:
            return
        box.pending_recent.difference_update(mine)
        first = max(int(box.idx.get("first_recent", 1)), max(mine) + 1)
        if first != box.idx.get("first_recent"):
            box.idx["first_recent"] = first
            box.save_index()

    @property
    def uidvalidity(self) -> int:
        return self.box.uidvalidity

    @property
    def uidnext(self) -> int:
        return max(self.box.uidnext, (self.messages[-1].uid + 1) if self.messages else 1)

    @property
    def highestmodseq(self) -> int:
        if self._ghosts:
            return min(self.seen_modseq, min(m for m, _ in self._ghosts.values()) - 1)
        return self.seen_modseq

    @property
    def keywords(self) -> list[str]:
        return list(self.box.keywords)

    @property
    def deleted(self) -> bool:
        return self.box.deleted()

    def _check(self) -> None:
        if self.closed:
            raise StorageError("Mailbox view is closed")

    def _writable(self) -> None:
        self._check()
        if self.readonly:
            raise StorageError("Mailbox is read-only")

    @retrying
    def sync(self, allow_expunge: bool = True) -> SyncResult:
        self._check()
        box = self.box
        box.refresh()
        result = SyncResult()
        start = bisect.bisect_right(box.log, self.seen_modseq, key=lambda e: e[0])
        changed: set[int] = set()
        for modseq, kind, uid, origin, m in box.log[start:]:
            if kind == "x" and uid in self._index and origin != self.id:
                self._ghosts.setdefault(uid, (modseq, m))
            elif kind == "f" and origin != self.id:
                changed.add(uid)
        if allow_expunge and self._ghosts:
            gone = set(self._ghosts)
            self.messages = [m for m in self.messages if m.uid not in gone]
            for uid in gone:
                del self._index[uid]
            self.recent -= gone
            result.expunged = sorted(gone)
            self._ghosts.clear()
        for uid in sorted(changed):
            info, m = self._index.get(uid), box.msgs.get(uid)
            if info is None or m is None or uid in self._ghosts:
                continue
            info.modseq = m.modseq
            if info.flags != m.flags:
                info.flags = set(m.flags)
                result.flags_changed.append(uid)
        last = self.messages[-1].uid if self.messages else 0
        new_uids = box.uids[bisect.bisect_right(box.uids, last):]
        for uid in new_uids:
            self._append(box.msgs[uid])
        result.added = list(new_uids)
        self._take_recent(result.added)
        self.seen_modseq = box.modseq
        return result

    def _expunge_issued(self, uid: int) -> StorageError:
        err = StorageError(f"Message UID {uid} has been expunged")
        err.code = "EXPUNGEISSUED"
        return err

    def _open(self, uid: int) -> BinaryIO:
        box = self.box
        if box._stat() != box.stamp:  # changed behind us: offsets may have moved
            box.refresh()
        m = box.msgs.get(uid)
        if m is None:
            ghost = self._ghosts.get(uid)
            m = ghost[1] if ghost else None
            if m is None or uid not in self._index:
                raise self._expunge_issued(uid)
        if m.src is None or m.src.closed or not _frozen(m.src, box._stat()):
            raise self._expunge_issued(uid)
        body = os.pread(m.src.fileno(), m.body_len, m.body_off)
        return io.BytesIO(m.headers + b"\n" + body)

    @retrying
    def message_file(self, uid: int) -> BinaryIO:
        self._check()
        return self._open(uid)

    @retrying
    def store(self, uids: Iterable[int], flags: Iterable[str], mode: str) -> list[int]:
        return self._store(uids, flags, mode, None)[0]

    @retrying
    def store_unchanged_since(self, uids: Iterable[int], flags: Iterable[str], mode: str,
                              unchangedsince: int) -> tuple[list[int], list[int]]:
        return self._store(uids, flags, mode, unchangedsince)

    def _store(self, uids: Iterable[int], flags: Iterable[str], mode: str,
               unchangedsince: int | None) -> tuple[list[int], list[int]]:
        self._writable()
        if mode not in ("+", "-", "="):
            raise ValueError(f"bad store mode {mode!r}")
        given = {canon_flag(f) for f in flags if f.lower() != "\\recent"}
        wanted = [u for u in uids if u in self._index]
        failed: list[int] = []

        def change(p: _Parsed) -> bool:
            by_uid = {m.uid: m for m in p.msgs}
            touched = False
            for uid in wanted:
                m = by_uid.get(uid)
                if m is None:
                    continue
                cur = self.box.msgs.get(uid)
                if unchangedsince is not None and cur is not None and cur.modseq > unchangedsince:
                    failed.append(uid)
                    continue
                new = m.flags | given if mode == "+" else m.flags - given if mode == "-" else set(given)
                if new != m.flags:
                    m.flags = new
                    touched = True
            return touched

        if not self.box.store_in_place(wanted, given, mode, unchangedsince, failed, self.id):
            failed.clear()
            self.box.mutate(change, self.id)
        changed = []
        for uid in wanted:
            m, info = self.box.msgs.get(uid), self._index[uid]
            if m is None or uid in failed:
                continue
            info.modseq = m.modseq
            if info.flags != m.flags:
                info.flags = set(m.flags)
                changed.append(uid)
        if changed:
            self.storage._notify(self.name)
        return changed, failed

    @answers
    def vanished_since(self, modseq: int) -> list[int]:
        box = self.box
        present = set(box.uids) | set(self._ghosts)
        return sorted({u for m, u in box.expunged if m > modseq and u not in present})

    @retrying
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        self._writable()
        only = set(uids) if uids is not None else None
        mine = set(self._index)
        removed: list[int] = []

        def change(p: _Parsed) -> bool:
            keep = []
            for m in p.msgs:
                if (m.uid in mine and "\\Deleted" in m.flags
                        and (only is None or m.uid in only)):
                    removed.append(m.uid)
                else:
                    keep.append(m)
            p.msgs = keep
            return bool(removed)

        self.box.mutate(change, self.id)
        if removed:
            gone = set(removed)
            self.messages = [m for m in self.messages if m.uid not in gone]
            for uid in gone:
                self._index.pop(uid, None)
                self._ghosts.pop(uid, None)
            self.recent -= gone
            self.storage._notify(self.name)
        return removed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self in self.box.views:
                self.box.views.remove(self)

    def _search_source(self) -> S.CallableSource:
        box = self.box

        def get(uid: int, key: str) -> object | None:
            value = box.cache.get(box.uidvalidity, uid, key)
            if isinstance(value, dict) and len(value) == 1 and "$b" in value:
                return str(value["$b"]).encode("latin-1")
            return value

        def put(uid: int, key: str, value: object) -> None:
            if uid not in box.msgs:
                return
            try:
                if isinstance(value, bytes | bytearray):
                    value = {"$b": bytes(value).decode("latin-1")}
                box.cache.add(box.uidvalidity, uid, key, value)
            except (OSError, TypeError, ValueError) as e:
                log.warn("{path}: cache not written: {err}", path=box.cache.path, err=e)

        def open_message(uid: int) -> BinaryIO:
            try:
                return self._open(uid)
            except _Busy:  # inside an evaluation: no retry, a clear NO
                err = StorageError("The mbox is locked by another process, try again")
                err.code = "INUSE"
                raise err from None

        return S.CallableSource(get, put, open_message)



def _read_lf(message: BinaryIO) -> tuple[bytes, bytes]:
    """A message as (visible headers, body) with LF line ends; Dovecot's
    state headers dropped, a final newline added when missing."""
    data = message.read().replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    if data.startswith(b"\n"):
        head, body = b"", data[1:]
    else:
        i = data.find(b"\n\n")
        head, body = (data, b"") if i < 0 else (data[:i + 1], data[i + 2:])
    if head.startswith(b"From "):  # an mbox From_ line pasted in
        head = head.split(b"\n", 1)[1] if b"\n" in head else b""
    visible = b"".join(raw for name, raw in _split_headers(head) if name not in HIDDEN)
    return visible, body


@implementer(IMailStorage)
class MboxStorage:
    """One user's mbox tree (see :class:`IMailStorage` and the module doc)."""

    def __init__(self, user: str, root: str, inbox: str | None = None,
                 index: str | None = None, control: str | None = None, utf8: bool = False,
                 home: str | None = None):
        self.user = user
        self.root = os.path.abspath(root)
        self.inbox_path = os.path.abspath(inbox) if inbox else os.path.join(self.root, "inbox")
        self.index_root = os.path.abspath(index) if index else None
        self.utf8 = utf8
        self.locks = LockSettings()
        self.warned_dotlock = False
        self.clock = reactor  # retries of held locks (tests may give a Clock)
        self.cache_limits = CacheLimits()
        self.attributes = A.AttributeDict(
            os.path.join(os.path.abspath(home) if home else self.root, A.FILENAME))
        self._boxes: dict[str, _Box] = {}
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._tree_listeners: list[Callable[[str, str, str | None], None]] = []
        os.makedirs(self.root, 0o700, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        if not os.path.exists(self.inbox_path):
            try:
                os.makedirs(os.path.dirname(self.inbox_path), 0o700, exist_ok=True)
                os.close(os.open(self.inbox_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as e:  # /var/mail not writable: the MDA creates it
                log.warn("{path}: INBOX not created: {err}", path=self.inbox_path, err=e.strerror)
        self._subs = Subscriptions(self.root, utf8)
        if control:
            os.makedirs(control, 0o700, exist_ok=True)
        self._subs.path = os.path.join(os.path.abspath(control) if control else self.root,
                                       SUBSCRIPTIONS)
        self._host = socket.gethostname().split(".")[0]

    @answers
    def configure(self, settings: dict) -> None:
        """``mail_cache_*`` limits, attribute bounds and the ``mbox_*`` locks."""
        limits = CacheLimits.from_settings(settings)
        self.cache_limits.max_size = limits.max_size
        self.cache_limits.max_headers = limits.max_headers
        self.cache_limits.max_header_name = limits.max_header_name
        self.attributes.limits = A.AttributeLimits.from_settings(settings)
        for key, attr in (("mbox_lock_timeout", "lock_timeout"),
                          ("mbox_dotlock_change_timeout", "dotlock_change_timeout")):
            if settings.get(key):
                setattr(self.locks, attr, parse_time(str(settings[key])))
        for key, attr in (("mbox_read_locks", "read"), ("mbox_write_locks", "write")):
            if settings.get(key) is None:
                continue
            kinds = frozenset(str(settings[key]).split())
            if kinds - LOCK_KINDS:
                raise StorageError(f"{key}: unknown lock method(s) "
                                   f"{', '.join(sorted(kinds - LOCK_KINDS))}")
            setattr(self.locks, attr, kinds)

    def sender_of(self, headers: bytes) -> bytes:
        """The From_ line's sender: Return-Path (a delivery) or user@host,
        as Dovecot's APPEND writes it."""
        for name, raw in _split_headers(headers):
            if name == b"return-path":
                v = _value(raw).strip(b"<>").split()
                if v and b"\n" not in v[0]:
                    return v[0]
                return b"MAILER-DAEMON"
        return f"{self.user}@{self._host}".encode("utf-8", "replace").replace(b" ", b"_")

    # -- paths ---------------------------------------------------------

    def _parts(self, name: str) -> list[str]:
        parts = name.split(N.SEP)
        if not self.utf8:
            parts = [N.mutf7_encode(p) for p in parts]
        for p in parts:
            if p.startswith(".") or p in (INDEX_DIR,) or p.endswith(".lock"):
                raise MailboxNameError(f"Mailbox name component must not begin with '.': {name}")
        return parts

    def _path(self, name: str) -> str:
        if name == "INBOX":
            return self.inbox_path
        path = os.path.join(self.root, *self._parts(name))
        real = os.path.realpath(path)
        if not (real + os.sep).startswith(self._real_root + os.sep):
            raise MailboxNameError(f"Mailbox path escapes the mail root: {name}")
        return path

    def _index_dir(self, name: str) -> str:
        parts = ["INBOX"] if name == "INBOX" else self._parts(name)
        if self.index_root:
            return os.path.join(self.index_root, *parts)
        return os.path.join(self.root, *parts[:-1], INDEX_DIR, parts[-1])

    def _box(self, name: str) -> _Box:
        name = _normalize(name)
        box = self._boxes.get(name)
        path = self._path(name)
        if not os.path.isfile(path):
            self._boxes.pop(name, None)
            raise MailboxNotFound(f"Mailbox doesn't exist: {name}")
        if box is None:
            box = _Box(self, name, path, self._index_dir(name))
            self._boxes[name] = box
        try:
            box.refresh()
        except MailboxNotFound:
            self._boxes.pop(name, None)
            raise
        return box

    def next_uidvalidity(self) -> int:
        path = os.path.join(self.index_root or os.path.join(self.root, INDEX_DIR),
                            "dovecot-uidvalidity.pydovecot")
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
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

    # -- mailbox tree --------------------------------------------------

    def _walk(self) -> tuple[set[str], set[str]]:
        """(mailbox files, directories) under the root, as names."""
        files: set[str] = set()
        dirs: set[str] = set()
        real_inbox = os.path.realpath(self.inbox_path)

        def walk(path: str, prefix: list[str], depth: int) -> None:
            if depth > N.MAX_COMPONENTS:
                return
            try:
                entries = list(os.scandir(path))
            except OSError:
                return
            for e in entries:
                n = e.name
                if n.startswith(".") or n.endswith(".lock") or n.startswith("dovecot"):
                    continue
                try:
                    part = n if self.utf8 else N.mutf7_decode(n)
                    name = _normalize(N.SEP.join([*prefix, part]))
                except (ValueError, MailboxNameError):
                    continue
                if e.is_dir(follow_symlinks=False):
                    dirs.add(name)
                    walk(e.path, [*prefix, part], depth + 1)
                elif e.is_file() and os.path.realpath(e.path) != real_inbox:
                    if name != "INBOX":
                        files.add(name)

        walk(self.root, [], 0)
        return files, dirs

    @answers
    def list_mailboxes(self) -> list[MailboxInfo]:
        files, dirs = self._walk()
        files.add("INBOX")
        everything = files | dirs | {p for n in files | dirs for p in N.parents(n)}
        has_children = {p for n in everything for p in N.parents(n)}
        out = []
        for name in sorted(everything, key=lambda n: (n != "INBOX", n)):
            attrs = {"\\HasChildren" if name in has_children else "\\HasNoChildren"}
            if name not in files:
                attrs.add("\\Noselect")
            out.append(MailboxInfo(name, attrs))
        return out

    @answers
    def create(self, name: str) -> None:
        name = _normalize(name, for_create=True)
        path = self._path(name)
        if name == "INBOX" or os.path.exists(path):
            raise MailboxExists(f"Mailbox already exists: {name}")
        parent = os.path.dirname(path)
        cur = parent
        while cur != self.root and not os.path.isdir(cur):
            if os.path.isfile(cur):
                raise MailboxNameError("Mailbox doesn't allow inferior mailboxes")
            cur = os.path.dirname(cur)
        os.makedirs(parent, 0o700, exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise MailboxExists(f"Mailbox already exists: {name}") from None
        _fsync_dir(parent)
        self._tree_changed("create", name)

    @answers
    def delete(self, name: str) -> None:
        name = _normalize(name)
        if name == "INBOX":
            raise StorageError("INBOX can't be deleted.")
        path = self._path(name)
        if os.path.isdir(path):
            if [e for e in os.listdir(path) if e != INDEX_DIR]:
                raise StorageError(f"Mailbox has children, delete them first: {name}")
            shutil.rmtree(path)
        elif os.path.isfile(path):
            box = self._boxes.get(name)
            guid = box.guid(False) if box else _Box(self, name, path, self._index_dir(name)).guid(False)
            os.unlink(path)
            shutil.rmtree(self._index_dir(name), ignore_errors=True)
            self._boxes.pop(name, None)
            if guid:
                try:
                    self.attributes.change({}, drop_prefixes=[f"{A.DICT_PRIVATE}{guid}/",
                                                              f"{A.DICT_SHARED}{guid}/"])
                except StorageError as e:
                    log.warn("{name}: attributes of the deleted mailbox not removed: {err}",
                             name=sanitize(name), err=sanitize(e))
        else:
            raise MailboxNotFound(f"Mailbox doesn't exist: {name}")
        self._notify(name)
        self._tree_changed("delete", name)

    @retrying
    def rename(self, old: str, new: str) -> None:
        old, new = _normalize(old), _normalize(new, for_create=True)
        dst = self._path(new)
        if new == "INBOX" or os.path.exists(dst):
            raise MailboxExists(f"Mailbox already exists: {new}")
        if new.startswith(old + "/"):
            raise MailboxNameError("Can't rename a mailbox under itself")
        if old == "INBOX":
            self._rename_inbox(new)
            self._tree_changed("rename", old, new)
            return
        src = self._path(old)
        if not os.path.exists(src):
            raise MailboxNotFound(f"Mailbox doesn't exist: {old}")
        os.makedirs(os.path.dirname(dst), 0o700, exist_ok=True)
        os.rename(src, dst)
        if os.path.isfile(dst):
            sidx, didx = self._index_dir(old), self._index_dir(new)
            if os.path.isdir(sidx):
                os.makedirs(os.path.dirname(didx), 0o700, exist_ok=True)
                os.rename(sidx, didx)
        for n in list(self._boxes):
            if n == old or n.startswith(old + "/"):
                self._boxes.pop(n)
        _fsync_dir(os.path.dirname(dst))
        self._tree_changed("rename", old, new)

    def _rename_inbox(self, new: str) -> None:
        """RFC 3501: INBOX's messages move to ``new``; INBOX stays, empty."""
        inbox = self._box("INBOX")
        MboxStorage.create.now(self, new)
        dest = self._box(new)
        items = []
        for uid in inbox.uids:
            m = inbox.msgs[uid]
            body = os.pread(m.src.fileno(), m.body_len, m.body_off) if m.src else b""
            items.append((m.headers, body, m.internaldate, set(m.flags)))
        if items:  # moved, not new: \\Recent for nobody (as Maildir's rename)
            moved = dest.append_raw(items)
            dest.pending_recent.difference_update(moved)
            dest.idx["first_recent"] = dest.uidnext
            dest.save_index()

        def empty(p: _Parsed) -> bool:
            p.msgs = []
            return True

        inbox.mutate(empty, 0)
        self._notify("INBOX")

    # -- subscriptions -------------------------------------------------

    @answers
    def subscriptions(self) -> list[str]:
        return self._subs.read()

    @answers
    def subscribe(self, name: str) -> None:
        self._subs.change(_normalize(name), True)
        self._tree_changed("subscribe", name)

    @answers
    def unsubscribe(self, name: str) -> None:
        self._subs.change(_normalize(name), False)
        self._tree_changed("unsubscribe", name)

    # -- messages ------------------------------------------------------

    @retrying
    def status(self, name: str) -> MailboxStatus:
        box = self._box(name)
        msgs = box.msgs.values()
        return MailboxStatus(
            messages=len(box.uids),
            recent=len(box.pending_recent),
            uidnext=box.uidnext,
            uidvalidity=box.uidvalidity,
            unseen=sum("\\Seen" not in m.flags for m in msgs),
            size=sum(m.size for m in msgs),
            deleted=sum("\\Deleted" in m.flags for m in msgs),
            highestmodseq=box.modseq,
        )

    @retrying
    def open(self, name: str, readonly: bool = False) -> MboxMailbox:
        return MboxMailbox(self, self._box(name), readonly)

    def _save(self, box: _Box, items: list[tuple[bytes, bytes, float, set[str]]]) -> list[int]:
        try:
            return box.append_raw(items)
        except OSError as e:
            err = StorageError(f"Saving the message failed: {e.strerror}")
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                err.code = "OVERQUOTA"
            raise err from e

    def append(self, name: str, message: BinaryIO, flags: Iterable[str] = (),
               internaldate: datetime.datetime | None = None) -> defer.Deferred:
        try:
            headers, body = _read_lf(message)
        except Exception:
            return defer.fail()
        when = internaldate.timestamp() if internaldate is not None else time.time()
        fl = {canon_flag(f) for f in flags if f.lower() != "\\recent"}
        return self._append(name, headers, body, when, fl)

    @retrying
    def _append(self, name: str, headers: bytes, body: bytes, when: float,
                fl: set[str]) -> tuple[int, int]:
        box = self._box(name)
        uid = self._save(box, [(headers, body, when, fl)])[0]
        self._notify(box.name)
        return box.uidvalidity, uid

    @answers
    def move(self, source: IMailbox, uids: Sequence[int],
             dest: str) -> tuple[int, list[tuple[int, int]]]:
        """MOVE's copy half: a copy (no quota on mbox; see quota_roots)."""
        return MboxStorage.copy.now(self, source, uids, dest)

    # -- quota: none on mbox (the config refuses the quota plugin with an
    # mbox mail_location), answered as Dovecot answers without quota --------

    @answers
    def quota_roots(self, mailbox: str) -> list[str]:
        return []

    @answers
    def get_quota(self, root: str, mailbox: str = "") -> list:
        err = StorageError("Quota root does not exist")
        err.code = "NONEXISTENT"
        raise err

    @answers
    def check_quota(self, mailbox: str, size: int, count: int = 1) -> None:
        return None

    @answers
    def recalc_quota(self) -> list:
        return []

    @retrying
    def copy(self, source: IMailbox, uids: Sequence[int],
             dest: str) -> tuple[int, list[tuple[int, int]]]:
        if not isinstance(source, MboxMailbox):
            raise StorageError("Can't copy from a foreign mailbox")
        dbox = self._box(dest)
        sbox = source.box
        sbox.refresh()
        if any(u in source._index and u not in sbox.msgs for u in uids):
            err = StorageError("Some of the requested messages no longer exist.")
            err.code = "EXPUNGEISSUED"
            raise err
        todo = [sbox.msgs[u] for u in sorted(set(uids)) if u in sbox.msgs and u in source._index]
        if not todo:
            return dbox.uidvalidity, []
        items = []
        for m in todo:
            if m.src is None or not _frozen(m.src, sbox._stat()):
                raise StorageError("The mbox changed during COPY, try again")
            body = os.pread(m.src.fileno(), m.body_len, m.body_off)
            items.append((m.headers, body, m.internaldate, set(m.flags)))
        new = self._save(dbox, items)
        self._notify(dbox.name)
        return dbox.uidvalidity, [(m.uid, u) for m, u in zip(todo, new, strict=True)]

    # -- mailbox attributes ----------------------------------------------

    def _attr_box(self, mailbox: str, create: bool) -> tuple[str | None, bool]:
        server = mailbox == ""
        box = self._box("INBOX" if server else mailbox)
        return box.guid(create), server

    @retrying
    def get_attribute(self, mailbox: str, key: str) -> bytes | None:
        scope, rest = A.split_entry(key)
        guid, server = self._attr_box(mailbox, False)
        if guid is None:
            return None
        return self.attributes.get(A.dict_prefix(scope, guid, server) + rest)

    @retrying
    def set_attribute(self, mailbox: str, key: str, value: bytes | None) -> None:
        scope, rest = A.split_entry(key)
        if value is not None and len(value) > self.attributes.limits.max_value_size:
            raise AttributeTooLarge(self.attributes.limits.max_value_size)
        guid, server = self._attr_box(mailbox, value is not None)
        if guid is None:
            return
        prefix = A.dict_prefix(scope, guid, server)
        self.attributes.change({prefix + rest: value}, count_prefix=prefix)

    @retrying
    def set_attributes(self, mailbox: str, changes: dict[str, bytes | None]) -> None:
        entries = {key: A.split_entry(key) for key in changes}
        limit = self.attributes.limits.max_value_size
        if any(v is not None and len(v) > limit for v in changes.values()):
            raise AttributeTooLarge(limit)
        guid, server = self._attr_box(mailbox, any(v is not None for v in changes.values()))
        if guid is None:
            return
        sets = {A.dict_prefix(scope, guid, server) + rest: changes[key]
                for key, (scope, rest) in entries.items()}
        prefixes = {A.dict_prefix(scope, guid, server) for scope, _ in entries.values()}
        self.attributes.change(sets, count_prefix=tuple(sorted(prefixes)))

    @retrying
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
                    continue
                entry = A.to_entry(scope, rest)
                if not want or entry == want or entry.startswith(want + "/"):
                    out.append(entry)
        return sorted(out)

    # -- listeners -----------------------------------------------------

    def add_listener(self, name: str, callback: Callable[[], None]) -> None:
        self._listeners.setdefault(_normalize(name), []).append(callback)

    def remove_listener(self, name: str, callback: Callable[[], None]) -> None:
        cbs = self._listeners.get(_normalize(name), [])
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


__all__ = ["MboxStorage", "MboxMailbox", "parse_mbox", "from_line", "parse_from_line"]
