"""STORE (RFC 3501 6.4.6) with CONDSTORE's UNCHANGEDSINCE (RFC 7162 3.1.3).

Flags and modifiers are client input (BAD when malformed); the selected
view is trusted for UIDs and modseqs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import fetch
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, bad
from pydovecot.imap.parser import (
    Atom,
    ParseError,
    Token,
    compress,
)
from pydovecot.imap.syntax import parse_flags
from pydovecot.storage.interfaces import (
    IMailbox,
    MessageInfo,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client

from pydovecot.imap.ext_sync import parse_modseq


async def cmd_store(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    mbox = client.selected()
    args, unchanged = _store_modifiers(client, args)
    if unchanged is not None:
        await client.announce_condstore()
    if len(args) < 3:
        raise bad("Missing arguments")
    if not isinstance(args[1], Atom):
        raise bad("Invalid STORE item")
    item = args[1].upper_str()
    silent = item.endswith(".SILENT")
    base = item[: -len(".SILENT")] if silent else item
    modes = {"FLAGS": "=", "+FLAGS": "+", "-FLAGS": "-"}
    if base not in modes:
        raise bad(f"Invalid STORE item {item[:30]}")
    flag_tokens = args[2] if len(args) == 3 and isinstance(args[2], list) else args[2:]
    flags = parse_flags(flag_tokens)
    if mbox.readonly:
        raise CommandError(b"NO [READ-ONLY] Mailbox is read-only.")
    targets = client.resolve(args[0], uid)
    mode = modes[base]
    before_deleted = {m.uid for _s, m in targets if "\\Deleted" in m.flags}
    before_modseq = {m.uid: m.modseq for _s, m in targets}
    failed = await _store_flags(client, mbox, targets, flags, mode, unchanged)
    client.announce_keywords(flags)  # a new keyword: FLAGS before its FETCH
    for seq, info in targets:
        if "\\Deleted" in info.flags and info.uid not in before_deleted:
            client.counters["deleted"] += 1
        if info.uid not in failed:
            _store_response(client, seq, info, uid, silent, unchanged, before_modseq[info.uid])
    return _store_result(targets, failed, uid)


def _store_modifiers(client: Client, args: list[Token]) -> tuple[list[Token], int | None]:
    """``STORE set (UNCHANGEDSINCE n) …`` → (args without it, n)."""
    if len(args) < 2 or not isinstance(args[1], list):
        return args, None
    mods = args[1]
    if len(mods) != 2 or not isinstance(mods[0], Atom) or mods[0].upper_str() != "UNCHANGEDSINCE":
        raise ParseError("Unknown STORE modifier")
    value = parse_modseq(mods[1], zero=True)
    return [args[0], *args[2:]], value


async def _store_flags(client: Client, mbox: IMailbox, targets: list[tuple[int, MessageInfo]],
                 flags: list[str], mode: str, unchanged: int | None) -> set[int]:
    """Store, conditionally if ``unchanged`` is set; the UIDs that failed."""
    uids = [m.uid for _s, m in targets]
    if unchanged is None:
        await mbox.store(uids, flags, mode)
        return set()
    try:
        _changed, failed = await mbox.store_unchanged_since(uids, flags, mode, unchanged)
        return set(failed)
    except NotImplementedError:
        pass
    # a storage without a conditional store: best effort, checked on the view
    failed_set = {m.uid for _s, m in targets if m.modseq > unchanged}
    await mbox.store([u for u in uids if u not in failed_set], flags, mode)
    return failed_set


def _store_response(client: Client, seq: int, info: MessageInfo, uid: bool,
                    silent: bool, unchanged: int | None, before: int) -> None:
    """The untagged FETCH for one stored message; under UNCHANGEDSINCE a
    .SILENT store still reports a changed MODSEQ (RFC 7162 §3.1.3)."""
    mbox = client.mailbox
    assert mbox is not None
    uid_part = b"UID %d " % info.uid if uid else b""
    if not silent:
        client.send(b"* %d FETCH (%sFLAGS %s%s)\r\n" % (
            seq, uid_part, fetch.format_flags(info.flags, info.uid in client.recent_view()),
            client.modseq_part(info)))
    elif unchanged is not None and info.modseq != before:
        client.send(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, uid_part, info.modseq))


def _store_result(targets: list[tuple[int, MessageInfo]], failed: set[int], uid: bool) -> bytes:
    if not failed:
        return b"OK Store completed."
    ids = [m.uid if uid else s for s, m in targets if m.uid in failed]
    return b"OK [MODIFIED %s] Conditional STORE failed." % compress(sorted(ids))


add_command("STORE", cmd_store, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.NO_EXPUNGE)
