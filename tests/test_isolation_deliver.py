"""One user's failure stays with that user: deliveries, homes, LMTP, codecs.

Through the real master, over loopback, as an attacker or an unlucky
user would: a delivery that cannot be saved is a 4xx for that recipient
only, and the mail process it ran in keeps serving everyone else (bob's
IDLE, in the same process, sees his own next mail); user names never steer
a path; lmtp holds no more than one read while a delivery runs and
answers 451 4.3.0 while authd is away; mailbox names and SEARCH charsets
of any script work after the mail process dropped its privileges.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.harness import IN_CI, LineClient, Master, User, ensure_system_user, privileged, proc_ids

IS_ROOT = os.geteuid() == 0

MESSAGE = (b"From: Sender <sender@example.org>\r\nTo: someone@example.org\r\n"
           b"Subject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\nHello\r\n")


class LMTPClient:
    """A raw LMTP client: every reply line is the test's to check."""

    def __init__(self, port: int, timeout: float = 30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith(b"220 ")

    def reply(self) -> bytes:
        """One final reply line (multi-line replies: their last line)."""
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("lmtp closed the connection")
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def transaction(self, recipients: list[bytes], body: bytes) -> tuple[list, list]:
        """RCPT replies and, for the accepted ones, DATA replies."""
        assert self.command(b"MAIL FROM:<sender@example.org>").startswith(b"250")
        rcpt = [self.command(b"RCPT TO:<" + r + b">") for r in recipients]
        accepted = sum(1 for r in rcpt if r.startswith(b"250"))
        if not accepted:
            self.command(b"RSET")
            return rcpt, []
        assert self.command(b"DATA").startswith(b"354")
        self.sock.sendall(body + b".\r\n")
        return rcpt, [self.reply() for _ in range(accepted)]

    def close(self) -> None:
        self.sock.close()


def lmtp_session(master: Master, recipients: list[bytes], subject: str) -> tuple[list, list]:
    client = LMTPClient(master.ports["lmtp"])
    try:
        assert client.command(b"LHLO test").startswith(b"250")
        return client.transaction(recipients, MESSAGE.replace(b"{subject}", subject.encode()))
    finally:
        client.close()


def exists(client: LineClient) -> bytes:
    """The next ``* N EXISTS`` line (``* N RECENT`` may come between)."""
    while True:
        line = client.line()
        if line.endswith(b" EXISTS"):
            return line


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class DeliverTestCase(SynchronousTestCase):
    """A master whose users share one mail uid (pdvmail when root)."""

    users = [User("alice", "secret"), User("bob", "hunter2")]
    extra = ""

    def setUp(self) -> None:
        kwargs = privileged()
        if IS_ROOT:
            self.vmail = ensure_system_user("pdvmail")
        self.master = Master(users=list(self.users), extra_config=self.extra, **kwargs)
        self.addCleanup(self.master.cleanup)
        self.configure(self.master)
        self.master.start()

    def configure(self, master: Master) -> None:
        """Change the config once the master's directory is known."""

    def login(self, user: str, password: str) -> tuple[LineClient, int]:
        """A logged-in raw IMAP client and the pid of its mail process."""
        client = LineClient(self.master.ports["imap"], timeout=30)
        self.assertTrue(client.line().startswith(b"* OK"))
        self.assertTrue(client.tagged(b"LOGIN %s %s" % (user.encode(), password.encode()))[-1]
                        .split()[1] == b"OK")
        pattern = rf"Login: user=<{re.escape(user)}>.*?mpid=(\d+)"
        self.master.wait_for(lambda: re.findall(pattern, self.master.log()), 10, "login line")
        return client, int(re.findall(pattern, self.master.log())[-1])

    def maildir(self, user: str) -> str:
        return os.path.join(self.master.dir, "home", user, "Maildir")


class ErrorIsolationTests(DeliverTestCase):
    users = [User("alice", "secret"), User("bob", "hunter2"),
             User("carol", "pw", extra="userdb_mail=mdbox:~/mail"), User("dave", "pw")]

    def test_failed_deliveries_are_their_recipients_alone(self) -> None:
        rcpt, data = lmtp_session(self.master, [b"alice@example.org"], "first")
        self.assertEqual([d[:3] for d in data], [b"250"])
        bob, mpid = self.login("bob", "hunter2")
        if IS_ROOT:
            self.assertEqual(proc_ids(mpid), self.vmail)  # dropped, shared with alice
        self.assertEqual(bob.tagged(b"SELECT INBOX")[-1].split()[1], b"OK")
        bob.send(b"i1 IDLE\r\n")
        self.assertTrue(bob.line().startswith(b"+"))
        # alice's Maildir becomes unwritable for the (unprivileged) mail process.
        for sub in ("tmp", "new", "cur"):
            os.chmod(os.path.join(self.maildir("alice"), sub), 0o500)

        rcpt, data = lmtp_session(
            self.master, [b"alice@example.org", b"carol@example.org", b"bob@example.org"],
            "mixed")
        self.assertEqual([r[:3] for r in rcpt], [b"250"] * 3)
        self.assertRegex(data[0], rb"^451 4\.2\.0 <alice@example\.org> ")
        self.assertRegex(data[1], rb"^451 4\.3\.0 <carol@example\.org> ")
        self.assertRegex(data[2], rb"^250 2\.0\.0 <bob@example\.org> ")
        self.assertEqual(exists(bob), b"* 1 EXISTS")
        rcpt, data = lmtp_session(self.master, [b"bob@example.org"], "next")
        self.assertEqual(data[0][:3], b"250")
        self.assertEqual(exists(bob), b"* 2 EXISTS")
        bob.send(b"DONE\r\n")
        self.assertEqual(bob.until_tagged(b"i1")[-1].split()[1], b"OK")
        self.assertEqual(bob.tagged(b"NOOP")[-1].split()[1], b"OK")
        self.assertIn(mpid, self.master.children("pydovecot/mail"))

        log = self.master.log()
        alice = [ln for ln in log.splitlines() if "lmtp(alice)" in ln and "save failed" in ln]
        self.assertEqual(len(alice), 1, alice)
        self.assertIn(f"lmtp(alice)<{mpid}>", alice[0])  # the same mail process as bob's
        self.assertIn("Permission denied", alice[0])
        self.assertIn("msgid=<mixed@example.org>", alice[0])
        carol = [ln for ln in log.splitlines() if "lmtp(carol)" in ln and "Error" in ln]
        self.assertEqual(len(carol), 1, carol)
        self.assertIn("mdbox", carol[0])
        self.assertNotIn("Traceback", log)
        self.assertNotIn("master went away", log)
        bob.close()


    def test_a_full_disk_is_452_for_that_recipient(self) -> None:
        if not IS_ROOT:
            raise SkipTest("needs root to mount a tiny tmpfs")
        home = os.path.join(self.master.dir, "home", "dave")
        os.makedirs(home)
        uid, gid = self.vmail
        os.chown(os.path.dirname(home), uid, gid)  # as the master would have made it
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=256k,uid={uid},gid={gid},mode=0700",
                        "tmpfs", home], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", home], check=False)
        big = MESSAGE.replace(b"{subject}", b"big") + (b"y" * 998 + b"\r\n") * 600
        client = LMTPClient(self.master.ports["lmtp"])
        client.command(b"LHLO test")
        rcpt, data = client.transaction([b"dave@example.org", b"bob@example.org"], big)
        client.close()
        self.assertRegex(data[0], rb"^452 4\.2\.2 <dave@example\.org> Not enough disk space")
        self.assertRegex(data[1], rb"^250 2\.0\.0 <bob@example\.org> ")
        lines = [ln for ln in self.master.log().splitlines()
                 if "lmtp(dave)" in ln and "save failed" in ln]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("No space left on device", lines[0])


class PathTests(DeliverTestCase):
    """User names never make anyone create a directory outside the root."""

    users = [User("alice", "secret"), User("a/b", "pw"), User("..", "pw")]

    def setUp(self) -> None:
        static = "allow_all_users=yes"
        if IS_ROOT:
            static = "uid=pdvmail gid=pdvmail " + static
        # auth_username_chars lets '/' and '%' through authd, so the path
        # checks themselves are what is tested.
        self.extra = ("auth_username_chars = abcdefghijklmnopqrstuvwxyz0123456789./%@\n"
                      f"userdb {{\n  driver = static\n  args = {static}\n}}\n")
        super().setUp()

    def tree(self) -> set[str]:
        found = set()
        for root, dirs, files in os.walk(self.master.dir):
            for name in dirs + files:
                found.add(os.path.join(root, name))
        return found

    def test_lmtp_to_hostile_names_creates_nothing_outside_the_root(self) -> None:
        home_root = os.path.join(self.master.dir, "home")
        outside = os.path.join(os.path.dirname(self.master.dir), "etc")
        self.assertFalse(os.path.exists(outside))
        before = {p for p in self.tree() if not p.startswith(home_root)}
        hostile = [b"../../etc/x@dom", b"a/b@dom", b"..@dom", b"%2e%2e@dom", b"x\x00y@dom",
                   b"x\ry@dom", b"x\x01/../y@dom"]
        client = LMTPClient(self.master.ports["lmtp"])
        self.assertTrue(client.command(b"LHLO test").startswith(b"250"))
        for name in hostile:
            rcpt, data = client.transaction([name], MESSAGE.replace(b"{subject}", b"evil"))
            for line in rcpt + data:
                self.assertRegex(line, rb"^(250|[45]\d\d [45]\.\d+\.\d+) ", name)
        self.assertEqual(client.command(b"QUIT")[:3], b"221")
        client.close()

        self.assertFalse(os.path.exists(outside))
        after = {p for p in self.tree() if not p.startswith(home_root)}
        self.assertEqual(after - before, set())
        # Only %2e%2e (literally) got a home, and under the root.
        self.assertEqual(sorted(os.listdir(home_root)), ["%2e%2e"])
        log = self.master.log()
        self.assertIn("not allowed in a path", log)
        self.assertNotIn("Traceback", log)
        # lmtp and the mail process are still there for alice.
        rcpt, data = lmtp_session(self.master, [b"alice@example.org"], "fine")
        self.assertEqual(data[0][:3], b"250")

    def test_login_with_a_hostile_name_is_refused_with_no(self) -> None:
        for user in ("a/b", ".."):
            client = LineClient(self.master.ports["imap"], timeout=30)
            client.line()
            reply = client.tagged(b'LOGIN "%s" pw' % user.encode())[-1]
            self.assertEqual(reply.split()[1], b"NO", reply)
            client.close()
        home_root = os.path.join(self.master.dir, "home")
        self.assertFalse(os.path.exists(home_root) and os.listdir(home_root))
        refused = [ln for ln in self.master.log().splitlines()
                   if "master: Error" in ln and "not allowed in a path" in ln]
        self.assertEqual(len(refused), 2, refused)  # once per login, with the reason


class UserdbHomeTests(PathTests):
    """The same names with a home the (static) userdb expands itself."""

    def configure(self, master: Master) -> None:
        master.extra_config = master.extra_config.replace(
            "allow_all_users=yes", f"home={master.dir}/home/%d/%n allow_all_users=yes")
        master.write_config()

    def test_lmtp_to_hostile_names_creates_nothing_outside_the_root(self) -> None:
        home_root = os.path.join(self.master.dir, "home")
        before = {p for p in self.tree() if not p.startswith(home_root)}
        client = LMTPClient(self.master.ports["lmtp"])
        client.command(b"LHLO test")
        for name in (b"../../../etc/x@dom", b"x@..", b"../x@.."):
            rcpt, data = client.transaction([name], MESSAGE.replace(b"{subject}", b"evil"))
            self.assertEqual(rcpt[0][:3], b"250")
            self.assertRegex(data[0], rb"^451 4\.3\.0 ", name)
        client.close()
        self.assertEqual({p for p in self.tree() if not p.startswith(home_root)} - before,
                         set())
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.master.dir), "etc")))
        self.assertIn("is not an absolute, normalised path", self.master.log())


class LMTPBoundsTests(DeliverTestCase):
    def lmtp_pid(self) -> int:
        pids = self.master.children("pydovecot/lmtp")
        self.assertEqual(len(pids), 1)
        return pids[0]

    def test_pipelined_megabytes_during_deliveries_do_not_grow_lmtp(self) -> None:
        lmtp_session(self.master, [b"alice@example.org"], "warm-up")
        pid = self.lmtp_pid()
        peak_before = status_kib(pid, "VmHWM")
        client = LMTPClient(self.master.ports["lmtp"])
        self.assertTrue(client.command(b"LHLO test").startswith(b"250"))
        count = 40
        head = b"MAIL FROM:<sender@example.org>\r\n" + b"RCPT TO:<alice@example.org>\r\n" * count
        body = MESSAGE.replace(b"{subject}", b"flood") + b"x" * 100_000 + b"\r\n"
        flood = b"X" * (24 * 1024 * 1024)
        sender = threading.Thread(target=client.sock.sendall,
                                  args=(head + b"DATA\r\n" + body + b".\r\n" + flood + b"\r\n",))
        sender.start()
        replies = [client.reply() for _ in range(count + 2 + count)]
        sender.join(60)
        self.assertFalse(sender.is_alive())
        self.assertEqual(replies[-1][:3], b"250", replies[-3:])
        self.assertEqual(client.reply()[:3], b"500")  # the flood, one over-long line
        self.assertEqual(client.command(b"QUIT")[:3], b"221")
        client.close()
        growth = status_kib(pid, "VmHWM") - peak_before
        self.assertLess(growth, 6 * 1024, f"lmtp peak RSS grew {growth} KiB")

    def test_rcpt_while_authd_is_down_is_451_and_lmtp_reconnects(self) -> None:
        lmtp_pid = self.lmtp_pid()
        authd = self.master.children("pydovecot/auth")
        self.assertEqual(len(authd), 1)
        os.kill(authd[0], signal.SIGSTOP)
        try:
            client = LMTPClient(self.master.ports["lmtp"])
            client.command(b"LHLO test")
            client.command(b"MAIL FROM:<sender@example.org>")
            started = time.monotonic()
            reply = client.command(b"RCPT TO:<alice@example.org>")
            took = time.monotonic() - started
            self.assertRegex(reply, rb"^451 4\.3\.0 <alice@example\.org> ")
            self.assertLess(took, 20)
            client.close()
        finally:
            os.kill(authd[0], signal.SIGKILL)
            os.kill(authd[0], signal.SIGCONT)
        self.master.wait_for(
            lambda: [p for p in self.master.children("pydovecot/auth") if p not in authd],
            20, "a new authd")
        deadline = time.monotonic() + 20
        while True:
            rcpt, data = lmtp_session(self.master, [b"alice@example.org"], "back")
            if data and data[0][:3] == b"250":
                break
            self.assertLess(time.monotonic(), deadline, rcpt)
            time.sleep(0.2)
        self.assertEqual(self.lmtp_pid(), lmtp_pid)  # reconnected, not restarted


class CodecTests(DeliverTestCase):
    """After the privilege drop (the interpreter under a 0700 /root in CI)."""

    def setUp(self) -> None:
        if not IS_ROOT:
            if IN_CI:
                self.fail("CI must run as root to drop privileges")
            raise SkipTest("needs root to drop privileges")
        super().setUp()

    def deliver_in(self, charset: str, text: str) -> None:
        body = (f"From: x@example.org\r\nSubject: {charset}\r\nMIME-Version: 1.0\r\n"
                f"Content-Type: text/plain; charset={charset}\r\n\r\n").encode()
        body += text.encode(charset) + b"\r\n"
        client = LMTPClient(self.master.ports["lmtp"])
        client.command(b"LHLO test")
        _rcpt, data = client.transaction([b"alice@example.org"], body)
        client.close()
        self.assertEqual(data[0][:3], b"250")

    def search(self, client: LineClient, charset: str, text: str) -> list[bytes]:
        raw = text.encode(charset)
        tag = client.next_tag()
        client.send(tag + b" SEARCH CHARSET %s BODY {%d}\r\n" % (charset.encode(), len(raw)))
        self.assertTrue(client.line().startswith(b"+"))
        client.send(raw + b"\r\n")
        return client.until_tagged(tag)

    def test_names_and_searches_in_any_script_after_the_drop(self) -> None:
        samples = {"ISO-2022-JP": "日本語のテキスト", "KOI8-R": "Привет мир",
                   "SHIFT_JIS": "カタカナ", "ISO-8859-7": "Καλημέρα",
                   "BIG5-HKSCS": "香港", "CP866": "Здравствуй"}
        for charset, text in samples.items():
            self.deliver_in(charset, text)
        client, mpid = self.login("alice", "secret")
        self.assertNotEqual(proc_ids(mpid)[0], 0)
        self.assertEqual(os.stat("/root").st_mode & 0o077, 0)  # imports would fail now

        self.assertEqual(client.tagged(b'CREATE "Entw&APw-rfe"')[-1].split()[1], b"OK")
        listed = client.tagged(b'LIST "" "*"')
        self.assertIn(b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe', listed)
        self.assertEqual(client.tagged(b'SELECT "Entw&APw-rfe"')[-1].split()[1], b"OK")
        self.assertEqual(client.tagged(b"ENABLE UTF8=ACCEPT")[-1].split()[1], b"OK")
        name = "Ящик/日本".encode()
        self.assertEqual(client.tagged(b'CREATE "' + name + b'"')[-1].split()[1], b"OK")
        listed = b"\n".join(client.tagged(b'LIST "" "*"'))
        self.assertIn(name, listed)
        self.assertIn("Entwürfe".encode(), listed)
        self.assertEqual(client.tagged(b'SELECT "' + name + b'"')[-1].split()[1], b"OK")

        client.tagged(b"UNSELECT")
        client2, _ = self.login("alice", "secret")
        self.assertEqual(client2.tagged(b"SELECT INBOX")[-1].split()[1], b"OK")
        for n, (charset, text) in enumerate(samples.items(), 1):
            lines = self.search(client2, charset, text)
            self.assertEqual(lines[-1].split()[1], b"OK", (charset, lines))
            self.assertIn(b"* SEARCH %d" % n, lines, charset)
        self.assertNotIn("LookupError", self.master.log())
        self.assertNotIn("ImportError", self.master.log())
        client.close()
        client2.close()

    def test_undecodable_folder_names_on_disk_never_break_list(self) -> None:
        client, mpid = self.login("alice", "secret")
        self.assertEqual(client.tagged(b"CREATE Fine")[-1].split()[1], b"OK")
        maildir = self.maildir("alice").encode()
        for raw in (b".Caf\xc3\xa9", b".&Jjo", b".\xff\xfe", b".A&AOk-.\x80"):
            path = os.path.join(maildir, raw)
            for sub in (b"cur", b"new", b"tmp"):
                os.makedirs(os.path.join(path, sub))
        subprocess.run(["chown", "-R", "{}:{}".format(*self.vmail), maildir], check=True)
        for command in (b'LIST "" "*"', b'LIST "" "%"', b'LSUB "" "*"',
                        b'LIST "" "*" RETURN (CHILDREN STATUS (MESSAGES UNSEEN))'):
            lines = client.tagged(command)
            self.assertEqual(lines[-1].split()[1], b"OK", (command, lines))
            if command.startswith(b"LIST"):
                self.assertIn(b"Fine", b"\n".join(lines))
        self.assertEqual(client.tagged(b"SELECT Fine")[-1].split()[1], b"OK")
        self.assertIn(mpid, self.master.children("pydovecot/mail"))
        self.assertNotIn("Traceback", self.master.log())
        client.close()
