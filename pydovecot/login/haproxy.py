"""The HAProxy PROXY protocol (v1 text, v2 binary) on ``haproxy = yes`` listeners.

A login process wraps such a listener's factory in :class:`HAProxyFactory`:
before anything else (the greeting, a TLS handshake) the connection must
come from ``haproxy_trusted_networks`` and send one PROXY header within
``haproxy_timeout``; the header's source and destination then replace the
socket's peer and host, so the client's real address is what the login
protocol, its logs (``rip=``), ``login_trusted_networks`` and the handed-off
session see.  Anything else is disconnected with the line Dovecot's
lib-master logs (``haproxy: Client not trusted (rip=…)``, ``haproxy(v1):
Client disconnected: …``).

Bounds: a v1 header is at most 108 bytes (the protocol's own maximum), a v2
header at most :data:`MAX_V2_HEADER` bytes; v2 TLVs (SSL, ALPN, authority,
…) are checked for structure; an SSL TLV with the client bit makes the
connection count as secured (Dovecot 2.3.19 does the same), never as TLS
(there is no TLS session here to bind to or read a certificate from).  ``LOCAL`` (v2) and
``UNKNOWN`` (v1) keep the socket's own addresses, as Dovecot does.

Trusts: the configured trusted networks.  Does not trust the header bytes:
every field is parsed defensively and client values are sanitised in logs.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from twisted.internet import address
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from pydovecot.log import sanitize

log = Logger()

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_HEADER = 108
#: Dovecot reads the header with one recv() of a small buffer; TLVs (an SSL
#: TLV carries the client certificate's CN and cipher) fit easily.
MAX_V2_HEADER = 16 + 2048


class ProxyHeaderError(Exception):
    """An invalid header: Dovecot's log text, and what its parentheses hold
    before the ``rip=``."""

    def __init__(self, text: str, inside: str = "") -> None:
        super().__init__(text)
        self.text, self.inside = text, inside

    def line(self, rip: str) -> str:
        """The whole log line."""
        inside = f"{self.inside}, " if self.inside else ""
        return f"{self.text} ({inside}rip={rip})"


def parse_header(buf: bytes) -> tuple[tuple[str, int, str, int] | None, int] | None:
    """Parse a PROXY header at the start of ``buf``.

    Returns None while more bytes are needed, else ((remote ip, remote port,
    local ip, local port) or None to keep the socket's, header length).
    Raises :class:`ProxyHeaderError` for an invalid or over-long header.
    See :func:`client_used_ssl` for the v2 SSL TLV.
    """
    if buf[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(buf)] and len(buf) < 16:
        return None
    if buf.startswith(V2_SIGNATURE):
        return _parse_v2(buf)
    if b"PROXY"[:len(buf)] == buf[:5] and len(buf) < 8:
        return None
    if buf.startswith(b"PROXY"):
        return _parse_v1(buf)
    raise ProxyHeaderError("haproxy: Client disconnected: Failed to read valid HAproxy data")


def _parse_v2(buf: bytes) -> tuple[tuple[str, int, str, int] | None, int] | None:
    ver_cmd, fam, length = struct.unpack("!BBH", buf[12:16])
    if ver_cmd & 0xF0 != 0x20:
        raise ProxyHeaderError("haproxy: Client disconnected: Unsupported protocol version",
                               f"version={(ver_cmd & 0xF0) >> 4:02x}")
    size = 16 + length
    if size > MAX_V2_HEADER:
        raise ProxyHeaderError("haproxy: Client disconnected: Too long header")
    if len(buf) < size:
        return None
    body = buf[16:size]
    cmd = ver_cmd & 0x0F
    if cmd == 0x00:  # LOCAL: a health check from the proxy itself
        return None, size
    if cmd != 0x01:
        raise ProxyHeaderError("haproxy(v2): Client disconnected: Invalid command", f"cmd={cmd:02x}")
    if fam & 0x0F != 0x01:
        raise ProxyHeaderError("haproxy(v2): Client disconnected: Not using TCP",
                               f"type={fam & 0x0F:02x}")
    family = (fam & 0xF0) >> 4
    if family == 0x01:
        if length < 12:
            raise ProxyHeaderError("haproxy(v2): Client disconnected: IPv4 data is incomplete")
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        addrs = (str(ipaddress.IPv4Address(src)), sport, str(ipaddress.IPv4Address(dst)), dport)
        tlvs = body[12:]
    elif family == 0x02:
        if length < 36:
            raise ProxyHeaderError("haproxy(v2): Client disconnected: IPv6 data is incomplete")
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        addrs = (_ip6(src), sport, _ip6(dst), dport)
        tlvs = body[36:]
    elif family in (0x00, 0x03):  # UNSPEC, UNIX: kept, as Dovecot does
        log.error("haproxy(v2): Unsupported address family (family={family:02x})", family=family)
        return None, size
    else:
        raise ProxyHeaderError("haproxy(v2): Client disconnected: Unknown address family",
                               f"family={family:02x}")
    _check_tlvs(tlvs, cmd)
    return addrs, size


def client_used_ssl(buf: bytes) -> bool:
    """True when a complete, valid v2 header at the start of ``buf`` carries
    a PP2_TYPE_SSL TLV with PP2_CLIENT_SSL set: the proxy says the client
    spoke TLS to it.  Dovecot 2.3.19 then counts the connection as secured
    (not as TLS here: there is no TLS session to bind to)."""
    if not buf.startswith(V2_SIGNATURE) or len(buf) < 16:
        return False
    fam = buf[13] >> 4
    (length,) = struct.unpack("!H", buf[14:16])
    start = 16 + {0x01: 12, 0x02: 36, 0x03: 216}.get(fam, length)
    end = 16 + length
    pos = start
    while pos + 3 <= end:
        kind = buf[pos]
        (n,) = struct.unpack("!H", buf[pos + 1:pos + 3])
        if kind == 0x20 and n >= 1:
            return bool(buf[pos + 3] & 0x01)
        pos += 3 + n
    return False


def _ip6(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def _check_tlvs(data: bytes, cmd: int) -> None:
    """TLVs (type, 16-bit length, value) must tile the rest exactly."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < 3:
            raise ProxyHeaderError("haproxy(v2): Client disconnected: Invalid TLV: "
                                   "truncated TLV header", f"cmd={cmd:02x}")
        (n,) = struct.unpack("!H", data[pos + 1:pos + 3])
        if pos + 3 + n > len(data):
            raise ProxyHeaderError("haproxy(v2): Client disconnected: Invalid TLV: "
                                   "TLV value exceeds the header", f"cmd={cmd:02x}")
        pos += 3 + n


def _parse_v1(buf: bytes) -> tuple[tuple[str, int, str, int] | None, int] | None:
    end = buf.find(b"\r\n", 0, V1_MAX_HEADER)
    if end < 0:
        if len(buf) >= V1_MAX_HEADER:
            raise ProxyHeaderError("haproxy: Client disconnected: Too long header")
        return None
    line = buf[:end].decode("ascii", "replace")
    size = end + 2
    fields = line.split(" ")[1:]
    v1 = "haproxy(v1): Client disconnected: "
    if not fields:
        raise ProxyHeaderError(v1 + "Field for proxied protocol is missing")
    proto = fields.pop(0)
    if proto == "UNKNOWN":
        return None, size
    if proto not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(v1 + "Unknown proxied protocol",
                               f"protocol=`{sanitize(proto, 64)}'")
    version = 4 if proto == "TCP4" else 6
    values: list = []
    for what in ("remote address", "local address", "remote port", "local port"):
        if not fields:
            raise ProxyHeaderError(v1 + f"Field for proxied {what} is missing")
        value = fields.pop(0)
        if what.endswith("address"):
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                ip = None
            if ip is None or ip.version != version:
                raise ProxyHeaderError(v1 + f"Proxied {what} is invalid",
                                       f"address=`{sanitize(value, 64)}'")
            values.append(str(ip))
        else:
            if not value.isdigit() or not 0 < int(value) < 65536 or len(value) > 5:
                raise ProxyHeaderError(v1 + f"Proxied {what} is invalid",
                                       f"port=`{sanitize(value, 64)}'")
            values.append(int(value))
    if fields:
        raise ProxyHeaderError(v1 + "Header line has spurius extra field",
                               f"field=`{sanitize(fields[0], 64)}'")
    remote_ip, local_ip, remote_port, local_port = values
    return (remote_ip, remote_port, local_ip, local_port), size


def _tcp_address(ip: str, port: int):
    cls = address.IPv6Address if ":" in ip else address.IPv4Address
    return cls("TCP", ip, port)


class HAProxyProtocol(ProtocolWrapper):
    """Reads the PROXY header, then becomes a transparent wrapper whose
    getPeer/getHost are the header's addresses."""

    factory: HAProxyFactory

    def __init__(self, factory: HAProxyFactory, wrapped) -> None:
        super().__init__(factory, wrapped)
        self._buffer = b""
        self._timer = None
        self._done = False
        self._peer = self._host = None
        #: The proxy's SSL TLV says the client used TLS (counts as secured).
        self.proxied_ssl = False

    @property
    def raw_transport(self):
        """The TCP transport under this wrapper (for the fd handoff)."""
        return self.transport

    def makeConnection(self, transport) -> None:
        # Do not connect the wrapped protocol yet: that waits for the header.
        from zope.interface import directlyProvides, providedBy

        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        rip = getattr(transport.getPeer(), "host", "")
        if not self.factory.trusts(rip):
            log.warn("haproxy: Client not trusted (rip={rip})", rip=rip)
            self._fail()
            return
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    def _rip(self) -> str:
        return getattr(self.transport.getPeer(), "host", "")

    def _timed_out(self) -> None:
        self._timer = None
        log.error("haproxy: Client timed out (rip={rip})", rip=self._rip())
        self._fail()

    def _fail(self) -> None:
        self._done = True
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            if self.wrappedProtocol is not None and self._peer is not None:
                self.wrappedProtocol.dataReceived(data)
            return
        self._buffer += data
        try:
            result = parse_header(self._buffer)
        except ProxyHeaderError as e:
            log.error("{line}", line=e.line(self._rip()))
            self._fail()
            return
        if result is None:
            if len(self._buffer) > MAX_V2_HEADER:  # parse_header bounds it; belt and braces
                self._fail()
            return
        addrs, size = result
        self.proxied_ssl = addrs is not None and client_used_ssl(self._buffer[:size])
        rest, self._buffer = self._buffer[size:], b""
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if addrs is None:
            self._peer, self._host = self.transport.getPeer(), self.transport.getHost()
        else:
            self._peer = _tcp_address(addrs[0], addrs[1])
            self._host = _tcp_address(addrs[2], addrs[3])
        self.wrappedProtocol.makeConnection(self)
        if rest and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def getPeer(self):
        return self._peer if self._peer is not None else self.transport.getPeer()

    def getHost(self):
        return self._host if self._host is not None else self.transport.getHost()

    def connectionLost(self, reason) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.factory.unregisterProtocol(self)
        if self._peer is not None and self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
        self.wrappedProtocol = None


class HAProxyFactory(WrappingFactory):
    """Wraps a listener's factory: PROXY header first, from trusted networks only."""

    protocol = HAProxyProtocol
    noisy = False  # no "starting on" chatter in the log

    def __init__(self, wrapped, trusted_networks: Iterable[str], timeout: float = 3.0,
                 clock=None) -> None:
        from twisted.internet import reactor

        super().__init__(wrapped)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in trusted_networks if n]
        self.timeout = timeout
        self.clock = clock if clock is not None else reactor

    def trusts(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.networks)


def unwrap_transport(transport):
    """The socket transport under any PROXY wrappers (for the fd handoff)."""
    while isinstance(transport, HAProxyProtocol):
        transport = transport.raw_transport
    return transport
