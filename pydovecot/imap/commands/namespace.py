"""NAMESPACE (RFC 2342): one personal namespace, "" with "/" as separator."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.parser import Token

if TYPE_CHECKING:
    from pydovecot.imap.client import Client


def cmd_namespace(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    client.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
    return b"OK Namespace completed."


add_command("NAMESPACE", cmd_namespace, Flag.NONE)
