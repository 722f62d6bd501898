"""Service limits through the real master (issue 11).

``service_count = 1`` (a login process per client, Dovecot's high-security
mode) with ``process_limit`` holding clients in the backlog, ``vsz_limit``
as RLIMIT_AS of login and mail processes (read from /proc/PID/limits), and
``idle_kill`` stopping a mail process left without sessions.
"""

from __future__ import annotations

import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import LineClient, Master, User, privileged


def address_limit(pid: int) -> int | None:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max address space"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    raise AssertionError("no address-space line")


class MasterCase(SynchronousTestCase):
    extra = ""

    def setUp(self) -> None:
        self.master = Master(users=[User("alice", "secret")], extra_config=self.extra,
                             **privileged())
        self.addCleanup(self.master.cleanup)
        self.master.start()

    def logins(self) -> list[int]:
        return self.master.children("pydovecot/imap-login")

    def client(self) -> LineClient:
        c = LineClient(self.master.ports["imap"], timeout=20)
        self.addCleanup(c.close)
        return c


class ServiceCountTests(MasterCase):
    extra = """
service imap-login {
  service_count = 1
  process_limit = 2
}
"""

    def test_one_login_process_per_client_within_process_limit(self) -> None:
        # The harness's readiness probe was the first process's one client.
        self.master.wait_for(lambda: len(self.logins()) == 1, 20, "one login process")
        first = self.logins()
        a = self.client()
        self.assertTrue(a.line().startswith(b"* OK"))
        # a's process stopped accepting; its successor takes the next client.
        self.master.wait_for(lambda: len(self.logins()) == 2, 20, "a successor")
        b = self.client()
        self.assertTrue(b.line().startswith(b"* OK"))
        # Two processes, both serving: process_limit = 2 leaves c waiting.
        self.master.wait_for(lambda: "process_limit (2) reached" in self.master.log(), 20,
                             "the process_limit line")
        c = self.client()
        c.sock.settimeout(1.5)
        with self.assertRaises(socket.timeout):
            c.line()
        # a logs in (handed to its mail process) and its login process exits;
        # a fresh one then greets c.
        self.assertTrue(a.tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))
        self.master.wait_for(lambda: first[0] not in self.logins(), 20, "a's process to exit")
        c.sock.settimeout(20)
        self.assertTrue(c.line().startswith(b"* OK"))
        self.assertEqual(a.tagged(b"NOOP")[-1], b"t2 OK NOOP completed.")
        log = self.master.log()
        self.assertNotIn("service(imap-login): child", log)  # no crash lines
        self.assertNotIn("master went away", log)


class VszLimitTests(MasterCase):
    extra = """
service pop3-login {
  vsz_limit = 1G
}
service imap {
  vsz_limit = 2G
}
"""

    def test_rlimit_as_on_login_and_mail_processes(self) -> None:
        (pop3,) = self.master.children("pydovecot/pop3-login")
        self.assertEqual(address_limit(pop3), 1 << 30)
        (imap,) = self.logins()
        self.assertEqual(address_limit(imap), 256 << 20)  # default_vsz_limit
        mail = self.master.children("pydovecot/mail")
        self.assertTrue(mail)
        for pid in mail:
            self.assertEqual(address_limit(pid), 2 << 30)


class IdleKillTests(MasterCase):
    extra = """
service imap {
  idle_kill = 2 secs
}
"""

    def test_idle_mail_process_is_stopped(self) -> None:
        a = self.client()
        a.line()
        self.assertTrue(a.tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))

        def assigned() -> list[int]:
            return [p for p in self.master.children("pydovecot/mail")
                    if "(idle)" not in _title(p)]

        self.master.wait_for(lambda: len(assigned()) == 1, 20, "an assigned mail process")
        (pid,) = assigned()
        time.sleep(3)  # still in use: not killed
        self.assertIn(pid, assigned())
        a.tagged(b"LOGOUT")
        self.master.wait_for(lambda: pid not in self.master.descendants(), 30,
                             "the idle mail process to stop")
        self.assertIn("idle_kill", self.master.log())
        # The next login gets a process again.
        b = self.client()
        b.line()
        self.assertTrue(b.tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))


def _title(pid: int) -> str:
    from tests.harness import title

    return title(pid)


class VerboseProctitleTests(MasterCase):
    extra = "verbose_proctitle = yes\n"

    def test_login_title_counts_clients(self) -> None:
        from tests.harness import title

        (pid,) = self.logins()
        self.master.wait_for(lambda: title(pid) == "pydovecot/imap-login [0 pre-login]", 20,
                             "the idle title")
        clients = [self.client() for _ in range(2)]
        for c in clients:
            c.line()
        self.master.wait_for(lambda: title(pid) == "pydovecot/imap-login [2 pre-login]", 20,
                             "the title with two clients")
        clients[0].close()
        self.master.wait_for(lambda: title(pid) == "pydovecot/imap-login [1 pre-login]", 20,
                             "the title with one client")

    def test_mail_title_names_its_sessions(self) -> None:
        from tests.harness import title

        c = self.client()
        c.line()
        self.assertTrue(c.tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))

        def titles() -> list[str]:
            return [title(p) for p in self.master.children("pydovecot/mail")]

        self.master.wait_for(lambda: any(t.endswith(" [alice 127.0.0.1]") for t in titles()),
                             20, "the mail title with the session")
        c.tagged(b"LOGOUT")
        self.master.wait_for(lambda: any(t.endswith(" [idling]") for t in titles()), 20,
                             "the idle mail title")
