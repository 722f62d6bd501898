"""A login process (imap-login, pop3-login): the glue around the protocols.

Started by the master as root with the service's listening sockets and its
master channel (fd 3).  Before it serves anyone it connects to authd's
auth-login socket, adopts the listeners, loads the TLS certificate, then
chroots to an empty directory, drops to the null user and sets
no_new_privs.  Run without root, it skips that and says so in the log.

Trusts: the master and authd.  Does not trust: anything from the network,
which only the protocol classes parse.  It never sees a password hash.
"""

from __future__ import annotations

import argparse

# Everything this process will ever import, before the chroot.
import encodings.idna  # noqa: F401
import itertools
import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from authd.protocol import AuthCancel, AuthContinue, AuthStart, MechList
from pydovecot import privileges
from pydovecot.channel import (
    MASTER_FD,
    ChannelAMP,
    adopt_channel,
    adopt_listener,
    run_child,
    stop_process,
)
from pydovecot.config import load_config
from pydovecot.login.imap import IMAPLoginFactory
from pydovecot.login.interfaces import AuthReply, ConnectionInfo, ILoginBackend, IRelay
from pydovecot.login.pop3 import POP3LoginFactory
from pydovecot.master.protocol import HandOff
from pydovecot.tls import channel_binding, client_cert_user, server_context_factory, tls_connection

log = Logger()

PROTOCOL_FACTORIES = {"imap": IMAPLoginFactory, "pop3": POP3LoginFactory}


class _RelayProtocol(Protocol):
    """The login process's end of a TLS relay socketpair."""

    def __init__(self, relay: TLSRelay):
        self.relay = relay

    def dataReceived(self, data: bytes) -> None:
        self.relay.client_transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.relay.mail_side_lost()


@implementer(IRelay)
class TLSRelay:
    """Moves plaintext between a client's TLS transport and a socketpair
    whose other end lives in the user's mail process."""

    def __init__(self, client_transport, sock: socket.socket):
        self.client_transport = client_transport
        self.closed = False
        self.protocol = _RelayProtocol(self)
        self.transport = reactor.adoptStreamConnection(
            sock.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: self.protocol))
        sock.close()

    def from_client(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def client_lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.loseConnection()

    def mail_side_lost(self) -> None:
        if not self.closed:
            self.closed = True
        self.client_transport.loseConnection()


@implementer(ILoginBackend)
class LoginBackend:
    """Connects login protocols to authd and the master."""

    def __init__(self, config, service: str, auth: amp.AMP, master: amp.AMP, tls_context):
        self.config = config
        self.service = service
        self.auth = auth
        self.master = master
        self.tls_context = tls_context
        self.tls_available = tls_context is not None
        self.disable_plaintext_auth = config.get_bool("disable_plaintext_auth")
        self.greeting = config.get("login_greeting")
        self._ids = itertools.count(1)
        self._exchanges: dict[str, int] = {}  # session id → authd request id

    def mechanisms(self, conn: ConnectionInfo):
        d = self.auth.callRemote(MechList, secured=conn.secured)
        # Channel binding (SCRAM-*-PLUS) needs a TLS session under us.
        bindable = self._tls_connection(conn) is not None
        d.addCallback(lambda r: [m for m in r["mechanisms"]
                                 if bindable or not m.upper().endswith("-PLUS")])
        return d

    @staticmethod
    def _tls_connection(conn: ConnectionInfo):
        if not conn.tls or conn.transport is None:
            return None
        return tls_connection(conn.transport)

    def _tls_auth_args(self, conn: ConnectionInfo) -> dict:
        """AuthStart's channel binding and client certificate arguments."""
        tls = self._tls_connection(conn)
        if tls is None:
            return {}
        args: dict = {}
        binding = channel_binding(tls)
        if binding is not None:
            args["channel_binding_type"], args["channel_binding"] = binding
        user, valid = client_cert_user(tls, self.config.get("ssl_cert_username_field"))
        if user:
            args["client_cert_user"], args["valid_client_cert"] = user, valid
        return args

    def auth_start(self, conn: ConnectionInfo, service: str, mechanism: str, initial):
        request_id = next(self._ids)
        self._exchanges[conn.session_id] = request_id
        kwargs = dict(
            id=request_id, mechanism=mechanism, service=service, secured=conn.secured,
            local_ip=conn.local_ip, local_port=conn.local_port, remote_ip=conn.remote_ip,
            remote_port=conn.remote_port, session=conn.session_id,
        )
        if initial is not None:
            kwargs["initial"] = initial
        kwargs.update(self._tls_auth_args(conn))
        return self._reply(conn, self.auth.callRemote(AuthStart, **kwargs))

    def auth_continue(self, conn: ConnectionInfo, response: bytes):
        request_id = self._exchanges.get(conn.session_id)
        if request_id is None:
            return defer.succeed(AuthReply("fail", reason="No authentication in progress."))
        return self._reply(conn, self.auth.callRemote(AuthContinue, id=request_id,
                                                      response=response))

    def auth_cancel(self, conn: ConnectionInfo) -> None:
        request_id = self._exchanges.pop(conn.session_id, None)
        if request_id is not None and self.auth.transport is not None:
            self.auth.callRemote(AuthCancel, id=request_id).addErrback(lambda _: None)

    def _reply(self, conn: ConnectionInfo, d):
        def done(result):
            reply = AuthReply(
                status=result["status"], challenge=result.get("challenge"),
                user=result.get("user"), cookie=result.get("cookie"),
                reason=result.get("reason"), temporary=bool(result.get("temporary")))
            if reply.status != "continue":
                self._exchanges.pop(conn.session_id, None)
            return reply

        def failed(failure):
            log.error("auth request failed: {error}", error=failure.getErrorMessage())
            self._exchanges.pop(conn.session_id, None)
            return AuthReply("fail", reason="Temporary authentication failure.", temporary=True)

        return d.addCallbacks(done, failed)

    def start_tls(self, protocol) -> None:
        protocol.transport.startTLS(self.tls_context)

    @defer.inlineCallbacks
    def handoff(self, protocol, conn: ConnectionInfo, reply: AuthReply, service: str,
                mechanism: str, tag, pending: bytes):
        transport = protocol.transport
        relay_sock = None
        if conn.tls:
            # A TLS session cannot change process: relay plaintext instead.
            relay_sock, mail_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fd = mail_end.fileno()
        else:
            mail_end = None
            fd = transport.getHandle().fileno()
        kwargs = dict(
            fd=fd, cookie=reply.cookie, service=service, pending=pending, mechanism=mechanism,
            session=conn.session_id, local_ip=conn.local_ip, local_port=conn.local_port,
            remote_ip=conn.remote_ip, remote_port=conn.remote_port, secured=conn.secured,
        )
        if tag is not None:
            kwargs["tag"] = tag
        try:
            result = yield self.master.callRemote(HandOff, **kwargs)
        except Exception:
            if relay_sock is not None:
                relay_sock.close()
                mail_end.close()
            raise
        self.log_login(conn, service, result["user"], mechanism, result["mpid"])
        if relay_sock is not None:
            mail_end.close()
            return TLSRelay(transport, relay_sock)
        # The fd lives on in the mail process: close our copy without the
        # shutdown() that would end the session there too.
        transport._shouldShutdown = False
        transport.loseConnection()
        return None

    def log_login(self, conn, service, user, mechanism, mpid) -> None:
        extra = ", TLS" if conn.tls else ""
        extra += ", secured" if conn.trusted and not conn.tls else ""
        log.info(
            "Login: user=<{user}>, method={method}, rip={rip}, lip={lip}, mpid={mpid}"
            "{extra}, session=<{session}>",
            user=user, method=mechanism, rip=conn.remote_ip, lip=conn.local_ip, mpid=mpid,
            extra=extra, session=conn.session_id)

    def log_disconnect(self, conn, service, reason, user, auth_attempts) -> None:
        who = f"user=<{user}>, " if user else ""
        extra = ", TLS" if conn.tls else ""
        log.info(
            "Disconnected ({reason}): {who}rip={rip}, lip={lip}{extra}, session=<{session}>",
            reason=reason, who=who, rip=conn.remote_ip, lip=conn.local_ip, extra=extra,
            session=conn.session_id)


def _keep_transport(factory) -> None:
    """Let each ConnectionInfo keep its transport (for the TLS session)."""
    build = factory.connection_info

    def connection_info(transport) -> ConnectionInfo:
        conn = build(transport)
        conn.transport = transport
        return conn

    factory.connection_info = connection_info


def parse_listener(spec: str) -> tuple[str, int, bool]:
    """``name:fd:ssl`` as the master passes it."""
    name, fd, ssl = spec.rsplit(":", 2)
    return name, int(fd), ssl == "1"


@defer.inlineCallbacks
def start(args) -> defer.Deferred:
    config = load_config(args.config)
    protocol_name = args.protocol
    base_dir = config.path_setting("base_dir")
    tls_context = server_context_factory(config)

    master = ChannelAMP(on_lost=lambda _: stop_process("master went away"))
    adopt_channel(MASTER_FD, master)

    auth = ChannelAMP(on_lost=lambda _: stop_process("lost the connection to authd"))
    endpoint = UNIXClientEndpoint(reactor, os.path.join(base_dir, "auth-login"), timeout=10)
    yield connectProtocol(endpoint, auth)

    backend = LoginBackend(config, protocol_name, auth, master, tls_context)
    factory_class = PROTOCOL_FACTORIES[protocol_name]
    trusted = config.get_list("login_trusted_networks")
    for spec in args.listener:
        name, fd, implicit_tls = parse_listener(spec)
        factory = factory_class(backend, implicit_tls, trusted_networks=trusted)
        _keep_transport(factory)
        if implicit_tls:
            if tls_context is None:
                log.error("listener {name} wants ssl but no ssl_cert/ssl_key is set", name=name)
                os.close(fd)
                continue
            factory = TLSMemoryBIOFactory(tls_context, False, factory)
        adopt_listener(fd, factory)

    if privileges.is_root():
        uid, gid = privileges.lookup_user(config.get("default_login_user"))
        chroot = args.chroot
        privileges.enter_chroot(chroot)
        privileges.drop_to(uid, gid)
        privileges.set_no_new_privs()
        log.debug("chrooted to {chroot}, running as uid {uid}", chroot=chroot, uid=uid)
    else:
        log.info("not started as root: running unchrooted as uid {uid}", uid=os.getuid())



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pydovecot-login")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--service", required=True)  # imap-login
    parser.add_argument("--protocol", required=True, choices=sorted(PROTOCOL_FACTORIES))
    parser.add_argument("--listener", action="append", default=[])
    parser.add_argument("--chroot", required=True)
    args = parser.parse_args(argv)
    run_child(args.service, lambda: start(args))


if __name__ == "__main__":
    main()
