"""Debian's stock /etc/dovecot runs pydovecot unchanged.

A process-level test: the installed tree (with its conf.d/ and the
protocols.d of the installed packages) is copied, and only what a test must
change goes into its ``local.conf`` (which the stock dovecot.conf includes
with ``!include_try``): addresses and ports, paths, the certificate.
Debian's ``mail_location = mbox:~/mail:INBOX=/var/mail/%u`` is used as it
is: the test creates the user's spool file as an MTA would (pydovecot does
not take ``mail_privileged_group`` to create it in /var/mail), LMTP
appends to it and IMAP's \\Seen rewrites it in place (the spool directory
is not writable by the user).  Its PAM passdb and passwd userdb are used as
they are, with a real system user.  With CI=true a missing Dovecot or non-root run
fails instead of skipping.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import secrets
import shutil
import socket
import subprocess
import time

from twisted.trial import unittest

from tests import harness
from tests.doveconf_trees import copy_debian_tree, debian_installed

MESSAGE = "From: bob@example.org\r\nSubject: stock tree\r\n\r\nhello from lmtp\r\n"


class DebianTreeMaster(harness.Master):
    """A master running the copied Debian tree."""

    def write_config(self) -> None:
        # dovecot-managesieved's protocols.d enables sieve: hand its port in too
        self.sockets.setdefault("sieve", harness.listening_socket())
        self.ports["sieve"] = self.sockets["sieve"].getsockname()[1]
        self.config_path = copy_debian_tree(self.dir)
        local = os.path.join(os.path.dirname(self.config_path), "local.conf")
        with open(local, "w") as f:
            f.write(f"""\
# What the test changes: addresses, ports, paths, the certificate.
listen = 127.0.0.1
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.log_path}
ssl_cert = <{self.cert_path}
ssl_key = <{self.key_path}
service imap-login {{
  inet_listener imap {{
    port = {self.ports['imap']}
  }}
  inet_listener imaps {{
    port = {self.ports['imaps']}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.ports['pop3']}
  }}
  inet_listener pop3s {{
    port = {self.ports['pop3s']}
  }}
}}
service managesieve-login {{
  inet_listener sieve {{
    port = {self.ports['sieve']}
  }}
}}
""")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        pending = ["imap", "pop3"]
        lmtp = os.path.join(self.dir, "run", "lmtp")
        while pending or not os.path.exists(lmtp):
            if self.process.poll() is not None:
                raise RuntimeError(f"master exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"master not ready ({pending}):\n{self.output()}")
            if pending:
                try:
                    with socket.create_connection(("127.0.0.1", self.ports[pending[0]]), 1) as s:
                        s.settimeout(2)
                        if s.recv(100):
                            pending.pop(0)
                            continue
                except OSError:
                    pass
            time.sleep(0.1)


class DebianStockTreeTests(unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        if not debian_installed():
            if harness.IN_CI:
                self.fail("Debian's dovecot-core (/etc/dovecot, doveconf) is not installed")
            raise unittest.SkipTest("dovecot-core not installed")
        if os.geteuid() != 0:
            if harness.IN_CI:
                self.fail("the stock tree's PAM passdb needs root")
            raise unittest.SkipTest("needs root (PAM, passwd userdb)")
        harness.privileged()  # pydovecot's default login/internal users
        self.user = f"pddeb{secrets.token_hex(3)}"
        self.password = "Pw-" + secrets.token_hex(8)
        subprocess.run(["useradd", "-m", "-s", "/usr/sbin/nologin", self.user], check=True,
                       capture_output=True)
        self.addCleanup(subprocess.run, ["userdel", "-r", self.user], capture_output=True)
        subprocess.run(["chpasswd"], input=f"{self.user}:{self.password}\n", text=True,
                       check=True, capture_output=True)
        # the spool file an MTA would have created (root:mail 2775 /var/mail)
        self.spool = os.path.join("/var/mail", self.user)
        fd = os.open(self.spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
        os.close(fd)
        self.addCleanup(lambda: os.path.exists(self.spool) and os.unlink(self.spool))
        shutil.chown(self.spool, self.user, "mail")
        self.master = DebianTreeMaster(users=[], ssl=True)
        self.addCleanup(self.master.cleanup)
        self.master.start(timeout=90)

    def test_stock_tree_serves_imap_pop3_lmtp(self) -> None:
        master = self.master
        # lmtp: Debian's unix_listener lmtp, delivering to a passwd user
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(os.path.join(master.dir, "run", "lmtp"))
        lmtp = sock.makefile("rwb")
        self.assertTrue(lmtp.readline().startswith(b"220"))
        for line in (b"LHLO test", b"MAIL FROM:<bob@example.org>", f"RCPT TO:<{self.user}>".encode(),
                     b"DATA"):
            lmtp.write(line + b"\r\n")
            lmtp.flush()
            reply = lmtp.readline()
            while reply[3:4] == b"-":
                reply = lmtp.readline()
            self.assertIn(reply[:1], (b"2", b"3"), (line, reply))
        lmtp.write(MESSAGE.encode() + b".\r\n")
        lmtp.flush()
        self.assertTrue(lmtp.readline().startswith(b"250"))
        sock.close()
        # imap over the stock STARTTLS-capable listener, PAM password
        imap = imaplib.IMAP4("127.0.0.1", master.ports["imap"], timeout=30)
        imap.starttls()
        imap.login(self.user, self.password)
        typ, data = imap.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        typ, data = imap.fetch("1", "(BODY[TEXT])")
        self.assertIn(b"hello from lmtp", data[0][1])
        imap.logout()
        # the mail is in Debian's mbox INBOX, with Dovecot's headers
        with open(self.spool, "rb") as f:
            spool = f.read()
        self.assertTrue(spool.startswith(b"From bob@example.org  "), spool[:100])
        self.assertIn(b"\nX-UID: 1\nStatus: R", spool)
        self.assertIn(b"hello from lmtp", spool)
        self.assertTrue(os.path.isdir(os.path.join("/home", self.user, "mail", ".imap", "INBOX")))
        # pop3s with the test's certificate
        import ssl

        context = ssl.create_default_context(cafile=master.cert_path)
        context.check_hostname = False
        pop = poplib.POP3_SSL("127.0.0.1", master.ports["pop3s"], timeout=30, context=context)
        pop.user(self.user)
        pop.pass_(self.password)
        self.assertEqual(pop.stat()[0], 1)
        pop.quit()
        log = master.log()
        errors = [line for line in log.splitlines() if " Error: " in line or "Fatal" in line]
        self.assertEqual(errors, [])
        # what pydovecot doesn't honour is warned once, naming file:line
        self.assertIn("conf.d/10-mail.conf:", log)
        self.assertIn("setting 'mail_privileged_group' is not supported", log)
        self.assertNotIn("setting 'ssl_dh'", log)  # Debian's dh.pem is applied (pydovecot.tls)
