"""The command table: every IMAP command the mail process knows, with its
handler and the properties the core acts on, as Dovecot's imap-commands.c.

A command module calls :func:`register` (usually as a decorator) at import
time; the core (:mod:`pydovecot.imap.client`) looks commands up here and
nowhere else.  A handler is ``handler(client, tag, args, uid)`` and
returns the tagged response (``b"OK …"``), a Deferred of it, or a
coroutine (wrapped with ``Deferred.fromCoroutine``); it raises
:class:`~pydovecot.imap.errors.CommandError` to refuse.  Imports nothing
of the engine (no cycles); trusts its callers (registration happens at
import, before any client connects).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Flag(enum.Flag):
    """Command properties (Dovecot's ``enum command_flags``, plus state)."""

    NONE = 0
    #: Valid only in the SELECTED state (``BAD No mailbox selected.``).
    SELECTED = enum.auto()
    #: Has a ``UID`` form (``UID FETCH`` …); the handler gets ``uid=True``.
    UID = enum.auto()
    #: Takes message sequence numbers (COMMAND_FLAG_USES_SEQS).
    USES_SEQS = enum.auto()
    #: May change sequence numbers itself: removes messages (COMMAND_FLAG_BREAKS_SEQS).
    BREAKS_SEQS = enum.auto()
    #: The sync after it must not report expunges unless run as its UID form:
    #: the client may still be using sequence numbers (RFC 3501 7.4.1).
    NO_EXPUNGE = enum.auto()
    #: No mailbox sync after it (it selects, closes or waits itself).
    NO_SYNC = enum.auto()


Handler = Callable[..., Any]


@dataclass(frozen=True)
class Command:
    """One row of the table."""

    name: str
    handler: Handler
    flags: Flag
    module: str

    def allows_expunges(self, uid: bool) -> bool:
        """Whether the sync after this command may report expunges."""
        return uid or not self.flags & Flag.NO_EXPUNGE


_TABLE: dict[str, Command] = {}


def register(name: str, flags: Flag = Flag.NONE) -> Callable[[Handler], Handler]:
    """Decorator: ``@register("FETCH", Flag.SELECTED | Flag.UID)``."""

    def add(handler: Handler) -> Handler:
        add_command(name, handler, flags)
        return handler

    return add


def add_command(name: str, handler: Handler, flags: Flag = Flag.NONE,
                module: str | None = None) -> Command:
    """Register ``name`` (upper case, letters only); ValueError on a clash."""
    key = name.upper()
    if not key.isalpha():
        raise ValueError(f"bad command name {name!r}")
    if key in _TABLE:
        raise ValueError(f"command {key} registered twice")
    cmd = Command(key, handler, flags, module or getattr(handler, "__module__", "?"))
    _TABLE[key] = cmd
    return cmd


def remove_command(name: str) -> None:
    """Unregister (tests that add a command of their own)."""
    _TABLE.pop(name.upper(), None)


def lookup(name: str) -> Command | None:
    """The command called ``name`` (any case), or None."""
    return _TABLE.get(name.upper())


def table() -> list[Command]:
    """Every registered command, by name."""
    return [_TABLE[k] for k in sorted(_TABLE)]


def describe(flags: Flag) -> str:
    """``SELECTED|UID|…`` (``-`` for none), for the listing."""
    names = [f.name for f in Flag if f.name != "NONE" and f in flags]
    return "|".join(n for n in names if n) or "-"
