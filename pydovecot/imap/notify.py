"""NOTIFY (RFC 5465): parse NOTIFY SET/NONE and push mailbox events.

The command arguments are untrusted client input: :func:`parse` raises
ParseError (→ ``BAD``) or :class:`BadEvent` (→ ``NO [BADEVENT …]``).  A
:class:`Notifier` belongs to one session and trusts its storage: it
registers the storage's per-mailbox change listeners on every mailbox the
filters match (changes by this user's other sessions and by deliveries all
go through the one storage of the mail process), and turns changes into
``* STATUS`` for other mailboxes and EXISTS/EXPUNGE/FETCH for the selected
one.  Mailbox tree changes (MailboxName, SubscriptionChange) come from the
storage's tree listeners (``IMailStorage.add_tree_listener``).

Storage answers are awaited; the listener-driven work runs one piece after
the other (:meth:`Notifier._run`), since an answer may come in a later
reactor turn.  Notifications are written only between commands (or during IDLE); while a
command runs they wait, and the selected mailbox never gets an expunge
in the middle of FETCH, STORE or SEARCH.  Too many waiting notifications
end in ``* OK [NOTIFICATIONOVERFLOW]`` and notifications stop, as RFC 5465
§5.8 describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from pydovecot.imap import fetch, mutf7
from pydovecot.imap.parser import Atom, ParseError, Token, as_bytes

if TYPE_CHECKING:
    from pydovecot.imap.client import Client as IMAPSession

MESSAGE_EVENTS = {"MessageNew", "MessageExpunge", "FlagChange"}
TREE_EVENTS = {"MailboxName", "SubscriptionChange"}
EVENTS = {e.upper(): e for e in MESSAGE_EVENTS | TREE_EVENTS}
SUPPORTED_EVENTS = b"MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange"
UNSUPPORTED = {"ANNOTATIONCHANGE", "MAILBOXMETADATACHANGE", "SERVERMETADATACHANGE"}
FILTERS = {"SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE",
           "MAILBOXES"}
STATUS_ITEMS = ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]
OVERFLOW_LIMIT = 1000  # waiting notifications before NOTIFICATIONOVERFLOW
RETRY = 0.05  # seconds between checks for the end of a running command


class BadEvent(Exception):
    """An event this server does not support (``NO [BADEVENT (…)]``)."""


@dataclass
class Filter:
    kind: str
    names: list[str] = field(default_factory=list)
    events: set[str] = field(default_factory=set)
    fetch_items: list[fetch.FetchItem] = field(default_factory=list)

    def selected(self) -> bool:
        return self.kind.startswith("SELECTED")

    def matches(self, name: str, subscribed: Callable[[], list[str]]) -> bool:
        if self.kind == "PERSONAL":
            return True
        if self.kind == "INBOXES":
            return name == "INBOX"
        if self.kind == "SUBSCRIBED":
            return name in subscribed()
        if self.kind == "SUBTREE":
            return any(name == n or name.startswith(n + "/") for n in self.names)
        if self.kind == "MAILBOXES":
            return name in self.names
        return False


@dataclass
class NotifySpec:
    status: bool
    filters: list[Filter]


def _mailbox(tok: Token, decode: Callable[[Token], str]) -> str:
    if isinstance(tok, list):
        raise ParseError("Expected a mailbox name")
    as_bytes(tok)
    return decode(tok)


def _events(tok: Token, selected: bool) -> tuple[set[str], list[fetch.FetchItem]]:
    if isinstance(tok, Atom) and tok.upper_str() == "NONE":
        return set(), []
    if not isinstance(tok, list) or not tok:
        raise ParseError("Invalid NOTIFY event list")
    events: set[str] = set()
    items: list[fetch.FetchItem] = []
    i = 0
    while i < len(tok):
        ev = tok[i]
        if not isinstance(ev, Atom):
            raise ParseError("Invalid NOTIFY event")
        name = ev.upper_str()
        i += 1
        if name in UNSUPPORTED:
            raise BadEvent(name)
        if name not in EVENTS:
            raise ParseError(f"Unknown NOTIFY event {name[:30]}")
        events.add(EVENTS[name])
        if name == "MESSAGENEW" and i < len(tok) and isinstance(tok[i], list):
            if not selected:
                raise ParseError("MessageNew fetch attributes need SELECTED")
            items = fetch.parse_items([tok[i]])
            i += 1
    # RFC 5465 5.2-5.4: only for the selected mailbox do MessageNew and
    # MessageExpunge go together (its sequence numbers), and FlagChange need
    # them; elsewhere each event stands alone (Dovecot accepts the same)
    if selected and ("MessageNew" in events) != ("MessageExpunge" in events):
        raise ParseError("MessageNew and MessageExpunge go together")
    if selected and "FlagChange" in events and "MessageNew" not in events:
        raise ParseError("FlagChange needs MessageNew and MessageExpunge")
    return events, items


def parse(args: list[Token], decode: Callable[[Token], str]) -> NotifySpec | None:
    """NOTIFY's arguments → a spec, or None for ``NOTIFY NONE``.  ``decode``
    is the session's mailbox-name decoder (modified UTF-7 or UTF-8)."""
    if not args or not isinstance(args[0], Atom):
        raise ParseError("Missing NOTIFY arguments")
    op = args[0].upper_str()
    if op == "NONE":
        if len(args) != 1:
            raise ParseError("Unexpected arguments")
        return None
    if op != "SET":
        raise ParseError("Expected NOTIFY SET or NONE")
    rest = args[1:]
    spec = NotifySpec(False, [])
    if rest and isinstance(rest[0], Atom) and rest[0].upper_str() == "STATUS":
        spec.status = True
        rest = rest[1:]
    if not rest:
        raise ParseError("Missing NOTIFY event groups")
    for group in rest:
        if not isinstance(group, list) or len(group) < 2 or not isinstance(group[0], Atom):
            raise ParseError("Invalid NOTIFY event group")
        kind = group[0].upper_str()
        if kind not in FILTERS:
            raise ParseError(f"Unknown NOTIFY filter {kind[:30]}")
        f = Filter(kind)
        pos = 1
        if kind in ("SUBTREE", "MAILBOXES"):
            boxes = group[1]
            f.names = ([_mailbox(b, decode) for b in boxes] if isinstance(boxes, list)
                       else [_mailbox(boxes, decode)])
            if not f.names:
                raise ParseError("Missing mailbox names")
            pos = 2
        if len(group) != pos + 1:
            raise ParseError("Invalid NOTIFY event group")
        f.events, f.fetch_items = _events(group[pos], f.selected())
        if f.selected() and f.events & TREE_EVENTS:
            raise ParseError("Mailbox events are not for SELECTED")
        spec.filters.append(f)
    if sum(f.selected() for f in spec.filters) > 1:
        raise ParseError("SELECTED given twice")
    return spec


class Notifier:
    """One session's NOTIFY SET: listeners, waiting lines, overflow."""

    overflow_limit = OVERFLOW_LIMIT

    def __init__(self, session: IMAPSession, spec: NotifySpec):
        self.session = session
        self.spec = spec
        self.listeners: dict[str, Callable[[], None]] = {}
        self.snapshots: dict[str, tuple[int, ...]] = {}
        self.pending_status: dict[str, None] = {}
        self.pending_lines: list[bytes] = []
        self.selected_dirty = False
        self.stopped = False
        self._retry: Any = None
        self._subs: list[str] | None = None
        #: Listener-driven work, one piece after the other (storage answers
        #: may arrive in any later reactor turn).
        self._chain: defer.Deferred[None] = defer.succeed(None)

    def _run(self, work: Callable[..., Any], *args: Any) -> None:
        """Queue ``await work(*args)`` behind the work already queued."""
        def step(_: object) -> defer.Deferred[None]:
            return defer.Deferred.fromCoroutine(work(*args))

        def failed(f: Any) -> None:
            self.session.log.error("NOTIFY failed: {e}", e=f.getErrorMessage(),
                                   log_prefix=self.session.prefix)

        self._chain.addCallback(step).addErrback(failed)

    # -- life cycle --------------------------------------------------------

    async def start(self) -> None:
        self.session.storage.add_tree_listener(self._tree_changed)
        await self._rewatch()
        if self.spec.status:
            for name in await self._watched_names():
                if self._is_selected(name):
                    continue
                f = self._filter_for(name)
                if f is not None and f.events & MESSAGE_EVENTS:
                    line = await status_line(self.session, name, STATUS_ITEMS)
                    if line is not None:
                        self.session.send(line)

    def stop(self) -> None:
        self.stopped = True
        storage = self.session.storage
        for name, cb in self.listeners.items():
            storage.remove_listener(name, cb)
        self.listeners.clear()
        storage.remove_tree_listener(self._tree_changed)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def selected(self, name: str) -> None:
        """The session selected ``name``: watch it if a SELECTED filter asks."""
        self._run(self._rewatch)

    # -- which mailboxes ----------------------------------------------------

    async def _refresh_subscribed(self) -> None:
        try:
            self._subs = list(await self.session.storage.subscriptions())
        except Exception:
            self._subs = []

    def _subscribed(self) -> list[str]:
        """The subscriptions as last read (:meth:`_refresh_subscribed`)."""
        return self._subs or []

    def _is_selected(self, name: str) -> bool:
        mbox = self.session.mailbox
        return mbox is not None and mbox.name == name

    def _filter_for(self, name: str) -> Filter | None:
        for f in self.spec.filters:
            if not f.selected() and f.matches(name, self._subscribed):
                return f
        return None

    def _selected_filter(self) -> Filter | None:
        for f in self.spec.filters:
            if f.selected():
                return f
        mbox = self.session.mailbox
        return self._filter_for(mbox.name) if mbox is not None else None

    async def _watched_names(self) -> list[str]:
        await self._refresh_subscribed()
        try:
            infos = await self.session.storage.list_mailboxes()
        except Exception:
            infos = []
        names = [i.name for i in infos if "\\Noselect" not in i.attributes
                 and "\\NonExistent" not in i.attributes]
        return [n for n in names if self._filter_for(n) is not None]

    async def _rewatch(self) -> None:
        if self.stopped:
            return
        wanted = set(await self._watched_names())
        if self.stopped:
            return
        mbox = self.session.mailbox
        if mbox is not None and any(f.selected() for f in self.spec.filters):
            wanted.add(mbox.name)
        storage = self.session.storage
        for name in list(self.listeners):
            if name not in wanted:
                storage.remove_listener(name, self.listeners.pop(name))
        for name in sorted(wanted - set(self.listeners)):
            cb = self._listener(name)
            self.listeners[name] = cb
            storage.add_listener(name, cb)
            self.snapshots[name] = await self._snapshot(name)

    def _listener(self, name: str) -> Callable[[], None]:
        def changed() -> None:
            self._run(self._changed, name)

        return changed

    async def _snapshot(self, name: str) -> tuple[int, ...]:
        try:
            st = await self.session.storage.status(name)
        except Exception:
            return ()
        return (st.messages, st.uidnext, st.uidvalidity, st.unseen, st.highestmodseq)

    # -- events -------------------------------------------------------------

    async def _changed(self, name: str) -> None:
        if self.stopped:
            return
        if self.session.closed:
            self.stop()
            return
        if self._is_selected(name):
            f = self._selected_filter()
            if f is not None and f.events & MESSAGE_EVENTS:
                self.selected_dirty = True
                self._schedule()
            return
        f = self._filter_for(name)
        if f is None or not f.events & MESSAGE_EVENTS:
            return
        old = self.snapshots.get(name, ())
        new = await self._snapshot(name)
        self.snapshots[name] = new
        if old == new or not self._wanted(f.events, old, new):
            return
        self.pending_status[name] = None
        self._schedule()

    @staticmethod
    def _wanted(events: set[str], old: tuple[int, ...], new: tuple[int, ...]) -> bool:
        """Whether a change of a watched mailbox's (messages, uidnext,
        uidvalidity, unseen, highestmodseq) is one of ``events``: MessageNew
        sees UIDNEXT grow, MessageExpunge MESSAGES shrink (fewer than the
        new UIDs account for), FlagChange the rest."""
        if not old or not new or old[2] != new[2]:
            return True
        added = new[1] - old[1]
        if "MessageNew" in events and added > 0:
            return True
        if "MessageExpunge" in events and new[0] < old[0] + added:
            return True
        return "FlagChange" in events and old[3:] != new[3:]

    def _tree_changed(self, kind: str, name: str, new: str | None) -> None:
        self._run(self._tree_event, kind, name, new)

    async def _tree_event(self, kind: str, name: str, new: str | None) -> None:
        if self.stopped:
            return
        if self.session.closed:
            self.stop()
            return
        await self._refresh_subscribed()
        event = "SubscriptionChange" if kind in ("subscribe", "unsubscribe") else "MailboxName"
        target = new or name
        f = self._filter_for(target) or self._filter_for(name)
        if f is not None and event in f.events:
            enc = self.session.encode_mailbox(target)
            if kind == "create":
                line = b'* LIST () "/" %s\r\n' % enc
            elif kind == "delete":
                line = b'* LIST (\\NonExistent) "/" %s\r\n' % enc
            elif kind == "rename":
                old = mutf7.encode(name).replace(b"\\", b"\\\\").replace(b'"', b'\\"')
                line = b'* LIST () "/" %s ("OLDNAME" ("%s"))\r\n' % (enc, old)
            elif kind == "subscribe":
                line = b'* LIST (\\Subscribed) "/" %s\r\n' % enc
            else:
                line = b'* LIST () "/" %s\r\n' % enc
            self.pending_lines.append(line)
            self._schedule()
        if kind != "subscribe" and kind != "unsubscribe" or any(
            f.kind == "SUBSCRIBED" for f in self.spec.filters
        ):
            await self._rewatch()

    # -- delivery -----------------------------------------------------------

    def _count(self) -> int:
        return len(self.pending_status) + len(self.pending_lines)

    def _schedule(self) -> None:
        if self._count() > self.overflow_limit:
            self._overflow()
            return
        if self.session.idle_point():
            self._run(self._flush_now)
        elif self._retry is None or not self._retry.active():
            self._retry = self.session.reactor().callLater(RETRY, self._retry_flush)

    def _retry_flush(self) -> None:
        self._retry = None
        if self.stopped or self.session.closed:
            return
        if not (self.selected_dirty or self._count()):
            return
        self._schedule()

    def _overflow(self) -> None:
        self.pending_status.clear()
        self.pending_lines.clear()
        self.selected_dirty = False
        self.stop()
        self.session.notifier = None
        self.session.send(b"* OK [NOTIFICATIONOVERFLOW] Too many notifications.\r\n")
        if self.session.idle_point():
            self.session.flush()

    async def _flush_now(self) -> None:
        if self.stopped or not self.session.idle_point():
            if not self.stopped and self._count():
                self._schedule()
            return
        await self.flush_pending()
        self.session.flush()

    async def flush_pending(self) -> None:
        """Write what waits; called between commands and at command ends
        (from the session's sync, where expunges are already handled)."""
        session = self.session
        if self.selected_dirty and session.mailbox is not None and session.idle_point():
            self.selected_dirty = False
            await self._push_selected()
        lines, self.pending_lines = self.pending_lines, []
        for line in lines:
            session.send(line)
        names, self.pending_status = list(self.pending_status), {}
        for name in names:
            if self._is_selected(name):
                continue
            line = await status_line(session, name, STATUS_ITEMS)
            if line is not None:
                session.send(line)

    async def _push_selected(self) -> None:
        session = self.session
        mbox = session.mailbox
        assert mbox is not None
        last = mbox.messages[-1].uid if mbox.messages else 0
        await session.sync_changes(True)
        if session.mailbox is not mbox:
            return
        f = self._selected_filter()
        if f is None or not f.fetch_items:
            return
        recent = mbox.recent
        for seq, info in enumerate(mbox.messages, 1):
            if info.uid <= last:
                continue
            try:
                msg = await session.load(info) if any(
                    i.needs_message() for i in f.fetch_items) else None
                session.send(fetch.render(seq, info, f.fetch_items, info.uid in recent,
                                          lambda msg=msg: msg, session.stats))
            except Exception:
                continue


async def status_line(session: IMAPSession, name: str, items: list[str]) -> bytes | None:
    """``* STATUS name (…)`` for a watched mailbox (None if it is gone);
    HIGHESTMODSEQ too once CONDSTORE is enabled."""
    try:
        status = await session.storage.status(name)
    except Exception:
        return None
    if session.condstore and "HIGHESTMODSEQ" not in items:
        items = [*items, "HIGHESTMODSEQ"]
    values = b" ".join(b"%s %d" % (k.encode(), getattr(status, k.lower())) for k in items)
    return b"* STATUS %s (%s)\r\n" % (session.encode_mailbox(name), values)
