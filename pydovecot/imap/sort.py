"""SORT (RFC 5256) and SORT=DISPLAY (RFC 5957): criteria, keys, base subject.

Parses the untrusted sort-criteria list (ParseError → BAD) and orders
search hits.  Message data comes from the trusted storage view
(:class:`MessageInfo`) and from header fields read through
:func:`pydovecot.imap.search.header_values`, so cached headers never open
a file.  Strings are compared by :func:`collate` (the i;unicode-casemap
collation of RFC 5051 that Dovecot uses); exact ties keep mailbox order,
as RFC 5256 requires.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from pydovecot.imap import mime
from pydovecot.imap.parser import Atom, ParseError, Token
from pydovecot.imap.search import SearchContext, decode_value, first_header, sent_datetime

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")

_WSP_RUN = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = rf"(?:re|fwd?)[ \t]*(?:{_BLOB})?:"
_LEADER = re.compile(rf"(?:(?:{_BLOB})*({_REFWD})|[ \t])", re.I)
_BLOB_RE = re.compile(_BLOB)
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 section 2.1: the base subject of a decoded Subject, and
    whether reply/forward marks were removed from it (for threading)."""
    s = _WSP_RUN.sub(" ", subject)  # step 1 (encoded words already decoded)
    reply = False
    while True:
        # (2) remove subj-trailer: "(fwd)" and WSP, repeatedly
        while True:
            m = _TRAILER.search(s)
            if not m:
                break
            if m.group(0) != " " and m.group(0) != "\t":
                reply = True
            s = s[: m.start()]
        # (3)-(5): subj-leader, then a subj-blob if something is left after it
        while True:
            before = s
            while True:
                m = _LEADER.match(s)
                if not m or m.end() == 0:
                    break
                if m.group(1):
                    reply = True
                s = s[m.end():]
            m = _BLOB_RE.match(s)
            if m and s[m.end():].strip(" \t"):
                s = s[m.end():]
            if s == before:
                break
        # (6) "[fwd:" … "]" wrapper
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return s, reply


_TITLE: dict[str, str] = {}


def collate(text: str) -> str:
    """The sort key of a string, as Dovecot compares them (RFC 5256's
    i;ascii-casemap for ASCII: "Both strings are converted to upper
    case", so ``[`` and ``_`` sort after the letters; beyond ASCII the
    i;unicode-casemap of RFC 5051: title-cased, then decomposed, as
    Dovecot's uni_utf8_to_decomposed_titlecase).  Keys compare as code
    points, i.e. as the octets of their UTF-8 form."""
    if text.isascii():
        return text.upper()
    out = []
    for ch in text:
        t = _TITLE.get(ch)
        if t is None:
            t = ch.upper() if ch.isascii() else unicodedata.normalize("NFKD", ch.title())
            if len(_TITLE) < 4096:
                _TITLE[ch] = t
        out.append(t)
    return "".join(out)


def subject_key(ctx: SearchContext) -> str:
    raw = first_header(ctx, "Subject")
    if raw is None:
        return ""
    return collate(base_subject(mime.decode_header_value(raw))[0])


def _first_address(ctx: SearchContext, name: str) -> tuple[bytes | None, bytes | None, bytes | None] | None:
    """(display name, mailbox, host) of the field's first address; a group
    is its start marker, (None, group name, None), as Dovecot's parser
    gives it."""
    raw = first_header(ctx, name)
    if raw is None:
        return None
    for disp, _adl, mailbox, host in mime.parse_addresses(raw):
        if host is not None:  # Dovecot parses with FILL_MISSING here too
            mailbox = mailbox or b"MISSING_MAILBOX"
            host = host or b"MISSING_DOMAIN"
        return disp, mailbox, host
    return None


def address_key(ctx: SearchContext, name: str) -> str:
    """RFC 5256 FROM/TO/CC: "the addr-mailbox of the first ... address";
    a group's name when the field starts with a group (Dovecot)."""
    addr = _first_address(ctx, name)
    if addr is None or addr[1] is None:
        return ""
    return collate(addr[1].decode("utf-8", "replace"))


def display_key(ctx: SearchContext, name: str) -> str:
    """RFC 5957 DISPLAYFROM/DISPLAYTO: the decoded display name of the first
    address, else its ``mailbox@host``, else the mailbox alone (a group's
    name), as Dovecot's get_display_name."""
    addr = _first_address(ctx, name)
    if addr is None:
        return ""
    disp, mailbox, host = addr
    if disp:
        text = decode_value(disp.decode("latin-1"))
        if text:
            return collate(text)
    if mailbox is None:
        return ""
    spec = mailbox + (b"@" + host if host is not None else b"")
    return collate(spec.decode("utf-8", "replace"))


def sent_timestamp(ctx: SearchContext) -> float:
    """RFC 5256 sent date (UTC); the internal date if Date: is unusable."""
    when = sent_datetime(ctx)
    try:
        if when is not None:
            return when.timestamp()
    except (OverflowError, ValueError, OSError):
        pass
    return ctx.info.internaldate.timestamp()


KEY_FUNCS: dict[str, Callable[[SearchContext], Any]] = {
    "ARRIVAL": lambda c: c.info.internaldate.timestamp(),
    "CC": lambda c: address_key(c, "Cc"),
    "DATE": sent_timestamp,
    "FROM": lambda c: address_key(c, "From"),
    "SIZE": lambda c: c.info.size,
    "SUBJECT": subject_key,
    "TO": lambda c: address_key(c, "To"),
    "DISPLAYFROM": lambda c: display_key(c, "From"),
    "DISPLAYTO": lambda c: display_key(c, "To"),
}


def parse_criteria(tok: Token) -> list[tuple[str, bool]]:
    """``(REVERSE DATE SUBJECT)`` → [("DATE", True), ("SUBJECT", False)]."""
    if not isinstance(tok, list) or not tok:
        raise ParseError("Invalid sort criteria")
    out: list[tuple[str, bool]] = []
    reverse = False
    for item in tok:
        if not isinstance(item, Atom):
            raise ParseError("Invalid sort criteria")
        name = item.upper_str()
        if name == "REVERSE":
            if reverse:
                raise ParseError("REVERSE REVERSE is not a sort key")
            reverse = True
            continue
        if name not in KEY_FUNCS:
            raise ParseError(f"Unknown sort key {name[:30]}")
        out.append((name, reverse))
        reverse = False
    if reverse:
        raise ParseError("REVERSE without a sort key")
    return out


def sort_key(ctx: SearchContext, criteria: list[tuple[str, bool]]) -> tuple:
    """One message's keys, one per criterion (read from its headers)."""
    return tuple(KEY_FUNCS[name](ctx) for name, _reverse in criteria)


def order_by_keys(ctxs: list[SearchContext], keys: list[tuple],
                  criteria: list[tuple[str, bool]]) -> list[SearchContext]:
    """Contexts (in mailbox order) ordered by precomputed :func:`sort_key`
    values; stable, so exact ties keep mailbox order."""
    order = list(range(len(ctxs)))
    # Sort by the last key first; Python's sort is stable, also with reverse.
    for i in reversed(range(len(criteria))):
        order.sort(key=lambda j, i=i: keys[j][i], reverse=criteria[i][1])
    return [ctxs[j] for j in order]


def sort_contexts(ctxs: list[SearchContext], criteria: list[tuple[str, bool]]) -> list[SearchContext]:
    """Order contexts (given in mailbox order) by the criteria; stable."""
    return order_by_keys(ctxs, [sort_key(c, criteria) for c in ctxs], criteria)
