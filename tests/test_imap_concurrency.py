"""Unsolicited responses when several sessions and deliveries share a mailbox.

End to end: two or three clients (raw sockets for exact lines, imapclient)
against IMAPSession on one Maildir storage in this process, with
deliveries through ``storage.append`` as the mail process does them; and
one process-level test through the real master with LMTP deliveries.
RFC 3501 §7.4.1 / RFC 9051 §7.5.1: no EXPUNGE during FETCH, STORE, SEARCH
(non-UID forms); sequence numbers stay consistent for every session.
"""

from __future__ import annotations

import io
import re
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests import test_imap_e2e
from tests.harness import LineClient
from tests.test_imap_condstore import client, filled
from tests.test_process import MasterTestCase, deliver, imap


class Raw(LineClient):
    """A line client for exact protocol checks."""

    def __init__(self, port: int):
        super().__init__(port, greeting=True)

    def cmd(self, text: str) -> list[bytes]:
        return self.tagged(text.encode())

    def close(self) -> None:
        self.cmd("LOGOUT")
        self.sock.close()


def untagged(lines: list[bytes], word: bytes) -> list[bytes]:
    return [x for x in lines if x.startswith(b"* ") and word in x]


class SharedMailboxTests(unittest.TestCase):
    setUp = test_imap_e2e.E2ETests.setUp
    tearDown = test_imap_e2e.E2ETests.tearDown

    def deliver(self, n: int) -> None:
        for i in range(n):
            self.storage.append("INBOX", io.BytesIO(b"Subject: d%d\r\n\r\nx\r\n" % i))

    @defer.inlineCallbacks
    def test_no_expunge_during_fetch_store_search(self):
        self.deliver(4)

        def run():
            a, b = Raw(self.addr), Raw(self.addr)
            a.cmd("SELECT INBOX")
            b.cmd("ENABLE CONDSTORE")
            b.cmd("SELECT INBOX")
            a.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
            a.cmd("EXPUNGE")
            self.deliver(1)  # a delivery while B is still in its old view
            out = {"fetch": b.cmd("FETCH 1:* (UID FLAGS)"),
                   "store": b.cmd("STORE 3 +FLAGS (\\Flagged)"),
                   "search": b.cmd("SEARCH ALL"),
                   "noop": b.cmd("NOOP"),
                   "after": b.cmd("FETCH 1:* (UID)")}
            a.cmd("STORE 1 +FLAGS (\\Answered)")
            out["flags"] = b.cmd("NOOP")
            a.close()
            b.close()
            return out

        out = yield threads.deferToThread(run)
        for name in ("fetch", "store", "search"):
            self.assertEqual(untagged(out[name], b"EXPUNGE"), [], out[name])
            self.assertTrue(out[name][-1].split()[1] == b"OK", out[name])
        # B's sequence numbers stay those of its view: message 2 (UID 2) is
        # still there during FETCH, and the delivery is announced as EXISTS.
        fetched = untagged(out["fetch"], b"FETCH (UID")
        self.assertEqual([re.match(rb"\* (\d+) FETCH \(UID (\d+)", x).groups() for x in fetched],
                         [(b"1", b"1"), (b"2", b"2"), (b"3", b"3"), (b"4", b"4")])
        self.assertIn(b"* 5 EXISTS", out["fetch"])
        self.assertIn(b"* 3 FETCH (FLAGS (\\Flagged) MODSEQ (", out["store"][0])
        self.assertEqual(untagged(out["search"], b"SEARCH"), [b"* SEARCH 1 2 3 4 5"])
        self.assertEqual(untagged(out["noop"], b"EXPUNGE"), [b"* 2 EXPUNGE"])
        self.assertEqual([x.split()[1] for x in untagged(out["after"], b"FETCH")],
                         [b"1", b"2", b"3", b"4"])
        self.assertRegex(out["flags"][0], rb"^\* 1 FETCH \(UID 1 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)$")

    @defer.inlineCallbacks
    def test_uid_commands_may_report_expunges(self):
        self.deliver(3)

        def run():
            a, b = Raw(self.addr), Raw(self.addr)
            a.cmd("SELECT INBOX")
            b.cmd("SELECT INBOX")
            a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
            a.cmd("EXPUNGE")
            out = b.cmd("UID FETCH 1:* (FLAGS)")
            a.close()
            b.close()
            return out

        out = yield threads.deferToThread(run)
        self.assertEqual(untagged(out, b"EXPUNGE"), [b"* 1 EXPUNGE"])

    @defer.inlineCallbacks
    def test_three_sessions_idle_push_and_consistency(self):
        import imapclient

        self.deliver(3)

        def run():
            a = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            b = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            c = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            for x in (a, b, c):
                x.select_folder("INBOX")
            b.idle()
            a.add_flags([1], [b"\\Seen"])
            pushed = b.idle_check(timeout=5)
            c.delete_messages([2])
            c.expunge()
            pushed += b.idle_check(timeout=5)
            self.deliver(1)
            pushed += b.idle_check(timeout=5)
            b.idle_done()
            for x in (a, b, c):
                x.noop()  # the point where expunges may be reported
            seqs = {x: y._imap.fetch("1:*", "(UID)")[1] for x, y in
                    (("a", a), ("b", b), ("c", c))}
            for x in (a, b, c):
                x.logout()
            return pushed, seqs

        pushed, seqs = yield threads.deferToThread(run)
        self.assertIn((1, b"FETCH", (b"UID", 1, b"FLAGS", (b"\\Seen",))), pushed)
        self.assertIn((2, b"EXPUNGE"), pushed)
        self.assertIn((3, b"EXISTS"), pushed)
        expected = [b"1 (UID 1)", b"2 (UID 3)", b"3 (UID 4)"]
        for name in "abc":
            self.assertEqual(seqs[name], expected, name)


class FakeStorageTests(unittest.TestCase):
    """The same rules on the modseq fake, exactly."""

    def test_expunge_is_deferred_to_noop(self):
        storage = filled(3)
        b = client(storage)
        b.send(b"s SELECT INBOX\r\n")
        storage.expunge_elsewhere("INBOX", 2)
        self.assertEqual(b.send(b"f FETCH 2 (UID)\r\n"),
                         b"* 2 FETCH (UID 2)\r\nf OK Fetch completed.\r\n")
        self.assertEqual(b.send(b"s SEARCH ALL\r\n"), b"* SEARCH 1 2 3\r\ns OK Search completed.\r\n")
        self.assertEqual(b.send(b"n NOOP\r\n"), b"* 2 EXPUNGE\r\nn OK NOOP completed.\r\n")


class ProcessTests(MasterTestCase):
    """Through the real master: LMTP deliveries and two IMAP sessions."""

    def test_deliveries_and_expunges_across_sessions(self) -> None:
        for i in range(3):
            deliver(self.master, "alice", f"m{i}")
        a, b = imap(self.master), imap(self.master)
        a.select("INBOX")
        b.enable("CONDSTORE")
        b.select("INBOX")
        a.store("2", "+FLAGS", "(\\Deleted)")
        a.expunge()
        deliver(self.master, "alice", "m3")
        deadline = time.monotonic() + 10
        while True:  # the delivery reaches the mail process asynchronously
            typ, data = b.fetch("1:*", "(UID FLAGS)")
            if b.untagged_responses.get("EXISTS") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(typ, "OK")
        self.assertNotIn("EXPUNGE", b.untagged_responses)
        self.assertEqual(len([x for x in data if b"UID" in x]), 3)
        self.assertEqual(b.response("EXISTS")[1][-1], b"4")
        b.noop()
        self.assertEqual(b.response("EXPUNGE")[1], [b"2"])
        a.store("1", "+FLAGS", "(\\Flagged)")
        b.noop()
        fetches = b.response("FETCH")[1]
        self.assertTrue(any(b"\\Flagged" in x and b"MODSEQ" in x for x in fetches), fetches)
        typ, data = b.fetch("1:*", "(UID)")
        self.assertEqual(data, [b"1 (UID 1)", b"2 (UID 3)", b"3 (UID 4)"])
        a.logout()
        b.logout()

