"""The AMP channel a child shares with the master (fd 3, a socketpair).

Both ends are local and made by the master at spawn time; the child trusts
the master completely, the master trusts the child only as far as its role.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols import amp

MASTER_FD = 3


class ChannelAMP(amp.AMP):
    """AMP over a socketpair, with a hook for when the other side goes."""

    def __init__(self, locator=None, on_lost=None):
        super().__init__(locator=locator)
        self.on_lost = on_lost

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.on_lost is not None:
            self.on_lost(reason)


def adopt_channel(fd: int, protocol: amp.AMP):
    """Adopt a connected AF_UNIX socket ``fd`` as ``protocol``'s transport.

    The fd is closed here (the reactor keeps its own duplicate).
    """
    factory = Factory.forProtocol(lambda: protocol)
    transport = reactor.adoptStreamConnection(fd, socket.AF_UNIX, factory)
    os.close(fd)
    return transport
