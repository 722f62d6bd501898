"""Unit tests for the IMAP session's flow control and fair scheduling
(pydovecot.imap.session, fetch streaming, parser depth), over a
StringTransport whose back-pressure the test drives by hand."""

from __future__ import annotations

import io
import re

from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.trial import unittest

from pydovecot.imap import fetch, session
from pydovecot.imap.parser import MAX_LIST_DEPTH
from tests.imap_fakes import FakeStorage
from tests.test_imap_session import Client


def big(lines: int, eol: bytes = b"\n") -> bytes:
    head = b"From: a@example.org" + eol + b"Subject: big" + eol + eol
    return head + b"".join(b"line %06d " % i + b"z" * 60 + eol for i in range(lines))


def norm(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


async def until(pred, timeout: float = 10.0) -> None:
    waited = 0.0
    while not pred():
        if waited > timeout:
            raise AssertionError("timed out")
        await task.deferLater(_reactor, 0.01, lambda: None)
        waited += 0.01


def literal(out: bytes, label: bytes) -> bytes:
    m = re.search(re.escape(label) + rb" ~?\{(\d+)\}\r\n", out)
    assert m is not None, out[:200]
    return out[m.end() : m.end() + int(m.group(1))]


class StreamingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.storage = FakeStorage()
        self.data = big(6000)  # ~450 KB, LF line ends: streamed
        self.storage.append("INBOX", io.BytesIO(self.data))
        self.c = Client(self.storage)
        self.c.start()
        self.c.send(b"s SELECT INBOX\r\n")
        self.out = b""

    def take(self) -> bytes:
        self.out += self.c.take()
        return self.out

    async def test_streamed_literals_match_the_in_memory_ones(self) -> None:
        self.c.session.dataReceived(
            b"a FETCH 1 (BODY.PEEK[] BODY.PEEK[TEXT] BODY.PEEK[]<100.5000> RFC822.SIZE)\r\n"
            b"b FETCH 1 (BINARY.PEEK[] BODY.PEEK[TEXT]<440000.100000>)\r\n")
        await until(lambda: b"b OK Fetch completed." in self.take())
        whole = norm(self.data)
        body = whole[whole.index(b"\r\n\r\n") + 4 :]
        self.assertIn(b"RFC822.SIZE %d" % len(whole), self.out)
        self.assertEqual(literal(self.out, b"BODY[]"), whole)
        self.assertEqual(literal(self.out, b"BODY[TEXT]"), body)
        self.assertEqual(literal(self.out, b"BODY[]<100>"), whole[100:5100])
        self.assertEqual(literal(self.out, b"BINARY[]"), whole)
        self.assertEqual(literal(self.out, b"BODY[TEXT]<440000>"), body[440000:540000])
        self.assertTrue(self.out.endswith(b"b OK Fetch completed.\r\n"))

    async def test_big_message_parsed_in_steps_answers_like_in_memory(self) -> None:
        self.c.session.dataReceived(b"a FETCH 1 (BODYSTRUCTURE BODY.PEEK[1] ENVELOPE BODY.PEEK[])\r\n")
        await until(lambda: b"a OK Fetch completed." in self.take())
        from pydovecot.imap import mime

        msg = mime.ParsedMessage(norm(self.data))
        self.assertIn(b"BODYSTRUCTURE " + mime.bodystructure(msg.root, True), self.out)
        self.assertIn(b"ENVELOPE " + mime.envelope(msg.root), self.out)
        body = norm(self.data)[msg.root.body_start:]
        self.assertEqual(literal(self.out, b"BODY[1]"), body)
        self.assertEqual(literal(self.out, b"BODY[]"), norm(self.data))

    async def test_big_message_item_steps_keep_the_response_shape(self) -> None:
        self.c.session.dataReceived(b"a FETCH 1 (UID BODY[1] FLAGS RFC822.SIZE FLAGS)\r\n"
                                    b"b FETCH 1 (UID BINARY.PEEK[1])\r\n")
        await until(lambda: b"b OK Fetch completed." in self.take())
        size = len(norm(self.data))
        self.assertTrue(self.out.startswith(b"* 1 FETCH (UID 1 BODY[1] {"), self.out[:60])
        end = self.out.index(b"\r\na OK")
        self.assertEqual(self.out[end - 60 : end].split(b"\r\n")[-1],
                         b" FLAGS (\\Recent \\Seen) RFC822.SIZE %d)" % size)
        self.assertEqual(self.out.count(b"FLAGS"), 1)
        self.assertIn(b"\r\n* 1 FETCH (UID 1 BINARY[1] {", self.out)
        self.assertTrue(self.out.endswith(b")\r\nb OK Fetch completed.\r\n"))

    async def test_a_client_that_does_not_read_pauses_the_fetch(self) -> None:
        s = self.c.session
        transport = self.c.transport
        bound = 128 * 1024

        def write(data: bytes, _write=transport.write) -> None:  # a FileDescriptor's pause
            _write(data)
            if len(transport.value()) > bound:
                s._output.pauseProducing()

        transport.write = write
        s.dataReceived(b"a FETCH 1 BODY.PEEK[]\r\nb NOOP\r\n")
        await until(lambda: s._output_paused)
        await task.deferLater(_reactor, 0.1, lambda: None)
        before = len(transport.value())
        self.assertLess(before, bound + 2 * session.OUTPUT_CHUNK + session.FLUSH_SIZE)
        self.assertNotIn(b"b OK", transport.value())
        while b"b OK NOOP completed." not in self.out:  # the client reads, a bit at a time
            self.take()
            s._output.resumeProducing()
            await task.deferLater(_reactor, 0.01, lambda: None)
        self.assertEqual(literal(self.out, b"BODY[]"), norm(self.data))

    def test_scan_message_finds_the_body_across_chunks(self) -> None:
        for data in (b"\r\nbody", b"A: b\n\nbody\r\n", b"A: b\r", b"",
                     b"A: " + b"x" * (4 * fetch.STREAM_CHUNK - 5) + b"\r\n\r\nbody"):
            found: list[fetch.MessageScan] = []
            list(fetch.scan_message(io.BytesIO(data), found))
            whole = norm(data)
            self.assertEqual(found[0].size, len(whole), data[:20])
            if whole.startswith(b"\r\n"):
                start = 2
            else:
                idx = whole.find(b"\r\n\r\n")
                start = idx + 4 if idx >= 0 else len(whole)
            self.assertEqual(found[0].body_start, start, data[:20])

    def test_normalized_chunks_keep_crlf_across_chunks(self) -> None:
        data = b"a\r\nb\nc\r" + b"\nd\r\re\n" * 5
        out = b"".join(fetch.normalized_chunks(io.BytesIO(data), 3))
        self.assertEqual(out, norm(data))


class SchedulingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.storage = FakeStorage()
        self.c = Client(self.storage)
        self.c.start()

    async def test_a_long_pipeline_yields_and_bounds_its_queue(self) -> None:
        s = self.c.session
        s.slice = session.SLICE
        s.dataReceived(b"".join(b"n%d NOOP\r\n" % i for i in range(20000)))
        # The first slice ran at once, then the rest is left for later turns.
        first = self.c.transport.value().count(b" OK NOOP")
        self.assertGreater(first, 0)
        self.assertLess(first, 20000)
        self.assertLessEqual(len(s._queue), session.QUEUE_MAX)
        self.assertTrue(s._paused)
        await until(lambda: b"n19999 OK" in self.c.transport.value())
        self.assertEqual(self.c.transport.value().count(b" OK NOOP"), 20000)
        self.assertFalse(s._paused)

    def test_twenty_bad_commands_then_bye(self) -> None:
        for i in range(19):
            self.assertIn(b"BAD", self.c.send(b"b%d BOGUS\r\n" % i))
        self.assertIn(b"OK", self.c.send(b"ok NOOP\r\n"))  # a good one resets the count
        for i in range(19):
            self.c.send(b"c%d BOGUS\r\n" % i)
        out = self.c.send(b"c19 BOGUS\r\nd NOOP\r\n")
        self.assertTrue(out.endswith(b"* BYE Too many invalid IMAP commands.\r\n"), out)
        self.assertTrue(self.c.transport.disconnecting)

    def test_autologout_and_idle_keepalive(self) -> None:
        c = Client(self.storage, {"imap_autologout": "60s", "imap_idle_notify_interval": "20s"})
        c.start()
        clock = c.session.clock
        clock.advance(59)
        c.send(b"a NOOP\r\n")  # activity restarts the timer
        clock.advance(59)
        self.assertFalse(c.transport.disconnecting)
        c.send(b"i IDLE\r\n")
        for _ in range(10):  # IDLE's keepalives count as activity
            clock.advance(20)
        self.assertFalse(c.transport.disconnecting)
        self.assertIn(b"* OK Still here", c.take())
        c.send(b"DONE\r\n")
        clock.advance(61)
        self.assertEqual(c.take(), b"* BYE Disconnected for inactivity.\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_output_timeout(self) -> None:
        c = Client(self.storage)
        c.start()
        clock = c.session.clock
        c.session._output.pauseProducing()  # the client reads nothing
        clock.advance(session.OUTPUT_TIMEOUT - 1)
        c.send(b"a NOOP\r\n")  # input does not help: it must read
        c.session._output.resumeProducing()  # it read: the timer stops
        c.session._output.pauseProducing()
        clock.advance(session.OUTPUT_TIMEOUT - 1)
        self.assertFalse(c.transport.disconnecting)
        clock.advance(2)
        self.assertTrue(c.transport.disconnecting)

    def test_deep_lists_get_bad_limit(self) -> None:
        out = self.c.send(b"d FETCH 1 " + b"(" * 60000 + b"\r\n")
        self.assertTrue(out.startswith(b"d BAD [LIMIT] "), out[:100])
        out = self.c.send(b"e FETCH 1 " + b"(" * (MAX_LIST_DEPTH + 1) + b")" * (MAX_LIST_DEPTH + 1)
                          + b"\r\n")
        self.assertTrue(out.startswith(b"e BAD [LIMIT] "), out[:100])
