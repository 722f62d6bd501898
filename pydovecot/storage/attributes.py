"""Mailbox attributes (RFC 5464 METADATA entries) in Dovecot's file dict.

Stored exactly as Dovecot stores them with ``mail_attribute_dict =
file:%h/dovecot-attributes`` (lib-dict's ``dict-file.c``, lib-storage's
``mailbox-attribute.h``), so either server reads what the other wrote:

* the file is a sequence of ``<key> LF <value> LF`` pairs, each side
  tab-escaped (``\\001`` → ``\\0011``, TAB → ``\\001t``, CR → ``\\001r``,
  LF → ``\\001n``, NUL → ``\\0010``);
* a change takes Dovecot's dotlock (``dovecot-attributes.lock``), rewrites
  the whole file to a temp file, fsyncs it, renames it over the old one
  and fsyncs the directory;
* the entry ``/private/<name>`` of a mailbox is the key
  ``priv/<mailbox GUID>/<name>``, ``/shared/<name>`` is
  ``shared/<GUID>/<name>``; server entries (mailbox ``""``) live in INBOX
  under ``vendor/vendor.dovecot/pvt/server/``.  The GUID is the ``G``
  field of the mailbox's ``dovecot-uidlist``, so RENAME keeps a mailbox's
  attributes and a new mailbox of an old name starts without them.

Trusts the file only as data: a torn trailing pair is ignored, and a file
above :attr:`AttributeLimits.max_file_size` is refused rather than read.
Keys are checked by :func:`split_entry`; values and the number of entries
per mailbox are bounded by :class:`AttributeLimits`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from pydovecot.storage.interfaces import (
    AttributeTooLarge,
    StorageError,
    TooManyAttributes,
)
from pydovecot.storage.uidlist import Dotlock, write_atomic

FILENAME = "dovecot-attributes"
PRIVATE, SHARED = "/private/", "/shared/"
DICT_PRIVATE, DICT_SHARED = "priv/", "shared/"
#: Dovecot's MAILBOX_ATTRIBUTE_PREFIX_DOVECOT_PVT_SERVER
SERVER_PREFIX = "vendor/vendor.dovecot/pvt/server/"
#: entries under this prefix are Dovecot's (and our) internal ones: the
#: METADATA commands must neither show nor change them
INTERNAL_PREFIX = "vendor/vendor.dovecot/pvt/"
#: RFC 6154 section 4: the special-use attributes of a mailbox
SPECIALUSE = "/private/specialuse"
#: the URLAUTH key of a mailbox (hex), internal: never shown by METADATA
URLAUTH_KEY = "/private/vendor/vendor.dovecot/pvt/urlauth"
MAX_ENTRY_NAME = 1024

_ESCAPES = {b"\x01": b"\x011", b"\t": b"\x01t", b"\r": b"\x01r", b"\n": b"\x01n", b"\x00": b"\x010"}
_UNESCAPES = {v[1:2]: k for k, v in _ESCAPES.items()}


@dataclass
class AttributeLimits:
    """Bounds on what the attribute dict holds (settings in brackets)."""

    #: one value, in bytes [``mail_attribute_max_value_size``]
    max_value_size: int = 64 * 1024
    #: entries of one mailbox (or of the server) [``mail_attribute_max_entries``]
    max_entries: int = 1000
    #: the whole file [``mail_attribute_max_file_size``]
    max_file_size: int = 8 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: dict) -> AttributeLimits:
        limits = cls()
        for name in ("max_value_size", "max_entries", "max_file_size"):
            raw = settings.get("mail_attribute_" + name)
            if raw is None or raw == "":
                continue
            try:
                value = _size(str(raw))
            except ValueError:
                continue
            if value > 0:
                setattr(limits, name, value)
        return limits


def _size(text: str) -> int:
    text = text.strip().lower().replace(" ", "")
    for suffix, mult in (("k", 1024), ("m", 1024 ** 2), ("g", 1024 ** 3)):
        if text.endswith(suffix) or text.endswith(suffix + "b"):
            return int(text[: text.rindex(suffix)]) * mult
    return int(text)


def tabescape(data: bytes) -> bytes:
    """Dovecot's ``str_tabescape()``."""
    if not any(c in data for c in b"\x00\x01\t\r\n"):
        return data
    data = data.replace(b"\x01", b"\x011")  # first: the escape byte itself
    for raw, esc in _ESCAPES.items():
        if raw != b"\x01":
            data = data.replace(raw, esc)
    return data


def tabunescape(data: bytes) -> bytes:
    """Dovecot's ``str_tabunescape()`` (an unknown escape keeps its letter)."""
    if b"\x01" not in data:
        return data
    head, *rest = data.split(b"\x01")
    out = [head]
    for part in rest:
        if part:
            out.append(_UNESCAPES.get(part[:1], part[:1]))
            out.append(part[1:])
    return b"".join(out)


def parse(data: bytes) -> dict[bytes, bytes]:
    """The pairs of a dict file (a key without its value line is dropped,
    as Dovecot does)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out: dict[bytes, bytes] = {}
    for i in range(0, len(lines) - 1, 2):
        out[tabunescape(lines[i])] = tabunescape(lines[i + 1])
    return out


def serialize(pairs: dict[bytes, bytes]) -> bytes:
    return b"".join(tabescape(k) + b"\n" + tabescape(v) + b"\n" for k, v in sorted(pairs.items()))


def split_entry(entry: str) -> tuple[str, str]:
    """``/private/comment`` → (``priv/``, ``comment``).  StorageError
    (``CANNOT``) for a name that is not an RFC 5464 entry name as Dovecot
    accepts it: scope prefix, no empty component, no wildcard, no control
    character, at most :data:`MAX_ENTRY_NAME` octets."""
    err = StorageError(f"Invalid metadata entry name: {entry[:80]!r}")
    err.code = "CANNOT"
    lower = entry.lower()
    if lower.startswith(PRIVATE):
        scope, rest = DICT_PRIVATE, entry[len(PRIVATE):]
    elif lower.startswith(SHARED):
        scope, rest = DICT_SHARED, entry[len(SHARED):]
    else:
        raise err
    if (not rest or len(entry.encode("utf-8", "surrogatepass")) > MAX_ENTRY_NAME
            or rest.endswith("/") or "//" in rest
            or any(c in "*%" or ord(c) < 0x20 or ord(c) == 0x7F for c in rest)):
        raise err
    # entry names are case-insensitive (RFC 5464 section 3.2); Dovecot
    # stores them lower-cased
    return scope, rest.lower()


class AttributeDict:
    """One user's ``dovecot-attributes`` file, re-read when it changes."""

    def __init__(self, path: str, limits: AttributeLimits | None = None):
        self.path = path
        self.limits = limits or AttributeLimits()
        self._stamp: tuple[int, int, int] | None = None
        self._pairs: dict[bytes, bytes] = {}

    # -- reading -------------------------------------------------------

    def _load(self) -> dict[bytes, bytes]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._stamp, self._pairs = None, {}
            return self._pairs
        except OSError as e:
            raise StorageError(f"Cannot read the attributes: {e.strerror}") from e
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return self._pairs
            if st.st_size > self.limits.max_file_size:
                raise StorageError("The attribute file is too large")
            data = f.read(self.limits.max_file_size + 1)
        self._pairs = parse(data)
        self._stamp = stamp
        return self._pairs

    def get(self, key: str) -> bytes | None:
        return self._load().get(key.encode("utf-8", "surrogateescape"))

    def keys(self, prefix: str) -> list[str]:
        """Every dict key starting with ``prefix``, sorted."""
        p = prefix.encode("utf-8", "surrogateescape")
        return sorted(k.decode("utf-8", "surrogateescape") for k in self._load() if k.startswith(p))

    # -- changing ------------------------------------------------------

    def change(self, sets: dict[str, bytes | None],
               count_prefix: str | tuple[str, ...] | None = None,
               drop_prefixes: Iterable[str] = ()) -> None:
        """Apply ``sets`` (None deletes) and delete every key under
        ``drop_prefixes``, under the dotlock, crash-safely.  New entries
        beyond ``max_entries`` under ``count_prefix`` (or under any of
        several) fail (TOOMANY), and then nothing changes."""
        for value in sets.values():
            if value is not None and len(value) > self.limits.max_value_size:
                raise AttributeTooLarge(self.limits.max_value_size)
        drops = [p.encode("utf-8", "surrogateescape") for p in drop_prefixes]
        directory = os.path.dirname(self.path) or "."
        if all(v is None for v in sets.values()) and not os.path.exists(self.path):
            return  # only deletions, and nothing stored yet
        try:
            os.makedirs(directory, 0o700, exist_ok=True)
            with Dotlock(self.path):
                self._stamp = None  # re-read under the lock
                old = self._load()
                pairs = dict(old)
                for d in drops:
                    for k in [k for k in pairs if k.startswith(d)]:
                        del pairs[k]
                added = 0
                for key, value in sets.items():
                    k = key.encode("utf-8", "surrogateescape")
                    if value is None:
                        pairs.pop(k, None)
                    else:
                        added += k not in pairs
                        pairs[k] = bytes(value)
                if added and count_prefix is not None:
                    counted = (count_prefix,) if isinstance(count_prefix, str) else count_prefix
                    for prefix in counted:
                        cp = prefix.encode("utf-8", "surrogateescape")
                        if sum(1 for k in pairs if k.startswith(cp)) > self.limits.max_entries:
                            raise TooManyAttributes()
                if pairs == old:
                    return  # nothing changes
                data = serialize(pairs)
                if len(data) > self.limits.max_file_size:
                    raise TooManyAttributes()
                write_atomic(self.path, data)
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._pairs, self._stamp = pairs, None
        except OSError as e:
            raise StorageError(f"Cannot save the attributes: {e.strerror}") from e


def dict_prefix(scope: str, guid: str, server: bool) -> str:
    """The dict key prefix of a mailbox's (or the server's) entries."""
    return f"{scope}{guid}/{SERVER_PREFIX if server else ''}"


def to_entry(scope: str, rest: str) -> str:
    return (PRIVATE if scope == DICT_PRIVATE else SHARED) + rest


__all__ = ["AttributeDict", "AttributeLimits", "FILENAME", "SPECIALUSE", "URLAUTH_KEY",
           "INTERNAL_PREFIX", "split_entry", "tabescape", "tabunescape", "parse", "serialize"]
