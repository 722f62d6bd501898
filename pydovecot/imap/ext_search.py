"""The machinery of SEARCH, SORT, THREAD and CANCELUPDATE (the commands are
in ``commands/search.py``).

Implements SEARCH/UID SEARCH with ESEARCH (RFC 4731) and SEARCHRES
(RFC 5182, the ``$`` variable), SORT with ESORT (RFC 5256, 5267) and
SORT=DISPLAY (RFC 5957), THREAD=ORDEREDSUBJECT/REFERENCES (RFC 5256) and
CONTEXT=SEARCH/SORT (RFC 5267, see :mod:`pydovecot.imap.context`).

Command arguments are untrusted (errors become BAD/NO through the
session's CommandError/ParseError handling); the selected mailbox view is
trusted.  Searching and sorting are the storage's (``IMailbox.search``/
``sort``, sliced on the global Cooperator there); THREAD's per-message data
comes from ``IMailbox.fetch_data`` (:func:`collect_data`, one message per
Cooperator step), and the thread algorithms run in a pool thread for big
results; the cyclic GC is paused for the command (see
:func:`pydovecot.storage.index.pause_gc`).  The view cannot move meanwhile,
since the session's queue runs one command at a time and the view changes
only in the core's ``sync``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import twisted.python.threadpool  # noqa: F401  (deferToThread needs it after the privilege drop)
from twisted.internet import defer, task, threads

from pydovecot.imap.parser import (
    Atom,
    NumberSet,
    ParseError,
    Token,
    compress,
)
from pydovecot.imap.thread import (
    ThreadMessage,
    dismantle,
    ordered_subject,
    references,
    render,
)
from pydovecot.storage.index import pause_gc
from pydovecot.storage.interfaces import IMailbox, MessageInfo
from pydovecot.storage.search import CHEAP_STEP, CONTENT_STEP, COOPERATE_OVER

__all__ = ["CHEAP_STEP", "CONTENT_STEP", "COOPERATE_OVER", "THREAD_ALGORITHMS", "THREAD_OVER",
           "Hits", "ReturnOptions", "collect_data", "format_esearch", "gc_paused", "offload",
           "search_response", "thread_messages"]

RETURN_OPTIONS = {"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT", "PARTIAL"}
#: Sorting or threading more messages than this (pure computation on data
#: of their own: nothing shared) runs in a thread of the reactor's pool;
#: the GIL's switch interval (5 ms) then keeps the reactor serving.
THREAD_OVER = 2000
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")

Hits = list[tuple[int, MessageInfo]]


class ReturnOptions:
    """Parsed ``RETURN (…)`` of SEARCH/SORT (RFC 4731, 5182, 5267)."""

    def __init__(self, names: set[str], partial: tuple[int, int] | None = None):
        self.names = names
        self.partial = partial

    @classmethod
    def parse(cls, tok: Token) -> ReturnOptions:
        if not isinstance(tok, list):
            raise ParseError("Invalid RETURN options")
        names: set[str] = set()
        partial = None
        items = list(tok)
        i = 0
        while i < len(items):
            item = items[i]
            i += 1
            if not isinstance(item, Atom):
                raise ParseError("Invalid RETURN option")
            name = item.upper_str()
            if name not in RETURN_OPTIONS:
                raise ParseError(f"Unknown RETURN option {name[:30]}")
            if name == "PARTIAL":
                if i >= len(items) or not isinstance(items[i], Atom):
                    raise ParseError("PARTIAL needs a range")
                partial = _partial_range(items[i])
                i += 1
            names.add(name)
        if not names - {"SAVE", "CONTEXT", "UPDATE"} and "SAVE" not in names:
            names.add("ALL")  # RETURN () and RETURN (UPDATE) mean ALL
        return cls(names, partial)

    @property
    def silent(self) -> bool:
        """SAVE alone: no ESEARCH response (RFC 5182 2.4)."""
        return not (self.names - {"SAVE", "CONTEXT"})


def _partial_range(raw: bytes) -> tuple[int, int]:
    lo, sep, hi = raw.partition(b":")
    if not sep or not lo.isdigit() or not hi.isdigit() or len(lo) > 10 or len(hi) > 10:
        raise ParseError("Invalid PARTIAL range")
    a, b = int(lo), int(hi)
    if a == 0 or b == 0:
        raise ParseError("Invalid PARTIAL range")
    return (min(a, b), max(a, b))


def quote_tag(tag: bytes) -> bytes:
    return b'"' + tag.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def format_esearch(
    tag: bytes,
    uid: bool,
    ids: list[int],
    opts: Iterable[str],
    partial: tuple[int, int] | None = None,
    modseq: int | None = None,
    ordered: bool = False,
) -> bytes:
    """One ``* ESEARCH`` line.  ``ids`` are in answer order (ascending for
    SEARCH, sort order for SORT, then ``ordered`` keeps it in ALL)."""
    wanted = {o.upper() for o in opts}
    out = [b"* ESEARCH (TAG " + quote_tag(tag) + b")"]
    if uid:
        out.append(b"UID")
    if ids:
        if "MIN" in wanted:
            out.append(b"MIN %d" % (ids[0] if ordered else min(ids)))
        if "MAX" in wanted:
            out.append(b"MAX %d" % (ids[-1] if ordered else max(ids)))
    if "COUNT" in wanted:
        out.append(b"COUNT %d" % len(ids))
    if ids and "ALL" in wanted:
        out.append(b"ALL " + (compress(ids) if ordered else NumberSet([(i, i) for i in ids], 0).to_imap()))
    if partial is not None:
        lo, hi = partial
        part = ids[lo - 1 : hi]
        body = compress(part) if ordered else NumberSet([(i, i) for i in part], 0).to_imap()
        out.append(b"PARTIAL (%d:%d %s)" % (lo, hi, body if part else b"NIL"))
    if modseq is not None and ids:
        out.append(b"MODSEQ %d" % modseq)
    return b" ".join(out) + b"\r\n"


def search_response(
    session: Any, tag: bytes, uid: bool, results: list[int], return_opts: Iterable[str] = ("ALL",),
    modseq: int | None = None,
) -> None:
    """Send the ESEARCH answer for ``results`` (ascending ids): what an
    IMAP4rev2 session sends for SEARCH without RETURN (``return_opts``
    ``("ALL",)``), and for any SEARCH RETURN."""
    session.send(format_esearch(tag, uid, sorted(results), return_opts, modseq=modseq))


def gc_paused(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command with the cyclic GC paused until it is answered (see
    :func:`pydovecot.storage.index.pause_gc`): its per-message objects
    are gone by then, so the GC's next pass is short."""

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        release = pause_gc()
        try:
            result = method(self, *args, **kwargs)
            if inspect.iscoroutine(result):
                result = defer.Deferred.fromCoroutine(result)
        except BaseException:
            release()
            raise
        if isinstance(result, defer.Deferred):
            def done(value: Any) -> Any:
                # After the callback chain has unwound: its frames still
                # hold the per-message objects the GC should not walk.
                from twisted.internet import reactor

                reactor.callLater(0, release)
                return value

            return result.addBoth(done)
        release()
        return result

    return functools.wraps(method)(wrapper)


def offload(func: Callable[..., Any], items: list[Any], *args: Any) -> Any:
    """``func(items, *args)``: here for a few items, else in a thread of
    the reactor's pool (a Deferred).  Only for functions that touch
    nothing but their arguments."""
    if len(items) <= THREAD_OVER:
        return func(items, *args)
    return threads.deferToThread(func, items, *args)


def collect_data(mbox: IMailbox, uids: Sequence[int], items: Sequence[str],
                 closed: Callable[[], bool] = lambda: False,
                 convert: Callable[[int, dict], Any] = lambda _i, d: d) -> defer.Deferred[list[Any]]:
    """``convert(i, mbox.fetch_data(uids[i], items))`` for every UID, in
    order: at once for a few, else one message per step of the global
    Cooperator (which also waits for a storage that answers later).  A
    message the storage cannot answer for gives ``{}``."""
    out: list[Any] = [None] * len(uids)

    def got(value: Any, i: int) -> None:
        out[i] = convert(i, value if isinstance(value, dict) else {})

    def work() -> Generator[Any, None, None]:
        for i, uid in enumerate(uids):
            if closed():
                return
            yield mbox.fetch_data(uid, items).addCallbacks(got, lambda _f, i=i: got({}, i), (i,))

    if len(uids) <= COOPERATE_OVER:
        return defer.gatherResults(list(work())).addCallback(lambda _: out)
    return task.cooperate(work()).whenDone().addCallback(lambda _: out)


def thread_messages(msgs: list[ThreadMessage], algorithm: str) -> str:
    """The thread-list text for the messages."""
    roots = references(msgs) if algorithm == "REFERENCES" else ordered_subject(msgs)
    text = render(roots)
    dismantle(roots)
    return text

