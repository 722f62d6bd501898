"""quota-status: Postfix's policy delegation answered from the quota.

The policy grammar and actions as a unit (PolicyProtocol over a
StringTransport), then the real thing: the master runs ``service
quota-status { executable = quota-status -p postfix; inet_listener }`` as
an unprivileged child, a private Postfix (tests/postfix.py) asks it with
``check_policy_service inet:127.0.0.1:N``, and swaks sees the over-quota
recipient rejected at RCPT time while the other is accepted.  Needs root,
postfix and swaks (skipped without; failed under CI=true).
"""

from __future__ import annotations

import os
import re
import subprocess

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pydovecot.quotastatus.policy import NoSuchUser, PolicyProtocol
from tests import postfix
from tests.harness import IN_CI, Master, User, listening_socket, privileged, title
from tests.test_isolation_deliver import LMTPClient
from tests.test_quota_process import BIG

REQUEST = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.org\n"
           b"recipient=%s\nsize=%d\n\n")


class PolicyUnitTests(SynchronousTestCase):
    def answer(self, data: bytes, settings: dict | None = None) -> bytes:
        def check(rcpt: str, size: int):
            if rcpt.startswith("nobody"):
                return defer.fail(NoSuchUser(rcpt))
            if rcpt.startswith("broken"):
                return defer.fail(RuntimeError("boom"))
            full = rcpt.startswith("full") or size > 1000
            return defer.succeed("Quota exceeded (mailbox for user is full)" if full else "")

        p = PolicyProtocol(settings or {}, check)
        t = StringTransport()
        p.makeConnection(t)
        p.dataReceived(data)
        return t.value()

    def test_actions(self):
        self.assertEqual(self.answer(REQUEST % (b"alice@example.org", 10)), b"action=OK\n\n")
        self.assertEqual(self.answer(REQUEST % (b"alice@example.org", 5000)),
                         b"action=554 5.2.2 Quota exceeded (mailbox for user is full)\n\n")
        self.assertEqual(self.answer(REQUEST % (b"nobody@example.org", 1)),
                         b"action=REJECT Unknown user\n\n")
        self.assertIn(b"action=DEFER_IF_PERMIT", self.answer(REQUEST % (b"broken@x", 1)))
        self.assertEqual(self.answer(b"request=other\n\n"), b"action=DUNNO\n\n")
        custom = {"quota_status_success": "DUNNO", "quota_status_nouser": "DUNNO",
                  "quota_status_overquota": '"552 5.2.2 Mailbox is full"'}
        self.assertEqual(self.answer(REQUEST % (b"full@x", 1) + REQUEST % (b"a@x", 1)
                                     + REQUEST % (b"nobody@x", 1), custom),
                         b"action=552 5.2.2 Mailbox is full\n\naction=DUNNO\n\naction=DUNNO\n\n")

    def test_bounded(self):
        p = PolicyProtocol({}, lambda r, s: defer.succeed(""))
        t = StringTransport()
        p.makeConnection(t)
        p.dataReceived(b"x=" + b"y" * 5000 + b"\n")
        self.assertTrue(t.disconnecting)


class PostfixQuotaStatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = postfix.unavailable()
        if reason:
            if IN_CI:
                self.fail(f"CI must run the quota-status Postfix test: {reason}")
            raise SkipTest(reason)
        self.master = Master(users=[User("alice", "secret",
                                         extra="userdb_quota_rule=*:storage=2K"),
                                    User("bob", "hunter2")], **privileged())
        self.addCleanup(self.master.cleanup)
        sock = listening_socket()
        self.master.sockets["quotastatus"] = sock
        port = sock.getsockname()[1]
        self.master.extra_config = f"""
mail_plugins = $mail_plugins quota
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage=1M
  quota_grace = 50%%
  quota_status_success = DUNNO
  quota_status_nouser = DUNNO
  quota_status_overquota = "552 5.2.2 Mailbox is full"
}}
service quota-status {{
  executable = quota-status -p postfix
  inet_listener quotastatus {{
    port = {port}
  }}
  client_limit = 1
}}
"""
        self.master.write_config()
        self.master.start()
        self.postfix = postfix.Postfix(
            "private/auth", extra_main_cf=(
                "smtpd_sasl_auth_enable = no\n"
                "smtpd_relay_restrictions = permit_mynetworks, reject\n"
                f"smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:{port}, "
                "permit\n"))
        self.addCleanup(self.postfix.cleanup)
        self.postfix.start()

    def swaks(self, rcpt: str) -> str:
        result = subprocess.run(
            [postfix.SWAKS, "--server", f"127.0.0.1:{self.postfix.port}", "--from",
             "sender@example.org", "--to", rcpt, "--quit-after", "RCPT", "--timeout", "20"],
            capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr

    def test_over_quota_recipient_rejected_at_rcpt(self) -> None:
        client = LMTPClient(self.master.ports["lmtp"])
        client.command(b"LHLO test")
        # BIG and lmtp's headers cross her 2K within the grace: now she is over
        _rcpt, data = client.transaction([b"alice@example.org"], BIG)
        client.close()
        self.assertTrue(data[0].startswith(b"250"), data)
        out = self.swaks("alice@example.org")
        self.assertRegex(out, r"<\*\* 552 5\.2\.2 .*Mailbox is full", out + self.postfix.log())
        out = self.swaks("bob@example.org")
        self.assertRegex(out, r"<-  250 2\.1\.5 Ok", out)
        out = self.swaks("nosuch@example.org")
        self.assertRegex(out, r"<-  250 2\.1\.5 Ok", out)  # nouser = DUNNO
        # the service runs unprivileged, as the master's child
        pids = [p for p in self.master.descendants() if title(p).startswith(
            "pydovecot/quota-status")]
        self.assertEqual(len(pids), 1, [title(p) for p in self.master.descendants()])
        if os.geteuid() == 0:
            with open(f"/proc/{pids[0]}/status") as f:
                uid = re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1)
            self.assertNotEqual(uid, "0")
