"""CONDSTORE and QRESYNC (RFC 7162) syntax: mod-sequence values, known-UID
sets and the SELECT/FETCH parameters they add.

Pure parsing of client input (ParseError → ``BAD``).  The behaviour lives
where it acts: the unsolicited responses (MODSEQ, VANISHED, HIGHESTMODSEQ)
in the client core (:mod:`pydovecot.imap.client`), the parameters in
``commands/select.py``, ``commands/fetch.py`` and ``commands/store.py``,
and ENABLE CONDSTORE/QRESYNC in :mod:`pydovecot.imap.features`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydovecot.imap.parser import Atom, NumberSet, ParseError, Token, parse_sequence_set

MAX_MODSEQ = 2**63 - 1


def parse_modseq(tok: Token, zero: bool = False) -> int:
    """A mod-sequence-value (1 .. 2^63-1; 0 only where ``zero``)."""
    if not isinstance(tok, Atom) or not tok.isdigit() or len(tok) > 19:
        raise ParseError("Invalid modseq")
    value = int(tok)
    if value > MAX_MODSEQ or (value == 0 and not zero):
        raise ParseError("Invalid modseq")
    return value


def uid_set(tok: Token) -> NumberSet:
    """A known-uids / sequence set without ``*``."""
    if not isinstance(tok, Atom):
        raise ParseError("Invalid UID set")
    ranges = parse_sequence_set(tok)
    if any(a < 0 or b < 0 for a, b in ranges):
        raise ParseError("Invalid UID set")
    return NumberSet(ranges, 0)


@dataclass
class QresyncParams:
    """SELECT … (QRESYNC (uidvalidity modseq [known-uids [seq-match]]))."""

    uidvalidity: int
    modseq: int
    known: NumberSet | None = None


@dataclass
class SelectParams:
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass
class FetchModifiers:
    changedsince: int | None = None
    vanished: bool = False


__all__ = ["MAX_MODSEQ", "parse_modseq", "uid_set", "QresyncParams", "SelectParams", "FetchModifiers"]
