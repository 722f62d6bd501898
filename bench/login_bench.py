"""Login latency and idle-connection memory: pydovecot next to Dovecot.

Measures, for each server on the same users and the same machine:

- LOGIN → tagged OK ({PLAIN} password), median of 50, when a fitting mail
  process is running ("warm": all users share one vmail uid) and, for
  pydovecot, when one has to be assigned ("cold": every user has a uid of
  its own, logins 1 s apart: a new spare needs ~0.6 s to import and rehearse);
- PSS (from /proc/PID/smaps_rollup) of every server process after 1,000
  idle logged-in connections spread over 100 virtual users.

Run as root:  python3 bench/login_bench.py [--skip-dovecot] [--connections N]
Dovecot comes from Debian's dovecot-imapd (installed if missing, with a
policy-rc.d that keeps the system service from starting).
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.dovecot import PrivateDovecot  # noqa: E402
from tests.harness import (  # noqa: E402
    Master,
    User,
    descendants,
    ensure_system_user,
)


def plain_user(name: str, password: str, uid: str = "", gid: str = "", home: str = "") -> User:
    user = User(name, password, uid, gid, home)
    user.line = lambda u=user: f"{u.name}:{{PLAIN}}{u.password}:{u.uid}:{u.gid}::{u.home}::\n"
    return user


class Conn:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.read_until(b"\r\n")

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    def login(self, user: str, password: str) -> float:
        start = time.perf_counter()
        self.sock.sendall(f"a LOGIN {user} {password}\r\n".encode())
        while True:
            line = self.read_until(b"\r\n")
            if line.startswith(b"a "):
                break
        elapsed = time.perf_counter() - start
        if not line.startswith(b"a OK"):
            raise RuntimeError(line)
        return elapsed

    def close(self) -> None:
        self.sock.close()


def login_times(port: int, users: list[str], pause: float = 0.0) -> list[float]:
    times = []
    for name in users:
        conn = Conn(port)
        times.append(conn.login(name, "pw"))
        conn.close()
        if pause:
            time.sleep(pause)
    return times


def pss_kib(pids: list[int]) -> dict[int, int]:
    result = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        result[pid] = int(line.split()[1])
        except OSError:
            pass
    return result


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:60]
    except OSError:
        return "?"


def idle_memory(port: int, root_pid: int, users: list[str], connections: int) -> dict:
    baseline = sum(pss_kib([root_pid, *descendants(root_pid)]).values())
    conns = []
    for i in range(connections):
        conn = Conn(port)
        conn.login(users[i % len(users)], "pw")
        conns.append(conn)
    time.sleep(2)
    per_process = pss_kib([root_pid, *descendants(root_pid)])
    total = sum(per_process.values())
    for conn in conns:
        conn.close()
    return {
        "baseline_kib": baseline,
        "total_kib": total,
        "processes": len(per_process),
        "per_conn_total_kib": total / connections,
        "per_conn_marginal_kib": (total - baseline) / connections,
        "top": sorted(((kib, title(pid)) for pid, kib in per_process.items()), reverse=True)[:6],
    }


def report(name: str, result: dict) -> None:
    print(f"\n== {name}")
    for key in ("warm", "cold"):
        if key in result:
            values = result[key]
            print(f"LOGIN->OK {key}: median {statistics.median(values) * 1000:.2f} ms "
                  f"(p90 {sorted(values)[int(len(values) * 0.9)] * 1000:.2f} ms, n={len(values)})")
    mem = result.get("memory")
    if mem:
        print(f"{mem['processes']} processes, PSS baseline {mem['baseline_kib']} KiB, "
              f"with connections {mem['total_kib']} KiB")
        print(f"PSS per idle connection: {mem['per_conn_total_kib']:.0f} KiB total/conn, "
              f"{mem['per_conn_marginal_kib']:.0f} KiB marginal")
        for kib, name_ in mem["top"]:
            print(f"   {kib:8d} KiB  {name_}")


def bench_pydovecot(args) -> dict:
    ensure_system_user("pydovecot-null")
    ensure_system_user("pydovecot")
    ensure_system_user("pdvmail")
    users = [plain_user(f"u{i:03d}", "pw") for i in range(100)]
    # Cold users: each its own uid (no passwd entry needed).
    users += [plain_user(f"c{i:03d}", "pw", str(30000 + i), str(30000 + i)) for i in range(50)]
    master = Master(users=users, login_user="pydovecot-null", internal_user="pydovecot",
                    mail_uid="pdvmail", extra_config="auth_verbose = no\n")
    try:
        master.start()
        port = master.ports["imap"]
        login_times(port, ["u000"] * 5)  # warm up
        result = {"warm": login_times(port, [f"u{i % 100:03d}" for i in range(50)])}
        time.sleep(2)
        result["cold"] = login_times(port, [f"c{i:03d}" for i in range(50)], pause=1.0)
        if args.skip_memory:
            return result
        # Cold users' processes are not needed for the memory figure.
        master.stop()
        master.users = users[:100]
        master.write_config()
        master.start()
        login_times(port, ["u000"])
        result["memory"] = idle_memory(port, master.process.pid, [u.name for u in users[:100]],
                                       args.connections)
        return result
    finally:
        master.cleanup()


DOVECOT_SECTIONS = """
passdb {
  driver = passwd-file
  args = {dir}/users.passwd
}
userdb {
  driver = passwd-file
  args = {dir}/users.passwd
  default_fields = uid=pdvmail gid=pdvmail home={dir}/home/%u
}
service imap {
  process_limit = 2000
}
service anvil {
  client_limit = 3000
}
default_client_limit = 3000
default_process_limit = 3000
"""


def bench_dovecot(args) -> dict:
    ensure_system_user("pdvmail")
    server = PrivateDovecot(DOVECOT_SECTIONS)
    with open(server.path("users.passwd"), "w") as f:
        for i in range(100):
            f.write(f"u{i:03d}:{{PLAIN}}pw::::::\n")
    os.makedirs(server.path("home"))
    vmail = pwd.getpwnam("pdvmail")
    os.chown(server.path("home"), vmail.pw_uid, vmail.pw_gid)
    try:
        server.start()
        login_times(server.port, ["u000"] * 5)
        result = {"warm": login_times(server.port, [f"u{i % 100:03d}" for i in range(50)])}
        result["memory"] = idle_memory(server.port, server.master_pid,
                                       [f"u{i:03d}" for i in range(100)], args.connections)
        return result
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-dovecot", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark uses real privilege separation")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))
    report("pydovecot", bench_pydovecot(args))
    if not args.skip_dovecot:
        report("Dovecot (Debian)", bench_dovecot(args))


if __name__ == "__main__":
    main()
