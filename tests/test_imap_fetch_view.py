"""Big BODY[n]/BINARY[n] parts are sent as views of the message (no copy):
the bytes on the wire are the ones the in-memory path renders."""

from __future__ import annotations

import datetime

from twisted.trial.unittest import SynchronousTestCase

from pydovecot.imap import fetch, mime
from pydovecot.imap.parser import Atom
from pydovecot.storage.interfaces import MessageInfo


def _message(nul: bool) -> bytes:
    body = (b"line of text\r\n" * 20000) + (b"\x00tail\r\n" if nul else b"")
    return (b"Subject: big\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n" + body +
            b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nsmall\r\n--b--\r\n")


def _wire(data: bytes, spec: bytes, stream: bool) -> bytes:
    info = MessageInfo(uid=1, flags=set(), size=len(data),
                       internaldate=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
    items = fetch.parse_items([Atom(spec)])
    msg = mime.ParsedMessage(data)
    pieces = fetch.render_pieces(1, info, items, False, lambda: msg, fetch.FetchStats(),
                                 stream=stream)
    out = b""
    for piece in pieces:
        assert not isinstance(piece, fetch.StreamedLiteral)
        out += bytes(piece)
    return out


class PartViewTests(SynchronousTestCase):
    def test_views_render_as_copies(self) -> None:
        for nul in (False, True):
            data = _message(nul)
            for spec in (b"BODY.PEEK[1]", b"BINARY.PEEK[1]", b"BODY.PEEK[1]<100.200000>",
                         b"BINARY.PEEK[1]<5.300>", b"BINARY.PEEK[1]<999999.10>",
                         b"BODY.PEEK[2]", b"BINARY.PEEK[2]"):
                streamed, copied = _wire(data, spec, True), _wire(data, spec, False)
                self.assertEqual(streamed, copied, (nul, spec))
            self.assertEqual(b"~{" in _wire(data, b"BINARY.PEEK[1]", True), nul)
