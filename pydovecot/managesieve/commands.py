"""The authenticated ManageSieve commands (RFC 5804 section 2), one function each.

:data:`COMMANDS` maps a name to its handler and argument counts (the
session checks the counts).  Replies and response codes follow Pigeonhole
(``NONEXISTENT``, ``ALREADYEXISTS``, ``ACTIVE``, ``QUOTA/MAXSCRIPTS``,
``QUOTA/MAXSTORAGE``, ``QUOTA/MAXSIZE``, ``TAG``); compile errors come
back as Pigeonhole formats them (``NAME: line N: error: …`` then
``NAME: error: validation failed.``) in a literal.  UNAUTHENTICATE is
refused as unknown, as Pigeonhole does.

Trusts the session (which bounded and split the arguments); not the
arguments themselves: names are validated by the storage and scripts are
compiled before they are stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet import defer, threads
from twisted.logger import Logger

from pydovecot.log import sanitize
from pydovecot.managesieve.capability import capability_lines
from pydovecot.managesieve.grammar import Atom, Str, quote, response
from pydovecot.sieve.errors import SieveSyntaxError
from pydovecot.sieve.parser import parse
from pydovecot.sieve.storage import QuotaExceeded, SieveStorageError, valid_name
from pydovecot.sieve.validate import compile_script

if TYPE_CHECKING:
    from pydovecot.managesieve.session import ManageSieveSession

log = Logger()


@dataclass(frozen=True)
class Command:
    handler: Callable
    min_args: int
    max_args: int


def _name(arg: Str | Atom) -> str | None:
    """A script name argument (a string, UTF-8), else None."""
    if not isinstance(arg, Str):
        return None
    try:
        return arg.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _refused(s: ManageSieveSession, e: SieveStorageError) -> None:
    s.write(response("NO", e.message, e.code))


def _storage_failed(s: ManageSieveSession, what: str, e: OSError) -> None:
    log.error("managesieve: {what}: {e}", what=what, e=sanitize(f"{e.strerror}: "
              f"{e.filename}" if e.filename else str(e)), log_prefix=s.prefix)
    s.write(response("NO", "Internal error occurred. Refer to server log for more "
                           "information.", "TRYLATER"))


def _invalid_name(s: ManageSieveSession, arg: bytes) -> None:
    shown = arg.decode("utf-8", "replace")
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    s.write(response("NO", f"Invalid Sieve script name `{shown}'."))


def _compile(s: ManageSieveSession, data: bytes) -> defer.Deferred:
    """Deferred[None], or errback SieveSyntaxError; runs in a thread."""
    def work() -> None:
        compile_script(parse(data, s.max_literal), s.extensions)

    return threads.deferToThread(work)


def _compile_errors(s: ManageSieveSession, e: Exception, name: str | None) -> None:
    prefix = f"{name}: " if name else ""
    if isinstance(e, SieveSyntaxError):
        where = f"line {e.line}: " if e.line else ""
        message = e.message if e.message.endswith(".") else e.message + "."
        text = f"{prefix}{where}error: {message}"
    else:  # RecursionError, ValueError: still the script's fault
        text = f"{prefix}error: the script could not be compiled."
    body = f"{text}\r\n{prefix}error: validation failed.\r\n"
    s.write(b"NO " + b"{%d}\r\n" % len(body.encode()) + body.encode() + b"\r\n")


COMPILE_ERRORS = (SieveSyntaxError, RecursionError, ValueError, UnicodeDecodeError)


def cmd_capability(s: ManageSieveSession, args: list) -> None:
    s.write(capability_lines(s.config, s.extensions, max_redirects=s.max_redirects)
            + response("OK", "Capability completed."))


def cmd_logout(s: ManageSieveSession, args: list) -> None:
    s.write(response("OK", "Logout completed."))
    s.close("Logged out")


def cmd_noop(s: ManageSieveSession, args: list) -> None:
    if not args:
        s.write(response("OK", "NOOP Completed"))
    elif not isinstance(args[0], Str):
        s.write(response("NO", "Invalid echo tag."))
    else:
        s.write(b"OK (TAG " + quote(bytes(args[0])) + b') "Done"\r\n')


def cmd_listscripts(s: ManageSieveSession, args: list) -> None:
    try:
        scripts = s.storage.list()
    except OSError as e:
        _storage_failed(s, "listing scripts", e)
        return
    out = [quote(name) + (b" ACTIVE" if active else b"") + b"\r\n" for name, active in scripts]
    s.write(b"".join(out) + response("OK", "Listscripts completed."))


def cmd_getscript(s: ManageSieveSession, args: list) -> None:
    name = _name(args[0])
    if name is None or not valid_name(name):
        _invalid_name(s, args[0])
        return
    try:
        data = s.storage.get(name)
    except SieveStorageError as e:
        _refused(s, e)
        return
    except OSError as e:
        _storage_failed(s, f"reading script {name}", e)
        return
    s.stats["get_count"] += 1
    s.stats["get_bytes"] += len(data)
    s.write(b"{%d}\r\n" % len(data) + data + b"\r\n" + response("OK", "Getscript completed."))


def _script_arg(s: ManageSieveSession, arg) -> bytes | None:
    if not isinstance(arg, Str):
        s.write(response("NO", "Error in MANAGESIEVE command: Invalid arguments."))
        return None
    if len(arg) > s.max_literal:
        s.write(response("NO", f"Script is too large (max {s.max_literal} bytes).",
                         "QUOTA/MAXSIZE"))
        return None
    return bytes(arg)


def cmd_putscript(s: ManageSieveSession, args: list) -> defer.Deferred | None:
    name = _name(args[0]) if isinstance(args[0], Str) else None
    if not isinstance(args[0], Str) or not isinstance(args[1], Str):
        s.write(response("NO", "Error in MANAGESIEVE command PUTSCRIPT: Invalid arguments."))
        return None
    if name is None or not valid_name(name):
        _invalid_name(s, args[0])
        return None
    data = _script_arg(s, args[1])
    if data is None:
        return None
    try:
        s.storage.check_space(name, len(data))
    except SieveStorageError as e:
        _refused(s, e)
        return None
    except OSError as e:
        _storage_failed(s, "checking quota", e)
        return None

    def compiled(_: object) -> None:
        try:
            s.storage.put(name, data, s.extensions)
        except SieveStorageError as e:
            _refused(s, e)
            return
        except OSError as e:
            _storage_failed(s, f"storing script {name}", e)
            return
        s.stats["put_count"] += 1
        s.stats["put_bytes"] += len(data)
        log.info("managesieve: stored script {name} ({n} bytes)", name=sanitize(name),
                 n=len(data), log_prefix=s.prefix)
        s.write(response("OK", "PUTSCRIPT completed."))

    def failed(failure) -> None:
        failure.trap(*COMPILE_ERRORS)
        _compile_errors(s, failure.value, name)

    return _compile(s, data).addCallbacks(compiled, failed)


def cmd_checkscript(s: ManageSieveSession, args: list) -> defer.Deferred | None:
    data = _script_arg(s, args[0])
    if data is None:
        return None

    def checked(_: object) -> None:
        s.stats["check_count"] += 1
        s.stats["check_bytes"] += len(data)
        s.write(response("OK", "Script checked successfully."))

    def failed(failure) -> None:
        failure.trap(*COMPILE_ERRORS)
        _compile_errors(s, failure.value, None)

    return _compile(s, data).addCallbacks(checked, failed)


def cmd_setactive(s: ManageSieveSession, args: list) -> None:
    name = _name(args[0])
    if name is None or (name and not valid_name(name)):
        _invalid_name(s, args[0])
        return
    try:
        changed = s.storage.set_active(name)
    except SieveStorageError as e:
        _refused(s, e)
        return
    except OSError as e:
        _storage_failed(s, "activating a script", e)
        return
    if name:
        s.write(response("OK", "Setactive completed."))
    elif changed:
        s.write(response("OK", "Active script is now deactivated."))
    else:
        s.write(response("OK", "No scripts currently active."))


def cmd_deletescript(s: ManageSieveSession, args: list) -> None:
    name = _name(args[0])
    if name is None or not valid_name(name):
        _invalid_name(s, args[0])
        return
    try:
        s.storage.delete(name)
    except SieveStorageError as e:
        _refused(s, e)
        return
    except OSError as e:
        _storage_failed(s, f"deleting script {name}", e)
        return
    s.stats["deleted_count"] += 1
    s.write(response("OK", "Deletescript completed."))


def cmd_renamescript(s: ManageSieveSession, args: list) -> None:
    old, new = _name(args[0]), _name(args[1])
    for value, arg in ((old, args[0]), (new, args[1])):
        if value is None or not valid_name(value):
            _invalid_name(s, arg)
            return
    try:
        s.storage.rename(old, new)
    except SieveStorageError as e:
        _refused(s, e)
        return
    except FileExistsError:
        _refused(s, SieveStorageError("A sieve script with that name already exists.",
                                      "ALREADYEXISTS"))
        return
    except OSError as e:
        _storage_failed(s, f"renaming script {old}", e)
        return
    s.stats["renamed_count"] += 1
    s.write(response("OK", "Renamescript completed."))


def cmd_havespace(s: ManageSieveSession, args: list) -> None:
    name = _name(args[0])
    size = args[1]
    if name is None or not valid_name(name):
        _invalid_name(s, args[0])
        return
    if not isinstance(size, Atom) or not size.isdigit() or len(size) > 19:
        s.write(response("NO", "Invalid scriptsize argument."))
        return
    try:
        s.storage.check_space(name, int(size))
    except QuotaExceeded as e:
        _refused(s, e)
        return
    except OSError as e:
        _storage_failed(s, "checking quota", e)
        return
    s.write(response("OK", "Putscript would succeed."))


COMMANDS: dict[str, Command] = {
    "CAPABILITY": Command(cmd_capability, 0, 0),
    "LOGOUT": Command(cmd_logout, 0, 0),
    "NOOP": Command(cmd_noop, 0, 1),
    "LISTSCRIPTS": Command(cmd_listscripts, 0, 0),
    "GETSCRIPT": Command(cmd_getscript, 1, 1),
    "PUTSCRIPT": Command(cmd_putscript, 2, 2),
    "CHECKSCRIPT": Command(cmd_checkscript, 1, 1),
    "SETACTIVE": Command(cmd_setactive, 1, 1),
    "DELETESCRIPT": Command(cmd_deletescript, 1, 1),
    "RENAMESCRIPT": Command(cmd_renamescript, 2, 2),
    "HAVESPACE": Command(cmd_havespace, 2, 2),
}
