"""The oauth2 passdb: OAuth2 bearer tokens as passwords (OAUTHBEARER, XOAUTH2).

``passdb { driver = oauth2  args = /etc/dovecot/dovecot-oauth2.conf.ext }``
reads Dovecot's oauth2 settings file (``key = value`` lines, ``#``
comments).  A token is checked, in this order, by

- local validation: a JWT whose signature verifies with a key from
  ``local_validation_key_dict`` (a JWKS JSON file: a path, ``file:PATH`` or
  ``fs:posix:prefix=PATH`` naming one), with ``exp``/``nbf`` checked and
  ``iss`` checked against ``issuers`` and ``aud`` against ``client_id``
  when those are set;
- ``introspection_url`` (RFC 7662) with ``introspection_mode`` ``post``
  (``token=…`` form, client_id/client_secret as HTTP basic auth), ``get``
  (token appended to the URL) or ``auth`` (``Authorization: Bearer``);
- ``tokeninfo_url`` (token appended).

The user name is the ``username_attribute`` claim (default ``email``); it
must equal the login's user name.  With ``active_attribute`` set, that
claim must equal ``active_value``; without it an RFC 7662 ``active`` field
must be true.  HTTP goes through ``twisted.web.client.Agent``, never a
blocking call, bounded by ``timeout_msecs``.

Trusts: the settings file (root's).  Not the token, and not the
introspection server's reply beyond its JSON: a malformed reply is a
temporary failure, a token it doesn't vouch for a password mismatch.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.parse
from typing import Any

from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from authd.interfaces import AuthRequest, IPassdb, PassdbResult, PassdbStatus

log = Logger()

DEFAULTS = {
    "introspection_url": "",
    "introspection_mode": "auth",
    "tokeninfo_url": "",
    "username_attribute": "email",
    "active_attribute": "",
    "active_value": "",
    "client_id": "",
    "client_secret": "",
    "issuers": "",
    "local_validation_key_dict": "",
    "timeout_msecs": "0",
    "scope": "",
}

MAX_REPLY = 1 << 20
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA", "HS256", "HS384", "HS512"]


class OAuth2ConfigError(ValueError):
    """The oauth2 settings file is malformed."""


def parse_config(text: str) -> dict[str, str]:
    """Dovecot's ``dovecot-oauth2.conf.ext``: ``key = value`` per line."""
    settings = dict(DEFAULTS)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise OAuth2ConfigError(f"line {number}: expected 'key = value'")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        settings[key.strip()] = value
    if settings["introspection_mode"] not in ("auth", "get", "post", "local"):
        raise OAuth2ConfigError(f"unknown introspection_mode {settings['introspection_mode']!r}")
    return settings


def _key_path(spec: str) -> str:
    for prefix in ("file:", "fs:posix:prefix="):
        if spec.startswith(prefix):
            return spec[len(prefix):]
    return spec


def load_keys(spec: str) -> KeySet | None:
    """The JWKS named by ``local_validation_key_dict`` (None if unset)."""
    if not spec:
        return None
    path = _key_path(spec)
    try:
        with open(path) as f:
            data = json.load(f)
        return KeySet.import_key_set(data)
    except (OSError, ValueError, jose_errors.JoseError) as e:
        raise OAuth2ConfigError(f"cannot load keys from {path}: {e}") from None


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2


class _Invalid(Exception):
    """The token is not valid (a password mismatch, with the reason logged)."""


@implementer(IPassdb)
class OAuth2Passdb:
    """``driver = oauth2``: verifies tokens; cannot hand out credentials."""

    driver = "oauth2"
    supports_credentials = False

    def __init__(self, args: str = "", settings: dict[str, str] | None = None,
                 agent: Any = None, reactor: Any = None, clock: Any = None):
        if settings is None:
            path = args.strip()
            if not path:
                raise OAuth2ConfigError("oauth2: args must name the oauth2 settings file")
            with open(path) as f:
                settings = parse_config(f.read())
        else:
            settings = {**DEFAULTS, **settings}
        self.settings = settings
        self.keys = load_keys(settings["local_validation_key_dict"])
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.agent = agent
        self.now = clock or time.time
        if not (self.keys or settings["introspection_url"] or settings["tokeninfo_url"]):
            raise OAuth2ConfigError(
                "oauth2: set introspection_url, tokeninfo_url or local_validation_key_dict")

    # -- IPassdb -------------------------------------------------------------

    def verify_plain(self, user: str, password: str, request: AuthRequest) -> defer.Deferred:
        d = self._validate(password)
        d.addCallback(self._check_user, user, request)
        d.addErrback(self._refused, request, user)
        return d

    def lookup_credentials(self, user: str, scheme: str, request: AuthRequest) -> defer.Deferred:
        return defer.succeed(PassdbResult(PassdbStatus.SCHEME_NOT_AVAILABLE,
                                          error="oauth2 can't supply credentials"))

    # -- validation ------------------------------------------------------------

    def _validate(self, token: str) -> defer.Deferred:
        """Fire with the token's claims, or fail with _Invalid / other errors."""
        if self.keys is not None and _is_jwt(token):
            return defer.maybeDeferred(self._local, token)
        if self.settings["introspection_url"] and self.settings["introspection_mode"] != "local":
            return self._introspect(token)
        if self.settings["tokeninfo_url"]:
            return self._fetch(self.settings["tokeninfo_url"] + urllib.parse.quote(token, safe=""))
        return defer.fail(_Invalid("token is not a JWT and no introspection is configured"))

    def _local(self, token: str) -> dict[str, Any]:
        try:
            decoded = jwt.decode(token, self.keys, algorithms=ALGORITHMS)
        except (jose_errors.JoseError, ValueError) as e:
            raise _Invalid(f"invalid JWT: {e}") from None
        claims = dict(decoded.claims)
        options: dict[str, Any] = {"exp": {"essential": True}}
        issuers = self.settings["issuers"].split()
        if issuers:
            options["iss"] = {"essential": True, "values": issuers}
        if self.settings["client_id"]:
            options["aud"] = {"essential": True, "value": self.settings["client_id"]}
        registry = jwt.JWTClaimsRegistry(now=int(self.now()), leeway=0, **options)
        try:
            registry.validate(claims)
        except (jose_errors.JoseError, ValueError) as e:
            raise _Invalid(f"JWT claims refused: {e}") from None
        return claims

    def _introspect(self, token: str) -> defer.Deferred:
        url = self.settings["introspection_url"]
        mode = self.settings["introspection_mode"]
        headers = {}
        body = None
        if mode == "auth":
            headers["Authorization"] = f"Bearer {token}"
        elif mode == "get":
            url += urllib.parse.quote(token, safe="")
        else:  # post, RFC 7662
            body = urllib.parse.urlencode({"token": token}).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            if self.settings["client_id"]:
                creds = f"{self.settings['client_id']}:{self.settings['client_secret']}"
                headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
        return self._fetch(url, "POST" if body is not None else "GET", headers, body)

    def _fetch(self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
               body: bytes | None = None) -> defer.Deferred:
        if self.agent is None:
            self.agent = Agent(self.reactor)
        hdrs = Headers({"Accept": ["application/json"]})
        for k, v in (headers or {}).items():
            hdrs.setRawHeaders(k, [v])
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        d = self.agent.request(method.encode(), url.encode(), hdrs, producer)

        def got(response):
            if response.length not in (None, -1) and isinstance(response.length, int) \
                    and response.length > MAX_REPLY:
                raise ValueError("introspection reply too large")
            return readBody(response).addCallback(lambda data: (response.code, data))

        def parse(result):
            code, data = result
            if code in (401, 403, 404):
                raise _Invalid(f"token refused by server (HTTP {code})")
            if code != 200:
                raise ValueError(f"introspection failed: HTTP {code}")
            try:
                claims = json.loads(data)
            except ValueError:
                raise ValueError("introspection reply is not JSON") from None
            if not isinstance(claims, dict):
                raise ValueError("introspection reply is not a JSON object")
            self._check_active(claims)
            return claims

        d.addCallback(got)
        d.addCallback(parse)
        timeout = int(self.settings["timeout_msecs"] or 0)
        if timeout > 0:
            d.addTimeout(timeout / 1000.0, self.reactor)
        return d

    def _check_active(self, claims: dict[str, Any]) -> None:
        attribute = self.settings["active_attribute"]
        if attribute:
            value = claims.get(attribute)
            wanted = self.settings["active_value"]
            if value is None or (wanted and str(value).lower() != wanted.lower()):
                raise _Invalid("token is not active")
        elif "active" in claims and claims["active"] is not True:
            raise _Invalid("token is not active")

    def _check_user(self, claims: dict[str, Any], user: str, request: AuthRequest) -> PassdbResult:
        attribute = self.settings["username_attribute"]
        name = claims.get(attribute)
        if not isinstance(name, str) or not name:
            raise _Invalid(f"no {attribute} in token")
        candidates = {user.lower(), (request.original_user or user).lower()}
        if name.lower() not in candidates:
            raise _Invalid(f"token is for {name!r}")
        return PassdbResult(PassdbStatus.OK, {})

    def _refused(self, failure: Any, request: AuthRequest, user: str) -> PassdbResult:
        if failure.check(_Invalid):
            return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, error=str(failure.value))
        if failure.check(defer.CancelledError, defer.TimeoutError):
            return PassdbResult(PassdbStatus.INTERNAL_FAILURE, error="oauth2: request timed out")
        return PassdbResult(PassdbStatus.INTERNAL_FAILURE,
                            error=f"oauth2: {failure.getErrorMessage()}")


def _register() -> None:
    from authd import drivers

    drivers.register_passdb("oauth2", OAuth2Passdb)


_register()
