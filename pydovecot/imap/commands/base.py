"""The commands of any state: CAPABILITY, NOOP, CHECK, LOGOUT, and the
login-state ones (LOGIN, AUTHENTICATE, STARTTLS), refused once logged in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, Silent, bad
from pydovecot.imap.parser import (
    Token,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client



def cmd_capability(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    client.send(b"* CAPABILITY " + client.capabilities + b"\r\n")
    return b"OK Capability completed."


def cmd_noop(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    return b"OK NOOP completed."


def cmd_check(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    return b"OK Check completed."


def cmd_logout(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    client.logout(tag)
    raise Silent()


def cmd_login(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    raise bad("Already logged in.")


def cmd_starttls(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    raise CommandError(b"BAD TLS is already active or not available in this state.")


add_command("CAPABILITY", cmd_capability, Flag.NONE)
add_command("NOOP", cmd_noop, Flag.NONE)
add_command("CHECK", cmd_check, Flag.SELECTED)
add_command("LOGOUT", cmd_logout, Flag.NO_SYNC)
add_command("LOGIN", cmd_login, Flag.NONE)
add_command("AUTHENTICATE", cmd_login, Flag.NONE)
add_command("STARTTLS", cmd_starttls, Flag.NONE)
features.provide(__name__, "IMAP4rev1")
