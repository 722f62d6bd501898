"""Dovecot's static passdb and userdb: fixed fields for every user.

``userdb { driver = static  args = uid=vmail gid=vmail home=/var/vmail/%d/%n }``
``passdb { driver = static  args = password=secret }`` (or ``nopassword``).
Values may hold %-variables, expanded per request.  The userdb knows only
users the passdbs know unless ``allow_all_users=yes``.  The args are
trusted (root's config).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from zope.interface import implementer

from authd.drivers.passwd_file import credentials_in, verify_password
from authd.interfaces import (
    AuthBackendError,
    AuthRequest,
    IPassdb,
    IUserdb,
    PassdbResult,
    PassdbStatus,
)
from authd.settings import expand_fields, parse_fields


def _values(user: str, request: AuthRequest) -> dict[str, str]:
    values = dict(request.variables(), user=user)
    values["username"], _, values["domain"] = user.partition("@")
    return values


@implementer(IPassdb)
class StaticPassdb:
    """Every user has the same password (default scheme PLAIN)."""

    driver = "static"

    def __init__(self, args: str):
        self.fields = parse_fields(args)
        self.password = self.fields.pop("password", None)

    def verify_plain(self, user: str, password: str, request: AuthRequest) -> defer.Deferred:
        values = _values(user, request)
        extra = expand_fields(self.fields, values)
        if "nopassword" in extra:
            return defer.succeed(PassdbResult(PassdbStatus.OK, extra))
        if not self.password:
            return defer.succeed(
                PassdbResult(PassdbStatus.PASSWORD_MISMATCH, extra, error="no password= in args")
            )
        return verify_password(
            password, expand_fields({"p": self.password}, values)["p"], "PLAIN", extra
        )

    def lookup_credentials(self, user: str, scheme: str, request: AuthRequest) -> defer.Deferred:
        values = _values(user, request)
        extra = expand_fields(self.fields, values)
        if not self.password:
            return defer.succeed(PassdbResult(PassdbStatus.SCHEME_NOT_AVAILABLE, extra))
        stored = expand_fields({"p": self.password}, values)["p"]
        return defer.succeed(credentials_in(stored, scheme, "PLAIN", extra))


@implementer(IUserdb)
class StaticUserdb:
    """The same (expanded) fields for every user the passdb knows.

    As Dovecot's userdb-static: a lookup that does not follow a successful
    passdb check (lmtp's recipient lookups) first looks the user up in the
    passdbs (no password check) and knows only users found there; a passdb
    that can't look users up (PAM) makes that a temporary failure.
    ``allow_all_users=yes`` in the args skips the check: every name exists.
    """

    driver = "static"

    def __init__(self, args: str):
        self.fields = parse_fields(args)
        allow = self.fields.pop("allow_all_users", "no").lower()
        self.allow_all_users = allow in ("", "yes", "y", "1", "true")
        #: Set by the engine: ``lookup_user(request)`` -> Deferred[PassdbResult].
        self.passdb_lookup: Callable[[AuthRequest], defer.Deferred] | None = None

    @property
    def needs_passdb_lookup(self) -> bool:
        return not self.allow_all_users

    def lookup(self, user: str, request: AuthRequest) -> defer.Deferred:
        fields = expand_fields(self.fields, _values(user, request))
        if self.allow_all_users or request.passdb_success or self.passdb_lookup is None:
            return defer.succeed(fields)
        return self.passdb_lookup(request).addCallback(self._checked, fields)

    @staticmethod
    def _checked(result: PassdbResult, fields: dict[str, str]) -> dict[str, str] | None:
        status = result.status
        if status is PassdbStatus.OK:
            return fields
        if status in (PassdbStatus.USER_UNKNOWN, PassdbStatus.PASSWORD_MISMATCH):
            return None
        if status is PassdbStatus.SCHEME_NOT_AVAILABLE:
            raise AuthBackendError(
                "passdb doesn't support lookups, can't verify user's existence")
        raise AuthBackendError(result.error or "passdb lookup failed")
