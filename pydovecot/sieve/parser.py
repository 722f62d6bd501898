"""The Sieve parser (RFC 5228 section 8.2): tokens to a syntax tree.

Recursive descent with an explicit nesting cap (``MAX_NESTING`` blocks and
tests together, far below Python's recursion limit), and caps on the
script size, string length and list length, each a
:class:`SieveSyntaxError` with line and column.  Trusts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydovecot.sieve.errors import SieveSyntaxError
from pydovecot.sieve.lexer import Token, tokenize

MAX_NESTING = 32  # Pigeonhole: SIEVE_MAX_BLOCK_NESTING / SIEVE_MAX_TEST_NESTING
MAX_STRING = 1 << 20
MAX_LIST = 4096
DEFAULT_MAX_SCRIPT_SIZE = 1 << 20


@dataclass(slots=True)
class Node:
    """A command or a test.  ``args`` holds ("tag", name), ("num", n),
    ("str", s) and ("list", [s, ...]) items in script order."""

    name: str
    line: int
    col: int
    args: list = field(default_factory=list)
    tests: list = field(default_factory=list)
    block: list | None = None


def parse(source: str | bytes, max_size: int = DEFAULT_MAX_SCRIPT_SIZE) -> list[Node]:
    """The script's commands.  Bytes must be UTF-8 (RFC 5228 2.4.2)."""
    if len(source) > max_size:
        raise SieveSyntaxError(f"script is too large (max {max_size} bytes)")
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as e:
            line = source[:e.start].count(b"\n") + 1
            raise SieveSyntaxError("script is not valid UTF-8", line, 1) from None
    return _Parser(tokenize(source)).script()


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def error(self, message: str, tok: Token | None = None) -> SieveSyntaxError:
        tok = tok or self.peek()
        return SieveSyntaxError(message, tok.line, tok.col)

    def is_punct(self, c: str) -> bool:
        tok = self.peek()
        return tok.kind == "punct" and tok.value == c

    def script(self) -> list[Node]:
        commands = self.commands(0)
        tok = self.peek()
        if tok.kind != "eof":
            raise self.error(f"unexpected {_describe(tok)}", tok)
        return commands

    def commands(self, depth: int) -> list[Node]:
        out: list[Node] = []
        while True:
            tok = self.peek()
            if tok.kind == "eof" or (tok.kind == "punct" and tok.value == "}"):
                return out
            out.append(self.command(depth))

    def command(self, depth: int) -> Node:
        tok = self.take()
        if tok.kind != "id":
            raise self.error(f"expected a command but found {_describe(tok)}", tok)
        node = Node(tok.value, tok.line, tok.col)
        self.arguments(node, 0)  # test nesting counts apart from block nesting
        if self.is_punct(";"):
            self.take()
        elif self.is_punct("{"):
            if depth + 1 > MAX_NESTING:
                raise self.error(f"too many nested blocks (max {MAX_NESTING})")
            self.take()
            node.block = self.commands(depth + 1)
            if not self.is_punct("}"):
                raise self.error(f"expected '}}' but found {_describe(self.peek())}")
            self.take()
        else:
            raise self.error(f"expected ';' or '{{' after command '{node.name}' but found "
                             f"{_describe(self.peek())}")
        return node

    def arguments(self, node: Node, depth: int) -> None:
        while True:
            tok = self.peek()
            if tok.kind == "tag":
                self.take()
                node.args.append(("tag", tok.value))
            elif tok.kind == "num":
                self.take()
                node.args.append(("num", tok.value))
            elif tok.kind == "str":
                self.take()
                node.args.append(("str", self.string(tok)))
            elif tok.kind == "punct" and tok.value == "[":
                node.args.append(("list", self.string_list()))
            else:
                break
        tok = self.peek()
        if tok.kind == "id":
            node.tests.append(self.test(depth + 1))
        elif tok.kind == "punct" and tok.value == "(":
            node.tests.extend(self.test_list(depth + 1))

    def string(self, tok: Token) -> str:
        if len(tok.value) > MAX_STRING:
            raise self.error(f"string is too long (max {MAX_STRING})", tok)
        return tok.value

    def string_list(self) -> list[str]:
        self.take()  # [
        out: list[str] = []
        while True:
            tok = self.take()
            if tok.kind != "str":
                raise self.error(f"expected a string in the list but found {_describe(tok)}",
                                 tok)
            out.append(self.string(tok))
            if len(out) > MAX_LIST:
                raise self.error(f"string list is too long (max {MAX_LIST})", tok)
            tok = self.take()
            if tok.kind == "punct" and tok.value == "]":
                return out
            if not (tok.kind == "punct" and tok.value == ","):
                raise self.error(f"expected ',' or ']' but found {_describe(tok)}", tok)

    def test(self, depth: int) -> Node:
        if depth > MAX_NESTING:
            raise self.error(f"too many nested tests (max {MAX_NESTING})")
        tok = self.take()
        if tok.kind != "id":
            raise self.error(f"expected a test but found {_describe(tok)}", tok)
        node = Node(tok.value, tok.line, tok.col)
        self.arguments(node, depth)
        return node

    def test_list(self, depth: int) -> list[Node]:
        if depth > MAX_NESTING:
            raise self.error(f"too many nested tests (max {MAX_NESTING})")
        self.take()  # (
        out: list[Node] = []
        while True:
            out.append(self.test(depth))
            if len(out) > MAX_LIST:
                raise self.error(f"test list is too long (max {MAX_LIST})")
            tok = self.take()
            if tok.kind == "punct" and tok.value == ")":
                return out
            if not (tok.kind == "punct" and tok.value == ","):
                raise self.error(f"expected ',' or ')' but found {_describe(tok)}", tok)


def _describe(tok: Token) -> str:
    if tok.kind == "eof":
        return "end of script"
    if tok.kind == "str":
        return "a string"
    if tok.kind == "num":
        return f"number {tok.value}"
    if tok.kind == "tag":
        return f"tag ':{tok.value}'"
    if tok.kind == "id":
        return f"identifier '{tok.value}'"
    return f"'{tok.value}'"
