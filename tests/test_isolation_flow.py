"""Isolation in the shared mail process, attacked through the real master.

alice and bob are two virtual users on one mail uid, so their sessions
live in one mail process (checked from /proc).  alice attacks — pipelines
huge FETCHes without reading, pipelines a thousand commands, floods a
COMPRESS stream, sends garbage — while bob measures his NOOP round trip
and the test reads the process's VmRSS.  The stall bound is 100 ms for the
worst of many round trips; the memory bound a few MiB over the baseline.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import LineClient, Master, User, privileged

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

    def watch(self, pid: int, done: Callable[[], bool], peak: int) -> int:
        """NOOPs until ``done()``, sampling ``pid``'s RSS after each; the
        highest RSS seen (starting from ``peak``)."""
        while not done():
            self.noops(1)
            peak = max(peak, rss(pid))
        return peak


READER_SCRIPT = r"""
import json, os, socket, sys, zlib
fd, until, want, inflate = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4] == "1"
os.nice(10)  # the mail process and bob come first
sock = socket.socket(fileno=fd)
sock.settimeout(120)  # the fd is shared with the parent, which keeps it non-blocking
z = zlib.decompressobj(-15) if inflate else None
count = lines = bad = 0
tail = rest = b""
def take(data):
    global count, lines, bad, tail, rest
    if z is not None:
        data = z.decompress(data)
    count += len(data)
    tail = (tail + data)[-4096:]
    if want:
        parts = (rest + data).split(b"\r\n")
        rest = parts.pop()
        lines += len(parts)
        bad += sum(1 for line in parts if b" BAD " in line or b" NO " in line)
take(sys.stdin.buffer.read())
try:
    while not (want and lines >= want) and not (until and until in tail):
        data = sock.recv(1 << 20)
        if not data:
            break
        take(data)
except OSError:
    pass
print(json.dumps({"count": count, "lines": lines, "bad": bad, "tail": tail.decode("latin-1")}))
"""


class _Done:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def is_set(self) -> bool:
        return self.proc.poll() is not None


class Drain:
    """Reads a socket as fast as it can in a child process (so that its
    work does not disturb bob's timing here), counting bytes and lines."""

    def __init__(self, sock: socket.socket, until: bytes | None = None, want: int = 0,
                 inflate: bool = False, buffered: bytes = b""):
        self.sock = sock
        self.args = [(until or b"").decode(), str(want), "1" if inflate else "0"]
        self.buffered = buffered
        self.count = self.lines = self.bad = 0
        self.tail = b""

    def start(self) -> None:
        fd = self.sock.fileno()
        self.proc = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, str(fd), *self.args],
                                     pass_fds=[fd], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.proc.stdin.write(self.buffered)
        self.proc.stdin.close()
        self.done = _Done(self.proc)

    def join(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        if out:
            result = json.loads(out)
            self.count, self.lines, self.bad = result["count"], result["lines"], result["bad"]
            self.tail = result["tail"].encode("latin-1")


def LineCount(sock: socket.socket, want: int, inflate: bool = False,  # noqa: N802
              buffered: bytes = b"") -> Drain:
    """A Drain that stops after ``want`` lines."""
    return Drain(sock, want=want, inflate=inflate, buffered=buffered)


class IsolationCase(SynchronousTestCase):
    """A master with alice and bob on one mail uid."""

    extra = ""

    def setUp(self) -> None:
        kwargs = privileged()
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
        deadline = time.monotonic() + 3
        peak = bob.watch(pid, lambda: time.monotonic() >= deadline, base)
        stalled_worst = bob.worst
        # Now alice reads everything as fast as she can, while bob measures.
        drain = Drain(alice.sock, until=b"f9 OK Fetch completed.\r\n")
        drain.start()
        bob.times.clear()
        peak = bob.watch(pid, drain.done.is_set, peak)
        drain.join(60)
        print(f"\nbase {base / MiB:.1f} MiB, growth {(peak - base) / MiB:.1f} MiB, "
              f"bob worst while blocked {stalled_worst * 1000:.1f} ms, "
              f"while draining {bob.worst * 1000:.1f} ms over {len(bob.times)}")
        self.assertGreater(drain.count, 10 * BIG)
        self.assertIn(b"f9 OK Fetch completed.\r\n", drain.tail)
        self.assertLess(peak - base, 16 * MiB)
        self.assertLess(stalled_worst, STALL_MAX)
        self.assertLess(bob.worst, STALL_MAX)


class BigPartTests(IsolationCase):
    def test_parsing_big_messages_does_not_stall_bob(self) -> None:
        alice = self.login("alice", "secret")
        bob = Bob(self.login("bob", "hunter2"))
        pid = self.mail_pid()
        self.append_big(alice)
        alice.tagged(b"SELECT INBOX")
        bob.noops(5)
        base = rss(pid)
        alice.send(b"".join(b"b%d FETCH 1 (BODYSTRUCTURE BODY.PEEK[1] BINARY.PEEK[1])\r\n" % i
                            for i in range(5)))
        drain = Drain(alice.sock, until=b"b4 OK Fetch completed.\r\n")
        drain.start()
        peak = base
        peak = bob.watch(pid, drain.done.is_set, peak)
        drain.join(60)
        print(f"\ngrowth {(peak - base) / MiB:.1f} MiB, bob worst {bob.worst * 1000:.1f} ms "
              f"over {len(bob.times)}")
        self.assertIn(b"b4 OK Fetch completed.\r\n", drain.tail)
        self.assertGreater(drain.count, 5 * 2 * (BIG - 200))
        self.assertLess(bob.worst, STALL_MAX)
        self.assertLess(peak - base, 5 * BIG)  # one message at a time, never N of them


def deflate(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)


class PipelineTests(IsolationCase):
    def test_a_thousand_pipelined_commands_do_not_stall_bob(self) -> None:
        alice = self.login("alice", "secret")
        bob = Bob(self.login("bob", "hunter2"))
        pid = self.mail_pid()
        for n in range(30):
            msg = b"Subject: m%d\r\nFrom: <x@example.org>\r\n\r\nbody %d\r\n" % (n, n)
            alice.tagged(b"APPEND INBOX {%d+}\r\n%s" % (len(msg), msg))
        alice.tagged(b"SELECT INBOX")
        bob.noops(5)
        base = rss(pid)
        commands = [b"FETCH 1:* (FLAGS UID ENVELOPE BODYSTRUCTURE)", b"STATUS INBOX (MESSAGES UNSEEN)",
                    b'LIST "" *', b"SEARCH SUBJECT m1", b"NOOP"]
        batch = b"".join(b"p%d %s\r\n" % (i, commands[i % len(commands)]) for i in range(1000))
        start = time.monotonic()
        alice.send(batch)
        # Every reply to the 1000 commands: 200 FETCHes of 30 lines, 200 of
        # each other command with its untagged lines, then the tagged ones.
        want = 200 * 31 + 200 * 2 + 200 * 2 + 200 * 2 + 200
        reader = LineCount(alice.sock, want, buffered=alice.buffer)
        reader.start()
        peak = base
        peak = bob.watch(pid, reader.done.is_set, peak)
        reader.join(30)
        elapsed = time.monotonic() - start
        print(f"\n1000 commands in {elapsed:.2f} s, growth {(peak - base) / MiB:.1f} MiB, "
              f"bob worst {bob.worst * 1000:.1f} ms over {len(bob.times)}")
        self.assertEqual(reader.lines, want)
        self.assertEqual(reader.bad, 0)
        self.assertLess(bob.worst, STALL_MAX)


class CompressTests(IsolationCase):
    def test_a_deflate_bomb_of_noops_is_paced(self) -> None:
        alice = self.login("alice", "secret")
        bob = Bob(self.login("bob", "hunter2"))
        pid = self.mail_pid()
        self.assertIn(b"OK", alice.tagged(b"COMPRESS DEFLATE")[-1])
        count = 400_000
        bomb = deflate(b"a NOOP\r\n" * count)
        self.assertLess(len(bomb), 8 * 1024)
        bob.noops(5)
        base = rss(pid)
        start = time.monotonic()
        alice.send(bomb)
        reader = LineCount(alice.sock, count, inflate=True, buffered=alice.buffer)
        reader.start()
        peak = base
        peak = bob.watch(pid, lambda: reader.done.is_set() or time.monotonic() - start >= 60, peak)
        reader.join(5)
        elapsed = time.monotonic() - start
        print(f"\n{len(bomb)} bytes of deflate = {count} NOOPs answered in {elapsed:.1f} s, "
              f"growth {(peak - base) / MiB:.1f} MiB, "
              f"bob worst {bob.worst * 1000:.1f} ms over {len(bob.times)}")
        self.assertEqual(reader.lines, count)
        self.assertEqual(reader.bad, 0)
        self.assertLess(peak - base, 16 * MiB)
        self.assertLess(bob.worst, STALL_MAX)


class BadInputTests(IsolationCase):
    def test_twenty_invalid_commands_then_bye(self) -> None:
        alice = self.login("alice", "secret")
        for i in range(19):
            self.assertIn(b" BAD ", alice.tagged(b"FROBNICATE %d" % i)[-1])
        alice.send(b"x20 FROBNICATE\r\n")
        self.assertTrue(alice.line().startswith(b"x20 BAD "))
        self.assertEqual(alice.line(), b"* BYE Too many invalid IMAP commands.")
        self.assertRaises(EOFError, alice.line)
        self.master.wait_for(lambda: "Too many invalid IMAP commands" in self.master.log(),
                             what="log line")
        self.assertNotIn("Traceback", self.master.log())

    def test_pop3_twenty_bad_commands(self) -> None:
        pop = LineClient(self.master.ports["pop3"], timeout=30)
        self.addCleanup(pop.close)
        pop.line()
        pop.send(b"USER alice\r\n")
        pop.line()
        pop.send(b"PASS secret\r\n")
        self.assertTrue(pop.line().startswith(b"+OK"))
        pop.send(b"BOGUS\r\n" * 19 + b"RETR 99\r\n")
        for _ in range(20):
            self.assertTrue(pop.line().startswith(b"-ERR"))
        self.assertEqual(pop.line(), b"-ERR Too many bad commands.")
        self.assertRaises(EOFError, pop.line)

    def test_deep_lists_get_bad_and_no_traceback(self) -> None:
        alice = self.login("alice", "secret")
        alice.tagged(b"SELECT INBOX")
        for depth in (60_000, 40):
            reply = alice.tagged(b"FETCH 1 " + b"(" * depth + b"FLAGS" + b")" * min(depth, 100))
            self.assertTrue(reply[-1].split(b" ", 1)[1].startswith(b"BAD [LIMIT]"), reply[-1][:80])
        self.assertIn(b" OK ", alice.tagged(b"NOOP")[-1])
        log = self.master.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("RecursionError", log)


class AutologoutTests(IsolationCase):
    extra = "imap_autologout = 2 secs\npop3_autologout = 2 secs\nimap_idle_notify_interval = 1 secs\n"

    def test_idle_sessions_are_logged_out_but_idle_keepalives_count(self) -> None:
        idle = self.login("bob", "hunter2")
        idle.tagged(b"SELECT INBOX")
        idle.send(b"i IDLE\r\n")
        self.assertEqual(idle.line(), b"+ idling")
        quiet = self.login("alice", "secret")
        pop = LineClient(self.master.ports["pop3"], timeout=30)
        self.addCleanup(pop.close)
        pop.line()
        pop.send(b"USER alice\r\nPASS secret\r\n")
        pop.line()
        self.assertTrue(pop.line().startswith(b"+OK"))
        start = time.monotonic()
        self.assertEqual(quiet.line(), b"* BYE Disconnected for inactivity.")
        self.assertGreater(time.monotonic() - start, 1.5)
        self.assertRaises(EOFError, quiet.line)
        self.assertEqual(pop.line(), b"-ERR Disconnected for inactivity.")
        self.assertRaises(EOFError, pop.line)
        # IDLE sent "* OK Still here" every second and is still up after 4 s.
        keepalives = 0
        while time.monotonic() - start < 4:
            self.assertEqual(idle.line(), b"* OK Still here")
            keepalives += 1
        self.assertGreaterEqual(keepalives, 2)
        idle.send(b"DONE\r\n")
        self.assertEqual(idle.until_tagged(b"i")[-1], b"i OK Idle completed.")


    def test_a_client_that_stops_reading_is_cut_at_autologout(self) -> None:
        alice = self.login("alice", "secret", rcvbuf=64 * 1024)
        self.append_big(alice, 10 * 1000 * 1000)
        alice.tagged(b"SELECT INBOX")
        alice.send(b"f FETCH 1 BODY.PEEK[]\r\n")
        self.master.wait_for(lambda: "Disconnected for inactivity" in self.master.log(), 20,
                             what="autologout of the blocked session")
        drain = Drain(alice.sock)
        drain.start()
        drain.join(20)
        self.assertTrue(drain.done.is_set())  # the server closed the connection
        self.assertLess(drain.count, 10 * 1000 * 1000)


class POP3FlowTests(IsolationCase):
    def test_unread_pop3_retrs_stay_bounded_and_do_not_stall_bob(self) -> None:
        alice = self.login("alice", "secret")
        bob = Bob(self.login("bob", "hunter2"))
        pid = self.mail_pid()
        self.append_big(alice)
        alice.tagged(b"LOGOUT")
        pop = LineClient(self.master.ports["pop3"], timeout=30)
        pop.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.addCleanup(pop.close)
        pop.line()
        pop.send(b"USER alice\r\nPASS secret\r\n")
        pop.line()
        self.assertTrue(pop.line().startswith(b"+OK"))
        self.assertEqual(self.mail_pid(), pid)
        bob.noops(5)
        base = rss(pid)
        pop.send(b"RETR 1\r\n" * 10 + b"LIST\r\nUIDL\r\nQUIT\r\n")
        deadline = time.monotonic() + 3
        peak = bob.watch(pid, lambda: time.monotonic() >= deadline, base)
        blocked_worst = bob.worst
        drain = Drain(pop.sock, until=b"+OK Logging out.\r\n")
        drain.start()
        bob.times.clear()
        peak = bob.watch(pid, drain.done.is_set, peak)
        drain.join(60)
        print(f"\ngrowth {(peak - base) / MiB:.1f} MiB, bob worst while blocked "
              f"{blocked_worst * 1000:.1f} ms, while draining {bob.worst * 1000:.1f} ms")
        self.assertGreater(drain.count, 10 * BIG)
        self.assertIn(b"+OK Logging out.\r\n", drain.tail)
        self.assertLess(peak - base, 16 * MiB)
        self.assertLess(blocked_worst, STALL_MAX)
        self.assertLess(bob.worst, STALL_MAX)


class ManyMailboxesTests(IsolationCase):
    def test_list_status_of_many_mailboxes_does_not_stall_bob(self) -> None:
        alice = self.login("alice", "secret")
        bob = Bob(self.login("bob", "hunter2"))
        pid = self.mail_pid()
        maildir = os.path.join(self.master.dir, "home", "alice", "Maildir")
        self.assertTrue(os.path.isdir(maildir))
        owner = os.stat(maildir)
        # 500 mailboxes: the storage's list_mailboxes() is one synchronous
        # call (about 25 ms for 1,000 and 85 ms for 5,000 here, more on a
        # loaded machine); everything after it is sliced.
        count = 500
        for n in range(count):
            box = os.path.join(maildir, f".box{n:04d}")
            for sub in ("", "cur", "new", "tmp"):
                path = os.path.join(box, sub)
                os.mkdir(path, 0o700)
                os.chown(path, owner.st_uid, owner.st_gid)
        # The first STATUS of a mailbox writes its uidlist and index (with
        # fsyncs, storage's cost): warm 200 of them before measuring.
        warm = alice.tagged(b'LIST "" "box00*" RETURN (STATUS (MESSAGES))')
        self.assertEqual(len(warm), 2 * 100 + 1)
        warm = alice.tagged(b'LIST "" "box01*" RETURN (STATUS (MESSAGES))')
        bob.noops(5)
        batch = (b'l1 LIST "" *\r\n'
                   b'l2 LIST "" ("box00*" "box01*") RETURN (STATUS (MESSAGES UNSEEN))\r\n'
                   b'l3 LSUB "" *\r\nl4 LIST "" *\r\n'
                   + b"".join(b"s%d STATUS box%04d (MESSAGES UIDNEXT)\r\n" % (n, n)
                              for n in range(200)))
        alice.send(batch * 10)
        want = 10 * ((count + 2) + (2 * 200 + 1) + 1 + (count + 2) + 2 * 200)
        reader = LineCount(alice.sock, want, buffered=alice.buffer)
        reader.start()
        start = time.monotonic()
        while not reader.done.is_set() and time.monotonic() - start < 60:
            bob.noops(1)
        reader.join(5)
        print(f"\n10 x (LIST of {count} mailboxes twice, LIST-STATUS and STATUS of 200) in "
              f"{time.monotonic() - start:.1f} s, bob worst {bob.worst * 1000:.1f} ms "
              f"over {len(bob.times)}")
        self.assertEqual(reader.lines, want)
        self.assertEqual(reader.bad, 0)
        self.assertLess(bob.worst, STALL_MAX)
        self.assertEqual(self.mail_pid(), pid)
