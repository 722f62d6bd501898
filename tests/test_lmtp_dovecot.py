"""LMTP side by side: one script of sessions against Debian's Dovecot lmtp
and against pydovecot's (the real master, lmtp and mail processes); the
replies and the stored messages' headers must match byte for byte once the
per-run values (session ids, dates, the peer address Dovecot's UNIX socket
does not have) are masked.

Dovecot runs its own master with ``lmtp`` on a UNIX socket (no TCP port
to pick) and a passwd-file userdb with the same users.  Needs root and
Dovecot: skips otherwise, fails under CI=true.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial import unittest

from tests.dovecot_side import require
from tests.harness import Master, User, privileged

DOVECOT = "/usr/sbin/dovecot"
HOSTNAME = "mx.example.com"
GREETING = "Dovecot (Debian) ready."
COMMON = f"""
hostname = {HOSTNAME}
login_greeting = {GREETING}
recipient_delimiter = +
lmtp_save_to_detail_mailbox = yes
"""
AUTOCREATE = "lda_mailbox_autocreate = yes\nlda_mailbox_autosubscribe = yes\n"

MSG = b"From: bob@example.org\r\nSubject: side by side\r\nMessage-ID: <sbs@x>\r\n\r\nbody\r\n"

#: (bytes to send, final replies to read) — one list per connection.
SCRIPT: list[list[tuple[bytes, int]]] = [
    # One recipient: Delivered-To: and "for <…>"; dot-unstuffing.
    [(b"LHLO mta.example.org\r\n", 1), (b"MAIL FROM:<bob@example.org>\r\n", 1),
     (b"RCPT TO:<alice@example.com>\r\n", 1), (b"DATA\r\n", 1),
     (MSG + b"..dot\r\n.\r\n", 1), (b"QUIT\r\n", 1)],
    # Two recipients and an unknown one; the second transaction's ids.
    [(b"LHLO mta.example.org\r\n", 1), (b"MAIL FROM:<>\r\n", 1), (b"RSET\r\n", 1),
     (b"MAIL FROM:<bob@example.org> BODY=8BITMIME\r\n", 1),
     (b"RCPT TO:<alice@example.com>\r\n", 1), (b"RCPT TO:<nobody@example.com>\r\n", 1),
     (b"RCPT TO:<carol@example.com> ORCPT=rfc822;orig@example.com\r\n", 1),
     (b"DATA\r\n", 1), (MSG + b".\r\n", 2), (b"QUIT\r\n", 1)],
    # CHUNKING: three chunks, the last with LAST; a +detail mailbox.
    [(b"LHLO mta.example.org\r\n", 1), (b"MAIL FROM:<bob@example.org>\r\n", 1),
     (b"RCPT TO:<carol+Lists@example.com>\r\n", 1),
     (b"BDAT 10\r\n" + MSG[:10], 1), (b"BDAT 20\r\n" + MSG[10:30], 1),
     (b"BDAT %d LAST\r\n" % (len(MSG) - 30) + MSG[30:], 1), (b"QUIT\r\n", 1)],
    # One recipient with an ORCPT (xtext-encoded).
    [(b"LHLO mta.example.org\r\n", 1), (b"MAIL FROM:<bob@example.org>\r\n", 1),
     (b"RCPT TO:<bob@example.com> ORCPT=rfc822;Bob+2Bold@example.com\r\n", 1),
     (b"DATA\r\n", 1), (MSG + b".\r\n", 1), (b"QUIT\r\n", 1)],
    # A failed BDAT blocks DATA/BDAT (not MAIL) until RSET or LHLO.
    [(b"LHLO x\r\n", 1), (b"BDAT 0 LAST\r\n", 1), (b"MAIL FROM:<a@b>\r\n", 1),
     (b"RCPT TO:<bob@example.com>\r\n", 1), (b"BDAT 3\r\nabc", 1), (b"DATA\r\n", 1),
     (b"RSET\r\n", 1), (b"MAIL FROM:<a@b>\r\n", 1), (b"BDAT 2\r\nab", 1),
     (b"RCPT TO:<bob@example.com>\r\n", 1), (b"BDAT 2\r\nab", 1), (b"LHLO y\r\n", 1),
     (b"MAIL FROM:<a@b>\r\n", 1), (b"RCPT TO:<bob@example.com>\r\n", 1),
     (b"BDAT 2 LAST\r\nab", 1)],
    # Everything pipelined in one write.
    [(b"LHLO mta.example.org\r\nMAIL FROM:<bob@example.org>\r\n"
      b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
      + MSG + b".\r\nRSET\r\nQUIT\r\n", 8)],
    # Sequence and syntax errors.
    [(b"RCPT TO:<alice@example.com>\r\n", 1), (b"DATA\r\n", 1), (b"LHLO\r\n", 1),
     (b"HELO x\r\n", 1), (b"EHLO x\r\n", 1), (b"FOO\r\n", 1), (b"VRFY alice\r\n", 1),
     (b"NOOP\r\n", 1), (b"LHLO x\r\n", 1), (b"MAIL FROM:bob@example.org\r\n", 1),
     (b"MAIL FROM:<bob@example.org> FOO=1\r\n", 1),
     (b"MAIL FROM:<bob@example.org> BODY=BINARYMIME\r\n", 1),
     (b"MAIL FROM:<bob@example.org>\r\n", 1), (b"MAIL FROM:<bob@example.org>\r\n", 1),
     (b"DATA\r\n", 1), (b"BDAT 0 LAST\r\n", 1),
     (b"RCPT TO:<>\r\n", 1), (b"RCPT TO:alice@example.com\r\n", 1),
     (b"RCPT TO:<alice@example.com> FOO=bar\r\n", 1),
     (b"RCPT TO:<alice@example.com>\r\n", 1), (b"BDAT x\r\n", 1),
     (b"BDAT 3 LATER\r\nabc", 1), (b"BDAT 3\r\nabc", 1), (b"DATA\r\n", 1),
     (b"RSET\r\n", 1), (b"BDAT 0 LAST\r\n", 1), (b"STARTTLS\r\n", 1),
     (b"XCLIENT ADDR=10.0.0.1\r\n", 1), (b"QUIT\r\n", 1)],
]

#: LHLO lines pydovecot adds on purpose (Dovecot 2.3 refuses the parameters).
OUR_EXTRA_CAPS = (b"250-DSN", b"250-SIZE", b"250-SMTPUTF8")


def read_replies(s: socket.socket, n: int) -> bytes:
    got = b""
    while sum(1 for line in got.split(b"\r\n")[:-1] if line[3:4] != b"-") < n:
        chunk = s.recv(65536)
        if not chunk:
            return got + b"<EOF>"
        got += chunk
    return got


def run_script(connect) -> list[bytes]:
    out = []
    for session in SCRIPT:
        s = connect()
        try:
            out.append(read_replies(s, 1))
            for data, n in session:
                s.sendall(data)
                out.append(read_replies(s, n))
        finally:
            s.close()
    return out


def normalise(replies: list[bytes]) -> list[bytes]:
    """Mask the ids; drop the capabilities only pydovecot has (the reply's
    last line ends the multi-line reply again)."""
    out = []
    for r in replies:
        r = re.sub(rb"(<[^>]*>) [A-Za-z0-9+/]{16,22}((?::T\d+)?(?::R\d+)?) Saved",
                   rb"\1 ID\2 Saved", r)
        lines = r.split(b"\r\n")
        tail = lines.pop()
        kept: list[bytes] = []
        for x in lines:
            if x.startswith(OUR_EXTRA_CAPS):
                continue
            if x.startswith(b"250 SMTPUTF8"):  # it ended the LHLO reply
                kept[-1] = kept[-1][:3] + b" " + kept[-1][4:]
                continue
            kept.append(x)
        out.append(b"".join(x + b"\r\n" for x in kept) + tail)
    return out


def stored(home: str) -> dict[str, list[bytes]]:
    """mailbox dir relative to the home -> the headers of each message
    (sorted; ids and dates masked)."""
    found: dict[str, list[bytes]] = {}
    for path in glob.glob(os.path.join(home, "*", "Maildir", "**", "new", "*"), recursive=True,
                         include_hidden=True)\
            + glob.glob(os.path.join(home, "*", "Maildir", "**", "cur", "*"), recursive=True,
                                include_hidden=True):
        rel = os.path.relpath(os.path.dirname(os.path.dirname(path)), home)
        with open(path, "rb") as f:
            data = f.read()
        head = data.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in data else data.split(b"\n\n")[0]
        head = head.replace(b"\r\n", b"\n")
        head = re.sub(rb"\tid [A-Za-z0-9+/]{16,22}", b"\tid ID", head)
        head = re.sub(rb"; \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", b"; DATE", head)
        head = head.replace(b" ([127.0.0.1])", b"")
        found.setdefault(rel, []).append(head)
    return {k: sorted(v) for k, v in sorted(found.items())}


class DovecotLMTP:
    """Dovecot's master with lmtp on a UNIX socket; passwd-file userdb."""

    def __init__(self, users: list[str], extra: str = ""):
        require()
        self.dir = tempfile.mkdtemp(prefix="dvlmtp-")
        os.chmod(self.dir, 0o755)
        self.sock = os.path.join(self.dir, "lmtp.sock")
        self.home = os.path.join(self.dir, "home")
        os.makedirs(self.home)
        with open(os.path.join(self.dir, "users"), "w") as f:
            for u in users:
                os.makedirs(os.path.join(self.home, u))
                shutil.chown(os.path.join(self.home, u), "nobody", "nogroup")
                f.write(f"{u}::65534:65534::{self.home}/{u}::\n")
        with open(os.path.join(self.dir, "dovecot.conf"), "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = lmtp
ssl = no
default_internal_user = nobody
default_login_user = nobody
auth_username_format = %Ln
passdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
userdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
mail_location = maildir:~/Maildir
{COMMON}{extra}
service lmtp {{
  unix_listener {self.sock} {{
    mode = 0666
  }}
}}
""")
        self.proc = subprocess.Popen([DOVECOT, "-c", os.path.join(self.dir, "dovecot.conf"),
                                      "-F"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                self.cleanup()
                raise AssertionError(f"Dovecot did not start: {err[-1000:]!r}")
            time.sleep(0.05)

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(20)
        s.connect(self.sock)
        return s

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


class SideBySideTests(unittest.TestCase):
    timeout = 180

    def compare(self, extra: str) -> dict[str, list[bytes]]:
        users = ["alice", "bob", "carol"]
        dovecot = DovecotLMTP(users, extra)
        self.addCleanup(dovecot.cleanup)
        master = Master(users=[User(u, "secret") for u in users], extra_config=COMMON + extra,
                        **privileged())
        self.addCleanup(master.cleanup)
        master.start()

        def ours() -> socket.socket:
            return socket.create_connection(("127.0.0.1", master.ports["lmtp"]), timeout=20)

        theirs = run_script(dovecot.connect)
        mine = run_script(ours)
        self.assertEqual(normalise(mine), normalise(theirs), master.output()[-3000:])
        self.assertEqual(mine[1].split(b"\r\n")[-2], b"250 SMTPUTF8")
        got_ours = stored(os.path.join(master.dir, "home"))
        self.maxDiff = None
        self.assertEqual(got_ours, stored(dovecot.home))
        return got_ours

    def test_script_replies_and_headers(self):
        """Delivered-To/Received "for" the final recipient; +detail mailbox
        created and subscribed."""
        got = self.compare(AUTOCREATE)
        self.assertIn("carol/Maildir/.Lists", got)
        self.assertIn(b"Delivered-To: alice@example.com\n", got["alice/Maildir"][0])

    def test_original_recipient(self):
        """lmtp_hdr_delivery_address = original (ORCPT when given)."""
        got = self.compare("lmtp_hdr_delivery_address = original\n")
        # no autocreate: carol+Lists falls back to INBOX
        self.assertNotIn("carol/Maildir/.Lists", got)
        self.assertEqual(len(got["carol/Maildir"]), 2)
        [head] = [h for h in got["bob/Maildir"] if b"side by side" in h]
        self.assertIn(b"Delivered-To: Bob+old@example.com\n", head)
        self.assertIn(b"\tfor <Bob+old@example.com>; DATE", head)

    def test_no_added_headers(self):
        """lmtp_hdr_delivery_address = none, lmtp_add_received_header = no."""
        got = self.compare("lmtp_hdr_delivery_address = none\nlmtp_add_received_header = no\n")
        for heads in got.values():
            for head in heads:
                self.assertTrue(head.startswith(b"Return-Path: <"))
                self.assertNotIn(b"Delivered-To", head)
                self.assertNotIn(b"Received:", head)
