"""Serve authd's AMP factories on UNIX sockets in trial, and talk to them."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.protocols import amp

from authd.server import build_factories


@defer.inlineCallbacks
def serve_authd(testcase, settings, engine, directory: str):
    """Listen on every authd socket under ``directory`` and connect one AMP
    client to each; ``{socket name: client}``.  Cleanup is registered on
    ``testcase``."""
    clients = {}
    for name, factory in build_factories(settings, engine).items():
        path = os.path.join(directory, name)
        port = reactor.listenUNIX(path, factory)
        testcase.addCleanup(port.stopListening)
        proto = yield connectProtocol(UNIXClientEndpoint(reactor, path), amp.AMP())
        testcase.addCleanup(proto.transport.loseConnection)
        clients[name] = proto
    return clients


def start_args(initial: bytes | None, mech: str = "PLAIN", **kw) -> dict:
    """AuthStart arguments for a secured loopback IMAP connection."""
    args = dict(
        id=1,
        mechanism=mech,
        service="imap",
        secured=True,
        local_ip="127.0.0.1",
        local_port=143,
        remote_ip="127.0.0.1",
        remote_port=50000,
        session="sess1",
    )
    if initial is not None:
        args["initial"] = initial
    args.update(kw)
    return args
