"""The IMAP engine's command outcomes other than a plain tagged reply.

A handler raises :class:`CommandError` to refuse a command (its
``response`` is the tagged line after the tag, ``BAD …`` or ``NO […] …``)
and :class:`Silent` when it has already written its tagged reply (LOGOUT,
COMPRESS).  :func:`error_line` turns an unexpected exception into one
bounded, sanitised log line.  Imports nothing of the engine, so every
module may use it.  Trusts nothing: messages are sanitised before logging.
"""

from __future__ import annotations

from twisted.python.failure import Failure

from pydovecot.log import sanitize

SERVERBUG = b"NO [SERVERBUG] Internal error occurred. Refer to server log for more information."


class CommandError(Exception):
    """A handler's refusal: ``response`` is the tagged line after the tag."""

    def __init__(self, response: bytes):
        super().__init__(response)
        self.response = response


class Silent(Exception):
    """Raised by a handler whose tagged reply is already sent (LOGOUT, COMPRESS)."""


def bad(msg: str) -> CommandError:
    """``BAD msg`` (the core prefixes ``Error in IMAP command X:``)."""
    return CommandError(b"BAD " + msg.encode())


def error_line(f: Failure) -> str:
    """An unexpected exception as one bounded log line: type, sanitised
    message and the innermost frame (no traceback, no client bytes raw)."""
    where = ""
    if f.frames:
        func, path, line = f.frames[-1][:3]
        where = f" at {path.rsplit('/', 1)[-1]}:{line} in {func}"
    return f"{f.type.__name__}: {sanitize(f.getErrorMessage(), 200)}{where}"


__all__ = ["SERVERBUG", "CommandError", "Silent", "bad", "error_line"]
