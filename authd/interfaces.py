"""Interfaces and result types of authd's password and user databases.

A passdb checks credentials; a userdb says where a user's mail lives and
with which privileges.  Both answer with Deferreds so blocking backends
(PAM, LDAP, SQL) can run in threads.  These types trust nothing: they only
carry what a backend said.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from pydovecot.log import sanitize


class PassdbStatus(enum.Enum):
    """Outcome of one passdb lookup, as Dovecot's passdb_result."""

    OK = "ok"
    USER_UNKNOWN = "user unknown"
    PASSWORD_MISMATCH = "password mismatch"
    INTERNAL_FAILURE = "internal failure"  # temporary: backend trouble
    SCHEME_NOT_AVAILABLE = "scheme not available"  # lookup_credentials only


class AuthBackendError(Exception):
    """A backend could not answer (temporary failure); the message is logged,
    never shown to the client."""


@dataclass
class AuthRequest:
    """One authentication or lookup request, as the databases see it."""

    user: str  # after auth_username_format
    service: str = ""
    original_user: str = ""  # as the client gave it
    mech: str = ""
    local_ip: str = ""
    local_port: int = 0
    remote_ip: str = ""
    remote_port: int = 0
    session: str = ""
    secured: bool = False
    #: Set once the passdb chain accepted the user (Dovecot's
    #: ``fields.successful``); False for userdb-only lookups (lmtp).
    passdb_success: bool = False
    #: Extra values for %-expansion (e.g. ``home`` once a userdb set it).
    extra_vars: dict[str, str] = field(default_factory=dict)

    def variables(self) -> dict[str, str]:
        """Values for %-variable expansion, keyed by Dovecot's long names."""
        username, _, domain = self.user.partition("@")
        values = {
            "user": self.user,
            "username": username,
            "domain": domain,
            "service": self.service,
            "lip": self.local_ip,
            "rip": self.remote_ip,
            "lport": str(self.local_port) if self.local_port else "",
            "rport": str(self.remote_port) if self.remote_port else "",
            "session": self.session,
            "mech": self.mech,
            "secured": "secured" if self.secured else "",
            "orig_user": self.original_user or self.user,
            "home": "",
        }
        values.update(self.extra_vars)
        return values

    def log_id(self, driver: str) -> str:
        """Dovecot's log prefix: ``driver(user,rip,<session>)``, every part
        sanitized (pydovecot.log.sanitize): they come from clients."""
        parts = [sanitize(self.user)]
        if self.remote_ip:
            parts.append(sanitize(self.remote_ip, 64))
        if self.session:
            parts.append(f"<{sanitize(self.session, 64)}>")
        return f"{driver}({','.join(parts)})"


@dataclass
class PassdbResult:
    """A passdb's answer.

    ``extra`` holds passdb extra fields (``nologin``, ``nopassword``,
    ``allow_nets``, ``user``, ``reason``, ``userdb_*`` …) as strings; a field
    given without a value maps to ``""``.
    """

    status: PassdbStatus
    extra: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # for INTERNAL_FAILURE: what to log
    credentials: str | None = None  # lookup_credentials: "{SCHEME}data"

    @property
    def ok(self) -> bool:
        return self.status is PassdbStatus.OK

    @property
    def nologin(self) -> bool:
        return "nologin" in self.extra

    @property
    def nopassword(self) -> bool:
        return "nopassword" in self.extra

    @property
    def allow_nets(self) -> list[str]:
        value = self.extra.get("allow_nets", "")
        return [net for net in value.replace(",", " ").split() if net]

    def userdb_fields(self) -> dict[str, str]:
        """The ``userdb_*`` extra fields, prefix removed (Dovecot's prefetch)."""
        return {k[7:]: v for k, v in self.extra.items() if k.startswith("userdb_") and k[7:]}


class IPassdb(Interface):
    """A password database."""

    driver = Attribute("Driver name used in logs, e.g. 'passwd-file'.")

    def verify_plain(user: str, password: str, request: AuthRequest) -> Deferred:
        """Check a plaintext password; fires with a :class:`PassdbResult`.

        Backend failures fire a result with INTERNAL_FAILURE rather than
        errbacking."""

    def lookup_credentials(user: str, scheme: str, request: AuthRequest) -> Deferred:
        """Fetch the stored credentials in ``scheme`` (for CRAM-MD5, SCRAM …);
        fires with a :class:`PassdbResult` whose ``credentials`` is set on OK."""


class IUserdb(Interface):
    """A user database."""

    driver = Attribute("Driver name used in logs, e.g. 'static'.")

    def lookup(user: str, request: AuthRequest) -> Deferred:
        """Fire with a dict of userdb fields (``uid``, ``gid``, ``home``,
        ``mail`` …, values as strings) or None if the user is unknown.
        Errback with :class:`AuthBackendError` on backend trouble."""
