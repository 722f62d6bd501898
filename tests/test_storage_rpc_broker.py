"""The master brokers storage channels across uids (issue 9, "Storage
RPC"), through the real master with real privileges.

alice (uid A), bob (uid B) and carol (uid C) are system users.  alice's
and carol's userdb ``mail`` is ``rpc:bob``: their sessions work on bob's
storage, which only bob's mail process (uid B) touches; the master gives
their mail processes a channel to it (OpenStorage → ServeStorage).  bob's
userdb field ``shared_with=alice`` (the stand-in access hook, rights
``lr``) lets alice read, not carol, and not alice's flag changes.  /proc
shows every mail process with one uid (real, effective, saved), alice's
and bob's in different processes, and bob's files stay bob's.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import LineClient, Master, User, ensure_system_user, privileged, title

MESSAGE = (b"From: dave@example.org\r\nTo: bob@example.org\r\nSubject: for bob\r\n\r\n"
           b"Only bob's process writes this file.\r\n")


def _uids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return [int(x) for x in line.split()[1:]]
    return []


class Broker(SynchronousTestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            if os.environ.get("CI"):
                self.fail("the broker test needs root (real uids)")
            self.skipTest("needs root")
        ids = {n: ensure_system_user(f"pdvrpc-{n}") for n in ("a", "b", "c")}
        self.ids = ids
        self.homes = tempfile.mkdtemp(prefix="pydovecot-rpc-homes-")
        os.chmod(self.homes, 0o755)
        self.addCleanup(shutil.rmtree, self.homes, True)
        for n, (uid, gid) in ids.items():
            os.mkdir(os.path.join(self.homes, n), 0o700)
            os.chown(os.path.join(self.homes, n), uid, gid)

        def home(n: str) -> str:
            return os.path.join(self.homes, n)

        users = [
            User("alice", "pa", uid=str(ids["a"][0]), gid=str(ids["a"][1]), home=home("a"),
                 extra="userdb_mail=rpc:bob"),
            User("bob", "pb", uid=str(ids["b"][0]), gid=str(ids["b"][1]), home=home("b"),
                 extra="userdb_shared_with=alice"),
            User("carol", "pc", uid=str(ids["c"][0]), gid=str(ids["c"][1]), home=home("c"),
                 extra="userdb_mail=rpc:bob"),
        ]
        kw = privileged()
        kw.pop("mail_uid", None)
        self.master = Master(users=users, **kw)
        self.addCleanup(self.master.cleanup)
        self.addCleanup(lambda: os.environ.get("SHOW_LOG") and print(self.master.log()))
        self.master.start()

    def login(self, user: str, password: str) -> LineClient:
        client = LineClient(self.master.ports["imap"], timeout=30)
        client.line()
        reply = client.tagged(b"LOGIN %s %s" % (user.encode(), password.encode()))[-1]
        self.assertIn(b" OK ", reply)
        self.addCleanup(client.close)
        return client

    def test_cross_uid_read_through_the_broker(self) -> None:
        with smtplib.LMTP("127.0.0.1", self.master.ports["lmtp"]) as lmtp:
            lmtp.sendmail("dave@example.org", ["bob"], MESSAGE)
        alice = self.login("alice", "pa")
        out = b"".join(alice.tagged(b"SELECT INBOX"))
        self.assertIn(b"* 1 EXISTS", out)
        self.assertIn(b"OK [READ-WRITE]", out)
        out = b"".join(alice.tagged(b"FETCH 1 (FLAGS BODY.PEEK[])"))
        self.assertIn(b"Only bob's process writes this file.", out)
        out = alice.tagged(b"STORE 1 +FLAGS (\\Flagged)")[-1]
        self.assertIn(b"NO [NOPERM]", out)
        out = alice.tagged(b"CREATE Mine")[-1]
        self.assertIn(b"NO [NOPERM]", out)
        out = b"".join(alice.tagged(b'LIST "" "*"'))
        self.assertIn(b"INBOX", out)
        # bob's own session sees what alice could not do, and alice sees
        # bob's new mail (the owner's process is the only writer)
        bob = self.login("bob", "pb")
        out = b"".join(bob.tagged(b"SELECT INBOX"))
        self.assertIn(b"* 1 EXISTS", out)
        self.assertIn(b"OK", bob.tagged(b"STORE 1 +FLAGS (\\Answered)")[-1])
        out = b"".join(alice.tagged(b"NOOP"))
        self.assertIn(b"* 1 FETCH (", out)
        self.assertIn(b"\\Answered))", out)
        # carol: same location, no grant
        carol = self.login("carol", "pc")
        out = carol.tagged(b"SELECT INBOX")[-1]
        self.assertIn(b"NO [NOPERM]", out)
        # the processes: one per uid, none ever changed uid
        mail = {pid: title(pid) for pid in self.master.children("pydovecot/mail")}
        by_user = {}
        for pid, name in mail.items():
            uids = _uids(pid)
            if "(idle)" in name:
                continue
            self.assertEqual(len(set(uids)), 1, (name, uids))
            by_user[name.split()[-1]] = (pid, uids[0])
        self.assertEqual(by_user["bob"][1], self.ids["b"][0])
        self.assertEqual(by_user["alice"][1], self.ids["a"][0])
        self.assertEqual(by_user["carol"][1], self.ids["c"][0])
        self.assertEqual(len({p for p, _ in by_user.values()}), 3)
        maildir = os.path.join(self.homes, "b", "Maildir")
        self.assertTrue(os.path.isdir(maildir))
        for root, _dirs, files in os.walk(maildir):
            for name in files:
                self.assertEqual(os.stat(os.path.join(root, name)).st_uid, self.ids["b"][0])
        self.assertEqual(os.listdir(home_a := os.path.join(self.homes, "a")), [], home_a)
        self.assertIn("storage-rpc: alice", self.master.log())
