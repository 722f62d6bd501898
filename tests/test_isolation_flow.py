"""Isolation in the shared mail process, attacked through the real master.

alice and bob are two virtual users on one mail uid, so their sessions
live in one mail process (checked from /proc).  alice attacks — pipelines
huge FETCHes without reading, pipelines a thousand commands, floods a
COMPRESS stream, sends garbage — while bob measures his NOOP round trip
and the test reads the process's VmRSS.  The stall bound is 100 ms for the
worst of many round trips; the memory bound a few MiB over the baseline.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import LineClient, Master, User, ensure_system_user

IS_ROOT = os.geteuid() == 0
BIG = 20 * 1000 * 1000  # the 20 MB message
STALL_MAX = 0.100
MiB = 1024 * 1024


def rss(pid: int) -> int:
    """The process's resident set size in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def big_message(size: int = BIG) -> bytes:
    head = (b"From: Bob <bob@example.org>\r\nTo: Alice <alice@example.org>\r\n"
            b"Subject: big\r\nMessage-ID: <big@example.org>\r\n\r\n")
    line = b"x" * 78 + b"\r\n"
    body = line * ((size - len(head)) // len(line))
    return head + body + b"y" * (size - len(head) - len(body))


class Bob:
    """bob's session: measures NOOP round trips."""

    def __init__(self, client: LineClient):
        self.client = client
        self.times: list[float] = []

    def noops(self, count: int, pause: float = 0.01) -> None:
        for _ in range(count):
            start = time.monotonic()
            reply = self.client.tagged(b"NOOP")[-1]
            self.times.append(time.monotonic() - start)
            assert b" OK " in reply, reply
            time.sleep(pause)

    @property
    def worst(self) -> float:
        return max(self.times)


class Drain(threading.Thread):
    """Reads a socket as fast as it can, counting bytes (and keeping the tail)."""

    def __init__(self, sock: socket.socket, until: bytes | None = None,
                 inflate: bool = False):
        super().__init__(daemon=True)
        self.sock = sock
        self.until = until
        self.count = 0
        self.tail = b""
        self.lines_ok = 0
        self._inflate = zlib.decompressobj(-15) if inflate else None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                if self._inflate is not None:
                    data = self._inflate.decompress(data)
                    self.lines_ok += data.count(b" OK ")
                self.count += len(data)
                self.tail = (self.tail + data)[-4096:]
                if self.until is not None and self.until in self.tail:
                    break
        except OSError:
            pass
        finally:
            self.done.set()


class IsolationCase(SynchronousTestCase):
    """A master with alice and bob on one mail uid."""

    extra = ""

    def setUp(self) -> None:
        kwargs = {}
        if IS_ROOT:
            ensure_system_user("pydovecot-null")
            ensure_system_user("pydovecot")
            ensure_system_user("pdvmail")
            kwargs = dict(login_user="pydovecot-null", internal_user="pydovecot",
                          mail_uid="pdvmail")
        self.master = Master(users=[User("alice", "secret"), User("bob", "hunter2")],
                             extra_config=self.extra, **kwargs)
        self.addCleanup(self.master.cleanup)
        self.master.start()

    def login(self, user: str, password: str, rcvbuf: int = 0) -> LineClient:
        client = LineClient(self.master.ports["imap"], timeout=30)
        if rcvbuf:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.line()
        reply = client.tagged(b"LOGIN %s %s" % (user.encode(), password.encode()))[-1]
        self.assertIn(b" OK ", reply)
        self.addCleanup(client.close)
        return client

    def mail_pid(self) -> int:
        """The one assigned mail process (both users' sessions are in it)."""
        pids = [p for p in self.master.children("pydovecot/mail")
                if "(idle)" not in _title(p)]
        self.assertEqual(len(pids), 1, [(_title(p)) for p in pids])
        return pids[0]

    def append_big(self, client: LineClient, size: int = BIG) -> None:
        data = big_message(size)
        tag = client.next_tag()
        client.send(tag + b" APPEND INBOX {%d+}\r\n" % len(data))
        client.send(data + b"\r\n")
        self.assertIn(b" OK ", client.until_tagged(tag)[-1])


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class OutputFlowTests(IsolationCase):
    def test_unread_big_fetches_stay_bounded_and_do_not_stall_bob(self) -> None:
        alice = self.login("alice", "secret", rcvbuf=64 * 1024)
        bob = Bob(self.login("bob", "hunter2"))
        pid = self.mail_pid()
        self.append_big(alice)
        alice.tagged(b"SELECT INBOX")
        alice.tagged(b"FETCH 1 (UID RFC822.SIZE)")
        bob.noops(5)
        base = rss(pid)
        # Ten pipelined fetches of the 20 MB body that alice never reads.
        alice.send(b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % i for i in range(10)))
        peak = base
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            bob.noops(1)
            peak = max(peak, rss(pid))
        stalled_worst = bob.worst
        # Now alice reads everything as fast as she can, while bob measures.
        drain = Drain(alice.sock, until=b"f9 OK Fetch completed.\r\n")
        drain.start()
        bob.times.clear()
        while not drain.done.is_set():
            bob.noops(1)
            peak = max(peak, rss(pid))
        drain.join(60)
        print(f"\nbase {base / MiB:.1f} MiB, growth {(peak - base) / MiB:.1f} MiB, "
              f"bob worst while blocked {stalled_worst * 1000:.1f} ms, "
              f"while draining {bob.worst * 1000:.1f} ms over {len(bob.times)}")
        self.assertGreater(drain.count, 10 * BIG)
        self.assertIn(b"f9 OK Fetch completed.\r\n", drain.tail)
        self.assertLess(peak - base, 16 * MiB)
        self.assertLess(stalled_worst, STALL_MAX)
        self.assertLess(bob.worst, STALL_MAX)
