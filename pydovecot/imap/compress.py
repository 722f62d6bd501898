"""COMPRESS=DEFLATE (RFC 4978): raw deflate in both directions.

After the tagged ``OK`` of ``COMPRESS DEFLATE`` the session's transport is
wrapped in :class:`DeflateTransport` (each write is compressed and ended
with a sync flush, so the client can act on every response at once) and
the bytes the client sends are inflated before the command reader sees
them.  Inflating is done in bounded steps (:data:`INFLATE_CHUNK`), so a
small compressed stream cannot blow up into a huge buffer: the command
reader's own limits apply to every piece.  Corrupt input closes the
connection.  The client is untrusted; the transport is Twisted's.
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.logger import Logger

from pydovecot.imap.parser import Atom, Token

log = Logger(namespace="pydovecot.imap")

INFLATE_CHUNK = 64 * 1024
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
    """Feeds ``sink`` with the inflated bytes of a raw deflate stream."""

    def __init__(self, sink: Any, on_error: Any):
        self.sink = sink
        self.on_error = on_error
        self._inflate = zlib.decompressobj(-15)
        self.failed = False

    def feed(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            out = self._inflate.decompress(data, INFLATE_CHUNK)
            while True:
                if out:
                    self.sink(out)
                tail = self._inflate.unconsumed_tail
                if not tail or self.failed:
                    break
                out = self._inflate.decompress(tail, INFLATE_CHUNK)
        except zlib.error as e:
            self.failed = True
            self.on_error(str(e))


class CompressMixin:
    """``cmd_compress`` for :class:`~pydovecot.imap.session.IMAPSession`."""

    transport: Any
    reader: Any
    compressed = False

    def cmd_compress(self, tag: bytes, args: list[Token]) -> bytes:
        from pydovecot.imap import session as core

        if len(args) != 1 or not isinstance(args[0], Atom):
            raise core.CommandError(b"BAD Invalid arguments")
        if args[0].upper() != b"DEFLATE":
            raise core.CommandError(b"NO Unknown compression mechanism.")
        if self.compressed:
            raise core.CommandError(b"NO [COMPRESSIONACTIVE] Compression already enabled.")
        self._tagged(tag, b"OK Begin compression.")  # type: ignore[attr-defined]
        self._flush()  # type: ignore[attr-defined]
        self.start_compression()
        raise core._Silent()

    def start_compression(self) -> None:
        """Deflate from now on (the OK is already on the wire)."""
        self.compressed = True
        if self.transport is not None:
            self.transport = DeflateTransport(self.transport)
        inflater = Inflater(self.reader.feed, self._inflate_failed)
        self.reader.feed = inflater.feed

    def _inflate_failed(self, why: str) -> None:
        log.info("Disconnecting: corrupt compressed input ({why})", why=why,
                 log_prefix=getattr(self, "prefix", ""))
        if self.transport is not None:
            self.transport.loseConnection()
