"""pydovecot-lda's command line, run as a process: dovecot-lda's options and
sysexits, the userdb through authd's drivers (no master running), the drop
to the user's uid as root, -m with lda_mailbox_autocreate/autosubscribe,
-e with a Sieve reject, -p, -o.  Needs root (skips otherwise; fails under
CI=true)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from tests.harness import IN_CI, ROOT, ensure_system_user

MESSAGE = b"Subject: lda test\nMessage-ID: <lda@x>\n\nbody\n"


def lda(args: list[str], data: bytes = MESSAGE, user: str | None = None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "pydovecot.lda.main", *args], input=data,
                          capture_output=True, env=env, timeout=60)


class LDATests(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            if IN_CI:
                self.fail("pydovecot-lda's privilege drop needs root")
            raise unittest.SkipTest("needs root")
        self.uid, self.gid = ensure_system_user("pdvmail")
        self.dir = tempfile.mkdtemp(prefix="pdv-lda-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)
        self.home = os.path.join(self.dir, "home", "carol")
        os.makedirs(self.home)
        shutil.chown(self.home, self.uid, self.gid)
        with open(os.path.join(self.dir, "users"), "w") as f:
            f.write(f"carol::{self.uid}:{self.gid}::{self.home}::\n")
            f.write(f"rooty::0:0::{self.dir}/home/rooty::\n")
        self.conf = os.path.join(self.dir, "pydovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
log_path = {self.dir}/lda.log
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
userdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
""")

    def mails(self, box: str = "") -> list[str]:
        sub = f".{box}" if box else ""
        return glob.glob(os.path.join(self.home, "Maildir", sub, "new", "*"))

    def test_usage_and_exit_codes(self):
        r = lda(["-Z"])
        self.assertEqual(r.returncode, 64)
        self.assertIn(b"Usage: dovecot-lda [-c <config file>]", r.stdout)
        r = lda(["-c", self.conf, "-f", "a@b"])
        self.assertEqual(r.returncode, 64)
        self.assertIn(b"lda: Fatal: destination user parameter (-d user) not given", r.stderr)
        r = lda(["-c", self.conf, "-d", "nobody-here"])
        self.assertEqual(r.returncode, 67, r.stderr)
        r = lda(["-c", self.conf, "-o", "broken"])
        self.assertEqual(r.returncode, 64)
        # uid 0 from the userdb is refused (temporary, as Dovecot's)
        r = lda(["-c", self.conf, "-d", "rooty"])
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertIn(b"not permitted", r.stderr)
        self.assertEqual(self.mails(), [])

    def test_deliver_as_the_user(self):
        r = lda(["-c", self.conf, "-d", "carol", "-f", "<bob@example.org>",
                 "-a", "carol@example.org"], b"From bob@x  Mon Dec  7 10:00:00 2026\n" + MESSAGE)
        self.assertEqual(r.returncode, 0, r.stderr)
        [path] = self.mails()
        st = os.stat(path)
        self.assertEqual((st.st_uid, st.st_gid), (self.uid, self.gid))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), MESSAGE)  # the mbox From_ line is dropped
        with open(os.path.join(self.dir, "lda.log")) as f:
            log = f.read()
        self.assertRegex(log, r"lda\(carol\)<\d+><[^>]+>: Info: msgid=<lda@x>: saved mail to "
                              r"INBOX")

    def test_mailbox_option_autocreate_and_file(self):
        msg = os.path.join(self.dir, "msg")
        with open(msg, "wb") as f:
            f.write(MESSAGE)
        # -m of a missing mailbox: INBOX (lda_mailbox_autocreate = no)
        r = lda(["-c", self.conf, "-d", "carol", "-m", "Work", "-p", msg], b"")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(self.mails()), 1)
        r = lda(["-c", self.conf, "-d", "carol", "-m", "Work", "-p", msg,
                 "-o", "lda_mailbox_autocreate=yes", "-o", "lda_mailbox_autosubscribe=yes"], b"")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(self.mails("Work")), 1)
        with open(os.path.join(self.home, "Maildir", "subscriptions")) as f:
            self.assertIn("Work", f.read())

    def test_sieve_reject_mails_its_rejection_even_with_e(self):
        """As Dovecot 2.3's lda with Pigeonhole: -e does not change a Sieve
        reject, which mails the sender through sendmail_path; exit 0."""
        out = os.path.join(self.dir, "sent")
        os.makedirs(out)
        os.chmod(out, 0o777)
        sendmail = os.path.join(self.dir, "sendmail")
        with open(sendmail, "w") as f:
            f.write(f'#!/bin/sh\necho "$@" > {out}/args\ncat > {out}/mail\n')
        os.chmod(sendmail, 0o755)
        with open(self.conf, "a") as f:
            f.write(f"sendmail_path = {sendmail}\npostmaster_address = pm@example.net\n"
                    "protocol lda {\n  mail_plugins = sieve\n}\n"
                    "plugin {\n  sieve = file:~/sieve;active=~/.dovecot.sieve\n}\n")
        script = os.path.join(self.home, ".dovecot.sieve")
        with open(script, "w") as f:
            f.write('require "reject";\nreject "We do not want this.";\n')
        shutil.chown(script, self.uid, self.gid)
        r = lda(["-c", self.conf, "-d", "carol", "-e", "-f", "bob@example.org",
                 "-a", "carol@example.org"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.mails(), [])
        with open(os.path.join(out, "mail"), "rb") as f:
            mail = f.read()
        self.assertIn(b"From: Postmaster <pm@example.net>", mail)
        self.assertIn(b"We do not want this.", mail)
        with open(os.path.join(out, "args")) as f:
            self.assertIn("bob@example.org", f.read())


class FailureStatusTests(unittest.SynchronousTestCase):
    def test_dovecot_lda_exit_rules(self):
        from pydovecot.lda.main import failure_status

        quota = "552 5.2.2 Quota exceeded (mailbox for user is full)"
        self.assertEqual(failure_status(quota, True),
                         (77, "Quota exceeded (mailbox for user is full)", False))
        self.assertEqual(failure_status(quota, False),
                         (0, "Quota exceeded (mailbox for user is full)", True))
        self.assertEqual(failure_status("452 4.2.2 Not enough disk space", False),
                         (75, "", False))
        self.assertEqual(failure_status("452 4.2.2 Not enough disk space", True),
                         (75, "Not enough disk space", False))
