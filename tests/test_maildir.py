"""Tests for the Maildir++ storage (pydovecot.storage.maildir)."""

from __future__ import annotations

import datetime
import io
import multiprocessing
import os
import shutil
import subprocess
import tempfile

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.storage import open_storage, parse_location
from pydovecot.storage.interfaces import (
    IMailbox,
    IMailStorage,
    MailboxExists,
    MailboxNameError,
    MailboxNotFound,
    StorageError,
)
from pydovecot.storage.maildir import MaildirStorage
from pydovecot.storage.uidlist import read_uidlist
from tests.storage_now import now

MSG = b"Subject: hi\r\n\r\nhello\r\n.dot\r\n"


def _append_many(root: str, n: int) -> None:
    st = now(MaildirStorage("u", root))
    for _ in range(n):
        st.append("INBOX", io.BytesIO(MSG))


class StorageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.home, True)
        self.root = os.path.join(self.home, "Maildir")
        self.st = now(open_storage("u", "maildir:~/Maildir", self.home))

    def test_location(self) -> None:
        self.assertEqual(parse_location("maildir:~/Maildir:UTF-8", "/h"), ("/h/Maildir", {"UTF-8": ""}))
        for bad in ("mdbox:~/mdbox", "maildir:rel", "maildir:~/M:LAYOUT=fs", "maildir:~/M:FOO=1",
                    "maildir:~/M:INBOX=/var/mail/u"):
            self.assertRaises(StorageError, open_storage, "u", bad, self.home)
        self.assertTrue(verifyObject(IMailStorage, self.st))

    def test_names(self) -> None:
        for bad in ("", "/a", "a/", "a//b", "a.b", "~x", "a\nb", "a\x00", "../x", "a/../b", "x" * 300):
            self.assertRaises(MailboxNameError, self.st.create, bad)
        self.st.create("\u00e9t\u00e9/x")
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".&AOk-t&AOk-.x")))
        self.assertTrue(os.path.exists(os.path.join(self.root, ".&AOk-t&AOk-.x", "maildirfolder")))
        self.assertRaises(MailboxExists, self.st.create, "inbox")
        self.assertEqual(self.st.status("inbox").messages, 0)

    def test_append_and_uidlist(self) -> None:
        date = datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
        v, uid = self.st.append("INBOX", io.BytesIO(MSG), internaldate=date)
        v2, uid2 = self.st.append("INBOX", io.BytesIO(b"a\nb\n"), flags=["\\Seen", "\\flagged", "Work"])
        self.assertEqual((uid, uid2, v), (1, 2, v2))
        new = os.listdir(os.path.join(self.root, "new"))
        cur = os.listdir(os.path.join(self.root, "cur"))
        self.assertEqual(len(new), 1)
        self.assertTrue(new[0].endswith(f",S={len(MSG) - 4},W={len(MSG)}"))
        self.assertTrue(cur[0].endswith(",S=4,W=6:2,FSa"))
        with open(os.path.join(self.root, "dovecot-keywords")) as f:
            self.assertEqual(f.read(), "0 Work\n")
        ul = read_uidlist(os.path.join(self.root, "dovecot-uidlist"))
        self.assertEqual(ul.uidvalidity, v)
        self.assertEqual(ul.nextuid, 3)
        self.assertEqual([r.basename for r in ul.records], [new[0], cur[0].split(":")[0]])
        box = self.st.open("INBOX")
        self.assertTrue(verifyObject(IMailbox, box))
        self.assertEqual([m.uid for m in box.messages], [1, 2])
        self.assertEqual(box.messages[0].size, len(MSG))
        self.assertEqual(box.messages[0].internaldate, date)
        self.assertEqual(box.messages[1].flags, {"\\Seen", "\\Flagged", "Work"})
        self.assertEqual(box.recent, {1, 2})
        self.assertEqual(box.keywords, ["Work"])
        self.assertEqual(box.uidnext, 3)
        with box.message_file(1) as f:
            self.assertEqual(f.read(), MSG.replace(b"\r\n", b"\n"))
        # the first view took \Recent and moved new/ to cur/
        self.assertEqual(os.listdir(os.path.join(self.root, "new")), [])
        other = self.st.open("INBOX")
        self.assertEqual(other.recent, set())

    def test_views_and_sync(self) -> None:
        for _ in range(3):
            self.st.append("INBOX", io.BytesIO(MSG))
        a = self.st.open("INBOX")
        b = self.st.open("INBOX")
        calls = []
        self.st.add_listener("INBOX", lambda: calls.append(1))
        self.assertEqual(a.store([1, 2], ["\\Deleted"], "+"), [1, 2])
        self.assertEqual(a.store([1], ["\\Deleted"], "+"), [])
        self.assertEqual(b.messages[0].flags, set())
        r = b.sync()
        self.assertEqual(r.flags_changed, [1, 2])
        self.assertEqual(b.messages[0].flags, {"\\Deleted"})
        self.assertEqual(a.sync().flags_changed, [])
        self.assertEqual(a.expunge([2]), [2])
        self.assertEqual([m.uid for m in a.messages], [1, 3])
        self.st.append("INBOX", io.BytesIO(MSG))
        r = b.sync()
        self.assertEqual((r.expunged, r.added), ([2], [4]))
        self.assertEqual(b.recent, {4})
        r = a.sync()
        self.assertEqual((r.expunged, r.added), ([], [4]))
        self.assertEqual(a.recent, {1, 2, 3} - {2} | set())
        self.assertTrue(calls)
        ro = self.st.open("INBOX", readonly=True)
        self.assertRaises(StorageError, ro.store, [1], ["\\Seen"], "+")
        self.assertRaises(StorageError, ro.expunge)
        a.close()
        self.assertRaises(StorageError, a.sync)

    def test_external_changes(self) -> None:
        self.st.append("INBOX", io.BytesIO(MSG))
        self.st.append("INBOX", io.BytesIO(MSG))
        box = self.st.open("INBOX")
        cur = os.path.join(self.root, "cur")
        names = sorted(os.listdir(cur))
        # another process sets flags (rename) and deletes a file
        os.rename(os.path.join(cur, names[0]), os.path.join(cur, names[0].split(":")[0] + ":2,S"))
        os.unlink(os.path.join(cur, names[1]))
        # and a shell drops a file in new/ without W=
        with open(os.path.join(self.root, "new", "123.foreign"), "wb") as f:
            f.write(b"a\nb\n")
        os.utime(cur, ns=(0, 1))  # force visible mtime change on coarse clocks
        r = box.sync()
        self.assertEqual((r.expunged, r.added, r.flags_changed), ([2], [3], [1]))
        self.assertEqual(box.messages[1].size, 6)
        with box.message_file(1) as f:
            self.assertTrue(f.read().startswith(b"Subject"))
        # store finds a file renamed under it
        name = [n for n in os.listdir(cur) if n.startswith(names[0].split(":")[0])][0]
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,F"))
        self.assertEqual(box.store([1], ["\\Answered"], "+"), [1])
        self.assertEqual(box.messages[0].flags, {"\\Flagged", "\\Answered"})

    def test_rebuild(self) -> None:
        self.st.append("INBOX", io.BytesIO(MSG))
        self.st.append("INBOX", io.BytesIO(MSG))
        v = self.st.status("INBOX").uidvalidity
        os.unlink(os.path.join(self.root, "dovecot-uidlist"))
        # the index still knows the UIDs: the uidlist is rewritten from it
        s = now(MaildirStorage("u", self.root)).status("INBOX")
        self.assertEqual((s.messages, s.uidvalidity), (2, v))
        self.assertEqual(read_uidlist(os.path.join(self.root, "dovecot-uidlist")).uidvalidity, v)
        # without uidlist and index the mailbox is new to every client
        os.unlink(os.path.join(self.root, "dovecot-uidlist"))
        os.unlink(os.path.join(self.root, "dovecot.index.pydovecot"))
        st2 = now(MaildirStorage("u", self.root))
        s = st2.status("INBOX")
        self.assertEqual(s.messages, 2)
        self.assertNotEqual(s.uidvalidity, v)
        # a uidlist entry without a file is dropped, a file without entry is numbered
        with open(os.path.join(self.root, "new", "999.x,S=1,W=1"), "wb") as f:
            f.write(b"x")
        st3 = now(MaildirStorage("u", self.root))
        box = st3.open("INBOX")
        self.assertEqual([m.uid for m in box.messages], [1, 2, 3])

    def test_concurrent_appends(self) -> None:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_append_many, args=(self.root, 25)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        ul = read_uidlist(os.path.join(self.root, "dovecot-uidlist"))
        self.assertEqual([r.uid for r in ul.records], list(range(1, 101)))
        self.assertEqual(len({r.basename for r in ul.records}), 100)
        self.assertEqual(len(self.st.open("INBOX").messages), 100)

    def test_tree(self) -> None:
        self.st.create("A/B/C")
        self.st.create("Z")
        self.st.subscribe("A/B")
        names = {m.name: m.attributes for m in self.st.list_mailboxes()}
        self.assertEqual(list(names)[0], "INBOX")
        self.assertEqual(names["A"], {"\\HasChildren"})
        self.assertEqual(names["A/B/C"], {"\\HasNoChildren"})
        self.st.append("A", io.BytesIO(MSG))
        self.st.delete("A")  # has inferiors: becomes \Noselect
        names = {m.name: m.attributes for m in self.st.list_mailboxes()}
        self.assertEqual(names["A"], {"\\HasChildren", "\\Noselect"})
        self.assertRaises(MailboxNotFound, self.st.open, "A")
        self.assertRaises(MailboxNotFound, self.st.delete, "Nope")
        self.assertRaises(StorageError, self.st.delete, "INBOX")
        self.st.rename("A", "Q/R")
        names = {m.name for m in self.st.list_mailboxes()}
        self.assertEqual(names, {"INBOX", "Q", "Q/R", "Q/R/B", "Q/R/B/C", "Z"})
        self.assertRaises(MailboxExists, self.st.rename, "Z", "Q")
        self.assertRaises(MailboxNameError, self.st.rename, "Q", "Q/x")
        self.assertEqual(self.st.subscriptions(), ["A/B"])
        with open(os.path.join(self.root, "subscriptions"), "rb") as f:
            self.assertEqual(f.read(), b"V\t2\n\nA\tB\n")

    def test_rename_inbox_and_copy(self) -> None:
        self.st.append("INBOX", io.BytesIO(MSG), flags=["\\Seen", "kw"])
        self.st.append("INBOX", io.BytesIO(MSG))
        self.st.rename("INBOX", "Old")
        self.assertEqual(self.st.status("INBOX").messages, 0)
        self.assertEqual(self.st.status("INBOX").uidnext, 3)
        old = self.st.open("Old")
        self.assertEqual([m.uid for m in old.messages], [1, 2])
        self.assertEqual(old.messages[0].flags, {"\\Seen", "kw"})
        self.st.create("Dest")
        self.st.append("Dest", io.BytesIO(MSG), flags=["other"])
        v, pairs = self.st.copy(old, [1, 2, 9], "Dest")
        self.assertEqual(pairs, [(1, 2), (2, 3)])
        dest = self.st.open("Dest")
        self.assertEqual(dest.messages[1].flags, {"\\Seen", "kw"})
        self.assertEqual(v, dest.uidvalidity)
        self.assertEqual(dest.messages[1].internaldate, old.messages[0].internaldate)
        st = self.st.status("Dest")
        self.assertEqual((st.messages, st.unseen), (3, 2))


class DovecotRoundTripTests(unittest.TestCase):
    """Dovecot reads what we write (needs Debian's dovecot-imapd)."""

    IMAP = "/usr/lib/dovecot/imap"

    def setUp(self) -> None:
        if not os.path.exists(self.IMAP) or os.getuid() != 0:
            msg = "dovecot-imapd is not installed (or not root to run it as nobody)"
            if os.environ.get("CI") == "true":
                self.fail(msg)
            raise unittest.SkipTest(msg)

    def test_dovecot_reads_ours(self) -> None:
        base = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, base, True)
        os.chmod(base, 0o755)
        home = os.path.join(base, "home")
        st = now(open_storage("u", "maildir:~/Maildir", home))
        st.append("INBOX", io.BytesIO(MSG), flags=["\\Seen", "Work"])
        st.append("INBOX", io.BytesIO(MSG))
        st.create("Sub/Box")
        st.subscribe("Sub/Box")
        box = st.open("INBOX")
        v = box.uidvalidity
        conf = os.path.join(base, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"base_dir = {base}/run\nlog_path = {base}/log\nssl = no\n"
                    "mail_location = maildir:~/Maildir\n")
        subprocess.run(["chown", "-R", "65534:65534", home], check=True)
        cmds = b"a SELECT INBOX\r\nb UID FETCH 1:* (FLAGS RFC822.SIZE)\r\nc LSUB \"\" *\r\nd LOGOUT\r\n"
        out = subprocess.run(
            [self.IMAP, "-c", conf, "-o", "mail_uid=65534", "-o", "mail_gid=65534"],
            input=cmds, capture_output=True, timeout=20,
            env={"USER": "u", "HOME": home, "MAIL": "maildir:~/Maildir"},
        ).stdout.decode()
        self.assertIn(f"[UIDVALIDITY {v}]", out)
        self.assertIn("* 1 FETCH (UID 1 FLAGS (\\Seen Work) RFC822.SIZE 28)", out)
        self.assertIn("* 2 FETCH (UID 2 FLAGS () RFC822.SIZE 28)", out)
        self.assertIn("Sub.Box", out)
