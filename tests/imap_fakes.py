"""An in-memory IMailStorage for IMAP unit tests.

Trusts its caller completely; implements every member of
``pydovecot.storage.interfaces`` (every method answers with an
already-fired Deferred, via :func:`pydovecot.storage.deferred.answers`) (``verifyObject`` passes, see
tests/test_storage_interfaces.py) with the simplest semantics the
contract allows: views, \\Recent, listeners, sync reporting other views'
changes (all of them deferred while ``allow_expunge`` is false), modseqs
that stay 1 (``vanished_since`` over-reports, as RFC 7162 allows), a
per-view value cache, and attributes kept on the mailbox (so RENAME keeps
them and DELETE drops them, as the Maildir storage's GUID keying does).
Quota (``configure`` with Dovecot's quota settings) is the real
:mod:`pydovecot.storage.quota` over a count of the boxes in memory
(``count`` backend semantics; sizes are the stored bytes).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from twisted.internet.defer import Deferred
from zope.interface import implementer

from pydovecot.storage import attributes as A
from pydovecot.storage import quota as Q
from pydovecot.storage import search as S
from pydovecot.storage.deferred import answers
from pydovecot.storage.interfaces import (
    AttributeTooLarge,
    IMailbox,
    IMailStorage,
    MailboxExists,
    MailboxInfo,
    MailboxNotFound,
    MailboxStatus,
    MessageInfo,
    QuotaResource,
    StorageError,
    SyncResult,
    TooManyAttributes,
)


@dataclass
class _Stored:
    uid: int
    data: bytes
    flags: set[str]
    internaldate: datetime.datetime
    recent_taken: bool = False


@dataclass
class _Box:
    messages: list[_Stored] = field(default_factory=list)
    uidvalidity: int = 1234
    uidnext: int = 1
    attributes: dict[str, bytes] = field(default_factory=dict)


@implementer(IMailbox)
class FakeMailbox:
    def __init__(self, storage: FakeStorage, name: str, readonly: bool):
        self.storage = storage
        self.name = name
        self.readonly = readonly
        box = storage.boxes[name]
        self.uidvalidity = box.uidvalidity
        self.recent: set[int] = set()
        self.messages: list[MessageInfo] = []
        # the keywords the mailbox's messages carry (a storage defines them)
        self.keywords: list[str] = sorted(
            {f for m in box.messages for f in m.flags if not f.startswith("\\")})
        self.highestmodseq = 1  # modseqs stay 1 here (ModseqMailbox has real ones)
        self.seen_modseq = 1
        self._stored: dict[int, _Stored] = {}  # what the view has seen, expunged or not
        self._cache: dict[tuple[int, str], object] = {}
        self._take(box.messages)
        self.storage.views.append(self)

    @property
    def deleted(self) -> bool:
        return self.name not in self.storage.boxes

    @property
    def uidnext(self) -> int:
        return self.storage.boxes[self.name].uidnext

    def _info(self, m: _Stored) -> MessageInfo:
        size = len(m.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        return MessageInfo(m.uid, set(m.flags), size, m.internaldate)

    def _take(self, stored: list[_Stored]) -> list[int]:
        added = []
        for m in stored:
            if not m.recent_taken:  # EXAMINE sees \Recent but leaves it
                self.recent.add(m.uid)
                m.recent_taken = not self.readonly
            self.messages.append(self._info(m))
            self._stored[m.uid] = m
            added.append(m.uid)
        return added

    @answers
    def sync(self, allow_expunge: bool = True) -> SyncResult:
        if not allow_expunge:
            # the contract lets a storage defer every change to a sync that
            # may expunge; the session tests over this fake rely on it
            return SyncResult()
        box = self.storage.boxes.get(self.name, _Box())
        current = {m.uid: m for m in box.messages}
        result = SyncResult()
        kept = []
        for info in self.messages:
            m = current.get(info.uid)
            if m is None:
                result.expunged.append(info.uid)
                self.recent.discard(info.uid)
                self._stored.pop(info.uid, None)
                continue
            if m.flags != info.flags:
                info.flags = set(m.flags)
                result.flags_changed.append(info.uid)
            kept.append(info)
        self.messages = kept
        last = self.messages[-1].uid if self.messages else 0
        result.added = self._take([m for m in box.messages if m.uid > last])
        return result

    @answers
    def message_file(self, uid: int) -> BinaryIO:
        import io

        m = self._stored.get(uid)
        if m is None:
            err = StorageError(f"Message UID {uid} has been expunged")
            err.code = "EXPUNGEISSUED"
            raise err
        return io.BytesIO(m.data)

    @answers
    def vanished_since(self, modseq: int) -> list[int]:
        """No expunge log: every absent UID below UIDNEXT (RFC 7162 allows it)."""
        box = self.storage.boxes.get(self.name, _Box())
        present = {m.uid for m in box.messages} | {i.uid for i in self.messages}
        return [u for u in range(1, self.uidnext) if u not in present]

    @answers
    def store_unchanged_since(self, uids: Iterable[int], flags: Iterable[str], mode: str,
                              unchangedsince: int) -> tuple[list[int], list[int]]:
        uids = list(uids)
        modseqs = {i.uid: i.modseq for i in self.messages}
        failed = [u for u in uids if modseqs.get(u, 0) > unchangedsince]
        return FakeMailbox.store.now(self, [u for u in uids if u not in failed], flags, mode), failed

    @answers
    def cached(self, uid: int, key: str) -> object | None:
        return self._cache.get((uid, key))

    @answers
    def set_cached(self, uid: int, key: str, value: object) -> None:
        if uid in self._stored:
            self._cache[(uid, key)] = value

    @answers
    def store(self, uids: Iterable[int], flags: Iterable[str], mode: str) -> list[int]:
        if self.readonly:
            raise StorageError("read-only")
        flags = set(flags)
        wanted = set(uids)
        changed = []
        stored = {m.uid: m for m in self.storage.boxes[self.name].messages}
        for info in self.messages:
            if info.uid not in wanted or info.uid not in stored:
                continue
            new = {"+": info.flags | flags, "-": info.flags - flags, "=": set(flags)}[mode]
            if new != info.flags:
                info.flags = new
                stored[info.uid].flags = set(new)
                changed.append(info.uid)
        for kw in flags:
            if not kw.startswith("\\") and kw not in self.keywords:
                self.keywords.append(kw)
        if changed:
            self.storage.notify(self.name)
        return changed

    @answers
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        wanted = set(uids) if uids is not None else None
        box = self.storage.boxes[self.name]
        gone = [
            i.uid for i in self.messages
            if "\\Deleted" in i.flags and (wanted is None or i.uid in wanted)
        ]
        box.messages = [m for m in box.messages if m.uid not in gone]
        self.messages = [i for i in self.messages if i.uid not in gone]
        for uid in gone:
            self._stored.pop(uid, None)
        if gone:
            self.storage.notify(self.name)
        return gone

    def close(self) -> None:
        if self in self.storage.views:
            self.storage.views.remove(self)

    # -- search, sort and parsed data (SEARCH's block) ---------------------------

    def _search_source(self) -> S.CallableSource:
        def open_message(uid: int) -> BinaryIO:
            import io

            m = self._stored.get(uid)
            if m is None:
                err = StorageError(f"Message UID {uid} has been expunged")
                err.code = "EXPUNGEISSUED"
                raise err
            return io.BytesIO(m.data)

        def put(uid: int, key: str, value: object) -> None:
            if uid in self._stored:
                self._cache[(uid, key)] = value

        return S.CallableSource(lambda uid, key: self._cache.get((uid, key)), put, open_message)

    @S.answers_deferred
    def search(self, program: S.SearchProgram, uids: Sequence[int] | None = None):
        return S.evaluate(self._search_source(), program, self.messages, self.recent, uids)

    @S.answers_deferred
    def sort(self, criteria: Sequence[tuple[str, bool]], program: S.SearchProgram):
        return S.sort(self._search_source(), criteria, program, self.messages, self.recent)

    @S.answers_deferred
    def fetch_data(self, uid: int, items: Sequence[str]):
        info = next((i for i in self.messages if i.uid == uid), None)
        if info is None or uid not in self._stored:
            err = StorageError(f"Message UID {uid} has been expunged")
            err.code = "EXPUNGEISSUED"
            raise err
        return S.fetch_data(self._search_source(), info, items)


@implementer(IMailStorage)
class FakeStorage:
    def __init__(self, user: str = "alice"):
        self.user = user
        self.boxes: dict[str, _Box] = {"INBOX": _Box()}
        self.subs: list[str] = []
        self.views: list[FakeMailbox] = []
        self.listeners: dict[str, list[Callable[[], None]]] = {}
        self.tree_listeners: list[Callable[[str, str, str | None], None]] = []
        self.server_attributes: dict[str, bytes] = {}
        self.attribute_limits = A.AttributeLimits()
        self.quota: Q.Quota | None = None

    @answers
    def configure(self, settings: dict) -> None:
        self.attribute_limits = A.AttributeLimits.from_settings(settings)
        cfg = Q.parse_settings(settings)
        self.quota = None if cfg is None else Q.Quota(cfg, self._scan, "")

    def _scan(self, ignored: Callable[[str], bool]) -> tuple[int, int]:
        msgs = [m for name, b in self.boxes.items() if not ignored(name) for m in b.messages]
        return sum(len(m.data) for m in msgs), len(msgs)

    def _check(self, name: str, size: int, count: int = 1) -> None:
        if self.quota is not None:
            self.quota.check(name, size, count)

    def _resources(self, root: Q.Root, mailbox: str = "") -> list[QuotaResource]:
        (b, n), (ub, un) = root.config.limits(mailbox), root.usage()
        return [QuotaResource("STORAGE", ub, b), QuotaResource("MESSAGE", un, n)]

    @answers
    def quota_roots(self, mailbox: str) -> list[str]:
        return [r.name for r in self.quota.roots_for(mailbox)] if self.quota else []

    @answers
    def get_quota(self, root: str, mailbox: str = "") -> list[QuotaResource]:
        r = self.quota.root(root) if self.quota else None
        if r is None:
            err = StorageError("Quota root does not exist")
            err.code = "NONEXISTENT"
            raise err
        return self._resources(r, mailbox)

    @answers
    def check_quota(self, mailbox: str, size: int, count: int = 1) -> None:
        self._check(mailbox, size, count)

    @answers
    def recalc_quota(self) -> list[QuotaResource]:
        return [x for r in (self.quota.roots if self.quota else []) for x in self._resources(r)]

    def notify(self, name: str) -> None:
        for cb in list(self.listeners.get(name, [])):
            cb()

    def tree_changed(self, kind: str, name: str, new: str | None = None) -> None:
        for cb in list(self.tree_listeners):
            cb(kind, name, new)

    @answers
    def list_mailboxes(self) -> list[MailboxInfo]:
        out = []
        for name in sorted(self.boxes, key=lambda n: (n != "INBOX", n)):
            kids = any(o.startswith(name + "/") for o in self.boxes)
            out.append(MailboxInfo(name, {"\\HasChildren" if kids else "\\HasNoChildren"}))
        return out

    @answers
    def create(self, name: str) -> None:
        if name in self.boxes:
            raise MailboxExists("Mailbox already exists")
        parts = name.split("/")
        for k in range(1, len(parts)):
            self.boxes.setdefault("/".join(parts[:k]), _Box())
        self.boxes[name] = _Box()
        self.tree_changed("create", name)

    @answers
    def delete(self, name: str) -> None:
        if name == "INBOX":
            raise StorageError("INBOX can't be deleted.")
        if name not in self.boxes:
            raise MailboxNotFound("Mailbox doesn't exist")
        del self.boxes[name]
        self.tree_changed("delete", name)

    @answers
    def rename(self, old: str, new: str) -> None:
        if old not in self.boxes:
            raise MailboxNotFound("Mailbox doesn't exist")
        if new in self.boxes:
            raise MailboxExists("Mailbox already exists")
        for name in list(self.boxes):
            if name == old or name.startswith(old + "/"):
                self.boxes[new + name[len(old):]] = self.boxes.pop(name)
        self.tree_changed("rename", old, new)

    @answers
    def subscriptions(self) -> list[str]:
        return list(self.subs)

    @answers
    def subscribe(self, name: str) -> None:
        if name not in self.subs:
            self.subs.append(name)
        self.tree_changed("subscribe", name)

    @answers
    def unsubscribe(self, name: str) -> None:
        if name in self.subs:
            self.subs.remove(name)
        self.tree_changed("unsubscribe", name)

    @answers
    def status(self, name: str) -> MailboxStatus:
        box = self.boxes.get(name)
        if box is None:
            raise MailboxNotFound("Mailbox doesn't exist")
        return MailboxStatus(
            messages=len(box.messages),
            recent=sum(1 for m in box.messages if not m.recent_taken),
            uidnext=box.uidnext,
            uidvalidity=box.uidvalidity,
            unseen=sum(1 for m in box.messages if "\\Seen" not in m.flags),
            deleted_size=sum(len(m.data) for m in box.messages if "\\Deleted" in m.flags),
        )

    @answers
    def open(self, name: str, readonly: bool = False) -> FakeMailbox:
        if name not in self.boxes:
            raise MailboxNotFound("Mailbox doesn't exist")
        return FakeMailbox(self, name, readonly)

    @answers
    def append(
        self,
        name: str,
        message: BinaryIO,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> tuple[int, int]:
        box = self.boxes.get(name)
        if box is None:
            raise MailboxNotFound("Mailbox doesn't exist")
        when = internaldate or datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
        data = message.read()
        self._check(name, len(data))
        uid = box.uidnext
        box.uidnext += 1
        box.messages.append(_Stored(uid, data, set(flags), when))
        self.notify(name)
        return box.uidvalidity, uid

    @answers
    def copy(
        self, source: FakeMailbox, uids: Sequence[int], dest: str
    ) -> tuple[int, list[tuple[int, int]]]:
        box = self.boxes.get(dest)
        if box is None:
            raise MailboxNotFound("Mailbox doesn't exist")
        src = {m.uid: m for m in self.boxes[source.name].messages}
        if any(uid not in src for uid in uids):
            err = StorageError("Some of the requested messages no longer exist.")
            err.code = "EXPUNGEISSUED"
            raise err
        self._check(dest, sum(len(src[u].data) for u in uids), len(uids))
        pairs = []
        for uid in uids:
            m = src[uid]
            new = box.uidnext
            box.uidnext += 1
            box.messages.append(_Stored(new, m.data, set(m.flags), m.internaldate))
            pairs.append((uid, new))
        self.notify(dest)
        return box.uidvalidity, pairs

    def move(
        self, source: FakeMailbox, uids: Sequence[int], dest: str
    ) -> Deferred[tuple[int, list[tuple[int, int]]]]:
        quota, self.quota = self.quota, None  # no check inside the one quota root
        try:
            return self.copy(source, uids, dest)
        finally:
            self.quota = quota

    def add_listener(self, name: str, callback: Callable[[], None]) -> None:
        self.listeners.setdefault(name, []).append(callback)

    def remove_listener(self, name: str, callback: Callable[[], None]) -> None:
        if callback in self.listeners.get(name, []):
            self.listeners[name].remove(callback)

    def add_tree_listener(self, callback: Callable[[str, str, str | None], None]) -> None:
        self.tree_listeners.append(callback)

    def remove_tree_listener(self, callback: Callable[[str, str, str | None], None]) -> None:
        if callback in self.tree_listeners:
            self.tree_listeners.remove(callback)

    # -- attributes ------------------------------------------------------

    def _attrs(self, mailbox: str) -> dict[str, bytes]:
        if mailbox == "":
            return self.server_attributes
        box = self.boxes.get(mailbox)
        if box is None:
            raise MailboxNotFound("Mailbox doesn't exist")
        return box.attributes

    @answers
    def get_attribute(self, mailbox: str, key: str) -> bytes | None:
        scope, rest = A.split_entry(key)
        return self._attrs(mailbox).get(A.to_entry(scope, rest))

    @answers
    def set_attribute(self, mailbox: str, key: str, value: bytes | None) -> None:
        scope, rest = A.split_entry(key)
        attrs = self._attrs(mailbox)
        entry = A.to_entry(scope, rest)
        if value is None:
            attrs.pop(entry, None)
            return
        if len(value) > self.attribute_limits.max_value_size:
            raise AttributeTooLarge(self.attribute_limits.max_value_size)
        if entry not in attrs and len(attrs) >= self.attribute_limits.max_entries:
            raise TooManyAttributes()
        attrs[entry] = bytes(value)

    @answers
    def set_attributes(self, mailbox: str, changes: dict[str, bytes | None]) -> None:
        attrs = self._attrs(mailbox)
        before = dict(attrs)
        try:
            for key, value in changes.items():
                FakeStorage.set_attribute.now(self, mailbox, key, value)
        except Exception:
            attrs.clear()
            attrs.update(before)
            raise

    @answers
    def attribute_keys(self, mailbox: str, prefix: str = "") -> list[str]:
        want = prefix.lower().rstrip("/")
        return sorted(k for k in self._attrs(mailbox)
                      if not want or k == want or k.startswith(want + "/"))
