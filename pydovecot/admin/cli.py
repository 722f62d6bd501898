"""``pydoveadm``: the admin command, with doveadm's verbs, options and output.

``pydoveadm [-Dv] [-f table|flow|tab|json|pager] [-c CONFIG] VERB [options] ARGS``.
Mailbox verbs take ``-u USER`` (wildcards ``*``/``?`` pick from the
userdb's list), ``-A`` (every user the userdb iterates)
or ``-F FILE`` (one user a line), and ``-S SOCKET`` (the master's admin
socket; default ``<base_dir>/admin`` of the config).  Every verb but
``pw`` is sent to the master over that root-only socket
(:class:`~pydovecot.admin.protocol.AdminCommand`); the master runs it, or
has the user's mail process run it: this command never opens a mail file.
``pw`` is pydovecot-pw.  Results print through doveadm's formatters
(:mod:`pydovecot.admin.formatters`); exit codes are doveadm's.

With several users and stdout on a terminal, a progress bar shows on
stderr when ``tqdm`` is installed (it is not a dependency).

Trusts: the config file (for base_dir) and the master's answers.
"""

from __future__ import annotations

import getopt
import getpass
import json
import os
import re
import sys
from typing import Any, TextIO

from pydovecot.admin import formatters
from pydovecot.admin.protocol import (
    EX_NOTFOUND,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    AdminCommand,
    AdminError,
    header,
    unpack,
)
from pydovecot.admin.verbs import VERBS, Verb, find

USAGE = "usage: pydoveadm [-Dv] [-f <formatter>] [-c <config>] <command> [<args>]"
#: Default formatter per verb when -f is not given (as doveadm's commands
#: initialise their printers).
DEFAULT_FORMATTER = {"who": "table", "fetch": "pager", "user": "tab"}


def usage(out: TextIO, verb: Verb | None = None) -> None:
    if verb is not None:
        out.write(f"pydoveadm {verb.name} {verb.usage}".rstrip() + "\n")
        return
    out.write(USAGE + "\n")
    for v in VERBS.values():
        out.write(f"  {v.name:<22} {v.usage}\n")


def admin_socket(config_path: str | None) -> str:
    from pydovecot.config import load_config

    config = load_config(config_path)
    return os.path.join(config.path_setting("base_dir"), "admin")


def _stdin_fd() -> int:
    """The message on stdin, copied into an anonymous file (save)."""
    fd = os.memfd_create("pydoveadm-save", os.MFD_CLOEXEC)
    while True:
        chunk = sys.stdin.buffer.read(1 << 20)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class Connection:
    """A blocking call interface over Twisted's AMP client, one reactor run."""

    def __init__(self, path: str):
        self.path = path

    def run(self, calls: list[tuple[str, dict, int | None]], progress: bool,
            for_all: tuple[str, dict, int | None] | None = None,
            masks: list[re.Pattern[str]] | None = None) -> tuple[list[Any], list[str]]:
        """Run ``(verb, args, input fd)`` calls one after the other; the
        result documents (or AdminError/OSError instances) in order.  With
        ``for_all``, the master's user list comes first and that call is
        made for each user (``-A``; only those ``masks`` match, for
        ``-u 'a*'``); the users are returned too."""
        from twisted.internet import defer, reactor, task
        from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
        from twisted.protocols import amp

        results: list[Any] = []
        users: list[str] = []
        bar = None

        async def main(_reactor):
            try:
                proto = await connectProtocol(UNIXClientEndpoint(reactor, self.path, timeout=10),
                                              amp.AMP())
            except Exception as e:
                results.append(OSError(f"connect({self.path}) failed: {e}"))
                return
            nonlocal bar, calls
            try:
                if for_all is not None:
                    try:
                        listed = unpack(await proto.callRemote(
                            AdminCommand, verb="user list",
                            args=json.dumps({"argv": [], "options": {}})))
                    except AdminError as e:
                        results.append(e)
                        return
                    users.extend(row[0] for row in listed.get("rows", [])
                                 if not masks or any(m.fullmatch(row[0]) for m in masks))
                    verb, args, input_fd = for_all
                    calls = [(verb, {**args, "user": u}, input_fd) for u in users]
                if progress:
                    bar = _progress(len(calls))
                for verb, args, input_fd in calls:
                    kwargs = {"verb": verb, "args": json.dumps(args)}
                    if input_fd is not None:
                        kwargs["input"] = input_fd
                    try:
                        answer = await proto.callRemote(AdminCommand, **kwargs)
                        results.append(unpack(answer))
                    except AdminError as e:
                        results.append(e)
                    except Exception as e:  # the connection went, the master failed
                        results.append(AdminError(EX_TEMPFAIL, str(getattr(e, "value", e))))
                    if bar is not None:
                        bar.update(1)
            finally:
                proto.transport.loseConnection()
                if bar is not None:
                    bar.close()
            await task.deferLater(reactor, 0, lambda: None)

        try:
            task.react(lambda r: defer.ensureDeferred(main(r)))
        except SystemExit as e:
            if e.code not in (0, None):
                raise
        return results, users


def _progress(total: int):
    try:
        import tqdm  # optional: not installed here, not a dependency
    except ImportError:
        return None
    return tqdm.tqdm(total=total, file=sys.stderr, unit="user")


def main(argv: list[str] | None = None) -> int:
    code = run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr)
    sys.exit(code)


def run(argv: list[str], out: TextIO, err: TextIO, stdin_fd: int | None = None,
        password: str | None = None) -> int:
    """The whole command; returns the exit code."""
    try:
        opts, rest = getopt.getopt(argv, "+Dvf:c:o:hS:")
    except getopt.GetoptError as e:
        err.write(f"pydoveadm: {e}\n{USAGE}\n")
        return EX_USAGE
    formatter, config_path, socket_path, hide = None, None, None, False
    for key, value in opts:
        if key == "-f":
            formatter = value
        elif key == "-c":
            config_path = value
        elif key == "-S":
            socket_path = value
        elif key == "-h":
            hide = True
    if formatter is not None and formatter not in formatters.FORMATTERS:
        err.write(f"Fatal: Unknown formatter: {formatter}\n")
        return EX_USAGE
    if rest[:1] == ["help"]:
        verb, _ = find(rest[1:])
        usage(out, verb)
        return 0
    verb, rest = find(rest)
    if verb is None:
        if rest:
            err.write(f"Fatal: Unknown command '{' '.join(rest[:2])}'\n")
        usage(err)
        return EX_USAGE
    if verb.where == "local":  # pw
        from authd.schemes import pw_main

        return pw_main(rest)
    try:
        vopts, positional = getopt.getopt(rest, verb.options)
    except getopt.GetoptError as e:
        err.write(f"{verb.name}: {e}\n")
        usage(err, verb)
        return EX_USAGE
    options: dict[str, Any] = {}
    users: list[str] = []
    all_users = False
    users_file = None
    for key, value in vopts:
        letter = key[1:]
        if verb.where == "mail" and letter == "u":
            users.append(value)
        elif verb.where == "mail" and letter == "A":
            all_users = True
        elif verb.where == "mail" and letter == "S":
            socket_path = value
        elif verb.where == "mail" and letter == "F":
            users_file = value
        elif letter in ("x",):
            options.setdefault(letter, []).append(value)
        else:
            options[letter] = value if value else True
    if verb.where == "mail":
        if users_file:
            try:
                with open(users_file, encoding="utf-8") as f:
                    users += [line.strip() for line in f if line.strip()]
            except OSError as e:
                err.write(f"Fatal: open({users_file}) failed: {e.strerror}\n")
                return EX_NOTFOUND
        if not users and not all_users:
            env_user = os.environ.get("USER", "")
            if not env_user:
                err.write(f"Fatal: {verb.name}: -u <user> or -A required\n")
                return EX_USAGE
            users = [env_user]
    if verb.name == "auth test" and len(positional) == 1:
        positional.append(password if password is not None else getpass.getpass("Password: "))
    try:
        path = socket_path or admin_socket(config_path)
    except Exception as e:
        err.write(f"Fatal: {e}\n")
        return EX_USAGE
    conn = Connection(path)
    base = {"argv": positional, "options": options}
    input_fd = None
    if verb.name == "save":
        input_fd = _stdin_fd() if stdin_fd is None else stdin_fd

    for_all = None
    masks = [_wildcard(u) for u in users if "*" in u or "?" in u]
    if masks:  # -u with wildcards: the matching users the userdb lists
        all_users = True
        masks += [_wildcard(u) for u in users if "*" not in u and "?" not in u]
    if verb.where == "mail" and all_users:
        calls: list[tuple[str, dict, int | None]] = []
        for_all = (verb.name, base, input_fd)
    elif verb.where == "mail":
        calls = [(verb.name, {**base, "user": u}, input_fd) for u in users]
    else:
        calls = [(verb.name, base, None)]
    several = len(calls) > 1 or all_users
    results, listed = conn.run(calls, progress=several and out.isatty(), for_all=for_all,
                               masks=masks)
    if input_fd is not None and stdin_fd is None:
        os.close(input_fd)
    if for_all is not None:
        if len(results) == 1 and isinstance(results[0], Exception) and not listed:
            return _fail(results[0], err, None)
        users = listed
    elif verb.where != "mail":
        users = [None]
    return _print(verb, results, users, several, formatter, hide, out, err)


def _wildcard(mask: str) -> re.Pattern[str]:
    """doveadm's user mask: ``*`` any run, ``?`` one character, any case."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in mask), re.IGNORECASE | re.DOTALL)


def _fail(error: Exception, err: TextIO, user: str | None) -> int:
    who = f"pydoveadm({user})" if user else "pydoveadm"
    if isinstance(error, AdminError):
        err.write(f"{who}: Error: {error.message}\n")
        return error.code
    err.write(f"{who}: Error: {error}\n")
    return EX_TEMPFAIL if isinstance(error, OSError) else EX_SOFTWARE


def _print(verb: Verb, results: list[Any], users: list[str | None], several: bool,
           formatter: str | None, hide: bool, out: TextIO, err: TextIO) -> int:
    code = 0
    headers: list[dict] = []
    rows: list[list[str]] = []
    chosen = formatter
    template = ""
    for user, res in zip(users, results, strict=True):
        if isinstance(res, Exception):
            code = max(code, _fail(res, err, user))
            continue
        for line in res.get("errors", []):
            who = f"pydoveadm({user})" if user else "pydoveadm"
            err.write(f"{who}: Error: {line}\n")
        code = max(code, int(res.get("exit", 0)))
        if res.get("text"):
            out.write(res["text"])
        if chosen is None:
            chosen = res.get("formatter") or DEFAULT_FORMATTER.get(verb.name) or "flow"
        template = res.get("format") or template
        if res.get("headers"):
            headers = res["headers"]
            if several:
                headers = [header("username"), *headers]
                rows += [[user or "", *row] for row in res.get("rows", [])]
            else:
                rows += res.get("rows", [])
    if headers:
        try:
            formatters.write(chosen or "flow", headers, rows, out, err, hide_titles=hide,
                             template=template)
        except formatters.FormatterError as e:
            err.write(f"Fatal: {e}\n")
            return EX_TEMPFAIL  # what doveadm exits with here
    out.flush()
    return code


if __name__ == "__main__":
    main()
