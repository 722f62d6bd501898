"""ENABLE (RFC 5161): switches on the features registered in
:mod:`pydovecot.imap.features` (CONDSTORE, QRESYNC, IMAP4rev2,
UTF8=ACCEPT); ``* ENABLED`` lists only what this command newly enabled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import bad
from pydovecot.imap.parser import Atom, Token

if TYPE_CHECKING:
    from pydovecot.imap.client import Client


def cmd_enable(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if not args or not all(isinstance(a, Atom) for a in args):
        raise bad("Missing capabilities")
    offered = {c.upper() for c in client.capabilities.decode("latin-1").split()}
    names = [a.upper_str() for a in args if isinstance(a, Atom)]
    done = features.enable(client, names, offered)
    client.send(b"* ENABLED" + b"".join(b" " + n.encode() for n in done) + b"\r\n")
    return b"OK Enabled."


add_command("ENABLE", cmd_enable, Flag.NONE)
