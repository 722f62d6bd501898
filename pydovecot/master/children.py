"""Spawning and supervising the master's child processes.

A :class:`Child` is one process the master started with ``spawnProcess``:
it collects the child's stderr/stdout as log lines, gives it a private AMP
channel (a socketpair, fd 3 in the child), and tells its owner when it ends.
:class:`SupervisedChild` restarts it with back-off until it is stopped.

Trusts: nothing the child says beyond log lines, which are re-emitted under
the child's own role name so a child cannot pose as another.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp

from pydovecot.channel import MASTER_FD, ChannelAMP

log = Logger()

LEVELS = {
    "Debug": LogLevel.debug,
    "Info": LogLevel.info,
    "Warning": LogLevel.warn,
    "Error": LogLevel.error,
    "Fatal": LogLevel.critical,
    "Panic": LogLevel.critical,
}


def child_environment() -> dict[str, str]:
    """The environment for children: ours, with our sys.path made explicit
    so that they import the very same pydovecot."""
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))
    env.pop("PYTHONSTARTUP", None)
    env.pop("NOTIFY_SOCKET", None)  # only the master speaks to systemd
    return env


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class ChildLogProtocol(ProcessProtocol):
    """Turns a child's output lines into log events under its role name."""

    def __init__(self, child: Child):
        self.child = child
        self.buffers = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffer = self.buffers.get(fd, b"") + data
        *lines, rest = buffer.split(b"\n")
        self.buffers[fd] = rest[-65536:]
        for line in lines:
            self.child.log_line(line.decode("utf-8", "replace"))

    def processEnded(self, reason) -> None:
        for rest in self.buffers.values():
            if rest:
                self.child.log_line(rest.decode("utf-8", "replace"))
        self.child.ended(reason)


class Child:
    """One spawned process with an AMP channel to the master."""

    def __init__(self, role: str, argv: list[str], locator: amp.CommandLocator | None = None,
                 extra_fds: dict[int, int] | None = None,
                 on_end: Callable[[Child, object], None] | None = None):
        self.role = role
        self.argv = argv
        self.locator = locator
        self.extra_fds = extra_fds or {}
        self.on_end = on_end
        self.channel: ChannelAMP | None = None
        self.process = None
        self.pid: int | None = None
        self.started_at = 0.0
        self.exited = defer.Deferred()
        #: The channel closed: the child is dying even if its exit has not
        #: been reaped yet; nothing new should be sent to it.
        self.lost = False
        #: Signals the master sent (see :meth:`signal`).
        self.sent_signals: set[int] = set()

    def spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fds: dict[int, object] = {0: "w", 1: "r", 2: "r", MASTER_FD: theirs.fileno()}
        child_fds.update(self.extra_fds)
        self.started_at = time.monotonic()
        self.process = reactor.spawnProcess(
            ChildLogProtocol(self), self.argv[0], self.argv, env=child_environment(),
            childFDs=child_fds)
        self.pid = self.process.pid
        theirs.close()
        self.channel = ChannelAMP(self.locator, on_lost=self._channel_lost)
        self.channel.child = self
        self.channel_transport = reactor.adoptStreamConnection(
            ours.fileno(), socket.AF_UNIX, _single(self.channel))
        ours.close()

    def _channel_lost(self, _reason) -> None:
        self.lost = True

    def log_line(self, line: str) -> None:
        if not line.strip():
            return
        prefix, level, text = self.role, LogLevel.info, line
        parts = line.split(": ", 2)
        if len(parts) == 3 and parts[1] in LEVELS:
            prefix, level, text = parts[0], LEVELS[parts[1]], parts[2]
        elif line.startswith("\t") or line.startswith("Traceback") or line.startswith("  "):
            level = LogLevel.error
        # A child may name a session (imap(alice)) but not another role.
        if not _prefix_allowed(self.role, prefix):
            prefix = self.role
        Logger(namespace=prefix).emit(level, "{text}", text=text, log_prefix=prefix)

    def signal(self, signo: int) -> None:
        """Send ``signo``; the child's death by it is then expected (a stop,
        a reload's retirement, a kill after a failed start): no Error line."""
        self.sent_signals.add(signo)
        if self.process is not None and self.process.pid is not None:
            try:
                self.process.signalProcess(signo)
            except Exception:  # already gone
                pass

    def ended(self, reason) -> None:
        self.process = None
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.loseConnection()
        if reason.check(ProcessDone):
            pass
        elif getattr(reason.value, "signal", None) in self.sent_signals:
            log.info("service({role}): child {pid} stopped ({how})", role=self.role,
                     pid=self.pid, how=_describe_exit(reason), log_prefix="master")
        else:
            log.error("service({role}): child {pid} {how}", role=self.role, pid=self.pid,
                      how=_describe_exit(reason), log_prefix="master")
        if self.on_end is not None:
            self.on_end(self, reason)
        self.exited.callback(None)


def _describe_exit(reason) -> str:
    value = reason.value
    if getattr(value, "signal", None):
        return f"killed with signal {value.signal}"
    return f"returned error {getattr(value, 'exitCode', '?')}"


def _prefix_allowed(role: str, prefix: str) -> bool:
    if prefix == role:
        return True
    # Mail and lmtp processes log per session: imap(alice)<…>, pop3(…), lmtp(…).
    if role in ("mail", "lmtp"):
        return prefix.split("(", 1)[0] in ("imap", "pop3", "lmtp", "mail", "submission")
    return False


def _single(protocol):
    from twisted.internet.protocol import Factory

    return Factory.forProtocol(lambda: protocol)


class SupervisedChild:
    """Keeps one child of a role alive: restart with back-off, stop cleanly.

    As Dovecot's master throttles a service whose processes keep dying at
    start, the restart delay doubles while children die within
    ``STABLE_AFTER`` seconds of their spawn; a child that ran longer than
    that was working, and its successor starts at once (``MIN_DELAY``).
    """

    MIN_DELAY = 0.1
    MAX_DELAY = 60.0
    STABLE_AFTER = 3.0

    def __init__(self, role: str, make_child: Callable[[], Child]):
        self.role = role
        self.make_child = make_child
        self.child: Child | None = None
        self.stopping = False
        self.delay = self.MIN_DELAY
        self._restart_call = None
        #: Children of this role that ended and were restarted (stats).
        self.restarts = 0

    def start(self) -> None:
        self.stopping = False
        self._spawn()

    def _spawn(self) -> None:
        self._restart_call = None
        if self.stopping:
            return
        child = self.make_child()
        child.on_end = self._ended
        try:
            child.spawn()
        except Exception:
            log.failure("cannot spawn {role}", role=self.role, log_prefix="master")
            self._schedule()
            return
        self.child = child

    def _ended(self, child: Child, reason) -> None:
        if child is self.child:
            self.child = None
        if self.stopping:
            return
        if getattr(reason.value, "exitCode", None) == os.EX_CONFIG:
            # The child can't run with this config (authd: a backend module
            # is missing): restarting would only loop.  Stop for good.
            log.critical("service({role}): configuration error, not restarting; stopping",
                         role=self.role, log_prefix="master")
            self.stopping = True
            if reactor.running:
                reactor.callLater(0, reactor.stop)
            return
        self.restarts += 1
        lived = time.monotonic() - child.started_at
        if lived >= self.STABLE_AFTER:
            self.delay = self.MIN_DELAY
        self._schedule()
        self.delay = min(self.delay * 2, self.MAX_DELAY)

    def _schedule(self) -> None:
        if self.delay >= 1:
            log.error("service({role}): command startup failed, throttling for {delay:.1f}s",
                      role=self.role, delay=self.delay, log_prefix="master")
        log.info("service({role}): restarting in {delay:.1f}s", role=self.role,
                 delay=self.delay, log_prefix="master")
        self._restart_call = reactor.callLater(self.delay, self._spawn)

    def stop(self, signo: int = signal.SIGTERM) -> defer.Deferred:
        self.stopping = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        child = self.child
        if child is None or child.process is None:
            return defer.succeed(None)
        child.signal(signo)
        return child.exited
