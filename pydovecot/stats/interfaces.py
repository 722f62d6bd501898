"""Interfaces of the statistics pieces (implementations are checked with
zope.interface's verifyObject in tests/test_stats_metrics.py)."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IEventEmitter(Interface):
    """A process's event queue (pydovecot.stats.events.Emitter)."""

    dropped = Attribute("events lost (queue full) not reported yet")

    def attach(channel):
        """Send batches over ``channel``, an AMP protocol to the master."""

    def emit(name, duration=None, **fields):
        """Queue one event; ``duration`` in seconds; never blocks or raises."""

    def flush():
        """Send what is queued, within the in-flight bound."""


class IStatsSink(Interface):
    """What the stats process feeds (pydovecot.stats.http.StatsState)."""

    def add_batch(service, batch, dropped=0):
        """Count a forwarded batch from ``service``; the number of events taken."""

    def set_gauges(gauges):
        """Replace the master's gauges (a dict)."""

    def render():
        """The OpenMetrics page, bytes."""
