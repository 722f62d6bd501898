"""The storage RPC over TCP with TLS: the ``storage-rpc`` service.

``service storage-rpc { inet_listener storage-rpc { port = 24242 } }``
makes the master run this process (unprivileged: ``default_internal_user``,
chrooted to the empty login directory, TLS keys loaded before).  It speaks
TLS with the instance's ``ssl_cert``/``ssl_key`` (client certificates with
``ssl_verify_client_cert``/``ssl_ca``, as for logins), reads the peer's
:class:`~pydovecot.storage.rpc.commands.Hello`, checks its secret against
``storage_rpc_secret`` (constant time), asks the master for a channel to
the owner's mail process (:class:`~pydovecot.master.protocol.RelayStorage`,
brokered as for a local peer) and from then on relays bytes both ways
with back-pressure.  It never reads a storage command itself, and never
holds another uid's privileges.

:func:`connect` is the other side: an :class:`RPCStorage` on a TLS
connection to such a service.

Trusts: a peer only once it proved the shared secret; it then names the
requesting user, which the owner's access hook judges.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401  (before the chroot)
import hmac
import os
import socket
from typing import Any

from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory

from pydovecot.channel import ChannelLocator
from pydovecot.log import sanitize
from pydovecot.master.protocol import DialStorage, RelayStorage, StorageRefused
from pydovecot.storage.rpc.client import ClientProtocol, adopt, hello
from pydovecot.storage.rpc.commands import Hello
from pydovecot.storage.rpc.wire import AccessDenied, StorageUnavailable, wire_failure
from pydovecot.tls import tls_connection

log = Logger()


class _Pipe(Protocol):
    """The channel to the owner's mail process, spliced to the peer."""

    def __init__(self, peer: RelayHello):
        self.peer = peer

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.peer.transport.write(data)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        if self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Spliced(amp.AMP):
    """AMP until :meth:`splice`, then a byte relay to a channel fd."""

    pipe: _Pipe | None = None

    def splice(self, fd: int) -> None:
        pipe = _Pipe(self)
        adopt(socket.socket(fileno=fd), pipe)
        self.pipe = pipe
        # back-pressure both ways
        self.transport.registerProducer(pipe.transport, True)
        pipe.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.pipe is not None:
            self.pipe.transport.write(data)
        else:
            super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        if self.pipe is not None and self.pipe.transport is not None:
            self.pipe.transport.loseConnection()
        super().connectionLost(reason)


class RelayHello(_Spliced):
    """One TCP peer: Hello (secret), then a byte relay to the channel."""

    def __init__(self, master: amp.AMP, secret: bytes, certificates: bool = False):
        super().__init__()
        self.master = master
        self.secret = secret
        self.certificates = certificates  # ssl_verify_client_cert: a verified cert will do

    def _peer_certificate(self) -> str | None:
        """The verified client certificate's subject CN, if any."""
        if not self.certificates:
            return None
        conn = tls_connection(self.transport)
        cert = conn.get_peer_certificate() if conn is not None else None
        if cert is None:
            return None
        return cert.get_subject().commonName or "?"

    @Hello.responder
    def hello(self, requester: str, owner: str, secret: bytes | None = None):
        peer_cert = self._peer_certificate()
        good_secret = bool(self.secret) and secret is not None and hmac.compare_digest(
            secret, self.secret)
        if peer_cert is not None and not good_secret:
            log.info("storage-rpc: peer {cn} proved by its client certificate",
                     cn=sanitize(peer_cert))
        elif not good_secret:
            log.warn("storage-rpc: a peer from {peer} gave a wrong secret",
                     peer=getattr(self.transport.getPeer(), "host", "?"))
            raise wire_failure(AccessDenied("Bad storage_rpc_secret"))
        d = self.master.callRemote(RelayStorage, requester=requester, owner=owner)

        def relay(answer: dict) -> dict:
            self.splice(answer["fd"])
            return {"user": answer["user"]}

        def refused(f: Any) -> Any:
            log.warn("storage-rpc: no channel to {owner}: {e}", owner=sanitize(owner),
                     e=sanitize(f.getErrorMessage()))
            raise wire_failure(StorageUnavailable("The storage is not available"))

        return d.addCallbacks(relay, refused)



class Dialer(ChannelLocator):
    """The master's commands to this process: DialStorage (outgoing)."""

    def __init__(self, secret: bytes, client_options: Any):
        self.secret = secret
        self.options = client_options

    @DialStorage.responder
    def dial(self, fd: int, host: str, port: int, tls_name: str, requester: str, owner: str):
        d = self._dial(fd, host, port, tls_name, requester, owner)

        def failed(f: Any) -> Any:
            os.close(fd)
            log.warn("storage-rpc: {host}:{port} for {user}: {e}", host=sanitize(host),
                     port=port, user=sanitize(requester), e=sanitize(f.getErrorMessage()))
            if f.check(AccessDenied):
                raise StorageRefused(f.getErrorMessage())
            raise RuntimeError("the remote storage is not reachable")

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _dial(self, fd, host, port, tls_name, requester, owner):
        options = self.options(tls_name)
        proto = _Spliced()
        yield connectProtocol(SSL4ClientEndpoint(reactor, host, port, options), proto)
        try:
            answer = yield proto.callRemote(Hello, requester=requester, owner=owner,
                                            secret=self.secret)
        except BaseException:
            proto.transport.loseConnection()
            raise
        proto.splice(fd)
        return {"user": answer["user"]}


def client_options(config: Any) -> Any:
    """``tls_name`` → client TLS options: trust ``ssl_client_ca_file`` (or
    the system's), present ``ssl_client_cert``/``ssl_client_key`` if set."""
    trust = None
    if config.get("ssl_client_ca_file"):
        with open(config.get("ssl_client_ca_file"), "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
    own = None
    if config.get("ssl_client_cert") and config.get("ssl_client_key"):
        own = ssl.PrivateCertificate.loadPEM(config.read_value("ssl_client_cert") + "\n"
                                             + config.read_value("ssl_client_key"))

    def options(tls_name: str) -> Any:
        return ssl.optionsForClientTLS(tls_name, trustRoot=trust, clientCertificate=own)

    return options


@defer.inlineCallbacks
def connect(host: str, port: int, secret: bytes, requester: str, owner: str,
            trust_pem: bytes | None = None, spool_dir: str | None = None,
            tls_name: str | None = None, client_pem: bytes | None = None):
    """Deferred[RPCStorage]: ``owner``'s storage at a storage-rpc service
    (``client_pem``: a certificate and key to present)."""
    trust = ssl.Certificate.loadPEM(trust_pem) if trust_pem else None
    own = ssl.PrivateCertificate.loadPEM(client_pem) if client_pem else None
    options = ssl.optionsForClientTLS(tls_name or host, trustRoot=trust, clientCertificate=own)
    proto = ClientProtocol()
    yield connectProtocol(SSL4ClientEndpoint(reactor, host, port, options), proto)
    storage = yield hello(proto, requester, owner, secret, spool_dir)
    return storage


@defer.inlineCallbacks
def _start(args: argparse.Namespace):
    from pydovecot import privileges
    from pydovecot.channel import MASTER_FD, ChannelAMP, adopt_channel, adopt_listener, stop_process
    from pydovecot.config import load_config
    from pydovecot.tls import server_context_factory

    config = load_config(args.config)
    secret = (config.get("storage_rpc_secret") or "").strip().encode()
    certificates = config.get("ssl_verify_client_cert") in ("yes", True) and bool(
        config.get("ssl_ca"))
    master = ChannelAMP(Dialer(secret, client_options(config)),
                        on_lost=lambda _: stop_process("master went away"))
    adopt_channel(MASTER_FD, master)
    if not secret and not certificates:
        log.error("storage_rpc_secret is empty and client certificates are not verified: "
                  "every storage-rpc peer is refused")
    tls = server_context_factory(config)
    if tls is None:
        raise RuntimeError("service storage-rpc needs ssl_cert and ssl_key (TLS only)")
    factory = TLSMemoryBIOFactory(tls, False, Factory.forProtocol(
        lambda: RelayHello(master, secret, certificates)))
    for spec in args.listener:
        _name, fd, _ssl = spec.rsplit(":", 2)
        adopt_listener(int(fd), factory)
    if privileges.is_root():
        uid, gid = privileges.lookup_user(config.get("default_internal_user"))
        privileges.enter_chroot(args.chroot)
        privileges.drop_to(uid, gid)
        privileges.set_no_new_privs()
    yield None


def main(argv: list[str] | None = None) -> None:
    from pydovecot.channel import run_child

    parser = argparse.ArgumentParser(prog="pydovecot-storage-rpc")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--listener", action="append", default=[])
    parser.add_argument("--chroot", required=True)
    args = parser.parse_args(argv)
    os.umask(0o077)
    run_child("storage-rpc", lambda: _start(args))


if __name__ == "__main__":
    main()
