"""A user's personal Sieve scripts where Pigeonhole keeps them.

``sieve = file:~/sieve;active=~/.dovecot.sieve`` (Pigeonhole's default):
each script is ``~/sieve/NAME.sieve``; the active one is the symlink
``~/.dovecot.sieve -> sieve/NAME.sieve``.  The older form ``sieve =
~/.dovecot.sieve`` plus ``sieve_dir = ~/sieve`` means the same.  Writes go
to ``~/sieve/tmp/`` first (fsync, then rename into place), the active link
is replaced by rename too, so a delivery running at the same time sees the
old script or the new one, never half of one.  A regular file where the
link should be (a script written by hand) is kept as ``dovecot.orig`` when
another script is activated, as Pigeonhole does.

Quotas: ``sieve_quota_max_scripts``, ``sieve_quota_max_storage`` and
``sieve_max_script_size`` (one script), with RFC 5804's response codes.
Pigeonhole has no ``sieve_quota_max_scriptsize``; ``sieve_max_script_size``
is that bound.

Used by the ManageSieve session (pydovecot.managesieve) and usable by the
delivery side.  Runs as the user, in the user's mail process.  Trusts the
config and the userdb fields (home, sieve overrides); not the script names
or contents, which are validated and kept inside the user's sieve
directory.
"""

from __future__ import annotations

import os
import stat
import time

from zope.interface import Interface, implementer

from pydovecot.config.settings import parse_size
from pydovecot.sieve.binary import SUFFIX, compile_file
from pydovecot.sieve.parser import DEFAULT_MAX_SCRIPT_SIZE

DEFAULT_LOCATION = "file:~/sieve;active=~/.dovecot.sieve"
#: Pigeonhole's SIEVE_MAX_SCRIPT_NAME_LEN (characters).
MAX_NAME_LENGTH = 255
ORIGINAL_NAME = "dovecot.orig"


class SieveStorageError(Exception):
    """A refused storage operation; ``code`` is the RFC 5804 response code."""

    code: str | None = None

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ScriptNotFound(SieveStorageError):
    code = "NONEXISTENT"

    def __init__(self, name: str):
        super().__init__(f"Sieve script `{name}' not found")


class ScriptExists(SieveStorageError):
    code = "ALREADYEXISTS"

    def __init__(self) -> None:
        super().__init__("A sieve script with that name already exists.")


class ScriptActive(SieveStorageError):
    code = "ACTIVE"

    def __init__(self) -> None:
        super().__init__("Cannot delete the active Sieve script.")


class InvalidName(SieveStorageError):
    def __init__(self, name: str):
        shown = name if len(name) <= 80 else name[:77] + "..."
        shown = "".join(c if c.isprintable() else "?" for c in shown)
        super().__init__(f"Invalid Sieve script name `{shown}'.")


class QuotaExceeded(SieveStorageError):
    code = "QUOTA"


def valid_name(name: str) -> bool:
    """RFC 5804 script names, as Pigeonhole's file storage allows them:
    UTF-8 without control characters (C0, DEL, C1, U+2028/2029), no '/',
    not empty, at most 255 characters; '.' and '..' are never names."""
    if not name or len(name) > MAX_NAME_LENGTH or name in (".", ".."):
        return False
    for ch in name:
        o = ord(ch)
        if o < 0x20 or 0x7f <= o <= 0x9f or o in (0x2028, 0x2029) or ch == "/":
            return False
        if 0xd800 <= o <= 0xdfff:  # surrogates (undecodable bytes)
            return False
    return True


def parse_location(value: str, home: str, user: str, sieve_dir: str = "") -> tuple[str, str]:
    """``[file:]PATH[;active=LINK]`` -> (script directory, active link path)."""
    value = (value or DEFAULT_LOCATION).strip()
    if value.startswith("file:"):
        value = value[5:]
    path, *opts = value.split(";")
    options = {}
    for opt in opts:
        key, _, v = opt.partition("=")
        options[key.strip()] = v.strip()
    path = _expand(path, home, user)
    active = options.get("active")
    if active is not None:
        return path, _expand(active, home, user)
    if sieve_dir:  # old style: sieve = ~/.dovecot.sieve, sieve_dir = ~/sieve
        return _expand(sieve_dir, home, user), path
    if not path:
        return "", ""
    if os.path.isdir(path) or path.endswith("/"):
        return path.rstrip("/"), os.path.join(home, ".dovecot.sieve") if home else ""
    # sieve = ~/.dovecot.sieve alone: Pigeonhole's default script directory
    return os.path.join(home, "sieve") if home else "", path


def _expand(value: str, home: str, user: str) -> str:
    value = value.strip()
    if ("~" in value[:1] or "%h" in value) and not home:
        return ""  # no home: no storage (never a path from the root)
    if value.startswith("~"):
        value = home + value[1:]
    return (value.replace("%u", user).replace("%n", user.split("@")[0])
            .replace("%d", user.partition("@")[2]).replace("%h", home))


def _limit(settings: dict, key: str, default: int, size: bool) -> int:
    value = (settings.get(key) or "").strip()
    if not value:
        return default
    try:
        return parse_size(value) if size else int(value)
    except ValueError:
        return default


class ISieveStorage(Interface):
    """A user's personal scripts (names are RFC 5804 script names)."""

    def list() -> list:
        """[(name, active)] of every script."""

    def get(name: str) -> bytes:
        """The script's content (ScriptNotFound)."""

    def check_space(name: str, size: int) -> None:
        """QuotaExceeded if a script ``name`` of ``size`` bytes would not fit."""

    def put(name: str, data: bytes, extensions=None) -> None:
        """Store a (compiled, valid) script crash-safely."""

    def delete(name: str) -> None:
        """Remove a script (ScriptNotFound, ScriptActive)."""

    def rename(old: str, new: str) -> None:
        """Rename a script; the active link follows (ScriptExists)."""

    def set_active(name: str) -> bool:
        """Activate ``name``; "" deactivates (False: nothing was active)."""


@implementer(ISieveStorage)
class SieveStorage:
    """The personal scripts of one user (``directory`` and ``active`` link)."""

    def __init__(self, directory: str, active: str, max_scripts: int = 0,
                 max_storage: int = 0, max_script_size: int = DEFAULT_MAX_SCRIPT_SIZE):
        self.directory = os.path.normpath(directory) if directory else ""
        self.active = os.path.normpath(active) if active else ""
        self.max_scripts = max_scripts
        self.max_storage = max_storage
        # 0 is "unlimited" in Pigeonhole; here every script keeps the parser's bound
        self.max_script_size = max_script_size or DEFAULT_MAX_SCRIPT_SIZE

    @classmethod
    def for_user(cls, settings: dict, user: str, home: str) -> SieveStorage:
        """From the ``plugin {}`` settings (``sieve``, ``sieve_dir``, quotas)."""
        directory, active = parse_location(settings.get("sieve", ""), home, user,
                                           settings.get("sieve_dir", ""))
        return cls(directory, active,
                   max_scripts=_limit(settings, "sieve_quota_max_scripts", 0, False),
                   max_storage=_limit(settings, "sieve_quota_max_storage", 0, True),
                   max_script_size=_limit(settings, "sieve_max_script_size",
                                          DEFAULT_MAX_SCRIPT_SIZE, True))

    # -- paths ---------------------------------------------------------------

    def path(self, name: str) -> str:
        """The file of script ``name``; InvalidName if it is no valid name."""
        if not valid_name(name):
            raise InvalidName(name)
        if not self.directory:
            raise SieveStorageError("No Sieve script storage: the user has no home.")
        path = os.path.join(self.directory, name + ".sieve")
        if os.path.dirname(path) != self.directory:
            raise InvalidName(name)
        return path

    def _ensure_dirs(self) -> None:
        os.makedirs(os.path.join(self.directory, "tmp"), mode=0o700, exist_ok=True)

    # -- reading ---------------------------------------------------------------

    def names(self) -> list[str]:
        """Every script's name (sorted)."""
        try:
            entries = os.listdir(self.directory) if self.directory else []
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            if not entry.endswith(".sieve"):
                continue
            name = entry[:-6]
            if valid_name(name) and os.path.isfile(os.path.join(self.directory, entry)):
                out.append(name)
        return sorted(out)

    def active_name(self) -> str | None:
        """The active script's name: the link's target inside our directory."""
        if not self.active:
            return None
        try:
            target = os.readlink(self.active)
        except OSError:
            return None
        full = os.path.normpath(os.path.join(os.path.dirname(self.active), target))
        if os.path.dirname(full) != self.directory or not full.endswith(".sieve"):
            return None
        name = os.path.basename(full)[:-6]
        return name if valid_name(name) and os.path.isfile(full) else None

    def list(self) -> list[tuple[str, bool]]:
        active = self.active_name()
        return [(name, name == active) for name in self.names()]

    def get(self, name: str) -> bytes:
        path = self.path(name)
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_script_size + 1)
        except FileNotFoundError:
            raise ScriptNotFound(name) from None
        if len(data) > self.max_script_size:  # written by hand, past the bound
            raise SieveStorageError(f"Script is too large (max {self.max_script_size} "
                                    "bytes).", "QUOTA/MAXSIZE")
        return data

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.path(name))

    def used(self, exclude: str | None = None) -> tuple[int, int]:
        """(scripts, bytes) stored, leaving ``exclude`` out."""
        count = size = 0
        for name in self.names():
            if name == exclude:
                continue
            count += 1
            try:
                size += os.stat(os.path.join(self.directory, name + ".sieve")).st_size
            except OSError:
                pass
        return count, size

    # -- quota -----------------------------------------------------------------

    def check_space(self, name: str, size: int) -> None:
        """QuotaExceeded if a script ``name`` of ``size`` bytes would not fit."""
        self.path(name)
        if size > self.max_script_size:
            raise QuotaExceeded(f"Script is too large (max {self.max_script_size} bytes).",
                                "QUOTA/MAXSIZE")
        if not (self.max_scripts or self.max_storage):
            return
        replacing = self.exists(name)
        count, used = self.used(exclude=name)
        if self.max_storage and used + size > self.max_storage:
            raise QuotaExceeded(f"Script storage quota exceeded (max {self.max_storage} "
                                "bytes).", "QUOTA/MAXSTORAGE")
        if self.max_scripts and not replacing and count + 1 > self.max_scripts:
            raise QuotaExceeded(f"Script count quota exceeded (max {self.max_scripts} "
                                "scripts).", "QUOTA/MAXSCRIPTS")

    # -- writing ---------------------------------------------------------------

    def put(self, name: str, data: bytes, extensions: frozenset[str] | None = None) -> None:
        """Store ``data`` (already compiled by the caller) as ``name``: tmp
        file, fsync, rename; then refresh the compiled cache."""
        path = self.path(name)
        self.check_space(name, len(data))
        self._ensure_dirs()
        tmp = self._write_tmp(name, data)
        os.replace(tmp, path)
        self._fsync_dir(self.directory)
        self._refresh_binary(path, extensions)

    def _write_tmp(self, name: str, data: bytes) -> str:
        stamp = f"{time.time_ns()}.{os.getpid()}"
        tmp = os.path.join(self.directory, "tmp", f"{stamp}.sieve")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _refresh_binary(self, path: str, extensions: frozenset[str] | None) -> None:
        _unlink(path[:-len(".sieve")] + SUFFIX)
        if extensions is None:
            return
        try:
            compile_file(path, extensions, self.max_script_size)
        except Exception:  # noqa: BLE001  (the caller compiled it; a cache is optional)
            pass

    @staticmethod
    def _fsync_dir(directory: str) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not os.path.isfile(path):
            raise ScriptNotFound(name)
        if self.active_name() == name:
            raise ScriptActive()
        os.unlink(path)
        _unlink(path[:-len(".sieve")] + SUFFIX)
        _unlink(path[:-len(".sieve")] + ".svbin")

    def rename(self, old: str, new: str) -> None:
        old_path, new_path = self.path(old), self.path(new)
        if not os.path.isfile(old_path):
            raise ScriptNotFound(old)
        if os.path.lexists(new_path):
            raise ScriptExists()
        was_active = self.active_name() == old
        os.link(old_path, new_path)  # fails if new appeared meanwhile
        if was_active:
            self._link_active(new)
        os.unlink(old_path)
        for suffix in (SUFFIX, ".svbin"):
            _unlink(old_path[:-len(".sieve")] + suffix)
        self._fsync_dir(self.directory)

    def set_active(self, name: str) -> bool:
        """Activate ``name``, or deactivate with ""; False if nothing was
        active to deactivate."""
        if name == "":
            if not self.active or not os.path.islink(self.active):
                return False
            os.unlink(self.active)
            return True
        path = self.path(name)
        if not os.path.isfile(path):
            raise ScriptNotFound(name)
        self._link_active(name)
        return True

    def _link_active(self, name: str) -> None:
        if not self.active:
            raise SieveStorageError("no active script location is configured")
        try:
            st = os.lstat(self.active)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            # A script written by hand: keep it as dovecot.orig (Pigeonhole).
            self._ensure_dirs()
            keep = self.path(ORIGINAL_NAME)
            if not os.path.exists(keep):
                os.replace(self.active, keep)
        elif st is not None and not stat.S_ISLNK(st.st_mode):
            raise SieveStorageError("the active script location is not a symlink")
        link_dir = os.path.dirname(self.active)
        target = os.path.relpath(os.path.join(self.directory, name + ".sieve"), link_dir)
        tmp = os.path.join(link_dir, f".{os.path.basename(self.active)}.{os.getpid()}.tmp")
        _unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, self.active)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
