"""The stats process through the real master (issue 11): logins counted
into ``metric { }`` blocks and served on ``/metrics``, the stats process
running unprivileged and chrooted (checked in /proc), events from authd
and the login processes, the master's process gauges.

Needs root for the privileged run (CI); a plain user still runs the test
unprivileged.
"""

from __future__ import annotations

import os
import smtplib
import socket
import time
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from twisted.trial import unittest

from tests.harness import LineClient, Master, listening_socket, privileged, proc_ids

METRICS = """
metric auth_success {
  filter = event=auth_request_finished AND success=yes
}
metric auth_failures {
  filter = event=auth_request_finished AND NOT success=yes
}
metric auth_req {
  filter = event=auth_request_finished
  group_by = service mechanism
}
metric auth_hist {
  filter = event=auth_request_finished
  group_by = service duration:exponential:1:7:10
}
metric login_side {
  filter = event=auth_client_request_finished
  group_by = error
}
metric imap_command {
  filter = event=imap_command_finished
  group_by = cmd_name tagged_reply_state
}
metric delivery {
  filter = event=mail_delivery_finished
}
"""


def stats_master(blocks: str = METRICS, http: bool = True, **kwargs) -> tuple[Master, int]:
    """A master with a stats http listener and a health-check listener on
    sockets bound here (ports chosen by the kernel, handed in like the
    harness's own listeners)."""
    master = Master(**kwargs)
    for name in ("http", "health-check"):
        master.sockets[name] = listening_socket()
    port = master.sockets["http"].getsockname()[1]
    master.health_port = master.sockets["health-check"].getsockname()[1]
    if http:
        master.extra_config += f"""
service stats {{
  inet_listener http {{
    port = {port}
  }}
}}
"""
    master.extra_config += f"""
service health-check {{
  inet_listener health-check {{
    port = {master.health_port}
  }}
}}
{blocks}
"""
    master.write_config()
    return master, port


def health_check(port: int, data: bytes, quiet: float = 10) -> bytes:
    """What the health-check listener answers to ``data``: up to its first
    line, or nothing when it closes or stays silent for ``quiet`` seconds
    (Dovecot's script keeps the connection until its 10 s timer ends)."""
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(data)
        s.settimeout(quiet)
        answer = b""
        try:
            while b"\n" not in answer and (chunk := s.recv(100)):
                answer += chunk
        except TimeoutError:
            pass
        return answer


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def login(port: int, password: str) -> bytes:
    client = LineClient(port, greeting=True)
    try:
        return client.tagged(b"LOGIN alice " + password.encode())[-1]
    finally:
        client.close()


class StatsThroughMaster(unittest.TestCase):
    def setUp(self):
        self.master, self.port = stats_master(**privileged())
        self.addCleanup(self.master.cleanup)
        self.master.start()

    def wait_metrics(self, predicate, what: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        values: dict = {}
        while time.monotonic() < deadline:
            try:
                status, _, text = scrape(self.port)
                if status == 200:
                    values = samples(text)
                    if predicate(values):
                        return values
            except OSError:
                pass
            time.sleep(0.2)
        self.fail(f"timed out waiting for {what}: {values}\n{self.master.output()}")

    def test_logins_counted(self):
        imap = self.master.ports["imap"]
        self.assertIn(b"OK", login(imap, "secret"))
        self.assertIn(b"NO", login(imap, "wrong"))
        self.assertIn(b"OK", login(imap, "secret"))
        values = self.wait_metrics(
            lambda v: v.get(("dovecot_auth_success_total", ())) == 2
            and v.get(("dovecot_auth_failures_total", ())) == 1, "auth counters")
        self.assertEqual(values[("dovecot_auth_req_total", (("service", "imap"),))], 3)
        self.assertEqual(values[("dovecot_auth_req_total",
                                 (("mechanism", "PLAIN"), ("service", "imap")))], 3)
        self.assertEqual(values[("dovecot_auth_req_count", ())], 3)
        self.assertGreater(values[("dovecot_auth_success_duration_seconds_total", ())], 0)
        self.assertEqual(values[("dovecot_auth_hist_count", (("service", "imap"),))], 3)
        self.assertEqual(values[("dovecot_auth_hist_bucket",
                                 (("le", "+Inf"), ("service", "imap")))], 3)
        # the login processes' own event, as Dovecot's lib-auth client emits it
        values = self.wait_metrics(
            lambda v: v.get(("dovecot_login_side_count", ())) == 3, "login-side events")
        self.assertEqual(values[("dovecot_login_side_total",
                                 (("error", "Authentication failed"),))], 1)
        self.assertEqual(values[("dovecot_build_info",
                                 (("revision", "pydovecot"), ("version", "0.1.0")))], 1)
        # more logins: the counters grow
        self.assertIn(b"OK", login(imap, "secret"))
        self.wait_metrics(lambda v: v.get(("dovecot_auth_success_total", ())) == 3,
                          "the counter to grow")

    def test_mail_process_events(self):
        """imap_command_finished from the mail process, mail_delivery_finished
        from an LMTP delivery, with Dovecot's field names."""
        client = LineClient(self.master.ports["imap"], greeting=True)
        self.addCleanup(client.close)
        client.tagged(b"LOGIN alice secret")
        client.tagged(b"SELECT INBOX")
        client.tagged(b"UID FETCH 1:* FLAGS")
        client.tagged(b"FROBNICATE")
        lmtp = smtplib.LMTP("127.0.0.1", self.master.ports["lmtp"], timeout=20)
        lmtp.sendmail("bob@example.org", ["alice@example.org"], b"Subject: s\r\n\r\nbody\r\n")
        lmtp.quit()
        values = self.wait_metrics(
            lambda v: v.get(("dovecot_imap_command_total",
                             (("cmd_name", "UID FETCH"), ("tagged_reply_state", "OK")))) == 1
            and v.get(("dovecot_delivery_total", ())) == 1, "IMAP and delivery events")
        self.assertEqual(values[("dovecot_imap_command_total",
                                 (("cmd_name", "SELECT"), ("tagged_reply_state", "OK")))], 1)
        self.assertEqual(values[("dovecot_imap_command_total",
                                 (("cmd_name", "unknown"), ("tagged_reply_state", "BAD")))], 1)

    def test_process_gauges(self):
        client = LineClient(self.master.ports["imap"], greeting=True)
        self.addCleanup(client.close)
        self.assertIn(b"OK", client.tagged(b"LOGIN alice secret")[-1])
        values = self.wait_metrics(
            lambda v: v.get(("pydovecot_connections", (("protocol", "imap"),))) == 1,
            "the master's connection gauge")
        self.assertGreaterEqual(values[("pydovecot_mail_processes", (("state", "assigned"),))],
                                1)
        self.assertIn(1.0, [v for (name, _), v in values.items()
                            if name == "pydovecot_mail_process_sessions"])
        self.assertEqual(values[("pydovecot_service_restarts_total", (("service", "auth"),))],
                         0)
        self.assertGreaterEqual(values[("pydovecot_stats_events_total",
                                        (("service", "auth"),))], 1)

    def test_unprivileged_and_chrooted(self):
        pids = self.master.children("pydovecot/stats")
        self.assertEqual(len(pids), 1, self.master.output())
        self.wait_metrics(lambda v: True, "the page")
        uid, gid = proc_ids(pids[0])
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("pydovecot")
            self.assertEqual((uid, gid), (user.pw_uid, user.pw_gid))
            root = os.readlink(f"/proc/{pids[0]}/root")
            self.assertEqual(root, os.path.join(self.master.dir, "run", "empty"))
            with open(f"/proc/{pids[0]}/status") as f:
                self.assertIn("NoNewPrivs:\t1", f.read())
        else:
            self.assertEqual(uid, os.getuid())

    def test_http_paths(self):
        self.wait_metrics(lambda v: True, "the page")
        status, ctype, text = scrape(self.port)
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("application/openmetrics-text"), ctype)
        self.assertTrue(text.endswith("# EOF\n"))
        self.assertEqual(scrape(self.port, "/")[0], 404)
        self.assertEqual(scrape(self.port, "/metricsX")[0], 404)

    def test_health_check(self):
        """Dovecot's health-check.sh answers, served by the same process."""
        port = self.master.health_port
        self.assertEqual(health_check(port, b"PING\n"), b"PONG\n")
        self.assertEqual(health_check(port, b"PING\r\n"), b"PONG\n")
        self.assertEqual(health_check(port, b"PONG\n"), b"")
        self.assertEqual(health_check(port, b"x" * 5000 + b"\n"), b"")
        self.assertEqual(len(self.master.children("pydovecot/stats")), 1)


    def test_reload_keeps_serving(self):
        """SIGHUP: a new stats process serves the same listener."""
        import signal

        self.wait_metrics(lambda v: True, "the page")
        old = self.master.children("pydovecot/stats")
        self.master.process.send_signal(signal.SIGHUP)
        self.master.wait_for(lambda: (pids := self.master.children("pydovecot/stats"))
                             and pids != old, 30, "a new stats process")
        self.assertIn(b"OK", login(self.master.ports["imap"], "secret"))
        self.wait_metrics(lambda v: v.get(("dovecot_auth_success_total", ())) == 1,
                          "counting after the reload")
        self.assertEqual(health_check(self.master.health_port, b"PING\n"), b"PONG\n")


class HealthCheckAlone(unittest.TestCase):
    def test_without_metrics(self):
        """Only service health-check: the stats process runs for it alone."""
        master, _ = stats_master(blocks="", http=False, **privileged())
        self.addCleanup(master.cleanup)
        master.start()
        master.wait_for(lambda: len(master.children("pydovecot/stats")) == 1, 20,
                        "the stats process")
        deadline = time.monotonic() + 20
        while True:
            try:
                self.assertEqual(health_check(master.health_port, b"PING\n"), b"PONG\n")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
