"""authd's privileged worker: Dovecot's auth-worker for the root-only backends.

authd runs as ``default_internal_user`` (the auth service's ``user``).  The
backends that need root — PAM through pam_unix (it reads /etc/shadow) and
the ``passwd`` userdb (NSS modules may need it) — run here instead: authd
spawns ``python -m authd.worker`` as root before it drops its privileges,
with one end of a socketpair on fd 3, and sends the drivers' blocking calls
over AMP (:class:`PamAuthenticate`, :class:`PasswdLookup`, typed arguments,
declared errors).  The worker runs them on its own thread pool and exits
when the socketpair closes (authd gone), so it never outlives authd; authd
stops when the worker dies (it could not start a new root worker).

Trust: the worker trusts authd only to ask these two questions.  A
compromised authd can try passwords against PAM, as Dovecot's auth can;
it cannot run anything else as root.  Values are bounded by AMP (64 KiB)
and NUL is refused; passwords are never logged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp

from authd.interfaces import AuthBackendError

log = Logger()

WORKER_FD = 3
#: PAM module messages kept per conversation, and their length.
MAX_MESSAGES = 8
MAX_MESSAGE_LEN = 512


class BadArgument(ValueError):
    """An argument the worker refuses (NUL in it)."""


class PamAuthenticate(amp.Command):
    """One PAM conversation (authd.drivers.pam.pam_conversation)."""

    arguments = [
        (b"service", amp.String()),
        (b"user", amp.String()),
        (b"password", amp.String()),
        (b"remote_ip", amp.Unicode()),
        (b"session", amp.Boolean()),
        (b"setcred", amp.Boolean()),
    ]
    response = [
        (b"code", amp.Integer()),
        (b"error", amp.Unicode()),
        (b"user", amp.String()),
        (b"messages", amp.ListOf(amp.Unicode())),
    ]
    errors = {BadArgument: b"BAD_ARGUMENT"}


class PasswdLookup(amp.Command):
    """getpwnam: the passwd userdb's fields (JSON), or found=False."""

    arguments = [(b"user", amp.String())]
    response = [(b"found", amp.Boolean()), (b"fields", amp.Unicode())]
    errors = {AuthBackendError: b"BACKEND", BadArgument: b"BAD_ARGUMENT"}


def _text(value: bytes) -> str:
    if b"\0" in value:
        raise BadArgument("NUL in argument")
    return value.decode("utf-8", "surrogateescape")


def _bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


# -- the worker's side ---------------------------------------------------------


class WorkerProtocol(amp.AMP):
    """The commands the worker answers (root)."""

    def __init__(self, reactor: Any, pool: Any):
        super().__init__()
        self.reactor = reactor
        self.pool = pool

    def _run(self, fn: Any, *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)

    @PamAuthenticate.responder
    def pam(self, service, user, password, remote_ip, session, setcred):
        from authd.drivers.pam import pam_conversation

        if "\0" in remote_ip:
            raise BadArgument("NUL in argument")
        d = self._run(pam_conversation, _text(service), _text(user), _text(password),
                      remote_ip, session, setcred)

        def reply(outcome):
            return {
                "code": outcome.code,
                "error": outcome.error[:MAX_MESSAGE_LEN],
                "user": _bytes(outcome.user),
                "messages": [m[:MAX_MESSAGE_LEN] for m in outcome.messages[-MAX_MESSAGES:]],
            }

        def refused(failure):
            failure.trap(ValueError)
            raise BadArgument(str(failure.value))

        return d.addCallbacks(reply, refused)

    @PasswdLookup.responder
    def passwd(self, user):
        from authd.drivers.passwd import passwd_fields

        d = self._run(passwd_fields, _text(user))
        return d.addCallback(lambda fields: {"found": fields is not None,
                                             "fields": json.dumps(fields or {})})

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self.reactor.running:
            self.reactor.stop()


def worker_main() -> int:
    """``python -m authd.worker``: serve fd 3 until it closes."""
    from twisted.internet import reactor

    from authd.drivers import pam, passwd  # noqa: F401  (loaded before any request)
    from pydovecot.log import start_child_logging

    start_child_logging("auth")
    try:
        from setproctitle import setproctitle

        setproctitle("pydovecot/auth-worker")
    except ImportError:
        pass
    # authd (unprivileged) cannot signal us; the master's SIGTERM to the
    # process group must not cut a conversation short: we end on EOF.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pool = pam.worker_pool(reactor)
    proto = WorkerProtocol(reactor, pool)
    reactor.adoptStreamConnection(WORKER_FD, socket.AF_UNIX, Factory.forProtocol(lambda: proto))
    os.close(WORKER_FD)
    reactor.run(installSignalHandlers=False)
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: gone as soon as authd is


# -- authd's side --------------------------------------------------------------


class _WorkerProcess(ProcessProtocol):
    def __init__(self, client: WorkerClient):
        self.client = client

    def processEnded(self, reason: Any) -> None:
        self.client.ended(reason)


class WorkerClient:
    """authd's connection to its privileged worker (set as
    ``authd.drivers.PRIVILEGED_WORKER``; the PAM and passwd drivers use it)."""

    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.proto = amp.AMP()
        self.pid: int | None = None
        self.stopping = False
        self.on_lost: Any = None

    def spawn(self) -> None:
        """Start the worker (call as root, before the privilege drop)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = self.reactor.spawnProcess(
                _WorkerProcess(self), sys.executable,
                [sys.executable, "-m", "authd.worker"], env=dict(os.environ),
                childFDs={0: "w", 1: 2, 2: 2, WORKER_FD: theirs.fileno()})
        finally:
            theirs.close()
        self.pid = process.pid
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX,
                                           Factory.forProtocol(lambda: self.proto))
        ours.close()

    def ended(self, reason: Any) -> None:
        if not self.stopping:
            log.error("auth-worker {pid} ended: {why}", pid=self.pid,
                      why=reason.getErrorMessage())
            if self.on_lost is not None:
                self.on_lost()

    def stop(self) -> None:
        """Close the channel: the worker exits on EOF."""
        self.stopping = True
        if self.proto.transport is not None:
            self.proto.transport.loseConnection()

    def pam(self, service: str, user: str, password: str, remote_ip: str, session: bool,
            setcred: bool) -> defer.Deferred:
        """Fires with a PamOutcome (ValueError for a NUL argument)."""
        from authd.drivers.pam import PamOutcome

        d = self.proto.callRemote(
            PamAuthenticate, service=_bytes(service), user=_bytes(user),
            password=_bytes(password), remote_ip=remote_ip, session=session, setcred=setcred)
        return d.addCallback(lambda r: PamOutcome(
            r["code"], r["error"], r["user"].decode("utf-8", "surrogateescape"),
            list(r["messages"])))

    def passwd(self, user: str) -> defer.Deferred:
        """Fires with the passwd userdb's fields or None."""
        d = self.proto.callRemote(PasswdLookup, user=_bytes(user))
        return d.addCallback(lambda r: json.loads(r["fields"]) if r["found"] else None)


if __name__ == "__main__":
    sys.exit(worker_main())
