"""SEARCH, SORT, THREAD and CANCELUPDATE.

Implements SEARCH/UID SEARCH with ESEARCH (RFC 4731) and SEARCHRES
(RFC 5182, the ``$`` variable), SORT with ESORT (RFC 5256, 5267) and
SORT=DISPLAY (RFC 5957), THREAD=ORDEREDSUBJECT/REFERENCES (RFC 5256) and
CONTEXT=SEARCH/SORT (RFC 5267, see :mod:`pydovecot.imap.context`).

Command arguments are untrusted (errors become BAD/NO through the
session's CommandError/ParseError handling); the selected mailbox view is
trusted.  The handlers parse the keys into a SearchProgram, resolve its
sequence sets and ``$`` against the view, and await the storage:
``IMailbox.search`` and ``IMailbox.sort`` evaluate (sliced on the global
Cooperator, so other sessions of the mail process keep being served),
THREAD's per-message data is ``IMailbox.fetch_data(uid, ["threading"])``;
no message file is opened here.  The thread algorithms run in a pool
thread for big results; the cyclic GC is paused for the command (see
:func:`pydovecot.storage.index.pause_gc`).  The view cannot move
meanwhile, since the session's queue runs one command at a time and the
view changes only in the core's ``sync``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

from pydovecot.imap import context, features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError
from pydovecot.imap.ext_search import (
    THREAD_ALGORITHMS,
    Hits,
    ReturnOptions,
    collect_data,
    format_esearch,
    gc_paused,
    offload,
    search_response,
    thread_messages,
)
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
    resolve,
)
from pydovecot.imap.sort import parse_criteria
from pydovecot.imap.thread import ThreadMessage, from_data
from pydovecot.storage.search import SearchProgram

if TYPE_CHECKING:
    from pydovecot.imap.client import Client


#: How often a long storage call checks that its session is still there (s).
WATCH_INTERVAL = 0.5
#: The answer to a command whose session went away (never sent).
GONE = b"OK Session gone."


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


async def _announce(client: Client, query: SearchQuery) -> None:
    """A MODSEQ key turns CONDSTORE on (RFC 7162 3.1)."""
    if query.uses_modseq:
        await client.announce_condstore()


def _program(client: Client, query: SearchQuery) -> SearchProgram:
    """The query's program as the storage takes it (no sequence numbers)."""
    return resolve(query.program, client.selected().messages, client.saved_uids())


def _hits(client: Client, uids: list[int]) -> Hits:
    """``[(seq, info)]`` of UIDs the storage answered (in its order)."""
    messages = client.selected().messages
    seq_of = {m.uid: i for i, m in enumerate(messages, 1)}
    return [(seq_of[u], messages[seq_of[u] - 1]) for u in uids if u in seq_of]


class SessionGone(Exception):
    """The session closed while the storage was working for it."""


async def _storage(client: Client, d: defer.Deferred[Any]) -> Any:
    """Await a storage answer; cancel it (the storage stops its sliced
    work) if the session goes away meanwhile."""
    if d.called:
        return await d

    def check() -> None:
        if client.closed and not d.called:
            d.cancel()

    watch = task.LoopingCall(check)
    watch.clock = client.reactor()
    watch.start(WATCH_INTERVAL, now=False)
    try:
        return await d
    except defer.CancelledError:
        raise SessionGone() from None
    finally:
        if watch.running:
            watch.stop()


async def run_search(client: Client, query: SearchQuery) -> Hits:
    """Evaluate a query on the selected view, by the storage."""
    mbox = client.selected()
    uids = await _storage(client, mbox.search(_program(client, query)))
    return _hits(client, uids)


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
async def search_command(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    client.selected()
    opts, args = _return_options(client, args)
    query = _parse_query(client, args)
    await _announce(client, query)
    try:
        hits = await run_search(client, query)
    except SessionGone:
        return GONE
    return _answer_search(client, tag, uid, query, opts, hits)


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
    if modseq is not None:
        modseq = esearch_modseq(opts.names, hits, ids, ordered)
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


def esearch_modseq(names: Iterable[str], hits: Hits, ids: list[int], ordered: bool) -> int | None:
    """ESEARCH's MODSEQ (RFC 7162 3.1.5): with only MIN and/or MAX asked
    for, the highest modseq of the message(s) returned; otherwise (ALL,
    COUNT, PARTIAL) the highest of all matching messages."""
    if not hits:
        return None
    asked = set(names) & {"MIN", "MAX", "ALL", "COUNT", "PARTIAL"}
    if not asked or not asked <= {"MIN", "MAX"}:
        return max(info.modseq for _s, info in hits)
    pairs = list(zip(ids, hits, strict=True))
    picks = []
    if "MIN" in asked:
        picks.append(pairs[0] if ordered else min(pairs, key=lambda p: p[0]))
    if "MAX" in asked:
        picks.append(pairs[-1] if ordered else max(pairs, key=lambda p: p[0]))
    return max(hit[1].modseq for _id, hit in picks)


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
async def cmd_sort(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    client.selected()
    opts, args = _return_options(client, args)
    if len(args) < 3:
        raise ParseError("Missing SORT arguments")
    criteria = parse_criteria(args[0])
    query = _charset_query(client, args[1], args[2:])
    await _announce(client, query)
    mbox = client.selected()
    try:
        pairs = _hits(client, await _storage(client, mbox.sort(criteria, _program(client, query))))
    except SessionGone:
        return GONE
    ids = [info.uid if uid else seq for seq, info in pairs]
    modseq = (max((info.modseq for _s, info in pairs), default=None)
              if query.uses_modseq else None)
    if opts is None:
        tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
        client.send(b"* SORT" + b"".join(b" %d" % n for n in ids) + tail + b"\r\n")
    else:
        _finish_return(client, tag, uid, query, opts, pairs, ids, modseq, criteria)
    return b"OK Sort completed."


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
async def cmd_thread(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    client.selected()
    if len(args) < 3 or not isinstance(args[0], Atom):
        raise ParseError("Missing THREAD arguments")
    algorithm = args[0].upper_str()
    if algorithm not in THREAD_ALGORITHMS:
        raise ParseError(f"Unknown thread algorithm {algorithm[:30]}")
    query = _charset_query(client, args[1], args[2:])
    await _announce(client, query)
    mbox = client.selected()
    try:
        hits = await run_search(client, query)
    except SessionGone:
        return GONE

    def convert(i: int, data: dict) -> ThreadMessage:
        seq, info = hits[i]
        return from_data(info.uid if uid else seq, seq, data.get("threading"))

    msgs = await collect_data(mbox, [info.uid for _s, info in hits], ("threading",),
                              lambda: client.closed, convert)
    if client.closed:
        return GONE
    text = await defer.maybeDeferred(offload, thread_messages, msgs, algorithm)
    client.send(b"* THREAD " + text.encode() + b"\r\n" if text else b"* THREAD\r\n")
    return b"OK Thread completed."


add_command("SEARCH", search_command, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.NO_EXPUNGE)
add_command("SORT", cmd_sort, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.NO_EXPUNGE)
add_command("THREAD", cmd_thread, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.NO_EXPUNGE)
add_command("CANCELUPDATE", cmd_cancelupdate, Flag.SELECTED)
features.provide(__name__, "ESEARCH", "SEARCHRES", "WITHIN", "SORT=DISPLAY", "ESORT", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT", "CONTEXT=SEARCH", "CONTEXT=SORT")
