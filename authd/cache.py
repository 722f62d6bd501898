"""Dovecot's auth cache: remembered passdb and userdb answers.

Settings: ``auth_cache_size`` (bytes, 0 = no cache), ``auth_cache_ttl``
(how long a found user's entry is trusted, default 1 h) and
``auth_cache_negative_ttl`` (unknown users and remembered password
mismatches, default 1 h; 0 = never cached).  ``auth_cache_verify_password
_with_worker`` is ignored: checking a cached password costs one HMAC.

Keys are ``P<n>\\t`` / ``U<n>\\t`` (the n-th passdb/userdb) plus the
database's cache key template expanded for the request: the driver's
``cache_key`` (PAM's ``cache_key=`` arg), else the section's ``cache_key``
option, else ``%u\\t%s`` (user and service).

Passdb entries (plaintext verification only):

- the backend said OK for password P: the entry keeps the passdb's extra
  fields and HMAC-SHA256(process secret, salt + P) with a random per-entry
  salt, never P itself.  A later P' that matches is OK from the cache;
- the backend said mismatch while an entry exists: the entry remembers the
  failure.  Further wrong passwords are answered "mismatch" from the cache
  until ``auth_cache_negative_ttl``; a password that does not match an
  entry whose last result was a success goes to the backend (as Dovecot
  does: the password may just have changed);
- unknown user: a negative entry for ``auth_cache_negative_ttl``;
- internal failures are never cached.

Userdb entries hold the fields (or "unknown", negatively).  Entries are
evicted least recently used first once their estimated size passes
``auth_cache_size``; :meth:`AuthCache.flush` drops a user's entries (or all).

Trust: entries come from the backends (trusted); user names and passwords
from clients are only hashed or used as dict keys.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from authd.interfaces import PassdbResult, PassdbStatus

DEFAULT_CACHE_KEY = "%u\t%s"
_ENTRY_OVERHEAD = 96  # rough bytes per entry beyond its strings


@dataclass
class _Entry:
    user: str
    created: float
    found: bool  # False: negative entry (unknown user)
    extra: dict[str, str] | None = None  # passdb extra / userdb fields
    salt: bytes = b""
    digest: bytes = b""  # HMAC of the last verified password; b"" for userdb
    any_password: bool = False  # passdb said ``nopassword``
    last_success: bool = True
    failed_at: float = 0.0
    size: int = field(default=0)


class AuthCache:
    """The cache of one authd; ``size`` 0 disables it (every get misses)."""

    def __init__(self, clock: Any, size: int = 0, ttl: float = 3600.0,
                 negative_ttl: float = 3600.0):
        self.clock = clock
        self.size = size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._secret = secrets.token_bytes(32)
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._used = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals ---------------------------------------------------------

    def _digest(self, salt: bytes, password: str) -> bytes:
        data = salt + password.encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def _get(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        now = self.clock.seconds()
        ttl = self.ttl if entry.found else self.negative_ttl
        if now - entry.created >= ttl:
            self._remove(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        return entry

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._used -= entry.size

    def _put(self, key: str, entry: _Entry) -> None:
        self._remove(key)
        extra = entry.extra or {}
        entry.size = (_ENTRY_OVERHEAD + len(key) + len(entry.user) + len(entry.digest)
                      + sum(len(k) + len(v) for k, v in extra.items()))
        if entry.size > self.size:
            return
        self._entries[key] = entry
        self._used += entry.size
        while self._used > self.size:
            old_key = next(iter(self._entries))
            self._remove(old_key)

    # -- passdb ------------------------------------------------------------

    def passdb_get(self, key: str, password: str) -> PassdbResult | None:
        """A cached answer for verifying ``password``, or None: ask the backend."""
        if not self.enabled:
            return None
        entry = self._get("P" + key)
        if entry is None:
            return None
        if not entry.found:
            self.hits += 1
            return PassdbResult(PassdbStatus.USER_UNKNOWN, error="cached")
        extra = dict(entry.extra or {})
        if entry.any_password or (
            entry.digest and hmac.compare_digest(entry.digest, self._digest(entry.salt, password))
        ):
            entry.last_success = True
            self.hits += 1
            return PassdbResult(PassdbStatus.OK, extra)
        now = self.clock.seconds()
        if (
            not entry.last_success
            and self.negative_ttl > 0
            and now - entry.failed_at < self.negative_ttl
        ):
            self.hits += 1
            return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, extra, error="cached")
        if entry.last_success:
            # Maybe the password was just changed: ask the backend.
            self._remove("P" + key)
        self.misses += 1
        return None

    def passdb_put(self, key: str, user: str, password: str, result: PassdbResult) -> None:
        """Remember a backend's answer to verifying ``password``."""
        if not self.enabled:
            return
        now = self.clock.seconds()
        if result.status is PassdbStatus.OK:
            salt = secrets.token_bytes(16)
            self._put("P" + key, _Entry(
                user, now, True, dict(result.extra), salt, self._digest(salt, password),
                any_password="nopassword" in result.extra,
            ))
        elif result.status is PassdbStatus.USER_UNKNOWN:
            if self.negative_ttl > 0:
                self._put("P" + key, _Entry(user, now, False))
        elif result.status is PassdbStatus.PASSWORD_MISMATCH:
            entry = self._entries.get("P" + key)
            if entry is not None and entry.found:
                entry.last_success = False
                entry.failed_at = now

    # -- userdb ------------------------------------------------------------

    def userdb_get(self, key: str) -> tuple[bool, dict[str, str] | None]:
        """(hit, fields): fields None on a hit means a cached unknown user."""
        if not self.enabled:
            return False, None
        entry = self._get("U" + key)
        if entry is None:
            return False, None
        self.hits += 1
        return True, (dict(entry.extra or {}) if entry.found else None)

    def userdb_put(self, key: str, user: str, fields: dict[str, str] | None) -> None:
        if not self.enabled:
            return
        now = self.clock.seconds()
        if fields is not None:
            self._put("U" + key, _Entry(user, now, True, dict(fields)))
        elif self.negative_ttl > 0:
            self._put("U" + key, _Entry(user, now, False))

    # -- admin -------------------------------------------------------------

    def flush(self, users: list[str] | None = None) -> int:
        """Drop the entries of ``users`` (all when empty/None); the count."""
        if not users:
            count = len(self._entries)
            self._entries.clear()
            self._used = 0
            return count
        wanted = set(users)
        keys = [k for k, e in self._entries.items() if e.user in wanted]
        for key in keys:
            self._remove(key)
        return len(keys)
