"""FETCH: parse the item list and render ``* n FETCH (...)`` responses.

Trusts the storage view it is given; the item list comes from the client
and is validated here (unknown items and bad sections raise ParseError →
``BAD``).  Message bodies are read through :class:`MessageLoader`, which
CRLF-normalizes and caches parsed messages.  Whole-message and TEXT
literals of large messages (:data:`STREAM_OVER`) are not rendered here:
:func:`render_pieces` leaves a :class:`StreamedLiteral` in their place,
which the session streams from the message file in chunks
(:func:`normalized_chunks`, :func:`scan_message`) under back-pressure.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydovecot.imap import ext_fetch, mime
from pydovecot.imap.parser import Atom, ParseError, String, Token
from pydovecot.storage.interfaces import MessageInfo

#: Messages bigger than this have their BODY[]/BODY[TEXT]/BINARY[] literals
#: streamed from the file instead of read whole.
STREAM_OVER = 256 * 1024
#: Bytes read from a message file per streaming step.
STREAM_CHUNK = 64 * 1024

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_BODY_RE = re.compile(rb"^(BODY|BODY\.PEEK|BINARY\.PEEK|BINARY)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?$", re.I)
_SIMPLE = {
    "FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY",
    "RFC822", "RFC822.HEADER", "RFC822.TEXT", "SAVEDATE", "PREVIEW", "MODSEQ",
}
_BINARY_SIZE_RE = re.compile(rb"^BINARY\.SIZE\[([0-9.]*)\]$", re.I)
MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_SECTION_TEXT = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME", ""}


@dataclass
class Section:
    numbers: list[int] = field(default_factory=list)
    text: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: list[bytes] = field(default_factory=list)

    def label(self) -> bytes:
        out = ".".join(str(n) for n in self.numbers)
        if self.text:
            out = f"{out}.{self.text}" if out else self.text
        raw = out.encode()
        if self.text.startswith("HEADER.FIELDS"):
            raw += b" (" + b" ".join(self.fields) + b")"
        return raw

    def is_header(self) -> bool:
        return self.text.startswith("HEADER") or self.text == "MIME"


@dataclass
class FetchItem:
    name: str  # FLAGS, UID, …, or BODY[] for sections
    section: Section | None = None
    peek: bool = True
    partial: tuple[int, int] | None = None
    label: bytes = b""  # response name for section items

    def needs_message(self) -> bool:
        return self.name not in ("FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "SAVEDATE",
                                 "MODSEQ")


#: Items answered from the top-level header alone.
HEADER_ONLY_ITEMS = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "SAVEDATE", "MODSEQ",
                     "ENVELOPE", "RFC822.HEADER"}


def header_only(items: list[FetchItem]) -> bool:
    """True when every item needs no more than the message's top-level
    header (so FETCH need not read or parse the body)."""
    for item in items:
        if item.name in HEADER_ONLY_ITEMS:
            continue
        section = item.section
        if section is None or section.numbers or not section.text.startswith("HEADER"):
            return False
    return True


def parse_section(raw: bytes) -> Section:
    """``1.2.HEADER.FIELDS (A B)`` → Section; ParseError if invalid."""
    spec, _sp, flist = raw.partition(b" ")
    pieces = spec.split(b".") if spec else []
    sec = Section()
    while pieces and pieces[0].isdigit():
        if pieces[0].startswith(b"0") or len(pieces[0]) > 9:
            raise ParseError("Invalid section number")
        sec.numbers.append(int(pieces.pop(0)))
    sec.text = b".".join(pieces).decode("latin-1").upper()
    if sec.text not in _SECTION_TEXT:
        raise ParseError("Invalid BODY[] section")
    if sec.text == "MIME" and not sec.numbers:
        raise ParseError("MIME needs a part number")
    if sec.text.startswith("HEADER.FIELDS"):
        flist = flist.strip()
        if not (flist.startswith(b"(") and flist.endswith(b")")):
            raise ParseError("Missing header field list")
        names = [n.strip(b'"') for n in flist[1:-1].split()]
        if not names or any(not n or b":" in n for n in names):
            raise ParseError("Invalid header field list")
        sec.fields = [n.upper() for n in names]
    elif flist:
        raise ParseError("Unexpected data in section")
    return sec


def parse_items(tokens: list[Token]) -> list[FetchItem]:
    """The FETCH item argument (an atom, macro or list) → FetchItems."""
    if len(tokens) != 1:
        raise ParseError("Invalid FETCH arguments")
    arg = tokens[0]
    if isinstance(arg, Atom) and arg.upper_str() in MACROS:
        return [FetchItem(n) for n in MACROS[arg.upper_str()]]
    atoms = arg if isinstance(arg, list) else [arg]
    if not atoms:
        raise ParseError("Empty FETCH item list")
    items: list[FetchItem] = []
    for tok in atoms:
        if isinstance(tok, list) and items and items[-1].name == "PREVIEW" and not items[-1].label:
            # RFC 8970 PREVIEW (LAZY): we always compute, so LAZY changes nothing.
            if not tok or any(not isinstance(m, Atom) or m.upper() != b"LAZY" for m in tok):
                raise ParseError("Invalid PREVIEW modifier")
            items[-1].label = b"PREVIEW"
            continue
        if not isinstance(tok, Atom) or isinstance(tok, String):
            raise ParseError("Invalid FETCH item")
        items.append(parse_item(tok))
    return items


def parse_item(tok: bytes) -> FetchItem:
    upper = tok.decode("latin-1").upper()
    if upper in _SIMPLE:
        if upper == "RFC822":
            return FetchItem("BODY[]", Section(), peek=False, label=b"RFC822")
        if upper == "RFC822.HEADER":
            return FetchItem("BODY[]", Section(text="HEADER"), peek=True, label=b"RFC822.HEADER")
        if upper == "RFC822.TEXT":
            return FetchItem("BODY[]", Section(text="TEXT"), peek=False, label=b"RFC822.TEXT")
        return FetchItem(upper)
    m = _BINARY_SIZE_RE.match(tok)
    if m:
        section = _binary_section(m.group(1))
        return FetchItem("BINARY.SIZE", section, label=b"BINARY.SIZE[" + section.label() + b"]")
    m = _BODY_RE.match(tok)
    if not m:
        raise ParseError(f"Unknown FETCH item {tok[:40].decode('latin-1')!r}")
    kind = m.group(1).upper()
    binary = kind.startswith(b"BINARY")
    section = _binary_section(m.group(2)) if binary else parse_section(m.group(2))
    partial = None
    if m.group(3) is not None:
        partial = (int(m.group(3)), int(m.group(4)))
        if partial[1] == 0:
            raise ParseError("Invalid partial length")
    label = (b"BINARY[" if binary else b"BODY[") + section.label() + b"]"
    if partial:
        label += b"<%d>" % partial[0]
    name = "BINARY[]" if binary else "BODY[]"
    return FetchItem(name, section, peek=kind.endswith(b"PEEK"), partial=partial, label=label)


def _binary_section(raw: bytes) -> Section:
    """RFC 3516 section-binary: part numbers only."""
    sec = parse_section(raw)
    if sec.text:
        raise ParseError("BINARY sections take part numbers only")
    return sec


def format_internaldate(when: datetime.datetime) -> bytes:
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    offset = when.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f'"{when.day:2d}-{MONTHS[when.month - 1]}-{when.year:04d} '
        f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"'
    ).encode()


def format_flags(flags: set[str] | list[str], recent: bool = False) -> bytes:
    out = sorted(flags, key=lambda f: (not f.startswith("\\"), f.lower()))
    if recent:
        out.insert(0, "\\Recent")
    return ("(" + " ".join(out) + ")").encode("utf-8")


def section_bytes(msg: mime.ParsedMessage, section: Section) -> bytes:
    """The bytes a BODY[section] names ("" if the part does not exist)."""
    data = msg.data
    if not section.numbers and not section.text:
        return data
    root = msg.root
    if section.numbers:
        part = mime.find_part(root, section.numbers)
        if part is None:
            return b""
        if section.text == "":
            return data[part.body_start : part.end]
        if section.text == "MIME":
            return data[part.start : part.body_start] if part is not root else \
                mime.filter_header(data, root, None, False)
        if part.message is None:
            return b""
        target = part.message
    else:
        target = root
    if section.text == "TEXT":
        return data[target.body_start : target.end]
    if section.text == "HEADER":
        return mime.filter_header(data, target, None, False)
    return mime.filter_header(data, target, section.fields, section.text.endswith(".NOT"))


@dataclass
class StreamedLiteral:
    """A literal to stream from message ``uid``'s file: the CRLF-normalized
    message (or, with ``text``, its body only), cut to ``partial``."""

    uid: int
    label: bytes
    text: bool = False
    partial: tuple[int, int] | None = None
    binary: bool = False


@dataclass
class MessageScan:
    """What streaming needs to know before the first byte: the normalized
    size, where the body starts, and whether a NUL occurs (literal8)."""

    size: int
    body_start: int
    has_nul: bool

    def window(self, lit: StreamedLiteral) -> tuple[int, int]:
        """[start, end) of the normalized message that ``lit`` sends."""
        start, end = (self.body_start, self.size) if lit.text else (0, self.size)
        if lit.partial is not None:
            offset, length = lit.partial
            start = min(start + offset, end)
            end = min(start + length, end)
        return start, end


def normalized_chunks(f: Any, size: int = STREAM_CHUNK) -> Iterator[bytes]:
    """The file's bytes with every line end as CRLF, a chunk at a time
    (a CR at the end of a chunk waits for the next one)."""
    carry = b""
    while True:
        chunk = f.read(size)
        if not chunk:
            if carry:
                yield carry
            return
        data = carry + chunk
        if data.endswith(b"\r"):
            carry, data = b"\r", data[:-1]
        else:
            carry = b""
        if data:
            yield mime.normalize_crlf(data)


def scan_message(f: Any, result: list[MessageScan]) -> Iterator[None]:
    """Read the file once (one chunk per step) and append its MessageScan
    to ``result``; body_start follows mime.parse_part's rule."""
    total = 0
    body_start = -1
    has_nul = False
    tail = b""
    for chunk in normalized_chunks(f, 4 * STREAM_CHUNK):
        if body_start < 0:
            if total == 0 and chunk.startswith(b"\r\n"):
                body_start = 2
            else:
                window = tail + chunk
                idx = window.find(b"\r\n\r\n")
                if idx >= 0:
                    body_start = total - len(tail) + idx + 4
                tail = window[-3:]
        if not has_nul and b"\x00" in chunk:
            has_nul = True
        total += len(chunk)
        yield None
    result.append(MessageScan(total, body_start if body_start >= 0 else total, has_nul))


@dataclass
class FetchStats:
    hdr_count: int = 0
    hdr_bytes: int = 0
    body_count: int = 0
    body_bytes: int = 0


def render(
    seq: int,
    info: MessageInfo,
    items: list[FetchItem],
    recent: bool,
    load: Callable[[], mime.ParsedMessage],
    stats: FetchStats,
    add_flags: bool = False,
    mailbox: Any = None,
) -> bytes:
    """One ``* seq FETCH (...)`` response line (with CRLF), all in memory."""
    pieces = render_pieces(seq, info, items, recent, load, stats, add_flags, mailbox)
    return b"".join(p for p in pieces if isinstance(p, bytes))


def needs_body(items: list[FetchItem]) -> bool:
    """True when some item needs the parsed whole message even with the
    big literals streamed (BODYSTRUCTURE, BODY[1], BINARY[2], PREVIEW …)."""
    rest = [i for i in items if not streamable(i)]
    return not header_only(rest)


def streamable(item: FetchItem) -> bool:
    """Whether a big message's literal for ``item`` can be streamed from
    the file (the whole message, or its TEXT, maybe partial)."""
    section = item.section
    if section is None or section.numbers:
        return False
    return item.name == "BINARY[]" or section.text in ("", "TEXT")


#: What NUL becomes in a BODY[] literal (a string literal can't hold NUL,
#: RFC 3501 4.3; RFC 3516 leaves NUL to BINARY[]): Dovecot's 0x80.  The
#: size stays the same, so RFC822.SIZE and streamed literals agree.
NUL_REPLACEMENT = b"\x80"


def without_nul(data: bytes) -> bytes:
    """``data`` with every NUL replaced as Dovecot does in BODY[] (0x80)."""
    return data.replace(b"\x00", NUL_REPLACEMENT) if b"\x00" in data else data


def _part_view(msg: mime.ParsedMessage, item: FetchItem,
               binary: bool) -> tuple[memoryview, bool] | None:
    """A big BODY[n]/BINARY[n] (partial applied) as a view of the message
    and whether it holds NUL; None where it must be built as bytes."""
    assert item.section is not None
    span = ext_fetch.part_span(msg, item.section.numbers, binary, STREAM_CHUNK)
    if span is None:
        return None
    start, end = span
    if item.partial is not None:
        offset, length = item.partial
        start, end = min(start + offset, end), min(start + offset + length, end)
    has_nul = msg.data.find(b"\x00", start, end) >= 0
    return memoryview(msg.data)[start:end], has_nul


def render_pieces(
    seq: int,
    info: MessageInfo,
    items: list[FetchItem],
    recent: bool,
    load: Callable[[], mime.ParsedMessage],
    stats: FetchStats,
    add_flags: bool = False,
    mailbox: Any = None,
    stream: bool = False,
    data: dict[str, Any] | None = None,
    expunged: bool = False,
) -> list[bytes | StreamedLiteral]:
    """One ``* seq FETCH (...)`` response (with CRLF) as pieces: bytes, and
    with ``stream`` a :class:`StreamedLiteral` for each whole-message or
    TEXT literal (the caller streams those from the file).

    ``data`` holds what the caller had the storage answer from its index
    (``IMailbox.fetch_data``: ``envelope``, ``bodystructure``, ``body``,
    ``preview``); items it lacks are made from ``load()``'s message.
    ``mailbox`` is unused (kept for callers).  Everything here is
    synchronous: the caller has awaited the storage.  ``expunged``: the
    message's contents are gone (expunged elsewhere): its sections are NIL.
    """
    out: list[bytes | StreamedLiteral | tuple[bytes, bytes]] = []
    indexed = data or {}
    seen_flags = False
    for item in items:
        name = item.name
        if name == "FLAGS":
            if seen_flags:
                continue
            seen_flags = True
            out.append(b"FLAGS " + format_flags(info.flags, recent))
        elif name == "UID":
            out.append(b"UID %d" % info.uid)
        elif name == "INTERNALDATE":
            out.append(b"INTERNALDATE " + format_internaldate(info.internaldate))
        elif name == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % info.size)
        elif name == "ENVELOPE":
            out.append(b"ENVELOPE " + (indexed.get("envelope") or mime.envelope(load().root)))
        elif name == "BODYSTRUCTURE":
            out.append(b"BODYSTRUCTURE " + (indexed.get("bodystructure")
                                            or mime.bodystructure(load().root, True)))
        elif name == "BODY":
            out.append(b"BODY " + (indexed.get("body") or mime.bodystructure(load().root, False)))
        elif name == "MODSEQ":  # CONDSTORE (RFC 7162)
            out.append(b"MODSEQ (%d)" % info.modseq)
        elif name == "SAVEDATE":
            out.append(savedate(info))
        elif name == "PREVIEW":
            out.append(b"PREVIEW NIL" if expunged
                       else ext_fetch.preview(info, load, indexed.get("preview")))
        elif expunged and name == "BINARY.SIZE":
            out.append(item.label + b" 0")
        elif expunged:  # BODY[…], BINARY[…] of a message whose file is gone
            out.append(item.label + b" NIL")
        elif stream and streamable(item):
            out.append(StreamedLiteral(info.uid, item.label, item.section.text == "TEXT",
                                       item.partial, name == "BINARY[]"))
        elif name in ("BINARY[]", "BINARY.SIZE"):
            assert item.section is not None
            view = _part_view(load(), item, True) if stream and name == "BINARY[]" else None
            if view is not None:  # a big identity-encoded part: no copy
                data, has_nul = view
                stats.body_count += 1
                stats.body_bytes += len(data)
                marker = b"~{%d}\r\n" if has_nul else b"{%d}\r\n"
                out.append((item.label + b" " + marker % len(data), data))
                continue
            data = ext_fetch.binary_section(load(), item.section.numbers)
            if name == "BINARY.SIZE":
                out.append(item.label + b" %d" % len(data))
                continue
            if item.partial is not None:
                start, length = item.partial
                data = data[start : start + length]
            stats.body_count += 1
            stats.body_bytes += len(data)
            if stream and len(data) > STREAM_CHUNK:  # a piece of its own: no copy
                marker = b"~{%d}\r\n" if b"\x00" in data else b"{%d}\r\n"
                out.append((item.label + b" " + marker % len(data), data))
            else:
                out.append(item.label + b" " + ext_fetch.binary_literal(data))
        else:
            assert item.section is not None
            view = None
            if stream and item.section.numbers and item.section.text == "":
                view = _part_view(load(), item, False)
            if view is not None:  # a big part: a view of the message, no copy
                data = view[0]
                if view[1]:  # NUL in it: a copy with 0x80 instead
                    data = without_nul(bytes(data))
            else:
                data = without_nul(section_bytes(load(), item.section))
                if item.partial is not None:
                    start, length = item.partial
                    data = data[start : start + length]
            if item.section.is_header():
                stats.hdr_count += 1
                stats.hdr_bytes += len(data)
            else:
                stats.body_count += 1
                stats.body_bytes += len(data)
            if stream and len(data) > STREAM_CHUNK:  # a piece of its own: no copy
                out.append((item.label + b" {%d}\r\n" % len(data), data))
            else:
                out.append(item.label + b" {%d}\r\n" % len(data) + data)
    if add_flags and not seen_flags:
        out.append(b"FLAGS " + format_flags(info.flags, recent))
    pieces: list[bytes | StreamedLiteral] = []
    current = [b"* %d FETCH (" % seq]
    for i, piece in enumerate(out):
        if i:
            current.append(b" ")
        if isinstance(piece, StreamedLiteral):
            pieces.append(b"".join(current))
            pieces.append(piece)
            current = []
        elif isinstance(piece, tuple):
            current.append(piece[0])
            pieces.append(b"".join(current))
            pieces.append(piece[1])
            current = []
        else:
            current.append(piece)
    current.append(b")\r\n")
    pieces.append(b"".join(current))
    return pieces


#: What ENVELOPE/BODYSTRUCTURE describe for an expunged message whose file
#: is gone: an empty message (Dovecot's all-NIL envelope).
EXPUNGED_MESSAGE = mime.ParsedMessage(b"\r\n")


def savedate(info: MessageInfo) -> bytes:
    """``SAVEDATE`` (RFC 8514): when the message was saved, or NIL."""
    when = info.savedate
    return b"SAVEDATE " + (format_internaldate(when) if when is not None else b"NIL")
