"""AMP commands that carry events and gauges to the stats process.

- any child → master: :class:`StatsEvents` (a batch of its events);
- master → stats process: :class:`ForwardEvents` (a child's batch, with
  the service and pid the master knows it by) and :class:`ProcessGauges`.

A batch is newline-separated JSON arrays ``[name, duration_us, {fields}]``
and stays below :data:`MAX_BATCH` bytes (AMP caps a value at 64 KiB).  The
master does not parse batches: the unprivileged stats process does, and
trusts nothing in them but their shape.
"""

from __future__ import annotations

from twisted.protocols import amp

#: Largest batch value, well inside AMP's 65,535-byte value limit.
MAX_BATCH = 60000


class StatsRefused(Exception):
    """The receiver could not take the batch (it is dropped and counted)."""


class StatsEvents(amp.Command):
    """A child's events for the stats process.  ``dropped``: events it lost
    (queue full) since its last batch.  ``wanted`` is false when no stats
    process runs: the child then stops sending."""

    arguments = [(b"batch", amp.String()), (b"dropped", amp.Integer())]
    response = [(b"wanted", amp.Boolean())]
    errors = {StatsRefused: b"STATS_REFUSED"}


class ForwardEvents(amp.Command):
    """The master hands the stats process one child's batch."""

    arguments = [
        (b"service", amp.Unicode()),  # the child's role, as the master knows it
        (b"pid", amp.Integer()),
        (b"batch", amp.String()),
        (b"dropped", amp.Integer()),
    ]
    response: list = []
    errors = {StatsRefused: b"STATS_REFUSED"}


class ProcessGauges(amp.Command):
    """The master's own gauges (JSON object; see pydovecot.stats.relay)."""

    arguments = [(b"gauges", amp.String())]
    response: list = []
    errors = {StatsRefused: b"STATS_REFUSED"}
