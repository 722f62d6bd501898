"""ManageSieve's command grammar (RFC 5804 section 4): framing and arguments.

A command is an atom (its name) followed by strings (quoted, or literals
``{n+}``/``{n}`` followed by CRLF and n octets; ManageSieve has no
continuation response, so both kinds arrive at once) and numbers.  Framing
is bounded: one line at most ``max_line`` bytes, one literal at most
``max_literal`` bytes.  Nothing here trusts its input; malformed input is a
:class:`GrammarError` with Pigeonhole's wording.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LITERAL_AT_END = re.compile(rb"\{(\d{1,10})(\+?)\}$")
ATOM = re.compile(rb"[^\x00-\x20\x7f\"{}()\\%*]+")


class GrammarError(ValueError):
    """An argument that does not parse."""


class Str(bytes):
    """A string argument (quoted or literal)."""


class Atom(bytes):
    """An atom argument (command names, numbers)."""


@dataclass
class Scan:
    """What :func:`scan` found at the start of a buffer.

    ``kind``: "more" (incomplete), "command" (``data`` is the whole command
    without its final CRLF; ``end`` bytes are consumed) or "overflow" (a line
    or literal over its bound: ``data`` is the command's head, ``end``
    bytes are consumed and ``skip`` literal bytes still follow, after which
    the rest of the command up to its end of line is to be dropped).
    """

    kind: str
    data: bytes = b""
    end: int = 0
    skip: int = 0
    literal: bool = False


def scan(buf: bytes, max_line: int, max_literal: int) -> Scan:
    """Frame one command at the start of ``buf``."""
    pos = 0
    while True:
        i = buf.find(b"\n", pos, pos + max_line + 2)
        if i < 0:
            if len(buf) - pos > max_line:
                return Scan("overflow", buf[:128], len(buf), 0, False)
            return Scan("more")
        line = buf[pos:i].rstrip(b"\r")
        m = LITERAL_AT_END.search(line)
        if m is None:
            cmd = buf[:i]
            return Scan("command", cmd[:-1] if cmd.endswith(b"\r") else cmd, i + 1)
        size = int(m.group(1))
        if size > max_literal:
            return Scan("overflow", buf[:min(i, 128)], i + 1, size, True)
        if len(buf) < i + 1 + size:
            return Scan("more")
        pos = i + 1 + size


def literal_size(line_end: bytes) -> int | None:
    """The size of a literal announced at the end of a line, else None."""
    m = LITERAL_AT_END.search(line_end.rstrip(b"\r"))
    return int(m.group(1)) if m is not None else None


def command_name(data: bytes) -> str:
    """The command's name (upper case), "" if it does not start with an atom."""
    m = ATOM.match(data)
    if m is None:
        return ""
    return m.group(0).decode("ascii", "replace").upper()


def parse_arguments(data: bytes) -> list[Str | Atom]:
    """The arguments after the command name (``data`` is the rest)."""
    args: list[Str | Atom] = []
    pos, n = 0, len(data)
    while pos < n:
        c = data[pos:pos + 1]
        if c == b" ":
            pos += 1
            continue
        if c == b'"':
            pos = _quoted(data, pos + 1, args)
        elif c == b"{":
            m = re.compile(rb"\{(\d{1,10})\+?\}\r?\n").match(data, pos)
            if m is None:
                raise GrammarError("Invalid literal.")
            start = m.end()
            size = int(m.group(1))
            if start + size > n:
                raise GrammarError("Invalid literal.")
            args.append(Str(data[start:start + size]))
            pos = start + size
        else:
            m = ATOM.match(data, pos)
            if m is None:
                raise GrammarError("Invalid arguments.")
            args.append(Atom(m.group(0)))
            pos = m.end()
        if pos < n and data[pos:pos + 1] != b" ":
            raise GrammarError("Invalid arguments.")
    return args


def _quoted(data: bytes, pos: int, args: list) -> int:
    out = bytearray()
    n = len(data)
    while pos < n:
        c = data[pos]
        if c == 0x22:  # closing quote
            try:
                bytes(out).decode("utf-8")
            except UnicodeDecodeError:
                raise GrammarError("Invalid UTF-8 character in quoted-string.") from None
            args.append(Str(bytes(out)))
            return pos + 1
        if c == 0x5c:  # backslash: only \\ and \"
            if pos + 1 < n and data[pos + 1] in (0x22, 0x5c):
                out.append(data[pos + 1])
                pos += 2
                continue
            raise GrammarError("String contains invalid character.")
        if c in (0x00, 0x0a, 0x0d):
            raise GrammarError("String contains invalid character.")
        out.append(c)
        pos += 1
    raise GrammarError("String contains invalid character.")


def quote(value: str | bytes) -> bytes:
    """A string for a response: quoted, or a literal ``{n}`` when it has
    CR, LF or NUL or is long."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(raw) > 1024 or any(b in raw for b in (0, 10, 13)):
        return b"{%d}\r\n" % len(raw) + raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def response(status: str, text: str, code: str | None = None) -> bytes:
    """``OK|NO|BYE [(code)] "text"`` with its CRLF."""
    head = status.encode() + (b" (" + code.encode() + b")" if code else b"")
    return head + b" " + quote(text) + b"\r\n"
