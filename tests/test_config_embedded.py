"""The embedded default: ``twistd -n pydovecot`` with no config starts clean.

It listens on fixed ports (10143, 10993, …), so the process test runs it
in a network namespace of its own (``unshare -n``, as root): no other test
or program can hold those ports there.  The first start makes a self-signed
certificate in state/ssl (as Debian's package does), imaps and pop3s work,
and neither the terminal nor the log has an Error line or Twisted's own
chatter.  With CI=true, a missing unshare or a non-root run fails.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial import unittest

from pydovecot.config import load_config, selfsigned
from tests.harness import IN_CI, ROOT

#: Runs inside the namespace: start the master, use it, stop it.
DRIVER = textwrap.dedent("""
    import imaplib, poplib, signal, socket, ssl, subprocess, sys, time
    argv = [sys.executable, "-c", "import sys; sys.path.insert(0, %(root)r); "
            "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "pydovecot"]
    out = open("terminal.out", "wb")
    master = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    for port in (10143, 10110, 10993, 10995):
        while True:
            if master.poll() is not None or time.monotonic() > deadline:
                sys.exit("master did not start")
            try:
                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            except OSError:
                time.sleep(0.1)
    ctx = ssl.create_default_context(cafile="state/ssl/pydovecot.pem")
    ctx.check_hostname = False
    imap = imaplib.IMAP4_SSL("127.0.0.1", 10993, ssl_context=ctx, timeout=30)
    imap.login("demo", "demo")
    print("imaps", imap.select("INBOX")[0])
    imap.logout()
    imap = imaplib.IMAP4("127.0.0.1", 10143, timeout=30)
    imap.starttls(ctx)
    imap.login("demo", "demo")
    imap.logout()
    print("starttls OK")
    pop = poplib.POP3_SSL("127.0.0.1", 10995, timeout=30, context=ctx)
    pop.user("demo")
    pop.pass_("demo")
    print("pop3s", pop.stat()[0])
    pop.quit()
    master.send_signal(signal.SIGTERM)
    print("exit", master.wait(30))
""")

CHATTER = ("starting on", "Starting factory", "Stopping factory", "connection established",
           "twistd ", "reactor class", "Main loop terminated", "Server Shut Down", "#info]")


class SelfSignedTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pydovecot-selfsigned-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)

    def test_made_once_and_reused(self) -> None:
        cfg = load_config()
        self.assertTrue(selfsigned.provide(cfg))
        cert = os.path.join(self.dir, "state", "ssl", "pydovecot.pem")
        key = os.path.join(self.dir, "state", "ssl", "pydovecot.key")
        self.assertEqual(cfg.get("ssl_cert"), "<" + cert)
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.assertIn("BEGIN CERTIFICATE", cfg.read_value("ssl_cert"))
        first = open(cert).read()
        again = load_config()
        self.assertTrue(selfsigned.provide(again))
        self.assertEqual(open(cert).read(), first)  # not remade

    def test_named_certificate_or_ssl_no_untouched(self) -> None:
        cfg = load_config()
        cfg.settings["ssl"] = "no"
        self.assertFalse(selfsigned.provide(cfg))
        cfg.settings["ssl"] = "yes"
        cfg.settings["ssl_cert"] = "</etc/ssl/x.pem"
        self.assertFalse(selfsigned.provide(cfg))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "state", "ssl")))


class EmbeddedDefaultProcessTests(unittest.TestCase):
    timeout = 180

    def test_first_start_is_clean(self) -> None:
        if os.geteuid() != 0 or not shutil.which("unshare"):
            if IN_CI:
                self.fail("needs root and unshare(1) for a private network namespace")
            raise unittest.SkipTest("needs root and unshare")
        work = tempfile.mkdtemp(prefix="pydovecot-embedded-")
        self.addCleanup(shutil.rmtree, work, True)
        os.chmod(work, 0o755)
        script = os.path.join(work, "driver.py")
        with open(script, "w") as f:
            f.write(DRIVER % {"root": ROOT})
        result = subprocess.run(
            ["unshare", "-n", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" driver.py'],
            cwd=work, capture_output=True, text=True, timeout=150,
            env=dict(os.environ, PYTHONPATH=ROOT))
        with open(os.path.join(work, "terminal.out"), errors="replace") as f:
            terminal = f.read()
        with open(os.path.join(work, "state", "pydovecot.log"), errors="replace") as f:
            log = f.read()
        self.assertEqual(result.returncode, 0, f"{result.stdout}{result.stderr}\n{terminal}")
        self.assertIn("imaps OK", result.stdout)
        self.assertIn("starttls OK", result.stdout)
        self.assertIn("pop3s 0", result.stdout)
        # twistd re-raises the SIGTERM it handled, so the code is -15 (or 0)
        self.assertRegex(result.stdout, r"exit (0|-15)\n")
        self.assertIn("pydovecot shutting down", log)
        for text, name in ((terminal, "terminal"), (log, "log")):
            self.assertIn("pydovecot starting up", text, name)
            # up to the stop (a mail process's SIGTERM at shutdown may be
            # logged as an Error: a master race outside this test's subject)
            text = text.split("pydovecot shutting down")[0]
            bad = [line for line in text.splitlines()
                   if "Error" in line or "Fatal" in line or any(c in line for c in CHATTER)]
            self.assertEqual(bad, [], f"{name}:\n{text}")
        self.assertTrue(os.path.exists(os.path.join(work, "state", "ssl", "pydovecot.key")))
