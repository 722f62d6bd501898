"""Quota through the real master (privileged() users when root): LMTP's
552 5.2.2 / 452 4.2.2 per recipient at DATA, the userdb's ``quota_rule``
overriding the plugin's, GETQUOTAROOT in a real session, and the
quota_warning script run as the mail user."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import ROOT, LineClient, Master, User, privileged
from tests.test_isolation_deliver import MESSAGE, LMTPClient

BIG = MESSAGE.replace(b"{subject}", b"big") + (b"y" * 98 + b"\r\n") * 20  # ~2.1 kB
USERS = [User("alice", "secret", extra="userdb_quota_rule=*:storage=4K"),
         User("bob", "hunter2")]


def quota_config(master_dir: str, tempfail: bool) -> str:
    return f"""
mail_plugins = $mail_plugins quota
protocol imap {{
  mail_plugins = $mail_plugins imap_quota
}}
quota_full_tempfail = {'yes' if tempfail else 'no'}
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage=1M
  quota_rule2 = *:messages=100
  quota_grace = 0
  quota_warning = storage=50%% quota-warning 50 %u
}}
service quota-warning {{
  executable = script {master_dir}/warn.sh
}}
"""


class QuotaMasterTests(SynchronousTestCase):
    tempfail = False

    def setUp(self) -> None:
        self.master = Master(users=list(USERS), **privileged())
        self.addCleanup(self.master.cleanup)
        self.master.extra_config = quota_config(self.master.dir, self.tempfail)
        self.master.write_config()
        self.out = os.path.join(self.master.dir, "warned")
        os.makedirs(self.out)
        os.chmod(self.out, 0o1777)
        with open(os.path.join(self.master.dir, "warn.sh"), "w") as f:
            f.write(f"#!/bin/sh\necho \"$@ $(id -u)\" >> {self.out}/log\n")
        os.chmod(os.path.join(self.master.dir, "warn.sh"), 0o755)
        self.master.start()

    def deliver(self, rcpts: list[bytes]) -> tuple[list, list]:
        client = LMTPClient(self.master.ports["lmtp"])
        try:
            self.assertTrue(client.command(b"LHLO test").startswith(b"250"))
            return client.transaction(rcpts, BIG)
        finally:
            client.close()

    def test_over_quota_at_data_is_that_recipients_alone(self) -> None:
        _rcpt, data = self.deliver([b"alice@example.org", b"bob@example.org"])
        self.assertTrue(all(d.startswith(b"250 ") for d in data), data)
        _rcpt, data = self.deliver([b"alice@example.org", b"bob@example.org"])
        # alice: 4K from her userdb; the second 2.1 kB message crosses it
        code = rb"452 4\.2\.2" if self.tempfail else rb"552 5\.2\.2"
        self.assertRegex(data[0], code + rb" <alice@example\.org> Quota exceeded "
                                         rb"\(mailbox for user is full\)")
        self.assertTrue(data[1].startswith(b"250 "), data)  # bob: 1M from plugin {}
        # the warning (50% of alice's 4K) ran once, as the mail user
        self.master.wait_for(lambda: os.path.exists(f"{self.out}/log"), 10, "warning script")
        with open(f"{self.out}/log") as f:
            lines = f.read().splitlines()
        uid = pwd.getpwnam("pdvmail").pw_uid if os.geteuid() == 0 else os.getuid()
        self.assertEqual(lines, [f"50 alice {uid}"])
        # and a real IMAP session sees the same usage
        client = LineClient(self.master.ports["imap"], timeout=30)
        self.assertTrue(client.line().startswith(b"* OK"))
        self.assertTrue(client.tagged(b"LOGIN alice secret")[-1].split()[1] == b"OK")
        caps = b" ".join(client.tagged(b"CAPABILITY"))
        self.assertIn(b"QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE", caps)
        lines = client.tagged(b"GETQUOTAROOT INBOX")
        self.assertEqual(lines[0], b'* QUOTAROOT INBOX "User quota"')
        m = re.fullmatch(rb'\* QUOTA "User quota" \(STORAGE (\d+) 4 MESSAGE 1 100\)', lines[1])
        self.assertTrue(m, lines)
        lines = client.tagged(b"APPEND INBOX {%d+}\r\n%s" % (len(BIG), BIG))
        self.assertEqual(lines[-1].split(b" ", 2)[1:],
                         [b"NO", b"[OVERQUOTA] Quota exceeded (mailbox for user is full)"])
        client.close()
        # pydoveadm through the master, in alice's mail process
        rows = json.loads(self.adm("-f", "json", "quota", "get", "-u", "alice"))
        self.assertEqual([(r["root"], r["type"], r["limit"]) for r in rows],
                         [("User quota", "STORAGE", "4"), ("User quota", "MESSAGE", "100")])
        self.assertEqual(rows[1]["value"], "1")
        self.assertEqual(self.adm("quota", "recalc", "-u", "alice"), "")

    def adm(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "pydovecot.admin.cli", "-c", self.master.config_path, *args],
            capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120,
            stdin=subprocess.DEVNULL, text=True)
        self.assertEqual(proc.returncode, 0, f"{args}: {proc.stdout!r} {proc.stderr!r}")
        return proc.stdout


class QuotaTempfailTests(QuotaMasterTests):
    tempfail = True


class RcptCheckTests(SynchronousTestCase):
    """``lmtp_rcpt_check_quota = yes``: an over-quota recipient is refused at
    RCPT TO (the lmtp process asks the user's mail process through the
    master), the others are accepted."""

    def setUp(self) -> None:
        self.master = Master(users=list(USERS), **privileged())
        self.addCleanup(self.master.cleanup)
        self.master.extra_config = quota_config(self.master.dir, False).replace(
            "quota_warning = storage=50%% quota-warning 50 %u", "") + "lmtp_rcpt_check_quota = yes\n"
        self.master.write_config()
        self.master.start()

    def test_refused_at_rcpt(self) -> None:
        client = LMTPClient(self.master.ports["lmtp"])
        self.addCleanup(client.close)
        self.assertTrue(client.command(b"LHLO test").startswith(b"250"))
        _rcpt, data = client.transaction([b"alice@example.org"], BIG)  # 2.1 of alice's 4K
        self.assertTrue(data[0].startswith(b"250 "), data)
        # MAIL FROM's SIZE= is what RCPT checks: 2.1K + 3000 octets won't fit
        self.assertTrue(client.command(b"MAIL FROM:<s@example.org> SIZE=3000").startswith(b"250"))
        self.assertRegex(client.command(b"RCPT TO:<alice@example.org>"),
                         rb"^552 5\.2\.2 <alice(@example\.org)?> Quota exceeded")
        self.assertTrue(client.command(b"RCPT TO:<bob@example.org>").startswith(b"250 "))
        client.command(b"RSET")
        # without SIZE a message still fits: accepted at RCPT
        self.assertTrue(client.command(b"MAIL FROM:<s@example.org>").startswith(b"250"))
        self.assertTrue(client.command(b"RCPT TO:<alice@example.org>").startswith(b"250 "))
