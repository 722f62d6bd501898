"""The AMP channel a child shares with the master (fd 3, a socketpair).

Both ends are local and made by the master at spawn time; the child trusts
the master completely, the master trusts the child only as far as its role.
"""

from __future__ import annotations

import os
import socket
import stat

from twisted.internet import reactor, tcp, unix
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from pydovecot.stats import events

MASTER_FD = 3

log = Logger()
_stopping = False


class ChannelLocator(amp.CommandLocator):
    """A responder object for a :class:`ChannelAMP`.

    AMP resolves ``amp.Descriptor`` arguments through the responder object,
    so a locator that receives file descriptors borrows its channel's.
    """

    channel: amp.AMP | None = None

    def _getDescriptor(self, number: int) -> int:
        return self.channel._getDescriptor(number)


class ChannelAMP(amp.AMP):
    """AMP over a socketpair, with a hook for when the other side goes."""

    def __init__(self, locator=None, on_lost=None):
        super().__init__(locator=locator)
        self.on_lost = on_lost
        if isinstance(locator, ChannelLocator):
            locator.channel = self

    def connectionLost(self, reason):
        # The owner hears first, then the pending commands fail: a caller
        # whose command fails here already sees this channel gone (the
        # master's pool then never picks a dead mail process again).
        try:
            if self.on_lost is not None:
                self.on_lost(reason)
        finally:
            super().connectionLost(reason)


def adopt_channel(fd: int, protocol: amp.AMP):
    """Adopt a connected AF_UNIX socket ``fd`` as ``protocol``'s transport.

    The fd is closed here (the reactor keeps its own duplicate).  For the
    master's channel (``MASTER_FD``) the process's events
    (pydovecot.stats.events) go over it from then on.
    """
    factory = Factory.forProtocol(lambda: protocol)
    transport = reactor.adoptStreamConnection(fd, socket.AF_UNIX, factory)
    os.close(fd)
    if fd == MASTER_FD:
        events.attach(protocol)
    return transport


def adopt_listener(fd: int, factory):
    """Serve ``factory`` on an inherited listening socket, then close ``fd``.

    The socket is shared with the master and this process's successors, so
    closing it here must not shutdown() it.  A UNIX socket keeps the mode the
    master gave it (Twisted would chmod it to 0666) and is not unlinked when
    this process stops.
    """
    sock = socket.socket(fileno=fd)
    try:
        if sock.family != socket.AF_UNIX:
            port = tcp.Port._fromListeningDescriptor(reactor, sock.fileno(), sock.family,
                                                     factory)
        else:
            path = sock.getsockname()
            port = unix.Port._fromListeningDescriptor(reactor, sock.fileno(), factory)
            port.mode = stat.S_IMODE(os.stat(path).st_mode)
            port.connectionLost = lambda reason: tcp.Port.connectionLost(port, reason)
        port._shouldShutdown = False
        port.startListening()
        return port
    finally:
        sock.close()


def stop_process(why: str) -> None:
    """Stop this child's reactor once, saying why (master or authd gone…)."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    log.warn("stopping: {why}", why=why)
    if reactor.running:
        reactor.callLater(0, reactor.stop)


def run_child(role: str, start) -> None:
    """Run a child process's reactor: log as ``role``, title it, call
    ``start()`` (returning a Deferred) once running, stop on SIGTERM."""
    import signal
    import sys

    import setproctitle

    from pydovecot.log import start_child_logging

    start_child_logging(role)
    setproctitle.setproctitle(f"pydovecot/{role}")

    def failed(failure):
        log.failure("{role} failed to start", failure, role=role)
        stop_process("start failed")

    reactor.callWhenRunning(lambda: start().addErrback(failed))
    signal.signal(signal.SIGTERM,
                  lambda *_: reactor.callFromThread(stop_process, "SIGTERM from the master"))
    reactor.run(installSignalHandlers=False)
    sys.exit(0)
