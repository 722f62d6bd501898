"""Authentications per second through the full login path, next to Dovecot.

Each round: connect to the IMAP port, ``LOGIN``, wait for the tagged OK,
``LOGOUT``.  Several client threads run for a bounded time and count; the
same users and passdb serve pydovecot (imap-login → authd → mail process)
and Debian's Dovecot, configured the same way, in the same run.

Backends: ``passwd-file`` (SHA512-CRYPT), ``ldap`` (auth-bind, a private
slapd), ``pgsql`` (the machine's PostgreSQL, a database made for the run).

Run as root:  python3 bench/auth_bench.py [--backend passwd-file ldap pgsql]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from authd import schemes  # noqa: E402
from bench.dovecot import PrivateDovecot, ensure_packages  # noqa: E402
from tests.harness import Master, User, ensure_system_user  # noqa: E402

USERS = 50
PASSWORD = "bench-pw"


def login_round(port: int, user: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""

        def until(tag: bytes) -> bytes:
            nonlocal buf
            while True:
                while b"\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise EOFError(buf)
                    buf += chunk
                line, buf = buf.split(b"\r\n", 1)
                if line.startswith(tag):
                    return line

        until(b"* OK")
        sock.sendall(f"a LOGIN {user} {PASSWORD}\r\n".encode())
        ok = until(b"a ").startswith(b"a OK")
        sock.sendall(b"b LOGOUT\r\n")
        try:
            until(b"b ")
        except (EOFError, OSError):
            pass
        return ok


def throughput(port: int, users: list[str], threads: int, seconds: float,
               max_rounds: int = 100_000) -> dict:
    """Logins/s over ``seconds`` with ``threads`` clients (bounded)."""
    done = [0]
    failed = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(n: int) -> None:
        i = n
        while time.monotonic() < deadline:
            with lock:
                if done[0] + failed[0] >= max_rounds:
                    return
            try:
                ok = login_round(port, users[i % len(users)])
            except OSError:
                ok = False
            with lock:
                if ok:
                    done[0] += 1
                else:
                    failed[0] += 1
            i += threads

    start = time.monotonic()
    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - start
    return {"per_second": done[0] / elapsed, "ok": done[0], "failed": failed[0],
            "seconds": elapsed}


# -- backends ------------------------------------------------------------------


class PasswdFileBackend:
    name = "passwd-file SHA512-CRYPT"

    def setup(self, workdir: str) -> None:
        self.path = os.path.join(workdir, "bench.passwd")
        with open(self.path, "w") as f:
            for i in range(USERS):
                # generate() returns the hash with its {SHA512-CRYPT} prefix.
                f.write(f"b{i:03d}:{schemes.generate(PASSWORD, 'SHA512-CRYPT')}::::::\n")

    def pydovecot_config(self) -> str:
        return f"passdb {{\n  driver = passwd-file\n  args = {self.path}\n}}\n"

    dovecot_config = pydovecot_config

    def teardown(self) -> None:
        pass


class LdapBackend:
    """auth-bind against a private slapd holding the bench users."""

    name = "LDAP auth-bind"

    def setup(self, workdir: str) -> None:
        from tests import slapd

        ensure_packages("dovecot-ldap")
        slapd.USERS = {f"b{i:03d}": (PASSWORD, "SSHA", 5000 + i) for i in range(USERS)}
        self.server = slapd.Slapd()
        self.server.start()
        self.path = os.path.join(workdir, "dovecot-ldap.conf.ext")
        with open(self.path, "w") as f:
            f.write(f"uris = {self.server.uri}\n"
                    f"dn = {slapd.SERVICE_DN}\ndnpass = {slapd.SERVICE_PW}\n"
                    f"auth_bind = yes\nbase = {slapd.PEOPLE}\nscope = subtree\n"
                    "pass_filter = (&(objectClass=posixAccount)(uid=%n))\n")
        os.chmod(self.path, 0o600)

    def pydovecot_config(self) -> str:
        return f"passdb {{\n  driver = ldap\n  args = {self.path}\n}}\n"

    dovecot_config = pydovecot_config

    def teardown(self) -> None:
        self.server.cleanup()


class PgsqlBackend:
    """password_query on the machine's PostgreSQL, in a database made for
    the run; SHA512-CRYPT hashes, as in the passwd-file case."""

    name = "PostgreSQL password_query"

    def setup(self, workdir: str) -> None:
        import psycopg

        ensure_packages("dovecot-pgsql")
        self.db = f"pydovecot_bench_{os.getpid()}"
        self.admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.db}")
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={self.db}",
                             autocommit=True) as conn:
            conn.execute("CREATE TABLE users (userid text PRIMARY KEY, password text)")
            for i in range(USERS):
                conn.execute("INSERT INTO users VALUES (%s, %s)",
                             (f"b{i:03d}", schemes.generate(PASSWORD, "SHA512-CRYPT")))
        self.path = os.path.join(workdir, "dovecot-sql.conf.ext")
        with open(self.path, "w") as f:
            f.write("driver = pgsql\n"
                    f"connect = host=127.0.0.1 port=5432 user=postgres dbname={self.db}\n"
                    "default_pass_scheme = SHA512-CRYPT\n"
                    "password_query = SELECT userid AS user, password FROM users "
                    "WHERE userid = '%u'\n")
        os.chmod(self.path, 0o600)

    def pydovecot_config(self) -> str:
        return f"passdb {{\n  driver = sql\n  args = {self.path}\n}}\n"

    dovecot_config = pydovecot_config

    def teardown(self) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")


BACKENDS = {"passwd-file": PasswdFileBackend, "ldap": LdapBackend, "pgsql": PgsqlBackend}


# -- servers -------------------------------------------------------------------


def run_pydovecot(backend, args) -> dict:
    ensure_system_user("pydovecot-null")
    ensure_system_user("pydovecot")
    ensure_system_user("pdvmail")
    master = Master(users=[User("unused", "x")], login_user="pydovecot-null",
                    internal_user="pydovecot", mail_uid="pdvmail")
    # Replace the harness's passdb with the backend's (the userdb stays a
    # passwd-file with every user: a userdb lookup is part of every login).
    with open(os.path.join(master.dir, "users.passwd"), "w") as f:
        for i in range(USERS):
            f.write(f"b{i:03d}:::::::\n")
    text = open(master.config_path).read()
    start = text.index("passdb {")
    end = text.index("}", start) + 1
    text = text[:start] + backend.pydovecot_config() + text[end:]
    text += "auth_verbose = no\nauth_failure_delay = 0\n"
    with open(master.config_path, "w") as f:
        f.write(text)
    try:
        master.start()
        port = master.ports["imap"]
        users = [f"b{i:03d}" for i in range(USERS)]
        throughput(port, users, args.threads, 2)  # warm up
        return throughput(port, users, args.threads, args.seconds)
    finally:
        master.cleanup()


DOVECOT_USERDB = """
userdb {
  driver = static
  args = uid=pdvmail gid=pdvmail home={dir}/home/%u
}
"""


def run_dovecot(backend, args) -> dict:
    server = PrivateDovecot(backend.dovecot_config() + DOVECOT_USERDB, "dovecot-auth-bench-")
    vmail = pwd.getpwnam("pdvmail")
    os.makedirs(server.path("home"))
    os.chown(server.path("home"), vmail.pw_uid, vmail.pw_gid)
    try:
        server.start()
        users = [f"b{i:03d}" for i in range(USERS)]
        throughput(server.port, users, args.threads, 2)
        return throughput(server.port, users, args.threads, args.seconds)
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--skip-dovecot", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    for name in args.backend:
        backend = BACKENDS[name]()
        workdir = tempfile.mkdtemp(prefix="auth-bench-")
        os.chmod(workdir, 0o755)
        backend.setup(workdir)
        try:
            ours = run_pydovecot(backend, args)
            theirs = None if args.skip_dovecot else run_dovecot(backend, args)
        finally:
            backend.teardown()
            shutil.rmtree(workdir, ignore_errors=True)
        line = f"{backend.name}: pydovecot {ours['per_second']:.0f} logins/s ({ours['ok']} ok, " \
               f"{ours['failed']} failed)"
        if theirs:
            line += f"; Dovecot {theirs['per_second']:.0f} logins/s ({theirs['failed']} failed)" \
                    f"; ratio {ours['per_second'] / max(theirs['per_second'], 1e-9):.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
