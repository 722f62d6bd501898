"""Mailbox management: CREATE (with RFC 6154's USE), DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE (RFC 3501 6.3.3-7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, bad
from pydovecot.imap.parser import (
    Atom,
    Token,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client

from pydovecot.imap.specialuse import canonical


def _one_mailbox(client: Client, args: list[Token], count: int = 1) -> list[str]:
    if len(args) != count or any(isinstance(a, list) for a in args):
        raise bad("Invalid arguments")
    return [client.decode_mailbox(a) for a in args]


async def cmd_delete(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    (name,) = _one_mailbox(client, args)
    if client.mailbox is not None and client.mailbox.name == name:
        client.select(None)
    await client.storage.delete(name)
    return b"OK Delete completed."


async def cmd_rename(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    old, new = _one_mailbox(client, args, 2)
    await client.storage.rename(old, new.rstrip("/"))
    return b"OK Rename completed."


async def cmd_subscribe(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    (name,) = _one_mailbox(client, args)
    await client.storage.subscribe(name)
    return b"OK Subscribe completed."


async def cmd_unsubscribe(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    (name,) = _one_mailbox(client, args)
    await client.storage.unsubscribe(name)
    return b"OK Unsubscribe completed."


async def create_command(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if not args or len(args) > 2 or isinstance(args[0], list):
        raise CommandError(b"BAD Invalid arguments")
    use: set[str] = set()
    if len(args) == 2:
        opts = args[1]
        if (not isinstance(opts, list) or len(opts) != 2 or not isinstance(opts[0], Atom)
                or opts[0].upper() != b"USE" or not isinstance(opts[1], list)):
            raise CommandError(b"BAD Invalid CREATE parameters")
        for attr in opts[1]:
            if not isinstance(attr, Atom):
                raise CommandError(b"BAD Invalid USE attribute")
            canon = canonical(attr.decode("latin-1"))
            if canon is None:
                raise CommandError(b"NO [USEATTR] Unsupported special-use attribute %s" % attr[:40])
            use.add(canon)
    name = client.decode_mailbox(args[0]).rstrip("/")
    if not name:
        raise CommandError(b"NO [CANNOT] Invalid mailbox name: empty")
    if name == "INBOX":
        raise CommandError(b"NO [ALREADYEXISTS] Mailbox already exists")
    await client.storage.create(name)
    if client.special_use is not None:
        await client.special_use.set(name, use)  # also drops a deleted namesake's
    return b"OK Create completed."


add_command("CREATE", create_command, Flag.NONE)
add_command("DELETE", cmd_delete, Flag.NONE)
add_command("RENAME", cmd_rename, Flag.NONE)
add_command("SUBSCRIBE", cmd_subscribe, Flag.NONE)
add_command("UNSUBSCRIBE", cmd_unsubscribe, Flag.NONE)
features.provide(__name__, "CREATE-SPECIAL-USE")
