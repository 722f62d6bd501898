"""Two-way compatibility with Debian's Dovecot on the same Maildir.

Dovecot (``/usr/sbin/dovecot``) runs on a private config: imap on a free
127.0.0.1 port, a passwd-file user, ``mail_location = maildir:~/Maildir``
and a ``/`` separator like ours.  (a) Dovecot writes mail, flags,
keywords, folders and subscriptions and expunges; pydovecot's storage and
a real pydovecot master (over imaplib) must see the same UIDVALIDITY,
UIDs, flags, keywords, folders and subscriptions.  (b) pydovecot writes
the same kind of tree over IMAP; Dovecot must show the same.  Then each
side adds to what the other wrote and UIDs keep counting.

Needs root (Dovecot's privilege separation) and the dovecot-imapd
package: skipped otherwise, and failed when CI=true.
"""

from __future__ import annotations

import imaplib
import os
import re
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pydovecot.storage.maildir import MaildirStorage
from tests.harness import IN_CI, Master, User, ensure_system_user, free_port
from tests.storage_now import now

DOVECOT = "/usr/sbin/dovecot"
MSG = "From: a@example.org\r\nSubject: {s}\r\n\r\nbody {s}\r\n"


def _fetch(c: imaplib.IMAP4, box: str) -> tuple[int, list[tuple[int, set[str], int]]]:
    """(UIDVALIDITY, [(uid, flags, size)]) of a mailbox."""
    typ, _ = c.select(f'"{box}"')
    assert typ == "OK", box
    validity = int(c.response("UIDVALIDITY")[1][0])
    typ, data = c.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE)")
    rows = []
    for item in data:
        if not item:
            continue
        line = item if isinstance(item, bytes) else item[0]
        uid = int(re.search(rb"UID (\d+)", line).group(1))
        size = int(re.search(rb"RFC822.SIZE (\d+)", line).group(1))
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", line).group(1).decode().split())
        flags.discard("\\Recent")
        rows.append((uid, flags, size))
    c.close()
    return validity, sorted(rows)


def _names(data: list[bytes]) -> set[str]:
    out = set()
    for line in data:
        if line:
            out.add(line.decode().rsplit(" ", 1)[-1].strip('"'))
    return out


def _write_tree(c: imaplib.IMAP4, prefix: str) -> None:
    """What both servers are asked to write."""
    for i, flags in enumerate(["(\\Seen)", "(\\Seen \\Flagged $Work)", "(Custom)", "()",
                               "(\\Answered \\Draft $Work Custom)"]):
        typ, _ = c.append("INBOX", flags, None, MSG.format(s=f"{prefix}{i}").encode())
        assert typ == "OK"
    for box in ("Sub/Child", "Other"):
        assert c.create(box)[0] == "OK"
    c.subscribe("Sub/Child")
    c.subscribe("INBOX")
    c.append("Sub/Child", "(\\Seen)", None, MSG.format(s=f"{prefix}c").encode())
    c.select("INBOX")
    c.uid("STORE", "4", "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.logout()


class DovecotCompatTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = None
        if not os.path.exists(DOVECOT):
            reason = "Debian's dovecot-imapd is not installed"
        elif os.geteuid() != 0:
            reason = "running Dovecot needs root"
        if reason:
            if IN_CI:
                self.fail(reason)
            raise SkipTest(reason)
        ensure_system_user("pydovecot-null")
        ensure_system_user("pydovecot")
        self.uid, self.gid = ensure_system_user("pdvmail")
        self.master = Master(users=[User("alice", "secret"), User("bob", "secret")],
                             login_user="pydovecot-null", internal_user="pydovecot",
                             mail_uid="pdvmail")
        self.addCleanup(self.master.cleanup)
        self.home = os.path.join(self.master.dir, "home")
        for user in ("alice", "bob"):
            os.makedirs(os.path.join(self.home, user), exist_ok=True)
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", self.home], check=True)
        self.dport = free_port()
        self.dconf = os.path.join(self.master.dir, "dovecot.conf")
        d = self.master.dir
        with open(os.path.join(d, "dovecot.passwd"), "w") as f:
            for user in ("alice", "bob"):
                f.write(f"{user}:{{PLAIN}}secret:{self.uid}:{self.gid}::{self.home}/{user}::\n")
        with open(self.dconf, "w") as f:
            f.write(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {d}/dovecot-run
state_dir = {d}/dovecot-state
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/dovecot.passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/dovecot.passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.dport}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
        self.dovecot_running = False
        self.addCleanup(self.stop_dovecot)

    # -- servers ---------------------------------------------------------------

    def start_dovecot(self) -> None:
        # the daemon keeps its stdio: a pipe would never see EOF
        with open(os.path.join(self.master.dir, "dovecot.out"), "ab") as out:
            rc = subprocess.run([DOVECOT, "-c", self.dconf], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL).returncode
        self.assertEqual(rc, 0, self._dovecot_log())
        self.dovecot_running = True
        deadline = time.monotonic() + 20
        while True:
            try:
                c = imaplib.IMAP4("127.0.0.1", self.dport, timeout=5)
                c.logout()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.fail("dovecot did not start:\n" + self._dovecot_log())
                time.sleep(0.1)

    def stop_dovecot(self) -> None:
        if self.dovecot_running:
            subprocess.run([DOVECOT, "-c", self.dconf, "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            self.dovecot_running = False
            pidfile = os.path.join(self.master.dir, "dovecot-run", "master.pid")
            deadline = time.monotonic() + 10
            while os.path.exists(pidfile) and time.monotonic() < deadline:
                time.sleep(0.05)

    def _dovecot_log(self) -> str:
        path = os.path.join(self.master.dir, "dovecot.log")
        return open(path, errors="replace").read()[-5000:] if os.path.exists(path) else ""

    def dovecot(self, user: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.dport, timeout=20)
        c.login(user, "secret")
        return c

    def ours(self, user: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.master.ports["imap"], timeout=20)
        c.login(user, "secret")
        return c

    def snapshot(self, c: imaplib.IMAP4) -> dict:
        """Everything both servers must agree on, for one user."""
        result = {
            "list": _names(c.list()[1]),
            "lsub": _names(c.lsub()[1]),
            "INBOX": _fetch(c, "INBOX"),
            "Sub/Child": _fetch(c, "Sub/Child"),
            "Other": _fetch(c, "Other"),
        }
        c.logout()
        return result

    # -- tests -------------------------------------------------------------------

    def test_dovecot_writes_pydovecot_reads(self) -> None:
        self.start_dovecot()
        _write_tree(self.dovecot("alice"), "d")
        theirs = self.snapshot(self.dovecot("alice"))
        self.stop_dovecot()
        validity, rows = theirs["INBOX"]
        self.assertEqual([u for u, _f, _s in rows], [1, 2, 3, 5])
        self.assertEqual(rows[1][1], {"\\Seen", "\\Flagged", "$Work"})
        self.assertTrue({"Sub", "Sub/Child", "Other", "INBOX"} <= theirs["list"])
        self.assertEqual(theirs["lsub"], {"INBOX", "Sub/Child"})

        # pydovecot's storage, directly (as the mail user)
        maildir = os.path.join(self.home, "alice", "Maildir")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                os.setgid(self.gid)
                os.setuid(self.uid)
                st = now(MaildirStorage("alice", maildir))
                box = st.open("INBOX")
                got = (box.uidvalidity, [(m.uid, m.flags, m.size) for m in box.messages])
                names = {m.name for m in st.list_mailboxes()}
                kws = set(box.keywords)
                ok = (got == (validity, rows) and {"$Work", "Custom"} <= kws
                      and {"INBOX", "Sub", "Sub/Child", "Other"} <= names
                      and set(st.subscriptions()) == {"INBOX", "Sub/Child"}
                      and box.uidnext == 6)
                code = 0 if ok else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, "storage disagrees with Dovecot")

        # and the real master over IMAP
        self.master.start()
        self.assertEqual(self.snapshot(self.ours("alice")), theirs)
        # pydovecot adds; the UIDs continue where Dovecot's ended
        c = self.ours("alice")
        c.append("INBOX", "(\\Seen $Work)", None, MSG.format(s="p1").encode())
        c.select("INBOX")
        c.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        c.logout()
        ours = self.snapshot(self.ours("alice"))
        self.assertEqual(ours["INBOX"][1][-1][:2], (6, {"\\Seen", "$Work"}))
        self.master.stop()
        # Dovecot reads that back
        self.start_dovecot()
        self.assertEqual(self.snapshot(self.dovecot("alice")), ours)

    def test_pydovecot_writes_dovecot_reads(self) -> None:
        self.master.start()
        _write_tree(self.ours("bob"), "p")
        ours = self.snapshot(self.ours("bob"))
        self.master.stop()
        validity, rows = ours["INBOX"]
        self.assertEqual([u for u, _f, _s in rows], [1, 2, 3, 5])
        self.assertEqual(rows[4 - 1 - 1][1], {"Custom"})
        self.assertEqual(rows[-1][1], {"\\Answered", "\\Draft", "$Work", "Custom"})

        self.start_dovecot()
        self.assertEqual(self.snapshot(self.dovecot("bob")), ours)
        # Dovecot adds, changes flags and expunges; we see it after
        c = self.dovecot("bob")
        c.append("INBOX", "(Custom \\Flagged)", None, MSG.format(s="d1").encode())
        c.select("INBOX")
        c.uid("STORE", "2", "-FLAGS", "($Work)")
        c.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
        c.expunge()
        c.logout()
        theirs = self.snapshot(self.dovecot("bob"))
        self.assertEqual(theirs["INBOX"][0], validity)
        self.assertEqual([u for u, _f, _s in theirs["INBOX"][1]], [1, 2, 5, 6])
        self.stop_dovecot()
        self.master.start()
        self.assertEqual(self.snapshot(self.ours("bob")), theirs)
