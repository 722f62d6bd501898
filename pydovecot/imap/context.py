"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267): live search/sort results.

A ``SEARCH``/``SORT … RETURN (UPDATE)`` leaves an :class:`UpdateContext`
behind.  The session calls :meth:`UpdateContexts.on_sync` from its
``after_sync_hooks`` after each sync has sent EXISTS/EXPUNGE/FETCH; the
context compares the view with its own snapshot (UIDs, modseqs, flags), so
it sees this session's own STOREs as well as other sessions' changes, and
sends ``ADDTO`` for messages that now match and ``REMOVEFROM`` for those
that no longer do.  Expunged messages get their ``REMOVEFROM`` from
:meth:`UpdateContexts.on_expunge` just before the session sends the
EXPUNGE (or VANISHED) responses, in UID and sequence-number contexts alike
(numbered as before the expunge), as Dovecot sends them (RFC 5267 4.3).
SEARCH contexts use position 0;
SORT contexts give each added message its 1-based position in the new sort
order.  Everything here trusts the session and the view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from pydovecot.imap.parser import NumberSet
from pydovecot.imap.search import SearchQuery, resolve
from pydovecot.storage.search import SearchProgram

#: At most this many live contexts per session (Dovecot has a similar cap).
MAX_CONTEXTS = 16


@dataclass
class UpdateContext:
    """One live result: ``uids`` in answer order (ascending or sort order)."""

    tag: bytes
    uid: bool
    query: SearchQuery
    criteria: list[tuple[str, bool]] | None
    options: set[str]
    mailbox: Any
    uids: list[int]
    members: set[int] = field(default_factory=set)
    snapshot: dict[int, tuple[int, frozenset[str]]] = field(default_factory=dict)
    shrunk: bool = False  # expunges removed members since the last summary

    def __post_init__(self) -> None:
        self.members = set(self.uids)
        self.snapshot = take_snapshot(self.mailbox)


def take_snapshot(mailbox: Any) -> dict[int, tuple[int, frozenset[str]]]:
    return {m.uid: (m.modseq, frozenset(m.flags)) for m in mailbox.messages}


def _tag(tag: bytes) -> bytes:
    return b'"' + tag.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _set(ids: list[int]) -> bytes:
    return NumberSet([(i, i) for i in ids], 0).to_imap()


class UpdateContexts:
    """The live contexts of one session."""

    def __init__(self, session: Any):
        self.session = session
        self.contexts: dict[bytes, UpdateContext] = {}
        self._tail: defer.Deferred[None] = defer.succeed(None)  # the last sync's updates

    def add(self, ctx: UpdateContext) -> None:
        self.contexts.pop(ctx.tag, None)
        if len(self.contexts) >= MAX_CONTEXTS:
            self.contexts.pop(next(iter(self.contexts)))
        self.contexts[ctx.tag] = ctx

    def has(self, tag: bytes) -> bool:
        return tag in self.contexts

    def cancel(self, tag: bytes) -> None:
        self.contexts.pop(tag, None)

    def _line(self, ctx: UpdateContext, body: bytes) -> bytes:
        return (b"* ESEARCH (TAG " + _tag(ctx.tag) + b")" + (b" UID" if ctx.uid else b"")
                + b" " + body + b"\r\n")

    def on_sync(self) -> defer.Deferred[None]:
        """The session's after-sync hook.  The storage answers the
        re-evaluation (at once for the local one); the updates of one sync
        go out after those of the previous one, and lines sent once the
        session's command is over are flushed."""
        done: defer.Deferred[None] = defer.Deferred()

        def run(_: object) -> defer.Deferred[None]:
            at_once = [True]
            d = self._run()

            def finished(_: object) -> None:
                if not at_once[0]:
                    self.session.flush()
                done.callback(None)

            d.addBoth(finished)
            at_once[0] = False
            return d

        self._tail.addBoth(run)
        return done

    def _run(self) -> defer.Deferred[None]:
        mbox = self.session.mailbox
        d: defer.Deferred[None] = defer.succeed(None)
        for tag, ctx in list(self.contexts.items()):
            if ctx.mailbox is not mbox or mbox is None:
                del self.contexts[tag]  # another mailbox was selected
                continue
            d.addCallback(lambda _, c=ctx: self._update(c))
            d.addCallback(lambda changed, c=ctx: self._summarize(c, changed))
        return d.addErrback(self._failed)

    def _summarize(self, ctx: UpdateContext, changed: bool) -> None:
        if changed or ctx.shrunk:
            ctx.shrunk = False
            self._summary(ctx)

    def on_expunge(self, old_uids: list[int], expunged: list[int]) -> None:
        """Before the session reports ``expunged`` (``old_uids``: the view
        before): ``REMOVEFROM`` for the results they were in, numbered as
        before the expunge, in UID and sequence contexts (as Dovecot)."""
        mbox = self.session.mailbox
        gone = set(expunged)
        seq_of = {u: i for i, u in enumerate(old_uids, 1)}
        for ctx in self.contexts.values():
            if ctx.mailbox is not mbox:
                continue
            hit = [u for u in ctx.uids if u in gone]
            for u in gone:
                ctx.snapshot.pop(u, None)
            if not hit:
                continue
            ctx.uids = [u for u in ctx.uids if u not in gone]
            ctx.members -= gone
            ctx.shrunk = True
            ids = sorted(u if ctx.uid else seq_of[u] for u in hit)
            self.session.send(self._line(ctx, b"REMOVEFROM (0 " + _set(ids) + b")"))

    def _failed(self, reason: Any) -> None:
        log = getattr(self.session, "log", None)
        if log is not None:
            log.warn("CONTEXT update failed: {err}", err=reason.getErrorMessage())

    def _update(self, ctx: UpdateContext) -> Any:
        """Send ADDTO/REMOVEFROM; (a Deferred of) True if the result changed."""
        mbox = ctx.mailbox
        messages = list(mbox.messages)
        old = ctx.snapshot
        new = take_snapshot(mbox)
        ctx.snapshot = new
        if new == old:
            return False
        seq_of = {m.uid: i for i, m in enumerate(messages, 1)}
        gone = [u for u in ctx.members if u not in new]
        touched = [u for u, state in new.items() if old.get(u) != state]
        changed = False
        if gone:
            gone_set = set(gone)
            ctx.uids = [u for u in ctx.uids if u not in gone_set]
            ctx.members -= gone_set
            changed = True
            if ctx.uid:
                self.session.send(self._line(ctx, b"REMOVEFROM (0 " + _set(gone) + b")"))
        if not touched:
            return changed
        program = resolve(ctx.query.program, messages, self.session.saved_uids())
        d = mbox.search(program, sorted(touched))
        return d.addCallback(self._matched, ctx, touched, program, seq_of, changed)

    def _matched(self, hits: list[int], ctx: UpdateContext, touched: list[int],
                 program: SearchProgram, seq_of: dict[int, int], changed: bool) -> Any:
        matched = set(hits)
        removed = [u for u in touched if u in ctx.members and u not in matched]
        added = [u for u in sorted(matched) if u not in ctx.members]
        if removed:
            ids = [u if ctx.uid else seq_of[u] for u in removed]
            rs = set(removed)
            ctx.uids = [u for u in ctx.uids if u not in rs]
            ctx.members -= rs
            self.session.send(self._line(ctx, b"REMOVEFROM (0 " + _set(ids) + b")"))
        result = changed or bool(removed or added)
        if not added:
            return result
        ctx.members |= set(added)
        if ctx.criteria is None:
            ctx.uids = sorted(ctx.members)
            ids = [u if ctx.uid else seq_of[u] for u in added]
            self.session.send(self._line(ctx, b"ADDTO (0 " + _set(ids) + b")"))
            return result
        members = SearchProgram.uids((u, u) for u in sorted(ctx.members) if u in seq_of)
        d = ctx.mailbox.sort(ctx.criteria, members)
        return d.addCallback(self._resorted, ctx, added, seq_of).addCallback(lambda _: result)

    def _resorted(self, ordered: list[int], ctx: UpdateContext, added: list[int],
                  seq_of: dict[int, int]) -> None:
        ctx.uids = ordered
        new = set(added)
        for pos, u in enumerate(ordered, 1):
            if u in new:
                ident = u if ctx.uid else seq_of[u]
                self.session.send(self._line(ctx, b"ADDTO (%d %d)" % (pos, ident)))

    def _summary(self, ctx: UpdateContext) -> None:
        """Fresh MIN/MAX/COUNT when the client asked for them."""
        wanted = ctx.options & {"MIN", "MAX", "COUNT"}
        if not wanted:
            return
        mbox = ctx.mailbox
        seq_of = {m.uid: i for i, m in enumerate(mbox.messages, 1)}
        ids = [u if ctx.uid else seq_of.get(u, 0) for u in ctx.uids]
        ordered = ctx.criteria is not None
        parts = []
        if ids and "MIN" in wanted:
            parts.append(b"MIN %d" % (ids[0] if ordered else min(ids)))
        if ids and "MAX" in wanted:
            parts.append(b"MAX %d" % (ids[-1] if ordered else max(ids)))
        if "COUNT" in wanted:
            parts.append(b"COUNT %d" % len(ids))
        if parts:
            self.session.send(self._line(ctx, b" ".join(parts)))
