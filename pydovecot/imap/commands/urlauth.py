"""URLAUTH (RFC 4467) with extended URLFETCH (RFC 5524) and URL-PARTIAL
(RFC 5550), plus :func:`resolve_url` for CATENATE (RFC 4469).

The commands GENURLAUTH, RESETKEY, URLFETCH; keys, tokens and URL
resolution are in :mod:`pydovecot.imap.urlauth`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydovecot.imap import features, mime
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.imapurl import URLError
from pydovecot.imap.imapurl import parse as parse_url
from pydovecot.imap.parser import (
    Atom,
    ParseError,
    String,
    Token,
)
from pydovecot.imap.urlauth import (
    MECHANISMS,
    URLFetcher,
    URLNotFound,
    canon_mailbox,
    check_hostport,
    expired,
    keystore_for,
    load_target,
    make_token,
    url_text,
)
from pydovecot.storage.interfaces import (
    StorageError,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client



async def cmd_genurlauth(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if not args or len(args) % 2:
        raise ParseError("Invalid arguments.")
    urls: list[bytes] = []
    for i in range(0, len(args), 2):
        raw, mech = args[i], args[i + 1]
        if not isinstance(mech, Atom) or isinstance(mech, String):
            raise ParseError("Invalid arguments.")
        text = url_text(raw)
        urls.append((await _genurlauth(client, text, mech.decode("latin-1"))).encode("ascii"))
    client.send(b"* GENURLAUTH " + b" ".join(mime.imap_string(u) for u in urls) + b"\r\n")
    return b"OK GENURLAUTH completed."


async def _genurlauth(client: Client, text: str, mechanism: str) -> str:
    if mechanism.upper() not in MECHANISMS:
        raise ParseError(f"Unsupported URLAUTH mechanism: {mechanism[:30]}")
    try:
        url = parse_url(text)
    except URLError as e:
        raise ParseError(f"Invalid URL: {e}") from None
    if not url.is_rump():
        raise ParseError("Invalid URL: Must be an URLAUTH rump URL")
    if expired(url):
        raise ParseError("URLAUTH has already expired")
    if url.user is None:
        raise ParseError("Invalid URL: Missing user name")
    if url.user != client.ctx.user:
        raise ParseError("Not permitted to generate URLAUTH for this user")
    why = check_hostport(url, client.ctx.settings or {})
    if why is not None:
        raise ParseError(why)
    try:
        await load_target(client.storage, client.mailbox, url)
    except (URLNotFound, StorageError) as e:
        raise ParseError(f"Invalid URL: {e}") from None
    assert url.mailbox is not None and url.rump is not None
    name = canon_mailbox(url.mailbox)
    uidvalidity = (await client.storage.status(name)).uidvalidity
    key = await keystore_for(client.storage).get(name, uidvalidity, create=True)
    assert key is not None
    return f"{url.rump}:internal:{make_token(key, url.rump)}"


async def cmd_resetkey(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    store = keystore_for(client.storage)
    if not args:
        await store.reset(None)
        return b"OK All keys removed."
    if isinstance(args[0], list):
        raise ParseError("Invalid arguments.")
    for mech in args[1:]:
        if not isinstance(mech, bytes) or isinstance(mech, String):
            raise ParseError("Invalid arguments.")
        if mech.decode("latin-1").upper() not in MECHANISMS:
            return b"NO Unsupported URLAUTH mechanism."
    name = client.decode_mailbox(args[0])
    await client.storage.status(name)  # NO [NONEXISTENT] if it does not exist
    await store.reset(name)
    return b"OK [URLMECH INTERNAL] Key removed."


async def cmd_urlfetch(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if not args:
        raise ParseError("Invalid arguments.")
    requests: list[tuple[str, set[str] | None]] = []
    for arg in args:
        if isinstance(arg, list):
            if not arg:
                raise ParseError("Invalid arguments.")
            text = url_text(arg[0])
            params: set[str] = set()
            for p in arg[1:]:
                if not isinstance(p, Atom) or isinstance(p, String):
                    raise ParseError("Invalid URL fetch parameter.")
                name = p.upper_str()
                if name not in ("BODY", "BINARY", "BODYPARTSTRUCTURE"):
                    raise ParseError(f"Unknown URL fetch parameter: {name[:30]}")
                params.add(name)
            if {"BODY", "BINARY"} <= params:
                raise ParseError("URL cannot have both BODY and BINARY fetch parameters.")
            if not params:
                params.add("BODY")
            requests.append((text, params))
        else:
            requests.append((url_text(arg), None))
    fetcher = URLFetcher(client)
    for text, params in requests:
        client.send(await fetcher.urlfetch_one(text, params))
    return b"OK URLFETCH completed."


add_command("GENURLAUTH", cmd_genurlauth, Flag.NONE)
add_command("RESETKEY", cmd_resetkey, Flag.NONE)
add_command("URLFETCH", cmd_urlfetch, Flag.NONE)
features.provide(__name__, "URLAUTH", "URLAUTH=BINARY", "URL-PARTIAL")
