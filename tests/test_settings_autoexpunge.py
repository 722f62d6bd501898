"""``mailbox { autoexpunge, autoexpunge_max_mails }`` (issue 11): the walk
Dovecot's mail-autoexpunge.c makes (unit), and a login through the real
master that expunges old Trash mail and Junk's excess in the background;
also ``mail_log_prefix`` on the session's log lines."""

from __future__ import annotations

import datetime
import os
import time

from twisted.trial.unittest import SynchronousTestCase

from pydovecot.mailproc.autoexpunge import pick, rules
from pydovecot.storage.interfaces import MessageInfo
from tests.harness import LineClient, Master, User, privileged

NOW = datetime.datetime(2026, 1, 31, tzinfo=datetime.UTC)


def info(uid: int, days_ago: float, saved: bool = True) -> MessageInfo:
    when = NOW - datetime.timedelta(days=days_ago)
    return MessageInfo(uid=uid, flags=set(), size=1, internaldate=when,
                       savedate=when if saved else None)


class PickTests(SynchronousTestCase):
    def test_age_walk_stops_at_the_first_young_message(self) -> None:
        msgs = [info(1, 40), info(2, 35), info(3, 1), info(4, 50)]
        self.assertEqual(pick(msgs, 30 * 86400, 0, NOW), [1, 2])

    def test_max_mails_takes_the_oldest_uids_then_old_ones(self) -> None:
        msgs = [info(i, 1) for i in range(1, 6)]
        self.assertEqual(pick(msgs, 0, 2, NOW), [1, 2, 3])
        msgs = [info(1, 1), info(2, 40), info(3, 40), info(4, 1)]
        self.assertEqual(pick(msgs, 30 * 86400, 3, NOW), [1, 2, 3])

    def test_internaldate_without_savedate(self) -> None:
        self.assertEqual(pick([info(1, 40, saved=False)], 30 * 86400, 0, NOW), [1])

    def test_rules_from_namespaces(self) -> None:
        class Cfg:
            namespaces = {"inbox": {"prefix": "", "mailboxes": {
                "Trash": {"name": "Trash", "autoexpunge": "30d"},
                "Junk": {"name": "Junk", "autoexpunge_max_mails": "2"},
                "Sent": {"name": "Sent", "special_use": "\\Sent"}}}}

        self.assertEqual(sorted(rules(Cfg())), [("Junk", 0.0, 2), ("Trash", 2592000.0, 0)])


def _mail(home: str, folder: str, n: int, age_days: float) -> str:
    d = os.path.join(home, "Maildir", folder)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    stamp = int(time.time() - age_days * 86400)
    name = f"{stamp}.M{n}P1.test:2,S"
    path = os.path.join(d, "cur", name)
    with open(path, "wb") as f:
        f.write(b"From: a@example.org\r\nSubject: %d\r\n\r\nbody\r\n" % n)
    os.utime(path, (stamp, stamp))
    return name


class MasterAutoexpungeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.master = Master(users=[User("alice", "secret")], **privileged(), extra_config="""
mail_log_prefix = "%s(%u)[%r]: "
namespace inbox {
  inbox = yes
  mailbox Trash {
    autoexpunge = 30d
  }
  mailbox Junk {
    autoexpunge_max_mails = 2
  }
}
""")
        self.addCleanup(self.master.cleanup)
        home = os.path.join(self.master.dir, "home", "alice")
        os.makedirs(os.path.join(home, "Maildir", "cur"), exist_ok=True)
        for sub in ("new", "tmp"):
            os.makedirs(os.path.join(home, "Maildir", sub), exist_ok=True)
        self.old = [_mail(home, ".Trash", i, 45 - i) for i in range(2)]
        self.young = _mail(home, ".Trash", 5, 1)
        self.junk = [_mail(home, ".Junk", 10 + i, 5 - i) for i in range(5)]
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("pdvmail")
            for root, dirs, files in os.walk(home):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, entry.pw_uid, entry.pw_gid)
            os.chmod(home, 0o700)
        self.home = home
        self.master.start()

    def count(self, client: LineClient, box: bytes) -> int:
        lines = client.tagged(b"STATUS " + box + b" (MESSAGES)")
        status = next(x for x in lines if x.startswith(b"* STATUS"))
        return int(status.rsplit(b" ", 1)[1].rstrip(b")"))

    def test_login_expunges_old_trash_and_junk_excess(self) -> None:
        c = LineClient(self.master.ports["imap"], timeout=20, greeting=True)
        self.addCleanup(c.close)
        self.assertTrue(c.tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))
        deadline = time.monotonic() + 20
        while (self.count(c, b"Trash"), self.count(c, b"Junk")) != (1, 2):
            self.assertLess(time.monotonic(), deadline, "autoexpunge did not run")
            time.sleep(0.2)
        left = os.listdir(os.path.join(self.home, "Maildir", ".Trash", "cur"))
        self.assertEqual([n.split(":")[0] for n in left], [self.young.split(":")[0]])
        junk = sorted(n.split(":")[0] for n in
                      os.listdir(os.path.join(self.home, "Maildir", ".Junk", "cur")))
        self.assertEqual(junk, sorted(n.split(":")[0] for n in self.junk[3:]))
        self.assertEqual(self.count(c, b"INBOX"), 0)  # no rule: untouched
        c.tagged(b"LOGOUT")
        # mail_log_prefix "%s(%u)[%r]: " names the session's lines.
        self.master.wait_for(lambda: "imap(alice)[127.0.0.1]: Info: Disconnected" in
                             self.master.log(), 20, "the prefixed logout line")
