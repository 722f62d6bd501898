"""GETMETADATA and SETMETADATA (RFC 5464): mailbox and server annotations.

Entries are mailbox attributes of the storage
(:meth:`~pydovecot.storage.interfaces.IMailStorage.get_attribute` …), kept
in Dovecot's ``dovecot-attributes`` file dict, so Dovecot and pydovecot
read each other's entries.  The mailbox ``""`` is the server
(METADATA-SERVER).  Offered only with ``imap_metadata = yes`` (Dovecot's
default is no); otherwise both commands answer ``NO [CANNOT]`` as
Dovecot's do.

Behaviour follows Dovecot 2.3 answer for answer (tests compare them):
entry names are checked with Dovecot's messages (``BAD``), compared and
returned lower-cased; values are sent as literals, missing entries as
``NIL`` when asked for by name (``DEPTH 0``); ``MAXSIZE`` skips longer
values and reports ``[METADATA LONGENTRIES n]``; values holding NUL are
refused (``NO [CANNOT]``, Dovecot's dict can't keep them); entries under
``/private/vendor/vendor.dovecot/pvt/`` are internal (URLAUTH keys): never
listed, reported ``NIL``, refused on change.  One SETMETADATA is applied
at once or not at all.  Where Dovecot 2.3 refuses server ``/shared/``
entries and fails on a repeated entry, we store them (the last value
wins).  The entry names and values are the client's (untrusted): every
count and size is bounded by the storage's ``mail_attribute_*`` limits
and :data:`MAX_ENTRIES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, bad
from pydovecot.imap.parser import Atom, Literal, String, Token, as_bytes
from pydovecot.storage.attributes import INTERNAL_PREFIX

if TYPE_CHECKING:
    from pydovecot.imap.client import Client

#: Entries one GETMETADATA/SETMETADATA may name.
MAX_ENTRIES = 1000
#: The largest MAXSIZE a client may give (Dovecot: a 32-bit number).
MAX_MAXSIZE = 0xFFFFFFFF
DISABLED = b"NO [CANNOT] Generic mailbox attributes not enabled."
_SCOPES = ("/private", "/shared")


def enabled(settings: dict) -> bool:
    """``imap_metadata = yes``."""
    return str(settings.get("imap_metadata") or "no").strip().lower() in ("yes", "y", "true", "1")


def check_entry(name: str) -> str:
    """An entry name as Dovecot's imap_metadata_verify_entry_name checks
    it (``BAD`` with its message), lower-cased."""
    if not name.startswith("/"):
        raise bad("Entry name must begin with '/'")
    for i, c in enumerate(name):
        if c == "/":
            if i > 0 and name[i - 1] == "/":
                raise bad("Entry name can't contain consecutive '/'")
            if i + 1 == len(name):
                raise bad("Entry name can't end with '/'")
        elif c == "*":
            raise bad("Entry name can't contain '*'")
        elif c == "%":
            raise bad("Entry name can't contain '%'")
        elif ord(c) <= 0x19 or ord(c) == 0x7F:
            raise bad("Entry name can't contain control chars")
    lower = name.lower()
    scope = lower.split("/", 2)[1] if lower.count("/") >= 1 else ""
    if "/" + scope not in _SCOPES:
        raise bad("Entry name must begin with /private or /shared")
    return lower


def _is_internal(entry: str) -> bool:
    rest = entry.split("/", 2)[2] if entry.count("/") >= 2 else ""
    return rest.startswith(INTERNAL_PREFIX)


def _entry_name(tok: Token) -> str:
    if isinstance(tok, list):
        raise bad("Invalid arguments")
    raw = as_bytes(tok)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("Entry name is not valid UTF-8") from None


def _options(tokens: list[Token]) -> tuple[int | None, int]:
    """GETMETADATA's options → (MAXSIZE or None, DEPTH; -1 = infinity)."""
    maxsize: int | None = None
    depth = 0
    it = iter(tokens)
    for opt in it:
        if not isinstance(opt, Atom):
            raise bad("Unknown option")
        name = opt.upper()
        value = next(it, None)
        if name == b"MAXSIZE":
            if not isinstance(value, Atom) or not value.isdigit() or int(value) > MAX_MAXSIZE:
                raise bad("Invalid value for MAXSIZE option")
            maxsize = int(value)
        elif name == b"DEPTH":
            if not isinstance(value, Atom) or value.lower() not in (b"0", b"1", b"infinity"):
                raise bad("Invalid value for DEPTH option")
            depth = -1 if value.lower() == b"infinity" else int(value)
        else:
            raise bad("Unknown option")
    return maxsize, depth


def _literal(value: bytes) -> bytes:
    return b"{%d}\r\n%s" % (len(value), value)


def _within(entry: str, key: str, depth: int) -> bool:
    """``key`` is ``entry`` or a descendant at most ``depth`` levels below."""
    if key == entry:
        return True
    if not key.startswith(entry + "/"):
        return False
    return depth < 0 or key[len(entry) + 1:].count("/") < depth


async def cmd_getmetadata(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    options: list[Token] = []
    if args and isinstance(args[0], list):
        options, args = args[0], args[1:]
    if len(args) != 2:
        raise bad("Invalid arguments")
    maxsize, depth = _options(options)
    name = client.decode_mailbox(args[0]) if as_bytes(args[0]) != b"" else ""
    raw_entries = args[1] if isinstance(args[1], list) else [args[1]]
    if len(raw_entries) > MAX_ENTRIES:
        raise CommandError(b"NO [LIMIT] Too many entries")
    entries = [check_entry(_entry_name(t)) for t in raw_entries]
    if not enabled(client.ctx.settings):
        raise CommandError(DISABLED)
    storage = client.storage
    found: list[tuple[str, bytes | None]] = []
    seen: set[str] = set()
    for entry in entries:
        if depth == 0:
            keys = [entry]  # asked for by name: NIL when missing
        else:
            listed = await defer.maybeDeferred(storage.attribute_keys, name, entry)
            keys = [k for k in listed if _within(entry, k, depth)]
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            value = None
            if not _is_internal(key):
                value = await defer.maybeDeferred(storage.get_attribute, name, key)
            elif depth != 0:
                continue  # internal entries are never listed
            if value is None and depth != 0:
                continue  # gone meanwhile
            found.append((key, value))
    longest = 0
    parts: list[bytes] = []
    for key, value in found:
        if value is not None and maxsize is not None and len(value) > maxsize:
            longest = max(longest, len(value))
            continue
        parts.append(key.encode("utf-8") + b" " + (b"NIL" if value is None else _literal(value)))
    if parts:
        head = b"* METADATA " + (b'""' if name == "" else client.encode_mailbox(name)) + b" ("
        client.send(head)
        for i, part in enumerate(parts):
            if client.output_blocked:
                await client.drained()
            client.send((b" " if i else b"") + part)
        client.send(b")\r\n")
    if longest:
        return b"OK [METADATA LONGENTRIES %d] Getmetadata completed." % longest
    return b"OK Getmetadata completed."


async def cmd_setmetadata(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if len(args) != 2 or not isinstance(args[1], list):
        raise bad("Invalid arguments")
    name = client.decode_mailbox(args[0]) if as_bytes(args[0]) != b"" else ""
    pairs = args[1]
    if len(pairs) > 2 * MAX_ENTRIES:
        raise CommandError(b"NO [LIMIT] Too many entries")
    changes: dict[str, bytes | None] = {}
    for i in range(0, len(pairs), 2):
        entry = check_entry(_entry_name(pairs[i]))
        if entry in _SCOPES:
            raise bad("Entry name must name an entry below /private or /shared")
        if i + 1 >= len(pairs):
            raise bad("Entry value missing")
        tok = pairs[i + 1]
        if isinstance(tok, list):
            raise bad("Invalid value")
        if isinstance(tok, Atom) and tok.upper() == b"NIL":
            value = None
        elif isinstance(tok, String | Literal):  # quoted, literal or literal8
            value = as_bytes(tok)
        else:
            raise bad("Invalid value")
        changes[entry] = value
    if not enabled(client.ctx.settings):
        raise CommandError(DISABLED)
    for entry, value in changes.items():
        if _is_internal(entry):
            raise CommandError(b"NO [CANNOT] Internal mailbox attributes cannot be accessed")
        if value is not None and b"\x00" in value:
            raise CommandError(b"NO [CANNOT] Attribute string value has NULs")
    await defer.maybeDeferred(client.storage.set_attributes, name, changes)
    return b"OK Setmetadata completed."


add_command("GETMETADATA", cmd_getmetadata, Flag.NONE)
add_command("SETMETADATA", cmd_setmetadata, Flag.NONE)
features.provide(__name__, "METADATA")
