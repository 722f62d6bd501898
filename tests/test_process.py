"""Process-level tests: the real master, real clients, over loopback.

Each test starts ``twistd -n pydovecot`` on a temporary config with free
ports and talks to it with imaplib, poplib and smtplib.LMTP.  As root (CI),
the login and mail processes really drop privileges, and the tests check
that from /proc.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.harness import IN_CI, Master, User, ensure_system_user, privileged, proc_ids, title
from tests.harness import LineClient as RawClient

MESSAGE = (
    "From: Bob <bob@example.org>\r\n"
    "To: Alice <alice@example.org>\r\n"
    "Subject: {subject}\r\n"
    "Message-ID: <{subject}@example.org>\r\n"
    "\r\n"
    "Hello Alice,\r\n"
    ".a line that starts with a dot\r\n"
    "bye\r\n"
)

IS_ROOT = os.geteuid() == 0


def deliver(master: Master, rcpt: str, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", master.ports["lmtp"], timeout=20) as lmtp:
        lmtp.sendmail("bob@example.org", [rcpt], MESSAGE.format(subject=subject))


def imap(master: Master, user: str = "alice", password: str = "secret") -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", master.ports["imap"], timeout=20)
    client.login(user, password)
    return client


class MasterTestCase(SynchronousTestCase):
    """Starts a master per test; as root with real users and privileges."""

    ssl = False
    users = [User("alice", "secret"), User("bob", "hunter2")]

    def setUp(self) -> None:
        kwargs = privileged()
        self.master = Master(users=list(self.users), ssl=self.ssl,
                             extra_config=getattr(self, "extra", ""), **kwargs)
        certs = getattr(self, "certs", None)
        if certs:
            shutil.copy(certs["server"], self.master.cert_path)
            shutil.copy(certs["server"].replace(".pem", ".key"), self.master.key_path)
        self.addCleanup(self.master.cleanup)
        self.master.start()


class EndToEndTests(MasterTestCase):
    def test_deliver_then_read_with_imap_and_pop3(self) -> None:
        deliver(self.master, "alice@example.org", "first")
        client = imap(self.master)
        typ, data = client.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(typ, "OK")
        self.assertIn(b"Subject: first", data[0][1])
        typ, data = client.fetch("1", "(BODY[TEXT])")
        self.assertIn(b".a line that starts with a dot\r\n", data[0][1])
        client.logout()

        pop = poplib.POP3("127.0.0.1", self.master.ports["pop3"], timeout=20)
        pop.user("alice")
        pop.pass_("secret")
        count, _size = pop.stat()
        self.assertEqual(count, 1)
        _resp, lines, _octets = pop.retr(1)
        self.assertIn(b"Subject: first", lines)
        self.assertIn(b".a line that starts with a dot", lines)
        pop.quit()

    def test_lmtp_rejects_unknown_recipient_and_accepts_known(self) -> None:
        with smtplib.LMTP("127.0.0.1", self.master.ports["lmtp"], timeout=20) as lmtp:
            refused = lmtp.sendmail("x@example.org", ["alice@example.org", "nobody@example.org"],
                                    MESSAGE.format(subject="mixed"))
        self.assertIn("nobody@example.org", refused)
        self.assertEqual(refused["nobody@example.org"][0], 550)
        client = imap(self.master)
        self.assertEqual(client.select("INBOX")[1], [b"1"])
        client.logout()

    def test_uids_survive_a_restart(self) -> None:
        for n in range(3):
            deliver(self.master, "alice", f"msg{n}")
        client = imap(self.master)
        client.select("INBOX")
        before = client.response("UIDVALIDITY")[1]
        uids = client.uid("SEARCH", "ALL")[1]
        client.logout()

        self.master.stop()
        self.master.start()
        client = imap(self.master)
        client.select("INBOX")
        self.assertEqual(client.response("UIDVALIDITY")[1], before)
        self.assertEqual(client.uid("SEARCH", "ALL")[1], uids)
        self.assertEqual(uids, [b"1 2 3"])
        client.logout()
        uidlist = os.path.join(self.master.dir, "home", "alice", "Maildir", "dovecot-uidlist")
        with open(uidlist) as f:
            self.assertTrue(f.readline().startswith("3 V"))

    def test_two_users_keep_their_own_mail(self) -> None:
        deliver(self.master, "alice", "for-alice")
        deliver(self.master, "bob", "for-bob")
        a = imap(self.master)
        b = imap(self.master, "bob", "hunter2")
        a.select("INBOX")
        b.select("INBOX")
        self.assertIn(b"for-alice", a.fetch("1", "(BODY.PEEK[HEADER])")[1][0][1])
        self.assertIn(b"for-bob", b.fetch("1", "(BODY.PEEK[HEADER])")[1][0][1])
        a.logout()
        b.logout()

    def test_idle_sees_a_delivery(self) -> None:
        client = imap(self.master)
        client.select("INBOX")
        tag = client._new_tag()
        client.send(tag + b" IDLE\r\n")
        self.assertTrue(client.readline().startswith(b"+"))
        deliver(self.master, "alice", "while-idle")
        line = client.readline()
        self.assertEqual(line.strip(), b"* 1 EXISTS")
        client.send(b"DONE\r\n")
        while not client.readline().startswith(tag):
            pass
        client.logout()

    def test_pipelined_commands_after_login(self) -> None:
        deliver(self.master, "alice", "piped")
        raw = RawClient(self.master.ports["imap"])
        self.assertTrue(raw.line().startswith(b"* OK"))
        raw.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc FETCH 1 (FLAGS)\r\nd LOGOUT\r\n")
        lines = raw.until_tagged(b"a")
        self.assertTrue(lines[-1].startswith(b"a OK"), lines)
        self.assertTrue(raw.until_tagged(b"b")[-1].startswith(b"b OK"))
        self.assertTrue(raw.until_tagged(b"c")[-1].startswith(b"c OK"))
        self.assertTrue(raw.until_tagged(b"d")[-1].startswith(b"d OK"))
        raw.close()

    def test_logs_have_dovecot_shape(self) -> None:
        client = imap(self.master)
        client.logout()
        with self.assertRaises(imaplib.IMAP4.error):
            imap(self.master, "alice", "wrong-password-xyz")
        with self.assertRaises(imaplib.IMAP4.error):
            imap(self.master, "nosuchuser", "another-secret-xyz")
        self.master.wait_for(lambda: "Disconnected: Logged out" in self.master.log(), 10,
                             "logout log line")
        self.master.wait_for(lambda: "unknown user" in self.master.log(), 10, "auth log")
        log = self.master.log()
        self.assertRegex(log, r"imap-login: Info: Login: user=<alice>, method=PLAIN, "
                              r"rip=127\.0\.0\.1, lip=127\.0\.0\.1, mpid=\d+.*session=<[^>]+>")
        self.assertRegex(log, r"imap\(alice\)<\d+><[^>]+>: Info: Disconnected: Logged out "
                              r"in=\d+ out=\d+")
        self.assertRegex(log, r"auth: Info: passwd-file\(alice,127\.0\.0\.1.*[Pp]assword mismatch")
        self.assertIn("unknown user", log)
        self.assertNotIn("wrong-password-xyz", log)
        self.assertNotIn("another-secret-xyz", log)
        self.assertNotIn("secret", re.sub(r"secret\w*", "", log).replace("secret", ""))


class BadInputTests(MasterTestCase):
    def test_wrong_password_is_authenticationfailed_after_a_delay(self) -> None:
        raw = RawClient(self.master.ports["imap"])
        raw.line()
        start = time.monotonic()
        raw.send(b"a LOGIN alice wrong\r\n")
        reply = raw.until_tagged(b"a")[-1]
        self.assertGreaterEqual(time.monotonic() - start, 0.15)
        self.assertEqual(reply, b"a NO [AUTHENTICATIONFAILED] Authentication failed.")
        raw.send(b"b LOGIN nosuchuser wrong\r\n")
        self.assertEqual(raw.until_tagged(b"b")[-1],
                         b"b NO [AUTHENTICATIONFAILED] Authentication failed.")
        raw.close()

    def test_malformed_commands_get_bad_with_a_reason(self) -> None:
        raw = RawClient(self.master.ports["imap"])
        raw.line()
        for command in (b"a FROBNICATE", b"b LOGIN", b'c LOGIN "unterminated', b"d SELECT INBOX"):
            raw.send(command + b"\r\n")
            tag = command.split()[0]
            reply = raw.until_tagged(tag)[-1]
            self.assertTrue(reply.startswith(tag + b" BAD "), reply)
            self.assertGreater(len(reply), len(tag) + 5)
        raw.send(b"e LOGIN alice secret\r\n")
        self.assertTrue(raw.until_tagged(b"e")[-1].startswith(b"e OK"))
        for command in (b"f FETCH", b"g FETCH x (FLAGS)", b"h STORE 1 +FLAGS", b"i NOSUCH",
                        b"j SELECT", b"k UID FETCH 1:* (BODY[1.2.x])"):
            raw.send(command + b"\r\n")
            tag = command.split()[0]
            lines = raw.until_tagged(tag)
            self.assertTrue(lines[-1].startswith(tag + b" BAD ") or
                            lines[-1].startswith(tag + b" NO "), lines)
            self.assertNotIn(b"Traceback", b"".join(lines))
        raw.send(b"z LOGOUT\r\n")
        raw.until_tagged(b"z")
        raw.close()
        self.assertNotIn("Traceback", self.master.log())

    def test_over_long_line_is_refused(self) -> None:
        raw = RawClient(self.master.ports["imap"])
        raw.line()
        raw.send(b"a LOGIN alice secret\r\n")
        raw.until_tagged(b"a")
        raw.send(b"b SEARCH SUBJECT " + b"x" * 200_000 + b"\r\n")
        lines = raw.until_tagged(b"b")
        self.assertRegex(lines[-1], rb"^b BAD")
        raw.send(b"c NOOP\r\n")
        self.assertTrue(raw.until_tagged(b"c")[-1].startswith(b"c OK"))
        raw.close()

    def test_pre_auth_over_long_line_is_refused(self) -> None:
        raw = RawClient(self.master.ports["imap"])
        raw.line()
        raw.send(b"a LOGIN " + b"x" * 100_000 + b" y\r\n")
        try:
            lines = [raw.line()]
        except (EOFError, OSError):
            lines = [b"(closed)"]
        self.assertTrue(lines[0].startswith(b"a BAD") or lines[0].startswith(b"* BAD")
                        or lines[0].startswith(b"* BYE") or lines[0] == b"(closed)", lines)
        raw.close()

    def test_pop3_wrong_password(self) -> None:
        pop = poplib.POP3("127.0.0.1", self.master.ports["pop3"], timeout=20)
        pop.user("alice")
        with self.assertRaises(poplib.error_proto) as cm:
            pop.pass_("wrong")
        self.assertIn(b"Authentication failed", cm.exception.args[0])
        pop.quit()


class TLSTests(MasterTestCase):
    ssl = True

    def test_imap_starttls_then_login(self) -> None:
        deliver(self.master, "alice", "over-tls")
        client = imaplib.IMAP4("127.0.0.1", self.master.ports["imap"], timeout=20)
        client.starttls(ssl_context=self._localhost_context())
        client.login("alice", "secret")
        client.select("INBOX")
        self.assertIn(b"over-tls", client.fetch("1", "(BODY.PEEK[HEADER])")[1][0][1])
        client.logout()

    def test_imap_implicit_tls(self) -> None:
        deliver(self.master, "alice", "implicit")
        client = imaplib.IMAP4_SSL("127.0.0.1", self.master.ports["imaps"],
                                   ssl_context=self._localhost_context(), timeout=20)
        client.login("alice", "secret")
        client.select("INBOX")
        data = client.fetch("1", "(BODY[])")[1][0][1]
        self.assertIn(b"implicit", data)
        client.logout()
        self.master.wait_for(lambda: ", TLS" in self.master.log(), 5, "TLS login log")

    def test_pop3_implicit_tls_and_stls(self) -> None:
        deliver(self.master, "alice", "pop-tls")
        pop = poplib.POP3_SSL("127.0.0.1", self.master.ports["pop3s"],
                              context=self._localhost_context(), timeout=20)
        pop.user("alice")
        pop.pass_("secret")
        self.assertEqual(pop.stat()[0], 1)
        pop.quit()
        pop = poplib.POP3("127.0.0.1", self.master.ports["pop3"], timeout=20)
        pop.stls(context=self._localhost_context())
        pop.user("alice")
        pop.pass_("secret")
        self.assertEqual(pop.stat()[0], 1)
        pop.quit()

    def _localhost_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.master.cert_path)
        ctx.check_hostname = False  # we connect to 127.0.0.1; the cert names localhost
        return ctx


class PrivilegeTests(MasterTestCase):
    """As root: the login process is chrooted as the null user, the mail
    process runs as the mail user, and a killed login process comes back."""

    def setUp(self) -> None:
        if not IS_ROOT:
            if IN_CI:
                self.fail("CI must run as root to check privileges")
            raise SkipTest("privilege tests need root")
        super().setUp()

    def test_login_process_is_chrooted_null_user(self) -> None:
        null_uid, null_gid = ensure_system_user("pydovecot-null")
        logins = self.master.children("pydovecot/imap-login")
        self.assertEqual(len(logins), 1, [title(p) for p in self.master.descendants()])
        pid = logins[0]
        self.master.wait_for(lambda: proc_ids(pid)[0] == null_uid, 10, "privilege drop")
        self.assertEqual(proc_ids(pid), (null_uid, null_gid))
        self.assertEqual(os.readlink(f"/proc/{pid}/root"),
                         os.path.join(self.master.dir, "run", "empty"))
        with open(f"/proc/{pid}/status") as f:
            self.assertIn("NoNewPrivs:\t1", f.read())
        for pid in self.master.children("pydovecot/pop3-login"):
            self.assertEqual(proc_ids(pid)[0], null_uid)

    def test_mail_process_runs_as_mail_user(self) -> None:
        vmail_uid, vmail_gid = ensure_system_user("pdvmail")
        a = imap(self.master)
        b = imap(self.master, "bob", "hunter2")
        self.master.wait_for(lambda: self.master.children("pydovecot/mail alice"), 10,
                             "assigned mail process")
        pids = self.master.children("pydovecot/mail alice")
        self.assertEqual(len(pids), 1)  # alice and bob share the vmail process
        self.assertEqual(proc_ids(pids[0]), (vmail_uid, vmail_gid))
        mpids = re.findall(r"Login: user=<(\w+)>.*?mpid=(\d+)", self.master.log())
        self.assertEqual({pid for _user, pid in mpids}, {str(pids[0])})
        a.logout()
        b.logout()
        home = os.path.join(self.master.dir, "home", "alice")
        self.assertEqual(os.stat(home).st_uid, vmail_uid)

    def test_killed_login_process_is_replaced(self) -> None:
        old = self.master.children("pydovecot/imap-login")
        os.kill(old[0], signal.SIGKILL)
        self.master.wait_for(
            lambda: [p for p in self.master.children("pydovecot/imap-login") if p not in old],
            15, "a new imap-login")
        deadline = time.monotonic() + 15
        while True:
            try:
                client = imap(self.master)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        client.logout()
        self.assertIn("killed with signal 9", self.master.log())


class ReloadAndStopTests(MasterTestCase):
    def test_sighup_reloads_and_sigterm_stops_everything(self) -> None:
        children = self.master.descendants()
        self.assertTrue(children)
        session = imap(self.master)
        session.select("INBOX")
        os.kill(self.master.process.pid, signal.SIGHUP)
        self.master.wait_for(lambda: "reloading configuration" in self.master.log(), 10,
                             "reload")
        self.master.wait_ready()
        # A login racing the old processes' exit may get a temporary
        # failure (NO [UNAVAILABLE]) and is retried, as a client would.
        for attempt in range(5):
            try:
                client = imap(self.master)
                break
            except imaplib.IMAP4.error:
                if attempt == 4:
                    raise
                time.sleep(0.5)
        client.logout()
        # A session that was open across the reload goes on.  (A delivery
        # racing the old lmtp's exit is retried, as an MTA would.)
        for attempt in range(3):
            try:
                deliver(self.master, "alice", "after-reload")
                break
            except (smtplib.SMTPException, OSError):
                if attempt == 2:
                    raise
                time.sleep(0.5)
        self.assertEqual(session.noop()[0], "OK")
        self.assertEqual(session.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[0], "OK")
        session.logout()
        children = self.master.descendants()
        # twistd re-raises the terminating signal after a clean shutdown.
        self.assertIn(self.master.stop(), (0, -signal.SIGTERM))
        self.assertIn("pydovecot shutting down", self.master.log())
        time.sleep(0.5)
        alive = [p for p in children if os.path.exists(f"/proc/{p}")
                 and title(p).startswith("pydovecot/")]
        self.assertEqual(alive, [])


class ConfigErrorTests(SynchronousTestCase):
    def test_bad_config_stops_the_start_with_file_and_line(self) -> None:
        master = Master(extra_config="no_such_setting = 1\n")
        self.addCleanup(master.cleanup)
        with self.assertRaises(RuntimeError) as cm:
            master.start(timeout=20)
        self.assertRegex(str(cm.exception), r"pydovecot\.conf:\d+: .*no_such_setting")


class EmbeddedDefaultTests(SynchronousTestCase):
    """``twistd -n pydovecot`` with no config: the README's first command."""

    def test_embedded_default_serves_the_demo_user(self) -> None:
        import subprocess
        import sys
        import tempfile

        from tests.harness import MASTER_SCRIPT, ROOT

        for port in (10143, 10110, 10024):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise SkipTest(f"port {port} is taken; the embedded default needs it")
        workdir = tempfile.mkdtemp(prefix="pydovecot-default-")
        os.chmod(workdir, 0o755)
        out = open(os.path.join(workdir, "twistd.out"), "wb")  # noqa: SIM115
        self.addCleanup(out.close)
        proc = subprocess.Popen(
            [sys.executable, "-c", MASTER_SCRIPT.format(root=ROOT), "-n", "--pidfile=",
             "pydovecot"], cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=ROOT))

        def stop():
            proc.terminate()
            proc.wait(20)
        self.addCleanup(stop)
        deadline = time.monotonic() + 30
        while True:
            try:
                with smtplib.LMTP("127.0.0.1", 10024, timeout=10) as lmtp:
                    lmtp.sendmail("bob@example.org", ["demo@example.org"],
                                  MESSAGE.format(subject="tour"))
                break
            except (OSError, smtplib.SMTPException):
                if time.monotonic() > deadline or proc.poll() is not None:
                    with open(os.path.join(workdir, "twistd.out")) as f:
                        self.fail(f"embedded default did not come up:\n{f.read()[-5000:]}")
                time.sleep(0.2)
        client = imaplib.IMAP4("127.0.0.1", 10143, timeout=20)
        client.login("demo", "demo")
        client.select("INBOX")
        self.assertIn(b"Subject: tour", client.fetch("1", "(BODY[])")[1][0][1])
        client.logout()
        self.assertTrue(os.path.exists(os.path.join(workdir, "state", "pydovecot.log")))
        self.assertTrue(os.path.isdir(os.path.join(workdir, "state", "home", "demo", "Maildir")))


class SupervisionTests(MasterTestCase):
    def test_killed_authd_is_replaced_and_logins_work_again(self) -> None:
        old = self.master.children("pydovecot/auth")
        self.assertEqual(len(old), 1)
        os.kill(old[0], signal.SIGKILL)
        self.master.wait_for(
            lambda: [p for p in self.master.children("pydovecot/auth") if p not in old],
            15, "a new authd")
        deadline = time.monotonic() + 20
        while True:
            try:
                client = imap(self.master)
                break
            except (OSError, imaplib.IMAP4.error):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        client.logout()
        deliver(self.master, "alice", "after-authd-restart")


def _ca_signed_pair(directory: str) -> dict[str, str]:
    """A CA, a server cert (localhost) and a client cert (CN=alice) it signed."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert, key) -> None:
        with open(os.path.join(directory, f"{stem}.pem"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.path.join(directory, f"{stem}.key"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    def issue(cn: str, ca_cert, ca_key, client: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30)))
        if client:
            builder = builder.add_extension(x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(cn)]), False)
        return builder.sign(ca_key, hashes.SHA256()), key

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("pydovecot test CA"))
               .issuer_name(name("pydovecot test CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
               .sign(ca_key, hashes.SHA256()))
    write("ca", ca_cert, ca_key)
    write("server", *issue("localhost", ca_cert, ca_key, client=False))
    write("alice", *issue("alice", ca_cert, ca_key, client=True))
    return {stem: os.path.join(directory, f"{stem}.pem") for stem in ("ca", "server", "alice")}


class ExternalAuthTests(MasterTestCase):
    """SASL EXTERNAL with a real TLS client certificate, through the real
    login path."""

    ssl = True

    def setUp(self) -> None:
        import tempfile

        self.certdir = tempfile.mkdtemp(prefix="pydovecot-certs-")
        self.certs = _ca_signed_pair(self.certdir)
        # The harness's own self-signed cert is replaced by the CA-signed one.
        self.extra = (f"ssl_ca = <{self.certs['ca']}\nssl_verify_client_cert = yes\n"
                      "ssl_require_crl = no\n"
                      "auth_mechanisms = plain login external\n")
        super().setUp()

    def test_external_with_a_client_certificate(self) -> None:
        ctx = ssl.create_default_context(cafile=self.certs["ca"])
        ctx.check_hostname = False
        ctx.load_cert_chain(self.certs["alice"], os.path.join(self.certdir, "alice.key"))
        client = imaplib.IMAP4_SSL("127.0.0.1", self.master.ports["imaps"], ssl_context=ctx,
                                   timeout=20)
        self.assertIn("AUTH=EXTERNAL", client.capabilities)
        typ, _ = client.authenticate("EXTERNAL", lambda _challenge: b"")
        self.assertEqual(typ, "OK")
        self.assertEqual(client.select("INBOX")[0], "OK")
        client.logout()

    def test_external_without_a_certificate_fails(self) -> None:
        ctx = ssl.create_default_context(cafile=self.certs["ca"])
        ctx.check_hostname = False
        client = imaplib.IMAP4_SSL("127.0.0.1", self.master.ports["imaps"], ssl_context=ctx,
                                   timeout=20)
        with self.assertRaises(imaplib.IMAP4.error):
            client.authenticate("EXTERNAL", lambda _challenge: b"")
        client.logout()
