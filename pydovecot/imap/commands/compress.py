"""COMPRESS=DEFLATE (RFC 4978); the streams are in :mod:`pydovecot.imap.compress`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, Silent
from pydovecot.imap.parser import (
    Atom,
    Token,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client



def cmd_compress(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if len(args) != 1 or not isinstance(args[0], Atom):
        raise CommandError(b"BAD Invalid arguments")
    if args[0].upper() != b"DEFLATE":
        raise CommandError(b"NO Unknown compression mechanism.")
    if client.compressed:
        raise CommandError(b"NO [COMPRESSIONACTIVE] Compression already enabled.")
    client.tagged(tag, b"OK Begin compression.")
    client.flush()
    client.start_compression()
    raise Silent()


add_command("COMPRESS", cmd_compress, Flag.NONE)
features.provide(__name__, "COMPRESS=DEFLATE")
