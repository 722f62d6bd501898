"""A private instance of Debian's Dovecot for side-by-side benchmarks.

Each benchmark runs the real Dovecot next to pydovecot on the same data:
IMAP only, on a free 127.0.0.1 port, with its own base_dir, state_dir and
log in a temp dir, and the passdb/userdb sections the benchmark passes in.
Installing the package never starts the system service (policy-rc.d).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from tests.harness import descendants, free_port

CONF = """
protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 100
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{sections}
"""


def ensure_packages(*names: str) -> None:
    """Debian packages (dovecot-imapd, dovecot-ldap, …) without services."""
    missing = [n for n in names
               if subprocess.run(["dpkg", "-s", n], capture_output=True).returncode != 0]
    if missing:
        with open("/usr/sbin/policy-rc.d", "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod("/usr/sbin/policy-rc.d", 0o755)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


class PrivateDovecot:
    """One Dovecot instance; ``sections`` holds its passdb/userdb/service
    blocks in Dovecot's syntax, with ``{dir}`` for the instance's directory."""

    def __init__(self, sections: str, prefix: str = "dovecot-bench-"):
        ensure_packages("dovecot-imapd")
        self.binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        self.dir = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(dir=self.dir, port=self.port,
                                sections=sections.replace("{dir}", self.dir)))

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def master_pid(self) -> int | None:
        try:
            with open(self.path("run", "master.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def start(self, timeout: float = 30) -> None:
        subprocess.run([self.binary, "-c", self.conf], check=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, timeout: float = 30) -> None:
        pid = self.master_pid
        pids = [pid, *descendants(pid)] if pid else []
        subprocess.run([self.binary, "-c", self.conf, "stop"], check=False)
        deadline = time.monotonic() + timeout
        while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)

    def cleanup(self) -> None:
        pid = self.master_pid
        if pid and os.path.exists(f"/proc/{pid}"):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
