"""The login processes under attack, through the real master (issue 7).

Each test starts ``twistd -n pydovecot`` (as root in CI: chrooted login
processes as the null user) and attacks imap-login over loopback: input
while the auth delay runs, an over-long LITERAL+ literal, a client that
trickles a byte at a time, log injection through a literal user name, a
TLS client that never reads and one that floods a stopped mail process,
authd stopped and killed, and the per-process and per-IP limits.  Memory
is read from /proc/PID/status (VmRSS) of the ``pydovecot/imap-login``
child.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import IN_CI, LineClient, Master, User, privileged

IS_ROOT = os.geteuid() == 0
MiB = 1 << 20


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def read_until(sock, marker: bytes, timeout: float = 20) -> bytes:
    """Read from ``sock`` until ``marker`` shows up or the peer closes."""
    sock.settimeout(timeout)
    got = b""
    while marker not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def read_to_eof(sock, timeout: float = 20) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def tls_client(port: int, timeout: float = 20) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


class LoginMasterTestCase(SynchronousTestCase):
    """One master per test, with real privileges when run as root."""

    ssl = False
    extra = ""

    def setUp(self) -> None:
        kwargs = privileged()
        self.master = Master(users=[User("alice", "secret"), User("bob", "hunter2")],
                             ssl=self.ssl, extra_config=self.extra, **kwargs)
        self.addCleanup(self.master.cleanup)
        self.prepare()
        self.master.start()

    def prepare(self) -> None:
        """Hook: runs before the master starts."""

    def login_pid(self) -> int:
        pids = self.master.children("pydovecot/imap-login")
        self.assertEqual(len(pids), 1, pids)
        return pids[0]

    def greeted(self, port: str = "imap") -> LineClient:
        client = LineClient(self.master.ports[port], timeout=20)
        self.addCleanup(client.close)
        self.assertTrue(client.line().startswith(b"* OK"))
        return client


class InputBoundTests(LoginMasterTestCase):
    extra = "auth_failure_delay = 3 secs\nlogin_timeout = 3 secs\n"

    def test_input_buffer_full_while_the_auth_delay_runs(self) -> None:
        client = self.greeted()
        start = time.monotonic()
        client.send(b"a LOGIN alice wrong\r\n" + b"b NOOP\r\n" * 25000)
        got = read_to_eof(client.sock)
        self.assertIn(b"* BYE Input buffer full, aborting\r\n", got)
        self.assertNotIn(b"NOOP completed", got)
        # Cut at once, not after the auth delay.
        self.assertLess(time.monotonic() - start, 2.5)
        self.master.wait_for(lambda: "Disconnected (Input buffer full)" in self.master.log(),
                             10, "the disconnect log line")

    def test_overlong_literal_plus_is_skipped_whole(self) -> None:
        pid = self.login_pid()
        client = self.greeted()
        before = rss(pid)
        size = 100_000_000
        client.send(b"a LOGIN {%d+}\r\n" % size)
        chunk = (b"b LOGOUT\r\nc LOGIN alice secret\r\n" * 40000)[:MiB]
        sent = 0
        while sent < size:
            piece = chunk[:min(MiB, size - sent)]
            client.send(piece)
            sent += len(piece)
        client.send(b" secret\r\nd NOOP\r\n")
        lines = client.until_tagged(b"d")
        self.assertEqual(lines, [b"a BAD Error in IMAP command: Too long argument.",
                                 b"d OK NOOP completed."])
        self.assertLess(rss(pid) - before, 4 * MiB)

    def test_login_timeout_counts_from_connect(self) -> None:
        client = self.greeted()
        start = time.monotonic()
        got = b""
        client.sock.settimeout(0.5)
        while time.monotonic() - start < 20:
            try:
                client.send(b"a")  # one byte at a time never completes a command
            except OSError:
                break
            try:
                chunk = client.sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            got += chunk
        elapsed = time.monotonic() - start
        self.assertIn(b"* BYE Disconnected for inactivity.\r\n", got)
        self.assertGreater(elapsed, 2.5)
        self.assertLess(elapsed, 10)

class LogInjectionTests(LoginMasterTestCase):
    def forge(self) -> list[str]:
        """LOGIN with CR LF in a literal user name; the log lines naming it."""
        client = self.greeted()
        user = b"evil\r\nimap-login: Info: Login: user=<forged>, method=PLAIN"
        client.send(b"a LOGIN {%d+}\r\n%s wrong\r\n" % (len(user), user))
        self.assertTrue(client.until_tagged(b"a")[-1].startswith(b"a NO"))
        client.send(b"b LOGOUT\r\n")
        client.until_tagged(b"b")
        self.master.wait_for(lambda: "Aborted login by logging out" in self.master.log(),
                             10, "the disconnect log line")
        return [x for x in self.master.log().splitlines() if "forged" in x]

    def test_login_process_lines_cannot_be_forged(self) -> None:
        lines = [x for x in self.forge() if " imap-login: " in x]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("user=<evil??imap-login: Info: Login: user=<forged>, method=PLAIN>, "
                      "rip=127.0.0.1", lines[0])

    def test_no_process_logs_a_forged_line(self) -> None:
        # authd logs the name too ("Invalid username"): sanitised, it stays
        # on its own line.
        for line in self.forge():
            self.assertIn("evil??imap-login: Info: Login: user=<forged>", line)


class LimitTests(LoginMasterTestCase):
    extra = "login_max_ip_connections = 3\n"

    def test_per_ip_cap_on_prelogin_connections(self) -> None:
        clients = [self.greeted() for _ in range(3)]
        extra = LineClient(self.master.ports["imap"], timeout=20)
        self.addCleanup(extra.close)
        self.assertEqual(extra.line(), b"* BYE [LIMIT] Maximum number of connections from "
                                       b"your IP exceeded (login_max_ip_connections=3)")
        self.assertRaises(EOFError, extra.line)
        # A client that logs in frees its slot.
        self.assertTrue(clients[0].tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))
        self.greeted()

    def test_pipelined_authenticates_run_one_at_a_time(self) -> None:
        client = self.greeted()
        wrong = base64.b64encode(b"\0alice\0wrong")
        right = base64.b64encode(b"\0alice\0secret")
        client.send(b"a AUTHENTICATE PLAIN %s\r\nb AUTHENTICATE PLAIN %s\r\n" % (wrong, right))
        lines = client.until_tagged(b"b")
        self.assertTrue(lines[0].startswith(b"a NO [AUTHENTICATIONFAILED]"), lines)
        self.assertTrue(lines[-1].startswith(b"b OK"), lines)


class ClientLimitTests(LoginMasterTestCase):
    extra = "service imap-login {\n  client_limit = 4\n}\n"

    def test_client_limit_drops_the_oldest_prelogin_client(self) -> None:
        # Two logged-in sessions do not count (plaintext: the fd left).
        first = self.greeted()
        for _ in range(2):
            c = self.greeted()
            self.assertTrue(c.tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))
        others = [self.greeted() for _ in range(3)]
        # 4 = client_limit: the next one pushes the oldest pre-login one out.
        newest = self.greeted()
        self.assertEqual(first.line(), b"* BYE Connection queue full")
        self.assertRaises(EOFError, first.line)
        for c in (*others, newest):
            self.assertEqual(c.tagged(b"NOOP"), [b"t1 OK NOOP completed."])


def _maildir_message(home: str, size: int) -> None:
    """A message of ``size`` bytes in a fresh Maildir under ``home``."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(home, "Maildir", sub), exist_ok=True)
    line = b"x" * 76 + b"\r\n"
    body = line * (size // len(line))
    with open(os.path.join(home, "Maildir", "cur", "1700000000.M1P1.test:2,S"), "wb") as f:
        f.write(b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: big\r\n\r\n")
        f.write(body)
    if IS_ROOT:
        import pwd

        entry = pwd.getpwnam("pdvmail")
        for root, dirs, files in os.walk(home):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, entry.pw_uid, entry.pw_gid)
        os.chmod(home, 0o700)


class TLSRelayTests(LoginMasterTestCase):
    ssl = True
    extra = "login_auth_timeout = 2 secs\n"

    def prepare(self) -> None:
        if self._testMethodName.startswith("test_fetch"):
            _maildir_message(os.path.join(self.master.dir, "home", "alice"), 20 * MiB)

    def tls_session(self) -> ssl.SSLSocket:
        client = tls_client(self.master.ports["imaps"])
        self.addCleanup(client.close)
        read_until(client, b"\r\n")
        client.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
        got = read_until(client, b"\r\nb ")
        read_until(client, b"\r\n") if not got.endswith(b"\r\n") else None
        self.assertIn(b"a OK", got)
        return client

    def sample_growth(self, pid: int, before: int, seconds: float = 5) -> int:
        """The largest RSS growth of ``pid`` over ``seconds``."""
        worst = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            worst = max(worst, rss(pid) - before)
            time.sleep(0.1)
        return worst

    def test_fetch_pipeline_a_client_never_reads(self) -> None:
        pid = self.login_pid()
        client = self.tls_session()
        before = rss(pid)
        client.sendall(b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % i for i in range(10)))
        # The relay keeps going until the client's socket is full; then
        # nothing more may pile up here.
        self.master.wait_for(lambda: _unread(client) > 32 * 1024, 60,
                             "the FETCH output reaching the client")
        growth = self.sample_growth(pid, before, 4)
        self.assertLess(growth, 8 * MiB, f"imap-login grew by {growth / MiB:.1f} MiB")
        # Still a working session once the client reads.
        client.settimeout(60)
        total = 0
        while True:
            chunk = client.recv(1 << 20)
            self.assertTrue(chunk)
            total += len(chunk)
            if b"f9 OK" in chunk[-200:]:
                break
        self.assertGreater(total, 10 * 20 * MiB)

    def test_upload_to_a_mail_process_that_does_not_read(self) -> None:
        pid = self.login_pid()
        client = self.tls_session()
        mail = [p for p in self.master.children("pydovecot/mail") if "alice" in _title(p)]
        self.assertEqual(len(mail), 1, [_title(p) for p in self.master.children("")])
        before = rss(pid)
        os.kill(mail[0], signal.SIGSTOP)
        self.addCleanup(_kill, mail[0])
        chunk = b"c NOOP\r\n" * (MiB // 8)
        client.settimeout(2)
        sent = 0
        try:
            while sent < 100 * MiB:
                client.sendall(chunk)
                sent += len(chunk)
        except (TimeoutError, ssl.SSLError, OSError):
            pass  # blocked: back-pressure reached the client
        growth = self.sample_growth(pid, before, 2)
        self.assertLess(growth, 8 * MiB, f"imap-login grew by {growth / MiB:.1f} MiB")
        self.assertLess(sent, 100 * MiB, "the login process read everything")

    def test_authd_stopped_then_back(self) -> None:
        auth = self.master.children("pydovecot/auth")
        self.assertEqual(len(auth), 1)
        os.kill(auth[0], signal.SIGSTOP)
        self.addCleanup(_cont, auth[0])
        client = self.greeted()
        start = time.monotonic()
        reply = client.tagged(b"LOGIN alice secret")[-1]
        elapsed = time.monotonic() - start
        self.assertTrue(reply.startswith(b"t1 NO [UNAVAILABLE]"), reply)
        self.assertLess(elapsed, 6)  # login_auth_timeout = 2 secs
        os.kill(auth[0], signal.SIGCONT)
        reply = client.tagged(b"LOGIN alice secret")[-1]
        self.assertTrue(reply.startswith(b"t2 OK"), reply)

    def test_tls_session_survives_an_authd_crash(self) -> None:
        client = self.tls_session()
        old = self.master.children("pydovecot/auth")
        self.assertEqual(len(old), 1)
        login = self.login_pid()
        os.kill(old[0], signal.SIGKILL)
        self.master.wait_for(
            lambda: [p for p in self.master.children("pydovecot/auth") if p not in old],
            20, "a new authd")
        back = time.monotonic()
        client.sendall(b"n NOOP\r\n")
        self.assertIn(b"n OK", read_until(client, b"n OK"))
        # Logins work again as soon as the new authd listens.
        while True:
            c = LineClient(self.master.ports["imap"], timeout=20, greeting=True)
            reply = c.tagged(b"LOGIN alice secret")[-1]
            c.close()
            if reply.startswith(b"t1 OK"):
                break
            self.assertLess(time.monotonic() - back, 15, reply)
        recovered = time.monotonic() - back
        self.assertLess(recovered, 5 if IN_CI else 10)
        self.assertEqual(self.login_pid(), login)  # the login process did not restart
        client.sendall(b"m NOOP\r\n")
        self.assertIn(b"m OK", read_until(client, b"m OK"))


def _unread(sock) -> int:
    """Bytes waiting in the kernel's receive queue of ``sock``."""
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def _title(pid: int) -> str:
    from tests.harness import title

    return title(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _cont(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except OSError:
        pass
