"""PROXY protocol and trusted forwarding side by side with Debian's Dovecot (issue 11).

A private Dovecot master (``haproxy = yes`` listeners for imap-login and
pop3-login on loopback ports, static passdb) and pydovecot's real master get
the same hand-written PROXY v1/v2 headers, IMAP ``ID`` forwarding and POP3
``XCLIENT``; the replies and the login-process log lines must agree.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.dovecot_pair import DOVECOT
from tests.dovecot_side import require
from tests.harness import free_port
from tests.test_settings_haproxy import PLAIN_SSL, TLVS, ProxyMasterCase, v1, v2


class DovecotProxy:
    """Dovecot's master with PROXY listeners on two loopback ports."""

    def __init__(self) -> None:
        require()
        self.dir = tempfile.mkdtemp(prefix="dvproxy-")
        os.chmod(self.dir, 0o755)
        home = os.path.join(self.dir, "home")
        os.makedirs(home)
        shutil.chown(home, "nobody", "nogroup")
        self.ports = {"imap_proxy": free_port(), "pop3_proxy": free_port()}
        self.log_path = os.path.join(self.dir, "dovecot.log")
        conf = os.path.join(self.dir, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.log_path}
protocols = imap pop3
ssl = no
listen = 127.0.0.1
default_internal_user = nobody
default_login_user = nobody
haproxy_trusted_networks = 127.0.0.0/8
login_trusted_networks = 192.0.2.0/24
disable_plaintext_auth = yes
login_greeting = pydovecot ready.
passdb {{
  driver = static
  args = password=secret
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={home}
}}
mail_location = maildir:{home}/Maildir
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
  inet_listener imap_proxy {{
    port = {self.ports['imap_proxy']}
    haproxy = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
  inet_listener pop3_proxy {{
    port = {self.ports['pop3_proxy']}
    haproxy = yes
  }}
}}
""")
        self.proc = subprocess.Popen([DOVECOT, "-c", conf, "-F"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.cleanup()
                        raise AssertionError("Dovecot did not start") from None
                    time.sleep(0.1)

    def log(self) -> str:
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def talk(port: int, header: bytes, lines: list[bytes], timeout: float = 15) -> list[bytes]:
    """Send the header, read the greeting, then one reply line per line sent
    (IMAP: up to the tagged reply); [b"<EOF>"] when the server closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout)
    buf = b""
    out: list[bytes] = []

    def line() -> bytes:
        nonlocal buf
        while b"\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        one, buf = buf.split(b"\r\n", 1)
        return one

    try:
        s.sendall(header)
        out.append(line())
        for text in lines:
            s.sendall(text + b"\r\n")
            tag = text.split(b" ", 1)[0]
            while True:
                got = line()
                if got.startswith(b"* ID") or got.startswith(b"* CAPABILITY"):
                    continue
                out.append(got)
                if not text[:1].islower() or got.startswith(tag + b" "):
                    break
    except (EOFError, ConnectionResetError):
        out.append(b"<EOF>")
    finally:
        s.close()
    return out


def login_line(log: str, marker: str) -> str:
    line = next(x for x in log.splitlines() if "Login: user=<alice>" in x and marker in x)
    return re.sub(r"mpid=\d+, |session=<[^>]*>", "", line.split("Login: ", 1)[1])


class SideBySideTests(ProxyMasterCase):
    def setUp(self) -> None:
        super().setUp()
        self.dovecot = DovecotProxy()
        self.addCleanup(self.dovecot.cleanup)

    def both(self, port: str, header: bytes, lines: list[bytes]) -> list[bytes]:
        ours = talk(self.master.ports[port], header, lines)
        theirs = talk(self.dovecot.ports[port], header, lines)
        self.assertEqual(len(ours), len(theirs), (ours, theirs))
        return list(zip(ours, theirs, strict=True))

    def wait(self, text: str) -> None:
        deadline = time.monotonic() + 20
        while text not in self.dovecot.log() or text not in self.master.log():
            self.assertLess(time.monotonic(), deadline, f"{text}\n{self.dovecot.log()}")
            time.sleep(0.1)

    def test_imap_trusted_v1_and_id_forwarding(self) -> None:
        pairs = self.both("imap_proxy", v1("192.0.2.8", "127.0.0.1", 50009, 143), [
            b'a ID ("x-originating-ip" "203.0.113.9" "x-originating-port" "4242" '
            b'"x-connected-ip" "10.1.2.3" "x-session-id" "proxySess1234")',
            b"b LOGIN alice secret", b"c LOGOUT"])
        for ours, theirs in pairs[1:]:
            self.assertEqual(ours.split(b" ")[:2], theirs.split(b" ")[:2], (ours, theirs))
        self.wait("session=<proxySess1234>")
        self.assertEqual(login_line(self.master.log(), "proxySess1234"),
                         login_line(self.dovecot.log(), "proxySess1234"))

    def test_imap_v2_untrusted_client_sees_logindisabled(self) -> None:
        greeting, *replies = self.both("imap_proxy", v2("198.51.100.7", "127.0.0.1", 5, 993,
                                                        PLAIN_SSL), [b"a LOGIN alice secret"])
        for banner in greeting:
            self.assertIn(b"LOGINDISABLED", banner)
        # Dovecot's "* BAD [ALERT] … the password was exposed." then the NO.
        for ours, theirs in replies:
            self.assertEqual(ours, theirs)

    def test_imap_v2_ssl_tlv_is_secured(self) -> None:
        (greeting, lines) = self.both("imap_proxy", v2("198.51.100.17", "127.0.0.1", 5, 993,
                                                       TLVS), [b"a LOGIN alice secret"])
        for banner in greeting:
            self.assertNotIn(b"LOGINDISABLED", banner)
        self.assertEqual(lines[0].split(b" ")[:2], lines[1].split(b" ")[:2])
        self.wait("rip=198.51.100.17")
        self.assertEqual(login_line(self.master.log(), "rip=198.51.100.17"),
                         login_line(self.dovecot.log(), "rip=198.51.100.17"))

    def test_pop3_xclient(self) -> None:
        pairs = self.both("pop3_proxy", v1("192.0.2.9", "127.0.0.1", 50010, 110), [
            b"XCLIENT ADDR=203.0.113.10 PORT=999 SESSION=popSess42 TTL=3",
            b"XCLIENT ADDR=not-an-ip", b"USER alice", b"PASS secret"])
        self.assertTrue(all(b"[XCLIENT]" in x for x in pairs[0]), pairs[0])
        for ours, theirs in pairs[1:4]:
            self.assertEqual(ours, theirs)
        self.assertTrue(all(x.startswith(b"+OK") for x in pairs[4]), pairs[4])
        self.wait("session=<popSess42>")
        self.assertEqual(login_line(self.master.log(), "popSess42"),
                         login_line(self.dovecot.log(), "popSess42"))
        pairs = self.both("pop3_proxy", v2("198.51.100.20", "127.0.0.1", 5, 110),
                          [b"XCLIENT ADDR=203.0.113.11", b"USER alice"])
        self.assertEqual(pairs[1][0], pairs[1][1])
        self.assertEqual(pairs[2][0], pairs[2][1])

    def test_bad_header_log_line(self) -> None:
        self.both("imap_proxy", b"a LOGIN alice secret\r\n", [])
        self.wait("haproxy: Client disconnected: Failed to read valid HAproxy data "
                  "(rip=127.0.0.1)")
