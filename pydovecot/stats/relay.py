"""The master's side of statistics: relay children's event batches to the
stats process, and send it the master's own gauges every
:data:`GAUGE_INTERVAL` seconds.

The master never parses a batch (the unprivileged stats process does); it
only names the sender by the role and pid it spawned it as, and bounds
what it holds: at most :data:`MAX_IN_FLIGHT` unanswered forwards, past
which a batch is dropped and counted.

Trusts: nothing a child sends; the master's own state for the gauges.
"""

from __future__ import annotations

import json

from twisted.internet import reactor, task
from twisted.logger import Logger

from pydovecot.channel import ChannelLocator
from pydovecot.stats.protocol import ForwardEvents, ProcessGauges, StatsEvents

log = Logger()

GAUGE_INTERVAL = 5.0
MAX_IN_FLIGHT = 64
#: The stats service's role name.
ROLE = "stats"


class StatsForwarding(ChannelLocator):
    """A master-side locator that takes a child's :class:`StatsEvents`
    (base of the login, lmtp, mail and auth locators); needs ``master``."""

    master = None

    @StatsEvents.responder
    def stats_events(self, batch: bytes, dropped: int):
        relay = getattr(self.master, "stats", None)
        child = getattr(self.channel, "child", None)
        if relay is None or child is None:
            return {"wanted": False}
        return {"wanted": relay.forward(child.role, child.pid or 0, batch, dropped)}


class AuthLocator(StatsForwarding):
    """authd's channel: events only."""

    def __init__(self, master):
        self.master = master


class StatsRelay:
    """Forwards to the running stats child; gathers the master's gauges."""

    def __init__(self, master, clock=None):
        self.master = master
        self.clock = clock if clock is not None else reactor
        self.in_flight = 0
        #: Batches lost here, by the sender's role (sent with the gauges).
        self.dropped: dict[str, int] = {}
        self._loop: task.LoopingCall | None = None

    # -- which stats child ---------------------------------------------------

    def _channel(self):
        for supervised in self.master.supervised.get(ROLE, []):
            child = supervised.child
            if child is not None and not child.lost and child.channel is not None \
                    and child.channel.transport is not None:
                return child.channel
        return None

    @property
    def wanted(self) -> bool:
        """Whether a stats service is configured (children then send)."""
        return bool(self.master.supervised.get(ROLE))

    # -- events ------------------------------------------------------------

    def forward(self, role: str, pid: int, batch: bytes, dropped: int) -> bool:
        if not self.wanted:
            return False
        channel = self._channel()
        if channel is None or self.in_flight >= MAX_IN_FLIGHT:
            self.dropped[role] = self.dropped.get(role, 0) + batch.count(b"\n") + 1 + dropped
            return True
        self.in_flight += 1
        d = channel.callRemote(ForwardEvents, service=role, pid=pid, batch=batch,
                               dropped=dropped)
        d.addErrback(self._lost, role, batch.count(b"\n") + 1 + dropped)
        d.addBoth(self._done)
        return True

    def _done(self, _result) -> None:
        self.in_flight -= 1

    def _lost(self, failure, role: str, count: int) -> None:
        self.dropped[role] = self.dropped.get(role, 0) + count

    # -- the master's gauges -------------------------------------------------

    def start(self) -> None:
        if self._loop is None:
            self._loop = task.LoopingCall(self.send_gauges)
            self._loop.clock = self.clock
            self._loop.start(GAUGE_INTERVAL, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def gauges(self) -> dict:
        """The master's view: sessions by protocol, mail processes by
        state, sessions per mail process, restarts per service."""
        m = self.master
        connections: dict[str, int] = {}
        for (_user, _ip, service), n in m.userip.items():
            connections[service] = connections.get(service, 0) + n
        for protocol in m.config.protocols:
            connections.setdefault(protocol, 0)
        processes = {"idle": 0, "assigned": 0}
        sessions: dict[str, int] = {}
        if m.pool is not None:
            idle = {id(p) for p in m.pool.idle}
            for process in m.pool.all_processes():
                processes["idle" if id(process) in idle else "assigned"] += 1
                if id(process) not in idle and process.child.pid is not None:
                    sessions[str(process.pid)] = process.sessions
        restarts = {role: sum(s.restarts for s in group)
                    for role, group in m.supervised.items()}
        return {"connections": connections, "mail_processes": processes,
                "sessions": dict(list(sessions.items())[:2000]), "restarts": restarts,
                "dropped": dict(self.dropped)}

    def send_gauges(self) -> None:
        channel = self._channel()
        if channel is None:
            return
        try:
            data = json.dumps(self.gauges()).encode()
        except Exception:
            log.failure("stats: gathering the master's gauges failed", log_prefix="master")
            return
        if len(data) > 60000:
            return  # cannot happen with the bounds above; never send an oversized value
        channel.callRemote(ProcessGauges, gauges=data).addErrback(lambda _: None)
