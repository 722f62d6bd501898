"""The synchronous search evaluator over an asynchronous storage.

:mod:`pydovecot.imap.search` evaluates a query synchronously, reading
header values from the index cache, header blocks and whole messages as
it goes; the storage answers with Deferreds.  A :class:`FetchedView`
stands in for the selected view: what the evaluator asks for and the
view has not fetched yet raises :class:`NeedData`, the caller awaits it
from the storage (or the session's message LRU) and evaluates that one
message again; index cache writes are sent after.  One message's data
is held at a time.  A bridge until the storage evaluates search programs
itself (``IMailbox.search``, lib-storage's mail_search).

Trusts the session and its selected view.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from pydovecot.imap.search import SearchQuery, run_query
from pydovecot.storage.interfaces import MessageInfo

PARSED = "\0parsed"  # NeedData.key: the parsed message, through the session's LRU


#: Whole-batch evaluations :func:`evaluate` tries before going a message at a time.
BATCH_TRIES = 4
#: Index cache values a FetchedView keeps at most (then it starts again).
MAX_VALUES = 50_000


class NeedData(Exception):
    """The evaluator wants a message's bytes (or, with ``key``, an index
    cache value) the view has not fetched yet."""

    def __init__(self, uid: int, key: str | None = None):
        super().__init__(uid, key)
        self.uid = uid
        self.key = key


class FetchedView:
    """What the synchronous evaluator sees of the selected view: the same
    ``messages``/``recent``, ``message_file`` from bytes awaited before
    and index cache values awaited before (else :class:`NeedData`, and
    the caller awaits them and evaluates that message again); cache
    writes are sent after.  Holds one message at a time."""

    def __init__(self, client: Any, mbox: Any):
        self.client = client
        self.mbox = mbox
        self.name = mbox.name
        self.messages = mbox.messages
        self.recent = mbox.recent
        self.data: dict[int, bytes] = {}
        self.parsed: dict[int, Any] = {}  # too big for the session's LRU, say
        self.values: dict[tuple[int, str], object] = {}
        #: UIDs evaluated together: a cache key one of them asks for is
        #: fetched for all of them at once (one retry per batch, not per message)
        self.batch: list[int] = []
        self.writes: list[tuple[int, str, object]] = []

    def cached(self, uid: int, key: str) -> object | None:
        if (uid, key) not in self.values:
            raise NeedData(uid, key)
        return self.values[(uid, key)]

    def set_cached(self, uid: int, key: str, value: object) -> None:
        self.writes.append((uid, key, value))

    def message_file(self, uid: int) -> Any:
        data = self.data.get(uid)
        if data is None:
            raise NeedData(uid)
        return io.BytesIO(data)

    def loader(self, info: MessageInfo) -> Callable[[], Any]:
        def load() -> Any:
            msg = self.parsed.get(info.uid) or self.client.cached_message(info)
            if msg is None:
                raise NeedData(info.uid, PARSED)
            return msg

        return load

    async def fetch(self, need: NeedData, info: MessageInfo) -> None:
        if need.key is not None and need.key is not PARSED:
            if len(self.values) > MAX_VALUES:
                self.values = {}
            uids = self.batch if need.uid in self.batch else [need.uid]
            for uid in uids:
                if (uid, need.key) in self.values:
                    continue
                try:
                    value = await self.mbox.cached(uid, need.key)
                except Exception:
                    value = None
                self.values[(uid, need.key)] = value
            return
        if need.key is PARSED:
            self.parsed = {info.uid: await self.client.load(info)}  # the LRU keeps it too, if small
            return
        with await self.mbox.message_file(need.uid) as f:
            self.data = {need.uid: f.read()}

    async def flush_writes(self) -> None:
        """Send the index cache writes the evaluator made."""
        writes, self.writes = self.writes, []
        for uid, key, value in writes:
            try:
                await self.mbox.set_cached(uid, key, value)
            except Exception:
                pass  # only a cache

    async def retrying(self, info: MessageInfo, func: Callable[[], Any]) -> Any:
        """``func()``, awaiting the message data it asks for first."""
        try:
            for _ in range(8):
                try:
                    result = func()
                    break
                except NeedData as need:
                    self.writes = []
                    await self.fetch(need, info)
            else:
                result = func()
            await self.flush_writes()
            return result
        finally:
            self.data = {}
            self.parsed = {}


async def evaluate(fetched: FetchedView, query: SearchQuery, messages: list[MessageInfo],
                   saved: frozenset[int], now: float | None, seqs: Any
                   ) -> list[tuple[int, MessageInfo]]:
    """``run_query`` over the sequence numbers ``seqs``, awaiting the data
    the evaluator asks for: the whole batch again while what it lacks are
    index cache values (fetched for the whole batch at once), then a
    message at a time (message data is fetched per message)."""
    seqs = list(seqs)
    fetched.batch = [messages[seq - 1].uid for seq in seqs]
    fetched.values = {}
    try:
        for _ in range(BATCH_TRIES):
            try:
                hits = run_query(fetched, query, messages, fetched.loader, saved, now, seqs)
            except NeedData as need:
                fetched.writes = []
                if need.key is None or need.key is PARSED:
                    break  # message data: one message at a time
                await fetched.fetch(need, messages[seqs[0] - 1])
                continue
            await fetched.flush_writes()
            return hits
        hits = []
        for seq in seqs:
            hits.extend(await fetched.retrying(messages[seq - 1], lambda seq=seq: run_query(
                fetched, query, messages, fetched.loader, saved, now, [seq])))
        return hits
    finally:
        fetched.values = {}
        fetched.batch = []


__all__ = ["FetchedView", "NeedData", "evaluate", "PARSED"]
