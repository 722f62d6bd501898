"""Crash safety: SIGKILL the real mail process in the middle of APPEND,
EXPUNGE and MOVE, then check the Maildir and its index over IMAP.

The master (``tests.harness.Master``) runs for real; a client thread
drives commands over a raw socket and records which ones got their tagged
OK; the test kills the mail process (by pid, from /proc) at several
points.  After the kill a new login gets a fresh mail process, and at the
end the whole master is restarted.  Invariants:

* every message whose APPEND was acknowledged is present exactly once,
  with its flags;
* nothing is ever duplicated inside a mailbox;
* an acknowledged EXPUNGE or MOVE took effect; an unacknowledged MOVE may
  leave the message in the source (and the destination) but never loses it;
* the index loads (or is rebuilt) and agrees with the files: deleted or
  corrupted index files give back the same UIDs and flags.
"""

from __future__ import annotations

import imaplib
import os
import re
import signal
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from pydovecot.storage import index as I
from tests.harness import LineClient, Master, User, privileged

IS_ROOT = os.geteuid() == 0
SUBJECT = re.compile(rb"Subject: (\S+)")


def message(subject: str, filler: int = 0) -> bytes:
    body = b"x" * 76 + b"\r\n"
    return (f"From: a@example.org\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\n".encode()
            + body * (filler // 78 + 1))


class Raw(LineClient):
    """A minimal IMAP client on a socket (so a test controls every byte)."""

    def __init__(self, port: int):
        super().__init__(port, timeout=20, greeting=True)

    def command(self, text: bytes) -> bytes:
        return self.tagged(text)[-1]

    def append(self, box: str, flags: str, data: bytes, pause_after: int | None = None,
               on_pause=None) -> bytes:
        tag = self.next_tag()
        self.sock.sendall(tag + b" APPEND %s (%s) {%d}\r\n" % (box.encode(), flags.encode(), len(data)))
        if not self.line().startswith(b"+"):
            raise AssertionError("no continuation")
        if pause_after is not None:
            self.sock.sendall(data[:pause_after])
            on_pause()
            self.sock.sendall(data[pause_after:] + b"\r\n")
        else:
            self.sock.sendall(data + b"\r\n")
        return self.until_tagged(tag)[-1]


class CrashTests(SynchronousTestCase):
    def setUp(self) -> None:
        kwargs = privileged()
        self.master = Master(users=[User("alice", "secret")], **kwargs)
        self.addCleanup(self.master.cleanup)
        self.master.start()
        self.maildir = os.path.join(self.master.dir, "home", "alice", "Maildir")

    # -- helpers -------------------------------------------------------------

    def raw(self) -> Raw:
        c = Raw(self.master.ports["imap"])
        self.assertTrue(c.command(b"LOGIN alice secret").split()[1] == b"OK")
        return c

    def client(self) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.master.ports["imap"], timeout=20)
        c.login("alice", "secret")
        return c

    def mail_pids(self) -> list[int]:
        return [p for p in self.master.children("pydovecot/mail") if "(idle)" not in _title(p)]

    def kill_mail(self) -> None:
        for pid in self.mail_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def contents(self, box: str = "INBOX") -> list[tuple[int, str, set[str]]]:
        """(uid, subject, flags) of every message, over IMAP."""
        c = self.client()
        typ, _ = c.select(box)
        self.assertEqual(typ, "OK")
        typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        c.logout()
        out = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta, body = item
            uid = int(re.search(rb"UID (\d+)", meta).group(1))
            flags = set(re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode().split())
            flags.discard("\\Recent")
            subject = SUBJECT.search(body).group(1).decode()
            out.append((uid, subject, flags))
        return sorted(out)

    def assert_no_duplicates(self, rows) -> None:
        subjects = [s for _u, s, _f in rows]
        self.assertEqual(len(subjects), len(set(subjects)), f"duplicated: {rows}")
        uids = [u for u, _s, _f in rows]
        self.assertEqual(len(uids), len(set(uids)))

    def assert_index_valid(self, box_dir: str) -> None:
        self.assertIsNotNone(I.MailboxIndex(box_dir).load(), f"index of {box_dir} not valid")

    def restart(self) -> None:
        self.master.stop()
        self.master.start()

    # -- APPEND ------------------------------------------------------------------

    def test_kill_during_append_literal(self) -> None:
        c = self.raw()
        self.assertIn(b"OK", c.append("INBOX", "\\Seen", message("before")))
        big = message("big", 4 * 1024 * 1024)
        self.assertRaises((EOFError, OSError), c.append, "INBOX", "\\Flagged", big,
                          len(big) // 2, self.kill_mail)
        c.close()
        rows = self.contents()
        self.assertEqual([(s, f) for _u, s, f in rows], [("before", {"\\Seen"})])
        self.assertEqual(os.listdir(os.path.join(self.maildir, "new")), [])
        c = self.raw()
        self.assertIn(b"OK", c.append("INBOX", "", message("after")))
        c.close()
        rows = self.contents()
        self.assertEqual([s for _u, s, _f in rows], ["before", "after"])
        self.assertEqual([u for u, _s, _f in rows], [1, 2])

    def test_kill_right_after_append_ok(self) -> None:
        for round_ in range(3):
            c = self.raw()
            reply = c.append("INBOX", "\\Seen \\Answered $Work", message(f"acked{round_}"))
            self.kill_mail()  # as soon as the tagged OK is here
            self.assertIn(b" OK", reply)
            c.close()
        rows = self.contents()
        self.assertEqual([(s, f) for _u, s, f in rows],
                         [(f"acked{i}", {"\\Seen", "\\Answered", "$Work"}) for i in range(3)])
        self.restart()
        self.assertEqual(self.contents(), rows)
        self.assert_index_valid(self.maildir)

    def test_kill_during_append_stream(self) -> None:
        """A client appends as fast as it can; the mail process is killed
        at several points; every acknowledged message survives once."""
        acked: dict[str, str] = {}
        counter = iter(range(10**6))
        flag_sets = ["", "\\Seen", "\\Flagged $Label1", "\\Seen \\Deleted"]

        def run(stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    c = self.raw()
                except (OSError, EOFError, AssertionError):
                    time.sleep(0.05)
                    continue
                try:
                    while not stop.is_set():
                        n = next(counter)
                        flags = flag_sets[n % len(flag_sets)]
                        reply = c.append("INBOX", flags, message(f"s{n}", 20000 * (n % 3)))
                        if b" OK" in reply:
                            acked[f"s{n}"] = flags
                except (OSError, EOFError):
                    pass
                finally:
                    c.close()

        stop = threading.Event()
        t = threading.Thread(target=run, args=(stop,))
        t.start()
        try:
            for delay in (0.3, 0.011, 0.2, 0.003, 0.15, 0.05):
                time.sleep(delay)
                self.kill_mail()
                # Every round ends with an append acknowledged after the
                # kill, however slow a loaded machine makes them.
                before = len(acked)
                self.master.wait_for(lambda n=before: len(acked) > n, 30,
                                     "an acknowledged append")
            time.sleep(0.3)
        finally:
            stop.set()
            t.join(30)
        self.restart()
        rows = self.contents()
        self.assert_no_duplicates(rows)
        present = {s: f for _u, s, f in rows}
        self.assertGreater(len(acked), 5)
        for subject, flags in acked.items():
            self.assertIn(subject, present)
            self.assertEqual(present[subject], set(flags.split()), subject)
        self.assert_index_valid(self.maildir)

    # -- EXPUNGE and MOVE -----------------------------------------------------------

    def _fill(self, n: int, box: str = "INBOX") -> None:
        c = self.raw()
        for i in range(n):
            flags = "\\Deleted" if i % 2 else "\\Seen"
            self.assertIn(b" OK", c.append(box, flags, message(f"m{i}")))
        c.close()

    def test_kill_during_expunge(self) -> None:
        for round_, delay in enumerate((0.0, 0.002, 0.01, 0.03)):
            self._fill(60)
            keep = {s for _u, s, f in self.contents() if "\\Deleted" not in f}
            result: list[bytes] = []
            c = self.raw()
            c.command(b"SELECT INBOX")

            def go(c: Raw = c, result: list[bytes] = result) -> None:
                try:
                    result.append(c.command(b"EXPUNGE"))
                except (OSError, EOFError):
                    pass

            t = threading.Thread(target=go)
            t.start()
            time.sleep(delay)
            self.kill_mail()
            t.join(20)
            c.close()
            rows = self.contents()
            self.assert_no_duplicates(rows)
            present = {s for _u, s, _f in rows}
            self.assertTrue(keep <= present, f"round {round_}: lost {keep - present}")
            for _u, s, f in rows:
                if s in keep:
                    self.assertEqual(f, {"\\Seen"})
            if result and b" OK" in result[0]:
                self.assertEqual(present, keep)
            # clean up for the next round, through IMAP
            cl = self.client()
            cl.select("INBOX")
            cl.store("1:*", "+FLAGS", "\\Deleted")
            cl.expunge()
            cl.logout()
        self.restart()
        self.assertEqual(self.contents(), [])
        self.assert_index_valid(self.maildir)

    def test_kill_during_move(self) -> None:
        cl = self.client()
        cl.create("Dest")
        cl.logout()
        self._fill(40)
        everything = {s for _u, s, _f in self.contents()}
        moved_acked: set[str] = set()
        for delay in (0.0, 0.003, 0.02, 0.05):
            # a fresh batch: not yet copied to Dest by an interrupted MOVE
            in_dest = {s for _u, s, _f in self.contents("Dest")}
            rows = [r for r in self.contents() if r[1] not in in_dest]
            if len(rows) < 4:
                break
            batch = rows[:10]
            uids = ",".join(str(u) for u, _s, _f in batch)
            result: list[bytes] = []
            c = self.raw()
            c.command(b"SELECT INBOX")

            def go(c: Raw = c, uids: str = uids, result: list[bytes] = result) -> None:
                try:
                    result.append(c.command(b"UID MOVE %s Dest" % uids.encode()))
                except (OSError, EOFError):
                    pass

            t = threading.Thread(target=go)
            t.start()
            time.sleep(delay)
            self.kill_mail()
            t.join(20)
            c.close()
            src, dst = self.contents(), self.contents("Dest")
            self.assert_no_duplicates(src)
            self.assert_no_duplicates(dst)
            in_src, in_dst = {s for _u, s, _f in src}, {s for _u, s, _f in dst}
            self.assertEqual(in_src | in_dst, everything, "a message was lost")
            if result and b" OK" in result[0]:
                moved_acked |= {s for _u, s, _f in batch}
            self.assertFalse(moved_acked & in_src, "an acknowledged MOVE left the source")
            self.assertTrue(moved_acked <= in_dst)
            flags = {s: f for _u, s, f in src + dst}
            for s, f in flags.items():
                want = {"\\Deleted"} if int(s[1:]) % 2 else {"\\Seen"}
                # a copy made before the kill may keep \Deleted from the MOVE
                self.assertTrue(want <= f <= want | {"\\Deleted"}, (s, f))
        self.restart()
        self.assertEqual({s for _u, s, _f in self.contents() + self.contents("Dest")}, everything)
        self.assert_index_valid(self.maildir)
        self.assert_index_valid(os.path.join(self.maildir, ".Dest"))

    # -- the index --------------------------------------------------------------------

    def _damage_and_check(self, damage) -> None:
        self._fill(6)
        c = self.client()
        c.select("INBOX")
        c.uid("STORE", "2", "+FLAGS", "(\\Flagged $Work)")
        c.logout()
        before = self.contents()
        self.master.stop()
        damage(self.maildir)
        self.master.start()
        self.assertEqual(self.contents(), before)
        self.assert_index_valid(self.maildir)

    def test_index_deleted(self) -> None:
        self._damage_and_check(lambda d: os.unlink(os.path.join(d, I.INDEX)))

    def test_index_truncated(self) -> None:
        def damage(d: str) -> None:
            path = os.path.join(d, I.INDEX)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) - 7)
        self._damage_and_check(damage)

    def test_index_garbage(self) -> None:
        def damage(d: str) -> None:
            for suffix in ("", ".log", ".cache", ".modseq"):
                with open(os.path.join(d, I.INDEX + suffix), "wb") as f:
                    f.write(os.urandom(500))
        self._damage_and_check(damage)


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
