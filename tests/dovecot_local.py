"""Debian's Dovecot on one private home, without its daemon.

``doveadm`` and the ``imap`` binary (PREAUTH on stdin/stdout) run with
``USER``/``HOME`` from the environment and a private config:
``mail_location = maildir:~/Maildir``, a ``/`` separator like ours,
``mail_attribute_dict = file:%h/dovecot-attributes`` and ``imap_metadata``.
Mail runs as the ``pdvmail`` system user, so the home is handed to it
(:meth:`LocalDovecot.give`) before Dovecot touches it.  Trusts Dovecot;
used only by tests, which it fails under CI=true (skips otherwise) when
Dovecot is missing or the tests do not run as root.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import IN_CI, ensure_system_user

DOVEADM = "/usr/bin/doveadm"
IMAP = "/usr/lib/dovecot/imap"


class LocalDovecot:
    """A home directory that Dovecot and pydovecot's storage share."""

    def __init__(self, case: TestCase):
        reason = None
        if not (os.path.exists(DOVEADM) and os.path.exists(IMAP)):
            reason = "Debian's dovecot-core/dovecot-imapd is not installed"
        elif os.geteuid() != 0:
            reason = "running Dovecot's mail processes as another user needs root"
        if reason:
            if IN_CI:
                case.fail(reason)
            raise SkipTest(reason)
        self.uid, self.gid = ensure_system_user("pdvmail")
        self.dir = tempfile.mkdtemp(prefix="pdv-dovecot-")
        case.addCleanup(subprocess.run, ["rm", "-rf", self.dir])
        os.chmod(self.dir, 0o755)
        self.home = os.path.join(self.dir, "home")
        self.maildir = os.path.join(self.home, "Maildir")
        os.makedirs(self.maildir)
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
mail_location = maildir:~/Maildir
mail_attribute_dict = file:%h/dovecot-attributes
mail_uid = pdvmail
mail_gid = pdvmail
first_valid_uid = 1
namespace inbox {{
  inbox = yes
  separator = /
}}
protocol imap {{
  imap_metadata = yes
}}
""")
        self.give()

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, USER="alice", HOME=self.home)

    def give(self) -> None:
        """Hand everything in the home to the mail user (after our writes)."""
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", self.home], check=True)

    def log(self) -> str:
        path = os.path.join(self.dir, "dovecot.log")
        return open(path, errors="replace").read()[-3000:] if os.path.exists(path) else ""

    def doveadm(self, *args: str, check: bool = True) -> str:
        self.give()
        proc = subprocess.run([DOVEADM, "-c", self.conf, *args], env=self.env,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"doveadm {args}: rc {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace')}{self.log()}")
        return proc.stdout.decode("utf-8", "replace")

    def imap(self) -> DovecotSession:
        self.give()
        return DovecotSession(self)


class DovecotSession:
    """One Dovecot IMAP session in PREAUTH mode over pipes."""

    def __init__(self, dovecot: LocalDovecot):
        self.proc = subprocess.Popen([IMAP, "-c", dovecot.conf], env=dovecot.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        greeting = self.proc.stdout.readline()
        if not greeting.startswith(b"* PREAUTH"):
            self.close()
            raise AssertionError(f"Dovecot imap did not start: {greeting!r} {dovecot.log()}")
        self._n = 0

    def command(self, line: str) -> list[str]:
        """Send one command; the untagged lines and the tagged one."""
        self._n += 1
        tag = f"t{self._n}"
        self.proc.stdin.write(f"{tag} {line}\r\n".encode())
        self.proc.stdin.flush()
        out = []
        while True:
            raw = self.proc.stdout.readline()
            if not raw:
                raise AssertionError(f"Dovecot imap closed the connection after {out}")
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            out.append(text)
            if text.startswith(tag + " "):
                return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
