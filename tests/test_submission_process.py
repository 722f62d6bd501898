"""Submission through the real master (issue 10): swaks → submission-login
(STARTTLS, AUTH PLAIN) → the user's mail process → a private Postfix →
pydovecot LMTP → IMAP; BURL of a draft saved over IMAP; the login process
chrooted and unprivileged; bad input answered with SMTP errors.
"""

from __future__ import annotations

import base64
import imaplib
import os
import re
import smtplib
import ssl
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from tests import postfix as pf
from tests.harness import IN_CI, Master, User, listening_socket, privileged

DOMAIN = "sub.test"
imaplib.Commands.setdefault("GENURLAUTH", ("AUTH", "SELECTED"))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M).group(1)) * 1024


class SubmissionTests(SynchronousTestCase):
    timeout = 240

    def setUp(self):
        why = pf.unavailable()
        if why:
            if IN_CI:
                self.fail(why)
            raise __import__("unittest").SkipTest(why)
        self.master = Master(users=[User("alice", "secret"), User("bob", "hunter2")], ssl=True,
                             **privileged())
        self.addCleanup(self.master.cleanup)
        for name in ("submission", "submissions"):
            self.master.sockets[name] = listening_socket()
        self.port = self.master.sockets["submission"].getsockname()[1]
        self.ssl_port = self.master.sockets["submissions"].getsockname()[1]
        lmtp = self.master.ports["lmtp"]
        self.postfix = pf.Postfix("/nonexistent", extra_main_cf=f"""
smtpd_sasl_auth_enable = no
smtpd_relay_restrictions = permit_mynetworks, reject
relay_domains = {DOMAIN}
transport_maps = inline:{{{DOMAIN}=lmtp:inet:127.0.0.1:{lmtp}}}
lmtp_host_lookup = native
smtpd_authorized_xclient_hosts = 127.0.0.1
""")
        self.addCleanup(self.postfix.cleanup)
        with open(os.path.join(self.postfix.config_dir, "master.cf"), "a") as f:
            f.write("lmtp      unix  -       -       n       -       -       lmtp\n"
                    "retry     unix  -       -       n       -       -       error\n"
                    "error     unix  -       -       n       -       -       error\n")
        self.postfix.start()
        self.master.extra_config += f"""
protocols = imap pop3 lmtp submission
hostname = pydovecot.{DOMAIN}
submission_relay_host = 127.0.0.1
submission_relay_port = {self.postfix.port}
submission_max_mail_size = 1M
submission_relay_trusted = yes
service submission-login {{
  inet_listener submission {{
    port = {self.port}
  }}
  inet_listener submissions {{
    port = {self.ssl_port}
  }}
}}
"""
        self.master.write_config()
        self.master.start()

    def imap(self, user: str = "alice", password: str = "secret") -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.master.ports["imap"], timeout=30)
        m.login(user, password)
        self.addCleanup(lambda: m.logout() if m.state != "LOGOUT" else None)
        return m

    def wait_inbox(self, m: imaplib.IMAP4, needle: bytes, timeout: float = 120) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m.select("INBOX")
            typ, data = m.search(None, "ALL")
            for num in data[0].split():
                _, msg = m.fetch(num, "(BODY.PEEK[])")
                if needle in msg[0][1]:
                    return msg[0][1]
            time.sleep(0.5)
        self.fail(f"not delivered:\n{self.postfix.log()}\n{self.master.output()}")

    def smtp(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        self.addCleanup(s.close)
        return s

    def test_swaks_starttls_relay_lmtp_imap(self):
        result = subprocess.run(
            [pf.SWAKS, "--server", f"127.0.0.1:{self.port}", "--tls", "--auth", "PLAIN",
             "--auth-user", "bob", "--auth-password", "hunter2", "--from", f"bob@{DOMAIN}",
             "--to", f"alice@{DOMAIN}", "--header", "Subject: via submission",
             "--body", "hello through submission", "--timeout", "30"],
            capture_output=True, text=True, timeout=90)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr
                         + self.master.output())
        self.assertIn("235 2.7.0 Logged in.", result.stdout)
        self.assertIn("250-BURL imap", result.stdout)
        self.assertIn("250-CHUNKING", result.stdout)
        data = self.wait_inbox(self.imap(), b"hello through submission")
        self.assertIn(b"Subject: via submission", data)
        # submission_relay_trusted: XCLIENT told Postfix who logged in.
        self.assertIn("sasl_username=bob", self.postfix.log())

    def test_burl_draft(self):
        m = self.imap()
        m.create("Drafts")
        draft = (b"From: alice@" + DOMAIN.encode() + b"\r\nTo: alice@sub.test\r\n"
                 b"Subject: burl draft\r\n\r\nbody from the draft\r\n")
        typ, data = m.append("Drafts", None, None, draft)
        self.assertEqual(typ, "OK")
        uidvalidity, uid = re.search(rb"APPENDUID (\d+) (\d+)", data[0]).groups()
        rump = (f"imap://alice@127.0.0.1/Drafts;UIDVALIDITY={uidvalidity.decode()}"
                f"/;UID={uid.decode()};urlauth=submit+alice")
        typ, data = m._simple_command("GENURLAUTH", f'"{rump}"', "INTERNAL")
        self.assertEqual(typ, "OK", data)
        _, gen = m._untagged_response(typ, data, "GENURLAUTH")
        url = gen[0].decode().strip().strip('"')
        s = self.smtp()
        s.ehlo("client.test")
        self.assertIn("burl", s.esmtp_features)
        s.starttls(context=ssl._create_unverified_context())
        s.ehlo("client.test")
        s.login("alice", "secret")
        self.assertEqual(s.mail(f"alice@{DOMAIN}")[0], 250)
        self.assertEqual(s.rcpt(f"alice@{DOMAIN}")[0], 250)
        code, text = s.docmd("BURL", f"{url} LAST")
        self.assertEqual(code, 250, text)
        # A bad token is refused with a clear error.
        s.mail(f"alice@{DOMAIN}")
        s.rcpt(f"alice@{DOMAIN}")
        code, text = s.docmd("BURL", f"{url[:-4]}0000 LAST")
        self.assertEqual(code, 554, text)
        s.rset()
        s.quit()
        self.wait_inbox(m, b"body from the draft")

    def test_submissions_long_lines_and_a_client_that_never_reads(self):
        # Implicit TLS (465), AUTH, then DATA with a 20 KB line and a dot line.
        s = smtplib.SMTP_SSL("127.0.0.1", self.ssl_port, timeout=30,
                             context=ssl._create_unverified_context())
        self.addCleanup(s.close)
        s.login("alice", "secret")
        body = (b"Subject: long\r\n\r\n" + b"y" * 20000 + b"\r\n.dotted\r\nlong-end\r\n")
        s.sendmail(f"alice@{DOMAIN}", [f"alice@{DOMAIN}"], body)
        s.quit()
        data = self.wait_inbox(self.imap(), b"long-end")
        # (Postfix folds lines over 998 octets; the bytes all arrive.)
        self.assertEqual(data.split(b"\r\n\r\n", 1)[1].count(b"y"), 20000)
        self.assertTrue(b"y\r\n.dotted\r\nlong-end" in data, "dot line not unstuffed")
        # A client that pipelines NOOPs and never reads: the mail process
        # stays bounded and another session is served meanwhile.
        hog = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        self.addCleanup(hog.close)
        hog.ehlo("hog.test")
        hog.login("bob", "hunter2")
        [mail] = self.master.children("pydovecot/mail")
        before = rss(mail)
        hog.sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 30
        while sent < 50_000_000 and time.monotonic() < deadline:
            try:
                sent += hog.sock.send(b"NOOP\r\n" * 10000)
            except BlockingIOError:
                time.sleep(0.05)
                if time.monotonic() > deadline - 25:
                    break
        self.assertLess(sent, 50_000_000, "the mail process never stopped reading the hog")
        other = self.smtp()
        other.ehlo("other.test")
        other.login("alice", "secret")
        self.assertEqual(other.noop()[0], 250)
        other.quit()
        self.assertLess(rss(mail) - before, 30_000_000)

    def test_login_isolated_and_errors(self):
        [pid] = self.master.children("pydovecot/submission-login")
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
        if os.geteuid() == 0:
            self.assertNotEqual(uid, 0)
            self.assertNotEqual(os.readlink(f"/proc/{pid}/root"), "/")
        s = self.smtp()
        code, _ = s.ehlo("client.test")
        self.assertEqual(code, 250)
        self.assertIn("starttls", s.esmtp_features)
        self.assertEqual(s.docmd("MAIL", "FROM:<a@b>")[0], 530)
        self.assertEqual(s.docmd("FOO")[0], 500)
        self.assertEqual(s.docmd("AUTH", "PLAIN !!!")[0], 501)
        token = base64.b64encode(b"\0alice\0wrong").decode()
        self.assertEqual(s.docmd("AUTH", f"PLAIN {token}")[0], 535)
        token = base64.b64encode(b"\0alice\0secret").decode()
        self.assertEqual(s.docmd("AUTH", f"PLAIN {token}")[0], 235)
        self.assertEqual(s.docmd("RCPT", "TO:<x@y>")[0], 503)
        self.assertEqual(s.docmd("MAIL", "FROM:garbage")[0], 501)
        self.assertEqual(s.docmd("DATA")[0], 503)
        self.assertEqual(s.docmd("BDAT", "zz")[0], 501)
        self.assertEqual(s.docmd("AUTH", "PLAIN")[0], 503)
        self.assertEqual(s.docmd("MAIL", f"FROM:<alice@{DOMAIN}> SIZE=99999999")[0], 552)
        # BDAT in two chunks, then a too-big DATA
        self.assertEqual(s.docmd("MAIL", f"FROM:<alice@{DOMAIN}>")[0], 250)
        self.assertEqual(s.docmd("RCPT", f"TO:<alice@{DOMAIN}>")[0], 250)
        first, last = b"Subject: chunked\r\n\r\nx", b"bdat-body\r\n"
        s.send(b"BDAT %d\r\n%s" % (len(first), first))
        self.assertEqual(s.getreply()[0], 250)
        s.send(b"BDAT %d LAST\r\n%s" % (len(last), last))
        self.assertEqual(s.getreply()[0], 250)
        s.quit()
        self.wait_inbox(self.imap(), b"bdat-body")
        self.assertNotIn("Traceback", self.master.output())
        self.master.wait_for(lambda: "submission(alice)<" in self.master.log(), 20,
                             "the session's logout line")
        self.assertRegex(self.master.log(), r"submission\(alice\)<\d+><[^>]+>: Info: "
                                            r"Disconnected: Logged out in=\d+ out=\d+")
