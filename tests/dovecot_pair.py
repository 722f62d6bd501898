"""Several IMAP sessions on one mailbox, for Dovecot 2.3 and for pydovecot.

:class:`Pair` builds on :class:`tests.dovecot_side.SideBySide` (two
Maildirs with the same messages): :meth:`Pair.dovecot` opens another
session of Debian's ``imap`` binary (PREAUTH on stdin/stdout) on Dovecot's
Maildir, :meth:`Pair.ours` another :class:`IMAPSession` on pydovecot's
storage (the one per-user storage that the mail process shares between
sessions).  Both session kinds answer ``await session.cmd(b"NOOP")`` with
every response up to the tagged one, and keep the whole transcript, so one
scenario runs on both servers and the same assertions judge both.

:class:`DovecotLogin` runs Dovecot's master with ``imap-login`` on a UNIX
socket (no TCP port), for pre-login checks.

Trusts: the tests' commands; Dovecot from the Debian package.  Needs root
and Dovecot: skips otherwise, fails under CI=true (see ``require``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.testing import StringTransport

from tests.dovecot_side import DOVECOT_IMAP, SideBySide, _read_until, require, split_responses
from tests.test_imap_session import Client

DOVECOT = "/usr/sbin/dovecot"


async def settle(value: Any) -> Any:
    """``value``, or what it fires with when it is a Deferred (storage calls
    answer plainly now and with Deferreds once the interface is async)."""
    if isinstance(value, defer.Deferred):
        return await value
    return value


class DovecotIMAP:
    """One Dovecot ``imap`` session on the pair's Dovecot Maildir."""

    def __init__(self, pair: Pair):
        env = {"USER": "nobody", "HOME": pair.dhome, "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen([DOVECOT_IMAP, "-c", pair.conf], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert self.proc.stdout is not None
        self.transcript = _read_until(self.proc.stdout, None)
        self.n = 0

    def send(self, data: bytes) -> None:
        """Raw bytes (e.g. ``DONE`` after IDLE)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    async def cmd(self, text: bytes) -> bytes:
        """Run ``text`` (LITERAL+ literals inside) and return its responses."""
        self.n += 1
        tag = b"t%d" % self.n
        self.send(tag + b" " + text + b"\r\n")
        assert self.proc.stdout is not None
        out = _read_until(self.proc.stdout, tag)
        self.transcript += out
        return out

    async def idle(self, trigger: Callable[[], Awaitable[object]], needle: bytes,
                   timeout: float = 10.0) -> bytes:
        """IDLE, run ``trigger`` once idling, wait (at most ``timeout``) for
        ``needle`` in the output, then DONE; everything up to the tagged OK."""
        self.n += 1
        tag = b"t%d" % self.n
        self.send(tag + b" IDLE\r\n")
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline()
        assert out.startswith(b"+ "), out
        await trigger()
        timer = reactor.callLater(timeout, self.send, b"DONE\r\n")

        def read() -> bytes:
            got = b""
            while needle not in got:
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line or line.startswith(tag + b" "):
                    return got + line
                got += line
            return got

        out += await threads.deferToThread(read)
        if timer.active():
            timer.cancel()
            self.send(b"DONE\r\n")
        if not any(r.startswith(tag + b" ") for r in split_responses(out)):
            out += _read_until(self.proc.stdout, tag)
        self.transcript += out
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(b"Z LOGOUT\r\n")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class OurIMAP:
    """One pydovecot session on the pair's storage (in this process)."""

    def __init__(self, storage: Any):
        self.client = Client(storage)
        self.client.start(None)
        self.transcript = self.client.take()
        self.n = 0

    def send(self, data: bytes) -> None:
        self.client.session.dataReceived(data)

    async def cmd(self, text: bytes, timeout: float = 20.0) -> bytes:
        """Run ``text`` and wait (reactor turns) for its tagged response."""
        self.n += 1
        tag = b"t%d" % self.n
        self.send(tag + b" " + text + b"\r\n")
        out = b""
        waited = 0.0
        while True:
            out += self.client.take()
            if any(r.startswith(tag + b" ") for r in split_responses(out)):
                break
            if self.client.session.closed or waited > timeout:
                raise AssertionError(f"no tagged answer to {text[:60]!r}: {out[-500:]!r}")
            await task.deferLater(reactor, 0.005, lambda: None)
            waited += 0.005
        self.transcript += out
        return out

    async def idle(self, trigger: Callable[[], Awaitable[object]], needle: bytes,
                   timeout: float = 10.0) -> bytes:
        """As :meth:`DovecotIMAP.idle`."""
        self.n += 1
        tag = b"t%d" % self.n
        self.send(tag + b" IDLE\r\n")
        out = self.client.take()
        assert out.startswith(b"+ "), out
        await trigger()
        waited = 0.0
        while needle not in out and waited < timeout:
            await task.deferLater(reactor, 0.01, lambda: None)
            waited += 0.01
            out += self.client.take()
        self.send(b"DONE\r\n")
        while not any(r.startswith(tag + b" ") for r in split_responses(out)):
            if waited > 2 * timeout:
                raise AssertionError(f"IDLE did not end: {out[-500:]!r}")
            await task.deferLater(reactor, 0.01, lambda: None)
            waited += 0.01
            out += self.client.take()
        self.transcript += out
        return out

    def close(self) -> None:
        if not self.client.session.closed:
            self.client.session.dataReceived(b"Z LOGOUT\r\n")
        if isinstance(self.client.transport, StringTransport):
            self.client.transport.clear()


class Pair(SideBySide):
    """Dovecot's and pydovecot's Maildirs with the same messages, and any
    number of sessions on each."""

    def __init__(self, messages: list[bytes]):
        super().__init__(messages)
        self.sessions: list[DovecotIMAP | OurIMAP] = []

    def dovecot(self) -> DovecotIMAP:
        s = DovecotIMAP(self)
        self.sessions.append(s)
        return s

    def ours(self) -> OurIMAP:
        s = OurIMAP(self.storage)
        self.sessions.append(s)
        return s

    def cleanup(self) -> None:
        for s in getattr(self, "sessions", []):
            s.close()
        super().cleanup()


class DovecotLogin:
    """Dovecot's master with ``imap-login`` listening on a UNIX socket only
    (static passdb/userdb; no TCP listener), stopped by :meth:`cleanup`."""

    def __init__(self) -> None:
        require()
        self.dir = tempfile.mkdtemp(prefix="dvlogin-")
        os.chmod(self.dir, 0o755)
        self.sock = os.path.join(self.dir, "imap.sock")
        self.conf = os.path.join(self.dir, "dovecot.conf")
        home = os.path.join(self.dir, "home")
        os.makedirs(home)
        shutil.chown(home, "nobody", "nogroup")
        with open(self.conf, "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = imap
ssl = no
default_internal_user = nobody
default_login_user = nobody
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={home}
}}
mail_location = maildir:{home}/Maildir
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  unix_listener {self.sock} {{
    mode = 0666
  }}
}}
""")
        self.proc = subprocess.Popen([DOVECOT, "-c", self.conf, "-F"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                self.cleanup()
                raise AssertionError(f"Dovecot did not start: {err[-1000:]!r}")
            time.sleep(0.05)

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.sock)
        got = b""
        while b"\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return s

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def exchange(s: socket.socket, data: bytes, tag: bytes = b"x") -> bytes:
    """Send ``data`` on a raw socket; read up to ``tag``'s answer or EOF."""
    try:
        s.sendall(data)
    except OSError as e:
        return b"<%s>" % type(e).__name__.encode()
    got = b""
    try:
        while not any(r.startswith(tag + b" ") or r.startswith(b"* BYE")
                      for r in split_responses(got)):
            chunk = s.recv(65536)
            if not chunk:
                got += b"<EOF>"
                break
            got += chunk
    except OSError as e:
        got += b"<%s>" % type(e).__name__.encode()
    return got
