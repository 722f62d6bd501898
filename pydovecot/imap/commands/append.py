"""APPEND (RFC 3501 6.3.11) with MULTIAPPEND (RFC 3502, all or nothing),
CATENATE (RFC 4469; ``URL`` parts are resolved by
:func:`pydovecot.imap.urlauth.resolve_url`), BINARY literal8 (RFC 3516) and
the ``UTF8 (~{n})`` data item (RFC 6855).

Trusts the client's storage and settings; every token is client data.
"""

from __future__ import annotations

import datetime
import tempfile
from typing import TYPE_CHECKING, BinaryIO

from twisted.logger import Logger
from twisted.python.failure import Failure

from pydovecot.imap import features, mime, urlauth
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, error_line
from pydovecot.imap.parser import (
    Atom,
    Literal,
    LiteralString,
    String,
    Token,
    as_bytes,
    as_file,
    compress,
)
from pydovecot.imap.syntax import parse_datetime, parse_flags
from pydovecot.storage.interfaces import (
    MailboxNotFound,
    StorageError,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client

log = Logger(namespace="pydovecot.imap")
CATENATE_SPOOL = 1024 * 1024


class _Message:
    """One message of an APPEND: flags, date and where its bytes come from."""

    def __init__(self, flags: list[str], when: datetime.datetime | None):
        self.flags = flags
        self.when = when
        self.data: Token | None = None
        self.parts: list[tuple[str, Token]] = []  # CATENATE: ("TEXT", tok) / ("URL", tok)


async def append_command(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if len(args) < 2:
        raise CommandError(b"BAD Missing arguments")
    name = client.decode_mailbox(args[0])
    messages = _parse_append(client, args[1:])
    try:
        await client.storage.status(name)
    except MailboxNotFound:
        raise CommandError(b"NO [TRYCREATE] Mailbox doesn't exist: " + client.encode_mailbox(name)) from None
    files: list[BinaryIO] = []
    try:
        for msg in messages:
            files.append(await _message_file(client, msg))
        uids: list[int] = []
        validity = 0
        try:
            for msg, f in zip(messages, files, strict=True):
                validity, uid = await client.storage.append(name, f, msg.flags, msg.when)
                uids.append(uid)
        except BaseException:
            await _undo_append(client, name, uids)
            raise
    finally:
        for f in files:
            f.close()
    return b"OK [APPENDUID %d %s] Append completed." % (validity, compress(uids))


def _parse_append(client: Client, rest: list[Token]) -> list[_Message]:
    out: list[_Message] = []
    i = 0
    while i < len(rest):
        flags: list[str] = []
        when = None
        if isinstance(rest[i], list):
            flags = parse_flags(rest[i])
            i += 1
        if (i + 1 < len(rest) and isinstance(rest[i], String)
                and not isinstance(rest[i], LiteralString)):
            when = parse_datetime(bytes(rest[i]))  # type: ignore[arg-type]
            i += 1
        if i >= len(rest):
            raise CommandError(b"BAD Missing message")
        msg = _Message(flags, when)
        tok = rest[i]
        if isinstance(tok, Atom) and tok.upper() in (b"CATENATE", b"UTF8"):
            if i + 1 >= len(rest) or not isinstance(rest[i + 1], list) or not rest[i + 1]:
                raise CommandError(b"BAD Invalid %s arguments" % tok.upper())
            inner = rest[i + 1]
            if tok.upper() == b"UTF8":
                if not client.utf8:
                    raise CommandError(b"BAD UTF8 APPEND needs ENABLE UTF8=ACCEPT")
                if len(inner) != 1 or not isinstance(inner[0], String | Literal):
                    raise CommandError(b"BAD Invalid UTF8 arguments")
                msg.data = inner[0]
            else:
                msg.parts = _parse_catenate(inner)
            i += 2
        elif isinstance(tok, String | Literal) and not isinstance(tok, Atom):
            msg.data = tok
            i += 1
        else:
            raise CommandError(b"BAD Invalid arguments")
        out.append(msg)
    if not out:
        raise CommandError(b"BAD Missing message")
    return out


def _parse_catenate(tokens: list[Token]) -> list[tuple[str, Token]]:
    parts: list[tuple[str, Token]] = []
    if len(tokens) % 2:
        raise CommandError(b"BAD Invalid CATENATE arguments")
    for kind, value in zip(tokens[::2], tokens[1::2], strict=True):
        if not isinstance(kind, Atom) or kind.upper() not in (b"TEXT", b"URL"):
            raise CommandError(b"BAD Invalid CATENATE part")
        if isinstance(value, list) or (kind.upper() == b"URL" and isinstance(value, Literal)):
            raise CommandError(b"BAD Invalid CATENATE part")
        parts.append((kind.upper().decode(), value))
    return parts


async def _message_file(client: Client, msg: _Message) -> BinaryIO:
    """The message's bytes as a file; NO for empty, too big, bad URL."""
    if msg.data is not None:
        size = msg.data.size if isinstance(msg.data, Literal) else len(msg.data)  # type: ignore[arg-type]
        _check_size(client, size)
        return as_file(msg.data)
    out: BinaryIO = tempfile.SpooledTemporaryFile(max_size=CATENATE_SPOOL)  # type: ignore[assignment]
    try:
        total = 0
        for kind, value in msg.parts:
            data = await _resolve_url(client, as_bytes(value)) if kind == "URL" else None
            if data is None:
                src = as_file(value)
                while chunk := src.read(65536):
                    total += len(chunk)
                    if total > client.append_limit:
                        raise CommandError(b"NO [TOOBIG] Mail is larger than the APPENDLIMIT.")
                    out.write(chunk)
            else:
                total += len(data)
                if total > client.append_limit:
                    raise CommandError(b"NO [TOOBIG] Mail is larger than the APPENDLIMIT.")
                out.write(data)
        _check_size(client, total)
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


def _check_size(client: Client, size: int) -> None:
    if size == 0:
        raise CommandError(b"NO Can't save a zero byte message.")
    if size > client.append_limit:
        raise CommandError(b"NO [TOOBIG] Mail is larger than the APPENDLIMIT.")


async def _resolve_url(client: Client, url: bytes) -> bytes:
    """A CATENATE URL part's bytes (URLAUTH's resolver)."""
    shown = mime.imap_string(url)
    try:
        data = await urlauth.resolve_url(client, url)
    except StorageError:
        raise CommandError(b"NO [BADURL %s] Cannot fetch the URL." % shown) from None
    if data is None:
        raise CommandError(b"NO [BADURL %s] Cannot fetch the URL." % shown)
    return bytes(data)


async def _undo_append(client: Client, name: str, uids: list[int]) -> None:
    """MULTIAPPEND is all or nothing: expunge what was saved."""
    if not uids:
        return
    try:
        view = await client.storage.open(name)
        try:
            await view.store(uids, ["\\Deleted"], "+")
            await view.expunge(uids)
        finally:
            view.close()
    except Exception:
        log.error("Undoing a failed MULTIAPPEND failed: {e}", e=error_line(Failure()),
                  log_prefix=client.prefix)


add_command("APPEND", append_command, Flag.NONE)
features.provide(__name__, "MULTIAPPEND", "CATENATE", "APPENDLIMIT")
