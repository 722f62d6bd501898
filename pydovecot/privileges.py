"""Dropping privileges: chroot, setgroups/setgid/setuid, no_new_privs.

Used by children that start as root and must give it up before they read a
single untrusted byte.  It trusts its caller for the target ids.  Works for
uids with no passwd entry (virtual users): it never calls initgroups.
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import os
import pwd

PR_SET_NO_NEW_PRIVS = 38


def is_root() -> bool:
    return os.geteuid() == 0


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): no exec can ever gain privileges again."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def drop_to(uid: int, gid: int, groups: list[int] | None = None) -> None:
    """Become uid/gid for good (real, effective and saved ids)."""
    os.setgroups(groups or [])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError("privilege drop did not take effect")


#: Codecs that libraries look up lazily (pyOpenSSL reads certificate names
#: with "charmap"; getaddrinfo uses "idna"): they can't be imported once the
#: process is chrooted to an empty directory.
CHROOT_CODECS = ("charmap", "ascii", "latin-1", "utf-8", "utf-16", "idna", "punycode")


def enter_chroot(path: str) -> None:
    """chroot to ``path`` (an empty, root-owned directory) and cd into it,
    after loading what cannot be loaded from inside."""
    for name in CHROOT_CODECS:
        codecs.lookup(name)
    os.chroot(path)
    os.chdir("/")


def lookup_user(name: str) -> tuple[int, int]:
    """(uid, gid) of a system user; KeyError with a hint if it is missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise KeyError(
            f"system user {name!r} does not exist; create it with: "
            f"useradd --system --no-create-home --shell /usr/sbin/nologin {name}"
        ) from None
    return entry.pw_uid, entry.pw_gid
