"""CRAM-MD5 (RFC 2195) and Dovecot's ``{CRAM-MD5}`` stored password.

The server sends ``<random.time@host>``; the client answers ``user
hex(HMAC-MD5(password, challenge))``.  Works with stored ``{PLAIN}``
passwords and with Dovecot's ``{CRAM-MD5}``: the hex of the HMAC-MD5 outer
and inner MD5 states after the key block (Dovecot's
``hmac_md5_get_cram_context``: 8 little-endian 32-bit words, outer
first), which lets the server verify without the plaintext.  Python's
hashlib can't resume an MD5 state, so a small MD5 compression function
finishes those two hashes here (a few dozen bytes each).

Trusts the stored credentials (the admin's passdb) only to be the admin's:
a malformed ``{CRAM-MD5}`` value fails the login, it doesn't raise.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import socket
import struct
import time

from zope.interface import implementer

from authd import sasl_base as sasl
from authd import schemes

_SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]
_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MASK = 0xFFFFFFFF


def _compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    """One MD5 compression round over a 64-byte block."""
    a, b, c, d = state
    words = struct.unpack("<16I", block)
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | (~d & _MASK)), (7 * i) % 16
        f = (f + a + _K[i] + words[g]) & _MASK
        a, d, c = d, c, b
        b = (b + (((f << _SHIFTS[i]) | (f >> (32 - _SHIFTS[i]))) & _MASK)) & _MASK
    return tuple((x + y) & _MASK for x, y in zip(state, (a, b, c, d), strict=True))


def _md5_resume(state: tuple[int, ...], data: bytes, done: int = 64) -> bytes:
    """MD5 digest of (``done`` bytes already hashed into ``state``) + data."""
    total = done + len(data)
    message = data + b"\x80" + b"\0" * ((55 - total) % 64) + struct.pack("<Q", total * 8)
    for i in range(0, len(message), 64):
        state = _compress(state, message[i : i + 64])
    return struct.pack("<4I", *state)


def cram_context(password: bytes) -> bytes:
    """Dovecot's 32-byte CRAM-MD5 context for ``password``."""
    key = hashlib.md5(password).digest() if len(password) > 64 else password
    key = key.ljust(64, b"\0")
    inner = _compress(_IV, bytes(k ^ 0x36 for k in key))
    outer = _compress(_IV, bytes(k ^ 0x5C for k in key))
    return struct.pack("<8I", *outer, *inner)


def hmac_from_context(context: bytes, message: bytes) -> bytes:
    """HMAC-MD5(password, message) from the password's CRAM context."""
    if len(context) != 32:
        raise schemes.SchemeError("invalid CRAM-MD5 password")
    words = struct.unpack("<8I", context)
    inner = _md5_resume(words[4:], message)
    return _md5_resume(words[:4], inner)


def _cram_verify(password: bytes, data: str, encoding: str | None) -> bool:
    raw = schemes.decode(data, encoding or "hex")
    if len(raw) != 32:
        raise schemes.SchemeError("invalid CRAM-MD5 password")
    return hmac.compare_digest(cram_context(password), raw)


def _cram_generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
    raw = cram_context(password)
    return raw.hex() if encoding in (None, "hex") else schemes._encode(raw, encoding)


if "CRAM-MD5" not in schemes.SCHEMES:
    schemes.register(schemes.Scheme("CRAM-MD5", _cram_verify, _cram_generate))


def new_challenge() -> bytes:
    """``<random.time@hostname>`` as RFC 2195 wants it."""
    rand = int.from_bytes(os.urandom(8), "big")
    return f"<{rand}.{int(time.time())}@{socket.gethostname()}>".encode()


@implementer(sasl.ISASLMechanism)
class CramMD5Mechanism:
    """Server side of CRAM-MD5."""

    name = "CRAM-MD5"
    plaintext = False

    def __init__(self, context: sasl.SASLContext | None = None, challenge: bytes | None = None):
        self.challenge = challenge or new_challenge()
        self._state = "start"
        self._user = ""
        self._digest = b""

    def step(self, data: bytes | None) -> sasl.Step:
        if self._state == "start":
            if data:  # RFC 2195 has no initial response
                return sasl.Fail("Invalid input (unexpected initial response)")
            self._state = "challenged"
            return sasl.Continue(self.challenge)
        if self._state != "challenged" or data is None:
            return sasl.Fail("Invalid input")
        self._state = "answered"
        user, sep, digest = data.rpartition(b" ")
        if not sep or not user or len(digest) != 32:
            return sasl.Fail("Invalid input (malformed response)")
        try:
            self._digest = bytes.fromhex(digest.decode("ascii"))
            self._user = user.decode("utf-8")
        except (UnicodeDecodeError, ValueError):
            return sasl.Fail("Invalid input (malformed response)")
        if "\0" in self._user:
            return sasl.Fail("Invalid input (malformed response)")
        return sasl.NeedCredentials(self._user, ("PLAIN", "CRAM-MD5"))

    def credentials(self, scheme: str, data: str) -> sasl.Step:
        if scheme in ("PLAIN", "CLEARTEXT"):
            expected = hmac.new(data.encode("utf-8"), self.challenge, "md5").digest()
        elif scheme == "CRAM-MD5":
            try:
                expected = hmac_from_context(schemes.decode(data, "hex"), self.challenge)
            except schemes.SchemeError:
                return sasl.Fail("Temporary authentication failure.", temporary=True)
        else:
            return sasl.Fail("Authentication failed.")
        if not hmac.compare_digest(expected, self._digest):
            return sasl.Fail("Authentication failed.")
        return sasl.Verified(self._user)


sasl.register("CRAM-MD5", CramMD5Mechanism, plaintext=False, credentials=True)
