"""Shared machinery of the pre-auth login protocols (imap-login, pop3-login).

Provides Dovecot-style session ids, :class:`ConnectionInfo` built from a
transport, :class:`ClientRegistry` (per-process ``client_limit`` and the
per-IP cap on pre-login connections) and :class:`LoginProtocol`: the base
class that frames input (bounded lines, one command at a time), counts bad
commands and auth attempts, enforces the login timeout (counted from
connect), runs SASL exchanges against the
:class:`~pydovecot.login.interfaces.ILoginBackend` and does the handoff
dance (pause, hand the connection over, then relay or go quiet).

Input bounds, as Dovecot's login processes have them: one command (with
its literals) is at most ``max_line`` bytes, and an over-long one is
skipped whole, literals included, then answered; while a command or the
auth delay is pending, input is still read and kept (a pipeline after
LOGIN goes with the hand-off), but a client whose pending input exceeds
``max(max_line, max_inbuf)`` is told ``Input buffer full, aborting`` and
disconnected, as Dovecot's login processes do when their input buffer
fills.  Reading on (rather than pausing) makes that answer certain: a
paused socket would leave a flood unseen in the kernel until the login
timeout.

Trusts: the backend (the login process around it) and its replies.  Trusts
nothing the client sends: every byte is bounded and parsed defensively, and
no exception from a handler ever reaches the client as a traceback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import time
from collections.abc import Iterable
from enum import Enum

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydovecot.log import sanitize
from pydovecot.login.interfaces import AuthReply, ConnectionInfo, ILoginBackend, IRelay
from pydovecot.master.protocol import LimitExceeded
from pydovecot.stats import events

log = Logger()

#: SASL mechanisms that send the password in the clear.
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN"})

#: Dovecot's LOGIN_MAX_SESSION_ID_LEN, for forwarded session ids.
MAX_SESSION_ID = 64
#: What a forwarded session id may hold (it lands in every log line).
SESSION_ID_CHARS = re.compile(r"^[\x21-\x7e]+$")

#: Returned by :meth:`LoginProtocol.process_command` when more input is needed.
NEED_MORE = object()


def new_session_id() -> str:
    """A Dovecot-style session id: 16 base64 characters of 12 random bytes."""
    return base64.b64encode(os.urandom(12)).decode("ascii")


def parse_networks(networks: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Parse ``login_trusted_networks`` entries (``10.0.0.0/8``, ``::1``)."""
    return [ipaddress.ip_network(n, strict=False) for n in networks if n]


def is_trusted(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True for loopback addresses and addresses inside ``networks``."""
    addr = _address(ip)
    if addr is None:
        return False
    if addr.is_loopback:
        return True
    return any(addr.version == net.version and addr in net for net in networks)


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr


def connection_info(transport, networks: Iterable = (), tls: bool = False,
                    session_id: str | None = None) -> ConnectionInfo:
    """Build a :class:`ConnectionInfo` from a connected transport.

    Non-IP (UNIX socket) connections are local and count as trusted.
    """
    host, peer = transport.getHost(), transport.getPeer()
    local_ip, local_port = getattr(host, "host", ""), getattr(host, "port", 0)
    remote_ip, remote_port = getattr(peer, "host", ""), getattr(peer, "port", 0)
    trusted = is_trusted(remote_ip, networks) if remote_ip else True
    # A trusted proxy's PROXY v2 SSL TLV: the client used TLS up to the proxy.
    trusted = trusted or getattr(transport, "proxied_ssl", False) is True
    return ConnectionInfo(
        local_ip=local_ip, local_port=local_port, remote_ip=remote_ip,
        remote_port=remote_port, session_id=session_id or new_session_id(),
        tls=tls, trusted=trusted,
    )


def decode_sasl(data: bytes) -> bytes | None:
    """Decode a client's base64 SASL response; ``=`` is empty; None if invalid."""
    data = data.strip()
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


class State(Enum):
    GREETING = "greeting"  # waiting for the mechanism list
    ACTIVE = "active"  # reading pre-auth commands
    HANDOFF = "handoff"  # paused, the backend is handing the connection over
    RELAY = "relay"  # TLS: forwarding to the mail process
    GONE = "gone"  # the fd left this process, or we are closing


class TooLong:
    """Marker for a line that exceeded the limit; ``head`` is its start."""

    def __init__(self, head: bytes):
        self.head = head


class ClientRegistry:
    """The clients of one login process, for its limits.

    ``client_limit`` counts every connection the process holds, pre-login
    and relayed TLS sessions alike (Dovecot's login processes count their
    SSL proxies too).  When it is reached, the oldest pre-login client is
    disconnected with "Connection queue full" to make room, as Dovecot's
    ``client_destroy_oldest`` does; with no pre-login client to spare, the
    new one is refused.  ``max_ip_connections`` caps the pre-login
    connections from one remote IP (0: no cap); trusted networks are exempt.
    """

    def __init__(self, client_limit: int = 0, max_ip_connections: int = 0,
                 exempt_networks: Iterable[str] = ()):
        self.client_limit = client_limit
        self.max_ip_connections = max_ip_connections
        self.exempt = parse_networks(exempt_networks)
        self.clients: dict[LoginProtocol, None] = {}  # in connect order
        self.preauth_by_ip: dict[str, int] = {}
        #: Pre-login clients and the IP they were counted under (a trusted
        #: proxy's ID/XCLIENT may change ``conn.remote_ip`` later).
        self._preauth: dict[LoginProtocol, str] = {}
        #: Called after every change (verbose_proctitle's counts).
        self.on_change = None

    @property
    def counts(self) -> tuple[int, int]:
        """(pre-login clients, relayed TLS sessions)."""
        return len(self._preauth), len(self.clients) - len(self._preauth)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def admit(self, protocol: LoginProtocol) -> str | None:
        """Register a new client; the reason it is refused, or None."""
        ip = protocol.conn.remote_ip
        if (self.max_ip_connections and ip
                and self.preauth_by_ip.get(ip, 0) >= self.max_ip_connections
                and not any(_in_network(ip, n) for n in self.exempt)):
            return "ip"
        if self.client_limit and len(self.clients) >= self.client_limit:
            oldest = next((c for c in self.clients if c in self._preauth), None)
            if oldest is None:
                return "full"
            oldest.disconnect_queue_full()
            self.remove(oldest)
        self.clients[protocol] = None
        self._preauth[protocol] = ip
        if ip:
            self.preauth_by_ip[ip] = self.preauth_by_ip.get(ip, 0) + 1
        self._changed()
        return None

    def logged_in(self, protocol: LoginProtocol) -> None:
        """The client left the pre-login state (it may still be relayed)."""
        if protocol in self._preauth:
            ip = self._preauth.pop(protocol)
            left = self.preauth_by_ip.get(ip, 0) - 1
            if left > 0:
                self.preauth_by_ip[ip] = left
            else:
                self.preauth_by_ip.pop(ip, None)
            self._changed()

    def remove(self, protocol: LoginProtocol) -> None:
        """The client is gone from this process."""
        self.logged_in(protocol)
        if self.clients.pop(protocol, 0) is None:
            self._changed()


def _in_network(ip: str, net) -> bool:
    addr = _address(ip)
    return addr is not None and addr.version == net.version and addr in net


class LoginFactory(Factory):
    """Factory base: holds the backend and connection-wide settings.

    ``login_timeout`` (seconds from connect to login), ``max_inbuf``
    (unprocessed bytes kept while a command runs) and ``registry`` (the
    process-wide :class:`ClientRegistry`, shared by all its listeners)
    default to Dovecot's built-in values and no limits.
    """

    protocol: type[LoginProtocol]

    def __init__(self, backend: ILoginBackend, implicit_tls: bool = False,
                 trusted_networks: Iterable[str] = (), clock: IReactorTime | None = None,
                 login_timeout: float | None = None, max_inbuf: int | None = None,
                 registry: ClientRegistry | None = None):
        from twisted.internet import reactor

        self.backend = backend
        self.implicit_tls = implicit_tls
        self.trusted_networks = parse_networks(trusted_networks)
        self.clock = clock if clock is not None else reactor
        self.login_timeout = login_timeout
        self.max_inbuf = max_inbuf
        self.registry = registry if registry is not None else ClientRegistry()

    def connection_info(self, transport) -> ConnectionInfo:
        """The :class:`ConnectionInfo` of a new connection."""
        return connection_info(transport, self.trusted_networks, tls=self.implicit_tls)


class LoginProtocol(Protocol):
    """Base of the pre-auth protocols; subclasses speak the grammar.

    Subclasses implement :meth:`send_greeting`, :meth:`process_command`
    and the reply hooks (``reply_*``).  Input is only parsed while no
    command is running, so replies come out in order.
    """

    service = "login"
    max_line = 8192  # one command, literals included
    max_inbuf = 1024  # unprocessed input kept while a command runs (Dovecot's)
    max_bad_commands = 10
    max_auth_attempts = 3
    login_timeout = 180.0  # from connect (Dovecot's CLIENT_LOGIN_TIMEOUT)

    factory: LoginFactory
    conn: ConnectionInfo

    def __init__(self) -> None:
        self._buffer = b""
        self._skipping: bytes | None = None  # head of an over-long line
        self._skip_literal = 0  # literal bytes of that line still to drop
        self._skip_tail = b""  # the end of its current line, for {N+}
        self._input_paused = False  # reading stopped: max_inbuf reached
        self._pending_too_long: TooLong | None = None  # it ended: answer it
        self._busy = False
        self._looping = False
        self._timer = None
        self.state = State.GREETING
        self.bad_commands = 0
        self.auth_attempts = 0
        self.auth_failures = 0
        self.user: str | None = None
        self.forward_trusted = False  # from login_trusted_networks (connectionMade)
        self.relay: IRelay | None = None
        self._lost_reason: Failure | None = None
        self._tls_started = False
        self._tls_data_seen = False
        self._disconnect_reason: str | None = None
        # SASL exchange in progress
        self._sasl_mech: str | None = None
        self._sasl_started = 0.0
        self._sasl_tag: bytes | None = None
        self._sasl_waiting = False  # a challenge was sent; next line answers it

    @property
    def backend(self) -> ILoginBackend:
        return self.factory.backend

    # -- connection lifecycle ---------------------------------------------

    def connectionMade(self) -> None:
        self.conn = self.factory.connection_info(self.transport)
        # Dovecot's client->trusted: login_trusted_networks only (loopback
        # counts as secured, but may not forward another client's address).
        self.forward_trusted = bool(self.conn.remote_ip) and any(
            _in_network(self.conn.remote_ip, n) for n in self.factory.trusted_networks)
        self._tls_data_seen = self.conn.tls
        if self.factory.login_timeout is not None:
            self.login_timeout = self.factory.login_timeout
        if self.factory.max_inbuf is not None:
            self.max_inbuf = self.factory.max_inbuf
        self._busy = True
        refused = self.factory.registry.admit(self)
        if refused is not None:
            if refused == "ip":
                self.reply_ip_limit(self.factory.registry.max_ip_connections)
                self.close("Too many connections from this IP")
            else:
                self.reply_queue_full()
                self.close("Connection queue full")
            return
        self._start_timer()
        d = defer.maybeDeferred(self.send_greeting)
        d.addCallback(self._greeted)
        d.addErrback(self._greeting_failed)

    def _greeted(self, _: object) -> None:
        if self.state is State.GREETING:
            self.state = State.ACTIVE
            self._busy = False
            self._process()
            if not self._busy:
                self._unblock_input()

    def _greeting_failed(self, failure: Failure) -> None:
        log.failure("{service}-login: cannot greet client", failure, service=self.service)
        self.close("internal error while greeting")

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.RELAY and self.relay is not None:
            self.relay.from_client(data)
            return
        if self.state in (State.GONE, State.HANDOFF):
            if self.state is State.HANDOFF:
                # The transport is paused; anything that still arrives is
                # part of the pipeline the backend did not see: drop it.
                log.debug("dropping {n} bytes received during handoff", n=len(data))
            return
        self._tls_data_seen = True
        if self._skipping is not None:
            data = self._skip(data)
        self._buffer += data
        self._process()
        self._bound_input()

    def _bound_input(self) -> None:
        """While a command runs, past ``max(max_line, max_inbuf)``
        unprocessed bytes give up (Dovecot's full input buffer)."""
        if not self._busy or self.state not in (State.GREETING, State.ACTIVE):
            return
        if len(self._buffer) > max(self.max_line, self.max_inbuf):
            self.reply_inbuf_full()
            self.close("Input buffer full")

    def _unblock_input(self) -> None:
        if self._input_paused and self.state in (State.GREETING, State.ACTIVE):
            self._input_paused = False
            self.transport.resumeProducing()

    def disconnect_queue_full(self) -> None:
        """Make room for a newer client (the process is at client_limit)."""
        self.reply_queue_full()
        self.close("Connection queue full")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._cancel_timer()
        self.factory.registry.remove(self)
        if self.state is State.RELAY and self.relay is not None:
            self.relay.client_lost()
            return
        if self.state is State.HANDOFF:
            self._lost_reason = reason
            return
        if self.state is State.GONE and self._disconnect_reason is None:
            return  # the fd left this process
        if self._sasl_mech is not None:
            self.backend.auth_cancel(self.conn)
            self._sasl_mech = None
        self.state = State.GONE
        self.backend.log_disconnect(self.conn, self.service, self._reason_for(reason),
                                    self.user, self.auth_attempts)

    def _reason_for(self, reason: Failure | None) -> str:
        if self._disconnect_reason is not None:
            return self._disconnect_reason
        if self._tls_started and not self._tls_data_seen:
            text = reason.getErrorMessage() if reason is not None else "connection lost"
            return f"TLS handshaking: {text}"
        if not hasattr(self, "conn") or (self.state is State.GREETING):
            return "disconnected before auth was ready"
        if self._sasl_mech is not None:
            return f"auth aborted, {self.auth_attempts} attempts"
        if self.auth_attempts == 0:
            return "no auth attempts"
        return f"auth failed, {self.auth_attempts} attempts"

    def close(self, reason: str) -> None:
        """Disconnect the client after the queued replies have been sent."""
        if self._disconnect_reason is None:
            self._disconnect_reason = reason
        self._cancel_timer()
        self.state = State.GONE
        self._buffer = b""
        if self.transport is not None:
            self.transport.loseConnection()

    # -- forwarding from a trusted proxy (ID x-originating-*, XCLIENT) -------

    def forward(self, remote_ip: str | None = None, remote_port: str | None = None,
                local_ip: str | None = None, local_port: str | None = None,
                session: str | None = None, strict: bool = False) -> bool:
        """Take a trusted proxy's view of the client (its address, port,
        session id); the caller checked :attr:`forward_trusted`.  Invalid
        values are ignored (IMAP ID) or, with ``strict`` (POP3 XCLIENT),
        reject the whole update: False, nothing changed."""
        update: dict = {}
        for key, value in (("remote_ip", remote_ip), ("local_ip", local_ip)):
            if value is not None:
                addr = _address(value)
                if addr is not None:
                    update[key] = str(addr)
                elif strict:
                    return False
        for key, value in (("remote_port", remote_port), ("local_port", local_port)):
            if value is not None:
                if value.isdigit() and len(value) <= 5 and 0 < int(value) < 65536:
                    update[key] = int(value)
                elif strict:
                    return False
        if session is not None and 0 < len(session) <= MAX_SESSION_ID and SESSION_ID_CHARS.match(
                session):
            update["session_id"] = session
        for key, value in update.items():
            setattr(self.conn, key, value)
        return True

    # -- login timeout ------------------------------------------------------

    def _start_timer(self) -> None:
        """The whole pre-login phase must end within ``login_timeout`` of
        the connect: input does not extend it (a byte a minute won't do)."""
        self._cancel_timer()
        self._timer = self.factory.clock.callLater(self.login_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.state in (State.GREETING, State.ACTIVE):
            self.reply_inactivity()
            self.close("inactivity")

    # -- input loop ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes to the client unless the connection has left us."""
        if self.state in (State.GREETING, State.ACTIVE):
            self.transport.write(data)

    def _skip(self, data: bytes) -> bytes:
        """Drop the rest of an over-long command, the content of its
        literals included (never parsed as commands); return what follows."""
        while data:
            if self._skip_literal:
                n = min(len(data), self._skip_literal)
                self._skip_literal -= n
                data = data[n:]
                continue
            i = data.find(b"\n")
            if i < 0:
                self._skip_tail = (self._skip_tail + data[-32:])[-32:]
                return b""
            tail = (self._skip_tail + data[max(0, i - 32):i])[-32:]
            self._skip_tail = b""
            data = data[i + 1:]
            size = self.literal_follows(tail.rstrip(b"\r"))
            if size is not None:
                self._skip_literal = size
                continue
            self._pending_too_long = TooLong(self._skipping or b"")
            self._skipping = None
            return data
        return b""

    def literal_follows(self, line_end: bytes) -> int | None:
        """The size of a non-synchronising literal announced at the end of
        a line (IMAP's ``{N+}``), else None.  No literals in the base."""
        return None

    def extract_line(self) -> bytes | TooLong | None:
        """Take one line (without CRLF) from the buffer, a :class:`TooLong`
        for a line over ``max_line`` (once it ended), or None."""
        if self._pending_too_long is None:
            i = self._buffer.find(b"\n", 0, self.max_line + 2)
            if i >= 0:
                line, self._buffer = self._buffer[:i], self._buffer[i + 1:]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) <= self.max_line:
                return None
            self.begin_skipping(self._buffer[:128])
            if self._pending_too_long is None:
                return None
        pending, self._pending_too_long = self._pending_too_long, None
        return pending

    def begin_skipping(self, head: bytes) -> None:
        """Start discarding an over-long line (it is answered when it ends)."""
        self._skipping = head
        self._skip_literal = 0
        self._skip_tail = b""
        self._buffer = self._skip(self._buffer)

    def _process(self) -> None:
        if self._looping:
            return
        self._looping = True
        try:
            while not self._busy and self.state is State.ACTIVE:
                try:
                    if self._sasl_waiting:
                        result = self._sasl_input()
                    else:
                        result = self.process_command()
                except Exception:
                    log.failure("{service}-login: error handling a command", service=self.service)
                    self.reply_internal_error(self._sasl_tag)
                    self.close("internal error")
                    break
                if result is NEED_MORE:
                    break
                if isinstance(result, defer.Deferred):
                    self._busy = True
                    result.addErrback(self._command_failed)
                    result.addBoth(self._command_done)
        finally:
            self._looping = False

    def _command_failed(self, failure: Failure) -> None:
        log.failure("{service}-login: error handling a command", failure, service=self.service)
        if self.state is State.ACTIVE:
            self.reply_internal_error(self._sasl_tag)
            self.close("internal error")

    def _command_done(self, _: object) -> None:
        self._busy = False
        self._process()
        if not self._busy:
            self._unblock_input()

    def bad_command(self) -> None:
        """Count an invalid command; disconnect after too many."""
        self.bad_commands += 1
        if self.bad_commands >= self.max_bad_commands:
            self.reply_too_many_bad()
            self.close("too many invalid commands")

    # -- SASL ---------------------------------------------------------------

    def plaintext_allowed(self) -> bool:
        return self.conn.secured or not self.backend.disable_plaintext_auth

    def advertised_mechanisms(self) -> defer.Deferred:
        """Deferred[list[str]]: mechanisms to advertise, plaintext ones
        removed where plaintext auth is not allowed."""
        d = defer.maybeDeferred(self.backend.mechanisms, self.conn)

        def filt(mechs: list[str]) -> list[str]:
            mechs = [m.upper() for m in mechs]
            if not self.plaintext_allowed():
                mechs = [m for m in mechs if m not in PLAINTEXT_MECHANISMS]
            return mechs

        return d.addCallback(filt)

    def start_auth(self, tag: bytes | None, mechanism: str, initial: bytes | None) -> defer.Deferred:
        """Run a whole SASL exchange; answers the client at its end."""
        self.auth_attempts += 1
        self._sasl_mech = mechanism
        self._sasl_tag = tag
        self._sasl_started = time.monotonic()
        d = defer.maybeDeferred(self.backend.auth_start, self.conn, self.service,
                                mechanism, initial)
        return self._on_auth_reply(d)

    def _on_auth_reply(self, d: defer.Deferred) -> defer.Deferred:
        d.addCallbacks(self._auth_reply, self._auth_error)
        return d

    def _auth_error(self, failure: Failure) -> defer.Deferred | None:
        log.failure("{service}-login: auth request failed", failure, service=self.service)
        if self.state is not State.ACTIVE:
            return None
        tag, self._sasl_mech, self._sasl_tag = self._sasl_tag, None, None
        self.reply_auth_temp_fail(tag)
        return None

    def _auth_reply(self, reply: AuthReply) -> defer.Deferred | None:
        if self.state is not State.ACTIVE or self._sasl_mech is None:
            return None  # the client went away meanwhile
        if reply.status == "continue":
            self.reply_challenge(base64.b64encode(reply.challenge or b""))
            self._sasl_waiting = True
            return None
        tag, mech = self._sasl_tag, self._sasl_mech
        self._sasl_mech = self._sasl_tag = None
        # Dovecot's login-side event (lib-auth's auth client).
        events.emit("auth_client_request_finished", duration=events.since(self._sasl_started),
                    mechanism=mech.upper(), service=self.service, user=reply.user or None,
                    error=None if reply.status == "ok" else "Authentication failed",
                    session=self.conn.session_id)
        if reply.status == "ok":
            if reply.user:
                self.user = reply.user
            return self.handoff(reply, mech, tag)
        if reply.user:
            self.user = reply.user
        if reply.temporary:
            self.reply_auth_temp_fail(tag)
        else:
            self.reply_auth_failed(tag, reply.reason)
        self.auth_failures += 1
        if self.auth_failures >= self.max_auth_attempts:
            self.reply_too_many_auth_failures()
            self.close(f"auth failed, {self.auth_attempts} attempts")
        return None

    def _sasl_input(self) -> object:
        line = self.extract_line()
        if line is None:
            return NEED_MORE
        self._sasl_waiting = False
        if isinstance(line, TooLong):
            return self._sasl_abort("Authentication response too long.")
        if line.strip() == b"*":
            return self._sasl_abort("Authentication aborted by client.")
        response = decode_sasl(line)
        if response is None:
            return self._sasl_abort("Invalid base64 data in continued response")
        d = defer.maybeDeferred(self.backend.auth_continue, self.conn, response)
        return self._on_auth_reply(d)

    def _sasl_abort(self, text: str) -> None:
        tag = self._sasl_tag
        self.backend.auth_cancel(self.conn)
        self._sasl_mech = self._sasl_tag = None
        self.reply_sasl_bad(tag, text)
        self.bad_command()

    # -- handoff ------------------------------------------------------------

    def handoff(self, reply: AuthReply, mechanism: str, tag: bytes | None) -> defer.Deferred:
        """Pause and give the connection (with pipelined bytes) away."""
        self._cancel_timer()
        if not self._input_paused:
            self.transport.pauseProducing()
        self._input_paused = False
        self.state = State.HANDOFF
        self.factory.registry.logged_in(self)
        pending, self._buffer = self._buffer, b""
        d = defer.maybeDeferred(self.backend.handoff, self, self.conn, reply, self.service,
                                mechanism, tag, pending)
        d.addCallbacks(self._handed_off, self._handoff_failed, errbackArgs=(tag,))
        return d

    def _handed_off(self, relay: IRelay | None) -> None:
        lost = self._lost_reason
        if relay is None:
            self.state = State.GONE
            self.factory.registry.remove(self)
            return
        self.relay = relay
        self.state = State.RELAY
        if lost is not None:
            relay.client_lost()
        else:
            self.transport.resumeProducing()

    def _handoff_failed(self, failure: Failure, tag: bytes | None) -> None:
        limited = failure.check(LimitExceeded) is not None
        if failure.check(KeyError, RuntimeError):
            # The master's declared refusals: it logged why; one line here.
            log.error("{service}-login: handoff refused: {why}", service=self.service,
                      why=sanitize(failure.getErrorMessage()))
        elif not limited:
            log.failure("{service}-login: handoff failed", failure, service=self.service)
        if self._lost_reason is not None:
            self.state = State.GONE
            self.backend.log_disconnect(self.conn, self.service, "internal login failure",
                                        self.user, self.auth_attempts)
            return
        self.state = State.ACTIVE
        if limited:
            reason = sanitize(failure.getErrorMessage()) or "Connection limit exceeded"
            self.reply_limit_exceeded(tag, reason)
            self.transport.resumeProducing()
            self.close(reason)
            return
        self.reply_internal_error(tag)
        self.transport.resumeProducing()
        self.close("internal login failure")

    # -- TLS ----------------------------------------------------------------

    def start_tls(self) -> None:
        """Discard pipelined plaintext and switch to TLS (after the OK)."""
        self._buffer = b""  # STARTTLS command injection defence
        self._tls_started = True
        self._tls_data_seen = False
        self.backend.start_tls(self)
        self.conn.tls = True

    # -- hooks for subclasses -------------------------------------------------

    def send_greeting(self) -> defer.Deferred | None:
        raise NotImplementedError

    def process_command(self) -> object:
        """Parse and run one command from the buffer: NEED_MORE, None or a
        Deferred firing when the command is complete."""
        raise NotImplementedError

    def reply_challenge(self, b64: bytes) -> None:
        self.write(b"+ " + b64 + b"\r\n")

    def reply_auth_failed(self, tag: bytes | None, reason: str | None) -> None:
        raise NotImplementedError

    def reply_auth_temp_fail(self, tag: bytes | None) -> None:
        raise NotImplementedError

    def reply_sasl_bad(self, tag: bytes | None, text: str) -> None:
        raise NotImplementedError

    def reply_internal_error(self, tag: bytes | None) -> None:
        raise NotImplementedError

    def reply_too_many_bad(self) -> None:
        raise NotImplementedError

    def reply_too_many_auth_failures(self) -> None:
        raise NotImplementedError

    def reply_inactivity(self) -> None:
        raise NotImplementedError

    def reply_disconnect(self, text: str, code: str | None = None) -> None:
        """An unsolicited goodbye (IMAP ``* BYE [code] text``, POP3 ``-ERR``)."""
        raise NotImplementedError

    def reply_inbuf_full(self) -> None:
        self.reply_disconnect("Input buffer full, aborting")

    def reply_queue_full(self) -> None:
        self.reply_disconnect("Connection queue full")

    def reply_ip_limit(self, limit: int) -> None:
        self.reply_disconnect("Maximum number of connections from your IP exceeded "
                              f"(login_max_ip_connections={limit})", code="LIMIT")

    def reply_limit_exceeded(self, tag: bytes | None, reason: str) -> None:
        """The master refused the login (mail_max_userip_connections)."""
        raise NotImplementedError
