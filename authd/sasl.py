"""Server-side SASL mechanisms as small state machines.

Each exchange gets a fresh mechanism object; :meth:`ISASLMechanism.step`
takes the client's (already base64-decoded) bytes and returns what to do
next.  Input is untrusted: anything malformed ends in :class:`Fail` with a
reason safe to show, never an exception.  Mechanisms never see a passdb;
they hand the server :class:`PlainCredentials` to verify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


Step = Continue | PlainCredentials | Fail


class ISASLMechanism(Interface):
    """One SASL exchange on the server side."""

    name = Attribute("Mechanism name, upper case (PLAIN, LOGIN …).")
    plaintext = Attribute("True if the password crosses the wire in clear.")

    def step(data: bytes | None) -> Step:  # type: ignore[valid-type]
        """Advance with the client's data (None: no initial response)."""


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@implementer(ISASLMechanism)
class PlainMechanism:
    """RFC 4616 PLAIN: ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"
    plaintext = True

    def __init__(self) -> None:
        self._asked = False

    def step(self, data: bytes | None) -> Step:
        if data is None:
            if self._asked:
                return Fail("Invalid input")
            self._asked = True
            return Continue(b"")
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

    def __init__(self) -> None:
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
MECHANISMS: dict[str, Callable[[], ISASLMechanism]] = {}


def register(name: str, factory: Callable[[], ISASLMechanism], plaintext: bool) -> None:
    """Make a mechanism available (auth_mechanisms still has to list it)."""
    MECHANISMS[name.upper()] = factory
    if plaintext:
        PLAINTEXT.add(name.upper())
    else:
        PLAINTEXT.discard(name.upper())


#: Names of mechanisms that send the password in clear.
PLAINTEXT: set[str] = set()

register("PLAIN", PlainMechanism, plaintext=True)
register("LOGIN", LoginMechanism, plaintext=True)


def create(name: str) -> ISASLMechanism | None:
    """A fresh exchange for ``name``, or None if no such mechanism."""
    factory = MECHANISMS.get(name.upper())
    return factory() if factory is not None else None


def is_plaintext(name: str) -> bool:
    return name.upper() in PLAINTEXT
