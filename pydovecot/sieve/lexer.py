"""The Sieve lexer (RFC 5228 section 8.1): tokens with line and column.

Works on the script's text (UTF-8, already size-checked by the caller) in
one linear pass, without regular expressions that could backtrack.
Trusts nothing: every malformed token is a :class:`SieveSyntaxError`
with its position.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydovecot.sieve.errors import SieveSyntaxError

ID_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
ID_CHARS = ID_START | frozenset("0123456789")
DIGITS = frozenset("0123456789")
PUNCT = frozenset(";,()[]{}")
QUANTIFIERS = {"K": 1 << 10, "k": 1 << 10, "M": 1 << 20, "m": 1 << 20, "G": 1 << 30,
               "g": 1 << 30}
MAX_NUMBER = (1 << 63) - 1


@dataclass(slots=True)
class Token:
    kind: str  # "id", "tag", "num", "str", "punct", "eof"
    value: object
    line: int
    col: int


def tokenize(text: str) -> list[Token]:
    """All tokens of ``text``, ending with an ``eof`` token."""
    tokens: list[Token] = []
    i, n, line, line_start = 0, len(text), 1, 0
    while True:
        # Whitespace and comments.
        while i < n:
            c = text[i]
            if c == "\n":
                line += 1
                i += 1
                line_start = i
            elif c in " \t\r":
                i += 1
            elif c == "#":
                j = text.find("\n", i)
                i = n if j < 0 else j
            elif c == "/" and text.startswith("/*", i):
                j = text.find("*/", i + 2)
                if j < 0:
                    raise SieveSyntaxError("unterminated comment", line, i - line_start + 1)
                line += text.count("\n", i, j)
                k = text.rfind("\n", i, j)
                if k >= 0:
                    line_start = k + 1
                i = j + 2
            else:
                break
        col = i - line_start + 1
        if i >= n:
            tokens.append(Token("eof", None, line, col))
            return tokens
        c = text[i]
        if c in PUNCT:
            tokens.append(Token("punct", c, line, col))
            i += 1
        elif c == ":":
            j = i + 1
            if j >= n or text[j] not in ID_START:
                raise SieveSyntaxError("expected a tag name after ':'", line, col)
            while j < n and text[j] in ID_CHARS:
                j += 1
            tokens.append(Token("tag", text[i + 1:j].lower(), line, col))
            i = j
        elif c in DIGITS:
            j = i
            while j < n and text[j] in DIGITS:
                j += 1
            value = int(text[i:j]) if j - i <= 20 else MAX_NUMBER + 1
            if j < n and text[j] in QUANTIFIERS:
                value *= QUANTIFIERS[text[j]]
                j += 1
            if j < n and text[j] in ID_CHARS:
                raise SieveSyntaxError("invalid number", line, col)
            if value > MAX_NUMBER:
                raise SieveSyntaxError("number is too large", line, col)
            tokens.append(Token("num", value, line, col))
            i = j
        elif c == '"':
            out: list[str] = []
            j = i + 1
            while True:
                k = j
                while k < n and text[k] not in '"\\\n':
                    k += 1
                out.append(text[j:k])
                if k >= n:
                    raise SieveSyntaxError("unterminated string", line, col)
                ch = text[k]
                if ch == '"':
                    j = k + 1
                    break
                if ch == "\n":
                    out.append("\n")
                    line += 1
                    line_start = k + 1
                    j = k + 1
                    continue
                # Backslash: the next character literally (RFC 5228 2.4.2).
                if k + 1 >= n:
                    raise SieveSyntaxError("unterminated string", line, col)
                nxt = text[k + 1]
                if nxt == "\n":
                    line += 1
                    line_start = k + 2
                out.append(nxt)
                j = k + 2
            tokens.append(Token("str", "".join(out).replace("\r\n", "\n").replace("\n", "\r\n"),
                                line, col))
            i = j
        elif c in ID_START:
            j = i
            while j < n and text[j] in ID_CHARS:
                j += 1
            word = text[i:j]
            if word.lower() == "text" and j < n and text[j] == ":":
                i, line, line_start, value = _multiline(text, j + 1, line, line_start, col)
                tokens.append(Token("str", value, line - value.count("\r\n") - 1, col))
                continue
            tokens.append(Token("id", word.lower(), line, col))
            i = j
        else:
            raise SieveSyntaxError(f"unexpected character {c!r}", line, col)


def _multiline(text: str, i: int, line: int, line_start: int, col: int
               ) -> tuple[int, int, int, str]:  # noqa: ARG001
    """A ``text:`` string: the rest of the line (blanks, optional comment),
    then lines up to a lone ``.``; leading ``..`` is unstuffed."""
    n = len(text)
    start = line
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "#":
        j = text.find("\n", i)
        i = n if j < 0 else j
    if i < n and text[i] == "\r":
        i += 1
    if i >= n or text[i] != "\n":
        raise SieveSyntaxError("expected end of line after 'text:'", line, col)
    i += 1
    line += 1
    out: list[str] = []
    while True:
        if i >= n:
            raise SieveSyntaxError("unterminated multi-line string", start, col)
        j = text.find("\n", i)
        end = n if j < 0 else j
        raw = text[i:end]
        if raw.endswith("\r"):
            raw = raw[:-1]
        nxt = end + 1 if j >= 0 else n
        line += 1 if j >= 0 else 0
        if raw == ".":
            return nxt, line, nxt, "".join(out)
        if raw.startswith(".."):
            raw = raw[1:]
        out.append(raw + "\r\n")
        i = nxt
