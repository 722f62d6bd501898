"""COPY and MOVE (RFC 3501 6.4.7, RFC 6851) with UIDPLUS's COPYUID (RFC 4315).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, bad
from pydovecot.imap.parser import (
    Token,
    compress,
)
from pydovecot.storage.interfaces import (
    MailboxNotFound,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client



async def _copy(client: Client, args: list[Token], uid: bool,
                move: bool = False) -> tuple[str, list[int], bytes]:
    if len(args) != 2:
        raise bad("Invalid arguments")
    dest = client.decode_mailbox(args[1])
    targets = client.resolve(args[0], uid)
    uids = [m.uid for _s, m in targets]
    if not uids:
        return dest, [], b""
    try:
        # MOVE: storage.move copies without a quota check inside one quota root
        copy = client.storage.move if move else client.storage.copy
        validity, pairs = await copy(client.selected(), uids, dest)
    except MailboxNotFound:
        raise CommandError(b"NO [TRYCREATE] Mailbox doesn't exist: " + client.encode_mailbox(dest)) from None
    if dest.lower() == "trash" or dest.lower().endswith("/trash"):
        client.counters["trashed"] += len(pairs)
    code = b"COPYUID %d %s %s" % (
        validity, compress([s for s, _d in pairs]), compress([d for _s, d in pairs])
    )
    return dest, uids, code


async def cmd_copy(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    _dest, uids, code = await _copy(client, args, uid)
    if not uids:
        return b"OK No messages found."
    return b"OK [%s] Copy completed." % code


async def cmd_move(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    mbox = client.selected()
    if mbox.readonly:
        raise CommandError(b"NO [READ-ONLY] Mailbox is read-only.")
    _dest, uids, code = await _copy(client, args, uid, move=True)
    if not uids:
        return b"OK No messages found."
    client.send(b"* OK [%s] Moved UIDs.\r\n" % code)
    old = [m.uid for m in mbox.messages]
    await mbox.store(uids, ["\\Deleted"], "+")
    removed = await mbox.expunge(uids)
    client.counters["expunged"] += len(removed)
    client.report_expunges(old, removed)
    return b"OK Move completed."


add_command("COPY", cmd_copy, Flag.SELECTED | Flag.UID | Flag.USES_SEQS)
add_command("MOVE", cmd_move, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.BREAKS_SEQS)
features.provide(__name__, "UIDPLUS")
