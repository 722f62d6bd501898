"""Modified UTF-7 (RFC 3501 section 5.1.3) for IMAP4rev1 mailbox names.

Pure functions on untrusted client input: :func:`decode` raises
:class:`ValueError` on anything that is not valid modified UTF-7, so the
caller can answer ``BAD``/``NO`` instead of storing a mangled name.
"""

from __future__ import annotations

import base64
import binascii


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw).rstrip(b"=").replace(b"/", b",")


def encode(name: str) -> bytes:
    """Unicode mailbox name → modified UTF-7 bytes."""
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            out.extend(b"&" + _b64("".join(pending).encode("utf-16-be")) + b"-")
            pending.clear()

    for ch in name:
        code = ord(ch)
        if 0x20 <= code <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def decode(raw: bytes) -> str:
    """Modified UTF-7 bytes → Unicode.  ValueError if malformed."""
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x26:  # '&'
            end = raw.find(b"-", i + 1)
            if end < 0:
                raise ValueError("unterminated & sequence")
            chunk = raw[i + 1 : end]
            i = end + 1
            if not chunk:
                out.append("&")
                continue
            if any(ch not in _B64CHARS for ch in chunk):
                raise ValueError("invalid base64 in & sequence")
            data = chunk.replace(b",", b"/")
            data += b"=" * (-len(data) % 4)
            try:
                utf16 = base64.b64decode(data, validate=True)
                text = utf16.decode("utf-16-be")
            except (binascii.Error, UnicodeDecodeError) as e:
                raise ValueError(f"invalid modified UTF-7: {e}") from None
            if any(0x20 <= ord(ch) <= 0x7E for ch in text):
                raise ValueError("printable ASCII must not be base64-encoded")
            out.append(text)
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
            i += 1
        else:
            raise ValueError("8-bit or control byte in mailbox name")
    return "".join(out)


_B64CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")
