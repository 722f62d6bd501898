"""A real Prometheus (Debian's package) scrapes our /metrics (issue 11):
it runs privately on loopback with a temp config and storage, scrapes the
stats process every second, and its HTTP API must report the target up,
with no scrape error, and the series we export (counters that grow after
logins, the histogram's buckets, our process gauges).

Prometheus cannot bind port 0, so its own listener gets a port from a
socket bound and closed just before the exec, retried on a conflict; our
stats listener is handed in bound (tests.harness).  Under CI=true a
missing prometheus fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

from twisted.trial import unittest
from twisted.trial.unittest import SkipTest

from tests.harness import IN_CI, privileged
from tests.test_stats_process import login, stats_master

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class PrivatePrometheus:
    def __init__(self, case: unittest.TestCase, target_port: int):
        if not os.path.exists(PROMETHEUS):
            reason = "Debian's prometheus package is not installed"
            if IN_CI:
                case.fail(reason)
            raise SkipTest(reason)
        self.dir = tempfile.mkdtemp(prefix="pdv-prometheus-")
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: pydovecot
    static_configs:
      - targets: ['127.0.0.1:{target_port}']
""")
        self.proc = None
        case.addCleanup(self.stop)
        for _ in range(5):
            if self._start():
                return
        raise AssertionError(f"prometheus did not start:\n{self.output()}")

    def _start(self) -> bool:
        with socket.socket() as s:  # only for Prometheus's own listener
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.out = open(os.path.join(self.dir, "prometheus.out"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config}",
             f"--storage.tsdb.path={self.dir}/data", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.out.close()
                if "address already in use" in self.output():
                    return False
                raise AssertionError(f"prometheus exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return True
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.output()}")

    def output(self) -> str:
        try:
            with open(os.path.join(self.dir, "prometheus.out"), errors="replace") as f:
                return f.read()[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "out", None) is not None and not self.out.closed:
            self.out.close()

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> dict[tuple, float]:
        data = self.api("query", query=expr)
        return {tuple(sorted((k, v) for k, v in r["metric"].items()
                             if k not in ("job", "instance", "__name__"))): float(r["value"][1])
                for r in data["result"]}


class ScrapedByPrometheus(unittest.TestCase):
    def wait(self, prom: PrivatePrometheus, expr: str, predicate, what: str,
             timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        result: dict = {}
        while time.monotonic() < deadline:
            result = prom.query(expr)
            if predicate(result):
                return result
            time.sleep(0.5)
        targets = prom.api("targets")
        self.fail(f"{what}: {expr} = {result}; targets: {targets}\n{prom.output()}")

    def test_scrape(self):
        master, port = stats_master(**privileged())
        self.addCleanup(master.cleanup)
        master.start()
        prom = PrivatePrometheus(self, port)
        imap = master.ports["imap"]
        self.assertIn(b"OK", login(imap, "secret"))
        self.assertIn(b"NO", login(imap, "wrong"))
        self.wait(prom, "dovecot_auth_success_total", lambda r: r.get(()) == 1, "one success")
        target = prom.api("targets")["activeTargets"][0]
        self.assertEqual((target["health"], target["lastError"]), ("up", ""))
        self.assertEqual(prom.query("dovecot_auth_failures_total"), {(): 1.0})
        # grouped counters, the trailing _count, and the histogram
        self.assertEqual(prom.query("dovecot_auth_req_total"), {
            (("service", "imap"),): 2.0, (("mechanism", "PLAIN"), ("service", "imap")): 2.0})
        self.assertEqual(prom.query("dovecot_auth_req_count"), {(): 2.0})
        buckets = prom.query('dovecot_auth_hist_bucket{le="+Inf"}')
        self.assertEqual(list(buckets.values()), [2.0])
        self.assertEqual(prom.query('dovecot_build_info{revision="pydovecot"}'), {
            (("revision", "pydovecot"), ("version", "0.1.0")): 1.0})
        self.wait(prom, 'pydovecot_mail_processes{state="idle"}',
                  lambda r: len(r) == 1, "the master's gauges")
        # the counter grows, and Prometheus sees it grow
        self.assertIn(b"OK", login(imap, "secret"))
        self.wait(prom, "dovecot_auth_success_total", lambda r: r.get(()) == 2, "two successes")
        rate = prom.query("increase(dovecot_auth_success_total[1m])")
        self.assertGreater(rate[()], 0)
