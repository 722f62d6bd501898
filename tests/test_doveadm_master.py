"""pydoveadm through a real master (as root: privileges()).

The admin socket is 0600 and root's; a non-root caller cannot connect,
and one that could (the mode loosened by hand) is dropped at connect by
its SO_PEERCRED uid.  Every verb runs from the command line
(``python -m pydovecot.admin.cli``) against the master: process control,
sessions, auth, the error ring, and the mailbox verbs, which the user's
mail process runs (the mail files it writes belong to the mail user,
never to root).  Results over 64 KiB and message bodies travel as fds.
"""

from __future__ import annotations

import imaplib
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.harness import IN_CI, ROOT, Master, User, privileged

IS_ROOT = os.geteuid() == 0


class AdminCase(SynchronousTestCase):
    def setUp(self) -> None:
        if not IS_ROOT:
            if IN_CI:
                self.fail("the admin socket tests need root (CI runs as root)")
            raise SkipTest("needs root")
        self.master = Master(users=[User("alice", "secret"), User("bob", "secret")],
                             **privileged())
        self.addCleanup(self.master.cleanup)
        self.master.start()
        self.socket_path = os.path.join(self.master.dir, "run", "admin")

    def adm(self, *args: str, input: bytes | None = None, rc: int | None = 0
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "pydovecot.admin.cli", "-c", self.master.config_path, *args],
            capture_output=True, input=input, env=dict(os.environ, PYTHONPATH=ROOT),
            timeout=120, stdin=None if input is not None else subprocess.DEVNULL)
        if rc is not None:
            self.assertEqual(proc.returncode, rc,
                             f"{args}: {proc.stdout!r} {proc.stderr!r}\n{self.master.log()[-3000:]}")
        return proc

    def json(self, *args: str) -> list[dict]:
        out = self.adm("-f", "json", *args).stdout.decode()
        return json.loads(out) if out else []

    def login(self, user: str = "alice") -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.master.ports["imap"], timeout=20)
        client.login(user, "secret")
        self.addCleanup(_quietly, client.logout)
        return client


def _quietly(func) -> None:
    try:
        func()
    except Exception:
        pass


def _as_user(uid: int, gid: int, func) -> int:
    """Run ``func()`` (returning an exit code) in a child with uid/gid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            code = func()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


class SocketTests(AdminCase):
    def test_root_only(self) -> None:
        st = os.stat(self.socket_path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_uid, 0)
        user = pwd.getpwnam("pdvmail")
        path = self.socket_path

        def connect() -> int:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except PermissionError:
                return 13
            except OSError:
                return 2
            return 0

        self.assertEqual(_as_user(user.pw_uid, user.pw_gid, connect), 13)

        # Were the mode loosened, the master still drops a non-root peer.
        os.chmod(path, 0o666)
        self.addCleanup(os.chmod, path, 0o600)

        def refused() -> int:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            try:
                # an AMP box asking for `who`: no answer may come back
                s.sendall(b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x0cAdminCommand"
                          b"\x00\x04verb\x00\x03who\x00\x04args\x00\x02{}\x00\x00")
                data = s.recv(65536)
            except ConnectionError:
                return 0
            return 0 if data == b"" else 1

        self.assertEqual(_as_user(user.pw_uid, user.pw_gid, refused), 0)
        self.master.wait_for(lambda: "admin: refused a connection from uid" in self.master.log(),
                             10, "the refusal in the log")
        os.chmod(path, 0o600)
        # ... and the refusal is in the error ring `log errors` shows
        out = self.adm("log", "errors").stdout.decode()
        self.assertRegex(out, r"^\w{3} \d\d \d\d:\d\d:\d\d Warning: master: admin: refused a "
                              rf"connection from uid {user.pw_uid}\n")
        rows = self.json("log", "errors")
        self.assertEqual(set(rows[0]), {"timestamp", "type", "prefix", "text"})

    def test_usage_errors(self) -> None:
        self.assertIn(b"Unknown command", self.adm("frobnicate", rc=64).stderr)
        self.assertIn(b"Unknown formatter", self.adm("-f", "xml", "who", rc=64).stderr)
        self.assertIn(b"User doesn't exist",
                      self.adm("mailbox", "list", "-u", "nosuch", rc=67).stderr)
        self.adm("mailbox", "delete", "-u", "alice", "Nope", rc=68)
        proc = self.adm("-S", "/nonexistent/admin", "who", rc=75)
        self.assertIn(b"connect(/nonexistent/admin) failed", proc.stderr)


class MailboxTests(AdminCase):
    def test_mailbox_verbs(self) -> None:
        u = ("-u", "alice")
        self.adm("mailbox", "create", *u, "-s", "Work/2026", "Sent")
        self.assertEqual({r["mailbox"] for r in self.json("mailbox", "list", *u)},
                         {"INBOX", "Work", "Work/2026", "Sent"})
        self.assertEqual(self.json("mailbox", "list", *u, "-s"),
                         [{"mailbox": "Work/2026"}, {"mailbox": "Sent"}])
        self.adm("mailbox", "unsubscribe", *u, "Work/2026")
        self.adm("mailbox", "subscribe", *u, "INBOX")
        self.assertEqual(self.json("mailbox", "list", *u, "-s"),
                         [{"mailbox": "Sent"}, {"mailbox": "INBOX"}])
        for n in range(3):
            self.adm("save", *u, input=f"From: x@example.org\nSubject: note {n}\n\nbody {n}\n"
                     .encode())
        self.adm("save", *u, "-m", "Sent", input=b"Subject: sent\n\nsent body\n")
        status = {r["mailbox"]: r for r in self.json("mailbox", "status", *u,
                                                      "messages unseen vsize", "*")}
        self.assertEqual(status["INBOX"]["messages"], "3")
        self.assertEqual(status["Sent"]["messages"], "1")
        hits = self.json("search", *u, "mailbox", "INBOX", "subject", "note", "OR", "uid", "9")
        self.assertEqual([h["uid"] for h in hits], ["1", "2", "3"])
        self.adm("flags", "add", *u, "\\Seen $Important", "mailbox", "INBOX", "uid", "1:2")
        self.adm("flags", "remove", *u, "\\Seen", "mailbox", "INBOX", "uid", "2")
        flags = {r["uid"]: r["flags"] for r in self.json("fetch", *u, "uid flags",
                                                          "mailbox", "INBOX", "all")}
        self.assertIn("\\Seen", flags["1"])
        self.assertIn("$Important", flags["2"])
        self.assertNotIn("\\Seen", flags["2"])
        self.adm("copy", *u, "Work/2026", "mailbox", "INBOX", "uid", "1")
        self.adm("move", *u, "Work/2026", "mailbox", "INBOX", "uid", "2")
        self.adm("expunge", *u, "mailbox", "INBOX", "uid", "3")
        status = {r["mailbox"]: r for r in self.json("mailbox", "status", *u, "messages", "*")}
        self.assertEqual((status["INBOX"]["messages"], status["Work/2026"]["messages"]),
                         ("1", "2"))
        fetched = self.json("fetch", *u, "mailbox uid hdr.subject text", "mailbox", "Work*",
                            "all")
        self.assertEqual(sorted(r["hdr.subject"] for r in fetched), ["note 0", "note 1"])
        self.assertEqual({r["mailbox"] for r in fetched}, {"Work/2026"})
        self.assertIn("body 1", fetched[1]["text"])
        # the pager, fetch's own default
        out = self.adm("fetch", *u, "uid hdr.subject", "mailbox", "Work/2026", "all").stdout
        self.assertEqual(out, b"uid: 1\nhdr.subject: note 0\n\x0c\nuid: 2\nhdr.subject: note 1\n")
        self.adm("mailbox", "metadata", "set", *u, "Work/2026", "/private/comment", "hi there")
        self.assertEqual(self.json("mailbox", "metadata", "get", *u, "Work/2026",
                                   "/private/comment"), [{"value": "hi there"}])
        self.assertEqual(self.json("mailbox", "metadata", "list", *u, "-p", "Work/2026"),
                         [{"key": "/private/comment"}])
        self.adm("mailbox", "metadata", "unset", *u, "Work/2026", "/private/comment")
        self.assertEqual(self.json("mailbox", "metadata", "list", *u, "Work/2026"), [])
        self.adm("mailbox", "metadata", "set", *u, "-s", "/shared/comment", "server wide")
        self.assertEqual(self.json("mailbox", "metadata", "get", *u, "-s", "/shared/comment"),
                         [{"value": "server wide"}])
        self.adm("mailbox", "rename", *u, "Work/2026", "Archive")
        self.adm("force-resync", *u, "*")
        self.adm("index", *u, "*")
        self.adm("mailbox", "delete", *u, "-r", "Work")
        self.assertEqual({r["mailbox"] for r in self.json("mailbox", "list", *u)},
                         {"INBOX", "Sent", "Archive"})
        # mail files were written by alice's mail process, as the mail user
        maildir = os.path.join(self.master.dir, "home", "alice", "Maildir")
        mail_uid = pwd.getpwnam("pdvmail").pw_uid
        owners = {os.stat(os.path.join(d, f)).st_uid
                  for d, _, files in os.walk(maildir) for f in files}
        self.assertEqual(owners, {mail_uid})

    def test_big_results_and_bodies_travel_as_fds(self) -> None:
        body = b"".join(b"line %06d of a large message body\n" % i for i in range(20000))
        message = b"Subject: big\n\n" + body
        self.assertGreater(len(message), 65536 * 8)
        self.adm("save", "-u", "bob", input=message)
        fetched = self.json("fetch", "-u", "bob", "text size.physical", "mailbox", "INBOX",
                            "all")
        self.assertEqual(fetched[0]["text"].encode(), message)
        self.assertEqual(fetched[0]["size.physical"], str(len(message)))

    def test_several_users_get_a_username_column(self) -> None:
        users = os.path.join(self.master.dir, "users.txt")
        with open(users, "w") as f:
            f.write("alice\nbob\n")
        self.adm("mailbox", "create", "-u", "bob", "Bobs")
        rows = self.json("mailbox", "list", "-F", users)
        self.assertEqual(sorted((r["username"], r["mailbox"]) for r in rows),
                         [("alice", "INBOX"), ("bob", "Bobs"), ("bob", "INBOX")])
        out = self.adm("-f", "flow", "mailbox", "list", "-F", users).stdout.decode()
        self.assertIn("username=alice INBOX\n", out)
        # -A: every user authd's userdb iterate lists (passwd-file here)
        rows = self.json("mailbox", "list", "-A")
        self.assertEqual(sorted((r["username"], r["mailbox"]) for r in rows),
                         [("alice", "INBOX"), ("bob", "Bobs"), ("bob", "INBOX")])
        self.assertEqual(self.adm("user", "a*").stdout, b"alice\n")
        rows = self.json("mailbox", "list", "-u", "B*")
        self.assertEqual(sorted((r["username"], r["mailbox"]) for r in rows),
                         [("bob", "Bobs"), ("bob", "INBOX")])
        self.assertEqual(self.adm("user", "*").stdout, b"alice\nbob\n")


class SessionTests(AdminCase):
    def test_who_and_kick(self) -> None:
        client = self.login("alice")
        self.login("bob")
        rows = {r["username"]: r for r in self.json("who")}
        self.assertEqual(set(rows), {"alice", "bob"})
        self.assertEqual(rows["alice"]["connections"], "1")
        self.assertEqual(rows["alice"]["service"], "imap")
        self.assertEqual(rows["alice"]["ips"], "(127.0.0.1)")
        pid = int(rows["alice"]["pids"].strip("()"))
        self.assertIn(pid, self.master.children("pydovecot/mail"))
        table = self.adm("who", "alice").stdout.decode().splitlines()
        self.assertEqual(table[0].split(), ["username", "#", "proto", "(pids)", "(ips)"])
        self.assertEqual(table[1].split(), ["alice", "1", "imap", f"({pid})", "(127.0.0.1)"])
        one = self.json("who", "-1", "127.0.0.0/8")
        self.assertEqual({(r["username"], r["service"], r["ip"]) for r in one},
                         {("alice", "imap", "127.0.0.1"), ("bob", "imap", "127.0.0.1")})
        out = self.adm("kick", "alice").stdout
        self.assertEqual(out, b"kicked connections from the following users:\nalice \n")
        with self.assertRaises((imaplib.IMAP4.abort, OSError, EOFError)):
            for _ in range(20):
                client.noop()
                time.sleep(0.1)
        self.master.wait_for(lambda: [r["username"] for r in self.json("who")] == ["bob"], 10,
                             "alice's session to end")
        self.assertEqual(self.adm("kick", "nobody*", rc=68).stdout, b"no users kicked\n")

    def test_kick_pop3(self) -> None:
        import poplib

        pop = poplib.POP3("127.0.0.1", self.master.ports["pop3"], timeout=20)
        pop.user("bob")
        pop.pass_("secret")
        self.assertEqual([(r["username"], r["service"]) for r in self.json("who")],
                         [("bob", "pop3")])
        self.assertEqual(self.adm("kick", "bob").stdout,
                         b"kicked connections from the following users:\nbob \n")
        with self.assertRaises((poplib.error_proto, OSError, EOFError)):
            for _ in range(20):
                pop.noop()
                time.sleep(0.1)
        self.master.wait_for(lambda: self.json("who") == [], 10, "bob's session to end")
        pop.close()


class AuthTests(AdminCase):
    def test_auth_and_user(self) -> None:
        out = self.adm("auth", "test", "alice", "secret").stdout
        self.assertEqual(out, b"passdb: alice auth succeeded\nextra fields:\n  user=alice\n")
        out = self.adm("auth", "test", "alice", "wrong", rc=77).stdout
        self.assertTrue(out.startswith(b"passdb: alice auth failed\n"))
        self.assertRegex(self.adm("auth", "cache", "flush").stdout.decode(),
                         r"^\d+ cache entries flushed\n$")
        lines = self.adm("user", "alice").stdout.decode().splitlines()
        fields = dict(line.split("\t", 1) for line in lines[1:])
        self.assertEqual(lines[0], "field\tvalue")
        self.assertEqual(fields["home"], os.path.join(self.master.dir, "home", "alice"))
        self.assertEqual(fields["mail"], "maildir:~/Maildir")
        self.assertEqual(self.adm("user", "-f", "home", "alice").stdout.decode(),
                         fields["home"] + "\n")
        self.assertTrue(self.adm("user", "-u", "alice").stdout.startswith(b"userdb: alice\n"))
        self.assertIn(b"user nosuch doesn't exist", self.adm("user", "nosuch", rc=67).stdout)
        self.assertEqual(self.adm("auth", "lookup", "alice").stdout, b"passdb: alice\n")
        self.assertEqual(self.adm("auth", "lookup", "nosuch", rc=67).stdout,
                         b"passdb lookup: user nosuch doesn't exist\n")

    def test_pw(self) -> None:
        out = self.adm("pw", "-s", "SHA512-CRYPT", "-p", "pass").stdout
        self.assertTrue(out.startswith(b"{SHA512-CRYPT}$6$"))


class ControlTests(AdminCase):
    def test_reload_then_stop(self) -> None:
        self.adm("reload")
        self.master.wait_for(lambda: "SIGHUP received - reloading configuration"
                             in self.master.log(), 20, "the reload")
        self.login("alice")  # still serving
        self.adm("stop")
        self.assertEqual(self.master.process.wait(30), 0)
        self.assertFalse(os.path.exists(self.socket_path))


class IsolationTests(AdminCase):
    def test_a_long_verb_does_not_stall_other_sessions(self) -> None:
        """alice and bob share one mail process (one vmail uid): a fetch
        over thousands of alice's messages yields, so bob's NOOPs are
        answered meanwhile."""
        import threading

        maildir = os.path.join(self.master.dir, "home", "alice", "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
        for i in range(3000):
            with open(os.path.join(maildir, "cur", f"{1700000000 + i}.M{i}P1.host:2,S"),
                      "wb") as f:
                f.write(b"Subject: message %d\n\n" % i + b"some body text\n" * 40)
        subprocess.run(["chown", "-R", "pdvmail:pdvmail",
                        os.path.join(self.master.dir, "home")], check=True)
        self.adm("mailbox", "status", "-u", "alice", "messages", "INBOX")  # index it first
        bob = self.login("bob")
        done = threading.Event()
        latencies: list[float] = []

        def noops() -> None:
            while not done.is_set():
                start = time.monotonic()
                bob.noop()
                latencies.append(time.monotonic() - start)
                time.sleep(0.02)

        thread = threading.Thread(target=noops)
        thread.start()
        try:
            start = time.monotonic()
            rows = self.json("fetch", "-u", "alice", "uid text", "mailbox", "INBOX", "all")
            took = time.monotonic() - start
        finally:
            done.set()
            thread.join(30)
        self.assertEqual(len(rows), 3000)
        self.assertGreater(len(latencies), 3, f"fetch took {took:.2f}s")
        self.assertLess(max(latencies), 1.5, f"fetch took {took:.2f}s, NOOPs {latencies}")
