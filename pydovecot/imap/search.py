"""SEARCH: parse RFC 3501 search keys into a predicate and evaluate it.

The key list is untrusted client input: parsing raises ParseError (→ BAD)
or :class:`BadCharset` (→ NO [BADCHARSET]).  Evaluation trusts the storage
view and reads message content only for keys that need it, through the
session's loader (so header/body keys cost a parse, flag keys do not).
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Callable
from dataclasses import dataclass

from pydovecot.imap import mime
from pydovecot.imap.fetch import MONTHS
from pydovecot.imap.parser import (
    Atom,
    NumberSet,
    ParseError,
    Token,
    as_bytes,
    parse_sequence_set,
)
from pydovecot.storage.interfaces import MessageInfo

SUPPORTED_CHARSETS = {"US-ASCII", "UTF-8"}


class BadCharset(Exception):
    """Unknown CHARSET: answer ``NO [BADCHARSET (US-ASCII UTF-8)]``."""


@dataclass
class SearchContext:
    """What one message offers to the predicate."""

    seq: int
    info: MessageInfo
    recent: bool
    load: Callable[[], mime.ParsedMessage]
    max_seq: int
    max_uid: int


Predicate = Callable[[SearchContext], bool]


def parse_date(tok: Token) -> datetime.date:
    raw = as_bytes(tok).decode("latin-1")
    try:
        day, mon, year = raw.split("-")
        month = [m.lower() for m in MONTHS].index(mon.lower()) + 1
        return datetime.date(int(year), month, int(day))
    except (ValueError, IndexError):
        raise ParseError("Invalid search date") from None


def _sent_date(ctx: SearchContext) -> datetime.date | None:
    raw = ctx.load().root.header("Date")
    if raw is None:
        return None
    parsed = email.utils.parsedate_tz(raw.decode("latin-1"))
    if parsed is None:
        return None
    try:
        return datetime.date(parsed[0], parsed[1], parsed[2])
    except ValueError:
        return None


def _header_text(ctx: SearchContext, name: str) -> list[str]:
    key = name.lower().encode()
    return [
        mime.decode_header_value(f.value)
        for f in ctx.load().root.fields
        if f.name.lower() == key
    ]


def _contains(haystacks: list[str], needle: str) -> bool:
    return any(needle in h.casefold() for h in haystacks)


def _body_text(ctx: SearchContext) -> list[str]:
    msg = ctx.load()
    return [mime.decode_body(msg.data, p) for p in mime.text_parts(msg.root)]


def _flag(name: str, present: bool = True) -> Predicate:
    return lambda c: (name in c.info.flags) == present


class SearchParser:
    """Turns the argument tokens of SEARCH into one predicate."""

    def __init__(self, tokens: list[Token], charset: str = "US-ASCII"):
        self.tokens = tokens
        self.pos = 0
        self.charset = charset

    @classmethod
    def parse(cls, tokens: list[Token]) -> Predicate:
        """Parse ``[CHARSET x] key…``; raises ParseError / BadCharset."""
        charset = "US-ASCII"
        if len(tokens) >= 2 and isinstance(tokens[0], Atom) and tokens[0].upper() == b"CHARSET":
            charset = as_bytes(tokens[1]).decode("latin-1").upper()
            if charset not in SUPPORTED_CHARSETS:
                raise BadCharset(charset)
            tokens = tokens[2:]
        if not tokens:
            raise ParseError("Missing search keys")
        parser = cls(tokens, charset)
        preds = []
        while parser.pos < len(tokens):
            preds.append(parser.key())
        return _and(preds)

    def next(self) -> Token:
        if self.pos >= len(self.tokens):
            raise ParseError("Missing search argument")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def string(self) -> str:
        raw = as_bytes(self.next())
        try:
            return raw.decode("utf-8").casefold()  # US-ASCII is a subset
        except UnicodeDecodeError:
            raise ParseError("Search string is not valid in its charset") from None

    def number(self) -> int:
        tok = self.next()
        if not isinstance(tok, Atom) or not tok.isdigit():
            raise ParseError("Expected a number")
        return int(tok)

    def key(self) -> Predicate:
        tok = self.next()
        if isinstance(tok, list):
            sub = SearchParser(tok, self.charset)
            if not tok:
                raise ParseError("Empty search list")
            preds = []
            while sub.pos < len(tok):
                preds.append(sub.key())
            return _and(preds)
        if not isinstance(tok, Atom):
            raise ParseError("Expected a search key")
        name = tok.upper_str()
        simple = _SIMPLE.get(name)
        if simple is not None:
            return simple
        if name == "NOT":
            inner = self.key()
            return lambda c: not inner(c)
        if name == "OR":
            a, b = self.key(), self.key()
            return lambda c: a(c) or b(c)
        if name in ("BCC", "CC", "FROM", "SUBJECT", "TO"):
            needle = self.string()
            header = name.capitalize() if name != "BCC" else "Bcc"
            return lambda c: _contains(_header_text(c, header), needle)
        if name == "HEADER":
            field = as_bytes(self.next()).decode("latin-1")
            needle = self.string()
            if not needle:
                return lambda c: bool(c.load().root.header(field) is not None)
            return lambda c: _contains(_header_text(c, field), needle)
        if name == "BODY":
            needle = self.string()
            return lambda c: _contains(_body_text(c), needle)
        if name == "TEXT":
            needle = self.string()

            def text(c: SearchContext) -> bool:
                msg = c.load()
                head = [mime.decode_header_value(f.raw.rstrip()) for f in msg.root.fields]
                return _contains(head, needle) or _contains(_body_text(c), needle)

            return text
        if name in ("KEYWORD", "UNKEYWORD"):
            kw = as_bytes(self.next()).decode("utf-8", "replace")
            present = name == "KEYWORD"
            return lambda c: any(f.lower() == kw.lower() for f in c.info.flags) == present
        if name in ("LARGER", "SMALLER"):
            n = self.number()
            if name == "LARGER":
                return lambda c: c.info.size > n
            return lambda c: c.info.size < n
        if name in ("BEFORE", "ON", "SINCE"):
            day = parse_date(self.next())
            return _date_pred(name, day, lambda c: c.info.internaldate.date())
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            day = parse_date(self.next())
            return _date_pred(name[4:], day, _sent_date)
        if name == "UID":
            ranges = parse_sequence_set(as_bytes(self.next()))
            cache: dict[int, NumberSet] = {}

            def uid_in(c: SearchContext) -> bool:
                nset = cache.get(c.max_uid)
                if nset is None:
                    nset = cache[c.max_uid] = NumberSet(ranges, c.max_uid)
                return c.info.uid in nset

            return uid_in
        if tok[:1].isdigit() or tok[:1] == b"*":
            seq_ranges = parse_sequence_set(tok)
            seqs: dict[int, NumberSet] = {}

            def seq_in(c: SearchContext) -> bool:
                nset = seqs.get(c.max_seq)
                if nset is None:
                    nset = seqs[c.max_seq] = NumberSet(seq_ranges, c.max_seq)
                return c.seq in nset

            return seq_in
        raise ParseError(f"Unknown search key {name[:40]!r}")


def _date_pred(op: str, day: datetime.date, get: Callable[[SearchContext], datetime.date | None]) -> Predicate:
    def pred(c: SearchContext) -> bool:
        value = get(c)
        if value is None:
            return False
        if op == "BEFORE":
            return value < day
        if op == "ON":
            return value == day
        return value >= day

    return pred


def _and(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    return lambda c: all(p(c) for p in preds)


_SIMPLE: dict[str, Predicate] = {
    "ALL": lambda c: True,
    "ANSWERED": _flag("\\Answered"),
    "DELETED": _flag("\\Deleted"),
    "DRAFT": _flag("\\Draft"),
    "FLAGGED": _flag("\\Flagged"),
    "SEEN": _flag("\\Seen"),
    "UNANSWERED": _flag("\\Answered", False),
    "UNDELETED": _flag("\\Deleted", False),
    "UNDRAFT": _flag("\\Draft", False),
    "UNFLAGGED": _flag("\\Flagged", False),
    "UNSEEN": _flag("\\Seen", False),
    "RECENT": lambda c: c.recent,
    "OLD": lambda c: not c.recent,
    "NEW": lambda c: c.recent and "\\Seen" not in c.info.flags,
}
