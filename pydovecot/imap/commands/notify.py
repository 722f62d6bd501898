"""NOTIFY (RFC 5465): NOTIFY SET/NONE; parsing and the event machinery are
in :mod:`pydovecot.imap.notify`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import notify
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError
from pydovecot.imap.parser import Token

if TYPE_CHECKING:
    from pydovecot.imap.client import Client


async def cmd_notify(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    try:
        spec = notify.parse(args, client.decode_mailbox)
    except notify.BadEvent:
        raise CommandError(b"NO [BADEVENT (" + notify.SUPPORTED_EVENTS + b")] "
                           b"Unsupported event") from None
    if client.notifier is not None:
        client.notifier.stop()
        client.notifier = None
    if spec is None:
        return b"OK NOTIFY completed."
    client.notifier = notify.Notifier(client, spec)
    await client.notifier.start()
    return b"OK NOTIFY completed."


add_command("NOTIFY", cmd_notify, Flag.NONE)
