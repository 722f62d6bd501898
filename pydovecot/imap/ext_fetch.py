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
raises anything but :class:`UnknownCTE`; PREVIEW reads a bounded prefix
and strips HTML with one linear scan.  :func:`prepare_fetch` parses the
big messages of a FETCH in Cooperator slices before it renders them.
"""

from __future__ import annotations

import html
import re
from typing import Any

from pydovecot.imap import mime
from pydovecot.storage.interfaces import IMailbox, MessageInfo, StorageError

#: RFC 8970 allows at most 256 characters; Dovecot sends up to 200.
PREVIEW_CHARS = 200
PREVIEW_CACHE_KEY = "preview"
_SPACE_RE = re.compile(r"\s+")
#: Raw body bytes a preview reads at most (Dovecot's snippet reads a
#: bounded prefix too): extraction is linear in this, whatever the mail.
PREVIEW_INPUT = 64 * 1024
#: Text gathered before the preview stops scanning (enough for 200 chars
#: after quoted lines and signatures are dropped).
PREVIEW_TEXT = 8 * 1024
_TAG_NAME = re.compile(r"/?([A-Za-z][A-Za-z0-9]*)")
_RAW_END = {name: re.compile(r"</" + name, re.I) for name in ("script", "style")}


class UnknownCTE(StorageError):
    """BINARY of a part whose Content-Transfer-Encoding we cannot undo."""

    code = "UNKNOWN-CTE"


def decode_cte(body: bytes, cte: bytes) -> bytes:
    """Undo a Content-Transfer-Encoding (quoted-printable per RFC 2045 6.7,
    lenient base64); :class:`UnknownCTE` if unknown."""
    cte = cte.strip().lower()
    decoded = mime.cte_decode(body, cte)
    if decoded is None:
        raise UnknownCTE(f"Unknown Content-Transfer-Encoding: {cte[:40].decode('latin-1')}")
    return decoded


def binary_section(msg: mime.ParsedMessage, numbers: list[int]) -> bytes:
    """The bytes BINARY[numbers] names ("" if the part does not exist).

    A leaf part is transfer-decoded (:class:`UnknownCTE` if it cannot be);
    the whole message, a multipart or a message/rfc822 part comes with
    every base64/quoted-printable part inside decoded and relabelled
    ``Content-Transfer-Encoding: binary``, as Dovecot sends it
    (:class:`UnknownCTE` if a part inside has an unknown encoding)."""
    data = msg.data
    part = mime.find_part(msg.root, numbers) if numbers else msg.root
    if part is None:
        return b""
    if part.multipart or part.message is not None or not numbers:
        inner = part.message if part.message is not None else part
        bad = mime.unknown_cte(inner)
        if bad is not None:  # a part inside cannot be decoded: so the section cannot (Dovecot)
            decode_cte(b"", bad)
        return mime.binary_convert(data, inner, 0 if not numbers else part.body_start)
    return decode_cte(data[part.body_start : part.end], part.header("Content-Transfer-Encoding") or b"")


def part_span(msg: mime.ParsedMessage, numbers: list[int], binary: bool,
              over: int) -> tuple[int, int] | None:
    """Where BODY[n] or BINARY[n] lies in the message, for a part over
    ``over`` bytes that can be sent as a view of it, without a copy (copying
    20 MB at once would hold the reactor far longer than a step); None when
    the part is small or missing, or (BINARY) has something to decode."""
    part = mime.find_part(msg.root, numbers) if numbers else None
    if part is None or part.end - part.body_start <= over:
        return None
    if binary:
        inner = part.message if part.message is not None else part
        if mime.needs_conversion(inner):
            return None
    return part.body_start, part.end


def binary_literal(data: bytes) -> bytes:
    """RFC 3516 4.3: ``~{n}`` (literal8) when the decoded data holds NUL;
    otherwise a plain literal ("If the domain of the decoded data is 8bit
    and the data does not contain the NUL octet, the server SHOULD return
    the data in a <string> instead of a <literal8>")."""
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


def html_to_text(text: str, limit: int = PREVIEW_TEXT) -> str:
    """Text of an HTML document without markup, ``<script>``/``<style>``
    content or comments: one forward scan (every ``find`` either consumes
    what it scanned or ends the scan), so linear in ``len(text)`` whatever
    the input; stops once ``limit`` characters of text are gathered."""
    out: list[str] = []
    size = 0
    pos, end = 0, len(text)
    while pos < end and size < limit:
        lt = text.find("<", pos)
        if lt < 0:
            out.append(text[pos:])
            break
        if lt > pos:
            out.append(text[pos:lt])
            size += lt - pos
        out.append(" ")
        if text.startswith("!--", lt + 1):
            close = text.find("-->", lt + 4)
            if close < 0:
                break
            pos = close + 3
            continue
        m = _TAG_NAME.match(text, lt + 1)
        gt = text.find(">", lt + 1)
        if gt < 0:
            break  # an unclosed tag: the rest is markup
        pos = gt + 1
        if m is not None and not m.group(0).startswith("/"):
            raw_end = _RAW_END.get(m.group(1).lower())
            if raw_end is not None:  # skip the element's content
                close_m = raw_end.search(text, pos)
                if close_m is None:
                    break
                gt = text.find(">", close_m.end())
                if gt < 0:
                    break
                pos = gt + 1
    return html.unescape("".join(out))


def make_preview(msg: mime.ParsedMessage) -> str:
    """The RFC 8970 preview text of a message ("" if it has no text).

    Reads at most :data:`PREVIEW_INPUT` bytes of the part's body."""
    part = _preview_part(msg.root)
    if part is None:
        return ""
    text = mime.decode_body(msg.data, part, limit=PREVIEW_INPUT)
    if part.subtype.lower() == "html":
        text = html_to_text(text)
    else:
        text = text[:PREVIEW_TEXT]
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith(">")]
    kept: list[str] = []
    for ln in lines:
        if ln.rstrip() == "--":  # signature separator "-- "
            break
        kept.append(ln)
    folded = _SPACE_RE.sub(" ", " ".join(kept)).strip()
    return "".join(ch for ch in folded[:PREVIEW_CHARS] if ch.isprintable())


async def preview_text(info: MessageInfo, load: Any, mailbox: IMailbox | None = None) -> str:
    """The PREVIEW text of a message, via the index cache of ``mailbox``
    (``load()`` gives the parsed message when the cache has none)."""
    cached = None
    if mailbox is not None:
        try:
            cached = await mailbox.cached(info.uid, PREVIEW_CACHE_KEY)
        except (StorageError, OSError, NotImplementedError):
            cached = None
    if isinstance(cached, str):
        return cached
    text = make_preview(load())
    if mailbox is not None:
        try:
            await mailbox.set_cached(info.uid, PREVIEW_CACHE_KEY, text)
        except (StorageError, OSError, NotImplementedError):
            pass
    return text


def preview(info: MessageInfo, load: Any, text: str | None = None) -> bytes:
    """``PREVIEW <nstring>`` for a FETCH response: ``text`` if the caller
    has it (:func:`preview_text`), else made from ``load()``."""
    if text is None:
        text = make_preview(load())
    return b"PREVIEW " + mime.imap_string(text)


