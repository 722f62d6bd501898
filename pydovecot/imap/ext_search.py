"""SEARCH, SORT, THREAD and CANCELUPDATE for :class:`IMAPSession` (a mixin).

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

from collections.abc import Callable, Generator, Iterable
from typing import Any

import twisted.python.threadpool  # noqa: F401  (deferToThread needs it after the privilege drop)
from twisted.internet import defer, task, threads

from pydovecot.imap import context, mime
from pydovecot.imap.parser import (
    Atom,
    NumberSet,
    ParseError,
    Token,
    as_bytes,
    compress,
)
from pydovecot.imap.search import (
    ADVERTISED_CHARSETS,
    BadCharset,
    QueryTooDeep,
    SearchContext,
    SearchParser,
    SearchQuery,
    charset_codec,
    first_header,
    run_query,
)
from pydovecot.imap.sort import (
    base_subject,
    collate,
    order_by_keys,
    parse_criteria,
    sent_timestamp,
    sort_key,
)
from pydovecot.imap.thread import (
    ThreadMessage,
    dismantle,
    message_ids,
    ordered_subject,
    references,
    render,
)
from pydovecot.storage.index import pause_gc
from pydovecot.storage.interfaces import MessageInfo

RETURN_OPTIONS = {"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT", "PARTIAL"}
#: Messages tested per step of a sliced search: one for content keys (a
#: message may take a while to parse), more for flag/date/UID keys.  The
#: global Cooperator runs steps of every task for ~10 ms, then lets the
#: reactor serve everyone else.
CONTENT_STEP = 1
CHEAP_STEP = 200
#: Searches, sorts and threads over at most this many messages run at once.
COOPERATE_OVER = 50
#: Sorting or threading more messages than this (pure computation on data
#: of their own: nothing shared) runs in a thread of the reactor's pool;
#: the GIL's switch interval (5 ms) then keeps the reactor serving.
THREAD_OVER = 2000
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")

Hits = list[tuple[int, MessageInfo]]


def _command_error(response: bytes) -> Exception:
    from pydovecot.imap.session import CommandError  # session imports this module

    return CommandError(response)


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
    session._send(format_esearch(tag, uid, sorted(results), return_opts, modseq=modseq))


def gc_paused(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command with the cyclic GC paused until it is answered (see
    :func:`pydovecot.storage.index.pause_gc`): its per-message objects
    are gone by then, so the GC's next pass is short."""

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        release = pause_gc()
        try:
            result = method(self, *args, **kwargs)
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

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class SearchMixin:
    """SEARCH/SORT/THREAD commands; mixed into IMAPSession."""

    mailbox: Any
    _send: Callable[[bytes], None]
    _selected: Callable[[], Any]
    _load: Callable[[MessageInfo], mime.ParsedMessage]

    _saved_result: tuple[Any, frozenset[int]] | None = None
    _updates: context.UpdateContexts | None = None

    # -- SEARCHRES ($) -----------------------------------------------------------

    def saved_uids(self) -> frozenset[int]:
        """The ``$`` variable: UIDs saved by the last SEARCH RETURN (SAVE) in
        this selected mailbox (empty after SELECT)."""
        saved = self._saved_result
        if saved is None or saved[0] is not self.mailbox or self.mailbox is None:
            return frozenset()
        return saved[1]

    def _save(self, uids: Iterable[int]) -> None:
        self._saved_result = (self.mailbox, frozenset(uids))

    def resolve_saved(self) -> list[tuple[int, MessageInfo]]:
        """``$`` as a sequence set: [(seq, info)] still in the view."""
        saved = self.saved_uids()
        if not saved or self.mailbox is None:
            return []
        return [(i, m) for i, m in enumerate(self.mailbox.messages, 1) if m.uid in saved]

    # -- running ------------------------------------------------------------------

    def _is_rev2(self) -> bool:
        if getattr(self, "imap4rev2", False):
            return True
        enabled = getattr(self, "enabled", None)
        return bool(enabled) and "IMAP4REV2" in {str(e).upper() for e in enabled}

    def _parse_query(self, args: list[Token], charset: str | None = None) -> SearchQuery:
        try:
            query = SearchParser.parse_query(args, charset)
        except BadCharset:
            raise _command_error(
                b"NO [BADCHARSET (" + ADVERTISED_CHARSETS + b")] Unsupported charset"
            ) from None
        except QueryTooDeep as e:
            raise _command_error(b"BAD [LIMIT] " + str(e).encode() + b".") from None
        if query.uses_modseq:
            enable = getattr(self, "_enable_condstore", None)  # ext_sync (RFC 7162 3.1)
            if enable is not None:
                enable()
        return query

    def _loader(self, info: MessageInfo) -> Callable[[], mime.ParsedMessage]:
        return lambda: self._load(info)

    def run_search(self, query: SearchQuery) -> Hits | defer.Deferred[Hits]:
        """Evaluate a query on the selected view: hits now for a small
        mailbox, else a Deferred, the work sliced through the global
        Cooperator so other sessions of the process keep being served."""
        mbox = self._selected()
        messages = list(mbox.messages)
        saved = self.saved_uids()
        if len(messages) <= COOPERATE_OVER:
            return run_query(mbox, query, messages, self._loader, saved)
        import time

        now = time.time()
        hits: Hits = []
        step = CONTENT_STEP if query.needs_content else CHEAP_STEP

        def work() -> Generator[None, None, None]:
            for start in range(1, len(messages) + 1, step):
                if getattr(self, "_closed", False):
                    return
                seqs = range(start, min(start + step, len(messages) + 1))
                hits.extend(run_query(mbox, query, messages, self._loader, saved, now, seqs))
                yield None

        return task.cooperate(work()).whenDone().addCallback(lambda _: hits)

    def _map_sliced(self, items: list[Any], func: Callable[[Any], Any]) -> Any:
        """``[func(x) for x in items]``: at once for a few items, else a
        Deferred of it, one item per Cooperator step."""
        if len(items) <= COOPERATE_OVER:
            return [func(x) for x in items]
        out: list[Any] = []

        def work() -> Generator[None, None, None]:
            for x in items:
                if getattr(self, "_closed", False):
                    return
                out.append(func(x))
                yield None

        return task.cooperate(work()).whenDone().addCallback(lambda _: out)

    def _contexts(self, hits: Hits, lazy: bool = False) -> list[Any]:
        """A search context per hit; with ``lazy``, a light handle per hit
        (``.seq``, ``.info``, and called: the context, made on demand), so
        a sliced loop builds them one at a time."""
        mbox = self._selected()
        max_seq = len(mbox.messages)
        max_uid = mbox.messages[-1].uid if mbox.messages else 0
        loader = self._loader
        if lazy:
            return [_LazyContext(seq, info, mbox, max_seq, max_uid, loader) for seq, info in hits]
        return [
            SearchContext(seq, info, info.uid in mbox.recent, loader(info), max_seq,
                          max_uid, mbox)
            for seq, info in hits
        ]

    # -- SEARCH ---------------------------------------------------------------------

    def _return_options(self, args: list[Token]) -> tuple[ReturnOptions | None, list[Token]]:
        """A leading ``RETURN (…)`` (ESEARCH/ESORT) and the arguments after it.
        With SAVE, ``$`` is emptied first: a failing command leaves it empty."""
        if not (args and isinstance(args[0], Atom) and args[0].upper() == b"RETURN"):
            return None, args
        if len(args) < 2:
            raise ParseError("Missing RETURN options")
        opts = ReturnOptions.parse(args[1])
        if "SAVE" in opts.names:
            self._save(())
        return opts, args[2:]

    @gc_paused
    def search_command(self, tag: bytes, args: list[Token], uid: bool = False):
        self._selected()
        opts, args = self._return_options(args)
        query = self._parse_query(args)
        result = self.run_search(query)
        if isinstance(result, defer.Deferred):
            return result.addCallback(lambda hits: self._answer_search(tag, uid, query, opts, hits))
        return self._answer_search(tag, uid, query, opts, result)

    def _answer_search(self, tag: bytes, uid: bool, query: SearchQuery,
                       opts: ReturnOptions | None, hits: Hits) -> bytes:
        ids = [info.uid if uid else seq for seq, info in hits]
        modseq = max((info.modseq for _s, info in hits), default=None) if query.uses_modseq else None
        if opts is None:
            if self._is_rev2():
                search_response(self, tag, uid, ids, ("ALL",), modseq)
            else:
                tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
                self._send(b"* SEARCH" + b"".join(b" %d" % n for n in ids) + tail + b"\r\n")
            return b"OK Search completed."
        self._finish_return(tag, uid, query, opts, hits, ids, modseq, None)
        return b"OK Search completed."

    def _finish_return(self, tag: bytes, uid: bool, query: SearchQuery, opts: ReturnOptions,
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
                self._save(keep)
            else:
                self._save(uids)
        if not opts.silent:
            self._send(format_esearch(tag, uid, ids, opts.names, opts.partial, modseq, ordered))
        if "UPDATE" in opts.names:
            self.search_updates().add(
                context.UpdateContext(tag, uid, query, criteria, opts.names, self._selected(),
                                      [info.uid for _s, info in hits])
            )

    # -- CONTEXT (RFC 5267) ------------------------------------------------------------

    def search_updates(self) -> context.UpdateContexts:
        if self._updates is None:
            self._updates = context.UpdateContexts(self)
            hooks = getattr(self, "after_sync_hooks", None)
            if hooks is not None:
                hooks.append(self._updates.on_sync)
        return self._updates

    def cmd_cancelupdate(self, tag: bytes, args: list[Token]) -> bytes:
        if not args or any(isinstance(a, list) for a in args):
            raise ParseError("Missing tags")
        tags = [as_bytes(a) for a in args]
        updates = self.search_updates()
        unknown = [t for t in tags if not updates.has(t)]
        if unknown:
            raise ParseError("Unknown update tag " + unknown[0][:40].decode("latin-1"))
        for t in tags:
            updates.cancel(t)
        return b"OK Updates cancelled."

    # -- SORT --------------------------------------------------------------------------

    @gc_paused
    def cmd_sort(self, tag: bytes, args: list[Token], uid: bool = False):
        self._selected()
        opts, args = self._return_options(args)
        if len(args) < 3:
            raise ParseError("Missing SORT arguments")
        criteria = parse_criteria(args[0])
        query = self._charset_query(args[1], args[2:])
        result = self.run_search(query)

        def order(hits: Hits) -> Any:
            ctxs = self._contexts(hits, lazy=True)
            keys = self._map_sliced(ctxs, lambda c: sort_key(c(), criteria))
            if isinstance(keys, defer.Deferred):
                return keys.addCallback(lambda k: _offload(order_by_keys, ctxs, k, criteria))
            return _offload(order_by_keys, ctxs, keys, criteria)

        def answer(ordered: list[Any]) -> bytes:
            pairs = [(c.seq, c.info) for c in ordered]
            ids = [info.uid if uid else seq for seq, info in pairs]
            modseq = (max((info.modseq for _s, info in pairs), default=None)
                      if query.uses_modseq else None)
            if opts is None:
                tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
                self._send(b"* SORT" + b"".join(b" %d" % n for n in ids) + tail + b"\r\n")
            else:
                self._finish_return(tag, uid, query, opts, pairs, ids, modseq, criteria)
            return b"OK Sort completed."

        if isinstance(result, defer.Deferred):
            return result.addCallback(order).addCallback(answer)
        ordered = order(result)
        if isinstance(ordered, defer.Deferred):
            return ordered.addCallback(answer)
        return answer(ordered)

    def _charset_query(self, charset_tok: Token, keys: list[Token]) -> SearchQuery:
        if isinstance(charset_tok, list):
            raise ParseError("Invalid charset")
        charset = as_bytes(charset_tok).decode("latin-1")
        try:
            charset_codec(charset)
        except BadCharset:
            raise _command_error(
                b"NO [BADCHARSET (" + ADVERTISED_CHARSETS + b")] Unsupported charset"
            ) from None
        return self._parse_query(keys, charset)

    # -- THREAD ------------------------------------------------------------------------

    @gc_paused
    def cmd_thread(self, tag: bytes, args: list[Token], uid: bool = False):
        self._selected()
        if len(args) < 3 or not isinstance(args[0], Atom):
            raise ParseError("Missing THREAD arguments")
        algorithm = args[0].upper_str()
        if algorithm not in THREAD_ALGORITHMS:
            raise ParseError(f"Unknown thread algorithm {algorithm[:30]}")
        query = self._charset_query(args[1], args[2:])
        result = self.run_search(query)

        def collect(hits: Hits) -> Any:
            return self._map_sliced(self._contexts(hits, lazy=True), lambda c: thread_message(c(), uid))

        def threaded(msgs: list[ThreadMessage]) -> Any:
            return _offload(thread_messages, msgs, algorithm)

        def answer(text: str) -> bytes:
            self._send(b"* THREAD " + text.encode() + b"\r\n" if text else b"* THREAD\r\n")
            return b"OK Thread completed."

        if isinstance(result, defer.Deferred):
            return result.addCallback(collect).addCallback(threaded).addCallback(answer)
        msgs = collect(result)
        if isinstance(msgs, defer.Deferred):
            return msgs.addCallback(threaded).addCallback(answer)
        text = threaded(msgs)
        if isinstance(text, defer.Deferred):
            return text.addCallback(answer)
        return answer(text)


class _LazyContext:
    """A hit whose :class:`SearchContext` is made when called."""

    __slots__ = ("seq", "info", "_args")

    def __init__(self, seq: int, info: MessageInfo, mbox: Any, max_seq: int, max_uid: int,
                 loader: Callable[[MessageInfo], Callable[[], mime.ParsedMessage]]):
        self.seq, self.info = seq, info
        self._args = (mbox, max_seq, max_uid, loader)

    def __call__(self) -> SearchContext:
        mbox, max_seq, max_uid, loader = self._args
        info = self.info
        return SearchContext(self.seq, info, info.uid in mbox.recent, loader(info), max_seq,
                             max_uid, mbox)


def _offload(func: Callable[..., Any], items: list[Any], *args: Any) -> Any:
    """``func(items, *args)``: here for a few items, else in a thread of
    the reactor's pool (a Deferred).  Only for functions that touch
    nothing but their arguments."""
    if len(items) <= THREAD_OVER:
        return func(items, *args)
    return threads.deferToThread(func, items, *args)


def sort_hits(ctxs: list[SearchContext], criteria: list[tuple[str, bool]]) -> list[SearchContext]:
    """Hits (in mailbox order) in SORT order."""
    return order_by_keys(ctxs, [sort_key(c, criteria) for c in ctxs], criteria)


def thread_message(ctx: SearchContext, uid: bool) -> ThreadMessage:
    """What threading needs of one message, from (cached) header fields."""
    subject_raw = first_header(ctx, "Subject")
    subject, reply = ("", False)
    if subject_raw is not None:
        subject, reply = base_subject(mime.decode_header_value(subject_raw))
    refs = message_ids(first_header(ctx, "References"))
    if not refs:
        refs = message_ids(first_header(ctx, "In-Reply-To"))[:1]
    ids = message_ids(first_header(ctx, "Message-ID"))
    return ThreadMessage(
        ident=ctx.info.uid if uid else ctx.seq,
        order=ctx.seq,
        date=sent_timestamp(ctx),
        subject=collate(subject),
        reply=reply,
        message_id=ids[0] if ids else None,
        references=refs,
    )


def thread_hits(ctxs: list[SearchContext], algorithm: str, uid: bool) -> str:
    """The thread-list text for the hits."""
    return thread_messages([thread_message(c, uid) for c in ctxs], algorithm)


def thread_messages(msgs: list[ThreadMessage], algorithm: str) -> str:
    """The thread-list text for the messages."""
    roots = references(msgs) if algorithm == "REFERENCES" else ordered_subject(msgs)
    text = render(roots)
    dismantle(roots)
    return text

