"""Answering the storage interface from synchronous code.

Every method of :class:`~pydovecot.storage.interfaces.IMailStorage` and
:class:`~pydovecot.storage.interfaces.IMailbox` returns a Deferred.  A
storage that works synchronously in the mail process (Maildir: local
disk I/O) writes its methods as plain functions and decorates them with
:func:`answers`: the result becomes ``succeed(result)`` and an exception
``fail()``, so the caller sees the same shape a storage in another
process would give.  The undecorated function stays reachable as
``method.now`` (``Class.method.now(self, …)``) for the storage's own
internal calls, which must not wait on themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer

T = TypeVar("T")


def answers(method: Callable[..., T]) -> Callable[..., defer.Deferred[T]]:
    """Wrap a synchronous storage method: its value or exception becomes an
    already-fired Deferred (``succeed``/``fail``).  ``BaseException`` that is
    not an ``Exception`` (KeyboardInterrupt, SystemExit) still propagates."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred[T]:
        try:
            result = method(*args, **kwargs)
        except Exception:
            return defer.fail()
        return defer.succeed(result)

    wrapper.now = method  # type: ignore[attr-defined]
    return wrapper


class Answer:
    """A storage answer awaited from a generator running on a Cooperator
    (which cannot send values back in): ``a = Answer(d)``, then
    ``if a.pending: yield a.wait``, then ``a.get()`` (value, or the
    failure's exception raised).  An answer that fired already costs no
    extra step, so local storage keeps its pace."""

    def __init__(self, d: defer.Deferred[Any]):
        self._value: Any = None
        self._failure: Any = None
        self._done = False
        self.wait: defer.Deferred[None] = d.addCallbacks(self._ok, self._err)

    def _ok(self, value: Any) -> None:
        self._value, self._done = value, True

    def _err(self, failure: Any) -> None:
        self._failure, self._done = failure, True

    @property
    def pending(self) -> bool:
        return not self._done

    def get(self) -> Any:
        if not self._done:
            raise RuntimeError("the storage's answer has not arrived")
        if self._failure is not None:
            self._failure.raiseException()
        return self._value


__all__ = ["answers", "Answer"]
