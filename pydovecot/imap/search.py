"""SEARCH keys: parse RFC 3501/9051 search criteria into a SearchProgram.

Covers every RFC 9051 search key, sequence sets and ``$`` (RFC 5182),
parenthesized lists, CHARSET (any Python text codec), WITHIN (RFC 5032:
OLDER/YOUNGER), SAVEDATE (RFC 8514: SAVEDBEFORE/SAVEDON/SAVEDSINCE/
SAVEDATESUPPORTED) and the CONDSTORE ``MODSEQ`` key (RFC 7162).

The key list is untrusted client input: parsing raises ParseError (→ BAD)
or :class:`BadCharset` (→ ``NO [BADCHARSET (UTF-8 US-ASCII)]``).  NOT and
OR are parsed without recursion and flattened (``NOT NOT x`` is x, OR
chains are one OR), so any depth of them parses; what is still nested
deeper than :data:`MAX_QUERY_DEPTH` raises :class:`QueryTooDeep`
(→ ``BAD [LIMIT]``).

The result is a :class:`pydovecot.storage.search.SearchProgram`, which the
storage evaluates (``IMailbox.search``/``sort``); sequence sets and ``$``
are session notions, kept as ``SEQ``/``SAVED`` leaves (and ``*`` in UID
sets) until :func:`resolve` turns them into UID ranges against the
session's view just before the program goes to the storage.  Nothing here
reads a message.
"""

from __future__ import annotations

import codecs
import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydovecot.imap.fetch import MONTHS
from pydovecot.imap.parser import (
    STAR,
    Atom,
    Literal,
    ParseError,
    RawCommand,
    String,
    Token,
    as_bytes,
    parse_sequence_set,
    tokenize,
)
from pydovecot.storage.interfaces import MessageInfo
from pydovecot.storage.parsed import address_text, decode_value
from pydovecot.storage.search import MAX_QUERY_DEPTH, SIMPLE_KEYS, SearchProgram

__all__ = ["ADVERTISED_CHARSETS", "BadCharset", "MAX_QUERY_DEPTH", "QueryTooDeep",
           "SearchParser", "SearchQuery", "address_text", "charset_codec",
           "decode_value", "resolve"]

#: What BADCHARSET lists (any Python text codec is accepted).
ADVERTISED_CHARSETS = b"UTF-8 US-ASCII"
#: Kept for callers of the old module.
SUPPORTED_CHARSETS = {"US-ASCII", "UTF-8"}
MAX_MODSEQ = 2**63 - 1


class BadCharset(Exception):
    """Unknown CHARSET: answer ``NO [BADCHARSET (UTF-8 US-ASCII)]``."""


def charset_codec(name: str) -> str:
    """The Python codec for an IMAP CHARSET name; BadCharset if none.

    US-ASCII is read as UTF-8 (its superset), which is what clients that
    send 8-bit strings without CHARSET mean.  Codecs that are not text
    encodings (base64, rot13, zlib…) are refused.
    """
    upper = name.upper()
    if upper in ("US-ASCII", "ASCII", "UTF-8", "UTF8"):
        return "utf-8"
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        raise BadCharset(name) from None
    if not getattr(info, "_is_text_encoding", True):
        raise BadCharset(name)
    return info.name


def parse_date(tok: Token) -> datetime.date:
    raw = as_bytes(tok).decode("latin-1")
    try:
        day, mon, year = raw.split("-")
        month = [m.lower() for m in MONTHS].index(mon.lower()) + 1
        if not day.isdigit() or not year.isdigit() or len(year) != 4 or len(day) > 2:
            raise ValueError(raw)
        return datetime.date(int(year), month, int(day))
    except (ValueError, IndexError):
        raise ParseError("Invalid search date") from None


# -- the parsed query ---------------------------------------------------------------


@dataclass
class SearchQuery:
    """A parsed key list: the program and what it needs."""

    program: SearchProgram
    charset: str = "US-ASCII"
    uses_modseq: bool = False  # answer carries (MODSEQ n) (RFC 7162 3.1.5)
    uses_saved: bool = False  # refers to ``$``
    needs_content: bool = False  # reads headers or bodies

    @property
    def pred(self) -> SearchProgram:
        """Compatibility: what used to be the predicate."""
        return self.program


class SearchParser:
    """Turns the argument tokens of SEARCH into one :class:`SearchQuery`."""

    def __init__(self, tokens: list[Token], codec: str = "utf-8"):
        self.tokens = tokens
        self.pos = 0
        self.codec = codec
        self.uses_modseq = False
        self.uses_saved = False
        self.needs_content = False

    @classmethod
    def parse_query(cls, tokens: list[Token], charset: str | None = None) -> SearchQuery:
        """Parse ``[CHARSET x] key…`` (or just ``key…`` when the caller
        already took the charset, as SORT/THREAD do)."""
        if charset is None:
            charset = "US-ASCII"
            if len(tokens) >= 2 and isinstance(tokens[0], Atom) and tokens[0].upper() == b"CHARSET":
                if isinstance(tokens[1], list):
                    raise ParseError("Invalid charset")
                charset = as_bytes(tokens[1]).decode("latin-1")
                tokens = tokens[2:]
        codec = charset_codec(charset)
        if not tokens:
            raise ParseError("Missing search keys")
        parser = cls(tokens, codec)
        node = parser.keys()
        return SearchQuery(node.program(), charset.upper(), parser.uses_modseq,
                           parser.uses_saved, parser.needs_content)

    @classmethod
    def parse(cls, tokens: list[Token]) -> SearchProgram:
        """Only the program of :meth:`parse_query`."""
        return cls.parse_query(tokens).program

    def next(self) -> Token:
        if self.pos >= len(self.tokens):
            raise ParseError("Missing search argument")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def string(self) -> str:
        tok = self.next()
        if isinstance(tok, list):
            raise ParseError("Expected a string")
        raw = as_bytes(tok)
        try:
            return raw.decode(self.codec).casefold()
        except (UnicodeDecodeError, LookupError):
            raise ParseError("Search string is not valid in its charset") from None

    def number(self, limit: int = 0xFFFFFFFF, nonzero: bool = False) -> int:
        tok = self.next()
        if not isinstance(tok, Atom) or not tok.isdigit() or len(tok) > 20:
            raise ParseError("Expected a number")
        value = int(tok)
        if value > limit or (nonzero and value == 0):
            raise ParseError("Number out of range")
        return value

    def keys(self) -> _Node:
        """Every key from here to the end of the token list, ANDed."""
        items: list[_Node] = []
        while self.pos < len(self.tokens):
            items.append(self.key_node())
        return _Node.all_of(items)

    def key_node(self) -> _Node:
        """One search key.  NOT and OR are parsed with an explicit stack,
        never by recursion, and flattened as they are built (NOT NOT x is
        x, nested ORs are one OR), so ``NOT NOT … ALL`` or an OR chain of
        any length parses; a query still deeper than
        :data:`MAX_QUERY_DEPTH` after that is refused (:class:`QueryTooDeep`)."""
        pending: list[tuple[str, list[_Node]]] = []
        while True:
            tok = self.tokens[self.pos] if self.pos < len(self.tokens) else None
            if isinstance(tok, Atom) and tok.upper() in (b"NOT", b"OR"):
                self.pos += 1
                pending.append((tok.upper_str(), []))
                continue
            node = self._leaf_node()
            while pending:
                op, got = pending[-1]
                got.append(node)
                if op == "NOT":
                    node = _Node.negate(node)
                elif len(got) == 2:
                    node = _Node.any_of(got[0], got[1])
                else:
                    break  # an OR waiting for its second key
                pending.pop()
            else:
                return node

    def _leaf_node(self) -> _Node:
        tok = self.tokens[self.pos] if self.pos < len(self.tokens) else None
        if isinstance(tok, list):
            self.pos += 1
            if not tok:
                raise ParseError("Empty search list")
            sub = SearchParser(tok, self.codec)
            node = sub.keys()
            self.uses_modseq |= sub.uses_modseq
            self.uses_saved |= sub.uses_saved
            self.needs_content |= sub.needs_content
            return node
        return _Node.leaf(self._simple_key())

    def _simple_key(self) -> SearchProgram:
        tok = self.next()
        if not isinstance(tok, Atom):
            raise ParseError("Expected a search key")
        name = tok.upper_str()
        leaf = SearchProgram.leaf
        if name in SIMPLE_KEYS:
            return leaf(name)
        if name in ("BCC", "CC", "FROM", "SUBJECT", "TO"):
            self.needs_content = True
            return leaf("HEADER", name.capitalize(), self.string())
        if name == "HEADER":
            fname_tok = self.next()
            if isinstance(fname_tok, list):
                raise ParseError("Expected a header name")
            fname = as_bytes(fname_tok).decode("latin-1")
            if not fname or any(c <= " " or c == ":" for c in fname):
                raise ParseError("Invalid header name")
            self.needs_content = True
            return leaf("HEADER", fname, self.string())
        if name in ("BODY", "TEXT"):
            needle = self.string()
            self.needs_content = True
            return leaf(name, needle)
        if name in ("KEYWORD", "UNKEYWORD"):
            kw_tok = self.next()
            if not isinstance(kw_tok, Atom):
                raise ParseError("Invalid keyword")
            return leaf(name, kw_tok.decode("utf-8", "replace").lower())
        if name in ("LARGER", "SMALLER"):
            return leaf(name, self.number(2**63 - 1))
        if name in ("BEFORE", "ON", "SINCE", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
            return leaf(name, parse_date(self.next()))
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            self.needs_content = True
            return leaf(name, parse_date(self.next()))
        if name in ("OLDER", "YOUNGER"):
            return leaf(name, self.number(nonzero=True))
        if name == "MODSEQ":
            return self._modseq()
        if name == "UID":
            raw = self.next()
            if not isinstance(raw, Atom):
                raise ParseError("Invalid UID set")
            if raw == b"$":
                self.uses_saved = True
                return leaf("SAVED")
            return SearchProgram.uids(parse_sequence_set(raw))
        if tok == b"$":
            self.uses_saved = True
            return leaf("SAVED")
        if tok[:1].isdigit() or tok[:1] == b"*":
            return leaf("SEQ", tuple(parse_sequence_set(tok)))
        raise ParseError(f"Unknown search key {name[:40]}")

    def _modseq(self) -> SearchProgram:
        tok = self.next()
        if isinstance(tok, String | Literal):
            entry_type = self.next()
            if not isinstance(entry_type, Atom) or entry_type.upper() not in (
                b"PRIV", b"SHARED", b"ALL"
            ):
                raise ParseError("Invalid MODSEQ entry type")
        else:
            self.pos -= 1
        value = self.number(MAX_MODSEQ)
        self.uses_modseq = True
        return SearchProgram.leaf("MODSEQ", value)


class QueryTooDeep(ParseError):
    """A search key list nested deeper than :data:`MAX_QUERY_DEPTH`."""


class _Node:
    """A search key being parsed: a leaf program, or NOT/OR/AND of nodes.

    Built bottom-up and flattened on the way (no recursion over the input),
    each node knowing its depth, so making the program (which recurses) is
    bounded.
    """

    __slots__ = ("kind", "leaf_program", "items", "depth")

    def __init__(self, kind: str, leaf_program: SearchProgram | None = None,
                 items: list[_Node] | None = None, depth: int = 0):
        self.kind = kind  # "leaf", "not", "or", "and"
        self.leaf_program = leaf_program
        self.items = items or []
        self.depth = depth
        if depth > MAX_QUERY_DEPTH:
            raise QueryTooDeep("Search query is nested too deeply")

    @classmethod
    def leaf(cls, program: SearchProgram) -> _Node:
        return cls("leaf", program)

    @classmethod
    def negate(cls, node: _Node) -> _Node:
        if node.kind == "not":
            return node.items[0]
        return cls("not", items=[node], depth=node.depth + 1)

    @classmethod
    def any_of(cls, a: _Node, b: _Node) -> _Node:
        # OR is commutative for matching: merge the smaller into the larger
        # list (amortised linear for chains nested either way).
        if a.kind == "or" and (b.kind != "or" or len(a.items) >= len(b.items)):
            big, small = a, b
        elif b.kind == "or":
            big, small = b, a
        else:
            return cls("or", items=[a, b], depth=max(a.depth, b.depth) + 1)
        big.items.extend(small.items if small.kind == "or" else [small])
        big.depth = max(big.depth, small.depth if small.kind == "or" else small.depth + 1)
        if big.depth > MAX_QUERY_DEPTH:
            raise QueryTooDeep("Search query is nested too deeply")
        return big

    @classmethod
    def all_of(cls, items: list[_Node]) -> _Node:
        if len(items) == 1:
            return items[0]
        flat: list[_Node] = []
        for item in items:
            flat.extend(item.items if item.kind == "and" else [item])
        depth = max((i.depth if i.kind == "and" else i.depth + 1) for i in items)
        return cls("and", items=flat, depth=depth)

    def program(self) -> SearchProgram:
        if self.kind == "leaf":
            assert self.leaf_program is not None
            return self.leaf_program
        items = tuple(item.program() for item in self.items)
        return SearchProgram(self.kind.upper(), (), items)


# -- handing a program to the storage ------------------------------------------------


def _compress(uids: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for u in sorted(set(uids)):
        if out and u == out[-1][1] + 1:
            out[-1] = (out[-1][0], u)
        else:
            out.append((u, u))
    return out


def resolve(program: SearchProgram, messages: Sequence[MessageInfo],
            saved: Iterable[int] = ()) -> SearchProgram:
    """The program with the session's notions made UID ranges: sequence
    sets (``SEQ``) against the view ``messages``, ``*`` in UID sets as the
    view's last UID, ``$`` (``SAVED``) as the saved UIDs."""
    key = program.key
    if program.items:
        items = tuple(resolve(i, messages, saved) for i in program.items)
        if items == program.items:
            return program
        return SearchProgram(key, program.args, items)
    if key == "SAVED":
        return SearchProgram.uids(_compress(saved))
    if key == "SEQ":
        count = len(messages)
        out = []
        for a, b in program.args[0]:
            a = count if a == STAR else a
            b = count if b == STAR else b
            lo, hi = min(a, b), min(max(a, b), count)
            if lo <= hi and lo >= 1:
                out.append((messages[lo - 1].uid, messages[hi - 1].uid))
        return SearchProgram.uids(out)
    if key == "UID" and any(STAR in r for r in program.args[0]):
        star = messages[-1].uid if messages else 0
        return SearchProgram.uids(
            tuple(star if x == STAR else x for x in r) for r in program.args[0])
    return program


def bench_search(mailbox: Any, keys: bytes, uid: bool = True) -> Any:
    """For benchmarks and tests: run search keys given as IMAP text
    (``b'SUBJECT foo'``, ``b'CHARSET UTF-8 BODY bar'``) on an open
    IMailbox; a Deferred of the UIDs (or sequence numbers) that match."""
    tokens = tokenize(RawCommand([(b"t SEARCH " + keys, None)]))[2:]
    query = SearchParser.parse_query(tokens)
    messages = list(mailbox.messages)
    seq_of = {m.uid: i for i, m in enumerate(messages, 1)}
    d = mailbox.search(resolve(query.program, messages))
    return d.addCallback(lambda uids: uids if uid else [seq_of[u] for u in uids])
