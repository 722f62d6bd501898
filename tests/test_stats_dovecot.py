"""Our /metrics side by side with Debian's Dovecot (issue 11): the same
``metric { }`` blocks, the same logins (one good, one bad) against a
private Dovecot (its stats service answering HTTP) and against our master;
every family must have Dovecot's name, TYPE and HELP, and the same sample
names with the same label names and values (durations aside; label
order and number formatting are the writers' own).

Needs root and Debian's dovecot-imapd; under CI=true their absence fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from passlib.hash import sha512_crypt
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from twisted.trial import unittest
from twisted.trial.unittest import SkipTest

from tests.harness import IN_CI, LineClient, ensure_system_user, free_port, privileged
from tests.test_stats_process import health_check, scrape, stats_master

DOVECOT = "/usr/sbin/dovecot"

#: Blocks over events both sides emit (pydovecot's IMAP commands are
#: not wired yet: see pydovecot.stats.events).
BLOCKS = """
metric auth_success {
  filter = event=auth_request_finished AND success=yes
}
metric auth_failures {
  filter = event=auth_request_finished AND NOT success=yes
}
metric auth_req {
  filter = event=auth_request_finished
  group_by = success mechanism
}
metric auth_svc {
  filter = event=auth_request_finished
  group_by = service mechanism
}
metric auth_user {
  filter = event=auth_request_finished AND (mechanism=PLAIN OR mechanism=LOGIN)
  group_by = user
}
metric auth_hist {
  filter = event=auth_request_finished
  group_by = service duration:exponential:1:7:10
}
metric auth_lin {
  filter = event=auth_request_finished AND success=y*
  group_by = duration:linear:100:1000000:250000
}
metric nothing_hist {
  filter = event=no_such_event
  group_by = duration:linear:100:300:100
}
metric nothing {
  filter = event=no_such_event
}
metric client_side {
  filter = event=auth_client_request_finished
  group_by = mechanism
}
metric client_error {
  filter = event=auth_client_request_finished
  group_by = error
}
"""


def families(text: str) -> dict[str, tuple[str, str, list]]:
    out = {}
    for f in text_string_to_metric_families(text):
        out[f.name] = (f.type, f.documentation,
                       [(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples])
    return out


def comparable(fams: dict) -> dict:
    """Each family's type, help and samples; durations' values dropped
    (only their presence compares), as are our own pydovecot_* families."""
    out = {}
    for name, (kind, doc, samples) in fams.items():
        if name.startswith("pydovecot_") or name == "process_start_time_seconds":
            continue
        if name == "dovecot_build":
            samples = [(s, tuple(k for k, _ in labels), None) for s, labels, _ in samples]
        timed = "duration" in name or kind == "histogram"
        rows = []
        for sample, labels, value in samples:
            if timed and (sample.endswith("_sum") or "duration" in sample):
                value = None
            if kind == "histogram" and sample.endswith("_bucket") and dict(labels).get(
                    "le") != "+Inf":
                value = None  # which bucket a login's time falls in differs
            rows.append((sample, labels, value))
        out[name] = (kind, doc, sorted(rows, key=repr))
    return out


class PrivateDovecot:
    """Debian's Dovecot daemon on loopback with a stats HTTP listener."""

    def __init__(self, case: unittest.TestCase, blocks: str):
        reason = None
        if not os.path.exists(DOVECOT):
            reason = "Debian's dovecot-core is not installed"
        elif os.geteuid() != 0:
            reason = "Dovecot's master needs root"
        if reason:
            if IN_CI:
                case.fail(reason)
            raise SkipTest(reason)
        ensure_system_user("pdvmail")
        self.dir = tempfile.mkdtemp(prefix="pdv-dovecot-stats-")
        os.chmod(self.dir, 0o755)
        case.addCleanup(shutil.rmtree, self.dir, True)
        home = os.path.join(self.dir, "home")
        os.makedirs(home)
        shutil.chown(home, "pdvmail", "pdvmail")
        hashed = sha512_crypt.using(rounds=5000).hash("secret")
        with open(os.path.join(self.dir, "users"), "w") as f:
            f.write(f"alice:{{SHA512-CRYPT}}{hashed}::::::\n")
        self.imap_port, self.http_port, self.health_port = free_port(), free_port(), free_port()
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {self.dir}/users
}}
userdb {{
  driver = static
  args = uid=pdvmail gid=pdvmail home={home}/%n
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  inet_listener http {{
    port = {self.http_port}
  }}
}}
service health-check {{
  executable = script -p /usr/lib/dovecot/health-check.sh
  inet_listener health-check {{
    port = {self.health_port}
  }}
}}
{blocks}
""")
        case.addCleanup(self.stop)
        # Dovecot daemonizes; its children must not hold a pipe of ours.
        with open(os.path.join(self.dir, "start.out"), "wb") as out:
            proc = subprocess.run([DOVECOT, "-c", self.conf], stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=out, timeout=60)
        if proc.returncode != 0:
            with open(os.path.join(self.dir, "start.out"), errors="replace") as f:
                raise AssertionError(f"dovecot did not start: {f.read()}")
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape(self.http_port)
                LineClient(self.imap_port, greeting=True).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("Dovecot did not start: " + self.log()) from None
                time.sleep(0.2)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        pidfile = os.path.join(self.dir, "run", "master.pid")
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def two_logins(port: int) -> None:
    for password, expect in ((b"secret", b"OK"), (b"wrong", b"NO")):
        client = LineClient(port, greeting=True)
        try:
            reply = client.tagged(b"LOGIN alice " + password)[-1]
            assert expect in reply.split(b" ", 2)[1], reply
            client.tagged(b"LOGOUT")
        finally:
            client.close()


def scrape_when(port: int, done, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status, _, text = scrape(port)
        if status == 200 and done(families(text)):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never settled:\n{text}")
        time.sleep(0.3)


def settled(fams: dict) -> bool:
    """Both logins seen by authd and by the login process."""
    values = {s: v for _, _, samples in fams.values() for s, labels, v in samples if not labels}
    return (values.get("dovecot_auth_req_count") == 2
            and values.get("dovecot_client_error_count") == 2)


class SameExpositionAsDovecot(unittest.TestCase):
    def test_same_families(self):
        dovecot = PrivateDovecot(self, BLOCKS)
        two_logins(dovecot.imap_port)
        theirs = families(scrape_when(dovecot.http_port, settled))

        master, port = stats_master(BLOCKS, **privileged())
        self.addCleanup(master.cleanup)
        master.start()
        two_logins(master.ports["imap"])
        ours = families(scrape_when(port, settled))

        self.assertEqual(list(ours)[:2], ["process_start_time_seconds", "dovecot_build"])
        a, b = comparable(theirs), comparable(ours)
        self.assertEqual(sorted(a), sorted(b))
        for name in a:
            self.assertEqual(b[name], a[name], f"family {name}")
        # the families come in Dovecot's order (the config's)
        self.assertEqual([n for n in ours if n in a], [n for n in theirs if n in a])

    def test_same_health_check(self):
        dovecot = PrivateDovecot(self, "")
        master, _ = stats_master("", **privileged())
        self.addCleanup(master.cleanup)
        master.start()
        for data in (b"PING\n", b"PING\r\n", b" PING!\n", b"ping\n", b"PONG\n", b"\n"):
            theirs = health_check(dovecot.health_port, data, quiet=2)
            ours = health_check(master.health_port, data, quiet=2)
            self.assertEqual(ours, theirs, data)
        self.assertEqual(health_check(master.health_port, b"PING\n"), b"PONG\n")
