"""Mailbox operations on a large Maildir: pydovecot next to Dovecot.

Generates one realistic mailbox (bench/generate.py; 100,000 messages by
default) straight into a Maildir with a ``dovecot-uidlist``, gives each
server its own hard-linked copy of it (Maildir files are never changed in
place, only renamed, so the copies stay independent), and measures on each,
in the same run and in the same order, over plaintext IMAP on loopback:

- SELECT + ``FETCH 1:* (UID FLAGS)`` with no index yet (the index is built);
- the same again, warm (a new connection);
- ``UID FETCH`` of the newest 1,000 messages' headers
  ``BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)]``, then again (cached);
- ``SEARCH SUBJECT`` (a header; twice, the second may use the index's
  cached headers) and ``SEARCH BODY`` (body text, a full scan: neither
  server has a full-text index here);
- ``STORE 1:10000 +FLAGS.SILENT (\\Flagged)`` (10,000 renames);
- SELECT + FETCH after a server restart (index on disk, warm), and after
  the index files were deleted and the server restarted (rebuild).

pydovecot runs as its real master (tests.harness.Master) with privilege
drop (mail as the ``pdvmail`` user); Dovecot is Debian's dovecot-imapd on a
private config, same user.  Before each server's first step every message
file is read once, so both start with the page cache equally warm.  Each
command has a timeout; everything is removed at the end.  Trusts only the
wall clock of a client socket; result counts are printed for both servers
so that a fast wrong answer shows.

Run as root:  python3 bench/mailbox_bench.py [--count N] [--skip-dovecot]
Results go to bench/results/mailbox_bench-<date>.txt.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.dovecot import PrivateDovecot  # noqa: E402
from bench.generate import MailGenerator, write_maildir  # noqa: E402
from tests.harness import Master, User, ensure_system_user  # noqa: E402

COMMAND_TIMEOUT = 900.0
HEADER_FIELDS = "BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)]"
SUBJECT_WORD = "budget"
BODY_WORD = "zebrafish"  # in no message: every body is scanned
STORE_COUNT = 10_000

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
"""


class Client:
    """A minimal IMAP client that times one command to its tagged reply."""

    def __init__(self, port: int, user: str, password: str):
        self.sock = socket.create_connection(("127.0.0.1", port), 30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(COMMAND_TIMEOUT)
        self.n = 0
        self.buf = b""
        while b"\r\n" not in self.buf:
            self._recv()
        self.buf = b""
        self.run(f"LOGIN {user} {password}")

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError(self.buf[-500:])
        self.buf += chunk

    def run(self, command: str) -> tuple[float, bytes]:
        """(seconds, whole response); raises unless the reply is OK."""
        self.n += 1
        tag = b"T%04d" % self.n
        marker = b"\r\n" + tag + b" "
        self.buf = b"\r\n"
        start = time.perf_counter()
        self.sock.sendall(tag + b" " + command.encode() + b"\r\n")
        while True:
            pos = self.buf.find(marker)
            if pos >= 0 and self.buf.find(b"\r\n", pos + 2) >= 0:
                break
            self._recv()
        elapsed = time.perf_counter() - start
        tagged = self.buf[pos + 2:self.buf.find(b"\r\n", pos + 2)]
        if not tagged.startswith(tag + b" OK"):
            raise RuntimeError(f"{command!r}: {tagged!r}")
        return elapsed, self.buf

    def close(self) -> None:
        try:
            self.run("LOGOUT")
        except (OSError, EOFError, RuntimeError):
            pass
        self.sock.close()


def search_count(data: bytes) -> int:
    m = re.search(rb"\* SEARCH([ \d]*)\r\n", data)
    return len(m.group(1).split()) if m else -1


def preread(path: str) -> None:
    """Read every file once, so each server starts with a warm page cache."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass


class Server:
    """What the steps need: a port, restart, and the index to delete."""

    name = ""
    port = 0
    maildir = ""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def delete_index(self) -> list[str]: ...

    def client(self) -> Client:
        return Client(self.port, "alice", "pw")


class Pydovecot(Server):
    name = "pydovecot"

    def __init__(self, pristine: str, vmail: tuple[int, int]):
        for user in ("pydovecot-null", "pydovecot", "pdvmail"):
            ensure_system_user(user)
        self.master = Master(users=[User("alice", "pw")], login_user="pydovecot-null",
                             internal_user="pydovecot", mail_uid="pdvmail",
                             extra_config="auth_verbose = no\n")
        home = os.path.join(self.master.dir, "home", "alice")
        self.maildir = os.path.join(home, "Maildir")
        copy_maildir(pristine, self.maildir, vmail)
        self.port = self.master.ports["imap"]

    def start(self) -> None:
        self.master.start(timeout=60)

    def stop(self) -> None:
        kids = self.master.descendants()
        self.master.stop()
        wait_gone(kids)

    def delete_index(self) -> list[str]:
        files = glob.glob(os.path.join(self.maildir, "dovecot.index.pydovecot*"))
        for path in files:
            os.unlink(path)
        return [os.path.basename(p) for p in files]

    def cleanup(self) -> None:
        self.master.cleanup()


class Dovecot(Server):
    name = "Dovecot"

    def __init__(self, pristine: str, vmail: tuple[int, int]):
        self.server = PrivateDovecot(DOVECOT_SECTIONS, "dovecot-mailbox-bench-")
        self.port = self.server.port
        with open(self.server.path("users.passwd"), "w") as f:
            f.write("alice:{PLAIN}pw::::::\n")
        self.maildir = self.server.path("home", "alice", "Maildir")
        copy_maildir(pristine, self.maildir, vmail)
        os.chown(self.server.path("home"), *vmail)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def delete_index(self) -> list[str]:
        files = (glob.glob(os.path.join(self.maildir, "dovecot.index*"))
                 + glob.glob(os.path.join(self.maildir, "dovecot.list.index*")))
        for path in files:
            os.unlink(path)
        return [os.path.basename(p) for p in files]

    def cleanup(self) -> None:
        self.server.cleanup()


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{p}") for p in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes still running: {pids}")
        time.sleep(0.1)


def copy_maildir(pristine: str, dest: str, owner: tuple[int, int]) -> None:
    """Hard-link copy of the message files; real copies of everything else."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    subprocess.run(["cp", "-al", pristine, dest], check=True)
    for name in os.listdir(dest):
        path = os.path.join(dest, name)
        if os.path.isfile(path):
            tmp = path + ".copy"
            shutil.copyfile(path, tmp)
            os.replace(tmp, path)
    for dirpath, _dirs, _files in os.walk(os.path.dirname(dest)):
        os.chown(dirpath, *owner)
    for name in os.listdir(dest):
        os.chown(os.path.join(dest, name), *owner)


def select_fetch(server: Server, count: int) -> tuple[float, str]:
    client = server.client()
    try:
        t1, data = client.run("SELECT INBOX")
        exists = int(re.search(rb"\* (\d+) EXISTS", data).group(1))
        t2, data = client.run("FETCH 1:* (UID FLAGS)")
        fetched = data.count(b" FETCH (")
    finally:
        client.close()
    if exists != count or fetched != count:
        raise RuntimeError(f"{server.name}: EXISTS {exists}, FETCH {fetched}, expected {count}")
    return t1 + t2, f"SELECT {t1:.2f}s + FETCH {t2:.2f}s"


def in_selected(server: Server, command: str) -> tuple[float, bytes]:
    client = server.client()
    try:
        client.run("SELECT INBOX")
        return client.run(command)
    finally:
        client.close()


def run_steps(server: Server, count: int) -> list[tuple[str, float, str]]:
    """Every measurement for one server: (step, seconds, note)."""
    results: list[tuple[str, float, str]] = []

    def step(name: str, fn: Callable[[], tuple[float, str]]) -> None:
        print(f"  {server.name}: {name} …", end="", flush=True)
        seconds, note = fn()
        print(f" {seconds:.3f} s {note}", flush=True)
        results.append((name, seconds, note))

    lo = max(1, count - 999)  # the newest 1,000, as a client fetches them
    header_cmd = f"UID FETCH {lo}:{count} ({HEADER_FIELDS})"

    def headers() -> tuple[float, str]:
        seconds, data = in_selected(server, header_cmd)
        return seconds, f"{data.count(b' FETCH (')} messages"

    def search(key: str, word: str) -> Callable[[], tuple[float, str]]:
        def run() -> tuple[float, str]:
            seconds, data = in_selected(server, f"SEARCH {key} {word}")
            return seconds, f"{search_count(data)} hits"
        return run

    def store() -> tuple[float, str]:
        seconds, _ = in_selected(server, f"STORE 1:{min(STORE_COUNT, count)} "
                                         "+FLAGS.SILENT (\\Flagged)")
        _, data = in_selected(server, "SEARCH FLAGGED")
        return seconds, f"{search_count(data)} flagged after"

    def restart() -> tuple[float, str]:
        server.stop()
        server.start()
        return select_fetch(server, count)

    def rebuild() -> tuple[float, str]:
        server.stop()
        deleted = server.delete_index()
        server.start()
        seconds, note = select_fetch(server, count)
        return seconds, f"{note}; deleted {', '.join(sorted(deleted)) or 'nothing'}"

    preread(server.maildir)
    load = os.getloadavg()[0]
    server.start()
    results.append(("(load average at start)", load, "1-minute load; other work on the machine"))
    step("SELECT + FETCH 1:* (UID FLAGS), no index yet", lambda: select_fetch(server, count))
    step("SELECT + FETCH 1:* (UID FLAGS), warm", lambda: select_fetch(server, count))
    step("UID FETCH 1,000 x HEADER.FIELDS (FROM TO SUBJECT DATE)", headers)
    step("UID FETCH 1,000 x HEADER.FIELDS, again", headers)
    step(f"SEARCH SUBJECT {SUBJECT_WORD}", search("SUBJECT", SUBJECT_WORD))
    step(f"SEARCH SUBJECT {SUBJECT_WORD}, again", search("SUBJECT", SUBJECT_WORD))
    step(f"SEARCH BODY {BODY_WORD} (full scan)", search("BODY", BODY_WORD))
    step(f"STORE +FLAGS.SILENT (\\Flagged) on {min(STORE_COUNT, count):,}", store)
    step("reopen after restart (index on disk)", restart)
    step("reopen after index deleted + restart (rebuild)", rebuild)
    server.stop()
    return results


def report(count: int, size: int, gen_seconds: float,
           results: dict[str, list[tuple[str, float, str]]]) -> str:
    lines = [f"# mailbox_bench {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
             f"# {count:,} messages, {size / 1e6:.0f} MB in INBOX (generated in "
             f"{gen_seconds:.0f} s, bench/generate.py seed 1); {os.cpu_count()} cores; "
             f"Python {sys.version.split()[0]}; {dovecot_version()}",
             "# seconds, wall clock at the client (loopback, plaintext); ratio = pydovecot / "
             "Dovecot", ""]
    names = list(results)
    steps = [name for name, _, _ in results[names[0]]]
    width = max(len(s) for s in steps)
    head = f"{'step':<{width}}  " + "  ".join(f"{n:>10}" for n in names)
    if len(names) == 2:
        head += f"  {'ratio':>7}"
    lines.append(head)
    for i, name in enumerate(steps):
        row = f"{name:<{width}}  " + "  ".join(f"{results[n][i][1]:>10.3f}" for n in names)
        if len(names) == 2 and not name.startswith("("):
            a, b = results[names[0]][i][1], results[names[1]][i][1]
            row += f"  {a / b if b else float('inf'):>7.2f}"
        lines.append(row)
    lines.append("")
    for n in names:
        lines.append(f"## {n}")
        for name, seconds, note in results[n]:
            unit = "" if name.startswith("(") else " s"
            lines.append(f"  {name}: {seconds:.3f}{unit}  ({note})")
    return "\n".join(lines) + "\n"


def dovecot_version() -> str:
    try:
        out = subprocess.run(["dovecot", "--version"], capture_output=True, text=True, check=True)
        return "Dovecot " + out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError):
        return "Dovecot not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-dovecot", action="store_true")
    parser.add_argument("--skip-pydovecot", action="store_true")
    parser.add_argument("--workdir", default="/var/tmp")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark uses real privilege separation")
    ensure_system_user("pdvmail")
    vmail = pwd.getpwnam("pdvmail")
    owner = (vmail.pw_uid, vmail.pw_gid)
    work = tempfile.mkdtemp(prefix="mailbox-bench-", dir=args.workdir)
    servers: list[Server] = []
    try:
        pristine = os.path.join(work, "Maildir")
        print(f"generating {args.count:,} messages in {pristine} …", flush=True)
        start = time.monotonic()
        write_maildir(pristine, MailGenerator(args.seed).messages(args.count), uid=owner)
        gen_seconds = time.monotonic() - start
        size = sum(os.path.getsize(os.path.join(pristine, "cur", n))
                   for n in os.listdir(os.path.join(pristine, "cur")))
        print(f"  {size / 1e6:.0f} MB in {gen_seconds:.0f} s", flush=True)
        if not args.skip_pydovecot:
            servers.append(Pydovecot(pristine, owner))
        if not args.skip_dovecot:
            servers.append(Dovecot(pristine, owner))
        results = {}
        for server in servers:
            results[server.name] = run_steps(server, args.count)
        text = report(args.count, size, gen_seconds, results)
        print("\n" + text)
        if not args.no_save:
            out = os.path.join(ROOT, "bench", "results",
                               f"mailbox_bench-{datetime.date.today().isoformat()}.txt")
            with open(out, "w") as f:
                f.write(text)
            print(f"written to {out}")
    finally:
        for server in servers:
            try:
                server.cleanup()
            except Exception as e:  # noqa: BLE001 - clean up the rest regardless
                print(f"cleanup of {server.name}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
