"""COMPRESS=DEFLATE (RFC 4978): the transport wrapper and inflater, and a
real imaplib client whose socket is wrapped in raw deflate after the OK."""

from __future__ import annotations

import imaplib
import zlib

from twisted.internet import defer, threads
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pydovecot.imap.compress import INFLATE_CHUNK, DeflateTransport, Inflater
from tests import test_imap_e2e as e2e
from tests.imap_fakes import FakeStorage
from tests.test_imap_session import Client


def deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)


class PieceTests(unittest.TestCase):
    def test_transport_round_trip(self):
        inner = StringTransport()
        t = DeflateTransport(inner)
        t.write(b"* OK one\r\n")
        t.writeSequence([b"* OK ", b"two\r\n"])
        z = zlib.decompressobj(-15)
        self.assertEqual(z.decompress(inner.value()), b"* OK one\r\n* OK two\r\n")
        self.assertEqual(t.getPeer(), inner.getPeer())  # everything else is delegated

    def test_inflater_bounded_and_corrupt(self):
        got: list[bytes] = []
        errors: list[str] = []
        inf = Inflater(_Reader(got), errors.append)
        bomb = deflate(b"x" * (INFLATE_CHUNK * 5))
        inf.feed(bomb[:10])
        inf.feed(bomb[10:])
        self.assertEqual(b"".join(got), b"x" * (INFLATE_CHUNK * 5))
        self.assertTrue(all(len(piece) <= INFLATE_CHUNK for piece in got))
        bad = Inflater(_Reader(got), errors.append)
        bad.feed(b"\xff\xff\xff\xff")
        self.assertEqual(len(errors), 1)

    def test_inflater_waits_while_the_reader_is_paused(self):
        got: list[bytes] = []
        reader = _Reader(got)
        inf = Inflater(reader, [].append)
        reader.paused = True
        inf.feed(deflate(b"x" * (INFLATE_CHUNK * 5)))
        self.assertEqual(got, [])
        reader.paused = False
        reader.pause_after = 2  # the reader pauses again after two chunks
        inf.resume()
        self.assertEqual(len(got), 2)
        reader.paused = False
        reader.pause_after = None
        inf.resume()
        self.assertEqual(b"".join(got), b"x" * (INFLATE_CHUNK * 5))

    def test_session(self):
        c = Client(FakeStorage())
        c.start()
        self.assertTrue(c.send(b"a COMPRESS FOO\r\n").startswith(b"a NO "))
        self.assertTrue(c.send(b"a COMPRESS\r\n").startswith(b"a BAD "))
        self.assertEqual(c.send(b"b COMPRESS DEFLATE\r\n"), b"b OK Begin compression.\r\n")
        z = zlib.decompressobj(-15)
        out = z.decompress(c.send(deflate(b"c COMPRESS DEFLATE\r\nd NOOP\r\n")))
        self.assertEqual(out, b"c NO [COMPRESSIONACTIVE] Compression already enabled.\r\n"
                              b"d OK NOOP completed.\r\n")
        c.send(b"garbage that is not deflate\xff\xff")
        self.assertTrue(c.transport.disconnecting)


class CompressedIMAP4(imaplib.IMAP4):
    """imaplib speaking COMPRESS=DEFLATE once :meth:`compress` succeeded."""

    def compress(self) -> tuple[str, list[bytes]]:
        imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK":
            self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._inflate = zlib.decompressobj(-15)
            self._inbuf = b""
        return typ, data

    def send(self, data: bytes) -> None:
        if "_deflate" in self.__dict__:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise imaplib.IMAP4.abort("socket closed")
        self.wire_in = self.__dict__.get("wire_in", 0) + len(chunk)
        self._inbuf += self._inflate.decompress(chunk)

    def readline(self) -> bytes:
        if "_inflate" not in self.__dict__:
            return super().readline()
        while b"\n" not in self._inbuf:
            self._fill()
        line, _, self._inbuf = self._inbuf.partition(b"\n")
        return line + b"\n"

    def read(self, size: int) -> bytes:
        if "_inflate" not in self.__dict__:
            return super().read(size)
        while len(self._inbuf) < size:
            self._fill()
        data, self._inbuf = self._inbuf[:size], self._inbuf[size:]
        return data


class CompressE2ETests(unittest.TestCase):
    setUp = e2e.E2ETests.setUp
    tearDown = e2e.E2ETests.tearDown

    @defer.inlineCallbacks
    def test_imaplib_compressed_session(self):
        body = b"Subject: big\r\n\r\n" + b"all work and no play\r\n" * 5000

        def run():
            c = CompressedIMAP4("127.0.0.1", self.addr, timeout=10)
            self.assertIn("COMPRESS=DEFLATE", c.capabilities)
            result = {"compress": c.compress()}
            result["append"] = c.append("INBOX", None, None, body)
            result["select"] = c.select("INBOX")
            result["fetch"] = c.fetch("1", "(BODY.PEEK[])")
            result["list"] = c.list()
            result["wire_in"] = c.wire_in
            result["logout"] = c.logout()
            return result

        r = yield threads.deferToThread(run)
        self.assertEqual(r["compress"][0], "OK")
        self.assertEqual(r["append"][0], "OK")
        self.assertEqual(r["select"], ("OK", [b"1"]))
        self.assertEqual(r["fetch"][1][0][1], body)
        self.assertEqual(r["list"][0], "OK")
        self.assertEqual(r["logout"][0], "BYE")
        self.assertLess(r["wire_in"], len(body) // 4)  # it really was compressed


class _Reader:
    """A CommandReader stand-in: collects what it is fed, may pause."""

    def __init__(self, got: list[bytes]):
        self.got = got
        self.paused = False
        self.pause_after: int | None = None

    def feed(self, data: bytes) -> None:
        self.got.append(data)
        if self.pause_after is not None and len(self.got) >= self.pause_after:
            self.paused = True
