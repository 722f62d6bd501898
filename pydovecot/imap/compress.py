"""COMPRESS=DEFLATE (RFC 4978): raw deflate in both directions.

After the tagged ``OK`` of ``COMPRESS DEFLATE`` the session's transport is
wrapped in :class:`DeflateTransport` (each write is compressed and ended
with a sync flush, so the client can act on every response at once) and
the bytes the client sends are inflated before the command reader sees
them.  Inflating is done in bounded steps (:data:`INFLATE_CHUNK`, zlib's
``max_length`` and ``unconsumed_tail``) and only while the command reader
is not paused: when the session's command queue is full, the rest of the
compressed input waits (and the session stops reading the socket), so a
4 KB stream that inflates to megabytes of commands never holds more than
one chunk of plaintext.  Corrupt input closes the connection.  The client is untrusted; the transport is Twisted's.
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="pydovecot.imap")

INFLATE_CHUNK = 16 * 1024
#: zlib level 6 is Dovecot's default (imap_zlib_compress_level).
LEVEL = 6


class DeflateTransport:
    """An ITransport proxy that deflates everything written through it."""

    def __init__(self, transport: Any, level: int = LEVEL):
        self.wrapped = transport
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        if data:
            self.wrapped.write(self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class Inflater:
    """Feeds ``reader`` (a CommandReader) with the inflated bytes of a raw
    deflate stream, a chunk at a time and only while it is not paused."""

    def __init__(self, reader: Any, on_error: Any):
        self.reader = reader
        self.on_error = on_error
        self._inflate = zlib.decompressobj(-15)
        self._pending = b""  # compressed input not inflated yet
        self._more = False  # the last step filled its chunk: output may remain
        self.failed = False

    def feed(self, data: bytes) -> None:
        if self.failed:
            return
        self._pending += data
        self.resume()

    def resume(self) -> None:
        """Inflate more, until the input is used up or the reader pauses."""
        try:
            while (self._pending or self._more) and not self.reader.paused and not self.failed:
                out = self._inflate.decompress(self._pending, INFLATE_CHUNK)
                self._pending = self._inflate.unconsumed_tail
                self._more = len(out) == INFLATE_CHUNK
                if out:
                    self.reader.feed(out)
        except zlib.error as e:
            self.failed = True
            self._pending = b""
            self.on_error(str(e))
