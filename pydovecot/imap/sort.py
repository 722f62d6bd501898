"""SORT (RFC 5256) and SORT=DISPLAY (RFC 5957): the sort-criteria grammar.

Parses the untrusted sort-criteria list (ParseError → BAD).  The keys are
computed by the storage (``IMailbox.sort``, see
:mod:`pydovecot.storage.parsed`: base subject, the i;unicode-casemap
collation Dovecot uses, first addresses, sent date); :func:`base_subject`
and :func:`collate` are re-exported here for the protocol's tests.
"""

from __future__ import annotations

from pydovecot.imap.parser import Atom, ParseError, Token
from pydovecot.storage.parsed import SORT_KEYS, base_subject, collate

__all__ = ["SORT_KEYS", "base_subject", "collate", "parse_criteria"]


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
        if name not in SORT_KEYS:
            raise ParseError(f"Unknown sort key {name[:30]}")
        out.append((name, reverse))
        reverse = False
    if reverse:
        raise ParseError("REVERSE without a sort key")
    return out
