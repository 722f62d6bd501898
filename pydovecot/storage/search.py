"""Search programs and the generic evaluator a storage runs them with
(lib-storage's ``mail_search_args`` and ``mailbox_search_*``).

A :class:`SearchProgram` is a JSON-able tree: a key name (the IMAP key's,
upper case), its arguments (str, int, ISO dates, UID ranges) and, for
``AND``/``OR``/``NOT``, its items.  Session notions never reach it: the
protocol side resolves sequence sets, ``*`` and SEARCHRES ``$`` into
``UID`` ranges first (:func:`pydovecot.imap.search.resolve`), so a storage
in another process can receive a program as JSON.

Keys: ALL, the flag keys (ANSWERED … UNSEEN, RECENT, NEW, OLD),
KEYWORD/UNKEYWORD [kw], LARGER/SMALLER [n], BEFORE/ON/SINCE,
SENTBEFORE/SENTON/SENTSINCE, SAVEDBEFORE/SAVEDON/SAVEDSINCE [date],
SAVEDATESUPPORTED, OLDER/YOUNGER [seconds], MODSEQ [n], UID [[lo, hi]…],
HEADER [field, needle] (FROM/TO/CC/BCC compare the parsed address list,
as Dovecot), BODY/TEXT [needle]; needles are case-folded Unicode.

:func:`evaluate` trusts the storage's view and source; a program from
JSON is checked (:meth:`SearchProgram.from_json` raises ValueError).
Flag, size, date, UID and MODSEQ keys never open a message; header keys
read the index first.  Work is sliced on the global Cooperator (one
message per step for content keys), so one user's SEARCH BODY over a big
mailbox does not stall the other sessions of the mail process.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import re
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from twisted.internet import defer, task, threads
from twisted.python import failure

from pydovecot.imap import mime
from pydovecot.storage.interfaces import MessageInfo, StorageError
from pydovecot.storage.parsed import (
    KEY_FUNCS,
    MessageData,
    MessageSource,
    address_text,
    decode_value,
    order_by_keys,
    sort_key,
)

#: Nesting of NOT/OR/AND a program may have (evaluation recurses once per level).
MAX_QUERY_DEPTH = 100
#: Messages tested per Cooperator step: one for content keys (a message may
#: take a while to parse), more for flag/date/UID keys.
CONTENT_STEP = 1
CHEAP_STEP = 200
#: Searches and sorts over at most this many messages run at once.
COOPERATE_OVER = 50
#: Ordering more messages than this runs in a thread of the reactor's pool.
THREAD_OVER = 2000

FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
SIMPLE_KEYS = frozenset(FLAG_KEYS) | {"ALL", "RECENT", "OLD", "NEW", "SAVEDATESUPPORTED"}
DATE_KEYS = frozenset(p + op for p in ("", "SENT", "SAVED") for op in ("BEFORE", "ON", "SINCE"))
#: key → the argument types it takes.
ARG_TYPES: dict[str, tuple[type, ...]] = {
    **{k: () for k in SIMPLE_KEYS},
    **{k: (datetime.date,) for k in DATE_KEYS},
    "KEYWORD": (str,), "UNKEYWORD": (str,), "LARGER": (int,), "SMALLER": (int,),
    "OLDER": (int,), "YOUNGER": (int,), "MODSEQ": (int,), "UID": (list,),
    "HEADER": (str, str), "BODY": (str,), "TEXT": (str,),
}
CONTENT_KEYS = frozenset({"HEADER", "BODY", "TEXT", "SENTBEFORE", "SENTON", "SENTSINCE"})
#: The HEADER fields compared as an address list.
ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc"})


def answers_deferred(method: Callable[..., Any]) -> Callable[..., defer.Deferred[Any]]:
    """A storage method made to answer with a Deferred: its value becomes
    ``succeed(value)``, an exception ``fail()``, and a Deferred it returns
    (sliced work still running on the Cooperator) is the answer itself —
    unlike ``pydovecot.storage.deferred.answers``, whose ``succeed()``
    must not be given a Deferred.  ``method.now`` is the undecorated one."""

    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(method, *args, **kwargs)

    wrapper.now = method  # type: ignore[attr-defined]
    return functools.wraps(method)(wrapper)


def sync_result(value: Any) -> Any:
    """The value of a storage call made inside the storage: a plain value,
    or the result of an already-fired Deferred (a local storage answering
    with succeed()/fail()); StorageError if it has not fired."""
    if not isinstance(value, defer.Deferred):
        return value
    box: list[Any] = []
    value.addBoth(box.append)
    if not box:
        raise StorageError("Storage call did not answer at once")
    got = box[0]
    if isinstance(got, failure.Failure):
        got.raiseException()
    return got


class CallableSource:
    """A :class:`MessageSource` made of a storage's own three callables."""

    def __init__(self, cache_get: Callable[[int, str], object | None],
                 cache_put: Callable[[int, str, object], None],
                 open_message: Callable[[int], BinaryIO]):
        self.cache_get = cache_get
        self.cache_put = cache_put
        self.open_message = open_message


class ProgramTooDeep(ValueError):
    """A program nested deeper than :data:`MAX_QUERY_DEPTH`."""


@dataclass(frozen=True, eq=True)
class SearchProgram:
    """One node: a key with ``args``, or AND/OR (``items``) / NOT (one item)."""

    key: str
    args: tuple = ()
    items: tuple[SearchProgram, ...] = ()

    # -- building -----------------------------------------------------------

    @classmethod
    def leaf(cls, key: str, *args: Any) -> SearchProgram:
        return cls(key, tuple(args))

    @classmethod
    def all_of(cls, items: Iterable[SearchProgram]) -> SearchProgram:
        flat: list[SearchProgram] = []
        for item in items:
            flat.extend(item.items if item.key == "AND" else (item,))
        return flat[0] if len(flat) == 1 else cls("AND", (), tuple(flat))

    @classmethod
    def any_of(cls, items: Iterable[SearchProgram]) -> SearchProgram:
        flat: list[SearchProgram] = []
        for item in items:
            flat.extend(item.items if item.key == "OR" else (item,))
        return flat[0] if len(flat) == 1 else cls("OR", (), tuple(flat))

    @classmethod
    def negate(cls, item: SearchProgram) -> SearchProgram:
        return item.items[0] if item.key == "NOT" else cls("NOT", (), (item,))

    @classmethod
    def uids(cls, ranges: Iterable[tuple[int, int]]) -> SearchProgram:
        return cls("UID", (tuple(tuple(r) for r in ranges),))

    # -- inspecting ------------------------------------------------------------------

    def walk(self) -> Generator[SearchProgram, None, None]:
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.items)

    @property
    def needs_content(self) -> bool:
        """Reads headers or bodies."""
        return any(n.key in CONTENT_KEYS for n in self.walk())

    @property
    def uses_modseq(self) -> bool:
        return any(n.key == "MODSEQ" for n in self.walk())

    def depth(self) -> int:
        best = 0
        stack = [(self, 0)]
        while stack:
            node, d = stack.pop()
            best = max(best, d)
            stack.extend((i, d + 1) for i in node.items)
        return best

    # -- JSON -------------------------------------------------------------------------

    def to_json(self) -> Any:
        """A JSON-able value: ``["KEY", args…]`` or ``["AND", [item…]]``."""
        if self.key in ("AND", "OR", "NOT"):
            return [self.key, [i.to_json() for i in self.items]]
        out: list[Any] = [self.key]
        for a in self.args:
            if isinstance(a, datetime.date):
                out.append(a.isoformat())
            elif isinstance(a, tuple):
                out.append([list(r) for r in a])
            else:
                out.append(a)
        return out

    @classmethod
    def from_json(cls, value: Any, _depth: int = 0) -> SearchProgram:
        """The inverse of :meth:`to_json`; ValueError for anything else."""
        if _depth > MAX_QUERY_DEPTH:
            raise ProgramTooDeep("Search program is nested too deeply")
        if not isinstance(value, list) or not value or not isinstance(value[0], str):
            raise ValueError("Invalid search program")
        key = value[0]
        if key in ("AND", "OR", "NOT"):
            if len(value) != 2 or not isinstance(value[1], list) or not value[1]:
                raise ValueError(f"Invalid {key}")
            if key == "NOT" and len(value[1]) != 1:
                raise ValueError("NOT takes one item")
            return cls(key, (), tuple(cls.from_json(v, _depth + 1) for v in value[1]))
        types = ARG_TYPES.get(key)
        if types is None:
            raise ValueError(f"Unknown search key {key[:40]!r}")
        raw = value[1:]
        if len(raw) != len(types):
            raise ValueError(f"Wrong arguments for {key}")
        args: list[Any] = []
        for t, a in zip(types, raw, strict=True):
            if t is datetime.date:
                if not isinstance(a, str):
                    raise ValueError("Invalid date")
                args.append(datetime.date.fromisoformat(a))
            elif t is list:
                if not isinstance(a, list) or not all(
                    isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)
                    for r in a
                ):
                    raise ValueError("Invalid UID ranges")
                args.append(tuple((r[0], r[1]) for r in a))
            elif type(a) is not t:
                raise ValueError(f"Wrong argument for {key}")
            else:
                args.append(a)
        return cls(key, tuple(args))


# -- evaluation ------------------------------------------------------------------------

Predicate = Callable[[MessageData], bool]


def _contains(haystacks: Iterable[str], needle: str) -> bool:
    return any(needle in h.casefold() for h in haystacks)


def _body_text(d: MessageData) -> Iterable[str]:
    msg = d.parsed()
    return (mime.decode_body(msg.data, p) for p in mime.text_parts(msg.root))


#: A raw value with none of these is compared as it is (nothing to strip).
_ADDRESS_SYNTAX = re.compile(r'[("\\]|=\?|[ \t]{2}|[ \t][@.]|[@.][ \t]')


def _header_pred(fname: str, needle: str) -> Predicate:
    if not needle:
        return lambda d: bool(d.header_values(fname))
    ascii_needle = needle.isascii()
    if fname.lower() in ADDRESS_FIELDS:
        # RFC 3501 6.4.4: a substring of the parsed address list, so
        # comments and folding inside an address do not hide it
        def addr(d: MessageData) -> bool:
            for raw in d.header_values(fname):
                if ascii_needle and raw.isascii() and _ADDRESS_SYNTAX.search(raw) is None:
                    if needle in raw.casefold():
                        return True
                elif needle in address_text(raw).casefold():
                    return True
            return False

        return addr

    def pred(d: MessageData) -> bool:
        for raw in d.header_values(fname):
            # a plain-ASCII needle in a value without encoded words needs no decoding
            if ascii_needle and "=?" not in raw and raw.isascii():
                if needle in raw.casefold():
                    return True
            elif needle in decode_value(raw).casefold():
                return True
        return False

    return pred


def _date_pred(op: str, day: datetime.date, get: Callable[[MessageData], datetime.date | None]) -> Predicate:
    def pred(d: MessageData) -> bool:
        value = get(d)
        if value is None:
            return False
        if op == "BEFORE":
            return value < day
        if op == "ON":
            return value == day
        return value >= day

    return pred


_EPOCH = datetime.date(1970, 1, 1)


def _sent_date(d: MessageData) -> datetime.date | None:
    """The Date: field's day (in its own zone); 1970-01-01 when there is
    no usable Date:, as Dovecot (its sent date is then 0)."""
    when = d.sent_datetime()
    return when.date() if when is not None else _EPOCH


def _save_date(d: MessageData) -> datetime.date | None:
    return (d.info.savedate or d.info.internaldate).date()


def _uid_pred(ranges: tuple[tuple[int, int], ...]) -> Predicate:
    merged: list[list[int]] = []
    for a, b in sorted((min(a, b), max(a, b)) for a, b in ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = [r[0] for r in merged]

    def pred(d: MessageData) -> bool:
        i = bisect.bisect_right(starts, d.uid) - 1
        return i >= 0 and d.uid <= merged[i][1]

    return pred


def compile_program(program: SearchProgram, now: float) -> Predicate:
    """The predicate of a program (recursion bounded by its depth)."""
    key, args = program.key, program.args
    if key in ("AND", "OR", "NOT"):
        preds = [compile_program(i, now) for i in program.items]
        if key == "NOT":
            inner = preds[0]
            return lambda d: not inner(d)
        if key == "OR":
            return lambda d: any(p(d) for p in preds)
        return lambda d: all(p(d) for p in preds)
    if key in FLAG_KEYS:
        flag, present = FLAG_KEYS[key]
        return lambda d: (flag in d.info.flags) == present
    if key in ("ALL", "SAVEDATESUPPORTED"):
        return lambda d: True
    if key == "RECENT":
        return lambda d: d.recent
    if key == "OLD":
        return lambda d: not d.recent
    if key == "NEW":
        return lambda d: d.recent and "\\Seen" not in d.info.flags
    if key in ("KEYWORD", "UNKEYWORD"):
        kw = args[0].lower()
        present = key == "KEYWORD"
        return lambda d: any(f.lower() == kw for f in d.info.flags) == present
    if key == "LARGER":
        n = args[0]
        return lambda d: d.info.size > n
    if key == "SMALLER":
        n = args[0]
        return lambda d: d.info.size < n
    if key in DATE_KEYS:
        if key.startswith("SENT"):
            return _date_pred(key[4:], args[0], _sent_date)
        if key.startswith("SAVED"):
            return _date_pred(key[5:], args[0], _save_date)
        return _date_pred(key, args[0], lambda d: d.info.internaldate.date())
    if key == "OLDER":
        limit = now - args[0]
        return lambda d: d.info.internaldate.timestamp() <= limit
    if key == "YOUNGER":
        limit = now - args[0]
        return lambda d: d.info.internaldate.timestamp() > limit
    if key == "MODSEQ":
        value = args[0]
        return lambda d: d.info.modseq >= value
    if key == "UID":
        return _uid_pred(args[0])
    if key == "HEADER":
        return _header_pred(args[0], args[1])
    if key == "BODY":
        needle = args[0]
        return lambda d: _contains(_body_text(d), needle)
    if key == "TEXT":
        needle = args[0]

        def text(d: MessageData) -> bool:
            head = (mime.decode_header_value(f.raw.rstrip()) for f in d.parsed().root.fields)
            return _contains(head, needle) or _contains(_body_text(d), needle)

        return text
    raise StorageError(f"Unknown search key {key[:40]}")


def _candidates(messages: Sequence[MessageInfo], uids: Iterable[int] | None) -> list[MessageInfo]:
    if uids is None:
        return list(messages)
    wanted = set(uids)
    return [m for m in messages if m.uid in wanted]


def _sliced(items: list[Any], step: int, func: Callable[[list[Any]], None]) -> defer.Deferred[None]:
    """``func`` over ``items`` in slices of ``step``: at once for a few,
    else on the global Cooperator.  Cancelling the Deferred stops the work
    (a session that went away)."""
    if len(items) <= COOPERATE_OVER:
        func(items)
        return defer.succeed(None)

    def work() -> Generator[None, None, None]:
        for start in range(0, len(items), step):
            func(items[start:start + step])
            yield None

    coop = task.cooperate(work())
    state = {"cancelled": False}

    def cancel(_d: defer.Deferred[None]) -> None:
        state["cancelled"] = True
        try:
            coop.stop()
        except (task.TaskDone, task.TaskFailed):
            pass

    done: defer.Deferred[None] = defer.Deferred(cancel)

    def finished(result: Any) -> None:
        if state["cancelled"]:
            return
        if isinstance(result, failure.Failure):
            done.errback(result)
        else:
            done.callback(None)

    coop.whenDone().addBoth(finished)
    return done


def evaluate(source: MessageSource, program: SearchProgram, messages: Sequence[MessageInfo],
             recent: Iterable[int] = (), uids: Iterable[int] | None = None,
             now: float | None = None) -> defer.Deferred[list[int]]:
    """The UIDs (ascending) of ``messages`` (those in ``uids`` if given)
    matching ``program``.  A message whose file vanished does not match."""
    try:
        pred = compile_program(program, time.time() if now is None else now)
    except StorageError:
        return defer.fail()
    recent = set(recent)
    cands = _candidates(messages, uids)
    hits: list[int] = []

    def run(part: list[MessageInfo]) -> None:
        for info in part:
            try:
                if pred(MessageData(info, source, info.uid in recent)):
                    hits.append(info.uid)
            except (OSError, StorageError):
                continue

    step = CONTENT_STEP if program.needs_content else CHEAP_STEP
    return _sliced(cands, step, run).addCallback(lambda _: sorted(hits))


def sort(source: MessageSource, criteria: Sequence[tuple[str, bool]], program: SearchProgram,
         messages: Sequence[MessageInfo], recent: Iterable[int] = ()) -> defer.Deferred[list[int]]:
    """The matching UIDs in RFC 5256 order (exact ties in mailbox order)."""
    crit = [(str(name).upper(), bool(rev)) for name, rev in criteria]
    for name, _rev in crit:
        if name not in KEY_FUNCS:
            return defer.fail(StorageError(f"Unknown sort key {name[:30]}"))
    by_uid = {m.uid: m for m in messages}

    def keyed(uids: list[int]) -> defer.Deferred[list[int]]:
        infos = [by_uid[u] for u in uids]
        keys: list[tuple] = []

        def run(part: list[MessageInfo]) -> None:
            for info in part:
                data = MessageData(info, source)
                try:
                    keys.append(sort_key(data, crit))
                except (OSError, StorageError):
                    keys.append(_fallback_key(info, crit))

        def order(_: None) -> Any:
            if len(uids) <= THREAD_OVER:
                return order_by_keys(uids, keys, crit)
            return threads.deferToThread(order_by_keys, uids, keys, crit)

        needs = any(n not in ("ARRIVAL", "SIZE") for n, _r in crit)
        return _sliced(infos, CONTENT_STEP if needs else CHEAP_STEP, run).addCallback(order)

    return evaluate(source, program, messages, recent).addCallback(keyed)


def _fallback_key(info: MessageInfo, crit: list[tuple[str, bool]]) -> tuple:
    """Keys for a message that cannot be read: empty strings, its own dates."""
    out: list[Any] = []
    for name, _rev in crit:
        if name in ("ARRIVAL", "DATE"):
            out.append(info.internaldate.timestamp())
        elif name == "SIZE":
            out.append(info.size)
        else:
            out.append("")
    return tuple(out)


def fetch_data(source: MessageSource, info: MessageInfo, items: Iterable[str]) -> dict[str, object]:
    """Parsed data items of one message (see :class:`MessageData`)."""
    data = MessageData(info, source)
    return {name: data.item(name) for name in items}


class IndexedSearch:
    """IMailbox's search, sort and fetch_data for a storage view that keeps
    its messages in ``messages``/``_index`` and reads them through
    ``_search_source()`` (Maildir and mbox share it); ``_check()`` and
    ``_expunge_issued(uid)`` are the view's own."""

    messages: list
    recent: set
    _index: dict

    @answers_deferred
    def search(self, program: SearchProgram, uids: Sequence[int] | None = None):
        self._check()
        return evaluate(self._search_source(), program, self.messages, self.recent, uids)

    @answers_deferred
    def sort(self, criteria: Sequence[tuple[str, bool]], program: SearchProgram):
        self._check()
        return sort(self._search_source(), criteria, program, self.messages, self.recent)

    @answers_deferred
    def fetch_data(self, uid: int, items: Sequence[str]):
        self._check()
        info = self._index.get(uid)
        if info is None:
            raise self._expunge_issued(uid)
        return fetch_data(self._search_source(), info, items)
