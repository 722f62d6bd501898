"""IMAP command grammar: an incremental command reader and a tokenizer.

Everything here handles untrusted client bytes.  :class:`CommandReader`
splits the stream into commands (lines plus synchronizing ``{n}``,
LITERAL+/LITERAL- ``{n+}`` and BINARY ``~{n}`` literals) under hard limits:
a line longer than the limit is discarded without being buffered, literals
over the APPENDLIMIT are refused before they are read, in LITERAL- mode a
non-synchronizing literal over 4096 bytes is read, dropped and answered
``BAD [TOOBIG]`` (RFC 7888), a command may carry at most
:data:`MAX_COMMAND_LITERALS` literals and :data:`MAX_COMMAND_BYTES` bytes of
them (``NO [LIMIT]`` / ``NO [TOOBIG]``), and large literals are spooled to a
temporary file.  Lists nest at most :data:`MAX_LIST_DEPTH` deep (``BAD
[LIMIT]``); after UTF8=ACCEPT quoted strings must be valid UTF-8 (RFC 6855).  :func:`tokenize` turns one command into nested Python
values; :func:`parse_sequence_set` reads ``1:*,5``.  Errors are
:class:`ParseError` (answered with ``BAD``), never anything else.
"""

from __future__ import annotations

import bisect
import io
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Union

DEFAULT_MAX_LINE = 65536
DEFAULT_MAX_LITERAL = 64 * 1024 * 1024
MAX_LIST_DEPTH = 32
#: RFC 7888: the largest non-synchronizing literal a LITERAL- server accepts.
LITERAL_MINUS_MAX = 4096
#: Literals one command may carry (MULTIAPPEND/CATENATE), and their total size.
MAX_COMMAND_LITERALS = 1000
MAX_COMMAND_BYTES = 1024 * 1024 * 1024
#: Literals up to this size become plain bytes; larger ones stay spooled.
SMALL_LITERAL = 64 * 1024
#: SpooledTemporaryFile keeps this much in memory before going to disk.
SPOOL_MEMORY = 256 * 1024

_LITERAL_RE = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}$")
_TAG_RE = re.compile(rb"^[\x21-\x7e]+")
_TAG_BAD = frozenset(b'(){%*"\\+')


class ParseError(Exception):
    """The command is malformed: answer ``BAD <message>``.

    ``code`` is an optional response code (``LIMIT`` when a parser limit
    was hit) for :func:`bad_response`.
    """

    def __init__(self, message: str = "", code: str = ""):
        super().__init__(message)
        self.code = code


def bad_response(error: ParseError) -> bytes:
    """The tagged ``BAD`` line (after the tag) for a tokenizer error."""
    code = b"[%s] " % error.code.encode() if error.code else b""
    return b"BAD " + code + b"Error in IMAP command: " + str(error).encode()


class Atom(bytes):
    """An atom (or flag, or sequence set, or NIL) as sent."""

    def upper_str(self) -> str:
        return self.decode("latin-1").upper()


class String(bytes):
    """A quoted string or a small literal."""


class LiteralString(String):
    """A small literal's bytes (a String that was sent as ``{n}``)."""


class Binary(LiteralString):
    """A small BINARY literal8 (``~{n}``, RFC 3516): may hold NUL bytes."""


class Literal:
    """A literal too large to keep as bytes: a spooled temporary file."""

    def __init__(self, size: int, binary: bool = False):
        self.size = size
        self.binary = binary  # sent as a literal8 ``~{n}``
        self.file: BinaryIO = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # type: ignore[assignment]

    def getvalue(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def open(self) -> BinaryIO:
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()


Token = Union[Atom, String, Literal, list]  # noqa: UP007 - recursive alias


@dataclass
class RawCommand:
    """One complete command: line pieces, each followed by its literal."""

    segments: list[tuple[bytes, Literal | None]] = field(default_factory=list)

    @property
    def first_line(self) -> bytes:
        return self.segments[0][0] if self.segments else b""

    def tag(self) -> bytes | None:
        return extract_tag(self.first_line)

    def close(self) -> None:
        for _text, lit in self.segments:
            if lit is not None:
                lit.close()


@dataclass
class ReaderError:
    """A response the reader produced itself (line too long, literal too big)."""

    tag: bytes | None
    response: bytes  # without the tag, e.g. b"BAD [TOOBIG] Command line too long"
    disconnect: bool = False


def extract_tag(line: bytes) -> bytes | None:
    """The tag at the start of a line, or None if it is not a valid tag."""
    m = _TAG_RE.match(line)
    if not m:
        return None
    tag = m.group(0)
    if any(c in _TAG_BAD for c in tag):
        return None
    return tag


class CommandReader:
    """Turn a byte stream into :class:`RawCommand` / :class:`ReaderError` items.

    ``deliver`` gets each item in order.  ``continuation`` is called when a
    synchronizing literal may be sent (the caller sends ``+ OK`` when it is
    ready for it).  Feed data with :meth:`feed` in chunks of any size.
    """

    def __init__(
        self,
        deliver: Callable[[RawCommand | ReaderError], None],
        continuation: Callable[[], None],
        max_line: int = DEFAULT_MAX_LINE,
        max_literal: int = DEFAULT_MAX_LITERAL,
    ):
        self.deliver = deliver
        self.continuation = continuation
        self.max_line = max_line
        self.max_literal = max_literal
        #: LITERAL- (RFC 7888) instead of LITERAL+: cap non-sync literals.
        self.literal_minus = False
        self._buf = bytearray()
        self._reset()
        self._discard_line = False
        #: Set by the consumer when its queue is full: stop delivering.
        self.paused = False

    def _reset(self) -> None:
        self._segments: list[tuple[bytes, Literal | None]] = []
        self._line_total = 0
        self._literal: Literal | None = None
        self._literal_left = 0
        self._discard_left = 0
        self._failed: ReaderError | None = None
        self._tag: bytes | None = None
        self._literal_count = 0
        self._literal_bytes = 0

    def _abort(self, error: ReaderError) -> None:
        for _t, lit in self._segments:
            if lit is not None:
                lit.close()
        if self._literal is not None:
            self._literal.close()
        self._reset()
        self.deliver(error)

    def feed(self, data: bytes) -> None:
        """Add received bytes and deliver every command they complete
        (while :attr:`paused`, they are only kept: the caller bounds them
        by not reading its socket)."""
        self._buf += data
        self._run()

    def resume(self) -> None:
        """Deliver what was kept while paused (``paused`` already cleared)."""
        self._run()

    @property
    def pending(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self._buf)

    def _run(self) -> None:
        buf = self._buf
        while buf and not self.paused:
            if self._literal is not None:
                take = min(self._literal_left, len(buf))
                self._literal.file.write(bytes(buf[:take]))
                del buf[:take]
                self._literal_left -= take
                if self._literal_left == 0:
                    self._end_literal()
                continue
            if self._discard_left:
                take = min(self._discard_left, len(buf))
                del buf[:take]
                self._discard_left -= take
                continue
            if self._discard_line:
                idx = buf.find(b"\n")
                if idx < 0:
                    buf.clear()
                    return
                del buf[: idx + 1]
                self._discard_line = False
                continue
            idx = buf.find(b"\n")
            if idx < 0:
                if self._line_total + len(buf) > self.max_line:
                    self._too_long(bytes(buf[:256]))
                    self._discard_line = True
                    buf.clear()
                return
            if self._line_total + idx + 1 > self.max_line:
                head = bytes(buf[:256])
                del buf[: idx + 1]
                self._too_long(head)
                continue
            line = bytes(buf[:idx])
            del buf[: idx + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line)

    def _too_long(self, head: bytes) -> None:
        tag = self._tag if self._segments else extract_tag(head)
        self._abort(ReaderError(tag, b"BAD [TOOBIG] Command line too long"))

    def _line(self, line: bytes) -> None:
        if not self._segments:
            if not line.strip():
                return  # tolerate empty lines between commands
            self._tag = extract_tag(line)
        self._line_total += len(line) + 2
        m = _LITERAL_RE.search(line)
        if not m:
            self._segments.append((line, None))
            self._finish()
            return
        binary = bool(m.group(1))
        size = int(m.group(2))
        plus = bool(m.group(3))
        text = line[: m.start()]
        self._literal_count += 1
        self._literal_bytes += size
        error = self._failed or self._literal_error(size, plus)
        if error is not None:
            if plus:
                # The client sends it anyway: read and drop it, then the rest.
                self._failed = error
                self._discard_left = size
                self._segments.append((text, None))
            else:
                self._abort(error)
            return
        literal = Literal(size, binary)
        self._segments.append((text, literal))
        self._literal = literal
        self._literal_left = size
        if size == 0:
            self._end_literal()
        elif not plus:
            self.continuation()

    def _literal_error(self, size: int, plus: bool) -> ReaderError | None:
        """Why the literal just announced may not be read, or None."""
        if size > self.max_literal:
            return ReaderError(self._tag, b"NO [TOOBIG] Literal too large")
        if plus and self.literal_minus and size > LITERAL_MINUS_MAX:
            return ReaderError(
                self._tag, b"BAD [TOOBIG] Non-synchronizing literal larger than 4096 bytes"
            )
        if self._literal_count > MAX_COMMAND_LITERALS:
            return ReaderError(self._tag, b"NO [LIMIT] Too many literals in one command")
        if self._literal_bytes > MAX_COMMAND_BYTES:
            return ReaderError(self._tag, b"NO [TOOBIG] Command's literals are too large")
        return None

    def _end_literal(self) -> None:
        self._literal = None

    def _finish(self) -> None:
        if self._failed is not None:
            self._abort(self._failed)
            return
        cmd = RawCommand(self._segments)
        self._reset()
        self.deliver(cmd)


# -- tokenizer ---------------------------------------------------------------

_ATOM_STOP = frozenset(b' ()"{')


def tokenize(cmd: RawCommand, max_depth: int = MAX_LIST_DEPTH, utf8: bool = False) -> list[Token]:
    """All tokens of a command (tag and name included), lists nested.

    With ``utf8`` (after ENABLE UTF8=ACCEPT or IMAP4rev2) quoted strings
    must be valid UTF-8.
    """
    stack: list[list[Token]] = [[]]
    for text, literal in cmd.segments:
        pos = 0
        n = len(text)
        while pos < n:
            c = text[pos]
            if c == 0x20:
                pos += 1
            elif c == 0x28:  # (
                if len(stack) > max_depth:
                    raise ParseError("Too deep parenthesized list", "LIMIT")
                new: list[Token] = []
                stack[-1].append(new)
                stack.append(new)
                pos += 1
            elif c == 0x29:  # )
                if len(stack) == 1:
                    raise ParseError("Unexpected ')'")
                stack.pop()
                pos += 1
            elif c == 0x22:  # "
                value, pos = _quoted(text, pos + 1)
                if utf8 and not value.isascii():
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ParseError("Invalid UTF-8 in quoted string") from None
                stack[-1].append(String(value))
            elif c == 0x7B:  # {
                raise ParseError("Literal not at end of line")
            else:
                value, pos = _atom(text, pos)
                stack[-1].append(Atom(value))
        if literal is not None:
            if literal.size <= SMALL_LITERAL:
                kind = Binary if literal.binary else LiteralString
                stack[-1].append(kind(literal.getvalue()))
            else:
                stack[-1].append(literal)
    if len(stack) != 1:
        raise ParseError("Missing ')'")
    return stack[0]


def split_literals(data: bytes) -> RawCommand:
    """A command held whole in memory, literals inline (``{n}``, ``{n+}`` or
    ``~{n}`` at a line's end, CRLF, then n bytes), as the login process
    reads it: the same :class:`RawCommand` the mail process's reader makes,
    for :func:`tokenize`.  ParseError if a line break is not a literal's."""
    raw = RawCommand()
    pos = 0
    n = len(data)
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raw.segments.append((data[pos:], None))
            return raw
        line = data[pos:end]
        m = _LITERAL_RE.search(line)
        if m is None:
            raise ParseError("Invalid literal")
        size = int(m.group(2))
        start = end + 2
        if start + size > n:
            raise ParseError("Literal too short")
        lit = Literal(size, binary=bool(m.group(1)))
        lit.file.write(data[start:start + size])
        raw.segments.append((line[: m.start()], lit))
        pos = start + size


def parse_arguments(data: bytes, max_depth: int = MAX_LIST_DEPTH) -> list[Token]:
    """The arguments of an in-memory command (see :func:`split_literals`),
    tokenized by the one grammar of :func:`tokenize`."""
    raw = split_literals(data)
    try:
        return tokenize(raw, max_depth)
    finally:
        raw.close()


def _quoted(text: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == 0x22:
            return bytes(out), pos + 1
        if c == 0x5C:  # backslash
            pos += 1
            if pos >= n or text[pos] not in (0x22, 0x5C):
                raise ParseError("Invalid escape in quoted string")
            out.append(text[pos])
        elif c < 0x20 and c != 0x09:
            raise ParseError("Control character in quoted string")
        else:
            out.append(c)
        pos += 1
    raise ParseError("Missing '\"'")


def _atom(text: bytes, pos: int) -> tuple[bytes, int]:
    start = pos
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == 0x5B:  # [ … ] may hold spaces and parens (BODY[HEADER.FIELDS (A)])
            end = text.find(b"]", pos)
            if end < 0:
                pos += 1
                continue
            pos = end + 1
            continue
        if c in _ATOM_STOP or c < 0x20 or c == 0x7F:
            break
        pos += 1
    if pos == start:
        raise ParseError("Invalid character")
    return text[start:pos], pos


def as_bytes(tok: Token) -> bytes:
    """An astring/string token's value.  ParseError for lists."""
    if isinstance(tok, Literal):
        return tok.getvalue()
    if isinstance(tok, bytes):
        return bytes(tok)
    raise ParseError("Expected a string")


def as_file(tok: Token) -> BinaryIO:
    """A string token as a readable file positioned at its start."""
    if isinstance(tok, Literal):
        return tok.open()
    if isinstance(tok, String):
        return io.BytesIO(bytes(tok))
    raise ParseError("Expected a literal")


def as_nstring(tok: Token) -> bytes | None:
    if isinstance(tok, Atom) and tok.upper() == b"NIL":
        return None
    return as_bytes(tok)


def as_number(tok: Token, nonzero: bool = False) -> int:
    if not isinstance(tok, Atom) or not tok.isdigit() or len(tok) > 10:
        raise ParseError("Expected a number")
    value = int(tok)
    if value > 0xFFFFFFFF or (nonzero and value == 0):
        raise ParseError("Number out of range")
    return value


# -- sequence sets -------------------------------------------------------------

STAR = -1


def parse_sequence_set(raw: bytes) -> list[tuple[int, int]]:
    """``1:3,7,9:*`` → [(1, 3), (7, 7), (9, STAR)].  ParseError if invalid."""
    if not raw:
        raise ParseError("Empty sequence set")
    out: list[tuple[int, int]] = []
    for part in raw.split(b","):
        bounds = part.split(b":")
        if len(bounds) > 2:
            raise ParseError("Invalid sequence set")
        values = [_seq_number(b) for b in bounds]
        out.append((values[0], values[-1]))
    return out


def _seq_number(raw: bytes) -> int:
    if raw == b"*":
        return STAR
    if not raw.isdigit() or len(raw) > 10 or raw.startswith(b"0"):
        raise ParseError("Invalid sequence set")
    value = int(raw)
    if value > 0xFFFFFFFF:
        raise ParseError("Invalid sequence set")
    return value


def is_sequence_set(raw: bytes) -> bool:
    try:
        parse_sequence_set(raw)
    except ParseError:
        return False
    return True


class NumberSet:
    """A sequence set resolved against a value for ``*``; fast membership."""

    def __init__(self, ranges: list[tuple[int, int]], star: int):
        merged: list[list[int]] = []
        for a, b in ranges:
            a = star if a == STAR else a
            b = star if b == STAR else b
            lo, hi = min(a, b), max(a, b)
            merged.append([lo, hi])
        merged.sort()
        self._starts: list[int] = []
        self._ends: list[int] = []
        for lo, hi in merged:
            if self._ends and lo <= self._ends[-1] + 1:
                self._ends[-1] = max(self._ends[-1], hi)
            else:
                self._starts.append(lo)
                self._ends.append(hi)

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value <= self._ends[i]

    def __iter__(self) -> Iterator[int]:
        for lo, hi in zip(self._starts, self._ends, strict=True):
            yield from range(lo, hi + 1)

    def to_imap(self) -> bytes:
        return format_ranges(list(zip(self._starts, self._ends, strict=True)))


def format_ranges(ranges: list[tuple[int, int]]) -> bytes:
    return b",".join(
        str(lo).encode() if lo == hi else f"{lo}:{hi}".encode() for lo, hi in ranges
    )


def compress(values: list[int]) -> bytes:
    """[1, 2, 3, 7] → ``1:3,7`` (keeps the order of values, for COPYUID)."""
    ranges: list[tuple[int, int]] = []
    for v in values:
        if ranges and v == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], v)
        else:
            ranges.append((v, v))
    return format_ranges(ranges)
