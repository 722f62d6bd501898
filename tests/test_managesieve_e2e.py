"""ManageSieve through the real master: managesieve-login, authd, the mail process.

Starts ``twistd -n pydovecot`` with ``protocols = … sieve`` (as root in CI:
the login process chrooted as the null user) and drives it with the real
``sieve-connect`` client (STARTTLS, PLAIN through authd, upload, activate,
list, download), then delivers over LMTP a message that the uploaded
script files into a folder, and checks the folder over IMAP.  Raw sockets
check the greeting, STARTTLS's second capability listing, SASL with a
continuation, bad input and the process isolation (/proc).  The same
pre-login conversations go to Pigeonhole's managesieve-login under a
private Dovecot (``dovecot -F``, a port from :func:`free_port`: Dovecot
cannot take a handed-in socket) and to ours, compared after normalising
the capability values and the greeting.  With CI=true a missing
sieve-connect or Dovecot fails the test.
"""

from __future__ import annotations

import base64
import imaplib
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import (
    IN_CI,
    Master,
    User,
    ensure_system_user,
    free_port,
    listening_socket,
    privileged,
    proc_ids,
)

IS_ROOT = os.geteuid() == 0
SIEVE_CONNECT = shutil.which("sieve-connect") or "/usr/bin/sieve-connect"
SCRIPT = b'require ["fileinto", "mailbox"];\r\nif header :contains "subject" "report" {\r\n' \
         b'  fileinto :create "Reports";\r\n  stop;\r\n}\r\n'


class SieveMaster(Master):
    """A master that serves ManageSieve on a handed-in socket."""

    def write_config(self) -> None:
        if "sieve" not in self.sockets:
            self.sockets["sieve"] = listening_socket()
            self.ports["sieve"] = self.sockets["sieve"].getsockname()[1]
        self.extra_config = f"""
protocols = imap pop3 lmtp sieve
service managesieve-login {{
  inet_listener sieve {{
    port = {self.ports['sieve']}
  }}
}}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
protocol sieve {{
  managesieve_implementation_string = pydovecot test
  managesieve_logout_format = bytes=%i/%o puts=%{{put_count}}
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
  sieve_quota_max_scripts = 5
}}
""" + self.extra_config
        super().write_config()


class Client:
    """A raw ManageSieve client (lines, and literals inside responses)."""

    def __init__(self, port: int, timeout: float = 20):
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(self.buf)
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def response(self) -> list[bytes]:
        """Lines up to and including the OK/NO/BYE one."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith((b"OK", b"NO", b"BYE")):
                return lines

    def starttls(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        self.sock.close()


class ManageSieveMasterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.master = SieveMaster(users=[User("alice", "secret")], ssl=True, **privileged())
        self.addCleanup(self.master.cleanup)
        self.master.start(timeout=60)
        self.port = self.master.ports["sieve"]

    def login(self) -> Client:
        c = Client(self.port)
        greeting = c.response()
        self.assertEqual(greeting[-1], b'OK "pydovecot ready."')
        c.send(b'STARTTLS\r\n')
        self.assertEqual(c.response(), [b'OK "Begin TLS negotiation now."'])
        c.starttls()
        c.response()
        token = base64.b64encode(b"\0alice\0secret")
        c.send(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
        self.assertEqual(c.response(), [b'OK "Logged in."'])
        return c

    def test_greeting_starttls_and_sasl(self) -> None:
        c = Client(self.port)
        greeting = c.response()
        self.assertEqual(greeting[0], b'"IMPLEMENTATION" "pydovecot test"')
        self.assertIn(b'"STARTTLS"', greeting)
        self.assertIn(b'"VERSION" "1.0"', greeting)
        sieve = [ln for ln in greeting if ln.startswith(b'"SIEVE"')][0]
        self.assertIn(b"fileinto", sieve.split(b"\"")[3].split())
        self.assertTrue(any(ln.startswith(b'"SASL"') for ln in greeting))
        c.send(b"PUTSCRIPT \"x\" {5+}\r\nkeep;\r\n")
        self.assertTrue(c.response()[-1].startswith(b"NO "))
        c.send(b'STARTTLS\r\n')
        self.assertEqual(c.response(), [b'OK "Begin TLS negotiation now."'])
        c.starttls()
        again = c.response()  # RFC 5804 2.2: the capabilities again, without STARTTLS
        self.assertNotIn(b'"STARTTLS"', again)
        self.assertEqual(again[-1], b'OK "TLS negotiation successful."')
        # a continued SASL exchange: empty challenge, answer as a literal
        c.send(b'AUTHENTICATE "PLAIN"\r\n')
        self.assertEqual(c.line(), b'""')
        token = base64.b64encode(b"\0alice\0wrong")
        c.send(b"{%d+}\r\n%s\r\n" % (len(token), token))
        self.assertTrue(c.response()[-1].startswith(b"NO"))
        token = base64.b64encode(b"\0alice\0secret")
        c.send(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
        self.assertEqual(c.response(), [b'OK "Logged in."'])
        c.send(b"CAPABILITY\r\n")
        caps = c.response()
        self.assertIn(b'"MAXREDIRECTS" "4"', caps)
        self.assertNotIn(b'"STARTTLS"', caps)
        c.send(b"LOGOUT\r\n")
        self.assertEqual(c.response(), [b'OK "Logout completed."'])
        c.close()
        self.master.wait_for(lambda: "puts=0" in self.master.log(), 10, "logout line")

    def test_bad_input_after_login(self) -> None:
        c = self.login()
        c.send(b"\x00\xff garbage\r\n")
        self.assertTrue(c.response()[0].startswith(b"NO "))
        c.send(b'PUTSCRIPT "../evil" {5+}\r\nkeep;\r\n')
        self.assertEqual(c.response(), [b"NO \"Invalid Sieve script name `../evil'.\""])
        # a literal over sieve_max_script_size is skipped as it arrives (never
        # buffered, never read as commands) and answered once it ended
        size = 2 << 20
        c.send(b'PUTSCRIPT "big" {%d+}\r\n' % size)
        for _ in range(size // 65536):
            c.send(b"NOOP\r\n" * (65536 // 6) + b"\n" * (65536 % 6))
        c.send(b"\r\nNOOP\r\n")
        self.assertEqual(c.response(), [b'NO (QUOTA/MAXSIZE) "Script is too large '
                                        b'(max 1048576 bytes)."'])
        self.assertEqual(c.response(), [b'OK "NOOP Completed"'])
        c.close()
        c = self.login()
        c.send(b"NOOP " + b"x" * 70000 + b"\r\n")
        self.assertEqual(c.response(), [b'BYE "Input buffer full, aborting"'])
        c.close()
        log = self.master.log()
        self.assertNotIn("Traceback", log)
        home = os.path.join(self.master.dir, "home")
        self.assertFalse(os.path.exists(os.path.join(home, "alice", "evil.sieve")))
        self.assertFalse(os.path.exists(os.path.join(home, "evil.sieve")))

    def test_a_client_that_does_not_read_does_not_stall_another(self) -> None:
        """Two sessions in alice's one mail process: one asks for ~190 MB of
        GETSCRIPT output and reads none of it; the other is answered at once,
        and the first one's output waits in bounded buffers, not in memory."""
        big = (b"# " + b"x" * 70 + b"\r\n") * 13000 + b"keep;\r\n"
        greedy = self.login()
        greedy.send(b'PUTSCRIPT "big" {%d+}\r\n' % len(big) + big + b"\r\n")
        self.assertEqual(greedy.response(), [b'OK "PUTSCRIPT completed."'])
        greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.send(b'GETSCRIPT "big"\r\n' * 200)
        time.sleep(1)
        mail = self.master.children("pydovecot/mail alice")
        self.assertEqual(len(mail), 1)
        other = self.login()
        for _ in range(5):
            started = time.monotonic()
            other.send(b"NOOP\r\n")
            self.assertEqual(other.response(), [b'OK "NOOP Completed"'])
            self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(self.master.children("pydovecot/mail alice"), mail)
        with open(f"/proc/{mail[0]}/status") as f:
            rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) * 1024
        self.assertLess(rss, 150 << 20)  # not 200 copies of the script
        other.send(b"LOGOUT\r\n")
        other.close()
        greedy.close()

    def test_managesieve_login_is_chrooted_and_unprivileged(self) -> None:
        if not IS_ROOT:
            if IN_CI:
                self.fail("CI must run as root to check privileges")
            self.skipTest("privilege checks need root")
        null_uid, null_gid = ensure_system_user("pydovecot-null")
        logins = self.master.children("pydovecot/managesieve-login")
        self.assertEqual(len(logins), 1)
        pid = logins[0]
        self.master.wait_for(lambda: proc_ids(pid)[0] == null_uid, 10, "privilege drop")
        self.assertEqual(proc_ids(pid), (null_uid, null_gid))
        self.assertEqual(os.readlink(f"/proc/{pid}/root"),
                         os.path.join(self.master.dir, "run", "empty"))
        with open(f"/proc/{pid}/status") as f:
            self.assertIn("NoNewPrivs:\t1", f.read())
        # the session runs in alice's mail process, as the mail user
        c = self.login()
        self.master.wait_for(lambda: self.master.children("pydovecot/mail alice"), 10,
                             "assigned mail process")
        mail = self.master.children("pydovecot/mail alice")[0]
        vmail_uid, _ = ensure_system_user("pdvmail")
        self.assertEqual(proc_ids(mail)[0], vmail_uid)
        c.close()

    def test_sieve_connect_upload_activate_then_lmtp_obeys(self) -> None:
        if not os.path.exists(SIEVE_CONNECT):
            if IN_CI:
                self.fail("sieve-connect is not installed")
            self.skipTest("sieve-connect is not installed")
        script = os.path.join(self.master.dir, "filter.sieve")
        with open(script, "wb") as f:
            f.write(SCRIPT)
        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [SIEVE_CONNECT, "-s", "127.0.0.1", "-p", str(self.port), "-u", "alice",
                 "--notlsverify", "--passwordfd", "0", *args],
                input=b"secret\n", capture_output=True, timeout=60)

        up = run("--upload", "--localsieve", script, "--remotesieve", "filter")
        self.assertEqual(up.returncode, 0, up.stderr + up.stdout)
        act = run("--activate", "--remotesieve", "filter")
        self.assertEqual(act.returncode, 0, act.stderr + act.stdout)
        listed = run("--list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn(b"filter", listed.stdout)
        self.assertIn(b"ACTIVE", listed.stdout.upper())
        home = os.path.join(self.master.dir, "home", "alice")
        self.assertEqual(os.readlink(os.path.join(home, ".dovecot.sieve")), "sieve/filter.sieve")
        with open(os.path.join(home, "sieve", "filter.sieve"), "rb") as f:
            self.assertEqual(f.read().replace(b"\r\n", b"\n"), SCRIPT.replace(b"\r\n", b"\n"))
        self.assertTrue(os.path.exists(os.path.join(home, "sieve", "filter.pdvbin")))
        down = os.path.join(self.master.dir, "down.sieve")
        got = run("--download", "--remotesieve", "filter", "--localsieve", down)
        self.assertEqual(got.returncode, 0, got.stderr)
        # LMTP: the uploaded script files the report into "Reports"
        with smtplib.LMTP("127.0.0.1", self.master.ports["lmtp"], timeout=30) as lmtp:
            lmtp.sendmail("bob@example.org", ["alice"],
                          b"From: bob@example.org\r\nSubject: weekly report\r\n\r\nnumbers\r\n")
            lmtp.sendmail("bob@example.org", ["alice"],
                          b"From: bob@example.org\r\nSubject: hello\r\n\r\nhi\r\n")
        imap = imaplib.IMAP4("127.0.0.1", self.master.ports["imap"], timeout=30)
        imap.login("alice", "secret")
        typ, data = imap.select("Reports")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        typ, data = imap.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        self.assertIn(b"weekly report", data[0][1])
        typ, data = imap.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        imap.logout()


DOVECOT = "/usr/sbin/dovecot"
GOOD = base64.b64encode(b"\0alice\0secret")
BAD = base64.b64encode(b"\0alice\0wrong")
#: Conversations, one connection each: (command, whether a SASL challenge answers it).
CONVERSATIONS = [
    [(b"CAPABILITY", False), (b'NOOP "x"', False), (b"NOOP 1", False), (b"LOGOUT", False)],
    [(b"CAPABILITY x", False), (b'NOOP "a" "b"', False), (b"LOGOUT", False)],
    [(b"FOO", False), (b"LISTSCRIPTS", False), (b'"str"', False), (b"NOOP", False)],
    [(b'AUTHENTICATE "FOO"', False), (b'AUTHENTICATE "PLAIN" "###"', False),
     (b"AUTHENTICATE PLAIN", False)],
    [(b'AUTHENTICATE "PLAIN"', True), (b'"*"', False), (b"NOOP", False)],
    [(b'AUTHENTICATE "PLAIN"', True), (b'"' + BAD + b'"', False), (b"NOOP", False)],
    [(b'AUTHENTICATE "PLAIN"', True), (b"{%d+}\r\n%s" % (len(GOOD), GOOD), False),
     (b"LISTSCRIPTS", False), (b"LOGOUT", False)],
    [(b'AUTHENTICATE "PLAIN" "' + GOOD + b'"', False), (b"CAPABILITY", False),
     (b"UNAUTHENTICATE", False), (b"LOGOUT", False)],
    [(b"STARTTLS", False), (b"<tls>", False), (b'AUTHENTICATE "PLAIN" "' + GOOD + b'"', False),
     (b"LOGOUT", False)],
]


def converse(port: int, steps: list[tuple[bytes, bool]]) -> list[list[bytes]]:
    c = Client(port)
    answers = [c.response()]
    for cmd, challenge in steps:
        if cmd == b"<tls>":
            c.starttls()
            answers.append(c.response())
            continue
        c.send(cmd + b"\r\n")
        answers.append([c.line()] if challenge else c.response())
        if answers[-1][-1].startswith(b"BYE"):
            break
    c.close()
    return answers


def normalise(answers: list[list[bytes]]) -> list[list[bytes]]:
    out = []
    for lines in answers:
        norm = []
        for line in lines:
            if line.startswith(b'"NOTIFY"'):
                continue  # Pigeonhole's enotify; our interpreter has no notify method
            line = re.sub(rb'^"(IMPLEMENTATION|SIEVE)" .*', rb'"\1" <value>', line)
            line = re.sub(rb'^OK "[^"]*ready\."$', b'OK "<greeting>"', line)
            norm.append(line)
        out.append(norm)
    return out


class PigeonholeLoginSideBySide(SynchronousTestCase):
    """The same pre-login conversations to Pigeonhole and to us."""

    def setUp(self) -> None:
        reason = None
        if not os.path.exists(DOVECOT) or not os.path.exists("/usr/lib/dovecot/managesieve-login"):
            reason = "Debian's dovecot-core / dovecot-managesieved is not installed"
        elif not IS_ROOT:
            reason = "a private Dovecot needs root"
        if reason:
            if IN_CI:
                self.fail(reason)
            self.skipTest(reason)
        self.master = SieveMaster(users=[User("alice", "secret")], ssl=True, **privileged())
        self.addCleanup(self.master.cleanup)
        self.master.start(timeout=60)
        self.dovecot_port = self.start_dovecot()

    def start_dovecot(self) -> int:
        d = os.path.join(self.master.dir, "dovecot")
        home = os.path.join(d, "home")
        os.makedirs(home)
        shutil.chown(home, "nobody", "nogroup")
        with open(os.path.join(d, "users"), "w") as f:
            f.write("alice:{PLAIN}secret::::::\n")
        port = free_port()
        conf = os.path.join(d, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
mail_location = maildir:~/Maildir
protocols = sieve
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.master.cert_path}
ssl_key = <{self.master.key_path}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 1
first_valid_gid = 1
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={home}
}}
service managesieve-login {{
  inet_listener sieve {{
    port = {port}
  }}
}}
""")
        proc = subprocess.Popen([DOVECOT, "-F", "-c", conf], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        self.addCleanup(stop)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1):
                    return port
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("Dovecot did not start") from None
                time.sleep(0.1)

    def test_same_pre_login_answers(self) -> None:
        for steps in CONVERSATIONS:
            theirs = normalise(converse(self.dovecot_port, steps))
            ours = normalise(converse(self.master.ports["sieve"], steps))
            self.assertEqual(theirs, ours, steps)
