"""SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), with -PLUS variants.

The server needs the stored ``{SCRAM-SHA-…}iter,salt,StoredKey,ServerKey``
(Dovecot's format, authd.schemes) or a ``{PLAIN}`` password it derives that
from.  -PLUS binds the exchange to the client's TLS session: the login
process computes ``tls-unique`` (TLS ≤ 1.2) or ``tls-exporter`` (RFC 9266,
TLS 1.3) and authd hands it in through the :class:`~authd.sasl.SASLContext`;
the client's ``c=`` attribute must carry exactly that data.

Trusts the context (from the login process) and the stored credentials;
every client message is parsed strictly and anything off fails the
exchange with a reason, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re

from zope.interface import implementer

from authd import sasl_base as sasl

_PRINTABLE = re.compile(rb"^[\x21-\x2b\x2d-\x7e]+$")  # RFC 5802 "printable" minus ","
_CB_NAME = re.compile(r"^[A-Za-z0-9.-]+$")


def decode_saslname(value: str) -> str | None:
    """``=2C`` → ``,`` and ``=3D`` → ``=``; None for any other ``=``."""
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "=":
            code = value[i + 1 : i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                return None
            i += 3
            continue
        if ch == ",":
            return None
        out.append(ch)
        i += 1
    return "".join(out)


def encode_saslname(value: str) -> str:
    return value.replace("=", "=3D").replace(",", "=2C")


def new_nonce() -> str:
    return base64.b64encode(os.urandom(18)).decode("ascii")


class _Invalid(Exception):
    """Malformed client message (the text is the reason)."""


@implementer(sasl.ISASLMechanism)
class SCRAMMechanism:
    """Server side of one SCRAM exchange."""

    plaintext = False

    def __init__(
        self,
        context: sasl.SASLContext | None,
        algorithm: str,
        plus: bool = False,
        nonce: str | None = None,
    ):
        self.context = context if context is not None else sasl.SASLContext()
        self.algorithm = algorithm
        self.plus = plus
        hash_name = {"sha1": "SHA-1", "sha256": "SHA-256"}[algorithm]
        self.name = f"SCRAM-{hash_name}" + ("-PLUS" if plus else "")
        self.scheme = f"SCRAM-{hash_name}"
        self.server_nonce = nonce or new_nonce()
        self.digest_size = hashlib.new(algorithm).digest_size
        self._state = "start"
        self._user = ""
        self._authzid = ""
        self._gs2_header = b""
        self._client_first_bare = b""
        self._nonce = b""
        self._server_first = b""
        self._stored_key = b""
        self._server_key = b""

    # -- steps ---------------------------------------------------------------

    def step(self, data: bytes | None) -> sasl.Step:
        try:
            if self._state == "start":
                if data is None:
                    self._state = "asked"
                    return sasl.Continue(b"")
                return self._client_first(data)
            if self._state == "asked" and data is not None:
                return self._client_first(data)
            if self._state == "challenged" and data is not None:
                return self._client_final(data)
            if self._state == "proved" and data is not None:
                self._state = "done"
                if data:
                    return sasl.Fail("Invalid input (unexpected data after server-final)")
                return sasl.Verified(self._user, self._authzid)
        except _Invalid as e:
            self._state = "failed"
            return sasl.Fail(f"Invalid input ({e})")
        self._state = "failed"
        return sasl.Fail("Invalid input")

    def _client_first(self, data: bytes) -> sasl.Step:
        self._state = "first"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid("not UTF-8") from None
        if "\0" in text:
            raise _Invalid("NUL in message")
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise _Invalid("malformed client-first-message")
        flag, authz, bare = parts
        self._check_binding_flag(flag)
        if authz:
            if not authz.startswith("a="):
                raise _Invalid("malformed authzid")
            decoded = decode_saslname(authz[2:])
            if not decoded:
                raise _Invalid("malformed authzid")
            self._authzid = decoded
        self._gs2_header = f"{flag},{authz},".encode()
        attrs = bare.split(",")
        if len(attrs) < 2 or attrs[0].startswith("m="):
            raise _Invalid("unsupported or missing attributes")
        if not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise _Invalid("malformed client-first-message")
        user = decode_saslname(attrs[0][2:])
        if not user:
            raise _Invalid("malformed username")
        if any(len(a) < 2 or not a[0].isalpha() or a[1] != "=" for a in attrs[2:]):
            raise _Invalid("malformed extension")
        nonce = attrs[1][2:].encode()
        if not _PRINTABLE.match(nonce):
            raise _Invalid("malformed nonce")
        self._user = user
        self._client_first_bare = bare.encode()
        self._nonce = nonce + self.server_nonce.encode()
        return sasl.NeedCredentials(user, (self.scheme,), self._authzid)

    def _check_binding_flag(self, flag: str) -> None:
        ctx = self.context
        if flag.startswith("p="):
            if not self.plus:
                raise _Invalid("channel binding not supported by this mechanism")
            name = flag[2:]
            if not _CB_NAME.match(name) or name != ctx.channel_binding_type:
                raise _Invalid(f"channel binding type {name!r} not supported")
            if not ctx.channel_binding:
                raise _Invalid("no channel binding data")
            return
        if self.plus:
            raise _Invalid("channel binding is required by this mechanism")
        if flag == "y":
            # The client could bind but thinks we can't: a downgrade if we can.
            mechs = [m.upper() for m in ctx.setting("auth_mechanisms", [])]
            if ctx.channel_binding and f"{self.scheme}-PLUS" in mechs:
                raise _Invalid("channel binding downgrade detected")
            return
        if flag != "n":
            raise _Invalid("malformed gs2 header")

    def credentials(self, scheme: str, data: str) -> sasl.Step:
        if scheme != self.scheme:
            return sasl.Fail("Authentication failed.")
        parts = data.split(",")
        try:
            if len(parts) != 4 or not parts[0].isdigit() or int(parts[0]) < 1:
                raise ValueError
            salt, stored, server = (base64.b64decode(p, validate=True) for p in parts[1:])
        except (ValueError, binascii.Error):
            return sasl.Fail("Temporary authentication failure.", temporary=True)
        if len(stored) != self.digest_size or len(server) != self.digest_size:
            return sasl.Fail("Temporary authentication failure.", temporary=True)
        self._stored_key, self._server_key = stored, server
        self._server_first = b"r=%s,s=%s,i=%d" % (
            self._nonce,
            base64.b64encode(salt),
            int(parts[0]),
        )
        self._state = "challenged"
        return sasl.Continue(self._server_first)

    def _client_final(self, data: bytes) -> sasl.Step:
        self._state = "final"
        attrs = data.split(b",")
        if len(attrs) < 3 or not attrs[0].startswith(b"c=") or not attrs[1].startswith(b"r="):
            raise _Invalid("malformed client-final-message")
        if not attrs[-1].startswith(b"p="):
            raise _Invalid("missing proof")
        try:
            binding = base64.b64decode(attrs[0][2:], validate=True)
            proof = base64.b64decode(attrs[-1][2:], validate=True)
        except (ValueError, binascii.Error):
            raise _Invalid("invalid base64") from None
        expected = self._gs2_header + (self.context.channel_binding if self.plus else b"")
        if not hmac.compare_digest(binding, expected):
            raise _Invalid("channel binding data mismatch")
        if not hmac.compare_digest(attrs[1][2:], self._nonce):
            raise _Invalid("wrong nonce")
        if len(proof) != self.digest_size:
            raise _Invalid("malformed proof")
        without_proof = data[: data.rindex(b",p=")]
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        signature = hmac.new(self._stored_key, auth_message, self.algorithm).digest()
        client_key = bytes(p ^ s for p, s in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self.algorithm, client_key).digest(),
                                   self._stored_key):
            self._state = "failed"
            return sasl.Fail("Authentication failed.")
        server_sig = hmac.new(self._server_key, auth_message, self.algorithm).digest()
        self._state = "proved"
        return sasl.Continue(b"v=" + base64.b64encode(server_sig))


def _factory(algorithm: str, plus: bool):
    def build(context: sasl.SASLContext | None = None) -> SCRAMMechanism:
        return SCRAMMechanism(context, algorithm, plus)

    return build


for _algo, _name in (("sha1", "SCRAM-SHA-1"), ("sha256", "SCRAM-SHA-256")):
    sasl.register(_name, _factory(_algo, False), plaintext=False, credentials=True)
    sasl.register(
        _name + "-PLUS", _factory(_algo, True), plaintext=False, credentials=True,
        channel_binding=True,
    )
