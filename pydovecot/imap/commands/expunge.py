"""EXPUNGE and UID EXPUNGE (RFC 3501 6.4.3, RFC 4315); under QRESYNC the
tagged OK carries HIGHESTMODSEQ (RFC 7162 3.2.10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, bad
from pydovecot.imap.parser import (
    Token,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client



async def cmd_expunge(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    mbox = client.selected()
    if mbox.readonly:
        raise CommandError(b"NO [READ-ONLY] Mailbox is read-only.")
    uids = None
    if uid:
        if len(args) != 1:
            raise bad("Missing messageset")
        uids = [m.uid for _s, m in client.resolve(args[0], True)]
    elif args:
        raise bad("Unexpected arguments")
    old = [m.uid for m in mbox.messages]
    removed = await mbox.expunge(uids)
    client.counters["expunged"] += len(removed)
    client.report_expunges(old, removed)
    return await _expunge_result(client, b"OK Expunge completed.")


async def _expunge_result(client: Client, response: bytes) -> bytes:
    """Under QRESYNC the tagged OK of EXPUNGE carries HIGHESTMODSEQ."""
    if client.qresync and client.mailbox is not None:
        return b"OK [HIGHESTMODSEQ %d] %s" % (
            await client.highestmodseq(client.mailbox), response.removeprefix(b"OK "))
    return response


add_command("EXPUNGE", cmd_expunge, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.BREAKS_SEQS)
