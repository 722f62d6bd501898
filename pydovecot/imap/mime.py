"""MIME structure of a stored message: part offsets, ENVELOPE, BODYSTRUCTURE.

Input is a message's bytes from storage, which may be hostile (a message
anyone could have mailed): parsing never raises on malformed MIME, never
recurses over the input, and has Dovecot's limits (100 levels of nesting,
10,000 parts; beyond them one opaque part, as Dovecot's OVERFLOW part), and
can run in slices (:meth:`ParsedMessage.prepare_steps`) for huge trees.
Header values are kept raw (encoded words are not decoded
for ENVELOPE/BODYSTRUCTURE, as RFC 3501 wants).  The message is CRLF-
normalized first; every offset refers to those normalized bytes, so
``BODY[1.2]`` is an exact slice.  The stdlib ``email`` package (compat32)
parses parameters and decodes RFC 2047 words / transfer encodings for
SEARCH; byte offsets are computed here because ``email`` does not keep them.
Quoted-printable is decoded here exactly per RFC 2045 6.7
(:func:`qp_decode`; the stdlib's gets soft breaks after white space wrong);
:func:`binary_convert` is Dovecot's binary converter (BINARY[] of a tree);
:func:`parse_addresses` reads address lists as Dovecot's message-address
parser does (names from trailing comments, nested comments, CFWS inside
addr-specs, groups).
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import email.utils
import itertools
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

_LF_RE = re.compile(rb"\r?\n")
_header_parser = BytesHeaderParser(policy=compat32)


def normalize_crlf(data: bytes) -> bytes:
    """Every line end as CRLF (IMAP's canonical form)."""
    lf = data.count(b"\n")
    if lf == 0 or data.count(b"\r\n") == lf:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- IMAP output helpers -------------------------------------------------------


def imap_string(value: bytes | str | None) -> bytes:
    """nstring: NIL, a quoted string, or a literal if it must be one."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if len(value) > 1024 or _LITERAL_ONLY.search(value) is not None:
        return b"{%d}\r\n" % len(value) + value
    if b"\\" in value or b'"' in value:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


_LITERAL_ONLY = re.compile(rb"[\x00\r\n\x80-\xff]")


def imap_list(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


# -- headers -------------------------------------------------------------------


@dataclass
class HeaderField:
    name: bytes  # as written
    raw: bytes  # the whole field including folding and final CRLF
    value: bytes  # after the colon, unfolded, stripped


def parse_header_fields(block: bytes) -> list[HeaderField]:
    """Split a CRLF header block into fields (continuation lines joined)."""
    fields: list[HeaderField] = []
    current: list[bytes] = []

    def flush() -> None:
        if current:
            raw = b"".join(current)
            name, sep, value = raw.partition(b":")
            if sep:
                unfolded = value.replace(b"\r\n", b"").strip(b" \t\r\n")
                fields.append(HeaderField(name.strip(), raw, unfolded))
            current.clear()

    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
        else:
            flush()
            current.append(line)
    flush()
    return fields


#: Bytes read at a time while looking for the end of a message's header.
HEADER_CHUNK = 8192
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def read_header_block(f) -> tuple[bytes, bool]:
    """Read a message file only as far as the end of its top-level header.

    Returns ``(block, complete)``: the header without its terminating blank
    line, and whether that blank line was found (without it, the whole
    file was read and the block is all of it).
    """
    block = b""
    while True:
        chunk = f.read(HEADER_CHUNK)
        block += chunk
        end = _HEADER_END.search(block)
        if end is not None:
            return block[:end.start()], True
        if not chunk:
            return block, False


def header_value(fields: list[HeaderField], name: str) -> bytes | None:
    """First field ``name`` (case-insensitive), raw and unfolded."""
    key = name.lower().encode()
    for f in fields:
        if f.name.lower() == key:
            return f.value
    return None


def decode_header_value(raw: bytes) -> str:
    """RFC 2047-decoded text of a raw header value (for SEARCH)."""
    text = raw.decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return text


# -- the part tree ------------------------------------------------------------


@dataclass(eq=False)
class Part:
    """One MIME entity: ``data[start:body_start]`` is its header (with the
    blank line), ``data[body_start:end]`` its body."""

    start: int
    body_start: int
    end: int
    fields: list[HeaderField]
    maintype: str
    subtype: str
    params: list[tuple[str, str]]
    children: list[Part] = field(default_factory=list)
    multipart: bool = False
    message: Part | None = None  # the enclosed message of message/rfc822
    data: bytes = field(default=b"", repr=False)  # the whole message (shared)
    overflow: bool = False  # a part limit stopped parsing here (Dovecot's OVERFLOW)
    _lines: int = field(default=-1, repr=False)
    _first: dict[bytes, bytes] | None = field(default=None, repr=False)
    _structure: list | None = field(default=None, repr=False)  # [BODY, BODYSTRUCTURE]

    @property
    def size(self) -> int:
        return self.end - self.body_start

    @property
    def lines(self) -> int:
        """Body lines, counted when first asked (only BODYSTRUCTURE of text
        and message/rfc822 parts needs them)."""
        if self._lines < 0:
            data, start, end = self.data, self.body_start, self.end
            # newlines, as Dovecot counts them: a last line without one
            # (the CRLF before a boundary is the boundary's) is not a line
            self._lines = data.count(b"\n", start, end)
        return self._lines

    @lines.setter
    def lines(self, value: int) -> None:
        self._lines = value

    def header(self, name: str) -> bytes | None:
        """First field ``name`` (case-insensitive), raw and unfolded."""
        first = self._first
        if first is None:
            first = {}
            for f in self.fields:
                first.setdefault(f.name.lower(), f.value)
            self._first = first
        return first.get(name.lower().encode("latin-1", "replace"))

    def is_rfc822(self) -> bool:
        return self.maintype.lower() == "message" and self.subtype.lower() == "rfc822"


_TOKEN = rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_SIMPLE_CT = re.compile(rb"[ \t]*(" + _TOKEN + rb")[ \t]*/[ \t]*(" + _TOKEN + rb")[ \t]*((?:;[^;\"\\()*]*)*)")
_SIMPLE_PARAM = re.compile(rb"[ \t]*(" + _TOKEN + rb")[ \t]*=[ \t]*(" + _TOKEN + rb")[ \t]*")


def _simple_content_type(raw: bytes):
    """``type/sub; a=b; c=d`` without quotes, comments or RFC 2231 (what
    nearly every part has) parsed without the ``email`` package; None for
    anything else."""
    m = _SIMPLE_CT.fullmatch(raw)
    if m is None:
        return None
    params: list[tuple[str, str]] = []
    rest = m.group(3)
    if rest:
        for piece in rest.split(b";")[1:]:
            if not piece.strip(b" \t"):
                continue
            pm = _SIMPLE_PARAM.fullmatch(piece)
            if pm is None:
                return None
            params.append((pm.group(1).decode("ascii").lower(), pm.group(2).decode("ascii")))
    return m.group(1).decode("ascii"), m.group(2).decode("ascii"), params


def _content_type(fields: list[HeaderField], default: tuple[str, str]):
    raw = header_value(fields, "Content-Type")
    if raw is None:
        return default[0], default[1], [], True
    simple = _simple_content_type(raw)
    if simple is not None:
        return simple[0], simple[1], simple[2], False
    msg = Message()
    msg["Content-Type"] = raw.decode("ascii", "surrogateescape")
    params = msg.get_params(header="content-type", unquote=True) or []
    if not params:
        return default[0], default[1], [], True
    ctype = params[0][0].strip()
    maintype, _, subtype = ctype.partition("/")
    if not maintype or not subtype or not re.fullmatch(r"[!-~]+", maintype + subtype):
        return default[0], default[1], [], True
    out: list[tuple[str, str]] = []
    for name, value in params[1:]:
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        out.append((name, str(value)))
    return maintype, subtype.strip(), out, False


#: Dovecot's message-parser limits (lib-mail MESSAGE_PARSER_DEFAULT_MAX_*):
#: nesting of multipart and message/rfc822 parts, and parts in a message.
MAX_DEPTH = 100
MAX_PARTS = 10000


def _entity(data: bytes, start: int, end: int, default: tuple[str, str]) -> Part:
    """One entity's header parsed; no children yet."""
    if data.startswith(b"\r\n", start) or start >= end:
        body_start = min(start + 2, end)
        header_end = start
    else:
        idx = data.find(b"\r\n\r\n", start, end)
        if idx < 0:
            header_end = body_start = end
        else:
            header_end = idx + 2
            body_start = idx + 4
    fields = parse_header_fields(data[start:header_end])
    maintype, subtype, params, _defaulted = _content_type(fields, default)
    if maintype.lower() == "text" and not params:
        params = [("charset", "us-ascii")]
    return Part(start, body_start, end, fields, maintype, subtype, params, data=data)


def _make_opaque(part: Part) -> None:
    """A multipart or message part not parsed further: an opaque body, as
    Dovecot reports an OVERFLOW part (application/octet-stream)."""
    part.overflow = True
    if part.maintype.lower() in ("multipart", "message"):
        part.maintype, part.subtype = "application", "octet-stream"  # params kept, as Dovecot


def parse_part(
    data: bytes, start: int, end: int, default=("text", "plain"), depth: int = 0,
    max_depth: int = MAX_DEPTH, max_parts: int = MAX_PARTS,
) -> Part:
    """Parse the entity in ``data[start:end]`` (CRLF line ends) and all its
    parts, without recursion.

    Beyond ``max_depth`` levels of nesting a multipart or message/rfc822 is
    one opaque part; once ``max_parts`` parts exist, the last one takes the
    rest of the message as its body, as Dovecot's parser does.  Never
    raises on any input."""
    root = _entity(data, start, end, default)
    for _ in _parse_children(data, root, depth, max_depth, max_parts):
        pass
    return root


#: Parts rendered between two yields of :func:`render_structures`.
SLICE_PARTS = 50


def _parse_children(data: bytes, root: Part, depth: int = 0, max_depth: int = MAX_DEPTH,
                    max_parts: int = MAX_PARTS) -> Iterator[None]:
    """Parse every part under ``root`` in document order (as Dovecot counts
    them), with an explicit stack; yields after each part.

    A multipart or message/rfc822 part at nesting level ``max_depth`` (the
    root is level 1) is one opaque part; the part that makes ``max_parts``
    is an opaque part taking the rest of the message."""
    count = 1
    parents: dict[int, Part] = {}
    # open multiparts: (part, its body parts still to find, its level)
    stack: list[tuple[Part, Iterator[tuple[int, int]], tuple[str, str], int]] = []

    def enter(part: Part, level: int) -> Part | None:
        """Start on ``part``'s children; the enclosed message of a
        message/rfc822 part is returned to be counted and entered."""
        lowtype = part.maintype.lower()
        boundary = dict(part.params).get("boundary") if lowtype == "multipart" else None
        is_message = part.is_rfc822()
        if not ((lowtype == "multipart" and boundary) or is_message):
            return None
        if level + 1 >= max_depth:
            _make_opaque(part)
            return None
        if is_message:
            part.message = _entity(data, part.body_start, part.end, ("text", "plain"))
            parents[id(part.message)] = part
            return part.message
        part.multipart = True
        child_default = ("message", "rfc822") if part.subtype.lower() == "digest" else ("text", "plain")
        bounds = _iter_multipart(data, part.body_start, part.end,
                                 boundary.encode("latin-1", "replace"))  # type: ignore[union-attr]
        stack.append((part, bounds, child_default, level))
        return None

    pending: list[tuple[Part, int]] = [(root, depth)]
    while True:
        while pending:
            part, level = pending.pop()
            child = enter(part, level)
            if child is not None:
                count += 1
                if count >= max_parts:
                    _overflow(child, parents, root)
                    return
                pending.append((child, level + 1))
        if not stack:
            return
        yield None  # each step finds one body part (a scan of up to its parent's body)
        parent, bounds, child_default, level = stack[-1]
        found = next(bounds, None)
        if found is None:
            stack.pop()
            continue
        child = _entity(data, found[0], found[1], child_default)
        parents[id(child)] = parent
        parent.children.append(child)
        count += 1
        if count >= max_parts:
            _overflow(child, parents, root)
            return
        pending.append((child, level + 1))


def _overflow(part: Part, parents: dict[int, Part], root: Part) -> None:
    """The part limit is reached at ``part``: it is not parsed further and
    its body (and every enclosing part's) runs to the end of the message."""
    part.children = []
    part.message = None
    part.multipart = False
    _make_opaque(part)
    node: Part | None = part
    while node is not None:
        node.end = root.end
        node.lines = -1
        node = parents.get(id(node))


def _split_multipart(data: bytes, start: int, end: int, boundary: bytes,
                     limit: int = MAX_PARTS) -> list[tuple[int, int]]:
    """The (start, end) of up to ``limit`` body parts of a multipart body."""
    return list(itertools.islice(_iter_multipart(data, start, end, boundary), limit))


def _iter_multipart(data: bytes, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """The (start, end) of each body part of a multipart body, as found."""
    delim = b"--" + boundary
    cur: int | None = None
    search = start
    first = True
    while True:
        if first and data.startswith(delim, start, end):
            pre = line = start
        else:
            i = data.find(b"\r\n" + delim, search, end)
            if i < 0:
                break
            pre, line = i, i + 2
        first = False
        after = line + len(delim)
        closing = data.startswith(b"--", after, end)
        eol = data.find(b"\r\n", after, end)
        if eol < 0:
            eol = end
        rest = data[after + (2 if closing else 0) : eol]
        if rest.strip(b" \t"):
            search = line  # boundary is only a prefix of this line
            continue
        if cur is not None:
            yield (cur, max(cur, pre))
        if closing:
            cur = None
            break
        cur = min(eol + 2, end)
        search = eol
    if cur is not None:
        yield (cur, end)


class ParsedMessage:
    """A message's normalized bytes and (lazily) its part tree."""

    def __init__(self, data: bytes):
        self.data = data
        self._root: Part | None = None

    @property
    def root(self) -> Part:
        if self._root is None:
            self._root = parse_part(self.data, 0, len(self.data))
        return self._root

    def prepare_steps(self) -> Iterator[None]:
        """Parse the part tree and render its BODYSTRUCTURE in slices (for
        ``task.cooperate``): afterwards :attr:`root` and
        :func:`bodystructure` answer at once."""
        if self._root is None:
            root = _entity(self.data, 0, len(self.data), ("text", "plain"))
            yield from _parse_children(self.data, root)
            self._root = root
        yield from render_structures(self._root)


class MessageCache:
    """A small LRU of parsed messages keyed by (mailbox, uidvalidity, uid),
    bounded in count, in bytes per message and in bytes in all."""

    def __init__(self, size: int = 16, max_bytes: int = 4 * 1024 * 1024,
                 total_bytes: int = 8 * 1024 * 1024):
        self.size = size
        self.max_bytes = max_bytes
        self.total_bytes = total_bytes
        self._bytes = 0
        self._items: OrderedDict[tuple, ParsedMessage] = OrderedDict()
        self._pinned: dict[tuple, ParsedMessage] = {}

    def pin(self, key: tuple, item: ParsedMessage) -> None:
        """Hold ``item`` (whatever its size) until :meth:`unpin`: a message
        prepared in slices for the command that is about to render it."""
        self._pinned[key] = item

    def unpin(self, key: tuple) -> None:
        self._pinned.pop(key, None)

    def get(self, key: tuple) -> ParsedMessage | None:
        pinned = self._pinned.get(key)
        if pinned is not None:
            return pinned
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: tuple, item: ParsedMessage) -> None:
        if len(item.data) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old.data)
        self._items[key] = item
        self._bytes += len(item.data)
        while len(self._items) > self.size or self._bytes > self.total_bytes:
            _key, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped.data)


# -- ENVELOPE -------------------------------------------------------------------

#: One lexical token of an address list (RFC 5322 3.2-3.4): white space,
#: a quoted string, a domain literal, a special, the start of a comment
#: (comments nest, so they are scanned by :func:`_skip_comment`), an atom,
#: or any other single character.
_ADDR_TOKEN = re.compile(
    rb'([ \t\r\n]+)|("(?:\\.|[^"\\])*"?)|(\[(?:\\.|[^\[\]\\])*\])|([<>@,;:.])|(\()'
    rb'|([^ \t\r\n<>@,;:."()\[\]\\]+)|(.)', re.S)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)
_WORD, _QUOTED, _SPECIAL = 0, 1, 2


def _unquote(tok: bytes) -> bytes:
    body = tok[1:-1] if tok.endswith(b'"') and len(tok) > 1 else tok[1:]
    return _QUOTED_PAIR.sub(rb"\1", body)


def _skip_comment(raw: bytes, pos: int) -> tuple[int, bytes]:
    """End of the (nested) comment opening at ``raw[pos]`` and its text
    without the outer parentheses."""
    depth, i, n = 0, pos, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x5C:  # quoted-pair
            i += 2
            continue
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return i + 1, _QUOTED_PAIR.sub(rb"\1", raw[pos + 1:i])
        i += 1
    return n, _QUOTED_PAIR.sub(rb"\1", raw[pos + 1:])


def _address_tokens(raw: bytes) -> list[tuple[int, bytes, bool]]:
    """(kind, text, white space or comment before it) for every token;
    comments come as kind -1 with their text."""
    out: list[tuple[int, bytes, bool]] = []
    pos, n, space = 0, len(raw), False
    while pos < n:
        m = _ADDR_TOKEN.match(raw, pos)
        if m is None:  # pragma: no cover - the last alternative matches anything
            break
        kind = m.lastindex
        if kind == 1:
            space = True
            pos = m.end()
            continue
        if kind == 5:
            pos, text = _skip_comment(raw, pos)
            out.append((-1, text, space))
            space = True
            continue
        text = m.group(0)
        if kind == 2:
            out.append((_QUOTED, text, space))
        elif kind == 4:
            out.append((_SPECIAL, text, space))
        else:
            out.append((_WORD, text, space))
        space = False
        pos = m.end()
    return out


def _spec_text(tokens: list[tuple[int, bytes, bool]]) -> bytes:
    """An addr-spec's part: its tokens without comments and folding white
    space (RFC 5322 obs-local-part / obs-domain allow CFWS around dots)."""
    return b"".join(_unquote(t) if k == _QUOTED else t for k, t, _s in tokens if k != -1)


def _phrase(words: list[tuple[int, bytes, bool]]) -> bytes | None:
    """A display-name: words unquoted, one space where white space or a
    comment separated two of them (``john.q. public`` stays as written)."""
    parts: list[bytes] = []
    for kind, text, space in words:
        if kind == -1:
            continue
        if parts and space:
            parts.append(b" ")
        parts.append(_unquote(text) if kind == _QUOTED else text)
    return b"".join(parts) if parts else None


def _split_spec(tokens: list[tuple[int, bytes, bool]]) -> tuple[bytes, bytes]:
    """(local-part, domain) of an addr-spec's tokens, split at the last ``@``."""
    at = -1
    for i, (kind, text, _s) in enumerate(tokens):
        if kind == _SPECIAL and text == b"@":
            at = i
    if at < 0:
        return _spec_text(tokens), b""
    return _spec_text(tokens[:at]), _spec_text(tokens[at + 1:])


def parse_addresses(raw: bytes) -> list[tuple[bytes | None, bytes | None, bytes | None, bytes | None]]:
    """RFC 5322 address-list → (name, adl, mailbox, host) tuples, as
    Dovecot's message-address parser gives them; groups as
    (NIL NIL name NIL) … (NIL NIL NIL NIL) per RFC 3501 7.4.2.

    Comments and folding white space inside an addr-spec are dropped
    (``<user (c)@ (c) example.org>`` is user / example.org); a bare
    addr-spec without a display name takes its last comment after the
    address started as the name (``user@example.org (Real Name)``); an
    empty element between two commas is an empty address.  Missing
    mailbox or host parts are ``b""`` (the ENVELOPE shows Dovecot's
    ``MISSING_MAILBOX``/``MISSING_DOMAIN``).  Linear, never raises."""
    tokens = _address_tokens(raw)
    out: list[tuple] = []
    words: list[tuple[int, bytes, bool]] = []
    in_group = False
    after_comma = False
    i, n = 0, len(tokens)

    def flush_addrspec() -> None:
        if not words:
            return
        significant = [w for w in words if w[0] != -1]
        if not significant:
            words.clear()
            return
        first = words.index(significant[0])
        comment = None
        for kind, text, _s in words[first:]:
            if kind == -1:
                comment = text
        body = [w for w in words if w[0] != -1]
        local_tokens = body
        for j, (kind, text, _s) in enumerate(body):
            if kind == _SPECIAL and text == b"@":
                local_tokens = body[:j]
                break
        # words separated by white space in the local part (not around a
        # dot) are a phrase with no address: Dovecot's reading of it
        spaced = any(space and k != _SPECIAL and local_tokens[j - 1][0] != _SPECIAL
                     for j, (k, _t, space) in enumerate(local_tokens) if j > 0)
        if spaced:
            out.append((_phrase(local_tokens), None, b"", b""))
        else:
            local, host = _split_spec(body)
            out.append((comment or None, None, local, host))
        words.clear()

    while i < n:
        kind, tok, _space = tokens[i]
        special = tok if kind == _SPECIAL else None
        if special == b"<":
            name = _phrase(words)
            words.clear()
            j = i + 1
            inner: list[tuple[int, bytes, bool]] = []
            while j < n and not (tokens[j][0] == _SPECIAL and tokens[j][1] == b">"):
                if tokens[j][0] != -1:
                    inner.append(tokens[j])
                j += 1
            closed = j < n
            i = j + 1
            adl = None
            if inner and inner[0][1] == b"@" and inner[0][0] == _SPECIAL:
                for k, (kk, tt, _s) in enumerate(inner):
                    if kk == _SPECIAL and tt == b":":
                        adl = b"".join(t for _k, t, _s2 in inner[:k])
                        inner = inner[k + 1:]
                        break
            local, host = _split_spec(inner)
            if not closed:
                host = b"SYNTAX_ERROR"  # no ">": Dovecot's mark
            out.append((name, adl, local, host))
            after_comma = False
            continue
        if special == b":" and not in_group and not any(w[1] == b"@" and w[0] == _SPECIAL for w in words):
            out.append((None, None, _phrase(words) or b"", None))
            words.clear()
            in_group = True
        elif special == b":":
            words.clear()  # an obs-route outside angle brackets: dropped
        elif special == b";":
            flush_addrspec()
            if in_group:
                out.append((None, None, None, None))
                in_group = False
        elif special == b",":
            if not any(w[0] != -1 for w in words) and after_comma:
                out.append((None, None, b"", b""))
            flush_addrspec()
            after_comma = True
            i += 1
            continue
        else:
            words.append(tokens[i])
        if kind != -1:
            after_comma = False
        i += 1
    flush_addrspec()
    if in_group:
        out.append((None, None, None, None))
    return out


def _address_list(part: Part, name: str) -> list[tuple] | None:
    raw = part.header(name)
    if raw is None:
        return None
    return parse_addresses(raw) or None


def _format_addresses(addrs: list[tuple] | None) -> bytes:
    """An ENVELOPE address list; an empty mailbox or host (not a group
    marker) is written as Dovecot writes it, MISSING_MAILBOX/MISSING_DOMAIN."""
    if not addrs:
        return b"NIL"
    items = []
    for name, adl, mailbox, host in addrs:
        if host is not None:
            mailbox = mailbox or b"MISSING_MAILBOX"
            host = host or b"MISSING_DOMAIN"
        items.append(imap_list([imap_string(name), imap_string(adl), imap_string(mailbox),
                                imap_string(host)]))
    return b"(" + b"".join(items) + b")"


def envelope(part: Part) -> bytes:
    """The ENVELOPE of a message-level part, exactly per RFC 3501 7.4.2."""
    from_ = _address_list(part, "From")
    sender = _address_list(part, "Sender") or from_
    reply_to = _address_list(part, "Reply-To") or from_
    items = [
        imap_string(part.header("Date")),
        imap_string(part.header("Subject")),
        _format_addresses(from_),
        _format_addresses(sender),
        _format_addresses(reply_to),
        _format_addresses(_address_list(part, "To")),
        _format_addresses(_address_list(part, "Cc")),
        _format_addresses(_address_list(part, "Bcc")),
        imap_string(part.header("In-Reply-To")),
        imap_string(part.header("Message-ID")),
    ]
    return imap_list(items)


# -- BODYSTRUCTURE --------------------------------------------------------------


def _param_list(params: list[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return imap_list([imap_string(x) for kv in params for x in kv])


def _disposition(part: Part) -> bytes:
    raw = part.header("Content-Disposition")
    if raw is None:
        return b"NIL"
    msg = Message()
    msg["Content-Disposition"] = raw.decode("ascii", "surrogateescape")
    params = msg.get_params(header="content-disposition", unquote=True) or []
    if not params or not params[0][0]:
        return b"NIL"
    rest = []
    for name, value in params[1:]:
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        rest.append((name, str(value)))
    return imap_list([imap_string(params[0][0].strip()), _param_list(rest)])


def _language(part: Part) -> bytes:
    raw = part.header("Content-Language")
    if raw is None:
        return b"NIL"
    langs = [x.strip() for x in re.split(rb"[,\s]+", raw) if x.strip()]
    if not langs:
        return b"NIL"
    if len(langs) == 1:
        return imap_string(langs[0])
    return imap_list([imap_string(x) for x in langs])


def bodystructure(part: Part, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of a part, per RFC 3501 7.4.2
    (from the memo :func:`render_structures` fills, when it ran)."""
    memo = part._structure
    if memo is not None and memo[extended] is not None:
        return memo[extended]
    return _bodystructure(part, extended)


def render_structures(root: Part) -> Iterator[None]:
    """Fill every part's BODY and BODYSTRUCTURE memo, deepest parts first,
    yielding every :data:`SLICE_PARTS` parts (so a huge tree can be
    rendered in slices before FETCH asks for it)."""
    order: list[Part] = []
    stack = [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
        if node.message is not None:
            stack.append(node.message)
    for n, node in enumerate(reversed(order), 1):
        node._structure = [_bodystructure(node, False), _bodystructure(node, True)]
        if n % SLICE_PARTS == 0:
            yield None


def binary_bodystructure(data: bytes, part: Part) -> bytes:
    """BODYSTRUCTURE of ``part`` with every size and line count that of the
    decoded content (RFC 5524 BODYPARTSTRUCTURE with BINARY, as Dovecot's
    imap_msgpart_vsizes_to_binary reports them)."""
    sizes: dict[int, tuple[int, int]] = {}
    stack = [part]
    while stack:
        node = stack.pop()
        if node.multipart:
            body = binary_convert(data, node, node.body_start)
            stack.extend(node.children)
        elif node.message is not None:
            body = binary_convert(data, node.message, node.body_start)
            stack.append(node.message)
        else:
            raw = data[node.body_start:node.end]
            body = cte_decode(raw, part_cte(node))
            if body is None:
                body = raw
        sizes[id(node)] = (len(body), body.count(b"\n"))
    return _bodystructure(part, True, sizes)


def _bodystructure(part: Part, extended: bool, sizes: dict[int, tuple[int, int]] | None = None) -> bytes:
    """One part's BODY/BODYSTRUCTURE; ``sizes`` (by ``id(part)``) replaces
    the octet and line counts (and is passed down to every child)."""
    def child(c: Part) -> bytes:
        return bodystructure(c, extended) if sizes is None else _bodystructure(c, extended, sizes)

    size, lines = (part.size, -1) if sizes is None else sizes.get(id(part), (part.size, -1))
    if part.multipart:
        if part.children:
            inner = b"".join(child(c) for c in part.children)
        else:
            inner = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
        out = [inner, imap_string(part.subtype)]
        if extended:
            params = [kv for kv in part.params]
            out += [_param_list(params), _disposition(part), _language(part),
                    imap_string(part.header("Content-Location"))]
        return b"(" + b" ".join(out) + b")"
    items = [
        imap_string(part.maintype),
        imap_string(part.subtype),
        _param_list(part.params),
        imap_string(part.header("Content-ID")),
        imap_string(part.header("Content-Description")),
        imap_string(part.header("Content-Transfer-Encoding") or b"7bit"),
        b"%d" % size,
    ]
    if lines < 0 and (part.message is not None or part.maintype.lower() == "text"):
        lines = part.lines
    if part.is_rfc822() and part.message is not None:
        items += [envelope(part.message), child(part.message), b"%d" % lines]
    elif part.maintype.lower() == "text":
        items.append(b"%d" % lines)
    if extended:
        items += [imap_string(part.header("Content-MD5")), _disposition(part), _language(part),
                  imap_string(part.header("Content-Location"))]
    return imap_list(items)


# -- sections -----------------------------------------------------------------------


def find_part(root: Part, numbers: list[int]) -> Part | None:
    """The part named by ``1.2.3`` (None if it does not exist)."""
    node = root
    at_message = True
    for depth, k in enumerate(numbers):
        if depth > 0 and node.message is not None:
            node = node.message
            at_message = True
        if node.multipart:
            if not 1 <= k <= len(node.children):
                return None
            node = node.children[k - 1]
        elif k != 1 or not at_message:
            return None
        at_message = False
    return node


def filter_header(data: bytes, part: Part, names: list[bytes] | None, exclude: bool) -> bytes:
    """HEADER / HEADER.FIELDS / HEADER.FIELDS.NOT of a message-level part."""
    block = data[part.start : part.body_start]
    if names is None:
        return block
    wanted = {n.lower() for n in names}
    kept = [f.raw for f in parse_header_fields(block) if (f.name.lower() in wanted) != exclude]
    return b"".join(kept) + b"\r\n"


_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")
_B64_ALPHABET_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_QP_TRAILING_WSP = re.compile(rb"[ \t]+(?=\r?\n|\Z)")
_QP_SOFT_BREAK = re.compile(rb"=(?:\r?\n|\Z)")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_HEX_BYTE = {b"%02x" % i: bytes([i]) for i in range(256)}


def _hex_byte(m: re.Match[bytes]) -> bytes:
    return _HEX_BYTE[m.group(1).lower()]


def qp_decode(body: bytes) -> bytes:
    """Quoted-printable decoding exactly per RFC 2045 section 6.7.

    Rule 3: trailing white space on a line is removed (it was added by a
    transport).  Rule 5: ``=`` at the end of a line (after that removal, so
    ``=`` followed by white space too) is a soft line break.  Rule 1:
    ``=XX`` is the octet XX (lower-case hex accepted, as Dovecot and the
    RFC's robustness note allow); an ``=`` not followed by two hex digits
    is kept as it is (the "robust" handling 6.7 recommends).  Linear in
    the input: a few C-level scans, binascii when nothing odd is left."""
    if (b" \n" in body or b"\t\n" in body or b" \r\n" in body or b"\t\r\n" in body
            or body.endswith((b" ", b"\t"))):
        body = _QP_TRAILING_WSP.sub(b"", body)
    if b"=" not in body:
        return body
    if b"=\n" in body:
        body = _QP_SOFT_BREAK.sub(b"", body)
    else:
        if body.endswith(b"="):  # a soft break ending the body (before the replace makes one)
            body = body[:-1]
        body = body.replace(b"=\r\n", b"")
    if b"==" not in body and b"=\r" not in body and b"=\n" not in body and not body.endswith(b"="):
        # only =XX and stray "=" are left: binascii decodes those exactly
        # as the pattern below does, many times faster
        return binascii.a2b_qp(body)
    return _QP_HEX.sub(_hex_byte, body)


def b64_decode(body: bytes) -> bytes:
    """Lenient base64 (RFC 2045 6.8): characters outside the alphabet are
    ignored, decoding stops at the first ``=``, a dangling sextet dropped."""
    clean = _B64_ALPHABET_JUNK.sub(b"", body.split(b"=", 1)[0])
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    try:
        return base64.b64decode(clean + b"=" * (-len(clean) % 4))
    except (binascii.Error, ValueError):
        return b""


#: Content-Transfer-Encodings whose decoding is the identity.
IDENTITY_CTE = frozenset({b"", b"7bit", b"8bit", b"binary"})


def part_cte(part: Part) -> bytes:
    """The part's Content-Transfer-Encoding, lower-case ("" when none)."""
    return (part.header("Content-Transfer-Encoding") or b"").strip().lower()


def cte_decode(body: bytes, cte: bytes) -> bytes | None:
    """``body`` with ``cte`` (lower-case) undone; None if it is unknown."""
    if cte in IDENTITY_CTE:
        return body
    if cte == b"base64":
        return b64_decode(body)
    if cte == b"quoted-printable":
        return qp_decode(body)
    return None


def _leaves(part: Part) -> Iterator[Part]:
    """Leaf parts under ``part`` (itself included) in document order."""
    stack = [part]
    while stack:
        node = stack.pop()
        if node.multipart:
            stack.extend(reversed(node.children))
        elif node.message is not None:
            stack.append(node.message)
        else:
            yield node


def needs_conversion(part: Part) -> bool:
    """Whether some leaf under ``part`` has a transfer encoding to undo."""
    return any(part_cte(leaf) not in IDENTITY_CTE for leaf in _leaves(part))


def unknown_cte(part: Part) -> bytes | None:
    """The first transfer encoding under ``part`` that cannot be undone
    (None when every leaf can be decoded)."""
    for leaf in _leaves(part):
        cte = part_cte(leaf)
        if cte not in IDENTITY_CTE and cte not in (b"base64", b"quoted-printable"):
            return cte
    return None


_CTE_BINARY = b"Content-Transfer-Encoding: binary\r\n"


def binary_convert(data: bytes, part: Part, start: int) -> bytes:
    """``data[start:part.end]`` with every base64/quoted-printable leaf
    under ``part`` decoded and its Content-Transfer-Encoding field replaced
    by ``binary`` (as Dovecot's binary converter does for BINARY[] of a
    message, a multipart or a message/rfc822 part, RFC 3516).  Leaves with
    an unknown encoding are kept as they are.  Iterative, linear."""
    out: list[bytes] = []
    pos = start
    for leaf in _leaves(part):
        cte = part_cte(leaf)
        if cte in IDENTITY_CTE or leaf.body_start < start:
            continue
        decoded = cte_decode(data[leaf.body_start:leaf.end], cte)
        if decoded is None:
            continue
        hpos = leaf.start
        for f in leaf.fields:
            at = data.find(f.raw, hpos, leaf.body_start)
            if at < 0:
                continue
            if f.name.lower() == b"content-transfer-encoding" and at >= pos:
                out.append(data[pos:at])
                out.append(_CTE_BINARY)
                pos = at + len(f.raw)
            hpos = at + len(f.raw)
        out.append(data[pos:leaf.body_start])
        out.append(decoded)
        pos = leaf.end
    if not out:
        return data[start:part.end]
    out.append(data[pos:part.end])
    return b"".join(out)


# -- text for SEARCH ------------------------------------------------------------------


def decode_body(data: bytes, part: Part, limit: int | None = None) -> str:
    """A leaf part's body, transfer-decoded and charset-decoded (only its
    first ``limit`` raw bytes when given)."""
    end = part.end if limit is None else min(part.end, part.body_start + limit)
    body = data[part.body_start : end]
    cte = (part.header("Content-Transfer-Encoding") or b"").strip().lower()
    if cte == b"base64":
        clean = _B64_JUNK.sub(b"", body)
        if limit is not None:
            clean = clean[: len(clean) - len(clean) % 4]
        body = b64_decode(clean)
    elif cte == b"quoted-printable":
        body = qp_decode(body)
    charset = dict(part.params).get("charset", "us-ascii") or "us-ascii"
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


def text_parts(root: Part) -> Iterator[Part]:
    """Leaf parts whose type is text/* (including inside message/rfc822),
    and the opaque part a MIME limit left (its text is searched too)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.multipart:
            stack.extend(reversed(node.children))
        elif node.message is not None:
            stack.append(node.message)
        elif node.maintype.lower() == "text" or node.overflow:
            yield node
