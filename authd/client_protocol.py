"""authd's auth-client socket: Dovecot's authentication protocol 1.2 for MTAs.

Postfix (``smtpd_sasl_type = dovecot``) and Exim's dovecot authenticator
check SMTP AUTH here.  On connect the server sends ``VERSION``, one ``MECH``
line per mechanism, ``SPID``, ``CUID``, ``COOKIE`` and ``DONE``; the client
answers ``VERSION`` and ``CPID`` and then runs ``AUTH``/``CONT`` exchanges,
each answered with ``CONT``, ``OK`` or ``FAIL``.  Lines end in LF, fields are
TAB-separated, and values use Dovecot's tab-escaping (``\\001`` prefix).

Trust: the peer is whoever may open the socket (the listener's mode and
owner decide; Postfix's smtpd runs unprivileged).  Everything it sends is
untrusted: lines are capped at 16 KiB, requests per connection are capped,
and a protocol violation closes the connection with one log line, never a
traceback.  The peer's ``secured`` flag and addresses are believed, as
Dovecot believes them: the socket's permissions are what make the peer an
MTA.  A success issues no login cookie and tells the peer only the user
name, never userdb fields; failures are delayed by auth_failure_delay.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import os
import secrets
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from authd import sasl
from authd.exchange import (
    AUTH_FAILED,
    TEMP_FAILED,
    UNSUPPORTED,
    Reply,
    SASLExchange,
    available_mechanisms,
)
from authd.interfaces import AuthRequest
from pydovecot.log import sanitize

log = Logger()

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 2
MAX_LINE = 16384  # bytes per line, as Dovecot's AUTH_CLIENT_MAX_LINE_LENGTH
MAX_REQUESTS = 128  # concurrent AUTH requests per connection
REQUEST_TIMEOUT = 120.0  # seconds a request may wait for the client's CONT
MAX_ID = 2**32 - 1

PLAINTEXT_DISABLED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
TIMED_OUT = "Authentication request timed out"

#: MECH line flags by mechanism, as Dovecot sets them ("plaintext" comes
#: from authd.sasl).  Postfix filters on them (smtpd_sasl_security_options).
MECH_FLAGS: dict[str, tuple[str, ...]] = {
    "ANONYMOUS": ("anonymous",),
    "CRAM-MD5": ("dictionary",),
    "DIGEST-MD5": ("dictionary", "mutual-auth"),
    "SCRAM-SHA-1": ("mutual-auth",),
    "SCRAM-SHA-256": ("mutual-auth",),
}

#: Mechanisms an MTA cannot carry: EXTERNAL needs the client certificate's
#: name, which this protocol does not pass.
UNUSABLE = frozenset({"EXTERNAL"})

# -- tab escaping ------------------------------------------------------------

_ESCAPE = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_UNESCAPE = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n", "0": "\x00"}


def tabescape(value: str) -> str:
    """Dovecot's str_tabescape: ``\\001`` → ``\\0011``, TAB → ``\\001t``,
    CR → ``\\001r``, LF → ``\\001n``."""
    if not any(c in value for c in _ESCAPE):
        return value
    return "".join(_ESCAPE.get(c, c) for c in value)


def tabunescape(value: str) -> str:
    """Undo :func:`tabescape`; an unknown escape keeps its character and a
    trailing lone ``\\001`` is dropped, as Dovecot does."""
    if "\x01" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for c in chars:
        if c == "\x01":
            nxt = next(chars, "")
            out.append(_UNESCAPE.get(nxt, nxt))
        else:
            out.append(c)
    return "".join(out)


def parse_params(args: list[str]) -> dict[str, str]:
    """``key=value`` and bare ``key`` arguments (bare keys map to '');
    values are tab-unescaped.  A repeated key keeps its first value."""
    params: dict[str, str] = {}
    for arg in args:
        key, _, value = arg.partition("=")
        if key and key not in params:
            params[key] = tabunescape(value)
    return params


def _ip(value: str) -> str:
    """A valid IP address, or '' (bad addresses are ignored)."""
    try:
        return str(ipaddress.ip_address(value)) if value else ""
    except ValueError:
        return ""


def _port(value: str) -> int:
    return int(value) if value.isdigit() and len(value) <= 5 and int(value) < 65536 else 0


# -- replies -----------------------------------------------------------------


def format_line(command: str, request_id: int, *fields: str) -> bytes:
    """One reply line; ``fields`` must already be escaped."""
    return "\t".join((command, str(request_id), *fields)).encode("utf-8") + b"\n"


def format_reply(request_id: int, reply: Reply) -> bytes:
    """CONT, OK or FAIL for an exchange's :class:`~authd.exchange.Reply`."""
    if reply.status == "continue":
        return format_line("CONT", request_id, base64.b64encode(reply.challenge).decode())
    if reply.status == "ok":
        return format_line("OK", request_id, f"user={tabescape(reply.user)}")
    fields = []
    if reply.user:
        fields.append(f"user={tabescape(reply.user)}")
    if reply.temporary:
        fields.append("temp")
    # Like Dovecot, a plain mismatch carries no reason: Postfix words its own.
    if reply.reason and reply.reason != AUTH_FAILED:
        fields.append(f"reason={tabescape(reply.reason)}")
    return format_line("FAIL", request_id, *fields)


def _fail(reason: str, temporary: bool = False) -> Reply:
    """A refusal decided here, before any password was checked: no delay."""
    return Reply("fail", reason=reason, temporary=temporary, nodelay=True)


def mechanism_flags(name: str) -> list[str]:
    """The MECH line's security flags for ``name``."""
    flags = list(MECH_FLAGS.get(name, ()))
    if sasl.is_plaintext(name):
        flags.append("plaintext")
    return flags


# -- the protocol --------------------------------------------------------------


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection is closed."""


@dataclass
class _Request:
    exchange: SASLExchange
    request: AuthRequest
    busy: bool = False
    pending: defer.Deferred | None = None  # the running step's whole chain
    delay: defer.Deferred | None = None  # auth_failure_delay in progress
    timeout: IDelayedCall | None = None  # waiting for the client's CONT
    no_penalty: bool = False  # the client asked us not to count its failures


class AuthClientProtocol(LineOnlyReceiver):
    """One MTA connection on auth-client."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, engine: Any, connect_uid: int):
        self.engine = engine
        self.connect_uid = connect_uid
        self.state = "version"  # → "cpid" → "ready"
        self.client_pid: int | None = None
        self.requests: dict[int, _Request] = {}
        self.lost = False

    # -- connection ------------------------------------------------------------

    @property
    def settings(self) -> Any:
        return self.engine.settings

    def mechanisms(self, secured: bool) -> list[str]:
        """Mechanisms an MTA can use: no channel binding or client
        certificates cross this socket."""
        return [name for name in available_mechanisms(self.engine, secured)
                if name not in sasl.NEEDS_CHANNEL_BINDING and name not in UNUSABLE]

    def handshake(self) -> bytes:
        lines = [f"VERSION\t{PROTOCOL_MAJOR}\t{PROTOCOL_MINOR}"]
        for name in self.mechanisms(secured=True):
            lines.append("\t".join(("MECH", name, *mechanism_flags(name))))
        lines += [
            f"SPID\t{os.getpid()}",
            f"CUID\t{self.connect_uid}",
            f"COOKIE\t{secrets.token_hex(16)}",
            "DONE",
        ]
        return "".join(line + "\n" for line in lines).encode()

    def connectionMade(self) -> None:
        self.transport.write(self.handshake())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        requests, self.requests = self.requests, {}
        for req in requests.values():
            self._forget(req)

    def _forget(self, req: _Request) -> None:
        """Stop a request's timers; a passdb lookup in flight finishes
        unheard."""
        req.exchange.cancel()
        if req.timeout is not None and req.timeout.active():
            req.timeout.cancel()
        req.timeout = None
        if req.delay is not None:
            delay, req.delay = req.delay, None
            delay.cancel()  # the chain's last errback swallows the CancelledError

    def who(self) -> str:
        pid = f"pid={self.client_pid}" if self.client_pid is not None else "no pid"
        return f"auth-client({self.connect_uid},{pid})"

    def violation(self, problem: str) -> None:
        """Log the peer's protocol error and disconnect."""
        log.error("{who}: {problem}, disconnecting", who=self.who(), problem=sanitize(problem))
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.violation(f"line longer than {MAX_LINE} bytes")

    # -- parsing ---------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        try:
            text = line.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            return self.violation("line is not valid UTF-8")
        args = text.split("\t")
        try:
            self.command(args[0], args[1:])
        except ProtocolViolation as e:
            self.violation(str(e))

    def command(self, cmd: str, args: list[str]) -> None:
        if self.state == "version":
            if cmd != "VERSION" or len(args) < 2 or not args[0].isdigit():
                raise ProtocolViolation("expected VERSION handshake")
            if args[0] != str(PROTOCOL_MAJOR):
                raise ProtocolViolation(
                    f"client speaks protocol version {args[0][:10]}, not {PROTOCOL_MAJOR}")
            self.state = "cpid"
        elif self.state == "cpid":
            if cmd != "CPID" or len(args) < 1 or not args[0].isdigit() or len(args[0]) > 10:
                raise ProtocolViolation("expected CPID handshake")
            self.client_pid = int(args[0])
            self.state = "ready"
        elif cmd == "AUTH":
            self.auth(args)
        elif cmd == "CONT":
            self.cont(args)
        else:
            raise ProtocolViolation(f"unknown command {cmd[:20]!r}")

    @staticmethod
    def request_id(text: str) -> int:
        if not text.isdigit() or len(text) > 10 or int(text) > MAX_ID:
            raise ProtocolViolation("invalid request id")
        return int(text)

    def auth(self, args: list[str]) -> None:
        """``AUTH <id> <mech> [params…]``."""
        if len(args) < 2:
            raise ProtocolViolation("AUTH without id and mechanism")
        rid = self.request_id(args[0])
        if rid in self.requests:
            raise ProtocolViolation(f"duplicate request id {rid}")
        params = parse_params(args[2:])
        service = params.get("service", "")
        if not service:
            raise ProtocolViolation("AUTH without service")
        if len(self.requests) >= MAX_REQUESTS:
            log.warn("{who}: more than {n} concurrent requests", who=self.who(), n=MAX_REQUESTS)
            self.send(format_reply(rid, _fail(TEMP_FAILED, temporary=True)))
            return
        secured = "secured" in params
        name = args[1].upper()
        if name not in self.mechanisms(secured=True):
            self.send(format_reply(rid, _fail(UNSUPPORTED)))
            return
        if name not in self.mechanisms(secured):
            self.send(format_reply(rid, _fail(PLAINTEXT_DISABLED)))
            return
        request = AuthRequest(
            user="",
            service=service[:64],
            mech=name,
            local_ip=_ip(params.get("lip", "")),
            local_port=_port(params.get("lport", "")),
            remote_ip=_ip(params.get("rip", "")),
            remote_port=_port(params.get("rport", "")),
            session=params.get("session", "")[:64],
            secured=secured,
        )
        context = sasl.SASLContext(settings=self.settings, service=request.service,
                                   secured=secured,
                                   valid_client_cert="valid-client-cert" in params)
        req = _Request(SASLExchange(self.engine, name, request, context), request,
                       no_penalty="no-penalty" in params)
        self.requests[rid] = req
        initial: bytes | None = None
        if "resp" in params:
            initial = _b64decode(params["resp"])
            if initial is None:
                self.finish(rid, req, _fail("Invalid base64 data in initial response"))
                return
        self.run(rid, req, req.exchange.start(initial))

    def cont(self, args: list[str]) -> None:
        """``CONT <id> <base64>``."""
        if len(args) < 2:
            raise ProtocolViolation("CONT without id and data")
        rid = self.request_id(args[0])
        req = self.requests.get(rid)
        if req is None:
            # Timed out or never started: Dovecot answers the same way.
            self.send(format_reply(rid, _fail(TIMED_OUT)))
            return
        if req.busy:
            raise ProtocolViolation(f"CONT for request {rid} while it is being checked")
        data = _b64decode(args[1])
        if data is None:
            self.finish(rid, req, _fail("Invalid base64 data in continued response"))
            return
        self.run(rid, req, req.exchange.next(data))

    # -- exchanges -------------------------------------------------------------

    def run(self, rid: int, req: _Request, d: defer.Deferred) -> None:
        """Answer one exchange step when ``d`` fires; the chain is kept on
        the request until it ends."""
        if req.timeout is not None and req.timeout.active():
            req.timeout.cancel()
        req.timeout = None
        req.busy = True
        req.pending = d
        d.addErrback(self._crashed, req)
        d.addCallback(self._delayed, req)
        d.addCallback(self._answer, rid, req)
        d.addErrback(self._cancelled)

    def _crashed(self, failure: Failure, req: _Request) -> Reply:
        # SASLExchange never errbacks; this is a last line of defence.
        log.failure("{who}: authentication crashed", failure, who=req.request.log_id("auth"))
        return _fail(TEMP_FAILED, temporary=True)

    def _delayed(self, reply: Reply, req: _Request) -> Any:
        """auth_failure_delay, grown by the remote IP's penalty (authd.penalty)
        unless the client sent ``no-penalty``."""
        if reply.status != "fail" or reply.nodelay or self.lost:
            return reply
        if req.no_penalty:
            seconds = self.settings.auth_failure_delay
        else:
            seconds = self.engine.failure_delay(req.request.remote_ip, reply.temporary)
        if seconds <= 0:
            return reply
        req.delay = task.deferLater(self.engine.reactor, seconds, lambda: reply)
        return req.delay

    def _answer(self, reply: Reply, rid: int, req: _Request) -> None:
        req.pending = req.delay = None
        if self.lost or self.requests.get(rid) is not req:
            return
        req.busy = False
        if reply.status == "continue":
            self.send(format_reply(rid, reply))
            req.timeout = self.engine.reactor.callLater(REQUEST_TIMEOUT, self._timed_out, rid, req)
            return
        if reply.status == "fail" and not reply.user and req.request.user:
            reply.user = req.request.user
        self.finish(rid, req, reply)

    @staticmethod
    def _cancelled(failure: Failure) -> None:
        failure.trap(defer.CancelledError)

    def _timed_out(self, rid: int, req: _Request) -> None:
        req.timeout = None
        if self.requests.get(rid) is req:
            log.info("{who}: request {rid} timed out waiting for CONT", who=self.who(), rid=rid)
            self.finish(rid, req, _fail(TIMED_OUT))

    def finish(self, rid: int, req: _Request, reply: Reply) -> None:
        """Send the final OK/FAIL and forget the request."""
        self.requests.pop(rid, None)
        self._forget(req)
        if reply.status == "ok":
            log.debug("{who}: authenticated", who=req.request.log_id("auth"))
        self.send(format_reply(rid, reply))

    def send(self, data: bytes) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(data)


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class AuthClientFactory(ServerFactory):
    """auth-client connections; CUIDs count up per factory."""

    noisy = False

    def __init__(self, engine: Any):
        self.engine = engine
        self._uids = itertools.count(1)

    def buildProtocol(self, addr: Any) -> AuthClientProtocol:
        proto = AuthClientProtocol(self.engine, next(self._uids))
        proto.factory = self
        return proto
