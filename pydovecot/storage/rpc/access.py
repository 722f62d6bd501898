"""The owner's access check for the storage RPC (a stand-in for ACLs).

:func:`authorize` is the hook every RPC command of a non-owner passes
through in the owner's process: ``authorize(requesting_user, owner,
mailbox, right) -> bool`` with RFC 4314 right letters (``l`` list, ``r``
read/select, ``s`` \\Seen, ``w`` other flags, ``i`` append/copy into,
``t`` \\Deleted, ``e`` expunge, ``k`` create, ``x`` delete/rename).  The
owner always may.  Anyone else is denied unless the owner's userdb field
``shared_with`` names them: ``shared_with=bob`` gives bob ``lr`` on every
mailbox, ``shared_with=bob:lrs carol:lrswite`` gives the rights after the
colon.  The ACL part of issue 9 replaces this module with the vfile ACLs.

Trusts the owner's userdb fields (from the master); the requesting user
is the one the master (or the TLS peer's shared secret) vouched for.
"""

from __future__ import annotations

from collections.abc import Callable

Authorize = Callable[[str, str, str, str], bool]

DEFAULT_RIGHTS = "lr"


def shared_with(fields: dict) -> dict[str, str]:
    """``shared_with`` → {user: rights}."""
    out: dict[str, str] = {}
    for item in str(fields.get("shared_with", "")).replace(",", " ").split():
        user, _, rights = item.partition(":")
        if user:
            out[user] = rights or DEFAULT_RIGHTS
    return out


def rule_from_fields(fields: dict) -> Authorize:
    """The hook for an owner whose userdb fields are ``fields``."""
    grants = shared_with(fields)

    def authorize(requesting_user: str, owner: str, mailbox: str, right: str) -> bool:
        if requesting_user == owner:
            return True
        return right in grants.get(requesting_user, "")

    return authorize


def deny_others(requesting_user: str, owner: str, mailbox: str, right: str) -> bool:
    """Deny by default: only the owner."""
    return requesting_user == owner


__all__ = ["Authorize", "rule_from_fields", "deny_others", "shared_with"]
