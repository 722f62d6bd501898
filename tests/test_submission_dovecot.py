"""Submission side by side with Debian's Dovecot (dovecot-submissiond):
the same SMTP conversations (EHLO, AUTH, MAIL, RCPT, errors) to Dovecot's
submission and to ours, both relaying to one private Postfix; the
replies must match (after the hostname is normalised)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from tests import postfix as pf
from tests.harness import IN_CI, Master, User, free_port, listening_socket, privileged

DOVECOT = "/usr/sbin/dovecot"
GOOD = base64.b64encode(b"\0alice\0secret")
BAD = base64.b64encode(b"\0alice\0wrong")

#: One connection each; every command's reply is compared.
CONVERSATIONS = [
    [b"EHLO client.test", b"NOOP", b"RSET", b"QUIT"],
    [b"EHLO client.test", b"MAIL FROM:<a@sub.test>", b"FOO", b"AUTH FOO", b"AUTH PLAIN " + BAD,
     b"QUIT"],
    [b"EHLO client.test", b"AUTH PLAIN " + GOOD, b"MAIL FROM:<alice@sub.test>",
     b"RCPT TO:<alice@sub.test>", b"RSET", b"RCPT TO:<x@sub.test>", b"DATA", b"AUTH PLAIN",
     b"VRFY alice", b"NOOP", b"QUIT"],
    [b"EHLO client.test", b"AUTH PLAIN " + GOOD, b"EHLO client.test", b"MAIL FROM:bad",
     b"HELO client.test", b"QUIT"],
]


def read_reply(f) -> list[bytes]:
    lines = []
    while True:
        line = f.readline()
        if not line:
            return lines + [b"<eof>"]
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return lines


def converse(port: int, steps: list[bytes]) -> list[list[bytes]]:
    with socket.create_connection(("127.0.0.1", port), 20) as s:
        f = s.makefile("rb")
        answers = [read_reply(f)]
        for cmd in steps:
            s.sendall(cmd + b"\r\n")
            answers.append(read_reply(f))
            if answers[-1][-1] == b"<eof>":
                break
        return answers


def normalise(answers: list[list[bytes]]) -> list[list[bytes]]:
    out = []
    for lines in answers:
        norm = []
        for line in lines:
            line = re.sub(rb"^(\d{3}[ -])(pydovecot|dovecot)\.sub\.test", rb"\1<host>", line)
            line = re.sub(rb"imap://(pydovecot|dovecot)\.sub\.test", b"imap://<host>", line)
            line = re.sub(rb"^220 <host> .*ready\.$", b"220 <host> <greeting>", line)
            norm.append(line)
        out.append(norm)
    return out


class SubmissionSideBySide(SynchronousTestCase):
    timeout = 240

    def setUp(self) -> None:
        reason = pf.unavailable()
        if not os.path.exists("/usr/lib/dovecot/submission-login"):
            reason = "Debian's dovecot-submissiond is not installed"
        if reason:
            if IN_CI:
                self.fail(reason)
            self.skipTest(reason)
        self.postfix = pf.Postfix("/nonexistent", extra_main_cf="""
smtpd_sasl_auth_enable = no
smtpd_relay_restrictions = permit_mynetworks, reject
relay_domains = sub.test
transport_maps = inline:{sub.test=discard:}
""")
        self.addCleanup(self.postfix.cleanup)
        with open(os.path.join(self.postfix.config_dir, "master.cf"), "a") as f:
            f.write("discard   unix  -       -       n       -       -       discard\n")
        self.postfix.start()
        self.master = Master(users=[User("alice", "secret")], **privileged())
        self.addCleanup(self.master.cleanup)
        self.master.sockets["submission"] = listening_socket()
        self.port = self.master.sockets["submission"].getsockname()[1]
        self.master.extra_config += f"""
protocols = imap pop3 lmtp submission
hostname = pydovecot.sub.test
submission_relay_host = 127.0.0.1
submission_relay_port = {self.postfix.port}
service submission-login {{
  inet_listener submission {{
    port = {self.port}
  }}
  inet_listener submissions {{
    port = 0
  }}
}}
"""
        self.master.write_config()
        self.master.start()
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
protocols = submission
listen = 127.0.0.1
ssl = no
hostname = dovecot.sub.test
submission_relay_host = 127.0.0.1
submission_relay_port = {self.postfix.port}
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
service submission-login {{
  inet_listener submission {{
    port = {port}
  }}
}}
""")
        self.dovecot_log = os.path.join(d, "dovecot.log")
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

    def test_same_answers(self) -> None:
        both = []
        for steps in CONVERSATIONS:
            theirs = normalise(converse(self.dovecot_port, steps))
            ours = normalise(converse(self.port, steps))
            if os.environ.get("SUBM_SHOW"):
                for a, b in zip(theirs, ours, strict=False):
                    print("D", a, "\nP", b)
            both.append((theirs, ours))
        for theirs, ours in both:
            self.assertEqual(theirs, ours)
