"""AMP commands of the admin path: ``pydoveadm`` → master → mail process.

- :class:`AdminCommand`: pydoveadm asks the master, on the root-only
  ``admin`` socket in base_dir, to run one verb.
- :class:`AdminRequest`: the master asks a user's mail process (over the
  process's channel) to run a mailbox verb for one user.

Values travel as JSON (AMP values cap at 64 KiB): the arguments as one
small JSON object; the result as a JSON document, inline (``data``) when
it is small, else in an anonymous file (``memfd``) passed as an fd
(``output``); a ``save``'s message body as an fd too.
A result is :func:`result` ``{"headers": [...], "rows": [[...]],
"text": "...", "exit": n, "errors": [...]}``.

Trusts: nothing; this module holds no logic beyond (de)serialising.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.protocols import amp

#: Exit codes as doveadm uses them (sysexits.h plus doveadm's own).
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
EX_NOTFOUND = 68  # DOVEADM_EX_NOTFOUND

#: Header flags, as doveadm_print_header_flags.
RIGHT = "right"
HIDE_TITLE = "hide"
EXPAND = "expand"
NUMBER = "number"


class AdminError(Exception):
    """A verb failed: ``"<exit code> <message>"`` (the message is safe to
    print; it never holds a password)."""

    def __init__(self, code: int | str, message: str | None = None):
        # AMP rebuilds a declared error from its text alone: AdminError(text)
        super().__init__(str(code) if message is None else f"{code} {message}")

    @property
    def code(self) -> int:
        head = str(self.args[0]).split(" ", 1)[0] if self.args else ""
        return int(head) if head.isdigit() else EX_SOFTWARE

    @property
    def message(self) -> str:
        text = str(self.args[0]) if self.args else ""
        head, _, rest = text.partition(" ")
        return rest if head.isdigit() else text


ERRORS = {AdminError: b"ADMIN_ERROR", RuntimeError: b"UNAVAILABLE"}


class AdminCommand(amp.Command):
    """pydoveadm → master: run ``verb`` (``"mailbox list"``) with ``args``
    (JSON: ``{"user": …, "argv": [...], "options": {...}}``); ``input`` is
    a body for ``save``.  The answer is a result (:func:`pack`)."""

    arguments = [
        (b"verb", amp.Unicode()),
        (b"args", amp.Unicode()),
        (b"input", amp.Descriptor(optional=True)),
    ]
    response = [(b"data", amp.String(optional=True)), (b"output", amp.Descriptor(optional=True))]
    errors = ERRORS


class AdminRequest(amp.Command):
    """master → mail process: run a mailbox verb for ``user`` (userdb
    ``fields`` as JSON, as NewClient gives them)."""

    arguments = [
        (b"verb", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"fields", amp.Unicode()),
        (b"args", amp.Unicode()),
        (b"input", amp.Descriptor(optional=True)),
    ]
    response = [(b"data", amp.String(optional=True)), (b"output", amp.Descriptor(optional=True))]
    errors = ERRORS


def header(key: str, title: str | None = None, *flags: str) -> dict[str, Any]:
    """One output column, as doveadm_print_header(key, title, flags)."""
    return {"key": key, "title": key if title is None else title, "flags": list(flags)}


def result(headers: list[dict] | None = None, rows: list[list[str]] | None = None,
           text: str = "", exit: int = EX_OK, errors: list[str] | None = None,
           formatter: str | None = None) -> dict[str, Any]:
    """A verb's result: printed rows (through the formatter) and/or
    preformatted ``text``; ``errors`` go to stderr; ``formatter`` is the
    verb's own default (doveadm's ``user`` is ``tab``, ``kick`` plain)."""
    out: dict[str, Any] = {"headers": headers or [], "rows": rows or [], "text": text,
                           "exit": exit, "errors": errors or []}
    if formatter:
        out["formatter"] = formatter
    return out


def to_fd(value: dict[str, Any]) -> int:
    """``value`` as JSON in a fresh anonymous file, positioned at 0; the
    caller owns (and must close) the fd once sent."""
    fd = os.memfd_create("pydoveadm", os.MFD_CLOEXEC)
    data = json.dumps(value).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


#: Results up to this size travel inline (an AMP value holds 65,535 bytes).
INLINE_MAX = 60000


def pack(value: dict[str, Any]) -> dict[str, Any]:
    """The response for a result: ``{"data": …}`` when small, else
    ``{"output": fd}`` (the sender closes the fd once it was sent)."""
    data = json.dumps(value).encode()
    if len(data) <= INLINE_MAX:
        return {"data": data}
    return {"output": to_fd(value)}


def unpack(answer: dict[str, Any]) -> dict[str, Any]:
    """The result in a response made by :func:`pack`."""
    if answer.get("output") is not None:
        return from_fd(answer["output"])
    try:
        value = json.loads(answer.get("data") or b"")
    except ValueError:
        raise AdminError(EX_SOFTWARE, "malformed result") from None
    if not isinstance(value, dict):
        raise AdminError(EX_SOFTWARE, "malformed result")
    return value


#: The largest result document read back (bounded: a mail process could
#: otherwise make the master or the CLI read without end).
MAX_RESULT = 1 << 30


def from_fd(fd: int, close: bool = True) -> dict[str, Any]:
    """The JSON document in ``fd`` (read from its start)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_RESULT:
                raise AdminError(EX_SOFTWARE, "result too large")
            chunks.append(chunk)
    finally:
        if close:
            os.close(fd)
    try:
        value = json.loads(b"".join(chunks))
    except ValueError:
        raise AdminError(EX_SOFTWARE, "malformed result") from None
    if not isinstance(value, dict):
        raise AdminError(EX_SOFTWARE, "malformed result")
    return value
