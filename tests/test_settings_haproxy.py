"""The PROXY protocol and trusted-proxy forwarding, through the real master (issue 11).

``inet_listener { haproxy = yes }`` listeners for imap-login and pop3-login
next to the plain ones; hand-written PROXY v1 and v2 headers (v2 with SSL
and ALPN TLVs) over loopback.  The proxied client address must appear in
the Login line (``rip=``), count for ``login_trusted_networks`` (plaintext
auth with ``disable_plaintext_auth = yes``, ID and XCLIENT forwarding) and
reach the mail process; an untrusted proxy, a bad header and a silent one
are disconnected with Dovecot's lib-master log lines.  Also unit tests of
the header parser.
"""

from __future__ import annotations

import socket
import struct
import time

from twisted.trial.unittest import SynchronousTestCase

from pydovecot.login.haproxy import MAX_V2_HEADER, ProxyHeaderError, parse_header
from tests.harness import LineClient, Master, User, listening_socket, privileged

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src: str, dst: str, sport: int, dport: int) -> bytes:
    proto = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    body += tlvs
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


#: PP2_TYPE_ALPN "imap" and PP2_TYPE_SSL (client used TLS, verified, with
#: a PP2_SUBTYPE_SSL_VERSION sub-TLV): as in Dovecot 2.3.19 the client then
#: counts as secured; PLAIN_SSL has the client bit clear.
TLVS = tlv(0x01, b"imap") + tlv(0x20, b"\x01" + struct.pack("!I", 0) + tlv(0x21, b"TLSv1.3"))
PLAIN_SSL = tlv(0x01, b"imap") + tlv(0x20, b"\x00" + struct.pack("!I", 0))


class ParserTests(SynchronousTestCase):
    def test_v1(self) -> None:
        header = v1("198.51.100.7", "127.0.0.1", 5, 143)
        self.assertEqual(parse_header(header + b"x"),
                         (("198.51.100.7", 5, "127.0.0.1", 143), len(header)))
        self.assertIsNone(parse_header(b"PROXY TCP4 1.2.3.4"))
        self.assertIsNone(parse_header(b"PRO"))
        self.assertEqual(parse_header(b"PROXY UNKNOWN\r\n"), (None, 15))

    def test_v1_errors(self) -> None:
        for header, text in [
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "spurius extra field"),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "remote address is invalid"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", "remote port is invalid"),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "Unknown proxied protocol"),
            (b"PROXY TCP4 1.2.3.4\r\n", "local address is missing"),
            (b"PROXY " + b"A" * 200, "Too long header"),
            (b"GET / HTTP/1.0\r\n", "Failed to read valid HAproxy data"),
        ]:
            with self.assertRaises(ProxyHeaderError) as cm:
                parse_header(header)
            self.assertIn(text, cm.exception.line("127.0.0.1"))
            self.assertTrue(cm.exception.line("127.0.0.1").endswith("rip=127.0.0.1)"))

    def test_v2(self) -> None:
        header = v2("203.0.113.9", "127.0.0.1", 4242, 993, TLVS)
        self.assertEqual(parse_header(header + b"a NOOP"),
                         (("203.0.113.9", 4242, "127.0.0.1", 993), len(header)))
        self.assertIsNone(parse_header(header[:20]))
        local = V2_SIG + bytes([0x20, 0x00]) + b"\x00\x00"
        self.assertEqual(parse_header(local), (None, 16))
        six = (V2_SIG + bytes([0x21, 0x21]) + struct.pack("!H", 36)
               + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
               + socket.inet_pton(socket.AF_INET6, "2001:db8::2") + struct.pack("!HH", 1, 2))
        self.assertEqual(parse_header(six), (("2001:db8::1", 1, "2001:db8::2", 2), 52))

    def test_v2_errors(self) -> None:
        bad_tlv = v2("1.2.3.4", "5.6.7.8", 1, 2, b"\x01\x00\x09ab")
        too_long = V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", MAX_V2_HEADER)
        udp = V2_SIG + bytes([0x21, 0x12]) + struct.pack("!H", 12) + b"\0" * 12
        short = V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", 4) + b"\0" * 4
        version = V2_SIG + bytes([0x11, 0x11]) + b"\0\0"
        for header, text in [(bad_tlv, "Invalid TLV"), (too_long, "Too long header"),
                             (udp, "Not using TCP"), (short, "IPv4 data is incomplete"),
                             (version, "Unsupported protocol version")]:
            with self.assertRaises(ProxyHeaderError) as cm:
                parse_header(header)
            self.assertIn(text, cm.exception.line("127.0.0.1"))


def recv_all(sock: socket.socket, timeout: float = 20) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


class ProxyMasterCase(SynchronousTestCase):
    """A master with ``haproxy = yes`` listeners imap_proxy and pop3_proxy."""

    trusted_proxies = "127.0.0.0/8"
    extra = ""

    def setUp(self) -> None:
        master = Master(users=[User("alice", "secret")], **privileged())
        self.addCleanup(master.cleanup)
        for name in ("imap_proxy", "pop3_proxy"):
            master.sockets[name] = listening_socket()
            master.ports[name] = master.sockets[name].getsockname()[1]
        master.extra_config = f"""
haproxy_trusted_networks = {self.trusted_proxies}
haproxy_timeout = 2 secs
login_trusted_networks = 192.0.2.0/24
disable_plaintext_auth = yes
service imap-login {{
  inet_listener imap_proxy {{
    port = {master.ports['imap_proxy']}
    haproxy = yes
  }}
}}
service pop3-login {{
  inet_listener pop3_proxy {{
    port = {master.ports['pop3_proxy']}
    haproxy = yes
  }}
}}
{self.extra}
"""
        master.write_config()
        self.master = master
        master.start()

    def proxied(self, port: str, header: bytes) -> LineClient:
        client = LineClient(self.master.ports[port], timeout=20)
        self.addCleanup(client.close)
        client.send(header)
        return client

    def wait_log(self, text: str) -> None:
        self.master.wait_for(lambda: text in self.master.log(), 20, text)


class ProxyTests(ProxyMasterCase):
    def test_imap_v1_real_address_in_login_and_session(self) -> None:
        client = self.proxied("imap_proxy", v1("192.0.2.7", "127.0.0.1", 50007, 143))
        self.assertTrue(client.line().startswith(b"* OK"))
        # 192.0.2.7 is in login_trusted_networks: plaintext auth is allowed
        # although disable_plaintext_auth = yes and there is no TLS.
        reply = client.tagged(b"LOGIN alice secret")
        self.assertTrue(reply[-1].startswith(b"t1 OK"), reply)
        self.wait_log("rip=192.0.2.7")
        line = next(x for x in self.master.log().splitlines() if "Login: user=<alice>" in x)
        self.assertIn("rip=192.0.2.7, lip=127.0.0.1", line)
        self.assertIn("secured", line)
        client.tagged(b"LOGOUT")

    def test_imap_v2_with_tlvs_untrusted_client_gets_no_plaintext(self) -> None:
        client = self.proxied("imap_proxy", v2("198.51.100.7", "127.0.0.1", 50008, 993,
                                               PLAIN_SSL))
        greeting = client.line()
        self.assertIn(b"LOGINDISABLED", greeting)
        reply = client.tagged(b"LOGIN alice secret")
        self.assertNotIn(b"OK", reply[-1])
        # (An SSL TLV without the client bit does not make it secured.)
        # ID forwarding is ignored from an untrusted client.
        client.tagged(b'ID ("x-originating-ip" "203.0.113.1")')
        client.tagged(b"LOGOUT")
        self.wait_log("rip=198.51.100.7")
        self.assertNotIn("203.0.113.1", self.master.log())

    def test_imap_v2_ssl_tlv_counts_as_secured(self) -> None:
        client = self.proxied("imap_proxy", v2("198.51.100.17", "127.0.0.1", 50018, 993, TLVS))
        self.assertNotIn(b"LOGINDISABLED", client.line())
        self.assertTrue(client.tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))
        self.wait_log("rip=198.51.100.17")
        line = next(x for x in self.master.log().splitlines() if "rip=198.51.100.17" in x)
        self.assertIn(", secured, session=", line)  # secured, not TLS (as Dovecot 2.3.19)

    def test_imap_id_forwarding_from_a_trusted_proxy(self) -> None:
        client = self.proxied("imap_proxy", v1("192.0.2.8", "127.0.0.1", 50009, 143))
        client.line()
        client.tagged(b'ID ("x-originating-ip" "203.0.113.9" "x-originating-port" "4242" '
                      b'"x-connected-ip" "10.1.2.3" "x-session-id" "proxySess1234")')
        reply = client.tagged(b"LOGIN alice secret")
        self.assertTrue(reply[-1].startswith(b"t2 OK"), reply)
        self.wait_log("session=<proxySess1234>")
        line = next(x for x in self.master.log().splitlines() if "Login: user=<alice>" in x)
        self.assertIn("rip=203.0.113.9, lip=10.1.2.3", line)

    def test_pop3_v1_and_xclient(self) -> None:
        client = self.proxied("pop3_proxy", v1("192.0.2.9", "127.0.0.1", 50010, 110))
        self.assertEqual(client.line(), b"+OK [XCLIENT] pydovecot ready.")
        client.send(b"XCLIENT ADDR=203.0.113.10 PORT=999 SESSION=popSess42 TTL=3\r\n")
        self.assertEqual(client.line(), b"+OK Updated")
        client.send(b"XCLIENT ADDR=not-an-ip\r\n")
        self.assertEqual(client.line(), b"-ERR Invalid parameters")
        client.send(b"USER alice\r\n")
        self.assertEqual(client.line(), b"+OK")
        client.send(b"PASS secret\r\n")
        self.assertTrue(client.line().startswith(b"+OK"))
        self.wait_log("session=<popSess42>")
        line = next(x for x in self.master.log().splitlines() if "Login: user=<alice>" in x)
        self.assertIn("rip=203.0.113.10", line)
        client.send(b"QUIT\r\n")

    def test_pop3_v2_untrusted_client(self) -> None:
        client = self.proxied("pop3_proxy", v2("198.51.100.20", "127.0.0.1", 50011, 110))
        self.assertEqual(client.line(), b"+OK pydovecot ready.")
        client.send(b"XCLIENT ADDR=203.0.113.11\r\n")
        self.assertEqual(client.line(), b"+OK You are not from trusted IP - ignoring")
        client.send(b"USER alice\r\n")
        self.assertIn(b"Plaintext authentication disallowed", client.line())
        client.send(b"QUIT\r\n")
        self.wait_log("rip=198.51.100.20")

    def test_bad_and_silent_headers_are_disconnected(self) -> None:
        client = self.proxied("imap_proxy", b"a LOGIN alice secret\r\n")
        self.assertEqual(recv_all(client.sock), b"")
        self.wait_log("haproxy: Client disconnected: Failed to read valid HAproxy data "
                      "(rip=127.0.0.1)")
        silent = LineClient(self.master.ports["pop3_proxy"], timeout=20)
        self.addCleanup(silent.close)
        start = time.monotonic()
        self.assertEqual(recv_all(silent.sock), b"")
        self.assertLess(time.monotonic() - start, 15)
        self.wait_log("haproxy: Client timed out (rip=127.0.0.1)")
        # The plain listeners are unaffected.
        plain = LineClient(self.master.ports["imap"], timeout=20)
        self.addCleanup(plain.close)
        self.assertTrue(plain.line().startswith(b"* OK"))


class UntrustedProxyTests(ProxyMasterCase):
    trusted_proxies = "10.0.0.0/8"

    def test_untrusted_proxy_is_disconnected(self) -> None:
        for port in ("imap_proxy", "pop3_proxy"):
            client = self.proxied(port, v1("192.0.2.7", "127.0.0.1", 1, 2))
            self.assertEqual(recv_all(client.sock), b"")
        self.wait_log("haproxy: Client not trusted (rip=127.0.0.1)")
        self.assertNotIn("rip=192.0.2.7", self.master.log())


class ProxiedTLSTests(SynchronousTestCase):
    """``inet_listener { ssl = yes, haproxy = yes }``: the PROXY header, then
    the TLS handshake, then a relayed session."""

    def test_header_then_tls_then_relay(self) -> None:
        import ssl

        master = Master(users=[User("alice", "secret")], ssl=True, **privileged())
        self.addCleanup(master.cleanup)
        master.sockets["imaps_proxy"] = listening_socket()
        port = master.ports["imaps_proxy"] = master.sockets["imaps_proxy"].getsockname()[1]
        master.extra_config = f"""
haproxy_trusted_networks = 127.0.0.1
service imap-login {{
  inet_listener imaps_proxy {{
    port = {port}
    ssl = yes
    haproxy = yes
  }}
}}
"""
        master.write_config()
        master.start()
        raw = socket.create_connection(("127.0.0.1", port), 20)
        raw.sendall(v2("203.0.113.50", "127.0.0.1", 40000, 993))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(tls.close)
        f = tls.makefile("rwb")
        self.assertTrue(f.readline().startswith(b"* OK"))
        f.write(b"a LOGIN alice secret\r\nb NOOP\r\n")
        f.flush()
        lines = [f.readline() for _ in range(2)]
        self.assertTrue(lines[0].startswith(b"a OK"), lines)
        self.assertTrue(lines[1].startswith(b"b OK"), lines)
        master.wait_for(lambda: "rip=203.0.113.50" in master.log(), 20, "the Login line")
        line = next(x for x in master.log().splitlines() if "rip=203.0.113.50" in x)
        self.assertIn(", TLS, session=", line)
