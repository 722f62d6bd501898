"""A "remote-like" storage for tests: any IMailStorage behind a proxy that
behaves as a storage in another process would.

* Every asynchronous method (every method of ``IMailStorage`` and
  ``IMailbox`` but the synchronous bookkeeping ones, see
  :data:`SYNCHRONOUS`) is built from the interface's names, so methods
  added to the interface later are covered without a change here.  The
  request reaches the wrapped storage only after a reactor turn and the
  answer comes back after another one: no caller can rely on an answer
  being in when the call returns.
* Values are copied as a wire would copy them: arguments and answers are
  deep copies; files are read into a new file object on each side (the
  caller's file is read when the request is sent, an answered file is
  read and closed by the proxy and handed over as a fresh BytesIO); a
  mailbox view comes back as a :class:`RemoteMailbox` whose attributes are
  a local copy, refreshed when one of its own methods answers (the
  session's local view, as the interface documents it).  MessageInfo
  objects the caller holds are updated in place, as a client library's
  cache would be.
* Listener callbacks run a reactor turn after the wrapped storage called
  them.

Trusts the wrapped storage and its caller (tests only).  ``verifyObject``
passes for both proxies (tests/test_storage_interfaces.py).
"""

from __future__ import annotations

import copy
import inspect
import io
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.interface import Method

from pydovecot.storage.interfaces import IMailbox, IMailStorage, MessageInfo

#: Members that stay synchronous (local bookkeeping); see the module
#: docstring of pydovecot.storage.interfaces.
SYNCHRONOUS = frozenset({"close", "add_listener", "remove_listener", "add_tree_listener",
                         "remove_tree_listener"})


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _signature(desc: Method) -> inspect.Signature:
    """The interface method's signature, with ``self`` first."""
    info = desc.getSignatureInfo()
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name in info["positional"]:
        default = info["optional"].get(name, inspect.Parameter.empty)
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=default))
    return inspect.Signature(params)


def _send(value: Any) -> Any:
    """An argument as the other side receives it."""
    if isinstance(value, RemoteMailbox):
        return value.target  # the other side's own view
    if hasattr(value, "read") and not isinstance(value, bytes | bytearray):
        return io.BytesIO(value.read())  # the bytes travel, not the file
    if inspect.isgenerator(value) or (hasattr(value, "__next__") and hasattr(value, "__iter__")):
        value = list(value)
    return copy.deepcopy(value)


def _remote(name: str, desc: Method) -> Callable[..., defer.Deferred[Any]]:
    """A proxy method: request after a turn, answer after another."""

    def method(self: _Remote, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        args = tuple(_send(a) for a in args)
        kwargs = {k: _send(v) for k, v in kwargs.items()}
        answer: defer.Deferred[Any] = defer.Deferred()
        self.pending += 1

        def reply(result: object) -> None:
            self.pending -= 1
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

        def arrived(result: object) -> None:
            if not isinstance(result, Failure):
                try:
                    result = self._receive(name, result)
                except Exception:
                    result = Failure()
            self.clock.callLater(0, reply, result)

        def call() -> None:
            d = defer.maybeDeferred(getattr(self.target, name), *args, **kwargs)
            d.addBoth(arrived)

        self.clock.callLater(0, call)
        return answer

    method.__name__ = name
    method.__doc__ = desc.getDoc()
    method.__signature__ = _signature(desc)  # type: ignore[attr-defined]
    return method


class _Remote:
    """What both proxies share: the wrapped object and the clock."""

    def __init__(self, target: Any, clock: Any = None):
        self.target = target
        self.clock = clock if clock is not None else _reactor()
        self.pending = 0  # requests not answered yet

    def _receive(self, name: str, value: Any) -> Any:
        return copy.deepcopy(value)

    def _later(self, callback: Callable[..., None]) -> Callable[..., None]:
        def later(*args: Any) -> None:
            self.clock.callLater(0, callback, *args)

        return later


def _build(cls: type, iface: Any) -> type:
    for name in iface.names(all=True):
        desc = iface[name]
        if isinstance(desc, Method) and name not in SYNCHRONOUS and name not in cls.__dict__:
            setattr(cls, name, _remote(name, desc))
    return cls


class RemoteMailbox(_Remote):
    """A view of a mailbox "in another process": attributes are a local
    copy, refreshed by the answers of the view's own methods."""

    def __init__(self, target: Any, clock: Any = None):
        super().__init__(target, clock)
        self.messages: list[MessageInfo] = []
        self._refresh()

    def _refresh(self) -> None:
        t = self.target
        self.name = t.name
        self.readonly = t.readonly
        self.uidvalidity = t.uidvalidity
        self.uidnext = t.uidnext
        self.recent = set(t.recent)
        self.keywords = list(t.keywords)
        self.highestmodseq = t.highestmodseq
        self.seen_modseq = t.seen_modseq
        self.deleted = t.deleted
        mine = {m.uid: m for m in self.messages}
        messages = []
        for m in t.messages:
            local = mine.get(m.uid)
            if local is None:
                local = MessageInfo(m.uid, set(m.flags), m.size, m.internaldate, m.modseq,
                                    m.savedate)
            else:
                local.flags, local.size, local.modseq = set(m.flags), m.size, m.modseq
                local.internaldate, local.savedate = m.internaldate, m.savedate
            messages.append(local)
        self.messages = messages

    def _receive(self, name: str, value: Any) -> Any:
        self._refresh()
        if name == "message_file":
            with value:
                return io.BytesIO(value.read())
        return copy.deepcopy(value)

    def close(self) -> None:
        self.target.close()


class RemoteStorage(_Remote):
    """An IMailStorage "in another process" (see the module docstring)."""

    def __init__(self, target: Any, clock: Any = None):
        super().__init__(target, clock)
        self.user = target.user
        self._listeners: dict[tuple[str, Callable[..., None]], Callable[..., None]] = {}
        self._tree: dict[Callable[..., None], Callable[..., None]] = {}

    def _receive(self, name: str, value: Any) -> Any:
        if name == "open":
            return RemoteMailbox(value, self.clock)
        return copy.deepcopy(value)

    def add_listener(self, name: str, callback: Callable[[], None]) -> None:
        later = self._listeners[(name, callback)] = self._later(callback)
        self.target.add_listener(name, later)

    def remove_listener(self, name: str, callback: Callable[[], None]) -> None:
        later = self._listeners.pop((name, callback), None)
        if later is not None:
            self.target.remove_listener(name, later)

    def add_tree_listener(self, callback: Callable[[str, str, str | None], None]) -> None:
        later = self._tree[callback] = self._later(callback)
        self.target.add_tree_listener(later)

    def remove_tree_listener(self, callback: Callable[[str, str, str | None], None]) -> None:
        later = self._tree.pop(callback, None)
        if later is not None:
            self.target.remove_tree_listener(later)


implementer(IMailbox)(_build(RemoteMailbox, IMailbox))
implementer(IMailStorage)(_build(RemoteStorage, IMailStorage))

__all__ = ["RemoteStorage", "RemoteMailbox", "SYNCHRONOUS"]
