"""SEARCH, SORT, THREAD and CANCELUPDATE.

Implements SEARCH/UID SEARCH with ESEARCH (RFC 4731) and SEARCHRES
(RFC 5182, the ``$`` variable), SORT with ESORT (RFC 5256, 5267) and
SORT=DISPLAY (RFC 5957), THREAD=ORDEREDSUBJECT/REFERENCES (RFC 5256) and
CONTEXT=SEARCH/SORT (RFC 5267, see :mod:`pydovecot.imap.context`).

Command arguments are untrusted (errors become BAD/NO through the
session's CommandError/ParseError handling); the selected mailbox view and
the session's message loader are trusted.  Other sessions of the mail
process keep being served while a big one runs: searches over more than a
few messages, and the per-message work of SORT and THREAD (header reads),
go through the global Cooperator (one message per step for content keys);
the pure computations on their results (ordering, the thread algorithms)
run in a pool thread; the cyclic GC is paused for the command (see
:func:`pydovecot.storage.index.pause_gc`).  The view cannot move meanwhile,
since the session's queue runs one command at a time and the view changes
only in ``_sync``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

from pydovecot.imap import context, features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError
from pydovecot.imap.ext_search import (
    CHEAP_STEP,
    CONTENT_STEP,
    COOPERATE_OVER,
    THREAD_ALGORITHMS,
    Hits,
    LazyContext,
    ReturnOptions,
    format_esearch,
    gc_paused,
    offload,
    search_response,
    thread_message,
    thread_messages,
)
from pydovecot.imap.fetched import FetchedView, evaluate
from pydovecot.imap.parser import (
    Atom,
    ParseError,
    Token,
    as_bytes,
)
from pydovecot.imap.search import (
    ADVERTISED_CHARSETS,
    BadCharset,
    QueryTooDeep,
    SearchParser,
    SearchQuery,
    charset_codec,
)
from pydovecot.imap.sort import order_by_keys, parse_criteria, sort_key
from pydovecot.imap.thread import ThreadMessage
from pydovecot.storage.deferred import Answer

if TYPE_CHECKING:
    from pydovecot.imap.client import Client



def _parse_query(client: Client, args: list[Token], charset: str | None = None) -> SearchQuery:
    try:
        query = SearchParser.parse_query(args, charset)
    except BadCharset:
        raise CommandError(
            b"NO [BADCHARSET (" + ADVERTISED_CHARSETS + b")] Unsupported charset"
        ) from None
    except QueryTooDeep as e:
        raise CommandError(b"BAD [LIMIT] " + str(e).encode() + b".") from None
    return query


async def run_search(client: Client, query: SearchQuery) -> Hits:
    """Evaluate a query on the selected view: at once for a small
    mailbox, else sliced through the global Cooperator so other sessions
    of the process keep being served."""
    import time

    if query.uses_modseq:
        await client.announce_condstore()  # RFC 7162 3.1
    mbox = client.selected()
    fetched = FetchedView(client, mbox)
    messages = list(mbox.messages)
    saved = client.saved_uids()
    now = time.time()
    if len(messages) <= COOPERATE_OVER:
        return await evaluate(fetched, query, messages, saved, now, range(1, len(messages) + 1))
    hits: Hits = []
    step = CONTENT_STEP if query.needs_content else CHEAP_STEP

    def work() -> Generator[Any, None, None]:
        for start in range(1, len(messages) + 1, step):
            if client.closed:
                return
            seqs = range(start, min(start + step, len(messages) + 1))
            answer = Answer(defer.Deferred.fromCoroutine(
                evaluate(fetched, query, messages, saved, now, seqs)))
            if answer.pending:
                yield answer.wait
            hits.extend(answer.get())
            yield None

    await task.cooperate(work()).whenDone()
    return hits


async def _map_sliced(client: Client, items: list[Any], func: Callable[[Any], Any]) -> list[Any]:
    """``[func(x) for x in items]`` for lazy contexts, awaiting message
    data they ask for: at once for a few items, else one item per
    Cooperator step."""
    fetched = FetchedView(client, client.selected())

    async def one(x: Any) -> Any:
        return await fetched.retrying(x.info, lambda: func(x.bind(fetched)))

    if len(items) <= COOPERATE_OVER:
        return [await one(x) for x in items]
    out: list[Any] = []

    def work() -> Generator[Any, None, None]:
        for x in items:
            if client.closed:
                return
            answer = Answer(defer.Deferred.fromCoroutine(one(x)))
            if answer.pending:
                yield answer.wait
            out.append(answer.get())
            yield None

    await task.cooperate(work()).whenDone()
    return out


class _Lazy(LazyContext):
    """A LazyContext that can be pointed at a :class:`~pydovecot.imap.fetched.FetchedView`."""

    __slots__ = ()

    def bind(self, fetched: FetchedView) -> LazyContext:
        _mbox, max_seq, max_uid, _loader = self._args
        return LazyContext(self.seq, self.info, fetched, max_seq, max_uid, fetched.loader)


def _contexts(client: Client, hits: Hits) -> list[Any]:
    """A light handle per hit (``.seq``, ``.info``, and called: the
    context, made on demand), so a sliced loop builds them one at a time."""
    mbox = client.selected()
    max_seq = len(mbox.messages)
    max_uid = mbox.messages[-1].uid if mbox.messages else 0
    return [_Lazy(seq, info, mbox, max_seq, max_uid, client.loader) for seq, info in hits]


def _return_options(client: Client, args: list[Token]) -> tuple[ReturnOptions | None, list[Token]]:
    """A leading ``RETURN (…)`` (ESEARCH/ESORT) and the arguments after it.
    With SAVE, ``$`` is emptied first: a failing command leaves it empty."""
    if not (args and isinstance(args[0], Atom) and args[0].upper() == b"RETURN"):
        return None, args
    if len(args) < 2:
        raise ParseError("Missing RETURN options")
    opts = ReturnOptions.parse(args[1])
    if "SAVE" in opts.names:
        client.save_result(())
    return opts, args[2:]


@gc_paused
def search_command(client: Client, tag: bytes, args: list[Token], uid: bool = False):
    client.selected()
    opts, args = _return_options(client, args)
    query = _parse_query(client, args)
    d = defer.Deferred.fromCoroutine(run_search(client, query))
    return d.addCallback(lambda hits: _answer_search(client, tag, uid, query, opts, hits))


def _answer_search(client: Client, tag: bytes, uid: bool, query: SearchQuery,
                   opts: ReturnOptions | None, hits: Hits) -> bytes:
    ids = [info.uid if uid else seq for seq, info in hits]
    modseq = max((info.modseq for _s, info in hits), default=None) if query.uses_modseq else None
    if opts is None:
        if client.rev2:
            search_response(client, tag, uid, ids, ("ALL",), modseq)
        else:
            tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
            client.send(b"* SEARCH" + b"".join(b" %d" % n for n in ids) + tail + b"\r\n")
        return b"OK Search completed."
    _finish_return(client, tag, uid, query, opts, hits, ids, modseq, None)
    return b"OK Search completed."


def _finish_return(client: Client, tag: bytes, uid: bool, query: SearchQuery, opts: ReturnOptions,
                   hits: Hits, ids: list[int], modseq: int | None,
                   criteria: list[tuple[str, bool]] | None) -> None:
    ordered = criteria is not None
    if "SAVE" in opts.names:
        uids = [info.uid for _s, info in hits]
        if opts.names & {"MIN", "MAX"} and not opts.names & {"ALL", "COUNT"}:
            keep = set()
            if uids and "MIN" in opts.names:
                keep.add(uids[0] if ordered else min(uids))
            if uids and "MAX" in opts.names:
                keep.add(uids[-1] if ordered else max(uids))
            client.save_result(keep)
        else:
            client.save_result(uids)
    if not opts.silent:
        client.send(format_esearch(tag, uid, ids, opts.names, opts.partial, modseq, ordered))
    if "UPDATE" in opts.names:
        client.search_updates().add(
            context.UpdateContext(tag, uid, query, criteria, opts.names, client.selected(),
                                  [info.uid for _s, info in hits])
        )


def cmd_cancelupdate(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if not args or any(isinstance(a, list) for a in args):
        raise ParseError("Missing tags")
    tags = [as_bytes(a) for a in args]
    updates = client.search_updates()
    unknown = [t for t in tags if not updates.has(t)]
    if unknown:
        raise ParseError("Unknown update tag " + unknown[0][:40].decode("latin-1"))
    for t in tags:
        updates.cancel(t)
    return b"OK Updates cancelled."


@gc_paused
def cmd_sort(client: Client, tag: bytes, args: list[Token], uid: bool = False):
    client.selected()
    opts, args = _return_options(client, args)
    if len(args) < 3:
        raise ParseError("Missing SORT arguments")
    criteria = parse_criteria(args[0])
    query = _charset_query(client, args[1], args[2:])
    result = defer.Deferred.fromCoroutine(run_search(client, query))

    def order(hits: Hits) -> Any:
        ctxs = _contexts(client, hits)
        keys = defer.Deferred.fromCoroutine(
            _map_sliced(client, ctxs, lambda c: sort_key(c(), criteria)))
        return keys.addCallback(lambda k: offload(order_by_keys, ctxs, k, criteria))

    def answer(ordered: list[Any]) -> bytes:
        pairs = [(c.seq, c.info) for c in ordered]
        ids = [info.uid if uid else seq for seq, info in pairs]
        modseq = (max((info.modseq for _s, info in pairs), default=None)
                  if query.uses_modseq else None)
        if opts is None:
            tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
            client.send(b"* SORT" + b"".join(b" %d" % n for n in ids) + tail + b"\r\n")
        else:
            _finish_return(client, tag, uid, query, opts, pairs, ids, modseq, criteria)
        return b"OK Sort completed."

    return result.addCallback(order).addCallback(answer)


def _charset_query(client: Client, charset_tok: Token, keys: list[Token]) -> SearchQuery:
    if isinstance(charset_tok, list):
        raise ParseError("Invalid charset")
    charset = as_bytes(charset_tok).decode("latin-1")
    try:
        charset_codec(charset)
    except BadCharset:
        raise CommandError(
            b"NO [BADCHARSET (" + ADVERTISED_CHARSETS + b")] Unsupported charset"
        ) from None
    return _parse_query(client, keys, charset)


@gc_paused
def cmd_thread(client: Client, tag: bytes, args: list[Token], uid: bool = False):
    client.selected()
    if len(args) < 3 or not isinstance(args[0], Atom):
        raise ParseError("Missing THREAD arguments")
    algorithm = args[0].upper_str()
    if algorithm not in THREAD_ALGORITHMS:
        raise ParseError(f"Unknown thread algorithm {algorithm[:30]}")
    query = _charset_query(client, args[1], args[2:])
    result = defer.Deferred.fromCoroutine(run_search(client, query))

    def collect(hits: Hits) -> Any:
        return defer.Deferred.fromCoroutine(
            _map_sliced(client, _contexts(client, hits), lambda c: thread_message(c(), uid)))

    def threaded(msgs: list[ThreadMessage]) -> Any:
        return offload(thread_messages, msgs, algorithm)

    def answer(text: str) -> bytes:
        client.send(b"* THREAD " + text.encode() + b"\r\n" if text else b"* THREAD\r\n")
        return b"OK Thread completed."

    return result.addCallback(collect).addCallback(threaded).addCallback(answer)


add_command("SEARCH", search_command, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.NO_EXPUNGE)
add_command("SORT", cmd_sort, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.NO_EXPUNGE)
add_command("THREAD", cmd_thread, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.NO_EXPUNGE)
add_command("CANCELUPDATE", cmd_cancelupdate, Flag.SELECTED)
features.provide(__name__, "ESEARCH", "SEARCHRES", "WITHIN", "SORT=DISPLAY", "ESORT", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT", "CONTEXT=SEARCH", "CONTEXT=SORT")
