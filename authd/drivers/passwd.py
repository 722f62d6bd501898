"""Dovecot's passwd userdb: ``userdb { driver = passwd }``.

System users from the name service (``getpwnam``: /etc/passwd, or LDAP/SSSD
through NSS): ``uid``, ``gid``, ``home`` and ``system_groups_user`` (so the
mail process gets the user's supplementary groups).  The lookup runs on the
auth worker pool since NSS backends may block (in authd's privileged
worker, authd.worker, when authd runs unprivileged).  No args.

Trust: the name service is the system's (trusted); the user name comes
from a client and is only a lookup key (names with ``@`` or NUL are unknown).
"""

from __future__ import annotations

import pwd
from typing import Any

from twisted.internet import defer, threads
from zope.interface import implementer

from authd.interfaces import AuthBackendError, AuthRequest, IUserdb


def passwd_fields(user: str) -> dict[str, str] | None:
    """The userdb fields of a system user, or None (blocking)."""
    if not user or "\0" in user or "/" in user:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    except OSError as e:  # NSS backend trouble
        raise AuthBackendError(f"getpwnam({user}) failed: {e}") from None
    return {
        "uid": str(pw.pw_uid),
        "gid": str(pw.pw_gid),
        "home": pw.pw_dir,
        "system_groups_user": pw.pw_name,
    }


@implementer(IUserdb)
class PasswdUserdb:
    """``driver = passwd``."""

    driver = "passwd"

    def __init__(self, args: str = "", reactor: Any = None, pool: Any = None):
        words = args.split()
        # Dovecot 2.3 knows only blocking=yes|no here; both are fine.
        if any(not w.startswith("blocking=") for w in words):
            raise ValueError(f"passwd: unknown arguments: {args}")
        self._reactor = reactor
        self._pool = pool

    def lookup(self, user: str, request: AuthRequest) -> defer.Deferred:
        from authd import drivers
        from authd.drivers.workers import worker_pool

        if drivers.PRIVILEGED_WORKER is not None and self._pool is None:
            return drivers.PRIVILEGED_WORKER.passwd(user)  # the root worker asks NSS

        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        pool = self._pool or worker_pool(reactor)
        return threads.deferToThreadPool(reactor, pool, passwd_fields, user)
