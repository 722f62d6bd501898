"""Run a private Postfix instance for SMTP AUTH tests.

:class:`Postfix` writes a config directory of its own (main.cf, master.cf
with smtpd on 127.0.0.1 and a free port, ``chroot = n`` everywhere, queue
and data directories in a temp dir, log to a file) and drives it with
``postfix -c DIR check|start|stop``.  It checks SMTP AUTH against whatever
Dovecot-protocol socket ``sasl_path`` names.  Postfix's queue must belong to
the postfix user, so this needs root; :func:`unavailable` says why it can't
run here (the tests skip on that, and fail under CI=true).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin")
SWAKS = shutil.which("swaks", path="/usr/bin:/usr/local/bin:/bin")

#: Postfix services the test smtpd needs; every one unchrooted.
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
myhostname = pydovecot-test.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
maillog_file = {dir}/postfix.log
maillog_file_prefixes = {dir}
smtpd_tls_security_level = none
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {sasl_path}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
"""


def free_port() -> int:
    """A port free now and outside the ephemeral range (see tests.harness)."""
    from tests.harness import free_port as pick

    return pick()


def unavailable() -> str | None:
    """Why a private Postfix can't run here, or None if it can."""
    if POSTFIX is None:
        return "postfix is not installed"
    if SWAKS is None:
        return "swaks is not installed"
    if os.geteuid() != 0:
        return "a Postfix instance needs root (its queue must belong to the postfix user)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no postfix user"
    return None


class Postfix:
    """A private Postfix whose smtpd authenticates through ``sasl_path``."""

    def __init__(self, sasl_path: str, extra_main_cf: str = ""):
        self.dir = tempfile.mkdtemp(prefix="pydovecot-postfix-")
        os.chmod(self.dir, 0o755)  # the postfix user walks into queue/
        self.config_dir = os.path.join(self.dir, "etc")
        self.log_path = os.path.join(self.dir, "postfix.log")
        self.port = free_port()
        self.sasl_path = sasl_path
        self.extra_main_cf = extra_main_cf
        self.started = False
        self.write_config()

    def write_config(self) -> None:
        for sub in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o755, exist_ok=True)
        with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(dir=self.dir, sasl_path=self.sasl_path) + self.extra_main_cf)
        with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        postfix_user = pwd.getpwnam("postfix")
        os.chown(os.path.join(self.dir, "data"), postfix_user.pw_uid, postfix_user.pw_gid)

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([POSTFIX, "-c", self.config_dir, *args],
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}\n{self.log()}")
        return result

    def start(self, timeout: float = 30) -> Postfix:
        self.postfix("check")
        self.postfix("start")
        self.started = True
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                    s.settimeout(5)
                    if s.recv(100).startswith(b"220"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix smtpd not answering on {self.port}\n{self.log()}")
            time.sleep(0.1)

    def master_pid(self) -> int | None:
        try:
            with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 20) -> None:
        if not self.started:
            return
        self.started = False
        pid = self.master_pid()
        self.postfix("stop", check=False)
        deadline = time.monotonic() + timeout
        while pid is not None and _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-20000:]
        except OSError:
            return ""

    def swaks(self, user: str, password: str, mech: str = "PLAIN",
              *extra: str) -> subprocess.CompletedProcess:
        """swaks up to AUTH against this smtpd; the finished process."""
        return subprocess.run(
            [SWAKS, "--server", f"127.0.0.1:{self.port}", "--auth", mech, "--auth-user", user,
             "--auth-password", password, "--quit-after", "AUTH", "--timeout", "20", *extra],
            capture_output=True, text=True, timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is as good as gone (it is not our child to reap).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
