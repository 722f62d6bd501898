"""Dovecot's ``dovecot-uidlist`` file and its ``.lock`` dotlock.

Reads version 3 (and the old version 1) as any Dovecot writes it, and
writes version 3 as Dovecot 2.3 does: header ``3 V<uidvalidity>
N<nextuid> G<guid>``, then ``<uid> [<ext>...] :<basename>`` lines with
the file name stripped of its ``:2,`` info.  Unknown extensions are kept.
Trusts the file only as far as its syntax: bad lines are skipped and the
caller rebuilds what is missing from the directory.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

LOCK_STALE_SECS = 120  #: as Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT
LOCK_WAIT_SECS = 30
EMPTY_LOCK_STALE_SECS = 5


class LockTimeout(OSError):
    """The dotlock could not be taken in time."""


def base_name(filename: str) -> str:
    """A Maildir file name without its ``:2,…`` info part."""
    return filename.split(":", 1)[0]


@dataclass
class UidRecord:
    uid: int
    basename: str
    ext: dict[str, str] = field(default_factory=dict)  # letter → value

    def line(self) -> str:
        """The record as a version 3 line (without LF)."""
        exts = "".join(f" {k}{v}" for k, v in self.ext.items())
        return f"{self.uid}{exts} :{self.basename}"


@dataclass
class UidList:
    uidvalidity: int = 0
    nextuid: int = 1
    guid: str = ""
    header_ext: dict[str, str] = field(default_factory=dict)
    records: list[UidRecord] = field(default_factory=list)  # uid ascending

    @classmethod
    def new(cls, uidvalidity: int) -> UidList:
        return cls(uidvalidity=uidvalidity, nextuid=1, guid=uuid.uuid4().hex)

    @classmethod
    def parse(cls, data: bytes) -> UidList:
        """Parse a uidlist; ValueError if the header is unusable."""
        text = data.decode("utf-8", "surrogateescape")
        lines = text.split("\n")
        header = lines[0].split(" ")
        ul = cls()
        if header[0] == "1" and len(header) >= 3:
            ul.uidvalidity, ul.nextuid = int(header[1]), int(header[2])
            version = 1
        elif header[0] == "3":
            version = 3
            for tok in header[1:]:
                if not tok:
                    continue
                key, value = tok[0], tok[1:]
                if key == "V":
                    ul.uidvalidity = int(value)
                elif key == "N":
                    ul.nextuid = int(value)
                elif key == "G":
                    ul.guid = value
                else:
                    ul.header_ext[key] = value
        else:
            raise ValueError(f"unsupported dovecot-uidlist version {header[0]!r}")
        if ul.uidvalidity <= 0:
            raise ValueError("dovecot-uidlist has no UIDVALIDITY")
        last = 0
        for line in lines[1:]:
            rec = _parse_record(line, version)
            if rec is None or rec.uid <= last:
                continue  # corrupt or out of order: rebuilt from the directory
            ul.records.append(rec)
            last = rec.uid
        # Dovecot appends records without rewriting the header.
        ul.nextuid = max(ul.nextuid, last + 1)
        return ul

    def serialize(self) -> bytes:
        head = [f"3 V{self.uidvalidity} N{self.nextuid}"]
        if self.guid:
            head.append(f"G{self.guid}")
        head += [f"{k}{v}" for k, v in self.header_ext.items()]
        out = [" ".join(head)]
        out += [rec.line() for rec in self.records]
        return ("\n".join(out) + "\n").encode("utf-8", "surrogateescape")


def _parse_record(line: str, version: int) -> UidRecord | None:
    if not line:
        return None
    uid_s, _, rest = line.partition(" ")
    if not uid_s.isdigit() or not rest:
        return None
    ext: dict[str, str] = {}
    if version == 1:
        name = rest.strip()
    else:
        name = ""
        while rest:
            if rest.startswith(":"):
                name = rest[1:]
                break
            tok, _, rest = rest.partition(" ")
            if tok:
                ext[tok[0]] = tok[1:]
        if not name:
            return None
    return UidRecord(int(uid_s), base_name(name), ext)


def read_uidlist(path: str) -> UidList | None:
    """The uidlist at ``path``; None if missing or unreadable (rebuild)."""
    try:
        with open(path, "rb") as f:
            return UidList.parse(f.read())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeError):
        return None


def read_uidlist_header(path: str) -> tuple[int, int] | None:
    """(UIDVALIDITY, next UID) without parsing every record: the header
    and the last line (Dovecot appends records without rewriting the
    header).  None if missing or unusable."""
    try:
        with open(path, "rb") as f:
            head = f.readline()
            size = os.fstat(f.fileno()).st_size
            f.seek(max(len(head), size - 4096))
            tail = f.read()
    except FileNotFoundError:
        return None
    try:
        ul = UidList.parse(head)
    except (ValueError, UnicodeError):
        return None
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].split(b" ", 1)[0]
    nextuid = ul.nextuid
    if last.isdigit():
        nextuid = max(nextuid, int(last) + 1)
    return ul.uidvalidity, nextuid


def append_records(path: str, records: list[UidRecord]) -> bool:
    """Append records as Dovecot does (header untouched, fsync); False if
    the file does not end with a complete line (then rewrite it)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) != b"\n":
            return False
        data = "".join(r.line() + "\n" for r in records).encode("utf-8", "surrogateescape")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write a temp file next to ``path``, fsync, rename over it."""
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


class Dotlock:
    """Dovecot-style ``<path>.lock``: O_EXCL create, stale after 120 s or
    when its owner process on this host is gone.  Blocking (polls)."""

    def __init__(self, path: str, stale: float = LOCK_STALE_SECS, wait: float = LOCK_WAIT_SECS):
        self.path = path + ".lock"
        self.stale = stale
        self.wait = wait
        self._held = False

    def _is_stale(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if time.time() - st.st_mtime > self.stale:
            return True
        try:
            with open(self.path) as f:
                pid_s, _, host = f.read().strip().partition(":")
            if not pid_s and time.time() - st.st_mtime > EMPTY_LOCK_STALE_SECS:
                return True  # an owner that died before writing (older versions)
            if host == socket.gethostname() and pid_s.isdigit():
                os.kill(int(pid_s), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError):
            pass
        return False

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        delay = 0.001
        owner = f"{os.getpid()}:{socket.gethostname()}".encode()
        while True:
            try:
                self._create(owner)
            except FileExistsError:
                if self._is_stale():
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                if time.monotonic() > deadline:
                    raise LockTimeout(errno.EAGAIN, "Timeout waiting for lock", self.path) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            self._held = True
            return

    def _create(self, owner: bytes) -> None:
        """Create the lock with its owner already in it, as Dovecot's
        file_dotlock does (write a temp file, then ``link()`` it): a process
        killed while locking never leaves an empty lock that only the
        120-second staleness rule could clear."""
        tmp = f"{self.path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, owner)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.path)
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Dotlock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
