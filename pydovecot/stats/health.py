"""Dovecot's health check: ``service health-check { inet_listener
health-check { port } }`` answers ``PONG`` to a ``PING`` line, as
Dovecot's ``health-check.sh`` (run by its script service) does.

Served by the unprivileged stats process.  A client gets one line of at
most :data:`MAX_LINE` bytes and :data:`TIMEOUT` seconds to send it; the
line is cleaned to letters and digits as the script does; anything but
``PING`` gets no answer.  The connection is closed after the line.

Trusts: nothing the client sends.
"""

from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

MAX_LINE = 1024
#: health-check.sh's own timeout.
TIMEOUT = 10.0
_NOT_ALNUM = re.compile(rb"[^a-zA-Z0-9]")


class HealthCheck(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, clock=None):
        self.clock = clock if clock is not None else reactor
        self._timer = None

    def connectionMade(self) -> None:
        self._timer = self.clock.callLater(TIMEOUT, self.transport.loseConnection)

    def lineReceived(self, line: bytes) -> None:
        if _NOT_ALNUM.sub(b"", line) == b"PING":
            self.transport.write(b"PONG\n")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class HealthCheckFactory(Factory):
    noisy = False

    def __init__(self, clock=None):
        self.clock = clock

    def buildProtocol(self, addr):
        protocol = HealthCheck(self.clock)
        protocol.factory = self
        return protocol
