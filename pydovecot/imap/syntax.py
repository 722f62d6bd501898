"""Small pieces of IMAP syntax the commands share: astrings, mailbox
names (modified UTF-7 or UTF-8), date-times, flag lists, LIST patterns.

Pure functions over client input (untrusted): malformed values raise
:class:`~pydovecot.imap.errors.CommandError` (``BAD`` or ``NO [CANNOT]``).
"""

from __future__ import annotations

import datetime
import re

from pydovecot.imap import mime, mutf7
from pydovecot.imap.errors import CommandError, bad
from pydovecot.imap.parser import Atom, Token, as_bytes
from pydovecot.storage.interfaces import SYSTEM_FLAGS

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SYSTEM = {f.lower(): f for f in SYSTEM_FLAGS}
_DATETIME_RE = re.compile(
    rb"^([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$"
)
_ASTRING_SAFE = re.compile(rb"^[!#$&'*+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$")


def is_yes(value: object) -> bool:
    """A boolean setting as Dovecot reads it."""
    return str(value or "").strip().lower() in ("yes", "y", "true", "1")


def astring(value: bytes) -> bytes:
    """An atom if it can be one, else a quoted string or literal."""
    if _ASTRING_SAFE.match(value) and value.upper() != b"NIL":
        return value
    return mime.imap_string(value)


def quote_utf8(value: bytes) -> bytes:
    """An astring allowing UTF-8 in quoted strings (RFC 6855)."""
    if _ASTRING_SAFE.match(value) and value.upper() != b"NIL":
        return value
    if len(value) > 1024 or any(c in value for c in (0, 10, 13)):
        return b"{%d}\r\n" % len(value) + value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def check_name(name: str) -> str:
    """Protocol-level name checks (the storage checks the rest); INBOX
    in any case is ``INBOX``."""
    for ch in name:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            raise CommandError(b"NO [CANNOT] Invalid mailbox name: contains control characters")
        if 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            raise CommandError(b"NO [CANNOT] Invalid mailbox name: contains invalid characters")
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX/"):
        return "INBOX" + name[5:]
    return name


def encode_mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name on the wire: modified UTF-7, or UTF-8 once enabled."""
    if utf8:
        return quote_utf8(name.encode("utf-8"))
    return astring(mutf7.encode(name))


def decode_mailbox(tok: Token, utf8: bool = False) -> str:
    """A mailbox argument → its name; NO [CANNOT] if malformed."""
    if isinstance(tok, list):
        raise CommandError(b"BAD Invalid mailbox name")
    raw = as_bytes(tok)
    if utf8:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError(b"NO [CANNOT] Invalid mailbox name: not valid UTF-8") from None
    else:
        try:
            name = mutf7.decode(raw)
        except ValueError:
            raise CommandError(b"NO [CANNOT] Invalid mailbox name: not modified UTF-7") from None
    return check_name(name)


def decode_pattern(raw: bytes, utf8: bool = False) -> str:
    """A LIST reference or pattern; ValueError if it cannot match anything."""
    return raw.decode("utf-8") if utf8 else mutf7.decode(raw)


def parse_datetime(raw: bytes) -> datetime.datetime:
    """An IMAP date-time (``dd-Mon-yyyy hh:mm:ss +zzzz``)."""
    m = _DATETIME_RE.match(raw)
    if not m:
        raise bad("Invalid date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        month = [x.lower() for x in MONTHS].index(mon.decode().lower()) + 1
        offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
        tz = datetime.timezone(-offset if sign == b"-" else offset)
        return datetime.datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=tz)
    except ValueError:
        raise bad("Invalid date-time") from None


def parse_flags(tokens: list[Token]) -> list[str]:
    """Flag atoms → canonical names; BAD for \\Recent, unknown \\X, non-atoms."""
    out: list[str] = []
    for tok in tokens:
        if not isinstance(tok, Atom):
            raise bad("Invalid flag")
        name = tok.decode("utf-8", "replace")
        if name.startswith("\\"):
            canon = _SYSTEM.get(name.lower())
            if canon is None:
                raise bad(f"Invalid system flag {name}")
            name = canon
        elif any(c in name for c in "[]%*\\") or not name:
            raise bad(f"Invalid keyword {name}")
        if name not in out:
            out.append(name)
    return out


def list_pattern(pattern: str) -> re.Pattern[str]:
    """A LIST pattern (``*``, ``%``) as a regex on full names."""
    regex = "".join(
        ".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern
    )
    return re.compile(f"^{regex}$", re.S)
