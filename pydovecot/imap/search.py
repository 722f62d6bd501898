"""SEARCH keys: parse RFC 3501/9051 search criteria into a predicate and run it.

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
Evaluation trusts the storage view (:class:`MessageInfo`) and reads message
content only for keys that need it: flag, size, date, UID, MODSEQ and
sequence keys never open a message file.  Header keys first ask the index
(``mailbox.cached(uid, "header.<name>")``) and fill it with ``set_cached``;
the cached value is the list of the field's raw unfolded values, decoded as
latin-1 (lossless, JSON-able).  FROM/TO/CC/BCC compare the parsed
address list written back as Dovecot writes it (comments and folding inside
addresses gone, names decoded); other header keys the decoded field.  Body
keys parse the message.  The mailbox is called through the IMailbox
interface (``cached``/``set_cached``/``message_file``), never probed.
"""

from __future__ import annotations

import codecs
import datetime
import email.utils
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydovecot.imap import mime
from pydovecot.imap.fetch import MONTHS
from pydovecot.imap.parser import (
    Atom,
    Literal,
    NumberSet,
    ParseError,
    RawCommand,
    String,
    Token,
    as_bytes,
    parse_sequence_set,
    tokenize,
)
from pydovecot.storage.interfaces import MessageInfo, StorageError

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


@dataclass
class SearchContext:
    """What one message offers to the predicate."""

    seq: int
    info: MessageInfo
    recent: bool
    load: Callable[[], mime.ParsedMessage]
    max_seq: int
    max_uid: int
    mailbox: Any = None  # the IMailbox, for cached()/set_cached()
    now: float = 0.0
    saved: frozenset[int] = frozenset()  # the SEARCHRES ``$`` UIDs
    headers: dict[str, list[str]] = field(default_factory=dict)
    block: bytes | None = None  # the top-level header block, once read


Predicate = Callable[[SearchContext], bool]


# -- header and body access ---------------------------------------------------


def header_values(ctx: SearchContext, name: str) -> list[str]:
    """Raw unfolded values of field ``name`` (latin-1 text), from the index
    cache when it has them; fills the cache otherwise."""
    key = name.lower()
    got = ctx.headers.get(key)
    if got is not None:
        return got
    mbox = ctx.mailbox
    cached = None
    if mbox is not None:
        try:
            cached = mbox.cached(ctx.info.uid, "header." + key)
        except (KeyError, StorageError, NotImplementedError, OSError):
            cached = None
    if isinstance(cached, list) and all(isinstance(v, str) for v in cached):
        values: list[str] = cached
    else:
        wanted = key.encode("latin-1", "replace")
        values = [value.decode("latin-1") for value in field_values(ctx, wanted)]
        if mbox is not None:
            try:
                mbox.set_cached(ctx.info.uid, "header." + key, values)
            except (StorageError, NotImplementedError, OSError):
                pass
    ctx.headers[key] = values
    return values


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


def header_block(ctx: SearchContext) -> bytes:
    """The message's top-level header block, read from the file only as far
    as its end (a header key need not read or parse the whole message)."""
    if ctx.block is None:
        with ctx.mailbox.message_file(ctx.info.uid) as f:
            ctx.block, _complete = mime.read_header_block(f)
    return ctx.block


def field_values(ctx: SearchContext, name: bytes) -> list[bytes]:
    """Every value of top-level field ``name``: unfolded and stripped, as
    :func:`pydovecot.imap.mime.parse_header_fields` gives them."""
    if ctx.mailbox is None:
        return [f.value for f in ctx.load().root.fields if f.name.lower() == name]
    return [_UNFOLD.sub(b"", m.group(1)).strip(b" \t\r\n")
            for m in _field_pattern(name).finditer(header_block(ctx))]


_UNFOLD = re.compile(rb"\r?\n")


def decode_value(raw: str) -> str:
    """A cached raw value (latin-1 text) → RFC 2047-decoded Unicode."""
    return mime.decode_header_value(raw.encode("latin-1"))


def first_header(ctx: SearchContext, name: str) -> bytes | None:
    values = header_values(ctx, name)
    return values[0].encode("latin-1") if values else None


def sent_datetime(ctx: SearchContext) -> datetime.datetime | None:
    """The Date: field as an aware datetime (its own zone), or None."""
    raw = first_header(ctx, "Date")
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


def _sent_date(ctx: SearchContext) -> datetime.date | None:
    when = sent_datetime(ctx)
    return when.date() if when is not None else None


def _contains(haystacks: Iterable[str], needle: str) -> bool:
    return any(needle in h.casefold() for h in haystacks)


def _body_text(ctx: SearchContext) -> Iterable[str]:
    msg = ctx.load()
    return (mime.decode_body(msg.data, p) for p in mime.text_parts(msg.root))


#: The SEARCH keys whose field is compared as an address list.
_ADDRESS_KEYS = frozenset({"From", "To", "Cc", "Bcc"})
#: A raw value with none of these is compared as it is (nothing to strip).
_ADDRESS_SYNTAX = re.compile(r'[("\\]|=\?|[ \t]{2}|[ \t][@.]|[@.][ \t]')


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


def _address_pred(fname: str, needle: str, ascii_needle: bool) -> Predicate:
    """SEARCH FROM/TO/CC/BCC (RFC 3501 6.4.4: "Messages that contain the
    specified string in the envelope structure's FROM field"): a substring
    of the parsed address list, so comments and folding inside an address
    do not hide it (``<user (c)@ (c) example.org>`` matches
    ``user@example.org``) and a trailing comment's name matches."""
    def pred(c: SearchContext) -> bool:
        for raw in header_values(c, fname):
            if ascii_needle and raw.isascii() and _ADDRESS_SYNTAX.search(raw) is None:
                if needle in raw.casefold():
                    return True
            elif needle in address_text(raw).casefold():
                return True
        return False

    return pred


def _flag(name: str, present: bool = True) -> Predicate:
    return lambda c: (name in c.info.flags) == present


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
    """A parsed key list: the predicate and what it needs."""

    pred: Predicate
    charset: str = "US-ASCII"
    uses_modseq: bool = False  # answer carries (MODSEQ n) (RFC 7162 3.1.5)
    uses_saved: bool = False  # refers to ``$``
    needs_content: bool = False  # reads headers or bodies


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
        return SearchQuery(node.compile(), charset.upper(), parser.uses_modseq,
                           parser.uses_saved, parser.needs_content)

    @classmethod
    def parse(cls, tokens: list[Token]) -> Predicate:
        """Compatibility: only the predicate of :meth:`parse_query`."""
        return cls.parse_query(tokens).pred

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

    def key(self) -> Predicate:
        """One search key as a predicate."""
        return self.key_node().compile()

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

    def _simple_key(self) -> Predicate:
        tok = self.next()
        if not isinstance(tok, Atom):
            raise ParseError("Expected a search key")
        name = tok.upper_str()
        simple = _SIMPLE.get(name)
        if simple is not None:
            return simple
        if name in ("BCC", "CC", "FROM", "SUBJECT", "TO"):
            return self._header(name.capitalize(), self.string())
        if name == "HEADER":
            fname_tok = self.next()
            if isinstance(fname_tok, list):
                raise ParseError("Expected a header name")
            fname = as_bytes(fname_tok).decode("latin-1")
            if not fname or any(c <= " " or c == ":" for c in fname):
                raise ParseError("Invalid header name")
            return self._header(fname, self.string())
        if name == "BODY":
            needle = self.string()
            self.needs_content = True
            return lambda c: _contains(_body_text(c), needle)
        if name == "TEXT":
            needle = self.string()
            self.needs_content = True

            def text(c: SearchContext) -> bool:
                msg = c.load()
                head = (mime.decode_header_value(f.raw.rstrip()) for f in msg.root.fields)
                return _contains(head, needle) or _contains(_body_text(c), needle)

            return text
        if name in ("KEYWORD", "UNKEYWORD"):
            kw_tok = self.next()
            if not isinstance(kw_tok, Atom):
                raise ParseError("Invalid keyword")
            kw = kw_tok.decode("utf-8", "replace").lower()
            present = name == "KEYWORD"
            return lambda c: any(f.lower() == kw for f in c.info.flags) == present
        if name in ("LARGER", "SMALLER"):
            n = self.number(2**63 - 1)
            if name == "LARGER":
                return lambda c: c.info.size > n
            return lambda c: c.info.size < n
        if name in ("BEFORE", "ON", "SINCE"):
            day = parse_date(self.next())
            return _date_pred(name, day, lambda c: c.info.internaldate.date())
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            day = parse_date(self.next())
            self.needs_content = True
            return _date_pred(name[4:], day, _sent_date)
        if name in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
            day = parse_date(self.next())
            return _date_pred(name[5:], day, _save_date)
        if name in ("OLDER", "YOUNGER"):
            secs = self.number(nonzero=True)
            if name == "OLDER":
                return lambda c: c.info.internaldate.timestamp() <= c.now - secs
            return lambda c: c.info.internaldate.timestamp() > c.now - secs
        if name == "MODSEQ":
            return self._modseq()
        if name == "UID":
            raw = self.next()
            if not isinstance(raw, Atom):
                raise ParseError("Invalid UID set")
            if raw == b"$":
                self.uses_saved = True
                return lambda c: c.info.uid in c.saved
            return _set_pred(parse_sequence_set(raw), lambda c: (c.info.uid, c.max_uid))
        if tok == b"$":
            self.uses_saved = True
            return lambda c: c.info.uid in c.saved
        if tok[:1].isdigit() or tok[:1] == b"*":
            return _set_pred(parse_sequence_set(tok), lambda c: (c.seq, c.max_seq))
        raise ParseError(f"Unknown search key {name[:40]}")

    def _header(self, fname: str, needle: str) -> Predicate:
        self.needs_content = True
        if not needle:
            return lambda c: bool(header_values(c, fname))
        ascii_needle = needle.isascii()
        if fname in _ADDRESS_KEYS:
            return _address_pred(fname, needle, ascii_needle)

        def pred(c: SearchContext) -> bool:
            for raw in header_values(c, fname):
                # A plain-ASCII needle in a value without encoded words needs
                # no RFC 2047 decoding.
                if ascii_needle and "=?" not in raw and raw.isascii():
                    if needle in raw.casefold():
                        return True
                elif needle in decode_value(raw).casefold():
                    return True
            return False

        return pred

    def _modseq(self) -> Predicate:
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
        return lambda c: c.info.modseq >= value


def _save_date(c: SearchContext) -> datetime.date | None:
    when = c.info.savedate or c.info.internaldate
    return when.date()


def _set_pred(ranges: list[tuple[int, int]], get: Callable[[SearchContext], tuple[int, int]]) -> Predicate:
    sets: dict[int, NumberSet] = {}

    def pred(c: SearchContext) -> bool:
        value, star = get(c)
        nset = sets.get(star)
        if nset is None:
            nset = sets[star] = NumberSet(ranges, star)
        return value in nset

    return pred


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


#: Nesting of NOT/OR/AND left after flattening that a query may have
#: (evaluation recurses once per level).
MAX_QUERY_DEPTH = 100


class QueryTooDeep(ParseError):
    """A search key list nested deeper than :data:`MAX_QUERY_DEPTH`."""


class _Node:
    """A parsed search key: a leaf predicate, or NOT/OR/AND of nodes.

    Built bottom-up and flattened on the way (no recursion over the input),
    each node knowing its depth, so compiling (which recurses) is bounded.
    """

    __slots__ = ("kind", "pred", "items", "depth")

    def __init__(self, kind: str, pred: Predicate | None = None,
                 items: list[_Node] | None = None, depth: int = 0):
        self.kind = kind  # "leaf", "not", "or", "and"
        self.pred = pred
        self.items = items or []
        self.depth = depth
        if depth > MAX_QUERY_DEPTH:
            raise QueryTooDeep("Search query is nested too deeply")

    @classmethod
    def leaf(cls, pred: Predicate) -> _Node:
        return cls("leaf", pred)

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

    def compile(self) -> Predicate:
        if self.kind == "leaf":
            assert self.pred is not None
            return self.pred
        preds = [item.compile() for item in self.items]
        if self.kind == "not":
            inner = preds[0]
            return lambda c: not inner(c)
        if self.kind == "or":
            return lambda c: any(p(c) for p in preds)
        return _and(preds)


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
    "SAVEDATESUPPORTED": lambda c: True,
}


# -- running a query -------------------------------------------------------------------


def message_loader(mailbox: Any, info: MessageInfo) -> Callable[[], mime.ParsedMessage]:
    """A loader reading a message straight from the mailbox (no LRU)."""
    state: dict[str, mime.ParsedMessage] = {}

    def load() -> mime.ParsedMessage:
        msg = state.get("m")
        if msg is None:
            with mailbox.message_file(info.uid) as f:
                msg = state["m"] = mime.ParsedMessage(mime.normalize_crlf(f.read()))
        return msg

    return load


def run_query(
    mailbox: Any,
    query: SearchQuery,
    messages: list[MessageInfo] | None = None,
    load: Callable[[MessageInfo], Callable[[], mime.ParsedMessage]] | None = None,
    saved: frozenset[int] = frozenset(),
    now: float | None = None,
    candidates: Iterable[int] | None = None,
) -> list[tuple[int, MessageInfo]]:
    """``[(seq, info)]`` of the messages (of ``mailbox.messages``) matching.

    ``load(info)`` gives a content loader (default: read the file);
    ``candidates`` limits the test to those sequence numbers.  A message
    whose file vanished meanwhile does not match.
    """
    msgs = mailbox.messages if messages is None else messages
    recent = mailbox.recent
    max_seq = len(msgs)
    max_uid = msgs[-1].uid if msgs else 0
    when = time.time() if now is None else now
    make = load or (lambda info: message_loader(mailbox, info))
    pred = query.pred
    hits: list[tuple[int, MessageInfo]] = []
    seqs: Iterable[int] = range(1, max_seq + 1) if candidates is None else candidates
    for seq in seqs:
        info = msgs[seq - 1]
        ctx = SearchContext(seq, info, info.uid in recent, make(info), max_seq, max_uid,
                            mailbox, when, saved)
        try:
            if pred(ctx):
                hits.append((seq, info))
        except (OSError, StorageError):
            continue
    return hits


def bench_search(mailbox: Any, keys: bytes, uid: bool = True) -> list[int]:
    """For benchmarks: run search keys given as IMAP text (``b'SUBJECT foo'``,
    ``b'CHARSET UTF-8 BODY bar'``) on an open IMailbox; UIDs (or sequence
    numbers) of the matches.  No session, no message LRU."""
    tokens = tokenize(RawCommand([(b"t SEARCH " + keys, None)]))[2:]
    query = SearchParser.parse_query(tokens)
    return [info.uid if uid else seq for seq, info in run_query(mailbox, query)]
