"""ID (RFC 2971): the client's parameters are read and dropped; ours is the name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import bad
from pydovecot.imap.parser import Token

if TYPE_CHECKING:
    from pydovecot.imap.client import Client


def cmd_id(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if len(args) != 1:
        raise bad("Invalid ID arguments")
    client.send(b'* ID ("name" "pydovecot")\r\n')
    return b"OK ID completed."


add_command("ID", cmd_id, Flag.NONE)
