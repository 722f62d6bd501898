"""systemd's readiness protocol (sd_notify(3)) for the master, unit
``Type=notify``: ``READY=1`` once the listeners are bound and the children
started, ``RELOADING=1`` with ``MONOTONIC_USEC`` on SIGHUP and ``READY=1``
when the reload is done, ``STOPPING=1`` on SIGTERM.

Talks only to the datagram socket ``$NOTIFY_SOCKET`` names (a path or, with
a leading ``@``, an abstract name) and only when it is set; children never
see the variable (:func:`pydovecot.master.children.child_environment`
drops it), so only the master speaks for the service.  Trusts the
environment systemd gave; a failing send is logged once, never fatal.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.logger import Logger

log = Logger()
ENV = "NOTIFY_SOCKET"
_failed = False


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # vsock and other kinds: not used by pydovecot


def notify(*states: str) -> bool:
    """Send ``states`` (``READY=1`` …) as one datagram; False when there is
    no notify socket or the send failed."""
    global _failed
    raw = os.environ.get(ENV, "")
    address = _address(raw) if raw else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode("utf-8"))
        return True
    except OSError as e:
        if not _failed:
            _failed = True
            log.warn("sd_notify to {path} failed: {e}", path=raw, e=e, log_prefix="master")
        return False


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")
