"""The stats process's state and its ``/metrics`` page (twisted.web).

:class:`StatsState` takes the batches the master forwards (parsing each
line; a malformed one is counted as dropped), the master's gauges, and
renders everything with prometheus_client's OpenMetrics writer, in
Dovecot's order: ``process_start_time_seconds``, ``dovecot_build_info``,
the ``metric { }`` families, then pydovecot's own process families
(``pydovecot_*``, which Dovecot does not have), then ``# EOF``.

:class:`MetricsResource` answers ``GET /metrics`` (and ``/metrics/``) and
a 404 for anything else, as Dovecot's stats HTTP server does.

Trusts: the master for the gauges and for who sent a batch; nothing in a
batch beyond its shape, and an event only from a service that emits it
(:func:`allowed`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web import resource
from zope.interface import implementer

from pydovecot.stats.interfaces import IStatsSink
from pydovecot.stats.metrics import MAX_VALUE, Event, Metrics

#: Reported as dovecot_build_info{version, revision}.
VERSION = "0.1.0"
REVISION = "pydovecot"
#: Distinct services (and mail process pids) kept for the per-service families.
MAX_SERVICES = 200
MAX_PIDS = 2000

SERVICE_FAMILIES = {
    "events": ("pydovecot_stats_events", "Events the stats process received, by service"),
    "dropped": ("pydovecot_stats_events_dropped",
                "Events lost on the way (a full queue, a malformed line), by service"),
}


@implementer(IStatsSink)
class StatsState:
    """What the stats process knows: metric counts and the master's gauges."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.events: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.gauges: dict = {}

    def _count(self, table: dict[str, int], service: str, n: int) -> None:
        if service in table or len(table) < MAX_SERVICES:
            table[service] = table.get(service, 0) + n

    def add_batch(self, service: str, batch: bytes, dropped: int = 0) -> int:
        """Count a batch's events; the number taken."""
        taken = bad = 0
        for line in batch.split(b"\n"):
            if not line:
                continue
            event = parse_line(line)
            if event is None or not allowed(service, event.name):
                bad += 1
                continue
            self.metrics.add(event)
            taken += 1
        self._count(self.events, service, taken)
        if bad + max(dropped, 0):
            self._count(self.dropped, service, bad + max(dropped, 0))
        return taken

    def set_gauges(self, gauges: dict) -> None:
        self.gauges = gauges if isinstance(gauges, dict) else {}

    # -- exposition --------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        start = Metric("process_start_time_seconds", "Timestamp of service start", "gauge")
        start.add_sample("process_start_time_seconds", {}, self.metrics.start_time)
        yield start
        build = Metric("dovecot_build", "Dovecot build information", "info")
        build.add_sample("dovecot_build_info", {"version": VERSION, "revision": REVISION}, 1)
        yield build
        yield from self.metrics.families()
        yield from self._process_families()

    def _process_families(self) -> Iterator[Metric]:
        g = self.gauges
        yield _labelled("pydovecot_connections", "Client sessions in mail processes, by "
                        "protocol", "gauge", "protocol", g.get("connections", {}))
        yield _labelled("pydovecot_mail_processes", "Mail processes: idle (pre-spawned) or "
                        "assigned to a uid", "gauge", "state", g.get("mail_processes", {}))
        yield _labelled("pydovecot_mail_process_sessions", "Sessions each mail process "
                        "serves", "gauge", "pid", g.get("sessions", {}), limit=MAX_PIDS)
        yield _labelled("pydovecot_service_restarts", "Times the master restarted a "
                        "service's process", "counter", "service", g.get("restarts", {}))
        for key, (name, doc) in SERVICE_FAMILIES.items():
            table = dict(getattr(self, key))
            if key == "dropped":
                for service, n in g.get("dropped", {}).items():
                    table[service] = table.get(service, 0) + n
            yield _labelled(name, doc, "counter", "service", table)

    def render(self) -> bytes:
        return generate_latest(self)


def allowed(service: str, name: str) -> bool:
    """Whether ``service`` may report event ``name``: authd's own events
    (``auth_*`` but ``auth_client_*``) come from authd only, and a login
    process reports only login-side ones, so a compromised login process
    cannot fake authd's or the mail processes' counts."""
    if name.startswith("auth_") and not name.startswith("auth_client_"):
        return service == "auth"
    if service.endswith("-login"):
        return name.startswith(LOGIN_EVENTS)
    return True


#: Event name prefixes a login process may report (Dovecot's login-side events).
LOGIN_EVENTS = ("auth_client_", "login_", "proxy_", "imap_id_", "client_")


def _labelled(name: str, doc: str, kind: str, label: str, values: dict,
              limit: int = MAX_SERVICES) -> Metric:
    metric = Metric(name, doc, kind)
    sample = name + "_total" if kind == "counter" else name
    for key, value in list(values.items())[:limit]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metric.add_sample(sample, {label: str(key)[:MAX_VALUE]}, value)
    return metric


def parse_line(line: bytes) -> Event | None:
    """One batch line, or None if it is not ``[name, duration_us, {fields}]``."""
    try:
        name, duration, fields = json.loads(line)
    except (ValueError, TypeError):
        return None
    if (not isinstance(name, str) or not isinstance(duration, int) or isinstance(duration, bool)
            or duration < 0 or not isinstance(fields, dict)):
        return None
    clean: dict[str, str | int] = {}
    for key, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            continue
        clean[key[:MAX_VALUE]] = value[:MAX_VALUE] if isinstance(value, str) else value
    return Event(name[:MAX_VALUE], clean, duration)


class MetricsResource(resource.Resource):
    """``/metrics``: the exposition; everything else: 404."""

    isLeaf = True

    def __init__(self, state: StatsState):
        super().__init__()
        self.state = state

    def render_GET(self, request) -> bytes:
        if request.path not in (b"/metrics", b"/metrics/"):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"Not found\n"
        body = self.state.render()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return body

    def render_HEAD(self, request) -> bytes:
        return self.render_GET(request)
