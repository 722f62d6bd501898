"""``pydovecot-lda``: deliver one message from stdin, as ``dovecot-lda``.

For Postfix's ``mailbox_command`` and fetchmail's ``mda``.  The command
line is dovecot-lda's: ``-d user -f sender -a address -r final-address
-m mailbox -e -k -p file -c config -o key=value``.  Without ``-d`` it
delivers for the invoking user (``$USER``/``$HOME`` or the passwd entry)
and refuses to run as root; with ``-d`` it asks the userdb (authd's
``auth-userdb`` socket when the master runs, else authd's drivers from the
config directly) and, started as root, drops to the user's uid/gid (or
mail_uid/mail_gid) before it touches any mail.  The storage is opened
directly and the message is saved through
:func:`pydovecot.mailproc.delivery.deliver` (Sieve included).

Exit codes are dovecot-lda's sysexits: 0 delivered (or rejected with a
rejection mail), 64 usage, 67 unknown user, 75 temporary failure, 77 a
permanent failure with ``-e`` (the reason on stderr instead of a
rejection mail).  A Sieve reject mails its rejection as Pigeonhole's does.
Trusts: the config file and the userdb; the message is data.
"""

from __future__ import annotations

import getopt
import json
import os
import pwd
import re
import sys
from dataclasses import dataclass, field
from typing import IO

from twisted.logger import Logger

from pydovecot.lmtp.protocol import MESSAGE_ID, open_spool
from pydovecot.log import sanitize

log = Logger()

EX_OK = 0
EX_USAGE = 64
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

USAGE = ("Usage: dovecot-lda [-c <config file>] [-d <username>] [-p <path>]\n"
         "                   [-m <mailbox>] [-e] [-k] [-f <envelope sender>]\n"
         "                   [-a <original envelope recipient>]\n"
         "                   [-r <final envelope recipient>] \n")
MAX_FROM_LINE = 8192
COPY_BLOCK = 65536


def _inline(f):
    from twisted.internet import defer

    return defer.inlineCallbacks(f)


class Exit(Exception):
    """Stop with ``status``, ``message`` on stderr (prefixed ``lda: ``)."""

    def __init__(self, status: int, message: str = "", stdout: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message
        self.stdout = stdout


@dataclass
class Options:
    user: str | None = None
    sender: str | None = None
    address: str | None = None  # -a: original recipient
    final: str | None = None  # -r: final recipient
    mailbox: str | None = None
    stderr_rejects: bool = False  # -e: permanent failures on stderr, exit 77
    keep_env: bool = False  # -k: keep the environment (pydovecot never clears it)
    path: str | None = None
    config: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)


def parse_args(argv: list[str]) -> Options:
    try:
        pairs, rest = getopt.getopt(argv, "a:c:d:ef:km:o:p:r:")
    except getopt.GetoptError as e:
        # glibc getopt's words on stderr, the usage on stdout (as dovecot-lda)
        prog = sys.argv[0] if sys.argv and sys.argv[0] else "pydovecot-lda"
        why = "option requires an argument" if "requires argument" in e.msg else \
            "invalid option"
        raise Exit(EX_USAGE, f"{prog}: {why} -- '{e.opt}'\n", stdout=USAGE) from None
    if rest:
        raise Exit(EX_USAGE, f"Unknown argument: {rest[0]}\n", stdout=USAGE)
    o = Options()
    for k, v in pairs:
        if k == "-a":
            o.address = v
        elif k == "-c":
            o.config = v
        elif k == "-d":
            o.user = v
        elif k == "-e":
            o.stderr_rejects = True
        elif k == "-f":
            o.sender = v
        elif k == "-k":
            o.keep_env = True
        elif k == "-m":
            o.mailbox = v
        elif k == "-p":
            o.path = v
        elif k == "-r":
            o.final = v
        elif k == "-o":
            key, eq, value = v.partition("=")
            if not eq or not key:
                raise Exit(EX_USAGE, f"-o parameter must be key=value: {v}")
            o.overrides.append((key.strip(), value.strip()))
    return o


def strip_brackets(address: str | None) -> str | None:
    if address is None:
        return None
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address


def read_message(source: IO[bytes]) -> tuple[IO[bytes], str | None]:
    """The message in a spool file (an mbox ``From `` line dropped, its
    sender returned), read in blocks."""
    spool = open_spool()
    first = source.readline(MAX_FROM_LINE)
    sender = None
    if first.startswith(b"From "):
        sender = first[5:].split(None, 1)[0].decode("utf-8", "replace") if first[5:].split() \
            else None
    else:
        spool.write(first)
    while True:
        block = source.read(COPY_BLOCK)
        if not block:
            break
        spool.write(block)
    spool.flush()
    spool.seek(0)
    return spool, sender


@_inline
def lookup_user(reactor, config, name: str):
    """Deferred: the userdb fields of ``name`` (``user`` canonical), None
    if unknown; fails with Exit(75) when the userdb cannot answer."""
    path = os.path.join(config.path_setting("base_dir"), "auth-userdb")
    if os.path.exists(path):
        from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
        from twisted.protocols import amp

        from authd.protocol import UserLookup

        try:
            proto = yield connectProtocol(UNIXClientEndpoint(reactor, path, timeout=10),
                                          amp.AMP())
        except Exception as e:
            raise Exit(EX_TEMPFAIL, f"Error: auth-master: userdb lookup({name}): "
                                    f"connect({path}) failed: {e}") from None
        try:
            answer = yield proto.callRemote(UserLookup, user=name, service="lda")
        except Exception as e:
            raise Exit(EX_TEMPFAIL, f"Error: userdb lookup({name}) failed: {e}") from None
        finally:
            proto.transport.loseConnection()
    else:
        from authd.server import AuthEngine
        from authd.settings import from_config

        try:
            engine = AuthEngine(from_config(config), reactor)
            answer = yield engine.user_lookup(name, "lda")
        except Exception as e:
            raise Exit(EX_TEMPFAIL, f"Error: userdb lookup({name}) failed: {e}") from None
    if answer.get("temporary"):
        raise Exit(EX_TEMPFAIL, f"Error: userdb lookup({name}) failed temporarily")
    if not answer.get("found"):
        return None
    fields = json.loads(answer.get("fields") or "{}")
    fields["user"] = answer.get("user") or name
    return fields


def resolve_id(value, kind: str, uid: int | None = None) -> int | None:
    import grp

    if value in (None, ""):
        if kind == "gid" and uid is not None:
            try:
                return pwd.getpwuid(uid).pw_gid
            except KeyError:
                return None
        return None
    value = str(value)
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        return None


def drop_to_user(config, user: str, fields: dict) -> None:
    """As root: become the user's uid/gid (userdb, else mail_uid/mail_gid)."""
    from pydovecot import privileges

    uid = resolve_id(fields.get("uid") or config.get("mail_uid"), "uid")
    gid = resolve_id(fields.get("gid") or config.get("mail_gid"), "gid", uid)
    if uid is None or gid is None:
        raise Exit(EX_TEMPFAIL, f"user {user}: userdb gave no uid/gid and mail_uid is unset")
    first = config.get_int("first_valid_uid")
    last = config.get_int("last_valid_uid")
    if uid == 0 or uid < first or (last and uid > last):
        raise Exit(EX_TEMPFAIL, f"user {user}: mail access for uid {uid} is not permitted "
                                f"(first_valid_uid={first})")
    try:
        groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        groups = [gid]
    privileges.drop_to(uid, gid, groups)


@_inline
def prepare(reactor, opts: Options):
    """Deferred (config, user, fields); running as the user from then on."""
    from pydovecot.config import ConfigError, load_config

    try:
        config = load_config(opts.config)
    except (ConfigError, OSError) as e:
        raise Exit(EX_CONFIG, f"Fatal: {e}") from None
    for key, value in opts.overrides:
        config.settings[key] = value
    root = os.geteuid() == 0
    if opts.user is None:
        if root:
            raise Exit(EX_USAGE, "Fatal: destination user parameter (-d user) not given")
        try:
            entry = pwd.getpwuid(os.getuid())
        except KeyError:
            raise Exit(EX_TEMPFAIL, f"Couldn't lookup our username (uid={os.getuid()})") \
                from None
        user = os.environ.get("USER") or entry.pw_name
        home = os.environ.get("HOME") or entry.pw_dir
        return config, user, {"user": user, "home": home}
    fields = yield lookup_user(reactor, config, opts.user)
    if fields is None:
        raise Exit(EX_NOUSER, f"Fatal: Unknown user: {opts.user}")
    user = str(fields["user"])
    if root:
        # Nothing can be imported once we are the user (the interpreter may
        # live under root's 0700 home): everything the delivery needs now.
        from pydovecot.mailproc import main as mailproc

        mailproc.preload_codecs()
        drop_to_user(config, user, fields)
    else:
        uid = resolve_id(fields.get("uid") or config.get("mail_uid"), "uid")
        if uid is not None and uid != os.getuid():
            raise Exit(EX_TEMPFAIL, f"Fatal: Can't deliver for {user} (uid {uid}) as uid "
                                    f"{os.getuid()}: run as root or as the user")
    if not fields.get("home") and config.get("mail_home"):
        from pydovecot.config.variables import expand_path

        fields["home"] = expand_path(config.get("mail_home"),
                                     {"user": user, "uid": str(os.getuid()),
                                      "gid": str(os.getgid())})
    return config, user, fields


def open_user_storage(config, user: str, fields: dict, from_userdb: bool):
    from pydovecot.config.variables import expand_path
    from pydovecot.storage import open_storage

    home = fields.get("home", "")
    values = {"user": user, "home": home, "uid": str(os.getuid()), "gid": str(os.getgid()),
              "service": "lda"}
    location = expand_path(fields.get("mail") or config.get("mail_location"), values)
    if home and from_userdb and not os.path.isdir(home):
        os.makedirs(home, mode=0o700, exist_ok=True)
    return open_storage(user, location, home)


@_inline
def run(reactor, opts: Options, source: IO[bytes]):
    """Deferred[int]: the exit status."""
    from pydovecot.mailproc import delivery
    from pydovecot.master.protocol import DeliveryFailed

    config, user, fields = yield prepare(reactor, opts)
    spool, from_line_sender = read_message(source)
    sender = strip_brackets(opts.sender)
    if sender is None:
        sender = from_line_sender or "MAILER-DAEMON"
    # dovecot-lda: -a is the recipient (Sieve's original one), -r the final
    final = strip_brackets(opts.final) or strip_brackets(opts.address) or user
    orig = strip_brackets(opts.address) or None
    head = spool.read(COPY_BLOCK)
    spool.seek(0)
    m = MESSAGE_ID.search(re.split(rb"\r?\n\r?\n", head, maxsplit=1)[0])
    msgid = m.group(1).decode("utf-8", "replace")[:200] if m else "unspecified"
    session = f"lda-{os.getpid()}"
    prefix = f"lda({user})<{os.getpid()}><{session}>"
    try:
        storage = open_user_storage(config, user, fields, opts.user is not None)
        result = yield delivery.deliver(config, storage, user, fields, spool, session, msgid,
                                        sender, final, prefix, mailbox=opts.mailbox,
                                        protocol="lda", orig_recipient=orig)
    except DeliveryFailed as e:
        status, text, bounce = failure_status(e.reply or "", opts.stderr_rejects)
        if text:
            sys.stderr.write(text + "\n")
        if bounce:  # dovecot-lda mails the rejection itself
            spool.seek(0)
            raw = spool.read(delivery.MAX_SIEVE_MESSAGE)
            try:
                yield delivery.send_rejection(config, storage, user, fields, raw, sender,
                                              final, text, prefix)
            except Exception as why:
                log.error("msgid={msgid}: Temporarily failed to send rejection: {why}",
                          msgid=sanitize(msgid), why=sanitize(str(why)), log_prefix=prefix)
                return EX_TEMPFAIL
            log.info("msgid={msgid}: Rejected: {text}", msgid=sanitize(msgid),
                     text=sanitize(text), log_prefix=prefix)
        return status
    except Exception as e:  # the storage could not be opened
        sys.stderr.write(f"lda: Error: {e}\n")
        return EX_TEMPFAIL
    finally:
        spool.close()
    log.info("msgid={msgid}: saved mail to {box}", msgid=sanitize(msgid),
             box=sanitize(str((result or {}).get("mailbox", "INBOX"))), log_prefix=prefix)
    return EX_OK


def failure_status(reply: str, stderr_rejects: bool) -> tuple[int, str, bool]:
    """For a failed delivery's reply (``552 5.2.2 Quota exceeded …``): the
    exit status, the text for stderr/the rejection, and whether to mail a
    rejection, as dovecot-lda: a temporary failure is 75 (the text on
    stderr only with -e); a permanent one is 77 with -e, else a rejection
    mail and 0."""
    parts = reply.split(" ", 2)
    text = reply
    if len(parts) == 3 and parts[0].isdigit() and parts[1][:1].isdigit():
        text = parts[2]
    elif len(parts) >= 2 and parts[0].isdigit():
        text = reply.split(" ", 1)[1]
    if not reply.startswith("5"):
        return EX_TEMPFAIL, text if stderr_rejects else "", False
    if stderr_rejects:
        return EX_NOPERM, text, False
    return EX_OK, text, True


def _open_log(opts: Options):
    """log_path opened for appending (before any privilege drop), or None."""
    try:
        from pydovecot.config import load_config

        path = load_config(opts.config).get("log_path")
        if path and path not in ("syslog", "/dev/stderr"):
            return open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    except Exception:
        return None
    return None


def _report(e: Exit) -> int:
    if e.stdout:
        sys.stdout.write(e.stdout)
        sys.stdout.flush()
    if e.message:
        sys.stderr.write(e.message if "\n" in e.message else f"lda: {e.message}\n")
    return e.status


def main(argv: list[str] | None = None) -> int:
    """Run one delivery; the exit status (sysexits)."""
    from twisted.internet import defer, task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
    )

    from pydovecot.log import DovecotLineObserver, QuietTwisted

    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(args)
        source = open(opts.path, "rb") if opts.path else sys.stdin.buffer  # noqa: SIM115
    except Exit as e:
        return _report(e)
    except OSError as e:
        sys.stderr.write(f"lda: Fatal: {e}\n")
        return EX_TEMPFAIL
    observers = [FilteringLogObserver(DovecotLineObserver(sys.stderr, "lda"),
                                      [LogLevelFilterPredicate(LogLevel.warn)])]
    log_file = _open_log(opts)
    if log_file is not None:  # Dovecot's lda logs to log_path (info and up)
        observers.append(FilteringLogObserver(
            DovecotLineObserver(log_file, "lda", timestamps=True),
            [LogLevelFilterPredicate(LogLevel.info), QuietTwisted()]))
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    status: list[int] = []

    def go(reactor):
        d = defer.maybeDeferred(run, reactor, opts, source)

        def failed(failure):
            if failure.check(Exit):
                return _report(failure.value)
            sys.stderr.write(f"lda: Fatal: {failure.getErrorMessage()}\n")
            return EX_TEMPFAIL

        return d.addErrback(failed).addCallback(status.append)

    try:
        task.react(go, [])
    except SystemExit:
        pass
    return status[0] if status else EX_TEMPFAIL


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
