"""URLAUTH (RFC 4467) with extended URLFETCH (RFC 5524) and URL-PARTIAL
(RFC 5550), plus :func:`resolve_url` for CATENATE (RFC 4469).

The commands GENURLAUTH, RESETKEY and URLFETCH are in
``commands/urlauth.py``; this module has the keys, tokens, checks and URL
resolution they use (and :class:`URLFetcher`, one URLFETCH answer).  Only the ``INTERNAL``
mechanism exists: a URL's token is ``01`` + HMAC-SHA256 over the rump URL
(the text up to and including ``;URLAUTH=<access>``), hex, keyed by a
random 256-bit key per mailbox.  Keys are mailbox attributes kept by the storage
(``/private/vendor/vendor.dovecot/pvt/urlauth``), so they go with their
mailbox and a deleted and re-created mailbox does not inherit them;
RESETKEY replaces them, which invalidates every URL signed with them.

Trust: the session's user (``ctx.user``, from the master) and its storage
are trusted; every URL is untrusted.  This process serves one uid, but
virtual users may share it, so a URL is only ever resolved against the
session's own storage and only when the URL names the session's user —
anything else is ``NIL`` before storage is touched.  Access identifiers:
``anonymous`` and ``authuser`` pass for any logged-in session, ``user+X``
and ``submit+X`` only for user X.  (Dovecot reserves ``submit+`` for its
submission service's imap-urlauth connection; here a submission agent
reaches the mail as the owner, who may read it anyway, so nothing is
granted that FETCH would not give.)

``imap_urlauth_host`` (if set; ``*`` = any host) and ``imap_urlauth_port``
(default 143) restrict the URLs' authority as in Dovecot; unset, any host
and port are accepted, since the token covers the whole rump URL anyway.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from pydovecot.imap import fetch, mime
from pydovecot.imap.imapurl import ImapURL, URLError, apply_partial
from pydovecot.imap.imapurl import parse as parse_url
from pydovecot.imap.parser import Atom, Literal, ParseError, Token, as_bytes
from pydovecot.storage.interfaces import IMailbox, IMailStorage, MailboxNotFound, StorageError

log = Logger(namespace="pydovecot.imap.urlauth")

KEY_LEN = 32
TOKEN_VERSION = "01"
MECHANISMS = ("INTERNAL",)
CAPABILITIES = ("URLAUTH", "URLAUTH=BINARY", "URL-PARTIAL")
_IDENTITY_CTE = {b"", b"7bit", b"8bit", b"binary"}


def canon_mailbox(name: str) -> str:
    """INBOX is case-insensitive, as in the session's mailbox arguments."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX/"):
        return "INBOX" + name[5:]
    return name


# -- keys ---------------------------------------------------------------------------


#: The mailbox attribute holding a mailbox's key (hex), internal to the
#: server as Dovecot's ``vendor.dovecot/pvt`` entries: METADATA never shows it.
KEY_ATTRIBUTE = "/private/vendor/vendor.dovecot/pvt/urlauth"


class KeyStore:
    """Per-mailbox URLAUTH keys of one user, kept as a mailbox attribute
    (:data:`KEY_ATTRIBUTE`) by the storage: a key goes with its mailbox on
    RENAME and DELETE, so a re-created mailbox never inherits one."""

    def __init__(self, storage: IMailStorage):
        self.storage = storage

    async def _stored(self, mailbox: str) -> bytes | None:
        raw = await self.storage.get_attribute(mailbox, KEY_ATTRIBUTE)
        if not raw:
            return None
        try:
            key = bytes.fromhex(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            log.error("Corrupt URLAUTH key of a mailbox: ignored (its URLs stop working)")
            return None
        return key if len(key) == KEY_LEN else None

    async def get(self, mailbox: str, uidvalidity: int, create: bool) -> bytes | None:
        """The mailbox's key; a new one if ``create`` and there is none.
        (``uidvalidity`` is kept for callers: the attribute dies with its
        mailbox, so a key never outlives the UIDVALIDITY it was made for.)"""
        key = await self._stored(mailbox)
        if key is not None or not create:
            return key
        await self.storage.set_attribute(mailbox, KEY_ATTRIBUTE,
                                         secrets.token_bytes(KEY_LEN).hex().encode())
        return await self._stored(mailbox)  # what was stored, if another session raced us

    async def reset(self, mailbox: str | None = None) -> None:
        """Forget one mailbox's key, or all of them."""
        if mailbox is not None:
            await self.storage.set_attribute(mailbox, KEY_ATTRIBUTE, None)
            return
        for info in await self.storage.list_mailboxes():
            if "\\Noselect" in info.attributes:
                continue
            try:
                await self.storage.set_attribute(info.name, KEY_ATTRIBUTE, None)
            except MailboxNotFound:
                pass  # removed meanwhile


def keystore_for(storage: IMailStorage) -> KeyStore:
    """The KeyStore of a storage."""
    return KeyStore(storage)


def make_token(key: bytes, rump: str) -> str:
    return TOKEN_VERSION + hmac.new(key, rump.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_token(key: bytes, rump: str, token: str) -> bool:
    return hmac.compare_digest(make_token(key, rump), token.lower())


# -- checks ---------------------------------------------------------------------------


def check_hostport(url: ImapURL, settings: dict[str, Any]) -> str | None:
    """Why the URL's authority is not this server's, or None."""
    host = str(settings.get("imap_urlauth_host") or "").strip().lower()
    if not host:
        return None
    if host != "*" and url.host != host:
        return "Invalid URL: Inappropriate host name"
    try:
        port = int(str(settings.get("imap_urlauth_port") or 143))
    except ValueError:
        port = 143
    if (url.port or 143) != port:
        return "Invalid URL: Inappropriate server port"
    return None


def check_access(url: ImapURL, user: str, anonymous: bool = False) -> str | None:
    """Why ``user`` may not use the URL's access identifier, or None."""
    kind = url.access_kind
    if kind == "anonymous":
        return None
    if kind == "authuser":
        return "No 'authuser' access allowed for anonymous user" if anonymous else None
    if kind in ("user", "submit"):
        if anonymous or url.access_user != user:
            return f"No '{kind}+' access allowed for this user"
        return None
    return "URL is missing URLAUTH"


def expired(url: ImapURL, now: datetime.datetime | None = None) -> bool:
    if url.expire is None:
        return False
    return (now or datetime.datetime.now(datetime.UTC)) > url.expire


# -- message parts ----------------------------------------------------------------------


@dataclass
class Target:
    """What a URL names inside a message."""

    message: mime.ParsedMessage
    section: fetch.Section
    part: mime.Part | None  # the MIME part for BINARY/BODYPARTSTRUCTURE, if any
    data: bytes  # BODY[section] bytes, before ;PARTIAL=


class URLNotFound(Exception):
    """The URL names nothing that exists (mailbox, UIDVALIDITY, UID, part)."""


def _find_section(msg: mime.ParsedMessage, text: str | None) -> tuple[fetch.Section, mime.Part | None]:
    if text is None:
        return fetch.Section(), msg.root
    try:
        section = fetch.parse_section(text.encode("utf-8"))
    except (ParseError, UnicodeError):
        raise URLNotFound("Invalid section") from None
    part: mime.Part | None = msg.root
    if section.numbers:
        part = mime.find_part(msg.root, section.numbers)
        if part is None:
            raise URLNotFound("No such section")
        if section.text not in ("", "MIME"):
            if part.message is None:
                raise URLNotFound("No such section")
            part = part.message
    if section.text not in ("", "TEXT"):
        part = None  # a header block has no structure of its own
    return section, part


async def load_target(storage: Any, selected: IMailbox | None, url: ImapURL) -> Target:
    """Read what ``url`` names from ``storage`` (URLNotFound/StorageError).

    Uses the selected view when the URL names that mailbox, else a
    short-lived read-only view (which takes no \\Recent)."""
    assert url.mailbox is not None and url.uid is not None
    name = canon_mailbox(url.mailbox)
    view = selected if selected is not None and selected.name == name else None
    opened = None
    if view is None:
        opened = view = await storage.open(name, readonly=True)
    try:
        if url.uidvalidity is not None and url.uidvalidity != view.uidvalidity:
            raise URLNotFound("UIDVALIDITY mismatch")
        if not any(info.uid == url.uid for info in view.messages):
            raise URLNotFound("No such message")
        with await view.message_file(url.uid) as f:
            msg = mime.ParsedMessage(mime.normalize_crlf(f.read()))
    finally:
        if opened is not None:
            opened.close()
    section, part = _find_section(msg, url.section)
    return Target(msg, section, part, fetch.section_bytes(msg, section))


def binary_data(target: Target) -> bytes | None:
    """RFC 5524 BINARY: the part with its transfer encoding undone (a
    multipart or message with every part inside decoded, as FETCH BINARY
    sends it), or None (NIL) for a header section or an unknown encoding."""
    part = target.part
    if part is None or target.section.text not in ("",):
        return None
    data = target.message.data
    if (part.multipart or part.message is not None or not target.section.numbers) and \
            mime.unknown_cte(part.message if part.message is not None else part) is not None:
        return None
    if not target.section.numbers:
        return mime.binary_convert(data, part, 0)
    if part.multipart:
        return mime.binary_convert(data, part, part.body_start)
    if part.message is not None:
        return mime.binary_convert(data, part.message, part.body_start)
    return mime.cte_decode(data[part.body_start:part.end], mime.part_cte(part))


# -- CATENATE ---------------------------------------------------------------------------


async def resolve_url(session: Any, url: str | bytes) -> bytes | None:
    """The bytes a CATENATE URL part names, or None if it is not valid.

    Relative URLs are taken against the session's user and selected
    mailbox.  Absolute ones must name the session's user (or no user), and
    the configured host if one is set.  A URLAUTH URL must also pass every
    URLFETCH check.  ``;PARTIAL=`` (URL-PARTIAL) is applied.
    """
    try:
        return await _resolve(session, url)
    except (URLError, URLNotFound, StorageError, OSError) as e:
        log.debug("CATENATE URL refused: {why}", why=str(e))
        return None


async def _resolve(session: Any, text: str | bytes) -> bytes | None:
    user = session.ctx.user
    mbox = session.mailbox
    base = ImapURL(user=user)
    if mbox is not None:
        base.mailbox, base.uidvalidity = mbox.name, mbox.uidvalidity
    url = parse_url(text, base)
    if url.mailbox is None or url.uid is None or url.search is not None:
        return None
    if url.is_absolute:
        if url.user is not None and url.user != user:
            return None
        if check_hostport(url, session.ctx.settings or {}) is not None:
            return None
    if url.access is not None:
        if fetch_check(session, url) is not None:
            return None
        target, _why = await verified_target(session, url)
        if target is None:
            return None
    else:
        target = await load_target(session.storage, mbox, url)
    return apply_partial(target.data, url.partial)


# -- URLFETCH helpers -------------------------------------------------------------------


def fetch_check(session: Any, url: ImapURL) -> str | None:
    """Every URLFETCH check that needs no storage; the reason, or None."""
    if not url.is_urlauth():
        return "Invalid URL: Must be a full URLAUTH URL"
    if url.user is None:
        return "Invalid URLAUTH: Missing user name"
    if url.user != session.ctx.user:
        return "Not permitted to fetch URLAUTH for this user"
    assert url.mechanism is not None
    if url.mechanism.upper() not in MECHANISMS:
        return "Unsupported URLAUTH mechanism"
    if expired(url):
        return "URLAUTH has expired"
    why = check_access(url, session.ctx.user)
    if why is not None:
        return why
    return check_hostport(url, session.ctx.settings or {})


async def verified_target(session: Any, url: ImapURL) -> tuple[Target | None, str]:
    """Verify the token against the mailbox key, then load the target."""
    assert url.mailbox is not None and url.rump is not None and url.token is not None
    name = canon_mailbox(url.mailbox)
    try:
        status = await session.storage.status(name)
    except StorageError:
        # RFC 4467: compute a token with a plausible key anyway (timing).
        verify_token(secrets.token_bytes(KEY_LEN), url.rump, url.token)
        return None, "Invalid URLAUTH: Mailbox doesn't exist"
    key = await keystore_for(session.storage).get(name, status.uidvalidity, create=False)
    if key is None:
        verify_token(secrets.token_bytes(KEY_LEN), url.rump, url.token)
        return None, "URLAUTH verification failed"
    if not verify_token(key, url.rump, url.token):
        return None, "URLAUTH verification failed"
    try:
        return await load_target(session.storage, session.mailbox, url), ""
    except (URLNotFound, StorageError, OSError) as e:
        return None, f"Invalid URLAUTH: {e}"


def url_text(tok: Token) -> str:
    if not isinstance(tok, bytes | Literal) or (isinstance(tok, Atom) and tok.upper() == b"NIL"):
        raise ParseError("Invalid URL")
    raw = as_bytes(tok)
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def literal(data: bytes, binary: bool = False) -> bytes:
    tilde = b"~" if binary and b"\0" in data else b""
    return tilde + b"{%d}\r\n" % len(data) + data


# -- the commands -------------------------------------------------------------------------


class URLFetcher:
    """URLFETCH's answer for one URL, for one client (its user, storage and
    selected mailbox are what URLs are resolved against)."""

    def __init__(self, client: Any):
        self.client = client

    @property
    def ctx(self) -> Any:
        return self.client.ctx

    @property
    def storage(self) -> Any:
        return self.client.storage

    @property
    def mailbox(self) -> IMailbox | None:
        return self.client.mailbox

    async def urlfetch_one(self, text: str, params: set[str] | None) -> bytes:
        head = b"* URLFETCH " + mime.imap_string(text.encode("latin-1"))
        target, why = None, ""
        try:
            url = parse_url(text)
        except URLError as e:
            why = f"Invalid URLAUTH: {e}"
        else:
            why = fetch_check(self, url) or ""
            if not why:
                target, why = await verified_target(self, url)
        if target is None:
            return head + b" NIL\r\n* NO " + why.encode("utf-8", "replace")[:200] + b".\r\n"
        data = apply_partial(target.data, url.partial)
        if params is None:
            return head + b" " + literal(data) + b"\r\n"
        out = [head]
        if "BODYPARTSTRUCTURE" in params and target.part is not None:
            structure = (mime.binary_bodystructure(target.message.data, target.part)
                         if "BINARY" in params else mime.bodystructure(target.part, True))
            out.append(b" (BODYPARTSTRUCTURE " + structure + b")")
        if "BODY" in params:
            out.append(b" (BODY " + literal(data) + b")")
        elif "BINARY" in params:
            binary = binary_data(target)
            value = b"NIL" if binary is None else literal(apply_partial(binary, url.partial), True)
            out.append(b" (BINARY " + value + b")")
        if len(out) == 1:
            out.append(b" NIL")
        return b"".join(out) + b"\r\n"
