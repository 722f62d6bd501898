"""pydoveadm's mailbox verbs and formatters against Debian's doveadm.

Both run on one Maildir (tests/dovecot_local.py: doveadm without a
running Dovecot, USER/HOME from the environment): doveadm's ``-f json``
output and ours (the mail-process side of each verb,
:mod:`pydovecot.mailproc.admin`, on our MaildirStorage of the same home,
printed by :mod:`pydovecot.admin.formatters`) are compared after
normalising what differs by design (mailbox GUIDs, which IMailStorage
does not expose yet, and modseqs).  The formatters are compared byte for
byte on the same rows (table, flow, tab, json, pager).  With CI=true a
missing doveadm fails.
"""

from __future__ import annotations

import io
import json
import os
import subprocess

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from pydovecot.admin import formatters
from pydovecot.mailproc import admin
from pydovecot.storage.maildir import MaildirStorage
from tests.dovecot_local import DOVEADM, LocalDovecot

MESSAGES = [
    b"From: Ann <ann@example.org>\nTo: alice@example.org\nSubject: first hello\n"
    b"Date: Mon, 7 Dec 2026 10:00:00 +0000\nMessage-ID: <1@example.org>\n\nbody one\n",
    b"From: bob@example.org\nSubject: second\nDate: Tue, 8 Dec 2026 11:30:00 +0100\n\n"
    b"body two\nmore\n",
    b"From: carol@example.org\nSubject: third hello\nX-Tag: one\nX-Tag: two\n  folded\n"
    b"X-Enc: =?utf-8?q?caf=C3=A9?=\n\nbody three\n\n> quoted\nmore text\n",
]


class Side:
    """Our verbs on the LocalDovecot home."""

    def __init__(self, dovecot: LocalDovecot):
        self.dovecot = dovecot

    def storage(self) -> MaildirStorage:
        return MaildirStorage("alice", self.dovecot.maildir, home=self.dovecot.home)

    @defer.inlineCallbacks
    def run(self, verb: str, *argv: str, fmt: str = "json", **options):
        out = yield defer.ensureDeferred(admin.VERBS[verb](
            self.storage(), {"argv": list(argv), "options": options}, "alice"))
        self.dovecot.give()  # files we wrote go back to the mail user
        stdout, stderr = io.StringIO(), io.StringIO()
        if out["headers"]:
            formatters.write(fmt, out["headers"], out["rows"], stdout, stderr)
        return stdout.getvalue(), stderr.getvalue(), out


class CompareBase(TestCase):
    def setUp(self) -> None:
        self.dovecot = LocalDovecot(self)
        self.ours = Side(self.dovecot)
        for name in ("Archive/2026", "Sent"):
            self.dovecot.doveadm("mailbox", "create", name)
        for i, msg in enumerate(MESSAGES):
            self.save(msg, "INBOX" if i < 2 else "Archive/2026")

    def save(self, message: bytes, mailbox: str) -> None:
        self.dovecot.give()
        proc = subprocess.run([DOVEADM, "-c", self.dovecot.conf, "save", "-m", mailbox],
                              env=self.dovecot.env, input=message, capture_output=True,
                              timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)

    def theirs(self, *args: str) -> list[dict]:
        return json.loads(self.dovecot.doveadm("-f", "json", *args) or "[]")

    @staticmethod
    def normal(rows: list[dict], drop: tuple[str, ...] = ()) -> list[dict]:
        out = []
        for row in rows:
            row = {k: v for k, v in row.items() if k not in drop}
            if "flags" in row:
                row["flags"] = " ".join(f for f in row["flags"].split() if f != "\\Recent")
            out.append(row)
        return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


class MailboxVerbTests(CompareBase):
    @defer.inlineCallbacks
    def test_mailbox_list(self):
        out, _, _ = yield self.ours.run("mailbox list")
        self.assertEqual(self.normal(json.loads(out)), self.normal(self.theirs("mailbox", "list")))
        out, _, _ = yield self.ours.run("mailbox list", "Archive*")
        self.assertEqual(self.normal(json.loads(out)),
                         self.normal(self.theirs("mailbox", "list", "Archive*")))

    @defer.inlineCallbacks
    def test_mailbox_status(self):
        fields = "messages recent uidnext uidvalidity unseen vsize"
        out, _, _ = yield self.ours.run("mailbox status", fields, "*")
        theirs = self.theirs("mailbox", "status", fields, "*")
        # doveadm took \Recent when it saved; ours counts none left (Dovecot's rule)
        self.assertEqual(self.normal(json.loads(out), ("recent",)),
                         self.normal(theirs, ("recent",)))
        out, _, _ = yield self.ours.run("mailbox status", "messages vsize", "*", t=True)
        self.assertEqual(json.loads(out),
                         self.theirs("mailbox", "status", "-t", "messages vsize", "*"))

    @defer.inlineCallbacks
    def test_fetch(self):
        fields = ("mailbox uid seq flags size.virtual size.physical hdr.subject date.sent "
                  "date.sent.unixtime text hdr body hdr.x-tag hdr.x-enc hdr.x-enc.utf8 "
                  "hdr.x-missing body.snippet")
        out, _, _ = yield self.ours.run("fetch", fields, "all")
        self.assertEqual(self.normal(json.loads(out)),
                         self.normal(self.theirs("fetch", fields, "all")))
        fields = "uid imap.envelope imap.bodystructure imap.body"
        out, _, _ = yield self.ours.run("fetch", fields, "mailbox", "INBOX", "all")
        self.assertEqual(self.normal(json.loads(out)),
                         self.normal(self.theirs("fetch", fields, "mailbox", "INBOX", "all")))

    @defer.inlineCallbacks
    def test_search(self):
        for query in (["mailbox", "INBOX", "all"], ["subject", "hello"],
                      ["mailbox", "Archive*", "from", "carol", "or", "seen"],
                      ["(", "from", "ann", "or", "from", "bob", ")", "not", "seen"],
                      ["uid", "2"], ["since", "2020-01-01", "mailbox", "INBOX"]):
            out, _, _ = yield self.ours.run("search", *query)
            self.assertEqual(self.normal(json.loads(out), ("mailbox-guid",)),
                             self.normal(self.theirs("search", *query), ("mailbox-guid",)),
                             query)

    @defer.inlineCallbacks
    def test_flags_seen_by_doveadm(self):
        yield self.ours.run("flags add", "\\Flagged $Work", "mailbox", "INBOX", "uid", "1")
        yield self.ours.run("flags remove", "\\Flagged", "mailbox", "INBOX", "uid", "1")
        yield self.ours.run("flags add", "\\Seen \\Answered", "mailbox", "INBOX", "all")
        yield self.ours.run("flags add", "zeta alpha $Later", "mailbox", "INBOX", "uid", "2")
        yield self.ours.run("flags replace", "\\Draft", "mailbox", "Archive/2026", "all")
        out, _, _ = yield self.ours.run("fetch", "mailbox uid flags", "all")
        theirs = self.theirs("fetch", "mailbox uid flags", "all")
        self.assertEqual(self.normal(json.loads(out)), self.normal(theirs))
        self.assertIn("$Work", json.dumps(theirs))

    @defer.inlineCallbacks
    def test_create_rename_delete_copy_move_expunge(self):
        yield self.ours.run("mailbox create", "New/Sub")
        yield self.ours.run("mailbox rename", "Sent", "Sent Items")
        yield self.ours.run("copy", "New/Sub", "mailbox", "INBOX", "subject", "first")
        yield self.ours.run("move", "Sent Items", "mailbox", "Archive/2026", "all")
        _, _, res = yield self.ours.run("mailbox delete", "Nope")
        self.assertEqual(res["exit"], 68)
        names = {r["mailbox"] for r in self.theirs("mailbox", "list")}
        self.assertEqual(names, {"INBOX", "Archive", "Archive/2026", "New", "New/Sub",
                                 "Sent Items"})
        status = {r["mailbox"]: r["messages"] for r in
                  self.theirs("mailbox", "status", "messages", "*")}
        self.assertEqual(status["New/Sub"], "1")
        self.assertEqual(status["Sent Items"], "1")
        self.assertEqual(status["Archive/2026"], "0")
        yield self.ours.run("expunge", "mailbox", "INBOX", "subject", "second")
        self.assertEqual(self.theirs("search", "mailbox", "INBOX", "all")[0]["uid"], "1")
        self.assertEqual(len(self.theirs("search", "mailbox", "INBOX", "all")), 1)
        yield self.assertFailure(self.ours.run("expunge", "all"), admin.AdminError)
        # doveadm refuses an expunge without a mailbox too
        self.assertNotEqual(0, subprocess.run(
            [DOVEADM, "-c", self.dovecot.conf, "expunge", "all"], env=self.dovecot.env,
            capture_output=True).returncode)

    @defer.inlineCallbacks
    def test_save(self):
        path = os.path.join(self.dovecot.dir, "msg.eml")
        with open(path, "wb") as f:
            f.write(b"From: z@example.org\nSubject: saved by pydoveadm\n\nhi\n")
        fd = os.open(path, os.O_RDONLY)
        yield self._save(fd)
        found = self.theirs("fetch", "hdr.subject", "mailbox", "Sent", "all")
        self.assertEqual(found, [{"hdr.subject": "saved by pydoveadm"}])

    @defer.inlineCallbacks
    def _save(self, fd: int):
        try:
            yield defer.ensureDeferred(admin.VERBS["save"](
                self.ours.storage(), {"argv": [], "options": {"m": "Sent"}, "_input": fd},
                "alice"))
        finally:
            os.close(fd)
        self.dovecot.give()

    @defer.inlineCallbacks
    def test_metadata(self):
        self.dovecot.doveadm("mailbox", "metadata", "set", "INBOX", "/private/comment", "theirs")
        out, _, _ = yield self.ours.run("mailbox metadata get", "INBOX", "/private/comment")
        self.assertEqual(json.loads(out), self.theirs("mailbox", "metadata", "get", "INBOX",
                                                      "/private/comment"))
        yield self.ours.run("mailbox metadata set", "Sent", "/shared/comment", "ours")
        self.assertEqual(self.theirs("mailbox", "metadata", "get", "Sent", "/shared/comment"),
                         [{"value": "ours"}])
        out, _, _ = yield self.ours.run("mailbox metadata list", "Sent")
        # Dovecot adds its computed internal entries (specialuse, …/pvt/server/…)
        theirs = {r["key"] for r in self.theirs("mailbox", "metadata", "list", "Sent")
                  if r["key"] != "specialuse" and "/pvt/" not in r["key"]}
        self.assertEqual({r["key"] for r in json.loads(out)}, theirs)
        yield self.ours.run("mailbox metadata unset", "Sent", "/shared/comment")
        self.assertEqual(self.theirs("mailbox", "metadata", "get", "Sent", "/shared/comment"),
                         [{"value": ""}])
        out, _, _ = yield self.ours.run("mailbox metadata get", "Sent", "/shared/comment")
        self.assertEqual(json.loads(out), [{"value": ""}])


class FormatterTests(CompareBase):
    """Byte for byte: doveadm's stdout."""

    def doveadm_raw(self, *args: str) -> tuple[str, str]:
        self.dovecot.give()
        proc = subprocess.run([DOVEADM, "-c", self.dovecot.conf, *args], env=self.dovecot.env,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout.decode(), proc.stderr.decode()

    @defer.inlineCallbacks
    def test_every_formatter(self):
        cases = [
            ("mailbox status", ["messages unseen vsize uidnext", "INBOX"]),
            ("fetch", ["uid hdr.subject size.virtual", "mailbox", "INBOX", "all"]),
            ("fetch", ["uid text", "mailbox", "INBOX", "uid", "1"]),
        ]
        for verb, argv in cases:
            for fmt in ("table", "flow", "tab", "json", "pager"):
                if verb == "fetch" and "text" in argv[0] and fmt in ("table", "tab", "flow"):
                    continue  # doveadm refuses multi-line values in tables
                out, _, _ = yield self.ours.run(verb, *argv, fmt=fmt)
                their_out, _ = self.doveadm_raw("-f", fmt, *verb.split(), *argv)
                self.assertEqual(out, their_out, (verb, argv, fmt))

    def test_table_widths_shrink_to_the_terminal(self):
        headers = [{"key": "a", "title": "a", "flags": []},
                   {"key": "b", "title": "b", "flags": []}]
        rows = [["x" * 50, "y" * 50]]
        out, err = io.StringIO(), io.StringIO()
        formatters.print_table(headers, rows, out, err, columns=80)
        # the last column is cut to fit 80 columns, values are never truncated
        self.assertEqual(formatters.table_widths(headers, rows, 80), [50, 29])
        self.assertEqual(out.getvalue().split("\n")[1], "x" * 50 + " " + "y" * 50)
