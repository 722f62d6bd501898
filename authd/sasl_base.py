"""Server-side SASL mechanisms as small state machines.

Each exchange gets a fresh mechanism object; :meth:`ISASLMechanism.step`
takes the client's (already base64-decoded) bytes and returns what to do
next.  Input is untrusted: anything malformed ends in :class:`Fail` with a
reason safe to show, never an exception.  Mechanisms never see a passdb:
they hand the exchange (authd.exchange) :class:`PlainCredentials` to
verify, or ask it for stored credentials with :class:`NeedCredentials` and
say :class:`Verified` once the client proved who it is.  What a mechanism
knows about the connection (TLS channel binding, client certificate)
arrives in a :class:`SASLContext` filled by authd from the login process's
AuthStart, which authd trusts (the kernel tells it the peer is the login
process, and only that process sees the TLS session).

PLAIN and LOGIN live here; the others in :mod:`authd.mechanisms`, which
registers them on import.  Use :mod:`authd.sasl`, which imports both (this
module is what the mechanisms build on, so it imports none of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zope.interface import Attribute, Interface, implementer


@dataclass(frozen=True)
class Continue:
    """Send ``challenge`` to the client and wait for its response."""

    challenge: bytes


@dataclass(frozen=True)
class PlainCredentials:
    """The client named a user and gave a plaintext password: verify it."""

    authcid: str
    password: str
    authzid: str = ""


@dataclass(frozen=True)
class Fail:
    """The exchange failed; ``reason`` may be shown to the client."""

    reason: str
    temporary: bool = False


@dataclass(frozen=True)
class NeedCredentials:
    """Fetch ``authcid``'s stored password from the passdbs and call
    :meth:`ISASLMechanism.credentials` with it.  ``schemes`` are tried in
    order on each passdb (e.g. ``("PLAIN", "CRAM-MD5")``)."""

    authcid: str
    schemes: tuple[str, ...]
    authzid: str = ""


@dataclass(frozen=True)
class Verified:
    """The client proved it is ``authcid``.

    After :class:`NeedCredentials` the passdb that supplied them has also
    supplied its extra fields.  Otherwise (EXTERNAL) ``passdb_lookup`` makes
    the exchange look the user up without a password; ANONYMOUS skips the
    passdb entirely.  ``authzid`` is the identity to log in as, if other."""

    authcid: str
    authzid: str = ""
    passdb_lookup: bool = True


Step = Continue | PlainCredentials | Fail | NeedCredentials | Verified


@dataclass
class SASLContext:
    """What a mechanism may know about the request and its connection."""

    settings: Any = None  # authd.settings.AuthSettings (trusted)
    service: str = ""
    secured: bool = False
    #: "tls-unique" or "tls-exporter" and its data, when the client is on TLS.
    channel_binding_type: str = ""
    channel_binding: bytes = b""
    #: Username from the client's TLS certificate (ssl_cert_username_field).
    client_cert_user: str = ""
    valid_client_cert: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def setting(self, name: str, default: Any = "") -> Any:
        return getattr(self.settings, name, default) if self.settings is not None else default


class ISASLMechanism(Interface):
    """One SASL exchange on the server side."""

    name = Attribute("Mechanism name, upper case (PLAIN, LOGIN …).")
    plaintext = Attribute("True if the password crosses the wire in clear.")

    def step(data: bytes | None) -> Step:  # type: ignore[valid-type]
        """Advance with the client's data (None: no initial response)."""

    # Optional (mechanisms that ask for NeedCredentials):
    #   credentials(scheme: str, data: str) -> Step
    #       The stored password, ``data`` being what follows ``{SCHEME}``.
    # Optional (mechanisms with their own failure dialogue, OAUTHBEARER):
    #   failed(reason: str, temporary: bool) -> Step | None
    #       The credentials were refused; a Continue here is sent to the
    #       client before the exchange fails.


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class ClientFirstMechanism:
    """A mechanism whose client speaks first.  Without an initial response
    it sends one empty challenge; the client's message goes to
    :meth:`respond`."""

    plaintext = False

    def __init__(self, context: SASLContext | None = None) -> None:
        self.context = context if context is not None else SASLContext()
        self._asked = False

    def step(self, data: bytes | None) -> Step:
        if data is None:
            if self._asked:
                return Fail("Invalid input")
            self._asked = True
            return Continue(b"")
        return self.respond(data)

    def respond(self, data: bytes) -> Step:
        raise NotImplementedError


@implementer(ISASLMechanism)
class PlainMechanism(ClientFirstMechanism):
    """RFC 4616 PLAIN: ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"
    plaintext = True

    def respond(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Fail("Invalid input")
        decoded = [_text(p) for p in parts]
        if any(p is None for p in decoded):
            return Fail("Invalid input (not UTF-8)")
        authzid, authcid, password = (p or "" for p in decoded)
        if not authcid:
            return Fail("Invalid input (empty username)")
        if authzid and authzid != authcid:
            return Fail("Authorization as another user is not allowed")
        return PlainCredentials(authcid, password, authzid)


@implementer(ISASLMechanism)
class LoginMechanism:
    """The LOGIN mechanism: ``Username:`` then ``Password:`` challenges."""

    name = "LOGIN"
    plaintext = True

    def __init__(self, context: SASLContext | None = None) -> None:
        self._user: str | None = None
        self._started = False

    def step(self, data: bytes | None) -> Step:
        if not self._started:
            self._started = True
            if not data:  # no (or empty) initial response: ask for it
                return Continue(b"Username:")
        elif data is None:
            return Fail("Invalid input")
        assert data is not None
        if b"\0" in data:
            return Fail("Invalid input")
        text = _text(data)
        if text is None:
            return Fail("Invalid input (not UTF-8)")
        if self._user is None:
            if not text:
                return Fail("Invalid input (empty username)")
            self._user = text
            return Continue(b"Password:")
        return PlainCredentials(self._user, text)


#: Registered mechanisms: name → factory of a fresh exchange.
MECHANISMS: dict[str, Callable[..., ISASLMechanism]] = {}

#: Names of mechanisms that send the password in clear.
PLAINTEXT: set[str] = set()

#: Mechanisms that need stored credentials (CRAM-MD5, SCRAM-*).
NEEDS_CREDENTIALS: set[str] = set()

#: Mechanisms that need TLS channel binding data (SCRAM-*-PLUS).
NEEDS_CHANNEL_BINDING: set[str] = set()

#: Mechanisms whose "password" is an OAuth2 token (needs an oauth2 passdb).
NEEDS_OAUTH2: set[str] = set()


def register(
    name: str,
    factory: Callable[..., ISASLMechanism],
    plaintext: bool,
    *,
    credentials: bool = False,
    channel_binding: bool = False,
    oauth2: bool = False,
) -> None:
    """Make a mechanism available (auth_mechanisms still has to list it).

    ``factory`` is called with a :class:`SASLContext` (or nothing)."""
    upper = name.upper()
    MECHANISMS[upper] = factory
    for flag, names in (
        (plaintext, PLAINTEXT),
        (credentials, NEEDS_CREDENTIALS),
        (channel_binding, NEEDS_CHANNEL_BINDING),
        (oauth2, NEEDS_OAUTH2),
    ):
        if flag:
            names.add(upper)
        else:
            names.discard(upper)


register("PLAIN", PlainMechanism, plaintext=True)
register("LOGIN", LoginMechanism, plaintext=True)


def create(name: str, context: SASLContext | None = None) -> ISASLMechanism | None:
    """A fresh exchange for ``name``, or None if no such mechanism."""
    factory = MECHANISMS.get(name.upper())
    if factory is None:
        return None
    return factory(context if context is not None else SASLContext())


def is_plaintext(name: str) -> bool:
    return name.upper() in PLAINTEXT

