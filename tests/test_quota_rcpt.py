"""The RCPT-time quota check (``lmtp_rcpt_check_quota``): the mail
process's QuotaCheck responder answers Dovecot's reply, and lmtp's backend
(``IDeliveryBackend.check_quota``) relays the master's answer."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.lmtp.interfaces import IDeliveryBackend
from pydovecot.lmtp.process import MasterDelivery
from pydovecot.mailproc import main as mailproc
from pydovecot.master.protocol import QuotaCheckRequest
from tests.storage_now import result_now

PLUGIN = {"quota": "maildir:User quota", "quota_rule": "*:bytes=1500", "quota_grace": "0"}


class Config:
    def __init__(self, tempfail: str = "no"):
        self.plugin = dict(PLUGIN)
        self.tempfail = tempfail

    def get(self, key, protocol=None):
        return {"mail_location": "maildir:~/Maildir", "mail_plugins": "quota",
                "quota_full_tempfail": self.tempfail}.get(key, "")


class MailProcessCheck(unittest.TestCase):
    def check(self, tempfail: str, size: int, fill: int = 1):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        process = mailproc.MailProcess(Config(tempfail))
        locator = mailproc.MailLocator(process)
        fields = json.dumps({"home": os.path.join(root, "alice")})
        storage = process.storage_for("alice", json.loads(fields))
        for _ in range(fill):
            result_now(storage.append("INBOX", io.BytesIO(b"x" * 1000)))
        return self.successResultOf(locator.check_quota(user="alice", fields=fields,
                                                        size=size))["reply"]

    def test_replies(self):
        self.assertEqual(self.check("no", 100), "")
        self.assertEqual(self.check("no", 1000),
                         "552 5.2.2 <alice> Quota exceeded (mailbox for user is full)")
        self.assertEqual(self.check("yes", 1000),
                         "452 4.2.2 <alice> Quota exceeded (mailbox for user is full)")


class FakeMaster:
    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def callRemote(self, command, **kwargs):  # noqa: N802
        self.calls.append((command, kwargs))
        return self.answer if isinstance(self.answer, defer.Deferred) else defer.succeed(
            self.answer)


class BackendCheck(unittest.TestCase):
    def test_relays_the_masters_answer(self):
        master = FakeMaster({"reply": "552 5.2.2 <bob> Quota exceeded"})
        backend = MasterDelivery(None, master, "+")
        verifyObject(IDeliveryBackend, backend)
        self.assertEqual(self.successResultOf(backend.check_quota("bob", {}, 10)),
                         "552 5.2.2 <bob> Quota exceeded")
        self.assertEqual(master.calls, [(QuotaCheckRequest, {"user": "bob", "size": 10})])
        ok = MasterDelivery(None, FakeMaster({"reply": ""}), "+")
        self.assertIsNone(self.successResultOf(ok.check_quota("bob", {}, 0)))

    def test_failure_lets_the_recipient_through(self):
        backend = MasterDelivery(None, FakeMaster(defer.fail(RuntimeError("gone"))), "+")
        self.assertIsNone(self.successResultOf(backend.check_quota("bob", {}, 0)))


class DeliveryGrace(unittest.TestCase):
    def test_deliveries_get_the_grace(self):
        from pydovecot.storage.interfaces import OverQuota
        from pydovecot.storage.maildir import MaildirStorage

        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        s = MaildirStorage("alice", os.path.join(root, "Maildir"))
        result_now(s.configure({"quota": "maildir:User quota", "quota_rule": "*:bytes=1500"}))
        result_now(s.append("INBOX", io.BytesIO(b"x" * 1000)))
        self.failureResultOf(s.append("INBOX", io.BytesIO(b"x" * 600)), OverQuota)
        d = mailproc.DeliveryStorage(s).append("INBOX", io.BytesIO(b"x" * 600))
        self.assertEqual(self.successResultOf(d)[1], 2)  # 1600 <= 1500 + 10%
        self.assertFalse(s.quota.grace)
