"""A login process (imap-login, pop3-login, managesieve-login): the glue around the protocols.

Started by the master as root with the service's listening sockets and its
master channel (fd 3).  Before it serves anyone it connects to authd's
auth-login socket, adopts the listeners, loads the TLS certificate, then
chroots to an empty directory, drops to the null user and sets
no_new_privs.  Run without root, it skips that and says so in the log.

authd may go away and come back (the master restarts it): the
:class:`AuthLink` reconnects, relayed TLS sessions never notice, and a
login that finds no authd answering within ``login_auth_timeout`` gets a
temporary failure (``NO [UNAVAILABLE]``), never a hang.  A TLS relay moves
plaintext under back-pressure both ways, so neither a client that stops
reading nor a mail process that stops reading grows this process.

Trusts: the master and authd.  Does not trust: anything from the network,
which only the protocol classes parse; every client value it logs goes
through :func:`pydovecot.log.sanitize`.  It never sees a password hash.
"""

from __future__ import annotations

import argparse

# Everything this process will ever import, before the chroot.
import encodings.idna  # noqa: F401
import itertools
import os
import socket

import setproctitle
from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from authd.protocol import AuthCancel, AuthContinue, AuthStart, MechList
from pydovecot import channel, privileges
from pydovecot.channel import (
    MASTER_FD,
    ChannelAMP,
    adopt_channel,
    adopt_listener,
    run_child,
    stop_process,
)
from pydovecot.config import load_config
from pydovecot.config.variables import expand
from pydovecot.log import sanitize
from pydovecot.login.common import ClientRegistry
from pydovecot.login.haproxy import HAProxyFactory, unwrap_transport
from pydovecot.login.imap import IMAPLoginFactory
from pydovecot.login.interfaces import AuthReply, ConnectionInfo, ILoginBackend, IRelay
from pydovecot.login.managesieve import ManageSieveLoginFactory
from pydovecot.login.pop3 import POP3LoginFactory
from pydovecot.login.submission import SubmissionLoginFactory
from pydovecot.master.children import ServiceRetire
from pydovecot.master.protocol import HandOff
from pydovecot.tls import channel_binding, client_cert_user, server_context_factory, tls_connection

log = Logger()

PROTOCOL_FACTORIES = {"imap": IMAPLoginFactory, "pop3": POP3LoginFactory,
                      "sieve": ManageSieveLoginFactory,
                      "submission": SubmissionLoginFactory}


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
    whose other end lives in the user's mail process.

    Each transport is the other's producer: when the client's TLS output
    is above its buffer size, the socketpair is not read, and when the
    socketpair's output is, the client is not read.  So what sits in this
    process per session is bounded by the transports' buffer sizes plus
    one read, whatever either end does."""

    def __init__(self, client_transport, sock: socket.socket):
        self.client_transport = client_transport
        self.closed = False
        self.protocol = _RelayProtocol(self)
        self.transport = reactor.adoptStreamConnection(
            sock.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: self.protocol))
        sock.close()
        client_transport.registerProducer(self.transport, True)
        self.transport.registerProducer(client_transport, True)

    def from_client(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def _unregister(self) -> None:
        # A registered (maybe paused) producer would hold a close back.
        for consumer in (self.client_transport, self.transport):
            try:
                consumer.unregisterProducer()
            except Exception:  # already gone
                pass

    def client_lost(self) -> None:
        if not self.closed:
            self.closed = True
            self._unregister()
            self.transport.loseConnection()

    def mail_side_lost(self) -> None:
        if not self.closed:
            self.closed = True
            self._unregister()
        self.client_transport.loseConnection()


class AuthUnavailable(Exception):
    """authd did not answer within login_auth_timeout."""


class AuthLink:
    """The login process's connection to authd's auth-login socket.

    Reconnects whenever it is lost (authd crashed or was restarted).  After
    the chroot, ``path`` is the link the master keeps in it (the master
    owns the listening socket, so a new connection waits in its backlog
    until the next authd accepts it).  :meth:`call` gives every
    request ``timeout`` seconds, waiting for a connection included, and
    then fails it with :class:`AuthUnavailable`; a late answer is dropped.
    """

    MIN_RETRY = 0.05
    MAX_RETRY = 0.5

    def __init__(self, path: str, timeout: float, clock=None):
        self.path = path
        self.timeout = timeout
        self.clock = clock if clock is not None else reactor
        self.amp: ChannelAMP | None = None
        self._waiters: list[defer.Deferred] = []
        self._connecting = False
        self._retry = self.MIN_RETRY
        self.stopped = False

    def connect(self) -> defer.Deferred:
        """Deferred firing once the first connection is up."""
        d = self._wait()
        self._connect()
        return d

    def _connect(self) -> None:
        if self._connecting or self.amp is not None or self.stopped:
            return
        self._connecting = True
        proto = ChannelAMP()
        proto.on_lost = lambda _reason: self._lost(proto)
        endpoint = UNIXClientEndpoint(reactor, self.path, timeout=5)
        connectProtocol(endpoint, proto).addCallbacks(self._connected, self._failed)

    def _connected(self, proto: ChannelAMP) -> None:
        self._connecting = False
        if proto.transport is None or getattr(proto.transport, "disconnected", False):
            self._schedule()  # gone again before we saw it
            return
        self.amp = proto
        self._retry = self.MIN_RETRY
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(proto)

    def _failed(self, failure) -> None:
        self._connecting = False
        log.warn("cannot connect to authd ({path}): {error}; retrying", path=self.path,
                 error=failure.getErrorMessage())
        self._schedule()

    def _lost(self, proto: ChannelAMP) -> None:
        if self.amp is not proto:
            return
        self.amp = None
        if not self.stopped:
            log.warn("lost the connection to authd; reconnecting")
            self._schedule()

    def _schedule(self) -> None:
        delay, self._retry = self._retry, min(self._retry * 2, self.MAX_RETRY)
        self.clock.callLater(delay, self._connect)

    def _wait(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self.amp is not None:
            d.callback(self.amp)
        else:
            self._waiters.append(d)
        return d

    @property
    def connected(self) -> bool:
        return self.amp is not None and self.amp.transport is not None

    def call(self, command, **kwargs) -> defer.Deferred:
        """callRemote on authd, failing with AuthUnavailable after timeout."""
        result: defer.Deferred = defer.Deferred()

        def expire() -> None:
            if not result.called:
                result.errback(AuthUnavailable(
                    f"authd did not answer within {self.timeout:g} s"))

        timer = self.clock.callLater(self.timeout, expire)

        def answered(value):
            if timer.active():
                timer.cancel()
            if not result.called:
                if isinstance(value, Failure):
                    result.errback(value)
                else:
                    result.callback(value)

        def send(proto: ChannelAMP):
            return proto.callRemote(command, **kwargs)

        self._wait().addCallback(send).addBoth(answered)
        return result

    def send_only(self, command, **kwargs) -> None:
        """Fire and forget (AuthCancel), only on a live connection."""
        if self.connected:
            self.amp.callRemote(command, **kwargs).addErrback(lambda _: None)


@implementer(ILoginBackend)
class LoginBackend:
    """Connects login protocols to authd and the master."""

    def __init__(self, config, service: str, auth: AuthLink, master: amp.AMP, tls_context):
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
        self._mechs: dict[bool, list[str]] = {}  # authd's MechList, by secured

    def _mech_list(self, secured: bool) -> defer.Deferred:
        """authd's mechanisms, asked once (they change only with the config,
        which restarts this process); while authd is down, the configured
        auth_mechanisms."""
        if secured in self._mechs:
            return defer.succeed(self._mechs[secured])

        def got(result) -> list[str]:
            self._mechs[secured] = list(result["mechanisms"])
            return self._mechs[secured]

        def failed(failure) -> list[str]:
            log.warn("authd gave no mechanism list: {error}", error=failure.getErrorMessage())
            return [m.upper() for m in self.config.get_list("auth_mechanisms")]

        return self.auth.call(MechList, secured=secured).addCallbacks(got, failed)

    def mechanisms(self, conn: ConnectionInfo):
        d = self._mech_list(conn.secured)
        # Channel binding (SCRAM-*-PLUS) needs a TLS session under us.
        bindable = self._tls_connection(conn) is not None
        d.addCallback(lambda mechs: [m for m in mechs
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
        return self._reply(conn, self.auth.call(AuthStart, **kwargs))

    def auth_continue(self, conn: ConnectionInfo, response: bytes):
        request_id = self._exchanges.get(conn.session_id)
        if request_id is None:
            return defer.succeed(AuthReply("fail", reason="No authentication in progress."))
        return self._reply(conn, self.auth.call(AuthContinue, id=request_id,
                                                response=response))

    def auth_cancel(self, conn: ConnectionInfo) -> None:
        request_id = self._exchanges.pop(conn.session_id, None)
        if request_id is not None:
            self.auth.send_only(AuthCancel, id=request_id)

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
            log.error("auth request failed: {error}, session=<{session}>",
                      error=sanitize(failure.getErrorMessage()), session=conn.session_id)
            request_id = self._exchanges.pop(conn.session_id, None)
            if request_id is not None and failure.check(AuthUnavailable):
                self.auth.send_only(AuthCancel, id=request_id)
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
            transport = unwrap_transport(transport)  # under a PROXY wrapper
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
        log.info("{line}", line=self.login_log_line("Login", conn, service, user, mechanism,
                                                    mpid))

    def log_disconnect(self, conn, service, reason, user, auth_attempts) -> None:
        log.info("{line}", line=self.login_log_line(f"Disconnected ({sanitize(reason)})", conn,
                                                    service, user))

    def login_log_line(self, message: str, conn, service: str, user, mechanism: str = "",
                       mpid=None) -> str:
        """``login_log_format`` (``%$: %s``) over ``login_log_format_elements``
        as Dovecot's login processes build it: the elements expanded and
        joined by ", ", an element whose variables are all empty left out
        unless it names the user (``user=<>`` stays)."""
        values = {
            "user": sanitize(user) if user else "", "mech": sanitize(mechanism or "", 32),
            "rip": conn.remote_ip, "lip": conn.local_ip, "rport": str(conn.remote_port or ""),
            "lport": str(conn.local_port or ""), "mail_pid": str(mpid or ""),
            "secured": "TLS" if conn.tls else ("secured" if conn.secured else ""),
            "ssl_security": "", "session": conn.session_id, "service": service,
            "real_rip": conn.remote_ip, "real_lip": conn.local_ip, "orig_user": "",
            "original_user": sanitize(user) if user else "", "auth_user": "", "login_user": "",
        }
        empty = dict.fromkeys(values, "")
        parts = []
        for element in self.config.get("login_log_format_elements").split():
            try:
                text = expand(element, values)
                blank = expand(element, empty)
            except ValueError:
                text = blank = element
            if text == blank and "%" in element and not _names_user(element):
                continue
            parts.append(text)
        try:
            return expand(self.config.get("login_log_format"),
                          {"$": message, "s": ", ".join(parts)})
        except ValueError:
            return f"{message}: {', '.join(parts)}"


def _names_user(element: str) -> bool:
    """Dovecot's have_username_key: %u, %n, %{user}, %{username}."""
    return any(key in element for key in ("%u", "%n", "%{user}", "%{username}", "%Lu", "%Ln"))


def verbose_title(service: str, prelogin: int, tls_proxies: int) -> str:
    """The process title under ``verbose_proctitle``, as Dovecot's login
    processes show it: ``[2 pre-login + 1 TLS proxies]``."""
    extra = f" + {tls_proxies} TLS proxies" if tls_proxies else ""
    return f"pydovecot/{service} [{prelogin} pre-login{extra}]"


class ServiceCount:
    """``service_count``: after that many connections this process stops
    accepting, asks the master for its successor (ServiceRetire) and exits
    once its last connection (a TLS relay included) is gone.  With 1 each
    client gets a login process of its own (Dovecot's high-security mode)."""

    def __init__(self, limit: int, master: amp.AMP):
        self.limit = limit
        self.master = master
        self.ports: list = []
        self.served = 0
        self.active = 0
        self.retired = False

    def count(self, factory) -> None:
        """Count the connections ``factory`` (a listener's outermost) builds."""
        build = factory.buildProtocol

        def buildProtocol(addr):
            if self.retired:
                return None
            proto = build(addr)
            if proto is None:
                return None
            self.active += 1
            self.served += 1
            lost = proto.connectionLost

            def connectionLost(reason=None):
                try:
                    lost(reason)
                finally:
                    self.active -= 1
                    self._check()

            proto.connectionLost = connectionLost
            if self.served >= self.limit:
                self._retire()
            return proto

        factory.buildProtocol = buildProtocol

    def _retire(self) -> None:
        self.retired = True
        for port in self.ports:
            port.stopListening()
        self.master.callRemote(ServiceRetire).addErrback(
            lambda f: log.warn("service_count: the master did not answer: {e}",
                               e=f.getErrorMessage()))

    def _check(self) -> None:
        if self.retired and self.active <= 0 and reactor.running:
            log.debug("service_count={n} reached and served; exiting", n=self.limit)
            channel._stopping = True  # an expected end: no "master went away"
            reactor.callLater(0, reactor.stop)


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

    auth = AuthLink(os.path.join(base_dir, "auth-login"), config.get_time("login_auth_timeout"))
    yield auth.connect()

    backend = LoginBackend(config, protocol_name, auth, master, tls_context)
    factory_class = PROTOCOL_FACTORIES[protocol_name]
    trusted = config.get_list("login_trusted_networks")
    service = config.services.get(args.service)
    registry = ClientRegistry(
        client_limit=service.client_limit if service is not None else 0,
        max_ip_connections=config.get_int("login_max_ip_connections"),
        exempt_networks=trusted)
    counter = ServiceCount(service.service_count, master) if (
        service is not None and service.service_count) else None
    if config.get_bool("verbose_proctitle"):
        registry.on_change = lambda reg: setproctitle.setproctitle(
            verbose_title(args.service, *reg.counts))
        registry.on_change(registry)
    limits = dict(login_timeout=config.get_time("login_timeout"),
                  max_inbuf=config.get_size("login_max_inbuf_size"), registry=registry)
    for spec in args.listener:
        name, fd, implicit_tls = parse_listener(spec)
        factory = factory_class(backend, implicit_tls, trusted_networks=trusted, **limits)
        factory.config = config  # managesieve-login's capability settings
        _keep_transport(factory)
        if implicit_tls:
            if tls_context is None:
                log.error("listener {name} wants ssl but no ssl_cert/ssl_key is set", name=name)
                os.close(fd)
                continue
            factory = TLSMemoryBIOFactory(tls_context, False, factory)
        listener = service.inet_listeners.get(name) if service is not None else None
        if listener is not None and listener.haproxy:
            # The PROXY header comes before anything else, TLS included.
            factory = HAProxyFactory(factory, config.get_list("haproxy_trusted_networks"),
                                     timeout=config.get_time("haproxy_timeout"))
        if counter is not None:
            counter.count(factory)
        port = adopt_listener(fd, factory)
        if counter is not None:
            counter.ports.append(port)

    if privileges.is_root():
        uid, gid = privileges.lookup_user(config.get("default_login_user"))
        chroot = args.chroot
        privileges.enter_chroot(chroot)
        auth.path = "/auth-login"  # the master's link to the socket, in the chroot
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
