"""authd's identities through the real master (issue 7, "Identities and paths").

- authd runs as default_internal_user; a privileged auth-worker (root)
  exists only when PAM/passwd is configured, and logins work either way;
- a backend module that is not installed is one Fatal line and the master
  stops (no restart loop);
- a static userdb knows only the users the passdb knows (LMTP RCPT to an
  unknown user: 550 5.1.1) unless allow_all_users=yes;
- client values in authd's log lines can't forge lines;
- authd exits when the master is SIGKILLed.

The privilege checks need root (CI runs as root); without it they skip.
"""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import smtplib
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.harness import (
    IN_CI,
    ROOT,
    LineClient,
    Master,
    User,
    privileged,
    proc_ids,
    title,
)

IS_ROOT = os.geteuid() == 0


def _need_root() -> None:
    if not IS_ROOT:
        if IN_CI:
            raise AssertionError("CI=true: these tests must run as root")
        raise SkipTest("needs root (privilege drops)")


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _exact(master: Master, name: str) -> list[int]:
    return [p for p in master.descendants() if title(p) == name]


def _login(master: Master, user: bytes, password: bytes) -> bytes:
    client = LineClient(master.ports["imap"], timeout=30, greeting=True)
    try:
        return client.tagged(b"LOGIN " + user + b" " + password)[-1]
    finally:
        client.close()


def _replace_userdb(master: Master, block: str) -> None:
    """Swap the harness's passwd-file userdb for ``block``."""
    with open(master.config_path) as f:
        text = f.read()
    old = f"userdb {{\n  driver = passwd-file\n  args = {master.dir}/users.passwd\n}}\n"
    assert old in text, text
    with open(master.config_path, "w") as f:
        f.write(text.replace(old, block))


class UnprivilegedAuthdTests(SynchronousTestCase):
    def test_passwd_file_authd_runs_as_internal_user_without_worker(self) -> None:
        _need_root()
        master = Master(users=[User("alice", "secret")], **privileged())
        self.addCleanup(master.cleanup)
        master.start()
        authd = _exact(master, "pydovecot/auth")
        self.assertEqual(len(authd), 1, master.output())
        entry = pwd.getpwnam("pydovecot")
        self.assertEqual(proc_ids(authd[0]), (entry.pw_uid, entry.pw_gid))
        self.assertEqual(_exact(master, "pydovecot/auth-worker"), [])
        # It accepts on the sockets the master made, after its drop.
        self.assertIn(b"OK", _login(master, b"alice", b"secret"))
        self.assertIn(b"NO", _login(master, b"alice", b"wrong"))

        # A user name with CR LF can't start a log line of its own.
        forged = b"x\r\nauth: Info: FORGED"
        client = LineClient(master.ports["imap"], timeout=30, greeting=True)
        client.send(b"a LOGIN {%d+}\r\n%s pw\r\n" % (len(forged), forged))
        client.until_tagged(b"a")
        client.close()
        master.wait_for(lambda: "FORGED" in master.log(), 10, "the refused login in the log")
        for line in master.log().splitlines():
            self.assertNotRegex(line, r"^(\w+ \d+ [\d:]+ )?auth: Info: FORGED")

        # No orphans: the master SIGKILLed, authd notices its channel close.
        os.kill(master.process.pid, signal.SIGKILL)
        master.process.wait()
        deadline = time.monotonic() + 15
        while _alive(authd[0]):
            if time.monotonic() > deadline:
                os.kill(authd[0], signal.SIGKILL)
                self.fail("authd outlived its master")
            time.sleep(0.05)

    def test_pam_login_through_the_root_worker(self) -> None:
        _need_root()
        suffix = secrets.token_hex(4)
        user, password = f"pdpam{suffix}", "Pw-" + secrets.token_hex(8)
        service = f"pydovecot-test-{suffix}"
        subprocess.run(["useradd", "-m", user], check=True, capture_output=True)
        self.addCleanup(subprocess.run, ["userdel", "-r", user], capture_output=True)
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True,
                       capture_output=True)
        path = f"/etc/pam.d/{service}"
        with open(path, "w") as f:
            f.write("auth required pam_unix.so\naccount required pam_unix.so\n")
        self.addCleanup(os.unlink, path)
        # passwd-file first (unknown: continue), then PAM; userdb passwd-file,
        # then passwd (the system user's uid and home).
        extra = (f"passdb {{\n  driver = pam\n  args = {service}\n}}\n"
                 "userdb {\n  driver = passwd\n}\n")
        master = Master(users=[User("alice", "secret")], extra_config=extra, **privileged())
        self.addCleanup(master.cleanup)
        master.start()
        authd = _exact(master, "pydovecot/auth")
        self.assertEqual(len(authd), 1, master.output())
        internal = pwd.getpwnam("pydovecot")
        self.assertEqual(proc_ids(authd[0]), (internal.pw_uid, internal.pw_gid))
        master.wait_for(lambda: _exact(master, "pydovecot/auth-worker"), 20, "the auth-worker")
        worker = _exact(master, "pydovecot/auth-worker")
        self.assertEqual(len(worker), 1)
        self.assertEqual(proc_ids(worker[0]), (0, 0))
        self.assertEqual(_parent(worker[0]), authd[0])
        self.assertIn(b"OK", _login(master, user.encode(), password.encode()))
        self.assertIn(b"NO", _login(master, user.encode(), b"wrong"))
        self.assertIn(b"OK", _login(master, b"alice", b"secret"))
        # The mail process got the system user's identity from passwd.
        system = pwd.getpwnam(user)
        master.wait_for(
            lambda: any(proc_ids(p) == (system.pw_uid, system.pw_gid)
                        for p in master.children("pydovecot/mail")), 20, "the user's mail process")
        # authd's end takes the worker with it (it can't signal root).
        os.kill(authd[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while _alive(worker[0]):
            if time.monotonic() > deadline:
                self.fail("the auth-worker outlived authd")
            time.sleep(0.05)


class MissingModuleTests(SynchronousTestCase):
    def test_missing_psycopg_is_one_fatal_line_and_no_restart_loop(self) -> None:
        master = Master(users=[User("alice", "secret")], **privileged())
        self.addCleanup(master.cleanup)
        fake = os.path.join(master.dir, "fakemods")
        os.makedirs(fake)
        os.chmod(master.dir, 0o755)
        with open(os.path.join(fake, "psycopg.py"), "w") as f:
            f.write("raise ImportError(\"No module named 'psycopg'\", name='psycopg')\n")
        os.chmod(fake, 0o755)
        sql = os.path.join(master.dir, "sql.conf.ext")
        with open(sql, "w") as f:
            f.write("driver = pgsql\nconnect = host=127.0.0.1 dbname=none user=none\n"
                    "password_query = SELECT password FROM users WHERE userid = '%u'\n")
        with open(master.config_path, "a") as f:
            f.write(f"passdb {{\n  driver = sql\n  args = {sql}\n}}\n")
        master.stdout = open(os.path.join(master.dir, "twistd.out"), "ab")  # noqa: SIM115
        argv, fds = master.command()  # with the listeners the harness holds
        master.process = subprocess.Popen(
            argv, cwd=master.dir, stdout=master.stdout, stderr=subprocess.STDOUT, pass_fds=fds,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([fake, ROOT])))
        try:
            master.process.wait(30)
        except subprocess.TimeoutExpired:
            self.fail("the master kept running (restart loop?)\n" + master.output())
        log = master.log()
        fatal = [line for line in log.splitlines() if "Fatal" in line and "psycopg" in line]
        self.assertEqual(len(fatal), 1, log)
        self.assertIn("pip install 'pydovecot[backends]'", fatal[0])
        self.assertIn("auth: Fatal:", fatal[0])
        self.assertNotIn("restarting in", log)
        self.assertEqual(log.count("auth: Fatal:"), 1, log)  # authd started once
        self.assertNotIn("Traceback", log)


class StaticUserdbTests(SynchronousTestCase):
    def start(self, static_args: str) -> Master:
        kwargs = privileged()
        master = Master(users=[User("alice", "secret")], **kwargs)
        self.addCleanup(master.cleanup)
        ids = "uid=pdvmail gid=pdvmail " if IS_ROOT else ""
        _replace_userdb(master, "userdb {\n  driver = static\n"
                        f"  args = {ids}home={master.dir}/home/%n {static_args}\n}}\n")
        # As an admin prepares /var/vmail: the root of the homes belongs to
        # the vmail user, whose mail process creates each home in it.
        root = os.path.join(master.dir, "home")
        os.makedirs(root, exist_ok=True)
        if IS_ROOT:
            import pwd
            entry = pwd.getpwnam("pdvmail")
            os.chown(root, entry.pw_uid, entry.pw_gid)
        master.start()
        return master

    def rcpt(self, master: Master, user: str) -> tuple[int, bytes]:
        with smtplib.LMTP("127.0.0.1", master.ports["lmtp"], timeout=30) as lmtp:
            lmtp.ehlo("test")
            lmtp.mail("sender@example.org")
            return lmtp.rcpt(user)

    def test_static_userdb_knows_only_passdb_users(self) -> None:
        master = self.start("")
        code, text = self.rcpt(master, "nosuchuser")
        self.assertEqual((code, text[:5]), (550, b"5.1.1"), master.log())
        self.assertEqual(self.rcpt(master, "alice")[0], 250, master.log())
        self.assertIn(b"OK", _login(master, b"alice", b"secret"))

    def test_allow_all_users(self) -> None:
        master = self.start("allow_all_users=yes")
        self.assertEqual(self.rcpt(master, "nosuchuser")[0], 250, master.log())

