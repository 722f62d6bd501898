"""Dovecot's passwd-file passdb and userdb.

Format: ``user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields`` with
space-separated ``key=value`` extra fields (``userdb_*`` ones are userdb
fields).  Fields may be empty or missing; ``#`` starts a comment.  The path
may hold %-variables (``/etc/mail/%d.passwd``); each file is re-read when
its mtime, size or inode changes.  A fixed path is opened at startup, so
that authd reads it after dropping root even where its user can't reach it.  The file is the admin's and trusted;
user names looked up in it come from clients and are only dict keys.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from authd import schemes
from authd.interfaces import (
    AuthBackendError,
    AuthRequest,
    IPassdb,
    IUserdb,
    PassdbResult,
    PassdbStatus,
)
from authd.settings import expand, parse_fields, split_args

log = Logger()


@dataclass
class PasswdEntry:
    """One line of a passwd-file."""

    user: str
    password: str = ""
    uid: str = ""
    gid: str = ""
    gecos: str = ""
    home: str = ""
    shell: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def parse_line(line: str) -> PasswdEntry | None:
    """Parse one line; None for blank lines and comments."""
    line = line.rstrip("\r\n")
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    parts = line.split(":", 7)
    if not parts[0]:
        return None
    parts += [""] * (8 - len(parts))
    user, password, uid, gid, gecos, home, shell, extra = parts
    return PasswdEntry(user, password, uid, gid, gecos, home, shell, parse_fields(extra))


def parse_text(text: str) -> dict[str, PasswdEntry]:
    """All entries of a file's text, by user name (the first line wins)."""
    entries: dict[str, PasswdEntry] = {}
    for line in text.splitlines():
        entry = parse_line(line)
        if entry is not None and entry.user not in entries:
            entries[entry.user] = entry
    return entries


class PasswdFile:
    """One passwd-file, re-read whenever it changes on disk.

    :meth:`open` (called at startup, while authd is still root) keeps the
    file open: after the privilege drop a file the auth user may not reach
    (under a 0700 directory) is still read — re-read through the open file
    when rewritten in place, and reopened by path when replaced, if the
    auth user can."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._file: Any = None
        self.entries: dict[str, PasswdEntry] = {}

    def open(self) -> None:
        """Open the file now (errors are reported at the first lookup)."""
        try:
            self._file = open(self.path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        except OSError:
            self._file = None

    def refresh(self) -> None:
        """Re-read the file if it changed; raises OSError if unreadable."""
        try:
            st = os.stat(self.path)
        except PermissionError:
            if self._file is None:
                raise
            st = os.fstat(self._file.fileno())  # can't look: the file we hold
        if self._file is not None and os.fstat(self._file.fileno()).st_ino != st.st_ino:
            try:  # replaced (rename): the new file, if we may open it
                replacement = open(self.path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
            except PermissionError:
                st = os.fstat(self._file.fileno())
            else:
                self._file.close()
                self._file = replacement
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        if self._file is not None:
            self._file.seek(0)
            self.entries = parse_text(self._file.read())
        else:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                self.entries = parse_text(f.read())
        self._stamp = stamp
        log.debug("passwd-file {path}: read {n} users", path=self.path, n=len(self.entries))

    def get(self, user: str) -> PasswdEntry | None:
        self.refresh()
        return self.entries.get(user)


@implementer(IPassdb, IUserdb)
class PasswdFileDb:
    """``driver = passwd-file``, ``args = [scheme=X] [username_format=%u] PATH``."""

    driver = "passwd-file"

    def __init__(self, args: str):
        options, path = split_args(args, {"scheme", "username_format"})
        if not path:
            raise ValueError("passwd-file: no path given in args")
        self.path_template = path
        self.default_scheme = options.get("scheme", schemes.DEFAULT_SCHEME).upper()
        self.username_format = options.get("username_format", "%u")
        self._files: dict[str, PasswdFile] = {}
        if "%" not in path:  # one fixed file: open it while we may
            self._files[path] = PasswdFile(path)
            self._files[path].open()

    def _find(self, user: str, request: AuthRequest) -> PasswdEntry | None:
        """The user's entry, or None; raises AuthBackendError."""
        values = dict(request.variables(), user=user)
        values["username"], _, values["domain"] = user.partition("@")
        path = expand(self.path_template, values)
        key = expand(self.username_format, values)
        passwd_file = self._files.get(path)
        if passwd_file is None:
            passwd_file = self._files[path] = PasswdFile(path)
        try:
            return passwd_file.get(key)
        except OSError as e:
            if e.errno == errno.ENOENT and path != self.path_template:
                return None  # no file for this domain: no such user
            raise AuthBackendError(f"passwd-file {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise AuthBackendError(f"passwd-file {path}: {e}") from None

    def iterate(self) -> defer.Deferred:
        """Every user name in the file (``pydoveadm -A``); none for a path
        with %variables (a file per domain cannot be listed)."""
        if "%" in self.path_template:
            return defer.succeed([])
        passwd_file = self._files[self.path_template]
        try:
            passwd_file.refresh()
        except (OSError, ValueError) as e:
            return defer.fail(AuthBackendError(f"passwd-file {self.path_template}: "
                                               f"{getattr(e, 'strerror', None) or e}"))
        return defer.succeed(list(passwd_file.entries))

    @staticmethod
    def _expand_extra(entry: PasswdEntry, request: AuthRequest) -> dict[str, str]:
        values = dict(request.variables(), home=entry.home)
        return {k: expand(v, values) for k, v in entry.extra.items()}

    # -- passdb ------------------------------------------------------------

    def _passdb_extra(self, entry: PasswdEntry, request: AuthRequest) -> dict[str, str]:
        extra = self._expand_extra(entry, request)
        for name in ("uid", "gid", "home"):
            value = getattr(entry, name)
            if value:
                extra.setdefault("userdb_" + name, value)
        return extra

    def verify_plain(self, user: str, password: str, request: AuthRequest) -> defer.Deferred:
        try:
            entry = self._find(user, request)
        except AuthBackendError as e:
            return defer.succeed(PassdbResult(PassdbStatus.INTERNAL_FAILURE, error=str(e)))
        if entry is None:
            return defer.succeed(PassdbResult(PassdbStatus.USER_UNKNOWN))
        extra = self._passdb_extra(entry, request)
        if "nopassword" in extra:
            return defer.succeed(PassdbResult(PassdbStatus.OK, extra))
        if not entry.password:
            return defer.succeed(
                PassdbResult(PassdbStatus.PASSWORD_MISMATCH, extra, error="empty password")
            )
        return verify_password(password, entry.password, self.default_scheme, extra)

    def lookup_credentials(self, user: str, scheme: str, request: AuthRequest) -> defer.Deferred:
        try:
            entry = self._find(user, request)
        except AuthBackendError as e:
            return defer.succeed(PassdbResult(PassdbStatus.INTERNAL_FAILURE, error=str(e)))
        if entry is None:
            return defer.succeed(PassdbResult(PassdbStatus.USER_UNKNOWN))
        extra = self._passdb_extra(entry, request)
        return defer.succeed(credentials_in(entry.password, scheme, self.default_scheme, extra))

    # -- userdb ------------------------------------------------------------

    def lookup(self, user: str, request: AuthRequest) -> defer.Deferred:
        try:
            entry = self._find(user, request)
        except AuthBackendError as e:
            return defer.fail(e)
        if entry is None:
            return defer.succeed(None)
        fields = {
            name: getattr(entry, name) for name in ("uid", "gid", "home") if getattr(entry, name)
        }
        for key, value in self._expand_extra(entry, request).items():
            if key.startswith("userdb_") and key[7:]:
                fields[key[7:]] = value
        return defer.succeed(fields)


def verify_password(
    password: str, stored: str, default_scheme: str, extra: dict[str, str]
) -> defer.Deferred:
    """Check ``password`` against ``stored`` (in a thread if the scheme is
    slow); fires with a PassdbResult carrying ``extra``."""

    def check() -> PassdbResult:
        try:
            ok = schemes.verify(password, stored, default_scheme)
        except schemes.SchemeError as e:
            return PassdbResult(
                PassdbStatus.INTERNAL_FAILURE, extra, error=f"Invalid password in passdb: {e}"
            )
        return PassdbResult(PassdbStatus.OK if ok else PassdbStatus.PASSWORD_MISMATCH, extra)

    if schemes.is_slow(stored, default_scheme):
        return threads.deferToThread(check)
    return defer.succeed(check())


def credentials_in(
    stored: str, scheme: str, default_scheme: str, extra: dict[str, str]
) -> PassdbResult:
    """The stored password as ``{scheme}…``: as is, or generated from a
    plaintext one; SCHEME_NOT_AVAILABLE otherwise."""
    wanted = scheme.upper()
    try:
        name, encoding, data = schemes.split_scheme(stored, default_scheme)
        if name == wanted and encoding is None:
            return PassdbResult(PassdbStatus.OK, extra, credentials="{" + wanted + "}" + data)
        if name in ("PLAIN", "CLEARTEXT"):
            raw = data.encode() if encoding is None else schemes.decode(data, encoding)
            return PassdbResult(PassdbStatus.OK, extra, credentials=schemes.generate(raw, wanted))
    except schemes.SchemeError as e:
        return PassdbResult(PassdbStatus.INTERNAL_FAILURE, extra, error=str(e))
    return PassdbResult(
        PassdbStatus.SCHEME_NOT_AVAILABLE, extra, error=f"stored password is not {wanted}"
    )
