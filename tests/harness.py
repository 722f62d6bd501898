"""Start a real pydovecot master on a temporary config, for process tests.

The master runs as ``twistd -n pydovecot -c FILE`` in a subprocess, with
every listener on 127.0.0.1, all state in a temp dir, and
auth_failure_delay shortened.  The harness binds the inet listeners itself
(port 0, so the kernel picks a free port) and hands them to the master with
``--listen-fd NAME=FD``: no other process can take a port between the
choice and the master's start, and a restarted master gets the same ones.  Helpers read the log and find the children
(by process title) under /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from passlib.hash import sha512_crypt

from tests.certs import self_signed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI") == "true"

MASTER_SCRIPT = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from twisted.scripts.twistd import run; run()"
)


class LineClient:
    """A line-oriented IMAP client on a raw socket, for exact protocol
    checks (a test controls every byte)."""

    def __init__(self, port: int, timeout: float = 10, greeting: bool = False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.buffer = b""
        self.n = 0
        if greeting:
            self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def until_tagged(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def next_tag(self) -> bytes:
        self.n += 1
        return b"t%d" % self.n

    def tagged(self, text: bytes) -> list[bytes]:
        """Send one command under a fresh tag; every line up to its reply."""
        tag = self.next_tag()
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def close(self) -> None:
        self.sock.close()


#: Ports free_port() picks from: below Linux's ephemeral range (32768-60999),
#: so neither an outgoing connect() nor another test's bind(port 0) takes
#: one of them between our check and the server's bind.
FREE_PORT_RANGE = (20000, 32767)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for a server that cannot
    take an inherited socket (slapd, Postfix, Dovecot).  Our own master gets
    its listeners handed in instead (:func:`listening_socket`)."""
    import random

    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(*FREE_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 at a port the kernel chose."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


LISTENERS = ("imap", "imaps", "pop3", "pop3s", "lmtp")


@dataclass
class User:
    name: str
    password: str
    uid: str = ""
    gid: str = ""
    home: str = ""
    extra: str = ""

    def line(self) -> str:
        hashed = sha512_crypt.using(rounds=5000).hash(self.password)
        return (f"{self.name}:{{SHA512-CRYPT}}{hashed}:{self.uid}:{self.gid}::"
                f"{self.home}::{self.extra}\n")


@dataclass
class Master:
    """A running master and what a test needs to talk to it."""

    users: list[User] = field(default_factory=lambda: [User("alice", "secret")])
    extra_config: str = ""
    ssl: bool = False
    login_user: str | None = None  # default_login_user when root
    internal_user: str | None = None
    mail_uid: str = ""
    mail_prespawn: int = 1
    process: subprocess.Popen | None = None

    def __post_init__(self):
        self.dir = tempfile.mkdtemp(prefix="pydovecot-test-")
        os.chmod(self.dir, 0o755)
        # Held for the Master's life and handed to every master started.
        self.sockets = {name: listening_socket() for name in LISTENERS}
        self.ports = {name: sock.getsockname()[1] for name, sock in self.sockets.items()}
        self.config_path = os.path.join(self.dir, "pydovecot.conf")
        self.log_path = os.path.join(self.dir, "pydovecot.log")
        self.cert_path = os.path.join(self.dir, "cert.pem")
        self.key_path = os.path.join(self.dir, "key.pem")
        if self.ssl:
            write_self_signed(self.cert_path, self.key_path)
        self.write_config()

    # -- config ----------------------------------------------------------

    def write_config(self) -> None:
        with open(os.path.join(self.dir, "users.passwd"), "w") as f:
            for user in self.users:
                f.write(user.line())
        ssl = (f"ssl = yes\nssl_cert = <{self.cert_path}\nssl_key = <{self.key_path}\n"
               if self.ssl else "ssl = no\n")
        users = ""
        if self.login_user:
            users += f"default_login_user = {self.login_user}\n"
        if self.internal_user:
            users += f"default_internal_user = {self.internal_user}\n"
        if self.mail_uid:
            users += f"mail_uid = {self.mail_uid}\nmail_gid = {self.mail_uid}\n"
        text = f"""
protocols = imap pop3 lmtp
listen = 127.0.0.1
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.log_path}
mail_home = {self.dir}/home/%Ln
mail_location = maildir:~/Maildir
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
auth_failure_delay = 0.2 secs
auth_verbose = yes
{ssl}{users}
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {self.dir}/users.passwd
}}
userdb {{
  driver = passwd-file
  args = {self.dir}/users.passwd
}}
service imap-login {{
  inet_listener imap {{
    port = {self.ports['imap']}
  }}
  inet_listener imaps {{
    port = {self.ports['imaps'] if self.ssl else 0}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.ports['pop3']}
  }}
  inet_listener pop3s {{
    port = {self.ports['pop3s'] if self.ssl else 0}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    port = {self.ports['lmtp']}
  }}
}}
service imap {{
  process_min_avail = {self.mail_prespawn}
}}
{self.extra_config}
"""
        with open(self.config_path, "w") as f:
            f.write(text)

    # -- life cycle --------------------------------------------------------

    def start(self, timeout: float = 30) -> Master:
        self.spawn()
        self.wait_ready(timeout)
        return self

    def command(self) -> tuple[list[str], list[int]]:
        """The master's argv, and the fds it inherits (our listeners)."""
        args, fds = [], []
        for name, sock in self.sockets.items():
            if sock.fileno() >= 0:
                args.append(f"--listen-fd={name}={sock.fileno()}")
                fds.append(sock.fileno())
        argv = [sys.executable, "-c", MASTER_SCRIPT.format(root=ROOT), "-n", "--pidfile=",
                "pydovecot", "-c", self.config_path, *args]
        return argv, fds

    def spawn(self) -> subprocess.Popen:
        """Start the master without waiting for it."""
        env = dict(os.environ, PYTHONPATH=ROOT)
        if getattr(self, "stdout", None) is None:
            self.stdout = open(os.path.join(self.dir, "twistd.out"), "ab")  # noqa: SIM115
        argv, fds = self.command()
        self.process = subprocess.Popen(argv, cwd=self.dir, env=env, stdout=self.stdout,
                                        stderr=subprocess.STDOUT, pass_fds=fds)
        return self.process

    def wait_ready(self, timeout: float = 30) -> None:
        """Until IMAP, POP3 and LMTP greet and authd answers a login."""
        deadline = time.monotonic() + timeout
        pending = ["imap", "pop3", "lmtp"]
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(f"master exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"master not ready ({pending}):\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.ports[pending[0]]), 1) as s:
                    s.settimeout(2)
                    if s.recv(100):
                        pending.pop(0)
                        continue
            except OSError:
                pass
            time.sleep(0.1)
        # The mail pool is spawned at start; give it a moment to import.
        self.wait_for(lambda: len(self.children("pydovecot/mail")) >= 1, 20)

    def wait_for(self, predicate, timeout: float = 10, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def cleanup(self) -> None:
        self.stop()
        for pid in self.descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if getattr(self, "stdout", None):
            self.stdout.close()
            self.stdout = None
        for sock in self.sockets.values():
            sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- inspection --------------------------------------------------------

    def output(self) -> str:
        text = ""
        for path in (os.path.join(self.dir, "twistd.out"), self.log_path):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f"--- {os.path.basename(path)}\n" + f.read()[-20000:]
        return text

    def log(self) -> str:
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def descendants(self) -> list[int]:
        return descendants(self.process.pid) if self.process is not None else []

    def children(self, title_prefix: str) -> list[int]:
        result = []
        for pid in self.descendants():
            if title(pid).startswith(title_prefix):
                result.append(pid)
        return result


def descendants(root_pid: int) -> list[int]:
    """Every process below ``root_pid`` (not itself), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root_pid]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        found += kids
        frontier += kids
    return found


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace").strip()
    except OSError:
        return ""


def proc_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a process, from /proc."""
    uid = gid = -1
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


def write_self_signed(cert_path: str, key_path: str) -> None:
    """A self-signed localhost certificate and its key, as PEM files."""
    cert_pem, key_pem = self_signed("localhost")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    with open(key_path, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)


def privileged() -> dict:
    """Master keyword arguments for real privileges when run as root: the
    dedicated login, internal and vmail users (created when missing), so
    the master drops to them as production does; nothing otherwise."""
    if os.geteuid() != 0:
        return {}
    for name in ("pydovecot-null", "pydovecot", "pdvmail"):
        ensure_system_user(name)
    return dict(login_user="pydovecot-null", internal_user="pydovecot", mail_uid="pdvmail")


def ensure_system_user(name: str, home: str | None = None, system: bool = True) -> tuple[int, int]:
    """Create a system user (as root) if missing; (uid, gid)."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        pass
    cmd = ["useradd", "--user-group", "--shell", "/usr/sbin/nologin"]
    cmd += ["--system"] if system else []
    cmd += ["--home-dir", home, "--create-home"] if home else ["--no-create-home"]
    subprocess.run([*cmd, name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid
