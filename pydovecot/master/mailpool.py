"""The master's pool of mail processes, keyed by the privileges they need.

Idle processes are pre-spawned and pre-imported, so a login never waits for
an interpreter.  When a user logs in whose uid/gid no running process
serves (or whose processes are full, ``client_limit``), an idle one is
assigned that uid/gid for good and a new idle one is spawned behind it.

Trusts: the uid/gid it is given (the master got them from authd).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from twisted.internet import defer, reactor
from twisted.logger import Logger

from pydovecot.master.children import Child
from pydovecot.master.protocol import Assign

log = Logger()

Key = tuple[int, int]

#: Seconds between an assignment and spawning its idle replacement.
REFILL_AFTER = 0.05


def mail_idle_kill(config) -> float:
    """Seconds an assigned mail process may sit without sessions:
    ``service imap { idle_kill }``, else ``default_idle_kill`` when the file
    sets it (Dovecot's 1 min default is not applied to these many-session
    processes), else 0 (kept)."""
    service = config.services.get("imap")
    if service is not None and service.idle_kill:
        return service.idle_kill
    if "default_idle_kill" in getattr(config, "explicit", ()):
        return config.get_time("default_idle_kill")
    return 0.0


class MailProcess:
    """The master's view of one mail process."""

    def __init__(self, child: Child):
        self.child = child
        self.key: Key | None = None
        self.sessions = 0
        self.alive = True
        self.calls = 0  # master commands in flight (a delivery, an assignment)
        self.idle_timer = None  # idle_kill, while it has no sessions

    @property
    def pid(self) -> int:
        return self.child.pid or 0

    @property
    def usable(self) -> bool:
        """Alive as far as we know: not reaped, and its channel still open
        (a killed process's channel closes before its exit is reaped)."""
        return self.alive and not self.child.lost

    def call(self, command, **kwargs) -> defer.Deferred:
        self.calls += 1

        def done(result):
            self.calls -= 1
            return result

        return self.child.channel.callRemote(command, **kwargs).addBoth(done)

    def cancel_idle(self) -> None:
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None


class MailProcessPool:
    def __init__(self, spawn_child: Callable[[], Child], prespawn: int, client_limit: int,
                 process_limit: int):
        self.spawn_child = spawn_child
        self.prespawn = max(1, prespawn)
        self.client_limit = max(1, client_limit)
        self.process_limit = max(1, process_limit)
        self.idle: list[MailProcess] = []
        self.assigned: dict[Key, list[MailProcess]] = {}
        self.by_pid: dict[int, MailProcess] = {}
        self._assigning: dict[Key, defer.Deferred] = {}
        self.stopping = False
        self.refill_delay = 0.0  # grows while fresh processes keep dying
        self._refill_call = None
        #: ``service imap { idle_kill }``: an assigned process left without
        #: sessions that long is stopped (0: kept; Dovecot's default_idle_kill
        #: is not applied to these many-session processes).
        self.idle_kill = 0.0

    # -- spawning ----------------------------------------------------------

    def start(self) -> None:
        self.stopping = False
        self.fill()

    def fill(self) -> None:
        while not self.stopping and len(self.idle) < self.prespawn and (
                len(self.by_pid) < self.process_limit + self.prespawn):
            self.idle.append(self._spawn())

    def _spawn(self) -> MailProcess:
        child = self.spawn_child()
        process = MailProcess(child)
        child.on_end = lambda _child, _reason: self._ended(process)
        child.spawn()
        self.by_pid[child.pid] = process
        return process

    def _ended(self, process: MailProcess) -> None:
        process.alive = False
        process.cancel_idle()
        self.by_pid.pop(process.pid, None)
        if process in self.idle:
            self.idle.remove(process)
        if process.key is not None:
            procs = self.assigned.get(process.key, [])
            if process in procs:
                procs.remove(process)
            if not procs:
                self.assigned.pop(process.key, None)
        if self.stopping:
            return
        if time.monotonic() - process.child.started_at < 5:
            self.refill_delay = min(max(self.refill_delay * 2, 0.5), 60.0)
        else:
            self.refill_delay = 0.0
        if self.refill_delay and self._refill_call is None:
            log.warn("service(mail): processes die young; refilling the pool in {d:.1f}s",
                     d=self.refill_delay, log_prefix="master")
            self._refill_call = reactor.callLater(self.refill_delay, self._refill)
        elif not self.refill_delay:
            self.fill()

    def _refill(self) -> None:
        self._refill_call = None
        self.fill()

    # -- assignment ----------------------------------------------------------

    def process_for(self, uid: int, gid: int, label: str) -> defer.Deferred:
        """Deferred[MailProcess] serving uid/gid with room for one more session."""
        key = (uid, gid)
        process = self._with_room(key)
        if process is not None:
            return defer.succeed(process)
        pending = self._assigning.get(key)
        if pending is not None:
            # Someone is assigning a process for this key right now: share it.
            d = defer.Deferred()
            pending.addBoth(lambda r: (d.callback(None), r)[1])
            d.addCallback(lambda _: self.process_for(uid, gid, label))
            return d
        d = self._assign(key, label)
        self._assigning[key] = d
        d.addBoth(self._assigned, key)
        return d

    def _assigned(self, result, key: Key):
        self._assigning.pop(key, None)
        return result

    def _with_room(self, key: Key) -> MailProcess | None:
        candidates = [p for p in self.assigned.get(key, ()) if p.usable
                      and p.sessions < self.client_limit]
        return min(candidates, key=lambda p: p.sessions, default=None)

    @defer.inlineCallbacks
    def _assign(self, key: Key, label: str):
        if self.stopping:
            raise RuntimeError("master is stopping")
        busy = sum(p.usable for procs in self.assigned.values() for p in procs)
        if busy >= self.process_limit:
            raise RuntimeError(f"process_limit ({self.process_limit}) reached")
        self.idle = [p for p in self.idle if p.usable]
        if not self.idle:
            self.fill()
        process = self.idle.pop(0) if self.idle else self._spawn()
        uid, gid = key
        try:
            yield process.call(Assign, uid=uid, gid=gid, groups=[gid], label=label)
        except Exception:
            process.child.signal(9)
            raise
        finally:
            # Spawning forks this process: keep it off the login that waits.
            reactor.callLater(REFILL_AFTER, self.fill)
        process.key = key
        self.assigned.setdefault(key, []).append(process)
        return process

    def reconfigure(self, prespawn: int, client_limit: int, process_limit: int) -> None:
        """New limits after a reload; idle spares (which read the old
        config) are replaced, assigned processes keep their sessions."""
        self.prespawn = max(1, prespawn)
        self.client_limit = max(1, client_limit)
        self.process_limit = max(1, process_limit)
        retired, self.idle = self.idle, []
        for process in retired:
            process.child.signal(signal.SIGTERM)
        self.fill()

    def session_started(self, process: MailProcess) -> None:
        process.sessions += 1
        process.cancel_idle()

    def session_ended(self, pid: int) -> None:
        process = self.by_pid.get(pid)
        if process is not None and process.sessions > 0:
            process.sessions -= 1
            if process.sessions == 0 and self.idle_kill and process.key is not None:
                process.cancel_idle()
                process.idle_timer = reactor.callLater(self.idle_kill, self._idle_kill, process)

    def _idle_kill(self, process: MailProcess) -> None:
        """idle_kill ran out: retire the process unless it got work meanwhile."""
        process.idle_timer = None
        if process.sessions or not process.usable or self.stopping:
            return
        if process.calls:  # a delivery is running: look again later
            process.idle_timer = reactor.callLater(self.idle_kill, self._idle_kill, process)
            return
        procs = self.assigned.get(process.key, [])
        if process in procs:
            procs.remove(process)  # no new session picks it from now on
            if not procs:
                self.assigned.pop(process.key, None)
        log.info("service(mail): process {pid} idle for {t:g}s (idle_kill), stopping",
                 pid=process.pid, t=self.idle_kill, log_prefix="master")
        process.child.signal(signal.SIGTERM)

    def all_processes(self) -> list[MailProcess]:
        return list(self.by_pid.values())

    def stop(self, signo: int) -> defer.Deferred:
        self.stopping = True
        if self._refill_call is not None and self._refill_call.active():
            self._refill_call.cancel()
        self._refill_call = None
        waits = []
        for process in self.all_processes():
            process.child.signal(signo)
            waits.append(process.child.exited)
        return defer.DeferredList(waits)
