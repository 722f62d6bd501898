"""systemd and logrotate: the master's sd_notify, the unit file, log reopening.

The real master runs with ``NOTIFY_SOCKET`` pointing at the test's own
datagram socket (a path, and an abstract ``@name``): it must say
``READY=1`` once serving, ``RELOADING=1`` (with ``MONOTONIC_USEC``) and
``READY=1`` around a SIGHUP, ``STOPPING=1`` on SIGTERM, and no child may
inherit the variable (read from /proc).  A clean stop logs no Error line.
``conf/systemd/pydovecot.service`` passes ``systemd-analyze verify``;
``conf/logrotate/pydovecot`` drives a real logrotate run whose postrotate
SIGUSR1 makes the master write to the new file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile

from twisted.trial import unittest

from tests.harness import IN_CI, Master, descendants, privileged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "conf", "systemd", "pydovecot.service")
LOGROTATE = os.path.join(ROOT, "conf", "logrotate", "pydovecot")


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        if IN_CI:
            raise AssertionError(f"{program} is not installed")
        raise unittest.SkipTest(f"{program} is not installed")
    return path


class NotifyTests(unittest.TestCase):
    def listen(self, abstract: bool) -> tuple[socket.socket, str]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = f"pydovecot-test-{os.getpid()}-{id(self)}"
            sock.bind("\0" + name)
            env = "@" + name
        else:
            d = tempfile.mkdtemp(prefix="sdnotify-")
            self.addCleanup(shutil.rmtree, d, True)
            env = os.path.join(d, "notify")
            sock.bind(env)
        sock.settimeout(30)
        return sock, env

    def start(self, env: str) -> Master:
        os.environ["NOTIFY_SOCKET"] = env
        self.addCleanup(os.environ.pop, "NOTIFY_SOCKET", None)
        master = Master(**privileged())
        self.addCleanup(master.cleanup)
        master.start()
        return master

    def messages(self, sock: socket.socket) -> dict[str, str]:
        return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())

    def check(self, abstract: bool) -> None:
        sock, env = self.listen(abstract)
        master = self.start(env)
        self.assertEqual(self.messages(sock)["READY"], "1")
        for pid in descendants(master.process.pid):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            self.assertFalse([v for v in environ if v.startswith(b"NOTIFY_SOCKET=")], pid)
        master.process.send_signal(signal.SIGHUP)
        reloading = self.messages(sock)
        self.assertEqual(reloading["RELOADING"], "1")
        self.assertTrue(reloading["MONOTONIC_USEC"].isdigit())
        self.assertEqual(self.messages(sock)["READY"], "1")
        master.process.send_signal(signal.SIGTERM)
        self.assertEqual(self.messages(sock), {"STOPPING": "1"})
        # twistd ends by the signal it stopped for, which systemd counts
        # as a clean exit (SuccessExitStatus includes SIGTERM).
        self.assertIn(master.process.wait(30), (0, -signal.SIGTERM))
        errors = [line for line in master.log().splitlines() if ": Error: " in line]
        self.assertEqual(errors, [])

    def test_path_socket(self) -> None:
        self.check(abstract=False)

    def test_abstract_socket(self) -> None:
        self.check(abstract=True)


class UnitFileTests(unittest.TestCase):
    def test_systemd_analyze_verify(self) -> None:
        analyze = need("systemd-analyze")
        twistd, pydoveconf = need("twistd"), need("pydoveconf")
        d = tempfile.mkdtemp(prefix="unit-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(UNIT) as f:
            text = f.read()
        self.assertIn("Type=notify", text)
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", text)
        text = text.replace("/usr/local/bin/twistd", twistd).replace(
            "/usr/local/bin/pydoveconf", pydoveconf)
        path = os.path.join(d, "pydovecot.service")
        with open(path, "w") as f:
            f.write(text)
        proc = subprocess.run([analyze, "verify", path], capture_output=True, text=True,
                              timeout=60)
        problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                    if "pydovecot.service" in line]
        self.assertEqual(problems, [])


class LogrotateTests(unittest.TestCase):
    def test_rotation_reopens_the_log(self) -> None:
        logrotate = need("logrotate")
        master = Master(**privileged())
        self.addCleanup(master.cleanup)
        master.start()
        with open(LOGROTATE) as f:
            text = f.read()
        self.assertIn("/var/log/pydovecot.log", text)
        # The snippet, for the test's log and master (postrotate: its pid).
        text = text.replace("/var/log/pydovecot.log", master.log_path)
        text = re.sub(r"(?m)^\s*systemctl kill .*$", f"    kill -USR1 {master.process.pid}", text)
        text = text.replace("weekly", "daily")
        conf = os.path.join(master.dir, "logrotate.conf")
        with open(conf, "w") as f:
            f.write(text)
        os.chmod(conf, 0o644)
        subprocess.run([logrotate, "-f", "-s", os.path.join(master.dir, "lr.state"), conf],
                       check=True, capture_output=True, timeout=60)
        self.assertTrue(os.path.exists(master.log_path + ".1"))
        master.wait_for(lambda: os.path.exists(master.log_path)
                        and "log file reopened" in open(master.log_path).read(), 20,
                        "the reopened log")
