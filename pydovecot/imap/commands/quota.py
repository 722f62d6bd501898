"""QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA, SETQUOTA, as Dovecot's
imap_quota plugin answers them.

Offered only when ``mail_plugins`` of ``protocol imap`` names
``imap_quota`` (capabilities ``QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE``);
otherwise the commands are unknown, as in Dovecot without the plugin.
STORAGE is reported in units of 1024 octets.  SETQUOTA is refused: limits
come from the configuration and the userdb, not from the user.  Trusts the
storage's answers; the client's root and mailbox names are only looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError
from pydovecot.imap.parser import Token, as_bytes
from pydovecot.imap.syntax import astring
from pydovecot.storage.interfaces import StorageError

if TYPE_CHECKING:
    from pydovecot.imap.client import Client

CAPABILITIES = ("QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE")
features.provide(__name__, *CAPABILITIES)


def enabled(settings: dict) -> bool:
    """``imap_quota`` in the imap protocol's ``mail_plugins``."""
    return "imap_quota" in str(settings.get("mail_plugins") or "").replace(",", " ").split()


def _unknown(name: str) -> CommandError:
    return CommandError(b"BAD Error in IMAP command %s: Unknown command." % name.encode())


def quota_line(root: str, resources) -> bytes:
    items = []
    for r in resources:
        if not r.limit:  # unlimited: not reported, as Dovecot does
            continue
        if r.name == "STORAGE":
            # Dovecot rounds the usage up to whole KiB
            items.append(b"STORAGE %d %d" % ((r.usage + 1023) // 1024, r.limit // 1024))
        else:
            items.append(b"%s %d %d" % (r.name.encode(), r.usage, r.limit))
    return b"* QUOTA %s (%s)\r\n" % (astring(root.encode()), b" ".join(items))


async def cmd_getquotaroot(client: Client, tag: bytes, args: list[Token],
                           uid: bool = False) -> bytes:
    if not enabled(client.ctx.settings or {}):
        raise _unknown("GETQUOTAROOT")
    if len(args) != 1:
        raise CommandError(b"BAD Invalid arguments.")
    name = client.decode_mailbox(args[0])
    limited = []
    for root in await client.storage.quota_roots(name):
        resources = await client.storage.get_quota(root)
        if any(r.limit for r in resources):  # unlimited roots are not listed
            limited.append((root, resources))
    if not limited:
        return b"OK No quota."
    out = [b"* QUOTAROOT " + client.encode_mailbox(name)
           + b"".join(b" " + astring(r.encode()) for r, _ in limited) + b"\r\n"]
    out += [quota_line(root, resources) for root, resources in limited]
    client.send(b"".join(out))
    return b"OK Getquotaroot completed."


async def cmd_getquota(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if not enabled(client.ctx.settings or {}):
        raise _unknown("GETQUOTA")
    if len(args) != 1 or isinstance(args[0], list):
        raise CommandError(b"BAD Invalid arguments.")
    root = as_bytes(args[0]).decode("utf-8", "replace")
    try:
        resources = await client.storage.get_quota(root)
    except StorageError as e:
        if e.code != "NONEXISTENT":
            raise
        raise CommandError(b"NO Quota root doesn't exist.") from None
    if any(r.limit for r in resources):  # an unlimited root: no QUOTA line
        client.send(quota_line(root, resources))
    return b"OK Getquota completed."


def cmd_setquota(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if not enabled(client.ctx.settings or {}):
        raise _unknown("SETQUOTA")
    if len(args) < 2:
        raise CommandError(b"BAD Missing arguments.")
    if len(args) != 2 or not isinstance(args[1], list):
        raise CommandError(b"BAD Invalid arguments.")
    return b"NO Quota can be changed only by admin."


add_command("GETQUOTAROOT", cmd_getquotaroot, Flag.NONE)
add_command("GETQUOTA", cmd_getquota, Flag.NONE)
add_command("SETQUOTA", cmd_setquota, Flag.NONE)
