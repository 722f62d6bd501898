"""IMAP URLs (RFC 5092, with RFC 4467's URLAUTH and RFC 5550's PARTIAL).

:func:`parse` turns URL text into an :class:`ImapURL`; :func:`format_url`
turns one back into canonical text.  Everything parsed here is untrusted
client input: the grammar is checked character by character, percent
escapes are decoded strictly (UTF-8 only, no control characters), numbers
are bounded, and every failure is a :class:`URLError` (a ``ValueError``)
with a short message fit for a ``BAD`` or ``* NO`` line — never anything
else.  Nothing here touches storage or decides access; that is
:mod:`pydovecot.imap.urlauth`'s job.

Mailbox names in URLs are UTF-8, percent-encoded (RFC 5092 §3.3), with
``/`` as the hierarchy separator, the same form the storage uses.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

#: RFC 3986 characters an IMAP URL may contain at all (no fragment).
_URL_CHARS = re.compile(r"^[A-Za-z0-9\-._~%!$&'()*+,;=:@/?\[\]]*$")
#: uchar = unreserved / pct-encoded / sub-delims-sh; achar adds & = ~
_ACHAR = r"A-Za-z0-9\-._~!$'()*+,&=%"
#: bchar = achar / ":" / "@" / "/"
_BCHAR = _ACHAR + r":@/"
_ACHARS = re.compile(rf"^[{_ACHAR}]+$")
_BCHARS = re.compile(rf"^[{_BCHAR}]+$")
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,=]+)$")
_NZ = re.compile(r"^[1-9][0-9]{0,9}$")
_NUM = re.compile(r"^(?:0|[1-9][0-9]{0,9})$")
_MECH = re.compile(r"^[A-Za-z0-9\-.]+$")
_TOKEN = re.compile(r"^[0-9A-Fa-f]{32,}$")
_DATETIME = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)$"
)
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
MAX_NUMBER = 0xFFFFFFFF

#: Characters left unescaped when formatting (everything else is %XX of UTF-8).
_SAFE_USER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$'()*+,&=")
_SAFE_PATH = _SAFE_USER | frozenset(":@/")

ACCESS_FIXED = ("authuser", "anonymous")
ACCESS_PREFIXES = ("submit+", "user+")


class URLError(ValueError):
    """The URL is not a valid IMAP URL (for the way it is used)."""


@dataclass
class ImapURL:
    """A parsed IMAP URL.  Text fields are percent-decoded Unicode."""

    host: str | None = None  # None: relative, resolved against no server
    port: int | None = None
    user: str | None = None
    auth_type: str | None = None  # ;AUTH=<type> in the userinfo
    mailbox: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    section: str | None = None
    partial: tuple[int, int | None] | None = None  # (offset, length or None)
    search: str | None = None  # the decoded ?query of a message-list URL
    expire: datetime.datetime | None = None
    access: str | None = None  # authuser, anonymous, submit+<user>, user+<user>
    mechanism: str | None = None  # URLAUTH mechanism as sent (e.g. "internal")
    token: str | None = None  # URLAUTH verifier, hex
    rump: str | None = None  # the URL text up to and including ;URLAUTH=<access>

    @property
    def is_absolute(self) -> bool:
        return self.host is not None

    @property
    def access_user(self) -> str | None:
        """The user named by ``submit+``/``user+`` access, else None."""
        if self.access is None:
            return None
        for prefix in ACCESS_PREFIXES:
            if self.access.lower().startswith(prefix):
                return self.access[len(prefix):]
        return None

    @property
    def access_kind(self) -> str | None:
        """``authuser``, ``anonymous``, ``submit`` or ``user`` (lower case)."""
        if self.access is None:
            return None
        low = self.access.lower()
        if low in ACCESS_FIXED:
            return low
        return low.split("+", 1)[0]

    def is_rump(self) -> bool:
        """A URLAUTH rump URL (what GENURLAUTH takes)."""
        return (self.is_absolute and self.mailbox is not None and self.uid is not None
                and self.search is None and self.access is not None and self.mechanism is None)

    def is_urlauth(self) -> bool:
        """A complete URLAUTH-authorized URL (what URLFETCH takes)."""
        return (self.is_absolute and self.mailbox is not None and self.uid is not None
                and self.search is None and self.access is not None
                and self.mechanism is not None and self.token is not None)


# -- percent encoding -------------------------------------------------------------


def pct_decode(text: str, what: str) -> str:
    """Decode ``%XX`` escapes as UTF-8; URLError for bad escapes or controls."""
    if "%" in text:
        if re.search(r"%(?![0-9A-Fa-f]{2})", text):
            raise URLError(f"Invalid %-encoding in {what}")
        raw = _PCT.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise URLError(f"{what.capitalize()} is not valid UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise URLError(f"Control character in {what}")
    return text


def pct_encode(text: str, safe: frozenset[str] = _SAFE_PATH) -> str:
    """Percent-encode everything outside ``safe`` as UTF-8 bytes."""
    out = []
    for c in text:
        if c in safe:
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8"))
    return "".join(out)


# -- parsing ----------------------------------------------------------------------


def parse_datetime(text: str) -> datetime.datetime:
    """An RFC 3339 date-time (``;EXPIRE=``) → an aware datetime."""
    m = _DATETIME.match(text)
    if not m:
        raise URLError("Invalid EXPIRE date-time")
    year, month, day, hh, mm, ss, frac, zone = m.groups()
    if zone in ("Z", "z"):
        tz = datetime.UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 23 or zm > 59:
            raise URLError("Invalid EXPIRE time zone")
        tz = datetime.timezone(sign * datetime.timedelta(hours=zh, minutes=zm))
    try:
        when = datetime.datetime(int(year), int(month), int(day), int(hh), int(mm),
                                 min(int(ss), 59), tzinfo=tz)
    except ValueError:
        raise URLError("Invalid EXPIRE date-time") from None
    if frac:
        when += datetime.timedelta(microseconds=int((frac[1:] + "000000")[:6]))
    return when


def format_datetime(when: datetime.datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    when = when.astimezone(datetime.UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"


def _number(text: str, what: str, nonzero: bool = True) -> int:
    if not (_NZ if nonzero else _NUM).match(text) or int(text) > MAX_NUMBER:
        raise URLError(f"Invalid {what} number")
    return int(text)


def _parse_authority(text: str, url: ImapURL) -> None:
    userinfo, at, hostport = text.rpartition("@")
    if at:
        if "@" in userinfo:
            raise URLError("Invalid user name")
        user, semi, auth = userinfo.partition(";")
        if semi:
            if not auth.upper().startswith("AUTH=") or len(auth) == 5:
                raise URLError("Invalid ;AUTH= in user info")
            auth = auth[5:]
            if auth != "*" and not _ACHARS.match(auth):
                raise URLError("Invalid ;AUTH= type")
            url.auth_type = pct_decode(auth, "auth type")
        if user:
            if not _ACHARS.match(user):
                raise URLError("Invalid character in user name")
            url.user = pct_decode(user, "user name")
        elif not semi:
            raise URLError("Empty user name")
    host, port = hostport, None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise URLError("Invalid IPv6 host")
        host, rest = hostport[: end + 1], hostport[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise URLError("Invalid host")
            port = rest[1:]
    elif ":" in hostport:
        host, _c, port = hostport.partition(":")
    if not host or not _HOST.match(host):
        raise URLError("Invalid host name")
    url.host = pct_decode(host, "host name").lower()
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise URLError("Invalid port")
        url.port = int(port)


# ;NAME= parameters in the order they may appear, and whether each must be
# the start of a new path segment ("/;UID=") or follows on directly.
_ORDER = ("UIDVALIDITY", "UID", "SECTION", "PARTIAL", "EXPIRE", "URLAUTH")
_NEW_SEGMENT = {"UIDVALIDITY": False, "UID": True, "SECTION": True, "PARTIAL": True,
                "EXPIRE": False, "URLAUTH": False}


def _parse_path(path: str, url: ImapURL, text: str, relative_start: bool) -> None:
    """``path`` is what follows the authority's ``/`` (or the whole relative
    reference when ``relative_start``)."""
    path, qmark, query = path.partition("?")
    pieces = path.split(";")
    mailbox = pieces[0]
    slash = False
    if len(pieces) > 1 and mailbox.endswith("/"):
        mailbox, slash = mailbox[:-1], True
    if mailbox:
        if not _BCHARS.match(mailbox):
            raise URLError("Invalid character in mailbox name")
        url.mailbox = pct_decode(mailbox, "mailbox name")
    elif len(pieces) > 1 and not relative_start:
        raise URLError("Missing mailbox name")
    elif relative_start:
        slash = True  # ";UID=…" relative to the base mailbox
    last = -1
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        key = name.upper()
        if not eq or key not in _ORDER:
            raise URLError(f"Unknown URL parameter ;{name[:20]}")
        pos = _ORDER.index(key)
        if pos <= last:
            raise URLError(f"Unexpected ;{key}=")
        if key == "UIDVALIDITY" and (slash or not url.mailbox):
            raise URLError("UIDVALIDITY must follow the mailbox name")
        if key == "UID" and url.mailbox is None and not relative_start:
            raise URLError("Missing mailbox name")
        if _NEW_SEGMENT[key] != slash:
            raise URLError(f"Misplaced ;{key}=")
        if key in ("SECTION", "PARTIAL", "EXPIRE", "URLAUTH") and url.uid is None:
            raise URLError(f";{key}= needs ;UID=")
        last = pos
        slash = False
        if key != "URLAUTH" and value.endswith("/"):
            value, slash = value[:-1], True
        if not value:
            raise URLError(f"Empty ;{key}=")
        if key == "UIDVALIDITY":
            url.uidvalidity = _number(value, "UIDVALIDITY")
        elif key == "UID":
            url.uid = _number(value, "UID")
        elif key == "SECTION":
            if not _BCHARS.match(value):
                raise URLError("Invalid character in section")
            url.section = pct_decode(value, "section")
        elif key == "PARTIAL":
            offset, dot, length = value.partition(".")
            url.partial = (_number(offset, "PARTIAL offset", nonzero=False),
                           _number(length, "PARTIAL length") if dot else None)
        elif key == "EXPIRE":
            url.expire = parse_datetime(pct_decode(value, "expire time"))
        else:
            _parse_urlauth(value, url, text)
    if url.expire is not None and url.access is None:
        raise URLError(";EXPIRE= needs ;URLAUTH=")
    if slash:
        raise URLError("Unexpected '/' at the end of the URL")
    if qmark:
        if url.uid is not None or url.mailbox is None:
            raise URLError("A search needs a mailbox and no UID")
        if not query or not _BCHARS.match(query):
            raise URLError("Invalid search")
        url.search = pct_decode(query, "search")


def _parse_urlauth(value: str, url: ImapURL, text: str) -> None:
    access, colon, verifier = value.partition(":")
    low = access.lower()
    if low not in ACCESS_FIXED:
        prefix = next((p for p in ACCESS_PREFIXES if low.startswith(p)), None)
        if prefix is None or len(access) == len(prefix) or not _ACHARS.match(access[len(prefix):]):
            raise URLError("Invalid URLAUTH access identifier")
        access = access[: len(prefix)] + pct_decode(access[len(prefix):], "access user")
    url.access = access
    if colon:
        mech, colon2, token = verifier.partition(":")
        if not colon2 or not _MECH.match(mech):
            raise URLError("Invalid URLAUTH mechanism")
        if not _TOKEN.match(token):
            raise URLError("Invalid URLAUTH token")
        url.mechanism, url.token = mech, token
        url.rump = text[: len(text) - len(verifier) - 1]
    else:
        url.rump = text


def parse(text: str | bytes, base: ImapURL | None = None) -> ImapURL:
    """Parse an absolute IMAP URL, or a relative one against ``base``.

    ``base`` (for CATENATE: the session's user and selected mailbox) fills in
    what a relative reference leaves out; without it only absolute URLs
    parse.  Raises :class:`URLError`.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise URLError("URL is not ASCII") from None
    if not text:
        raise URLError("Empty URL")
    if len(text) > 8192:
        raise URLError("URL is too long")
    if not _URL_CHARS.match(text):
        raise URLError("Invalid character in URL")
    url = ImapURL()
    if text[:7].lower() == "imap://":
        rest = text[7:]
        authority, slash, path = rest.partition("/")
        _parse_authority(authority, url)
        if slash and path:
            _parse_path(path, url, text, False)
        return url
    if ":" in text.split("/", 1)[0].split(";", 1)[0]:
        raise URLError("Not an IMAP URL")
    if base is None:
        raise URLError("Relative URL without a base")
    url = ImapURL(host=base.host, port=base.port, user=base.user, auth_type=base.auth_type)
    if text.startswith("//"):
        url = ImapURL()
        authority, slash, path = text[2:].partition("/")
        _parse_authority(authority, url)
        if slash and path:
            _parse_path(path, url, text, False)
    elif text.startswith("/"):
        _parse_path(text[1:], url, text, False)
    elif not text.startswith(";"):
        raise URLError("Unsupported relative URL")
    elif base.mailbox is None:
        raise URLError("Relative URL needs a selected mailbox")
    else:
        url.mailbox, url.uidvalidity = base.mailbox, base.uidvalidity
        _parse_path(text, url, text, True)
    if url.access is not None:
        raise URLError("URLAUTH needs an absolute URL")
    return url


# -- formatting -------------------------------------------------------------------


def format_url(url: ImapURL, with_verifier: bool = True) -> str:
    """Canonical absolute text (upper-case parameter names, %-encoded names)."""
    out = ["imap://"]
    if url.user is not None or url.auth_type is not None:
        if url.user is not None:
            out.append(pct_encode(url.user, _SAFE_USER))
        if url.auth_type is not None:
            auth = "*" if url.auth_type == "*" else pct_encode(url.auth_type, _SAFE_USER)
            out.append(";AUTH=" + auth)
        out.append("@")
    out.append(url.host or "")
    if url.port is not None:
        out.append(f":{url.port}")
    if url.mailbox is None:
        return "".join(out) + "/"
    out.append("/" + pct_encode(url.mailbox))
    if url.uidvalidity is not None:
        out.append(f";UIDVALIDITY={url.uidvalidity}")
    if url.search is not None:
        out.append("?" + pct_encode(url.search))
        return "".join(out)
    if url.uid is not None:
        out.append(f"/;UID={url.uid}")
    if url.section is not None:
        out.append("/;SECTION=" + pct_encode(url.section))
    if url.partial is not None:
        offset, length = url.partial
        out.append(f"/;PARTIAL={offset}" + (f".{length}" if length is not None else ""))
    if url.expire is not None:
        out.append(";EXPIRE=" + format_datetime(url.expire))
    if url.access is not None:
        access = url.access
        user = url.access_user
        if user is not None:
            access = access[: len(access) - len(user)] + pct_encode(user, _SAFE_USER)
        out.append(";URLAUTH=" + access)
        if with_verifier and url.mechanism is not None and url.token is not None:
            out.append(f":{url.mechanism}:{url.token}")
    return "".join(out)


def apply_partial(data: bytes, partial: tuple[int, int | None] | None) -> bytes:
    """RFC 5092 ``;PARTIAL=offset[.length]``: past the end is empty."""
    if partial is None:
        return data
    offset, length = partial
    if length is None:
        return data[offset:]
    return data[offset: offset + length]
