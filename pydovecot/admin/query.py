"""doveadm's search query syntax → mailbox patterns plus an IMAP SEARCH query.

doveadm takes IMAP SEARCH keys as separate arguments, case-insensitive,
with ``(`` ``)`` as arguments of their own, and adds ``mailbox NAME``
(wildcards ``*`` and ``%``), ``mailbox-guid GUID`` and dates written as
``YYYY-MM-DD``, a UNIX time or an interval (``30d``, ``2w``, ``1h``).
:func:`parse` splits the top-level ``mailbox``/``mailbox-guid`` keys from
the rest and hands the rest, as IMAP tokens, to the IMAP SEARCH parser
(:mod:`pydovecot.imap.search`), which is what evaluates it.

Trusts nothing: every argument is the admin's, but is still parsed; a bad
query raises :class:`QueryError` with doveadm's reason.
"""

from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass, field

from pydovecot.imap.fetch import MONTHS
from pydovecot.imap.parser import Atom, ParseError, String
from pydovecot.imap.search import SearchParser, SearchQuery

#: Arguments each key takes (keys not listed take none; a sequence set
#: is a key of its own).
ARITY = {
    "BCC": 1, "BEFORE": 1, "BODY": 1, "CC": 1, "FROM": 1, "HEADER": 2, "KEYWORD": 1,
    "LARGER": 1, "ON": 1, "SENTBEFORE": 1, "SENTON": 1, "SENTSINCE": 1, "SINCE": 1,
    "SMALLER": 1, "SUBJECT": 1, "TEXT": 1, "TO": 1, "UID": 1, "UNKEYWORD": 1,
    "OLDER": 1, "YOUNGER": 1, "SAVEDBEFORE": 1, "SAVEDON": 1, "SAVEDSINCE": 1,
    "MODSEQ": 1, "MAILBOX": 1, "MAILBOX-GUID": 1,
}  # fmt: skip
DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
             "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}
STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "HEADER", "SUBJECT", "TEXT", "TO"}
INTERVAL_UNITS = {"s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60,
                  "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
                  "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}


class QueryError(ValueError):
    """The query is malformed (doveadm: ``Unknown search key`` …)."""


@dataclass
class Query:
    """A parsed doveadm query."""

    mailboxes: list[str] = field(default_factory=list)  # patterns; [] = every mailbox
    guids: list[str] = field(default_factory=list)
    search: SearchQuery | None = None  # None: every message

    def wants(self, name: str, guid: str = "") -> bool:
        """Whether mailbox ``name`` (with ``guid``) is one the query names."""
        if self.guids and guid not in self.guids:
            return False
        if not self.mailboxes:
            return True
        return any(match_mailbox(p, name) for p in self.mailboxes)


def match_mailbox(pattern: str, name: str, separator: str = "/") -> bool:
    """doveadm's mailbox pattern: ``*`` anything, ``%`` anything but the
    separator; INBOX case-insensitively."""
    if pattern.upper() == "INBOX" or (pattern.upper().startswith("INBOX" + separator)):
        pattern = "INBOX" + pattern[5:]
    if name.upper() == "INBOX" or name.upper().startswith("INBOX" + separator):
        name = "INBOX" + name[5:]
    regex = "".join(".*" if c == "*" else f"[^{re.escape(separator)}]*" if c == "%"
                    else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _date(value: str, now: float) -> str:
    """An IMAP date (``7-Dec-2026``) for doveadm's date forms."""
    v = value.strip()
    when: datetime.date | None = None
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", v)
    if m:
        try:
            when = datetime.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            raise QueryError(f"Invalid date: {value}") from None
    elif v.isdigit() and len(v) > 6:
        when = datetime.datetime.fromtimestamp(int(v)).date()
    else:
        m = re.fullmatch(r"(\d+)\s*([a-z]+)", v.lower())
        if m and m[2] in INTERVAL_UNITS:
            when = datetime.datetime.fromtimestamp(now - int(m[1]) * INTERVAL_UNITS[m[2]]).date()
    if when is None:
        return v  # an IMAP date, or an error the IMAP parser reports
    return f"{when.day}-{MONTHS[when.month - 1]}-{when.year}"


def _tokens(args: list[str], now: float) -> tuple[list, list[str], list[str]]:
    """IMAP tokens (nested lists for parentheses) and the top-level
    mailbox patterns and GUIDs.  ``OR`` is infix, as in doveadm's
    queries (``from ann OR from bob``); ANDs and ORs mixed without
    parentheses are refused, as doveadm refuses them."""
    stack: list[list] = [[]]  # groups of elements: ("key", tokens) | "OR" | "NOT" | list
    mailboxes: list[str] = []
    guids: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "(":
            stack.append([])
            continue
        if arg == ")":
            if len(stack) == 1:
                raise QueryError("Unexpected )")
            inner = stack.pop()
            stack[-1].append(inner)
            continue
        key = arg.upper()
        if key in ("OR", "NOT"):
            stack[-1].append(key)
            continue
        n = ARITY.get(key, 0)
        if i + n > len(args):
            raise QueryError(f"{arg}: Missing parameter")
        params = args[i:i + n]
        i += n
        if key in ("MAILBOX", "MAILBOX-GUID"):
            if len(stack) > 1 or (stack[-1] and stack[-1][-1] in ("OR", "NOT")):
                raise QueryError(f"{arg} is supported only at the top level of a query")
            (mailboxes if key == "MAILBOX" else guids).append(params[0])
            continue
        tokens: list = [Atom(key.encode())]
        if key in DATE_KEYS:
            params = [_date(params[0], now)]
        for p in params:
            raw = p.encode("utf-8")
            tokens.append(String(raw) if key in STRING_KEYS else Atom(raw))
        stack[-1].append(("key", tokens))
    if len(stack) != 1:
        raise QueryError("Missing )")
    return _compile(stack[0]), mailboxes, guids


def _compile(group: list) -> list:
    """One group's elements as IMAP tokens (infix OR → IMAP's prefix OR)."""
    items: list = []  # each: list of tokens for one key, or "OR"
    negate = False
    for element in group:
        if element == "NOT":
            negate = not negate
            continue
        if element == "OR":
            if negate:
                raise QueryError("NOT before OR")
            items.append("OR")
            continue
        tokens = [_compile(element)] if isinstance(element, list) else element[1]
        if negate:
            tokens = [Atom(b"NOT"), *tokens]
            negate = False
        items.append(tokens)
    if negate:
        raise QueryError("NOT without a key")
    operands: list[list] = [[]]
    for item in items:
        if item == "OR":
            operands.append([])
        else:
            operands[-1].append(item)
    if len(operands) == 1:
        return [tok for item in operands[0] for tok in item]
    if any(len(op) != 1 for op in operands):
        raise QueryError("Use parenthesis when mixing ANDs and ORs")
    out = operands[-1][0]
    for op in reversed(operands[:-1]):
        out = [Atom(b"OR"), *op[0], *out]
    return out


def parse(args: list[str], now: float | None = None) -> Query:
    """A doveadm query; an empty one is refused, as doveadm does."""
    if not args:
        raise QueryError("Empty search query")
    tokens, mailboxes, guids = _tokens(args, time.time() if now is None else now)
    query = Query(mailboxes, guids)
    if tokens:
        try:
            query.search = SearchParser.parse_query(tokens, charset="UTF-8")
        except ParseError as e:
            raise QueryError(str(e)) from None
    return query


def mailbox_patterns_match(patterns: list[str], name: str) -> bool:
    """For verbs taking mailbox masks (``mailbox status``, ``force-resync``)."""
    return any(match_mailbox(p, name) for p in patterns)


__all__ = ["Query", "QueryError", "parse", "match_mailbox"]
