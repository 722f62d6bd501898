"""Synchronous access to a storage whose answers are already fired, for
storage unit tests: ``now(storage).status("INBOX")`` returns the
MailboxStatus (or raises the StorageError) of an answer that fired
before the call returned.  Only for storages that answer with
``succeed``/``fail`` (Maildir, the fakes); an answer still pending is a
test failure (AssertionError), never a wait.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure


def result_now(d: Any) -> Any:
    """The value of an already-fired Deferred, or of a coroutine that
    finishes without waiting (raising its failure)."""
    if inspect.iscoroutine(d):
        d = defer.Deferred.fromCoroutine(d)
    if not isinstance(d, defer.Deferred):
        return d
    box: list[Any] = []
    d.addBoth(box.append)
    if not box:
        raise AssertionError("the storage's answer has not fired")
    value = box[0]
    if isinstance(value, Failure):
        value.raiseException()
    return value


class Now:
    """A proxy: every method call returns its answer's value at once; an
    opened mailbox comes back wrapped too; attributes read through."""

    def __init__(self, target: Any):
        object.__setattr__(self, "_target", target)

    @property
    def inner(self) -> Any:
        return object.__getattribute__(self, "_target")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(a.inner if isinstance(a, Now) else a for a in args)
            value = result_now(attr(*args, **kwargs))
            if name == "open":
                return Now(value)
            return value

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)


def now(target: Any) -> Any:
    """Wrap a storage (or mailbox view) for synchronous tests."""
    return target if isinstance(target, Now) else Now(target)
