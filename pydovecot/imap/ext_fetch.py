"""FETCH items of the IMAP4rev2-era extensions: BINARY, PREVIEW, SAVEDATE.

* BINARY[section]<partial> and BINARY.SIZE[section] (RFC 3516): a part's
  body with its Content-Transfer-Encoding undone (base64, quoted-printable;
  7bit/8bit/binary unchanged).  Any other encoding raises
  :class:`UnknownCTE`, answered ``NO [UNKNOWN-CTE]``.
* PREVIEW (RFC 8970): up to :data:`PREVIEW_CHARS` characters of the first
  text part (text/plain preferred, else text/html without markup), quoted
  lines dropped and whitespace folded.  Kept in the index through
  ``IMailbox.cached``/``set_cached`` under the key ``preview``.
* SAVEDATE (RFC 8514): ``MessageInfo.savedate`` or NIL when unknown.

Input is a stored message, which anyone could have mailed: decoding is
lenient where it can be (bad base64 characters are skipped) and never
raises anything but :class:`UnknownCTE`.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from typing import Any

from pydovecot.imap import mime
from pydovecot.storage.interfaces import MessageInfo, StorageError

#: RFC 8970 allows at most 256 characters; Dovecot sends up to 200.
PREVIEW_CHARS = 200
PREVIEW_CACHE_KEY = "preview"
_IDENTITY = {b"", b"7bit", b"8bit", b"binary"}
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_TAG_RE = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.I | re.S)
_SPACE_RE = re.compile(r"\s+")


class UnknownCTE(StorageError):
    """BINARY of a part whose Content-Transfer-Encoding we cannot undo."""

    code = "UNKNOWN-CTE"


def decode_cte(body: bytes, cte: bytes) -> bytes:
    """Undo a Content-Transfer-Encoding; :class:`UnknownCTE` if unknown."""
    cte = cte.strip().lower()
    if cte in _IDENTITY:
        return body
    if cte == b"base64":
        clean = _B64_JUNK.sub(b"", body.split(b"=", 1)[0])
        clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
        try:
            return base64.b64decode(clean + b"=" * (-len(clean) % 4))
        except (binascii.Error, ValueError):
            return b""
    if cte == b"quoted-printable":
        return binascii.a2b_qp(body)
    raise UnknownCTE(f"Unknown Content-Transfer-Encoding: {cte[:40].decode('latin-1')}")


def binary_section(msg: mime.ParsedMessage, numbers: list[int]) -> bytes:
    """The bytes BINARY[numbers] names ("" if the part does not exist)."""
    data = msg.data
    if not numbers:
        return data
    part = mime.find_part(msg.root, numbers)
    if part is None:
        return b""
    body = data[part.body_start : part.end]
    if part.multipart or part.message is not None:
        return body
    return decode_cte(body, part.header("Content-Transfer-Encoding") or b"")


def binary_literal(data: bytes) -> bytes:
    """``~{n}`` (literal8) when the data holds NUL, else a plain literal."""
    marker = b"~{%d}\r\n" if b"\x00" in data else b"{%d}\r\n"
    return marker % len(data) + data


def _preview_part(root: mime.Part) -> mime.Part | None:
    html_part = None
    for part in mime.text_parts(root):
        if (part.header("Content-Disposition") or b"").strip().lower().startswith(b"attachment"):
            continue
        sub = part.subtype.lower()
        if sub == "plain":
            return part
        if sub == "html" and html_part is None:
            html_part = part
    return html_part


def make_preview(msg: mime.ParsedMessage) -> str:
    """The RFC 8970 preview text of a message ("" if it has no text)."""
    part = _preview_part(msg.root)
    if part is None:
        return ""
    text = mime.decode_body(msg.data, part)
    if part.subtype.lower() == "html":
        text = html.unescape(_TAG_RE.sub(" ", text))
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith(">")]
    kept: list[str] = []
    for ln in lines:
        if ln.rstrip() == "--":  # signature separator "-- "
            break
        kept.append(ln)
    folded = _SPACE_RE.sub(" ", " ".join(kept)).strip()
    return "".join(ch for ch in folded[:PREVIEW_CHARS] if ch.isprintable())


def preview(info: MessageInfo, load: Any, mailbox: Any = None) -> bytes:
    """``PREVIEW <nstring>`` for a FETCH response, via the index cache."""
    cached = None
    get = getattr(mailbox, "cached", None)
    if get is not None:
        try:
            cached = get(info.uid, PREVIEW_CACHE_KEY)
        except (StorageError, OSError, NotImplementedError):
            cached = None
    if isinstance(cached, str):
        text = cached
    else:
        text = make_preview(load())
        put = getattr(mailbox, "set_cached", None)
        if put is not None:
            try:
                put(info.uid, PREVIEW_CACHE_KEY, text)
            except (StorageError, OSError, NotImplementedError):
                pass
    return b"PREVIEW " + mime.imap_string(text)


def savedate(info: MessageInfo) -> bytes:
    from pydovecot.imap.fetch import format_internaldate

    when = getattr(info, "savedate", None)
    return b"SAVEDATE " + (format_internaldate(when) if when is not None else b"NIL")
