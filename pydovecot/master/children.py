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
        #: RLIMIT_AS for the child (the service's ``vsz_limit``); 0: none.
        self.vsz_limit = 0
        #: Called when the child says it reached its service_count.
        self.on_retire: Callable[[Child], None] | None = None

    def spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fds: dict[int, object] = {0: "w", 1: "r", 2: "r", MASTER_FD: theirs.fileno()}
        child_fds.update(self.extra_fds)
        self.started_at = time.monotonic()
        argv = limited_argv(self.argv, self.vsz_limit)
        self.process = reactor.spawnProcess(
            ChildLogProtocol(self), argv[0], argv, env=child_environment(),
            childFDs=child_fds)
        self.pid = self.process.pid
        theirs.close()
        self.channel = _ChildChannel(self, self.locator, on_lost=self._channel_lost)
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


class ServiceRetire(amp.Command):
    """Child → master: I reached my ``service_count``; I stop accepting and
    exit once my clients are gone, so start my successor now."""

    arguments: list = []
    response: list = []


class _RetireResponder(amp.CommandLocator):
    def __init__(self, child: Child):
        self.child = child

    @ServiceRetire.responder
    def retire(self) -> dict:
        if self.child.on_retire is not None:
            self.child.on_retire(self.child)
        return {}


class _ChildChannel(ChannelAMP):
    """A child's channel: its role's locator, plus ServiceRetire."""

    def __init__(self, child: Child, locator, on_lost) -> None:
        super().__init__(locator, on_lost=on_lost)
        self.locator = _WithRetire(_RetireResponder(child), self.locator)


class _WithRetire:
    """A locator: ServiceRetire here, every other command from ``inner``."""

    def __init__(self, retire: _RetireResponder, inner) -> None:
        self.retire = retire
        self.inner = inner

    def locateResponder(self, name):
        if name == ServiceRetire.commandName:
            return self.retire.locateResponder(name)
        return self.inner.locateResponder(name)


#: Runs a module under an address-space limit (``vsz_limit``): spawnProcess
#: has no preexec hook, so the child sets RLIMIT_AS on itself first.
_RLIMIT_LAUNCHER = (
    "import resource, runpy, sys; n = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_AS, (n, n)); m = sys.argv.pop(1); "
    "runpy.run_module(m, run_name='__main__', alter_sys=True)"
)


def limited_argv(argv: list[str], vsz_limit: int) -> list[str]:
    """``python -m MODULE ARGS`` rewritten to run under RLIMIT_AS = vsz_limit."""
    if not vsz_limit or len(argv) < 3 or argv[1] != "-m":
        return argv
    return [argv[0], "-c", _RLIMIT_LAUNCHER, str(vsz_limit), argv[2], *argv[3:]]


def mail_vsz_limit(config) -> int:
    """RLIMIT_AS for mail processes: ``service imap { vsz_limit }`` when set
    explicitly (a mail process serves many sessions, so Dovecot's per-session
    default_vsz_limit is not applied to it); 0 otherwise."""
    service = config.services.get("imap")
    return service.vsz_limit if service is not None and service.get("vsz_limit") else 0


def _describe_exit(reason) -> str:
    value = reason.value
    if getattr(value, "signal", None):
        return f"killed with signal {value.signal}"
    return f"returned error {getattr(value, 'exitCode', '?')}"


def _prefix_allowed(role: str, prefix: str) -> bool:
    if prefix == role:
        return True
    # Mail and lmtp processes log per session: imap(alice)<…>, pop3(…), lmtp(…);
    # a mail process's mail_log_prefix may say anything but another role.
    if role == "lmtp":
        return prefix.split("(", 1)[0] in ("imap", "pop3", "lmtp", "mail", "submission")
    if role == "mail":
        head = prefix.split("(", 1)[0].split("<", 1)[0].split("[", 1)[0].strip()
        return head not in OTHER_ROLES and not head.startswith("service")
    return False


#: Prefixes a mail process may not log under.
OTHER_ROLES = frozenset({"master", "auth", "imap-login", "pop3-login", "managesieve-login",
                         "submission-login", "stats", "config", "health-check", "anvil", "log",
                         "quota-status", "storage-rpc"})


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

    def __init__(self, role: str, make_child: Callable[[], Child],
                 limit: ProcessLimit | None = None):
        self.role = role
        self.make_child = make_child
        self.limit = limit
        self.child: Child | None = None
        #: Children that reached their service_count: they serve their last
        #: clients and exit; their end is not a crash and starts nothing.
        self.retired: set[Child] = set()
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
        if self.limit is not None and not self.limit.take(self):
            return  # at process_limit: spawned when a retired child exits
        child = self.make_child()
        child.on_end = self._ended
        child.on_retire = self._retire
        try:
            child.spawn()
        except Exception:
            if self.limit is not None:
                self.limit.release()
            log.failure("cannot spawn {role}", role=self.role, log_prefix="master")
            self._schedule()
            return
        self.child = child

    def _retire(self, child: Child) -> None:
        """The child reached its service_count: its successor starts now."""
        if child is not self.child:
            return
        self.retired.add(child)
        self.child = None
        if not self.stopping:
            self._spawn()

    def _ended(self, child: Child, reason) -> None:
        if self.limit is not None:
            self.limit.release()
        if child in self.retired:
            self.retired.discard(child)
            if self.limit is not None:
                self.limit.wake()
            return
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
        if self.limit is not None:
            self.limit.forget(self)
        waits = []
        for child in [self.child, *self.retired]:
            if child is not None and child.process is not None:
                child.signal(signo)
                waits.append(child.exited)
        if not waits:
            return defer.succeed(None)
        return defer.gatherResults(waits).addCallback(lambda _: None)


class ProcessLimit:
    """A service's ``process_limit``, shared by its supervised slots: a slot
    whose child retired (service_count) waits here while the service's
    processes, retired ones included, are at the limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.running = 0
        self.waiting: list[SupervisedChild] = []

    def take(self, slot: SupervisedChild) -> bool:
        if self.limit and self.running >= self.limit:
            if slot not in self.waiting:
                self.waiting.append(slot)
                log.warn("service({role}): process_limit ({limit}) reached, client "
                         "connections are being dropped", role=slot.role, limit=self.limit,
                         log_prefix="master")
            return False
        self.running += 1
        return True

    def release(self) -> None:
        self.running = max(0, self.running - 1)

    def wake(self) -> None:
        while self.waiting and (not self.limit or self.running < self.limit):
            slot = self.waiting.pop(0)
            if not slot.stopping and slot.child is None:
                slot._spawn()

    def forget(self, slot: SupervisedChild) -> None:
        if slot in self.waiting:
            self.waiting.remove(slot)
