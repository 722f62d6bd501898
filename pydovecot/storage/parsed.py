"""Parsed-message data a storage answers from its index (lib-storage's
``mail_get_special``/``mail_get_headers``): header fields, ENVELOPE,
BODYSTRUCTURE, PREVIEW, sent date, sort keys and threading data.

:class:`MessageData` computes them for one message, reading through a
:class:`MessageSource` (the storage's own sync access to its index cache
and its files) and keeping what it computed in that index, so a repeated
SEARCH, SORT or FETCH ENVELOPE does not parse again.  Cached values are
JSON-able: header fields as lists of raw unfolded values decoded as
latin-1 (lossless), ENVELOPE/BODYSTRUCTURE as IMAP bytes.

Message contents are untrusted (anyone can write a header): parsing is
bounded by :mod:`pydovecot.imap.mime`'s limits; nothing here raises on
malformed input.  The source is trusted.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, Protocol

from pydovecot.imap import mime
from pydovecot.imap.ext_fetch import PREVIEW_CACHE_KEY, make_preview
from pydovecot.storage.interfaces import MessageInfo, StorageError


class MessageSource(Protocol):
    """A storage's own synchronous access to its index cache and files."""

    def cache_get(self, uid: int, key: str) -> object | None: ...

    def cache_put(self, uid: int, key: str, value: object) -> None: ...

    def open_message(self, uid: int) -> BinaryIO: ...


#: The items :meth:`IMailbox.fetch_data` knows (``header:<name>`` besides).
FETCH_ITEMS = ("envelope", "bodystructure", "body", "preview", "sentdate", "threading")

_UNFOLD = re.compile(rb"\r?\n")
_FIELD_PATTERNS: dict[bytes, re.Pattern[bytes]] = {}
_FIELD_PATTERNS_MAX = 64


def _field_pattern(name: bytes) -> re.Pattern[bytes]:
    """``Name:`` at a line start, with its continuation lines."""
    pattern = _FIELD_PATTERNS.get(name)
    if pattern is None:
        if len(_FIELD_PATTERNS) >= _FIELD_PATTERNS_MAX:  # client-chosen names: bounded
            _FIELD_PATTERNS.clear()
        pattern = _FIELD_PATTERNS[name] = re.compile(
            rb"^" + re.escape(name) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
    return pattern


def decode_value(raw: str) -> str:
    """A cached raw value (latin-1 text) → RFC 2047-decoded Unicode."""
    return mime.decode_header_value(raw.encode("latin-1"))


class MessageData:
    """Lazily read, parsed and cached data of one message."""

    __slots__ = ("uid", "info", "recent", "source", "headers", "_block", "_parsed")

    def __init__(self, info: MessageInfo, source: MessageSource, recent: bool = False):
        self.uid = info.uid
        self.info = info
        self.recent = recent
        self.source = source
        self.headers: dict[str, list[str]] = {}
        self._block: bytes | None = None
        self._parsed: mime.ParsedMessage | None = None

    # -- raw access ------------------------------------------------------------

    def header_block(self) -> bytes:
        """The top-level header block, read only as far as its end."""
        if self._block is None:
            if self._parsed is not None:  # its header block, not the body
                data = self._parsed.data
                end = 0 if data.startswith(b"\r\n") else data.find(b"\r\n\r\n")
                self._block = data if end < 0 else data[:end + 2]
            else:
                with self.source.open_message(self.uid) as f:
                    self._block, _complete = mime.read_header_block(f)
        return self._block

    def parsed(self) -> mime.ParsedMessage:
        """The whole message, parsed (CRLF line ends)."""
        if self._parsed is None:
            with self.source.open_message(self.uid) as f:
                self._parsed = mime.ParsedMessage(mime.normalize_crlf(f.read()))
        return self._parsed

    def _cache_get(self, key: str) -> object | None:
        try:
            return self.source.cache_get(self.uid, key)
        except (KeyError, StorageError, OSError, ValueError):
            return None

    def _cache_put(self, key: str, value: object) -> None:
        try:
            self.source.cache_put(self.uid, key, value)
        except (StorageError, OSError, ValueError):
            pass

    # -- header fields -----------------------------------------------------------

    def header_values(self, name: str) -> list[str]:
        """Raw unfolded values of top-level field ``name`` (latin-1 text),
        from the index when it has them; the index is filled otherwise."""
        key = name.lower()
        got = self.headers.get(key)
        if got is not None:
            return got
        cached = self._cache_get("header." + key)
        if isinstance(cached, list) and all(isinstance(v, str) for v in cached):
            values: list[str] = cached
        else:
            wanted = key.encode("latin-1", "replace")
            values = [_UNFOLD.sub(b"", m.group(1)).strip(b" \t\r\n").decode("latin-1")
                      for m in _field_pattern(wanted).finditer(self.header_block())]
            self._cache_put("header." + key, values)
        self.headers[key] = values
        return values

    def first_header(self, name: str) -> bytes | None:
        values = self.header_values(name)
        return values[0].encode("latin-1") if values else None

    def sent_datetime(self) -> datetime.datetime | None:
        """The Date: field as an aware datetime (its own zone), or None."""
        return parse_date_field(self.first_header("Date"))

    def sent_timestamp(self) -> float:
        """RFC 5256 sent date (UTC); the internal date if Date: is unusable."""
        when = self.sent_datetime()
        try:
            if when is not None:
                return when.timestamp()
        except (OverflowError, ValueError, OSError):
            pass
        return self.info.internaldate.timestamp()

    # -- FETCH data ---------------------------------------------------------------------

    def _cached_bytes(self, key: str, make: Callable[[], bytes]) -> bytes:
        got = self._cache_get(key)
        if isinstance(got, bytes):
            return got
        value = make()
        self._cache_put(key, value)
        return value

    def envelope(self) -> bytes:
        return self._cached_bytes("envelope", lambda: mime.envelope(self._header_root()))

    def bodystructure(self) -> bytes:
        return self._cached_bytes("bodystructure",
                                  lambda: mime.bodystructure(self.parsed().root, True))

    def body(self) -> bytes:
        return self._cached_bytes("body", lambda: mime.bodystructure(self.parsed().root, False))

    def _header_root(self) -> mime.Part:
        if self._parsed is not None:
            return self._parsed.root
        with self.source.open_message(self.uid) as f:
            block, complete = mime.read_header_block(f)
        if not complete:
            return self.parsed().root
        return mime.ParsedMessage(mime.normalize_crlf(block) + b"\r\n\r\n").root

    def preview(self) -> str:
        got = self._cache_get(PREVIEW_CACHE_KEY)
        if isinstance(got, str):
            return got
        text = make_preview(self.parsed())
        self._cache_put(PREVIEW_CACHE_KEY, text)
        return text

    def threading(self) -> dict[str, Any]:
        """What THREAD needs (RFC 5256): base subject (collated), whether
        Re:/Fwd: marks were removed, Message-ID, References (or the first
        In-Reply-To id), sent date."""
        raw = self.first_header("Subject")
        subject, reply = ("", False)
        if raw is not None:
            subject, reply = base_subject(mime.decode_header_value(raw))
        refs = message_ids(self.first_header("References"))
        if not refs:
            refs = message_ids(self.first_header("In-Reply-To"))[:1]
        ids = message_ids(self.first_header("Message-ID"))
        return {"subject": collate(subject), "reply": reply,
                "message_id": ids[0] if ids else None, "references": refs,
                "date": self.sent_timestamp()}

    def item(self, name: str) -> object:
        """One :meth:`IMailbox.fetch_data` item; StorageError if unknown."""
        low = name.lower()
        if low.startswith("header:") and len(low) > 7:
            return list(self.header_values(low[7:]))
        if low == "envelope":
            return self.envelope()
        if low == "bodystructure":
            return self.bodystructure()
        if low == "body":
            return self.body()
        if low == "preview":
            return self.preview()
        if low == "sentdate":
            when = self.sent_datetime()
            try:
                return when.timestamp() if when is not None else None
            except (OverflowError, ValueError, OSError):
                return None
        if low == "threading":
            return self.threading()
        raise StorageError(f"Unknown message data item {name[:40]!r}")


def parse_date_field(raw: bytes | None) -> datetime.datetime | None:
    if raw is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(raw.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        tz = datetime.timezone(datetime.timedelta(seconds=parsed[9] or 0))
        return datetime.datetime(*parsed[:6], tzinfo=tz)  # type: ignore[misc]
    except (ValueError, OverflowError, TypeError):
        return None


_MSGID = re.compile(rb"<([^<>\s@]+@[^<>\s]+)>")


def message_ids(raw: bytes | None) -> list[str]:
    """Valid ``<local@domain>`` Message-IDs in a header value, in order."""
    if not raw:
        return []
    return [m.group(1).decode("latin-1") for m in _MSGID.finditer(raw)]


# -- addresses ---------------------------------------------------------------------

_NEEDS_QUOTES = re.compile(r'[()<>\[\]:;@\\,."]')


def address_text(raw: str) -> str:
    """An address field (raw latin-1 text) as SEARCH FROM/TO/CC/BCC compare
    it, as Dovecot writes the parsed list: ``Name <mailbox@host>`` per
    address (names RFC 2047-decoded), groups as ``Name: … ;``, comments
    and folding white space inside addresses removed."""
    out: list[str] = []
    for name, _adl, local, host in mime.parse_addresses(raw.encode("latin-1")):
        if host is None:  # group start (name:) and end (;), as message_address_write
            if local is None:
                out.append(";")
            else:
                out.append(local.decode("latin-1") + ":")
            continue
        if out and not out[-1].endswith((":", ";")):
            out.append(", ")
        elif out and out[-1].endswith(";"):
            out.append(", ")
        spec = (local or b"").decode("latin-1")
        if host:
            spec += "@" + host.decode("latin-1")
        if name:
            text = decode_value(name.decode("latin-1"))
            if _NEEDS_QUOTES.search(text) is not None:  # as Dovecot writes it
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out.append(text + " <" + spec + ">")
        else:
            out.append(spec)
    return "".join(out)


# -- sort keys (RFC 5256, RFC 5957) ------------------------------------------------

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")

_WSP_RUN = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = rf"(?:re|fwd?)[ \t]*(?:{_BLOB})?:"
_LEADER = re.compile(rf"(?:(?:{_BLOB})*({_REFWD})|[ \t])", re.I)
_BLOB_RE = re.compile(_BLOB)
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 section 2.1: the base subject of a decoded Subject, and
    whether reply/forward marks were removed from it (for threading)."""
    s = _WSP_RUN.sub(" ", subject)  # step 1 (encoded words already decoded)
    reply = False
    while True:
        # (2) remove subj-trailer: "(fwd)" and WSP, repeatedly
        while True:
            m = _TRAILER.search(s)
            if not m:
                break
            if m.group(0) != " " and m.group(0) != "\t":
                reply = True
            s = s[: m.start()]
        # (3)-(5): subj-leader, then a subj-blob if something is left after it
        while True:
            before = s
            while True:
                m = _LEADER.match(s)
                if not m or m.end() == 0:
                    break
                if m.group(1):
                    reply = True
                s = s[m.end():]
            m = _BLOB_RE.match(s)
            if m and s[m.end():].strip(" \t"):
                s = s[m.end():]
            if s == before:
                break
        # (6) "[fwd:" … "]" wrapper
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return s, reply


_TITLE: dict[str, str] = {}


def collate(text: str) -> str:
    """The sort key of a string, as Dovecot compares them (RFC 5256's
    i;ascii-casemap for ASCII: "Both strings are converted to upper
    case", so ``[`` and ``_`` sort after the letters; beyond ASCII the
    i;unicode-casemap of RFC 5051: title-cased, then decomposed, as
    Dovecot's uni_utf8_to_decomposed_titlecase).  Keys compare as code
    points, i.e. as the octets of their UTF-8 form."""
    if text.isascii():
        return text.upper()
    out = []
    for ch in text:
        t = _TITLE.get(ch)
        if t is None:
            t = ch.upper() if ch.isascii() else unicodedata.normalize("NFKD", ch.title())
            if len(_TITLE) < 4096:
                _TITLE[ch] = t
        out.append(t)
    return "".join(out)


def subject_key(data: MessageData) -> str:
    raw = data.first_header("Subject")
    if raw is None:
        return ""
    return collate(base_subject(mime.decode_header_value(raw))[0])


def _first_address(data: MessageData, name: str) -> tuple[bytes | None, bytes | None, bytes | None] | None:
    """(display name, mailbox, host) of the field's first address; a group
    is its start marker, (None, group name, None), as Dovecot's parser
    gives it."""
    raw = data.first_header(name)
    if raw is None:
        return None
    for disp, _adl, mailbox, host in mime.parse_addresses(raw):
        if host is not None:  # Dovecot parses with FILL_MISSING here too
            mailbox = mailbox or b"MISSING_MAILBOX"
            host = host or b"MISSING_DOMAIN"
        return disp, mailbox, host
    return None


def address_key(data: MessageData, name: str) -> str:
    """RFC 5256 FROM/TO/CC: "the addr-mailbox of the first ... address";
    a group's name when the field starts with a group (Dovecot)."""
    addr = _first_address(data, name)
    if addr is None or addr[1] is None:
        return ""
    return collate(addr[1].decode("utf-8", "replace"))


def display_key(data: MessageData, name: str) -> str:
    """RFC 5957 DISPLAYFROM/DISPLAYTO: the decoded display name of the first
    address, else its ``mailbox@host``, else the mailbox alone (a group's
    name), as Dovecot's get_display_name."""
    addr = _first_address(data, name)
    if addr is None:
        return ""
    disp, mailbox, host = addr
    if disp:
        text = decode_value(disp.decode("latin-1"))
        if text:
            return collate(text)
    if mailbox is None:
        return ""
    spec = mailbox + (b"@" + host if host is not None else b"")
    return collate(spec.decode("utf-8", "replace"))


KEY_FUNCS: dict[str, Callable[[MessageData], Any]] = {
    "ARRIVAL": lambda d: d.info.internaldate.timestamp(),
    "CC": lambda d: address_key(d, "Cc"),
    "DATE": MessageData.sent_timestamp,
    "FROM": lambda d: address_key(d, "From"),
    "SIZE": lambda d: d.info.size,
    "SUBJECT": subject_key,
    "TO": lambda d: address_key(d, "To"),
    "DISPLAYFROM": lambda d: display_key(d, "From"),
    "DISPLAYTO": lambda d: display_key(d, "To"),
}


def sort_key(data: MessageData, criteria: Iterable[tuple[str, bool]]) -> tuple:
    """One message's keys, one per criterion (read from its headers)."""
    return tuple(KEY_FUNCS[name](data) for name, _reverse in criteria)


def order_by_keys(items: list[Any], keys: list[tuple],
                  criteria: list[tuple[str, bool]]) -> list[Any]:
    """Items (in mailbox order) ordered by precomputed :func:`sort_key`
    values; stable, so exact ties keep mailbox order (RFC 5256)."""
    order = list(range(len(items)))
    # Sort by the last key first; Python's sort is stable, also with reverse.
    for i in reversed(range(len(criteria))):
        order.sort(key=lambda j, i=i: keys[j][i], reverse=criteria[i][1])
    return [items[j] for j in order]
