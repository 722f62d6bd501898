"""offlineimap3 against the real master: two-way sync, then a no-op run.

Like tests.test_mbsync, with Debian's ``offlineimap`` (offlineimap3): a
folder tree of generated messages on the server, local-only messages and a
local-only folder, a first run both ways, a second run that must do
nothing, changes on both sides (flags, a local delete, a new server
message), and a last run that must do nothing again.  offlineimap's basic
UI log (every copy, flag change and deletion is a line) and exit code are
checked; the server is checked independently with imaplib.  Trusts only
the clients' views, never the server's files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench.generate import MailGenerator, Message
from tests.test_mbsync import (
    FOLDERS,
    digest,
    find_local,
    imap_login,
    maildir_snapshot,
    populate,
    server_snapshot,
    set_local_flags,
    set_server_flags,
    start_master,
    write_local,
)

OFFLINEIMAP = shutil.which("offlineimap")
# Lines offlineimap's basic UI prints for each change it makes.
ACTION = re.compile(r"^\s*(Copy message|Adding flags?|Deleting flags?|Deleting \d+ messages?|"
                    r"Creating folder|Creating new Local Status)", re.M)


class OfflineIMAPTests(SynchronousTestCase):
    """Two-way sync with offlineimap; see the module docstring."""

    maxDiff = None

    def setUp(self) -> None:
        if OFFLINEIMAP is None:
            raise SkipTest("offlineimap not installed (Debian package offlineimap3)")
        self.master = start_master(self)
        self.tmp = tempfile.mkdtemp(prefix="offlineimap-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.local = os.path.join(self.tmp, "Mail")
        self.inbox = os.path.join(self.local, "INBOX")
        os.makedirs(self.local)
        self.rc = os.path.join(self.tmp, "offlineimaprc")
        with open(self.rc, "w") as f:
            f.write(f"""\
[general]
accounts = pydovecot
metadata = {self.tmp}/metadata
maxsyncaccounts = 1
ui = basic

[Account pydovecot]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {self.local}
sep = /

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {self.master.ports['imap']}
ssl = no
starttls = no
remoteuser = alice
remotepass = secret
maxconnections = 1
holdconnectionopen = no
timeout = 60
""")

    def offlineimap(self, timeout: float = 180) -> tuple[list[str], str]:
        """One ``offlineimap -o`` run; (action lines, whole output)."""
        proc = subprocess.run([OFFLINEIMAP, "-c", self.rc, "-o", "-u", "basic"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              cwd=self.tmp)
        text = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        self.assertEqual(proc.returncode, 0, f"offlineimap failed:\n{text}\n{self.master.output()}")
        self.assertNotIn("ERROR", text, text)
        self.assertNotIn("Traceback", text, text)
        return [m.group(0).strip() for m in re.finditer(r"^.*$", text, re.M)
                if ACTION.match(m.group(0))], text

    def seed_local(self) -> dict[str, dict[str, Message]]:
        """Local-only messages: 4 in INBOX, 3 in a local-only top-level folder
        (offlineimap 8 cannot push a nested local-only folder whose parent
        is no Maildir: it creates the parent remotely, then fails on it)."""
        gen = MailGenerator(123, attachment_scale=0.05)
        local: dict[str, dict[str, Message]] = {"INBOX": {}, "Notes": {}}
        for n in range(4):
            msg = gen.message()
            msg.flags = {"\\Seen", "\\Flagged"} if n % 2 else {"\\Seen"}
            write_local(self.inbox, msg, "FS" if n % 2 else "S", n)
            local["INBOX"][msg.message_id] = msg
        for n in range(3):
            msg = gen.message(kind="forward")
            msg.flags = {"\\Answered", "\\Seen"}
            write_local(os.path.join(self.local, "Notes"), msg, "RS", 10 + n)
            local["Notes"][msg.message_id] = msg
        return local

    def test_two_way_sync_then_noop(self) -> None:
        expected = populate(self.master, seed=11)
        local = self.seed_local()
        for folder, msgs in local.items():
            for mid, msg in msgs.items():
                expected.setdefault(folder, {})[mid] = (digest(msg.data), frozenset(msg.flags))
        total = sum(FOLDERS.values())
        pushed = sum(len(m) for m in local.values())

        # Run 1: pull everything, push the local-only messages and folder.
        actions, text = self.offlineimap()
        copies = [a for a in actions if a.startswith("Copy message")]
        self.assertEqual(len([a for a in copies if "remote:" in a.split("->")[0]]), total, text)
        self.assertEqual(len([a for a in copies if "local:" in a.split("->")[0]]), pushed, text)
        server, _ = server_snapshot(self.master)
        self.assertEqual(set(server) - {"Lists"}, set(expected))
        for folder, msgs in expected.items():
            self.assertEqual(server[folder], msgs, folder)
        near, _ = maildir_snapshot(self.local, self.inbox)
        for folder, msgs in expected.items():
            self.assertEqual(near[folder], msgs, folder)

        # Run 2: nothing to do.
        actions, text = self.offlineimap()
        self.assertEqual(actions, [], text)
        self.assertEqual(server_snapshot(self.master)[0], server)
        self.assertEqual(maildir_snapshot(self.local, self.inbox)[0], near)

        # Changes on both sides.
        mids = sorted(expected["Archive/2024"])
        path = find_local(os.path.join(self.local, "Archive", "2024"), mids[0])
        set_local_flags(path, "FS")
        expected["Archive/2024"][mids[0]] = (expected["Archive/2024"][mids[0]][0],
                                             frozenset({"\\Flagged", "\\Seen"}))
        os.unlink(find_local(os.path.join(self.local, "Archive", "2024"), mids[1]))
        del expected["Archive/2024"][mids[1]]
        inbox_mid = sorted(expected["INBOX"])[0]
        set_server_flags(self.master, "INBOX", inbox_mid, "FLAGS", "\\Answered \\Seen")
        expected["INBOX"][inbox_mid] = (expected["INBOX"][inbox_mid][0],
                                        frozenset({"\\Answered", "\\Seen"}))
        new = MailGenerator(6).message(kind="attachment")
        client = imap_login(self.master)
        client.append("Lists/python", "(\\Flagged)", None, new.data)
        client.logout()
        expected["Lists/python"][new.message_id] = (digest(new.data), frozenset({"\\Flagged"}))
        time.sleep(1.1)

        # Run 3: exactly those changes.
        actions, text = self.offlineimap()
        self.assertEqual(len([a for a in actions if a.startswith("Copy message")]), 1, text)
        self.assertTrue(any(re.fullmatch(r"Deleting 1 messages \(\d+\) in IMAP\[Archive/2024\]", a)
                            for a in actions), text)
        self.assertIn("Adding flag F to 1 messages on Archive/2024", actions, text)
        self.assertIn("Adding flag R to 1 messages on INBOX", actions, text)
        server, uids = server_snapshot(self.master)
        for folder, msgs in expected.items():
            self.assertEqual(server[folder], msgs, folder)
        near, names = maildir_snapshot(self.local, self.inbox)
        for folder, msgs in expected.items():
            self.assertEqual(near[folder], msgs, folder)

        # Run 4: nothing to do, nothing changes on either side.
        actions, text = self.offlineimap()
        self.assertEqual(actions, [], text)
        self.assertEqual(server_snapshot(self.master), (server, uids))
        self.assertEqual(maildir_snapshot(self.local, self.inbox), (near, names))
