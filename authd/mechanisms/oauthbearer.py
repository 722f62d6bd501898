"""OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's format).

Both carry a user name and a bearer token; the token goes to the passdb
chain as the "password", where the oauth2 passdb (authd.oauth) checks it
against an introspection endpoint or local keys, as Dovecot does.  A
refused token is answered in each mechanism's error form (RFC 7628's JSON
``invalid_token``, Google's ``{"status":"401",…}``); the client acknowledges
it and the exchange fails.

Trusts nothing from the client: every field is bounded and parsed strictly.
"""

from __future__ import annotations

import json

from zope.interface import implementer

from authd import sasl_base as sasl
from authd.mechanisms.scram import decode_saslname

MAX_TOKEN = 16384


def _kvpairs(data: bytes) -> dict[str, str] | None:
    """``\\x01key=value\\x01…\\x01\\x01`` → dict (None if malformed)."""
    if not data.endswith(b"\x01\x01"):
        return None
    try:
        text = data[:-2].decode("utf-8")
    except UnicodeDecodeError:
        return None
    pairs: dict[str, str] = {}
    for item in text.split("\x01"):
        key, sep, value = item.partition("=")
        if not sep or not key.isalpha() or key in pairs or "\0" in value:
            return None
        pairs[key] = value
    return pairs


def _bearer(auth: str | None) -> str | None:
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN or " " in token:
        return None
    return token


@implementer(sasl.ISASLMechanism)
class OAuthBearerMechanism(sasl.ClientFirstMechanism):
    """RFC 7628: ``gs2-header \\x01host=…\\x01port=…\\x01auth=Bearer T\\x01\\x01``."""

    name = "OAUTHBEARER"
    scope = ""

    def respond(self, data: bytes) -> sasl.Step:
        head, sep, rest = data.partition(b",")
        if not sep or head not in (b"n", b"y"):
            return sasl.Fail("Invalid input (malformed gs2 header)")
        authz, sep, kv = rest.partition(b",")
        if not sep or not authz.startswith(b"a="):
            return sasl.Fail("Invalid input (missing username)")
        try:
            user = decode_saslname(authz[2:].decode("utf-8"))
        except UnicodeDecodeError:
            user = None
        if not user or "\0" in user:
            return sasl.Fail("Invalid input (malformed username)")
        if not kv.startswith(b"\x01"):
            return sasl.Fail("Invalid input")
        pairs = _kvpairs(kv[1:])
        token = _bearer(pairs.get("auth") if pairs is not None else None)
        if token is None:
            return sasl.Fail("Invalid input (no bearer token)")
        return sasl.PlainCredentials(user, token)

    def failed(self, reason: str, temporary: bool) -> sasl.Step | None:
        error = {"status": "invalid_token", "schemes": "bearer"}
        if self.scope:
            error["scope"] = self.scope
        return sasl.Continue(json.dumps(error).encode())


@implementer(sasl.ISASLMechanism)
class XOAuth2Mechanism(sasl.ClientFirstMechanism):
    """``user=U\\x01auth=Bearer T\\x01\\x01``."""

    name = "XOAUTH2"

    def respond(self, data: bytes) -> sasl.Step:
        pairs = _kvpairs(data)
        if pairs is None or set(pairs) != {"user", "auth"} or not pairs["user"]:
            return sasl.Fail("Invalid input")
        token = _bearer(pairs["auth"])
        if token is None:
            return sasl.Fail("Invalid input (no bearer token)")
        return sasl.PlainCredentials(pairs["user"], token)

    def failed(self, reason: str, temporary: bool) -> sasl.Step | None:
        error = {"status": "401", "schemes": "bearer", "scope": ""}
        return sasl.Continue(json.dumps(error).encode())


sasl.register("OAUTHBEARER", OAuthBearerMechanism, plaintext=False, oauth2=True)
sasl.register("XOAUTH2", XOAuth2Mechanism, plaintext=False, oauth2=True)
