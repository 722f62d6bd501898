"""A small SMTP client to ``submission_relay_host``: one per submission session.

Sends commands one at a time and hands back each reply whole (code,
text lines) so the session can pass it to its client as Dovecot does.  A
message goes as ``BDAT n LAST`` when the relay offers CHUNKING, else as
DATA (dot-stuffed); either way it is streamed from its spool file by a
producer, so the session never holds a message in memory.

Trusts: the relay's replies only as far as their framing: a reply line
over 4 KiB or a reply of more than 100 lines drops the connection.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.protocols.basic import FileSender

MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100


@dataclass
class Reply:
    """One SMTP reply."""

    code: int
    lines: list[bytes] = field(default_factory=list)

    def encode(self) -> bytes:
        """The reply as sent on the wire."""
        lines = self.lines or [b""]
        code = b"%03d" % self.code
        out = [code + b"-" + x for x in lines[:-1]] + [code + b" " + lines[-1]]
        return b"\r\n".join(out) + b"\r\n"


def reply(code: int, text: str) -> Reply:
    return Reply(code, [text.encode("utf-8", "replace")])


class RelayError(Exception):
    """The relay could not be reached or misbehaved."""


class RelayProtocol(protocol.Protocol):
    """The SMTP client side of one relay connection."""

    def __init__(self) -> None:
        self._buf = b""
        self._lines: list[bytes] = []
        self._waiting: list[defer.Deferred] = []
        self.extensions: set[str] = set()
        self.size = 0  # the relay's SIZE, 0 if none
        self.timeout = 300.0  # submission_relay_command_timeout
        self.lost = False

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    self._fail("relay reply line too long")
                return
            line, self._buf = self._buf[:i].rstrip(b"\r"), self._buf[i + 1:]
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in b" -"):
                self._fail("relay sent an invalid reply")
                return
            self._lines.append(line)
            if len(self._lines) > MAX_REPLY_LINES:
                self._fail("relay reply too long")
                return
            if line[3:4] != b"-":
                lines, self._lines = self._lines, []
                r = Reply(int(lines[0][:3]), [x[4:] for x in lines])
                if self._waiting:
                    self._waiting.pop(0).callback(r)

    def _fail(self, why: str) -> None:
        self.transport.loseConnection()
        self._error(RelayError(why))

    def _error(self, err: Exception) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(err)

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        self._error(RelayError("relay connection lost"))

    def expect(self) -> defer.Deferred:
        """Deferred[Reply]: the next reply."""
        if self.lost:
            return defer.fail(RelayError("relay connection lost"))
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        timer = reactor.callLater(self.timeout, self._timed_out, d)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def _timed_out(self, d: defer.Deferred) -> None:
        """A relay that stops answering fails this session's command only."""
        if d in self._waiting:
            self._fail("relay command timed out")

    def command(self, line: bytes) -> defer.Deferred:
        d = self.expect()
        self.transport.write(line + b"\r\n")
        return d

    async def handshake(self, helo: str, user: str = "", password: str = "",
                        xclient: dict[str, str] | None = None, starttls=None) -> None:
        """Greeting, EHLO, then (``submission_relay_trusted``) XCLIENT with
        the client's address and login when the relay offers it, and AUTH
        PLAIN with ``submission_relay_user`` if set."""
        greeting = await self.expect()
        if greeting.code != 220:
            raise RelayError(f"relay greeting: {greeting.code}")
        await self._ehlo(helo)
        if starttls is not None:  # submission_relay_ssl = starttls
            if "STARTTLS" not in self.extensions:
                raise RelayError("relay does not offer STARTTLS")
            r = await self.command(b"STARTTLS")
            if r.code != 220:
                raise RelayError(f"relay refused STARTTLS: {r.code}")
            self.transport.startTLS(starttls)
            await self._ehlo(helo)
        if xclient and "XCLIENT" in self.extensions:
            args = " ".join(f"{k}={_xtext(v)}" for k, v in xclient.items() if v)
            r = await self.command(b"XCLIENT " + args.encode())
            if r.code != 220:
                raise RelayError(f"relay refused XCLIENT: {r.code}")
            await self._ehlo(helo)
        if user:
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
            r = await self.command(b"AUTH PLAIN " + token)
            if r.code != 235:
                raise RelayError(f"relay refused AUTH: {r.code}")

    async def _ehlo(self, helo: str) -> None:
        r = await self.command(b"EHLO " + helo.encode())
        if r.code != 250:
            r = await self.command(b"HELO " + helo.encode())
            if r.code != 250:
                raise RelayError(f"relay refused HELO: {r.code}")
        self.extensions = {x.split(b" ")[0].decode("ascii", "replace").upper() for x in r.lines[1:]}
        for x in r.lines[1:]:
            words = x.split()
            if len(words) == 2 and words[0].upper() == b"SIZE" and words[1].isdigit():
                self.size = int(words[1][:15])

    async def send_message(self, spool, size: int) -> Reply:
        """Send the spooled message; the relay's final reply."""
        spool.seek(0)
        if "CHUNKING" in self.extensions:
            d = self.expect()
            self.transport.write(b"BDAT %d LAST\r\n" % size)
            await FileSender().beginFileTransfer(spool, self.transport)
            return await d
        r = await self.command(b"DATA")
        if r.code != 354:
            return r
        d = self.expect()
        state = {"bol": True}

        def stuff(chunk: bytes) -> bytes:
            out = chunk.replace(b"\n.", b"\n..")
            if state["bol"] and out.startswith(b"."):
                out = b"." + out
            state["bol"] = chunk.endswith(b"\n")
            return out

        await FileSender().beginFileTransfer(spool, self.transport, stuff)
        self.transport.write(b"\r\n.\r\n" if not state["bol"] else b".\r\n")
        return await d

    def quit(self) -> None:
        if not self.lost:
            self.transport.write(b"QUIT\r\n")
            self.transport.loseConnection()


def _xtext(value: str) -> str:
    """RFC 1891 xtext (XCLIENT attribute values)."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}"
                   for c in value.encode("utf-8").decode("latin-1"))


async def connect(config, helo: str, xclient: dict[str, str] | None = None) -> RelayProtocol:
    """A connected, greeted relay client per the submission_relay_* settings."""
    host = config.get("submission_relay_host")
    if not host:
        raise RelayError("submission_relay_host is not set")
    port = config.get_int("submission_relay_port")
    timeout = config.get_time("submission_relay_connect_timeout")
    ssl = config.get("submission_relay_ssl")
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    tls = None
    if ssl in ("smtps", "starttls"):
        tls = (optionsForClientTLS(host) if config.get_bool("submission_relay_ssl_verify")
               else CertificateOptions(verify=False))
    if ssl == "smtps":
        endpoint = wrapClientTLS(tls, endpoint)
    proto = RelayProtocol()
    proto.timeout = config.get_time("submission_relay_command_timeout") or 300.0
    try:
        await connectProtocol(endpoint, proto)
    except Exception as e:
        raise RelayError(f"cannot connect to relay {host}:{port}: {e}") from None
    trusted = config.get_bool("submission_relay_trusted")
    await proto.handshake(helo, config.get("submission_relay_user"),
                          config.get("submission_relay_password"),
                          xclient if trusted else None,
                          tls if ssl == "starttls" else None)
    return proto
