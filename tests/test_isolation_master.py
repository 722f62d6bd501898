"""The master under attack and accident (issue 7), through a real master.

- Listeners handed in (``--listen-fd``): no free-port race, reload keeps
  them, a reload whose new listener cannot bind is refused and logged.
- No orphans: SIGKILL the master and every child (authd included) exits;
  a new master on the same base_dir takes over and serves logins.
- Restart back-off resets once a child has run for a while.
- anvil: ``mail_max_userip_connections`` per (user, IP, protocol);
  ``process_limit`` of the login services; the mail pool's limits.
- Config errors: one ``Fatal: FILE:LINE: message`` line, exit non-zero,
  never a traceback; on SIGHUP an error line and the old config goes on.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import signal
import socket
import subprocess
import time

from twisted.python import log as twlog
from twisted.trial.unittest import SynchronousTestCase

from tests.harness import Master, User, listening_socket, privileged, title

IS_ROOT = os.geteuid() == 0


def alive(pid: int) -> bool:
    """Whether pid is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(predicate, timeout: float, what: str) -> float:
    """Poll predicate; the seconds it took (AssertionError after timeout)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class MasterCase(SynchronousTestCase):
    users = [User("alice", "secret"), User("bob", "secret")]
    extra = ""

    def make_master(self, extra: str | None = None, **kwargs) -> Master:
        master = Master(users=list(self.users), extra_config=self.extra if extra is None
                        else extra, **privileged(), **kwargs)
        self.addCleanup(master.cleanup)
        return master

    def imap_login(self, master: Master, user: str = "alice") -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", master.ports["imap"], timeout=20)
        client.login(user, "secret")
        return client


class ListenerTests(MasterCase):
    def test_master_serves_the_sockets_it_is_handed(self) -> None:
        master = self.make_master()
        argv, fds = master.command()
        self.assertTrue(any(a.startswith("--listen-fd=imap=") for a in argv))
        master.start()
        # The harness still holds the very socket the master listens on: the
        # master could not have bound that port itself.
        self.imap_login(master).logout()
        pid = master.children("pydovecot/imap-login")[0]
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        ours = f"socket:[{os.fstat(master.sockets['imap'].fileno()).st_ino}]"
        self.assertIn(ours, inodes)

    def test_reload_adds_a_handed_in_listener_and_refuses_one_it_cannot_bind(self) -> None:
        master = self.make_master()
        master.sockets["imap2"] = listening_socket()
        second = master.sockets["imap2"].getsockname()[1]
        master.start()
        session = self.imap_login(master)  # open across both reloads

        # A listener whose port another process holds: refused, logged, and
        # the old config goes on serving.
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        base = master.extra_config
        master.extra_config = base + (
            "service imap-login {\n  inet_listener imap3 {\n"
            f"    port = {blocker.getsockname()[1]}\n  }}\n}}\n")
        master.write_config()
        os.kill(master.process.pid, signal.SIGHUP)
        master.wait_for(lambda: "SIGHUP: config not reloaded" in master.log(), 15, "refusal")
        self.assertRegex(master.log(), r"master: Error: SIGHUP: config not reloaded: "
                                       r"cannot listen on 127\.0\.0\.1:\d+: Address already")
        self.assertNotIn("Traceback", master.log())
        self.imap_login(master).logout()

        master.extra_config = base + (
            "service imap-login {\n  inet_listener imap2 {\n"
            f"    port = {second}\n  }}\n}}\n")
        master.write_config()
        os.kill(master.process.pid, signal.SIGHUP)
        master.wait_for(lambda: "reloading configuration" in master.log(), 15, "reload")
        deadline = time.monotonic() + 20
        while True:
            try:
                client = imaplib.IMAP4("127.0.0.1", second, timeout=10)
                client.login("alice", "secret")
                break
            except (OSError, imaplib.IMAP4.error):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        client.logout()
        self.imap_login(master).logout()  # the first listener was kept
        self.assertEqual(session.noop()[0], "OK")
        session.logout()


class OrphanTests(MasterCase):
    def test_sigkilled_master_leaves_no_children_and_a_new_one_takes_over(self) -> None:
        master = self.make_master()
        master.start()
        session = self.imap_login(master)
        pop = poplib.POP3("127.0.0.1", master.ports["pop3"], timeout=20)
        pop.user("bob")
        pop.pass_("secret")
        master.wait_for(lambda: len(master.children("pydovecot/mail")) >= 2, 20, "spare")
        children = {pid: title(pid) for pid in master.descendants()}
        roles = {t.split()[0] for t in children.values()}
        for role in ("pydovecot/auth", "pydovecot/imap-login", "pydovecot/pop3-login",
                     "pydovecot/lmtp", "pydovecot/mail"):
            self.assertIn(role, roles, children)
        self.addCleanup(_kill_all, list(children))

        os.kill(master.process.pid, signal.SIGKILL)
        master.process.wait()
        start = time.monotonic()
        while any(alive(p) for p in children) and time.monotonic() - start < 15:
            time.sleep(0.05)
        took = time.monotonic() - start
        self.assertEqual([(p, t) for p, t in children.items() if alive(p)], [])
        self.assertLess(took, 10)
        twlog.msg(f"children gone {took:.2f}s after the SIGKILL")
        session.sock.close()
        pop.sock.close()

        # A new master on the same config and base_dir: stale socket files
        # are replaced, and logins work.
        master.start()
        self.imap_login(master).logout()
        self.assertEqual(len(master.children("pydovecot/auth")), 1)


class BackoffTests(MasterCase):
    def test_restart_delay_resets_after_a_child_ran_for_a_while(self) -> None:
        master = self.make_master()
        master.start()
        from pydovecot.master.children import SupervisedChild

        # imap-login first: killing authd also restarts today's login processes.
        for role in ("imap-login", "auth"):
            delays = []
            for _ in range(3):  # before: restarts in 0.1, 0.2, 0.4 s
                old = self.settled(master, role, SupervisedChild.STABLE_AFTER + 0.5)
                before = len(master.log())
                os.kill(old, signal.SIGKILL)
                took = wait_until(lambda o=old, r=role: master.children(f"pydovecot/{r}")
                                  not in ([], [o]), 15, f"a new {role}")
                delays.append(took)
                master.wait_for(lambda b=before, r=role: f"service({r}): restarting in"
                                in master.log()[b:], 10, "restart line")
                logged = re.findall(rf"service\({role}\): restarting in ([\d.]+)s",
                                    master.log()[before:])
                self.assertEqual(logged[:1], ["0.1"], master.log()[before:])
            self.assertLess(max(delays), 5, delays)
            self.assertNotIn(f"service({role}): command startup failed", master.log())
        self.imap_login(master).logout()

    def settled(self, master: Master, role: str, age: float) -> int:
        """The pid of the one process of ``role`` once it has lived ``age`` s."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = master.children(f"pydovecot/{role}")
            if len(pids) == 1:
                time.sleep(age)
                if master.children(f"pydovecot/{role}") == pids:
                    return pids[0]
            time.sleep(0.1)
        raise AssertionError(f"no settled {role}:\n{master.output()}")


class BackoffUnitTests(SynchronousTestCase):
    """SupervisedChild's delays on a fake clock."""

    def test_crashing_at_start_is_throttled_and_a_long_run_resets(self) -> None:
        from twisted.internet.error import ProcessTerminated
        from twisted.internet.task import Clock
        from twisted.python.failure import Failure

        from pydovecot.master import children

        crashed = Failure(ProcessTerminated(exitCode=1))

        clock, now = Clock(), [100.0]
        self.patch(children, "reactor", clock)
        self.patch(children.time, "monotonic", lambda: now[0])
        spawned = []

        class FakeChild:
            def __init__(self):
                self.on_end = None
                self.started_at = 0.0
                self.process = None

            def spawn(self):
                self.started_at = now[0]
                spawned.append(self)

        supervised = children.SupervisedChild("auth", FakeChild)
        supervised.start()
        delays = []
        for _ in range(6):  # dies 0.5 s after every start
            now[0] += 0.5
            spawned[-1].on_end(spawned[-1], crashed)
            delays.append(round(clock.getDelayedCalls()[0].getTime() - clock.seconds(), 3))
            clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
        now[0] += children.SupervisedChild.STABLE_AFTER  # this one ran fine
        spawned[-1].on_end(spawned[-1], crashed)
        self.assertAlmostEqual(clock.getDelayedCalls()[0].getTime() - clock.seconds(), 0.1)


class AnvilUnitTests(SynchronousTestCase):
    """The master's per (user, IP, protocol) counts, without processes."""

    def make(self, limit: int = 2):
        from pydovecot.master.service import MasterService

        class Config:
            def get_int(self, key, protocol=None):
                assert key == "mail_max_userip_connections"
                return limit

        class Pool:
            sessions = 0

            def session_started(self, process):
                self.sessions += 1

            def session_ended(self, pid):
                self.sessions -= 1

        class Process:
            pid = 7

        master = MasterService.__new__(MasterService)
        master.config, master.pool = Config(), Pool()
        master.userip, master.session_keys, master.ended_early = {}, {}, set()
        return master, Process()

    def test_limit_early_end_repeated_ids_and_a_dead_process(self) -> None:
        from pydovecot.master.protocol import LimitExceeded

        master, process = self.make()
        key = master.anvil_connect("alice", "10.0.0.1", "imap")
        master.session_started(process, key, "s1")
        key = master.anvil_connect("alice", "10.0.0.1", "imap")
        master.session_started(process, key, "s1")  # a login process repeats an id
        with self.assertRaises(LimitExceeded) as cm:
            master.anvil_connect("alice", "10.0.0.1", "imap")
        self.assertEqual(str(cm.exception), "Maximum number of connections from user+IP "
                                            "exceeded (mail_max_userip_connections=2)")
        master.anvil_connect("alice", "10.0.0.1", "pop3")  # another protocol
        master.anvil_connect("alice", "10.0.0.2", "imap")  # another IP
        master.session_ended(process.pid, "s1")
        master.session_ended(process.pid, "s1")
        self.assertNotIn(("alice", "10.0.0.1", "imap"), master.userip)
        self.assertEqual(master.pool.sessions, 0)
        # The end arrives before the NewClient answer: never counted.
        master.session_ended(process.pid, "s2")
        master.session_started(process, master.anvil_connect("bob", "::1", "imap"), "s2")
        self.assertNotIn(("bob", "::1", "imap"), master.userip)
        self.assertEqual(master.pool.sessions, 0)
        # A mail process that dies takes its sessions' counts with it.
        for n in range(2):
            master.session_started(process, master.anvil_connect("carol", "::1", "imap"),
                                   f"c{n}")
        master.anvil_process_gone(process.pid)
        self.assertNotIn(("carol", "::1", "imap"), master.userip)
        self.assertEqual(master.session_keys, {})


class LimitTests(MasterCase):
    extra = "protocol imap {\n  mail_max_userip_connections = 2\n}\n"

    def over_the_limit(self, master: Master) -> list[bytes]:
        """LOGIN one session too many; every line the server sends until EOF."""
        sock = socket.create_connection(("127.0.0.1", master.ports["imap"]), 20)
        self.addCleanup(sock.close)
        sock.settimeout(20)
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(4096)
        sock.sendall(b"a LOGIN alice secret\r\n")
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n")[1:]

    def test_mail_max_userip_connections(self) -> None:
        master = self.make_master()
        master.start()
        first, second = self.imap_login(master), self.imap_login(master)
        lines = self.over_the_limit(master)
        self.assertFalse(any(line.startswith(b"a OK") for line in lines), lines)
        master.wait_for(lambda: "Maximum number of connections from user+IP exceeded "
                        "(mail_max_userip_connections=2)" in master.log(), 10, "the log line")
        self.assertRegex(master.log(), r"user=<alice>, service=imap, rip=127\.0\.0\.1")
        # Per user: bob is not alice.  Per protocol: POP3 has the global 10.
        self.imap_login(master, "bob").logout()
        pop = poplib.POP3("127.0.0.1", master.ports["pop3"], timeout=20)
        pop.user("alice")
        pop.pass_("secret")
        pop.quit()
        # A session that ends frees its slot.
        first.logout()
        deadline = time.monotonic() + 15
        while True:
            try:
                third = self.imap_login(master)
                break
            except imaplib.IMAP4.error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        third.logout()
        second.logout()
        master_lines = [x for x in master.log().splitlines() if " master: " in x]
        self.assertFalse([x for x in master_lines if "Traceback" in x])

    def test_over_the_limit_is_bye_limit(self) -> None:
        # Needs the login process's side (helper "login"): the HandOff's
        # LIMIT error becomes Dovecot's BYE.
        master = self.make_master()
        master.start()
        sessions = [self.imap_login(master), self.imap_login(master)]
        lines = self.over_the_limit(master)
        self.assertIn(b"* BYE [LIMIT] Maximum number of connections from user+IP exceeded "
                      b"(mail_max_userip_connections=2)", lines)
        for s in sessions:
            s.logout()

    def test_login_process_limit_caps_process_min_avail(self) -> None:
        master = self.make_master(extra="service imap-login {\n  process_min_avail = 3\n"
                                        "  process_limit = 2\n}\n"
                                        "service pop3-login {\n  process_min_avail = 2\n}\n")
        master.start()
        master.wait_for(lambda: len(master.children("pydovecot/pop3-login")) == 2, 20,
                        "two pop3-login processes")
        time.sleep(1)  # none beyond the limit comes late
        self.assertEqual(len(master.children("pydovecot/imap-login")), 2)
        self.imap_login(master).logout()

    def test_mail_pool_client_limit_and_process_limit(self) -> None:
        # Every user maps to one uid; two sessions per process, one process.
        master = self.make_master(extra="service imap {\n  client_limit = 2\n"
                                        "  process_limit = 1\n}\n")
        master.start()
        a, b = self.imap_login(master, "alice"), self.imap_login(master, "bob")
        self.assertEqual(len(_assigned_mail_processes(master)), 1)
        with self.assertRaises(imaplib.IMAP4.error) as cm:
            self.imap_login(master, "alice")
        self.assertIn(b"UNAVAILABLE", str(cm.exception).encode())
        master.wait_for(lambda: "process_limit (1) reached" in master.log(), 10, "log")
        a.logout()
        deadline = time.monotonic() + 15
        while True:  # the slot frees once the mail process reports the end
            try:
                c = self.imap_login(master, "alice")
                break
            except imaplib.IMAP4.error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        c.logout()
        b.logout()


def _assigned_mail_processes(master: Master) -> list[int]:
    """Mail processes serving a uid (not the idle, pre-spawned spares)."""
    return [p for p in master.children("pydovecot/mail") if "(idle)" not in title(p)]


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            if alive(pid) and title(pid).startswith("pydovecot/"):
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class ConfigErrorTests(MasterCase):
    BAD = {
        "port_from_missing_file": (
            "service imap-login {\n  inet_listener imap {\n    port = </nonexistent/port\n"
            "  }\n}\n", r"port: can't read /nonexistent/port: No such file"),
        "port_from_file_not_a_number": (
            "service imap-login {\n  inet_listener imap {\n    port = <{dir}/word\n"
            "  }\n}\n", r"port: invalid port 'hello'"),
        "process_limit_from_file": (
            "service imap {\n  process_limit = <{dir}/word\n}\n", r"process_limit: invalid"),
        "missing_ssl_cert": (
            "ssl_cert = </nonexistent/cert.pem\n", r"ssl_cert: can't read /nonexistent/cert"),
        "bad_number": ("mail_max_userip_connections = lots\n",
                       r"mail_max_userip_connections: invalid number 'lots'"),
    }

    def run_master(self, master: Master) -> tuple[int, str]:
        argv, fds = master.command()
        result = subprocess.run(argv, cwd=master.dir, capture_output=True, text=True,
                                timeout=60, pass_fds=fds,
                                env=dict(os.environ, PYTHONPATH=os.path.dirname(
                                    os.path.dirname(os.path.abspath(__file__)))))
        return result.returncode, result.stdout + result.stderr

    def test_config_errors_are_one_fatal_line(self) -> None:
        for name, (extra, message) in self.BAD.items():
            master = self.make_master(extra="")
            with open(os.path.join(master.dir, "word"), "w") as f:
                f.write("hello\n")
            master.extra_config = extra.replace("{dir}", master.dir)
            master.write_config()
            bad = next(x for x in master.extra_config.split("\n") if "<" in x or "lots" in x)
            line = _line_of(master.config_path, bad)
            code, output = self.run_master(master)
            self.assertNotEqual(code, 0, f"{name}: {output}")
            self.assertNotIn("Traceback", output, name)
            fatal = [x for x in output.splitlines() if "Fatal:" in x]
            self.assertEqual(len(fatal), 1, f"{name}: {output}")
            self.assertRegex(fatal[0], rf"Fatal: {re.escape(master.config_path)}:{line}: "
                                       rf"{message}", name)

    def test_start_errors_after_parsing_are_one_fatal_line(self) -> None:
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        master = self.make_master(extra=f"service lmtp {{\n  inet_listener lmtp2 {{\n"
                                        f"    port = {port}\n  }}\n}}\n")
        code, output = self.run_master(master)
        self.assertEqual(code, 89, output)
        self.assertNotIn("Traceback", output)
        fatal = [x for x in output.splitlines() if "Fatal:" in x]
        self.assertEqual(len(fatal), 1, output)
        self.assertRegex(fatal[0], rf"Fatal: cannot listen on 127\.0\.0\.1:{port}: "
                                   "Address already in use")
        self.assertIn(f"master: Fatal: cannot listen on 127.0.0.1:{port}", master.log())
        # Nothing was left running, and the auth sockets were removed.
        self.assertEqual(master.descendants(), [])
        self.assertFalse(os.path.exists(os.path.join(master.dir, "run", "auth-login")))

    def test_missing_system_user_is_one_fatal_line(self) -> None:
        if not IS_ROOT:
            self.skipTest("users are checked only as root")
        master = self.make_master(extra="default_internal_user = pdv-no-such-user\n")
        code, output = self.run_master(master)
        self.assertEqual(code, 89, output)
        self.assertNotIn("Traceback", output)
        line = _line_of(master.config_path, "default_internal_user = pdv-no-such-user")
        self.assertRegex(output, rf"pydovecot: Fatal: {re.escape(master.config_path)}:{line}: "
                                 r"default_internal_user: system user 'pdv-no-such-user' "
                                 r"does not exist; create it with: useradd")

    def test_bad_config_on_sighup_is_an_error_line_and_the_old_one_goes_on(self) -> None:
        master = self.make_master()
        master.start()
        # The last one breaks any child that would parse the file itself.
        for extra in ("no_such_setting = 1\n", "ssl_key = </nonexistent/key\n",
                      "service imap {\n  process_limit = </nonexistent/limit\n}\n"):
            before = len(master.log())
            master.extra_config = extra
            master.write_config()
            os.kill(master.process.pid, signal.SIGHUP)
            master.wait_for(lambda b=before: "SIGHUP: config not reloaded" in master.log()[b:],
                            15, "the error line")
            new = master.log()[before:]
            self.assertRegex(new, rf"master: Error: SIGHUP: config not reloaded: "
                                  rf"{re.escape(master.config_path)}:\d+: ")
            self.assertNotIn("Traceback", new)
            self.assertNotIn("reloading configuration", new)
            self.imap_login(master).logout()
        # Children started now get the config the master kept, not the bad
        # file: a new login process and a new mail process serve logins.
        for role in ("pydovecot/imap-login", "pydovecot/mail"):
            for pid in master.children(role):
                os.kill(pid, signal.SIGKILL)
        master.wait_for(lambda: master.children("pydovecot/imap-login")
                        and master.children("pydovecot/mail"), 20, "new children")
        deadline = time.monotonic() + 20
        while True:
            try:
                self.imap_login(master).logout()
                break
            except (OSError, imaplib.IMAP4.error):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.assertNotIn("Traceback", master.log())


def _line_of(path: str, text: str) -> int:
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.rstrip("\n") == text:
                return n
    raise AssertionError(f"{text!r} not in {path}")
