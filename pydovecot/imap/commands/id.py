"""ID (RFC 2971) after login: the client's parameters are checked against
RFC 2971's maxima (30 pairs, 1024-octet values, as before login) and
dropped; ours is the name.  The pre-login ID is the login process's
(:mod:`pydovecot.login.imap`), which forwards what the client sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import bad
from pydovecot.imap.parser import Atom, Literal, Token

if TYPE_CHECKING:
    from pydovecot.imap.client import Client

MAX_ID_FIELDS = 30
MAX_ID_VALUE = 1024


def _valid(arg: Token) -> bool:
    if isinstance(arg, Atom):
        return arg.upper() == b"NIL"
    if not isinstance(arg, list) or len(arg) % 2 or len(arg) > 2 * MAX_ID_FIELDS:
        return False
    return all(not isinstance(f, list | Literal) and len(f) <= MAX_ID_VALUE for f in arg)


def cmd_id(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if len(args) != 1 or not _valid(args[0]):
        raise bad("Invalid parameters.")
    client.send(b'* ID ("name" "pydovecot")\r\n')
    return b"OK ID completed."


add_command("ID", cmd_id, Flag.NONE)
