"""Mailbox names: validation and the mapping to Maildir++ directory names.

Trusts nothing: every name comes from a client.  A valid name maps to one
directory entry directly under the user's Maildir root (``.A.B`` for
``A/B``), so no name can reach outside it.  Names are rejected with a
reason, never silently rewritten (except that ``INBOX`` is
case-insensitive).  On disk, names are modified UTF-7 as Dovecot writes
them by default, or UTF-8 with the ``:UTF-8`` mail_location option.  A
directory whose name does not decode (made by a shell: raw UTF-8 or a
broken shift under modified UTF-7, invalid UTF-8 under ``:UTF-8``) is no
mailbox here and is skipped by LIST, never an error.  (Dovecot lists such a
name as it is, which no client can then open either.)
"""

from __future__ import annotations

import base64

from pydovecot.storage.interfaces import MailboxNameError

SEP = "/"  #: hierarchy separator in the interface
DISK_SEP = "."  #: hierarchy separator on disk (Maildir++)
MAX_NAME_BYTES = 255 - 1  #: the whole ``.A.B`` must fit one directory entry
MAX_COMPONENTS = 16


def mutf7_encode(text: str) -> str:
    """Encode Unicode as IMAP modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(text: str) -> str:
    """Decode modified UTF-7; ValueError if malformed."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "&":
            if not 0x20 <= ord(ch) <= 0x7E:
                raise ValueError("non-ASCII in modified UTF-7")
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated modified UTF-7 shift")
        chunk = text[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
            if len(raw) % 2:
                raise ValueError("odd UTF-16 length in modified UTF-7")
            out.append(raw.decode("utf-16-be"))
        i = end + 1
    return "".join(out)


def normalize(name: str, for_create: bool = False) -> str:
    """Validate an interface name; return it with INBOX canonical.

    Raises :class:`MailboxNameError` with the reason.
    """
    if not isinstance(name, str):
        raise MailboxNameError("Mailbox name must be text")
    if name == "":
        raise MailboxNameError("Mailbox name is empty")
    if name.startswith(SEP) or name.endswith(SEP):
        raise MailboxNameError(f"Mailbox name must not begin or end with '{SEP}'")
    if name.startswith("~"):
        raise MailboxNameError("Mailbox name must not begin with '~'")
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise MailboxNameError("Mailbox name contains control characters")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise MailboxNameError("Mailbox name contains invalid characters")
    if for_create and ("*" in name or "%" in name):
        raise MailboxNameError("Mailbox name must not contain '*' or '%'")
    parts = name.split(SEP)
    if len(parts) > MAX_COMPONENTS:
        raise MailboxNameError("Mailbox name has too many levels")
    for part in parts:
        if part == "":
            raise MailboxNameError("Mailbox name has an empty hierarchy level")
        if DISK_SEP in part:
            raise MailboxNameError(f"Mailbox name must not contain '{DISK_SEP}'")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    name = SEP.join(parts)
    if name != "INBOX" and len(to_dirname(name).encode("utf-8")) > MAX_NAME_BYTES:
        raise MailboxNameError("Mailbox name is too long")
    return name


def to_dirname(name: str, utf8: bool = False) -> str:
    """``A/B`` → ``.A.B`` (a normalized name; INBOX is the root: ``""``)."""
    if name == "INBOX":
        return ""
    parts = name.split(SEP)
    if not utf8:
        parts = [mutf7_encode(p) for p in parts]
    return DISK_SEP + DISK_SEP.join(parts)


def from_dirname(dirname: str, utf8: bool = False) -> str | None:
    """``.A.B`` → ``A/B``; None when the entry is not a valid mailbox dir."""
    if not dirname.startswith(DISK_SEP) or dirname in (".", ".."):
        return None
    parts = dirname[1:].split(DISK_SEP)
    try:
        if not utf8:
            parts = [mutf7_decode(p) for p in parts]
        return normalize(SEP.join(parts))
    except (ValueError, MailboxNameError):
        return None


def parents(name: str) -> list[str]:
    """``A/B/C`` → ``["A", "A/B"]``."""
    parts = name.split(SEP)
    return [SEP.join(parts[:i]) for i in range(1, len(parts))]
