"""Quota in the storage: Dovecot's rule syntax, the Maildir++
``maildirsize`` file that Dovecot and pydovecot both read and write,
OVERQUOTA for append/copy, expunge and DELETE freeing at once,
quota_grace, quota_max_mail_size, userdb overrides, warnings and the
config check."""

from __future__ import annotations

import io
import json
import os
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from pydovecot.config.parser import ConfigError, parse_config
from pydovecot.mailproc.main import quota_settings
from pydovecot.storage import quota as Q
from pydovecot.storage.interfaces import MailTooLarge, OverQuota
from pydovecot.storage.maildir import MaildirStorage
from tests.dovecot_local import LocalDovecot
from tests.storage_now import result_now

MSG = b"Subject: q\n\n" + b"x" * 988 + b"\n"  # 1001 bytes on disk


def load_string(text: str):
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("protocols = imap lmtp\nssl = no\n" + text)
    try:
        return parse_config(f.name)
    finally:
        os.unlink(f.name)


def storage(root: str, **plugin: str) -> MaildirStorage:
    s = MaildirStorage("alice", root)
    result_now(s.configure(plugin))
    return s


def usage(s, root="User quota"):
    return {r.name: (r.usage, r.limit) for r in result_now(s.get_quota(root))}


class Rules(unittest.TestCase):
    def test_rules(self):
        cfg = Q.parse_settings({"quota": "maildir:User quota", "quota_rule": "*:storage=1G",
                                "quota_rule2": "Trash:storage=+100M",
                                "quota_rule3": "*:messages=10000",
                                "quota_rule4": "Spam:ignore", "quota_grace": "10%%"})
        root = cfg.roots[0]
        self.assertEqual(root.name, "User quota")
        self.assertEqual(root.limits(), (1 << 30, 10000))
        self.assertEqual(root.limits("Trash"), ((1 << 30) + (100 << 20), 10000))
        self.assertTrue(root.ignored("Spam"))
        self.assertEqual(root.grace_bytes(1000), 100)
        self.assertEqual(Q.parse_rule("*:storage=100").storage.apply(0), 100 * 1024)  # kB
        self.assertEqual(Q.parse_rule("*:bytes=100").storage.apply(0), 100)
        self.assertEqual(Q.parse_rule("INBOX:storage=50%").storage.apply(1000), 500)

    def test_refused(self):
        for value in ("dict:User quota::file:%h/q", "fs:User quota", "imapc:"):
            self.assertRaises(Q.QuotaSettingError, Q.parse_settings, {"quota": value})
        self.assertRaises(Q.QuotaSettingError, Q.parse_settings,
                          {"quota": "count:User quota"})  # needs quota_vsizes = yes
        self.assertRaises(Q.QuotaSettingError, Q.parse_rule, "*:storage=lots")
        self.assertRaises(Q.QuotaSettingError, Q.parse_warning, "95%% script")

    def test_config(self):
        ok = load_string("mail_plugins = $mail_plugins quota\n"
                         "protocol imap {\n mail_plugins = $mail_plugins imap_quota\n}\n"
                         "plugin {\n quota = maildir:User quota\n quota_rule = *:storage=1G\n"
                         " quota_warning = storage=95%% quota-warning 95 %u\n}\n"
                         "service quota-warning {\n executable = script /bin/true\n}\n"
                         "quota_full_tempfail = yes\n")
        got = quota_settings(ok, {"quota_rule": "*:storage=50M"})
        self.assertEqual(got["quota_rule"], "*:storage=50M")  # userdb wins
        self.assertEqual(got["quota_warning_executable"], "/bin/true")
        with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
            readme = f.read()
        block = readme.split("## Quota", 1)[1].split("```")[1]  # the README's example
        full = load_string(block)
        self.assertEqual(full.warnings, [])
        self.assertEqual(full.services["quota-status"].inet_listeners["#1"].port, 12340)
        for bad in ("plugin {\n quota = dict:User quota::proxy::quota\n}\n",
                    "plugin {\n quota = count:User quota\n}\n",
                    "plugin {\n quota = maildir:x\n quota_rule = *:storage=x\n}\n",
                    "plugin {\n quota = maildir:x\n quota_over_flag = yes\n}\n",
                    "plugin {\n quota = maildir:x\n quota_over_script = x\n}\n"):
            self.assertRaises(ConfigError, load_string, "mail_plugins = quota\n" + bad)


class Storage(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.root = os.path.join(self.dir, "Maildir")

    def tearDown(self):
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)

    def fill(self, s, n, box="INBOX"):
        for _ in range(n):
            result_now(s.append(box, io.BytesIO(MSG)))

    def test_maildir_overquota_expunge_delete(self):
        s = storage(self.root, quota="maildir:User quota", quota_rule="*:bytes=3500",
                    quota_rule2="*:messages=10", quota_grace="0")
        self.fill(s, 3)
        self.assertEqual(usage(s), {"STORAGE": (3003, 3500), "MESSAGE": (3, 10)})
        with open(os.path.join(self.root, "maildirsize")) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "3500S,10C")
        self.failureResultOf(s.append("INBOX", io.BytesIO(MSG)), OverQuota)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "tmp"))), 0)
        box = result_now(s.open("INBOX"))
        result_now(box.store([box.messages[0].uid], ["\\Deleted"], "+"))
        result_now(box.expunge())
        self.assertEqual(usage(s)["STORAGE"], (2002, 3500))
        self.fill(s, 1)  # fits again at once
        result_now(s.create("Sub"))
        self.failureResultOf(s.copy(box, [m.uid for m in box.messages], "Sub"), OverQuota)
        moved = box.messages[0].uid
        result_now(s.move(box, [moved], "Sub"))  # moves need no room
        result_now(box.store([moved], ["\\Deleted"], "+"))
        result_now(box.expunge())
        result_now(s.delete("Sub"))
        self.assertEqual(usage(s)["MESSAGE"], (2, 10))
        os.unlink(os.path.join(self.root, "maildirsize"))
        self.assertEqual(usage(s)["MESSAGE"], (2, 10))  # recalculated

    def test_grace_and_max_size(self):
        s = storage(self.root, quota="maildir:User quota", quota_rule="*:bytes=2500",
                    quota_grace="1000b", quota_max_mail_size="5k")
        self.fill(s, 2)
        self.failureResultOf(s.append("INBOX", io.BytesIO(MSG)), OverQuota)  # IMAP: no grace
        self.failureResultOf(s.check_quota("INBOX", 6000), MailTooLarge)
        result_now(s.check_quota("INBOX", 1001))  # a delivery would fit, with the grace
        with s.delivering():  # LMTP: the third crosses the limit within the grace
            self.fill(s, 1)
            self.failureResultOf(s.append("INBOX", io.BytesIO(MSG)), OverQuota)
        s.quota.config.roots[0].rules[0].storage.value = 100000
        self.failureResultOf(s.append("INBOX", io.BytesIO(b"x" * 6000)), MailTooLarge)

    def test_count_backend_and_recalc(self):
        s = storage(self.root, quota="count:User quota", quota_rule="*:storage=10k",
                    quota_vsizes="yes")
        self.fill(s, 2)
        self.assertEqual(usage(s)["STORAGE"], (2008, 10240))  # RFC822.SIZE (CRLF)
        self.assertEqual([r.usage for r in result_now(s.recalc_quota())], [2008, 2])
        self.assertEqual(result_now(s.quota_roots("INBOX")), ["User quota"])

    def test_stale_maildirsize_recalculated(self):
        s = storage(self.root, quota="maildir:User quota", quota_rule="*:bytes=1000")
        path = os.path.join(self.root, "maildirsize")
        with open(path, "w") as f:  # says over quota, more than a summary: not trusted
            f.write("1000S\n5000 5\n1 1\n")
        self.assertEqual(usage(s)["STORAGE"], (0, 1000))
        with open(path, "w") as f:
            f.write("1000S\n0 0\n" + "10 1\n" * 600)  # > 5120 bytes
        self.assertEqual(usage(s)["STORAGE"], (0, 1000))
        with open(path, "w") as f:
            f.write("999S\n5 1\n")  # other limits
        self.assertEqual(usage(s)["STORAGE"], (0, 1000))
        with open(path) as f:
            self.assertEqual(f.read(), "1000S\n0 0\n")


class WithDovecot(unittest.TestCase):
    """doveadm reads our maildirsize, and we read Dovecot's."""

    QUOTA = ["-o", "mail_plugins=quota", "-o", "plugin/quota=maildir:User quota",
             "-o", "plugin/quota_rule=*:storage=1M", "-o", "plugin/quota_rule2=*:messages=100"]

    def get(self, dc: LocalDovecot) -> dict:
        out = json.loads(dc.doveadm("-f", "json", *self.QUOTA, "quota", "get"))
        return {(r["type"], r["value"], r["limit"]) for r in out}

    def test_both_ways(self):
        dc = LocalDovecot(self)
        s = storage(dc.maildir, quota="maildir:User quota", quota_rule="*:storage=1M",
                    quota_rule2="*:messages=100")
        for _ in range(3):
            result_now(s.append("INBOX", io.BytesIO(MSG)))
        ours = usage(s)
        with open(os.path.join(dc.maildir, "maildirsize")) as f:
            mine = f.read()
        self.assertEqual(mine.splitlines()[0], "1048576S,100C")
        got = self.get(dc)  # Dovecot reads our file (it would rewrite a bad one)
        self.assertEqual(got, {("STORAGE", str(3003 // 1024 + 1), "1024"),
                               ("MESSAGE", "3", "100")}, got)
        self.assertEqual(ours["MESSAGE"], (3, 100))
        # Dovecot writes, we read
        os.unlink(os.path.join(dc.maildir, "maildirsize"))
        dc.doveadm(*self.QUOTA, "quota", "recalc")
        with open(os.path.join(dc.maildir, "maildirsize")) as f:
            theirs = f.read()
        self.assertEqual(theirs, mine.splitlines()[0] + "\n3003 3\n")
        os.chmod(os.path.join(dc.maildir, "maildirsize"), 0o444)
        self.assertEqual(usage(s), ours)


class DoveadmVerbs(unittest.TestCase):
    """pydoveadm's ``quota get`` / ``quota recalc`` (the mail-process side,
    printed with -f json) against ``doveadm -f json quota get``."""

    PLUGIN = {"quota": "maildir:User quota", "quota_rule": "*:storage=1M"}

    @defer.inlineCallbacks
    def ours(self, s, verb: str):
        from pydovecot.admin import formatters
        from pydovecot.mailproc import admin

        out = yield defer.ensureDeferred(admin.VERBS[verb](s, {"argv": [], "options": {}},
                                                           "alice"))
        stdout, stderr = io.StringIO(), io.StringIO()
        if out["headers"]:
            formatters.write("json", out["headers"], out["rows"], stdout, stderr)
        return stdout.getvalue()

    @defer.inlineCallbacks
    def test_quota_get_as_doveadm(self):
        dc = LocalDovecot(self)
        s = storage(dc.maildir, **self.PLUGIN)
        for _ in range(3):
            result_now(s.append("INBOX", io.BytesIO(MSG)))
        opts = [a for k, v in self.PLUGIN.items() for a in ("-o", f"plugin/{k}={v}")]
        theirs = json.loads(dc.doveadm("-f", "json", "-o", "mail_plugins=quota", *opts,
                                       "quota", "get"))
        ours = json.loads((yield self.ours(s, "quota get")))
        self.assertEqual(ours, theirs)
        os.unlink(os.path.join(dc.maildir, "maildirsize"))
        self.assertEqual((yield self.ours(s, "quota recalc")), "")
        self.assertTrue(os.path.exists(os.path.join(dc.maildir, "maildirsize")))


class Warnings(unittest.TestCase):
    def test_script_runs(self):
        d = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, d, True)
        out = os.path.join(d, "out")
        script = os.path.join(d, "warn.sh")
        with open(script, "w") as f:
            f.write(f"#!/bin/sh\necho \"$@ $(id -u)\" > {out}\n")
        os.chmod(script, 0o755)
        s = storage(os.path.join(d, "Maildir"), quota="maildir:User quota",
                    quota_rule="*:bytes=2000", quota_warning="storage=50%% quota-warning 50 %u",
                    quota_warning_executable=script)
        result_now(s.append("INBOX", io.BytesIO(MSG)))  # 1001 of 2000: crosses 50%

        def check():
            for _ in range(100):
                if os.path.exists(out) and os.path.getsize(out):
                    break
                time.sleep(0.01)
            with open(out) as f:
                self.assertEqual(f.read().strip(), f"50 alice {os.getuid()}")

        return _later(2.0).addCallback(lambda _: check())


def _later(seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
