"""The stats process: ``python -m pydovecot.stats.main`` (started by the master).

It counts the events the master forwards into the config's ``metric { }``
blocks and serves them as OpenMetrics on the listeners of ``service stats
{ inet_listener http { } }``, which it inherits from the master (``--listener
NAME:FD:SSL``), and answers Dovecot's health check on those of ``service
health-check`` (``--health NAME:FD:SSL``; pydovecot.stats.health).  Started as root, it builds everything, answers one
rehearsal request (so nothing is imported lazily later), then chroots to
the master's empty directory and drops to ``default_internal_user`` with
no_new_privs, before it reads a byte from the network.  It stops when the
master's channel (fd 3) closes.

Trusts: the master (its channel, the config snapshot).  HTTP clients get
the page and nothing else: requests carry no input it acts on.
"""

from __future__ import annotations

import argparse

# Everything this process will use, before the chroot.
import encodings.idna  # noqa: F401
import json
import os

import prometheus_client.openmetrics.exposition  # noqa: F401
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.web import http, server  # noqa: F401

from pydovecot import privileges
from pydovecot.channel import (
    MASTER_FD,
    ChannelAMP,
    ChannelLocator,
    adopt_channel,
    adopt_listener,
    run_child,
    stop_process,
)
from pydovecot.config import load_config
from pydovecot.stats.health import HealthCheckFactory
from pydovecot.stats.http import MetricsResource, StatsState
from pydovecot.stats.metrics import Metrics
from pydovecot.stats.protocol import ForwardEvents, ProcessGauges, StatsRefused

log = Logger()


class StatsLocator(ChannelLocator):
    """What the master sends: forwarded batches and its gauges."""

    def __init__(self, state: StatsState):
        self.state = state

    @ForwardEvents.responder
    def forward_events(self, service: str, pid: int, batch: bytes, dropped: int):
        self.state.add_batch(service, batch, dropped)
        return {}

    @ProcessGauges.responder
    def process_gauges(self, gauges: bytes):
        try:
            self.state.set_gauges(json.loads(gauges))
        except ValueError:
            raise StatsRefused("gauges are not JSON") from None
        return {}


class _Discard:
    """A request body sink that keeps nothing (the page takes no input)."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def read(self, *args) -> bytes:
        return b""

    def close(self) -> None:
        pass


class BodylessRequest(server.Request):
    """A request whose body, if any, is dropped as it arrives (Twisted
    would spool a large one to a temp file, which the chroot has none of)."""

    def gotLength(self, length) -> None:
        self.content = _Discard()


class QuietSite(server.Site):
    """The /metrics site: no access log (Dovecot's stats writes none),
    bodies dropped, at most :data:`MAX_CLIENTS` connections, idle ones
    closed after :data:`IDLE_TIMEOUT` seconds."""

    requestFactory = BodylessRequest
    MAX_CLIENTS = 64
    IDLE_TIMEOUT = 60

    def __init__(self, resource):
        super().__init__(resource, timeout=self.IDLE_TIMEOUT)
        self.clients = 0

    def log(self, request) -> None:
        pass

    def buildProtocol(self, addr):
        if self.clients >= self.MAX_CLIENTS:
            return None  # the connection is closed at once
        channel = super().buildProtocol(addr)
        self.clients += 1
        lost = channel.connectionLost

        def connection_lost(reason):
            self.clients -= 1
            lost(reason)

        channel.connectionLost = connection_lost
        return channel


def rehearse(site: server.Site) -> None:
    """Serve ``/metrics`` and a 404 once on a fake transport, so that
    whatever twisted.web imports on first use is loaded before the chroot."""
    for path in (b"/metrics", b"/nothing"):
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n"
                             b"Connection: close\r\n\r\n")
        channel.connectionLost(None)


def parse_listener(spec: str) -> tuple[str, int, bool]:
    name, fd, ssl = spec.rsplit(":", 2)
    return name, int(fd), ssl == "1"


def start(args) -> defer.Deferred:
    config = load_config(args.config)
    state = StatsState(Metrics.from_config(getattr(config, "metrics", {})))
    channel = ChannelAMP(StatsLocator(state),
                         on_lost=lambda _: stop_process("master went away"))
    adopt_channel(MASTER_FD, channel)
    site = QuietSite(MetricsResource(state))
    rehearse(site)
    state.events.clear()
    health = HealthCheckFactory()
    for spec, factory in [*((s, site) for s in args.listener),
                          *((s, health) for s in args.health)]:
        name, fd, ssl = parse_listener(spec)
        if ssl:
            log.error("inet_listener {name}: ssl is not supported here; not served", name=name)
            os.close(fd)
            continue
        adopt_listener(fd, factory)
    if privileges.is_root():
        user = config.get("default_internal_user")
        uid, gid = privileges.lookup_user(user)
        privileges.enter_chroot(args.chroot)
        privileges.drop_to(uid, gid)
        privileges.set_no_new_privs()
        log.debug("chrooted to {chroot}, running as {user}", chroot=args.chroot, user=user)
    return defer.succeed(None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pydovecot-stats")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--listener", action="append", default=[])  # /metrics
    parser.add_argument("--health", action="append", default=[])  # health-check
    parser.add_argument("--chroot", required=True)
    args = parser.parse_args(argv)
    run_child("stats", lambda: start(args))


if __name__ == "__main__":
    main()
