"""Dovecot's static passdb and userdb: fixed fields for every user.

``userdb { driver = static  args = uid=vmail gid=vmail home=/var/vmail/%d/%n }``
``passdb { driver = static  args = password=secret }`` (or ``nopassword``).
Values may hold %-variables, expanded per request.  The args are trusted
(root's config).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from authd.drivers.passwd_file import credentials_in, verify_password
from authd.interfaces import AuthRequest, IPassdb, IUserdb, PassdbResult, PassdbStatus
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
    """Every user exists, with the same (expanded) fields."""

    driver = "static"

    def __init__(self, args: str):
        self.fields = parse_fields(args)
        self.fields.pop("allow_all_users", None)

    def lookup(self, user: str, request: AuthRequest) -> defer.Deferred:
        return defer.succeed(expand_fields(self.fields, _values(user, request)))
