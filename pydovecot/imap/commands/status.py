"""STATUS (RFC 3501 6.3.10) with SIZE (RFC 8438), DELETED (RFC 9051),
APPENDLIMIT (RFC 7889), HIGHESTMODSEQ (RFC 7162) and DELETED-STORAGE
(RFC 9208, in KiB, offered with QUOTA=RES-STORAGE).

STATUS of the selected mailbox answers from the session's view (what it
was told, its own \\Recent messages) with ``OK [CLIENTBUG]``, as Dovecot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError
from pydovecot.imap.parser import (
    Atom,
    Token,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client

from pydovecot.storage.interfaces import IMailbox, MailboxStatus

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED",
                "APPENDLIMIT", "HIGHESTMODSEQ", "DELETED-STORAGE")


def status_items(client: Client, tokens: list[Token]) -> list[str]:
    """The STATUS item list → canonical names; BAD for unknown items."""
    if not tokens:
        raise CommandError(b"BAD Missing status items")
    wanted: list[str] = []
    caps = client.capabilities.upper().split()
    condstore = b"CONDSTORE" in caps
    for item in tokens:
        if not isinstance(item, Atom):
            raise CommandError(b"BAD Invalid status item")
        key = item.upper_str()
        if key not in STATUS_ITEMS or (key == "HIGHESTMODSEQ" and not condstore) or (
                key == "DELETED-STORAGE" and b"QUOTA=RES-STORAGE" not in caps):
            raise CommandError(b"BAD Invalid status item %s" % key[:30].encode())
        if key not in wanted:
            wanted.append(key)
    return wanted


def status_values(client: Client, status: MailboxStatus, wanted: list[str]) -> bytes:
    values: list[bytes] = []
    for key in wanted:
        if key == "APPENDLIMIT":
            values.append(b"APPENDLIMIT %d" % client.append_limit)
        elif key == "DELETED-STORAGE":
            values.append(b"DELETED-STORAGE %d" % ((status.deleted_size + 1023) // 1024))
        else:
            values.append(b"%s %d" % (key.encode(), getattr(status, key.lower())))
    return b" ".join(values)


async def status_command(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if len(args) != 2 or not isinstance(args[1], list):
        raise CommandError(b"BAD Invalid arguments")
    name = client.decode_mailbox(args[0])
    wanted = status_items(client, args[1])
    if "HIGHESTMODSEQ" in wanted:
        await client.announce_condstore()  # RFC 7162 3.1
    mbox = client.mailbox
    if mbox is not None and _same_mailbox(mbox.name, name):
        status = await view_status(client, mbox)
        done = b"OK [CLIENTBUG] Status on selected mailbox completed."
    else:
        status = await client.storage.status(name)
        done = b"OK Status completed."
    client.send(b"* STATUS %s (%s)\r\n" % (
        client.encode_mailbox(name), status_values(client, status, wanted)))
    return done


def _same_mailbox(a: str, b: str) -> bool:
    return a == b or a.upper() == b.upper() == "INBOX"


async def view_status(client: Client, mbox: IMailbox) -> MailboxStatus:
    """STATUS of the selected mailbox is its view's, as Dovecot answers it:
    the messages the session was told of, and the \\Recent ones it holds
    (the storage's count leaves out what a session has taken)."""
    messages = mbox.messages
    return MailboxStatus(
        messages=len(messages),
        recent=len(mbox.recent),
        uidnext=mbox.uidnext,
        uidvalidity=mbox.uidvalidity,
        unseen=sum("\\Seen" not in m.flags for m in messages),
        size=sum(m.size for m in messages),
        deleted=sum("\\Deleted" in m.flags for m in messages),
        highestmodseq=await client.highestmodseq(mbox),
        deleted_size=sum(m.size for m in messages if "\\Deleted" in m.flags),
    )


add_command("STATUS", status_command, Flag.NONE)
features.provide(__name__, "STATUS=SIZE")
