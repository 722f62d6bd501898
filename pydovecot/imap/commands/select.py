"""SELECT, EXAMINE, CLOSE, UNSELECT (RFC 3501 6.3.1-2, 6.4.2, RFC 3691) with
CONDSTORE/QRESYNC parameters (RFC 7162 3.1.8, 3.2.5).

Selecting makes a storage view the client's selected mailbox
(:meth:`Client.select`); the parameters are client input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import fetch
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import bad
from pydovecot.imap.ext_sync import QresyncParams, SelectParams, parse_modseq, uid_set
from pydovecot.imap.parser import (
    Atom,
    ParseError,
    Token,
    compress,
)
from pydovecot.storage.interfaces import (
    IMailbox,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client



async def cmd_select(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    return await _select(client, args, readonly=False)


async def _select(client: Client, args: list[Token], readonly: bool) -> bytes:
    args, select_params = _select_params(client, args)
    if len(args) != 1 or isinstance(args[0], list):
        raise bad("Invalid arguments")
    name = client.decode_mailbox(args[0])
    if client.mailbox is not None:
        client.select(None)
        client.send(b"* OK [CLOSED] Previous mailbox closed.\r\n")
    mbox = await client.storage.open(name, readonly=readonly)
    client.select(mbox)
    client.announced_keywords = set()
    client.send_flags(mbox)
    client.send(b"* %d EXISTS\r\n" % len(mbox.messages))
    if not client.rev2:  # RFC 9051 has no RECENT
        client.send(b"* %d RECENT\r\n" % len(mbox.recent))
    for seq, info in enumerate(mbox.messages, 1):
        if "\\Seen" not in info.flags:
            client.send(b"* OK [UNSEEN %d] First unseen.\r\n" % seq)
            break
    client.send(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mbox.uidvalidity)
    client.send(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mbox.uidnext)
    await _select_done(client, mbox, select_params)
    if readonly or mbox.readonly:
        return b"OK [READ-ONLY] Examine completed." if readonly else b"OK [READ-ONLY] Select completed."
    return b"OK [READ-WRITE] Select completed."


async def cmd_examine(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    return await _select(client, args, readonly=True)


async def cmd_close(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    mbox = client.selected()
    if not mbox.readonly:
        client.counters["expunged"] += len(await mbox.expunge())
    client.select(None)
    return b"OK Close completed."


def cmd_unselect(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    client.selected()
    client.select(None)
    return b"OK Unselect completed."


def _select_params(client: Client, args: list[Token]) -> tuple[list[Token], SelectParams]:
    """Split ``mailbox (CONDSTORE)`` / ``(QRESYNC (…))`` off SELECT's args."""
    params = SelectParams()
    if len(args) != 2 or not isinstance(args[1], list):
        return args, params
    items = args[1]
    i = 0
    while i < len(items):
        tok = items[i]
        name = tok.upper_str() if isinstance(tok, Atom) else ""
        if name == "CONDSTORE":
            params.condstore = True
            i += 1
        elif name == "QRESYNC" and i + 1 < len(items) and isinstance(items[i + 1], list):
            if not client.qresync:
                raise ParseError("QRESYNC not enabled")
            params.qresync = _parse_qresync(items[i + 1])
            i += 2
        else:
            raise ParseError("Unknown SELECT parameter")
    return args[:1], params


def _parse_qresync(items: list[Token]) -> QresyncParams:
    if not 2 <= len(items) <= 4:
        raise ParseError("Invalid QRESYNC parameters")
    validity = items[0]
    if not isinstance(validity, Atom) or not validity.isdigit() or int(validity) == 0 \
            or int(validity) > 0xFFFFFFFF:
        raise ParseError("Invalid QRESYNC uidvalidity")
    params = QresyncParams(int(validity), parse_modseq(items[1]))
    if len(items) >= 3:
        params.known = uid_set(items[2])
    if len(items) == 4:
        match = items[3]
        if not isinstance(match, list) or len(match) != 2:
            raise ParseError("Invalid QRESYNC sequence match data")
        uid_set(match[0])
        uid_set(match[1])
    return params


async def _select_done(client: Client, mbox: IMailbox, params: SelectParams) -> None:
    """After SELECT's standard responses: HIGHESTMODSEQ and, for
    QRESYNC, VANISHED (EARLIER) and the flags changed since."""
    if params.condstore or params.qresync is not None:
        client.condstore = True
    if client.condstore:
        client.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % await client.highestmodseq(mbox))
    q = params.qresync
    if q is not None and q.uidvalidity == mbox.uidvalidity:
        present = {m.uid for m in mbox.messages}
        vanished = await client.vanished_since(mbox, q.modseq, q.known, present)
        if vanished:
            client.send(b"* VANISHED (EARLIER) %s\r\n" % compress(vanished))
        for seq, info in enumerate(mbox.messages, 1):
            if info.modseq > q.modseq:
                client.send(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (
                    seq, info.uid, fetch.format_flags(info.flags, info.uid in client.recent_view()),
                    info.modseq))
    if client.notifier is not None:
        client.notifier.selected(mbox.name)


add_command("SELECT", cmd_select, Flag.NO_SYNC)
add_command("EXAMINE", cmd_examine, Flag.NO_SYNC)
add_command("CLOSE", cmd_close, Flag.SELECTED | Flag.NO_SYNC)
add_command("UNSELECT", cmd_unselect, Flag.SELECTED | Flag.NO_SYNC)
