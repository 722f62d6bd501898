"""The authenticated ManageSieve session, in the user's mail process.

Reads commands under the bounds of :mod:`pydovecot.managesieve.grammar`
(``managesieve_max_line_length`` per line, ``sieve_max_script_size`` per
literal; an over-long line ends the session with ``BYE``, an over-large
literal is skipped, not buffered, and answered ``NO (QUOTA/MAXSIZE)``),
runs one command at a time from :data:`pydovecot.managesieve.commands.COMMANDS`
and answers as Pigeonhole does.

Sessions of many users share this reactor, so: at most
:data:`BATCH` pipelined commands run per reactor turn, compiling a script
runs in a thread, input is not read while a command runs and more than a
command is buffered, and output is under back-pressure (the session is
the transport's producer: while the client does not read, no further
command runs and no input is read).

Trusts: the session context (from the master) and the config.  Not the
client: every error becomes a NO/BYE with a reason, never a traceback.
"""

from __future__ import annotations

import twisted.python.threadpool  # noqa: F401  (deferToThread's pool, before any drop)
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydovecot.config.settings import parse_size
from pydovecot.config.variables import expand
from pydovecot.log import sanitize
from pydovecot.managesieve import commands
from pydovecot.managesieve.capability import extensions_from, plugin_settings, setting
from pydovecot.managesieve.grammar import (
    GrammarError,
    command_name,
    literal_size,
    parse_arguments,
    response,
    scan,
)
from pydovecot.session import SessionContext
from pydovecot.sieve.storage import SieveStorage

log = Logger()

BATCH = 16  # pipelined commands run per reactor turn
DEFAULT_MAX_LINE = 65536
DEFAULT_LOGOUT_FORMAT = "bytes=%i/%o"
STAT_KEYS = ("put_bytes", "put_count", "get_bytes", "get_count", "check_bytes",
             "check_count", "deleted_count", "renamed_count")


def new_session(config, ctx: SessionContext) -> ManageSieveSession:
    """A session for ``ctx``'s user with the config's ManageSieve settings."""
    settings = plugin_settings(config, ctx.fields)
    home = ctx.fields.get("home", "") or ""
    storage = SieveStorage.for_user(settings, ctx.user, home)
    return ManageSieveSession(ctx, config, storage, extensions_from(settings), settings)


@implementer(IPushProducer)
class ManageSieveSession(Protocol):
    """One logged-in ManageSieve client."""

    def __init__(self, ctx: SessionContext, config, storage: SieveStorage,
                 extensions: frozenset[str], settings: dict[str, str]):
        self.ctx = ctx
        self.config = config
        self.storage = storage
        self.extensions = extensions
        self.settings = settings
        self.max_line = _size(setting(config, "managesieve_max_line_length"), DEFAULT_MAX_LINE)
        self.max_literal = storage.max_script_size
        self.logout_format = (setting(config, "managesieve_logout_format")
                              or DEFAULT_LOGOUT_FORMAT)
        try:
            self.max_redirects = int(settings.get("sieve_max_redirects") or 4)
        except ValueError:
            self.max_redirects = 4
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.bytes_in = self.bytes_out = 0
        self._buffer = b""
        self._skip = 0  # literal bytes still to drop
        self._skip_line = False  # then drop up to the end of that line
        self._skip_name = ""  # the command whose literal was too large
        self._busy = False
        self._output_paused = False
        self._reading_paused = False
        self._scheduled = False
        self._closing = False
        self._disconnect_reason = "Connection closed"

    # -- life cycle ----------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self.ctx.log_prefix("managesieve")

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def start(self, tag: bytes | None, pending: bytes) -> None:
        """Answer the login (the login process said nothing yet)."""
        self.write(response("OK", "Logged in."))
        if pending:
            self.dataReceived(pending)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        values = {"i": str(self.bytes_in), "o": str(self.bytes_out)}
        values.update((k, str(v)) for k, v in self.stats.items())
        try:
            summary = expand(self.logout_format, values)
        except ValueError:
            summary = f"bytes={self.bytes_in}/{self.bytes_out}"
        log.info("Disconnected: {reason} {summary}", reason=self._disconnect_reason,
                 summary=sanitize(summary), log_prefix=self.prefix)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            self.bytes_out += len(data)
            self.transport.write(data)

    def close(self, reason: str) -> None:
        """End the session after what is queued has been sent."""
        self._disconnect_reason = reason
        self._closing = True
        self._buffer = b""
        if self.transport is not None:
            self.transport.loseConnection()

    def bye(self, text: str, reason: str) -> None:
        self.write(response("BYE", text))
        self.close(reason)

    # -- back-pressure (we are the transport's producer) ------------------------

    def pauseProducing(self) -> None:
        self._output_paused = True
        self._pause_reading()

    def resumeProducing(self) -> None:
        self._output_paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._closing = True

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._output_paused and not self._closing:
            self._reading_paused = False
            self.transport.resumeProducing()

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.bytes_in += len(data)
        if self._skip or self._skip_line:
            data = self._skipping(data)
        self._buffer += data
        self._schedule(now=True)
        if self._busy and len(self._buffer) > self.max_line:
            self._pause_reading()

    def _skipping(self, data: bytes) -> bytes:
        """Drop an over-large literal and the rest of its command."""
        while data and (self._skip or self._skip_line):
            if self._skip:
                n = min(self._skip, len(data))
                self._skip -= n
                data = data[n:]
                continue
            i = data.find(b"\n")
            if i < 0:
                return b""
            size = literal_size(data[:i])
            data = data[i + 1:]
            if size is not None:
                self._skip = size
            else:
                self._skip_line = False
                self._too_large(self._skip_name)
        return data

    def _too_large(self, name: str) -> None:
        if name in ("PUTSCRIPT", "CHECKSCRIPT"):
            self.write(response("NO", f"Script is too large (max {self.max_literal} bytes).",
                                "QUOTA/MAXSIZE"))
        else:
            self.write(response("NO", f"Error in MANAGESIEVE command {name}: "
                                      "Too long argument."))

    def _schedule(self, now: bool = False) -> None:
        if now and not self._scheduled:
            self._process()
        elif not self._scheduled:
            self._scheduled = True
            reactor.callLater(0, self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        self._process()

    def _process(self) -> None:
        ran = 0
        while not (self._busy or self._output_paused or self._closing or self._skip
                   or self._skip_line):
            if ran >= BATCH:
                if self._buffer:
                    self._schedule()
                return
            found = scan(self._buffer, self.max_line, self.max_literal)
            if found.kind == "more":
                break
            self._buffer = self._buffer[found.end:]
            if found.kind == "overflow":
                if not found.literal:
                    self.bye("Input buffer full, aborting", "Input buffer full")
                    return
                self._skip, self._skip_line = found.skip, True
                self._skip_name = command_name(found.data)
                self._buffer = self._skipping(self._buffer)
                ran += 1
                continue
            ran += 1
            result = self._dispatch(found.data)
            if isinstance(result, defer.Deferred):
                self._busy = True
                result.addErrback(self._failed)
                result.addBoth(self._done)
        if not self._busy:
            self._resume_reading()

    def _done(self, _: object) -> None:
        self._busy = False
        self._schedule()

    def _failed(self, failure: Failure) -> None:
        log.failure("managesieve: command failed", failure, log_prefix=self.prefix)
        self.write(response("NO", "Internal error occurred. Refer to server log for more "
                                  "information.", "TRYLATER"))

    def _dispatch(self, data: bytes) -> defer.Deferred | None:
        if not data.strip():
            return None
        name = command_name(data)
        if not name:
            self.write(response("NO", "Error in MANAGESIEVE command: Unknown command."))
            return None
        entry = commands.COMMANDS.get(name)
        if entry is None:
            shown = name if len(name) <= 32 and name.isprintable() else "?"
            self.write(response("NO", f"Error in MANAGESIEVE command {shown}: "
                                      "Unknown command."))
            return None
        try:
            args = parse_arguments(data[len(name):])
        except GrammarError as e:
            self.write(response("NO", f"Error in MANAGESIEVE command {name}: {e}"))
            return None
        if len(args) < entry.min_args:
            # Pigeonhole: a PUTSCRIPT with a name but no script is "invalid"
            what = "Invalid" if args and entry.max_args > 1 and name == "PUTSCRIPT" else "Missing"
            self.write(response("NO", f"Error in MANAGESIEVE command {name}: "
                                      f"{what} arguments."))
            return None
        if len(args) > entry.max_args:
            self.write(response("NO", f"Error in MANAGESIEVE command {name}: "
                                      "Too many arguments."))
            return None
        try:
            return entry.handler(self, args)
        except Exception:
            log.failure("managesieve: {name} failed", name=name, log_prefix=self.prefix)
            self.write(response("NO", "Internal error occurred. Refer to server log for "
                                      "more information.", "TRYLATER"))
            return None


def _size(value: str, default: int) -> int:
    try:
        return parse_size(value) if value else default
    except ValueError:
        return default
