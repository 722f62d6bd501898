"""The IMAP4rev1 protocol for the AUTHENTICATED and SELECTED states.

Runs inside a per-user mail process: the login process has already
authenticated the client, so the user is trusted as given by the master
(SessionContext), while every byte from the client is untrusted.  Commands
are read by :class:`~pydovecot.imap.parser.CommandReader`, queued, and run
strictly in order (a handler may return a Deferred); each command's output
is collected and written in large chunks.  Storage is reached only through
:class:`~pydovecot.storage.interfaces.IMailStorage`.

Many sessions share one reactor, so no session may hold it or grow the
process (see ARCHITECTURE.md, "Facts"):

* Output flow control: the session registers a push producer on its
  transport, whose buffer is capped at :data:`OUTPUT_BOUND`.  While the
  client does not read, no new command starts and long commands (FETCH,
  LIST, STATUS) wait between responses; large literals are streamed from
  the message file in chunks (:class:`~pydovecot.imap.fetch.StreamedLiteral`).
* Fair scheduling: queued commands run synchronously for at most
  :data:`SLICE` seconds, then the rest runs as a task on Twisted's global
  cooperator (shared, round-robin, with every other session's long work),
  one command or one chunk per step.
* Bounded input: at most :data:`QUEUE_MAX` parsed commands wait; then the
  reader (and the inflater under COMPRESS) stops consuming and the socket
  is not read until the queue drains.
* 20 bad commands in a row end the session (``* BYE Too many invalid IMAP
  commands.``) and an idle one is logged out after ``imap_autologout``
  (Dovecot's fixed 30 minutes; IDLE's keepalives count as activity).
"""

from __future__ import annotations

import datetime
import re
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, interfaces, task
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydovecot.imap import capability, ext_fetch, fetch, mime, mutf7
from pydovecot.imap.compress import CompressMixin
from pydovecot.imap.ext_mailbox import MailboxExtMixin
from pydovecot.imap.ext_search import SearchMixin
from pydovecot.imap.ext_sync import SyncMixin
from pydovecot.imap.parser import (
    STAR,
    Atom,
    CommandReader,
    NumberSet,
    ParseError,
    RawCommand,
    ReaderError,
    Token,
    as_bytes,
    bad_response,
    compress,
    extract_tag,
    parse_sequence_set,
    tokenize,
)
from pydovecot.imap.rev2 import Rev2Mixin
from pydovecot.imap.urlauth import URLAuthMixin
from pydovecot.log import sanitize
from pydovecot.session import SessionContext
from pydovecot.storage.interfaces import (
    SYSTEM_FLAGS,
    IMailbox,
    IMailStorage,
    MailboxInfo,
    MailboxNotFound,
    MessageInfo,
    StorageError,
)

SERVERBUG = b"NO [SERVERBUG] Internal error occurred. Refer to server log for more information."
FLUSH_SIZE = 128 * 1024
#: The transport's write buffer above which the session stops producing.
OUTPUT_BOUND = 256 * 1024
#: Larger byte strings are written in pieces of this size, under back-pressure.
OUTPUT_CHUNK = 64 * 1024
#: FETCHes of at most this many small messages are answered in one go.
FETCH_SYNC = 50
#: Seconds of queued commands run in one reactor turn before yielding.
SLICE = 0.004
QUEUE_MAX = 64  # stop reading input when this many commands wait
QUEUE_LOW = QUEUE_MAX // 4  # and read again when the queue is this short
#: Parsed messages a session keeps cached, in bytes of message text.
CACHE_BYTES = 4 * 1024 * 1024
#: A FETCH answered in one go sends at most about this much message text.
FETCH_SYNC_BYTES = 512 * 1024
#: Dovecot's CLIENT_MAX_BAD_COMMANDS.
MAX_BAD_COMMANDS = 20
#: Dovecot's CLIENT_OUTPUT_TIMEOUT_MSECS: a client that reads none of our
#: output for this long is disconnected.
OUTPUT_TIMEOUT = 5 * 60.0
#: Dovecot's CLIENT_IDLE_TIMEOUT_MSECS (30 minutes).
AUTOLOGOUT = 30 * 60.0
NO_EXPUNGE = {"FETCH", "STORE", "SEARCH", "SORT", "THREAD"}
NO_SYNC = {"LOGOUT", "SELECT", "EXAMINE", "CLOSE", "UNSELECT", "IDLE"}
_SYSTEM = {f.lower(): f for f in SYSTEM_FLAGS}
_DATETIME_RE = re.compile(
    rb"^([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$"
)
_ASTRING_SAFE = re.compile(rb"^[!#$&'*+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$")


class CommandError(Exception):
    """A handler's refusal: ``response`` is the tagged line after the tag."""

    def __init__(self, response: bytes):
        super().__init__(response)
        self.response = response


def _bad(msg: str) -> CommandError:
    return CommandError(b"BAD " + msg.encode())


def astring(value: bytes) -> bytes:
    """An atom if it can be one, else a quoted string or literal."""
    if _ASTRING_SAFE.match(value) and value.upper() != b"NIL":
        return value
    return mime.imap_string(value)


def encode_mailbox(name: str) -> bytes:
    return astring(mutf7.encode(name))


def decode_mailbox(tok: Token) -> str:
    raw = as_bytes(tok)
    try:
        name = mutf7.decode(raw)
    except ValueError:
        raise CommandError(b"NO [CANNOT] Invalid mailbox name: not modified UTF-7") from None
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX/"):
        return "INBOX" + name[5:]
    return name


def parse_datetime(raw: bytes) -> datetime.datetime:
    m = _DATETIME_RE.match(raw)
    if not m:
        raise _bad("Invalid date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        month = [x.lower() for x in fetch.MONTHS].index(mon.decode().lower()) + 1
        offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
        tz = datetime.timezone(-offset if sign == b"-" else offset)
        return datetime.datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=tz)
    except ValueError:
        raise _bad("Invalid date-time") from None


def parse_flags(tokens: list[Token]) -> list[str]:
    """Flag atoms → canonical names; BAD for \\Recent, unknown \\X, non-atoms."""
    out: list[str] = []
    for tok in tokens:
        if not isinstance(tok, Atom):
            raise _bad("Invalid flag")
        name = tok.decode("utf-8", "replace")
        if name.startswith("\\"):
            canon = _SYSTEM.get(name.lower())
            if canon is None:
                raise _bad(f"Invalid system flag {name}")
            name = canon
        elif any(c in name for c in "[]%*\\") or not name:
            raise _bad(f"Invalid keyword {name}")
        if name not in out:
            out.append(name)
    return out


def list_pattern(pattern: str) -> re.Pattern[str]:
    """A LIST pattern (``*``, ``%``) as a regex on full names."""
    regex = "".join(
        ".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern
    )
    return re.compile(f"^{regex}$", re.S)


@implementer(interfaces.IPushProducer)
class _Output:
    """The session's push producer: the transport pauses it while its
    buffer is over the bound, and resumes it when it has drained."""

    def __init__(self, session: IMAPSession):
        self.session = session

    def pauseProducing(self) -> None:
        self.session._output_blocked()

    def resumeProducing(self) -> None:
        self.session._output_resumed()

    def stopProducing(self) -> None:
        self.session._output_stopped()


def _error_line(f: Failure) -> str:
    """An unexpected exception as one bounded log line: type, sanitised
    message and the innermost frame (no traceback, no client bytes raw)."""
    where = ""
    if f.frames:
        func, path, line = f.frames[-1][:3]
        where = f" at {path.rsplit('/', 1)[-1]}:{line} in {func}"
    return f"{f.type.__name__}: {sanitize(f.getErrorMessage(), 200)}{where}"


class IMAPSession(SyncMixin, URLAuthMixin, Rev2Mixin, MailboxExtMixin, CompressMixin, SearchMixin, Protocol):
    """One authenticated IMAP4rev1 client connection."""

    log = Logger(namespace="pydovecot.imap")

    def __init__(self, storage: IMailStorage, ctx: SessionContext):
        self.storage = storage
        self.ctx = ctx
        self.prefix = ctx.log_prefix("imap")
        settings = ctx.settings or {}
        self.max_line = capability.parse_size(settings.get("imap_max_line_length"), 65536)
        self.append_limit = capability.append_limit(settings)
        self.idle_interval = capability.parse_seconds(
            settings.get("imap_idle_notify_interval"), 120.0
        )
        self.autologout = capability.parse_seconds(settings.get("imap_autologout"), AUTOLOGOUT)
        self.capabilities = capability.capability_string(settings).encode()
        self.reader = CommandReader(
            self._enqueue, self._want_continuation, self.max_line, self.append_limit
        )
        self.mailbox: IMailbox | None = None
        # bounded in count, per message and in total: a session never holds
        # more than CACHE_BYTES of message text
        self.cache = mime.MessageCache(size=16, max_bytes=CACHE_BYTES // 4,
                                       total_bytes=CACHE_BYTES)
        self._scans: dict[tuple, fetch.MessageScan] = {}  # streamed messages' sizes
        self.stats = fetch.FetchStats()
        self.counters = {"deleted": 0, "expunged": 0, "trashed": 0}
        self.bytes_in = 0
        self.bytes_out = 0
        self._queue: deque[RawCommand | ReaderError] = deque()
        self._busy = False
        self._pumping = False
        self._pump_task: task.CooperativeTask | None = None
        self._paused = False  # input: the reader and the socket are stopped
        self._output_paused = False
        self._drain_waiters: list[defer.Deferred[None]] = []
        self._bad_count = 0
        self._bye_reason = ""
        self._slice_end = 0.0
        self._slice_ran = 0  # commands run in this slice
        self.slice = SLICE  # seconds of commands per reactor turn
        self._autologout_call: Any = None
        self._output_call: Any = None
        self.output_timeout = OUTPUT_TIMEOUT
        self.inflater: Any = None  # COMPRESS=DEFLATE's Inflater, once started
        self._cont_pending = False
        self._started = False
        self._early: list[bytes] = []
        self._out: list[bytes] = []
        self._out_size = 0
        self._logged_out = False
        self._closed = False
        self._idle: defer.Deferred[bytes] | None = None
        self._idle_timer: task.LoopingCall | None = None
        self._idle_listener: Callable[[], None] | None = None
        self._idle_started = 0.0
        self._last_command = ""
        self._last_done = 0.0
        self.clock: Any = None  # IReactorTime; the global reactor unless set
        self.after_sync_hooks: list[Callable[[], None]] = []  # e.g. CONTEXT=SEARCH updates
        self.init_extensions()  # rev2: LITERAL-, special-use, autocreate

    # -- connection ----------------------------------------------------------

    def _reactor(self) -> Any:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        return self.clock

    def connectionMade(self) -> None:
        transport = self.transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = OUTPUT_BOUND
        self._output = _Output(self)
        if hasattr(transport, "registerProducer"):
            transport.registerProducer(self._output, True)

    def start(self, tag: bytes | None, pending: bytes) -> None:
        """Answer the login command and process bytes pipelined after it."""
        if tag is not None:
            self._send(tag + b" OK [CAPABILITY " + self.capabilities + b"] Logged in\r\n")
            self._flush()
        self._started = True
        self._touch()
        self._new_slice()
        early, self._early = b"".join(self._early), []
        if pending or early:
            self._input(pending + early)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._logged_out or self._closed:
            return
        if not self._started:
            self._early.append(data)
            return
        self._touch()
        self._new_slice()
        self._input(data)

    def _input(self, data: bytes) -> None:
        if self.inflater is not None:
            self.inflater.feed(data)
        else:
            self.reader.feed(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        self._stop_idle()
        for call in (self._autologout_call, self._output_call):
            if call is not None and call.active():
                call.cancel()
        self._autologout_call = self._output_call = None
        self._release_waiters()
        if self._pump_task is not None:
            try:
                self._pump_task.stop()
            except task.TaskDone:
                pass
            self._pump_task = None
        if getattr(self, "notifier", None) is not None:
            self.notifier.stop()  # NOTIFY's storage listeners
        for item in self._queue:
            if isinstance(item, RawCommand):
                item.close()
        self._queue.clear()
        if self.mailbox is not None:
            try:
                self.mailbox.close()
            except Exception:
                self.log.error("Closing mailbox failed: {e}", e=_error_line(Failure()),
                               log_prefix=self.prefix)
            self.mailbox = None
        stats = self._logout_stats()
        if self._bye_reason:
            return  # _disconnect logged why
        if self._logged_out:
            self.log.info("Disconnected: Logged out " + stats, log_prefix=self.prefix)
        else:
            if self._idle_started:
                why = f"IDLE running for {time.monotonic() - self._idle_started:.3f} secs"
            elif self._last_command:
                why = f"{sanitize(self._last_command, 40)} finished " \
                      f"{time.monotonic() - self._last_done:.3f} secs ago"
            else:
                why = "No commands sent"
            self.log.info(
                "Disconnected: Connection closed ({why}) " + stats, why=why, log_prefix=self.prefix
            )

    def _logout_stats(self) -> str:
        s = self.stats
        c = self.counters
        return (
            f"in={self.bytes_in} out={self.bytes_out} deleted={c['deleted']} "
            f"expunged={c['expunged']} trashed={c['trashed']} hdr_count={s.hdr_count} "
            f"hdr_bytes={s.hdr_bytes} body_count={s.body_count} body_bytes={s.body_bytes}"
        ).replace("{", "{{").replace("}", "}}")

    def _disconnect(self, bye: bytes, reason: str) -> None:
        """Send ``* BYE …`` and close, as Dovecot's client_disconnect_with_error."""
        if self._closed or self._logged_out:
            return
        self._send(b"* BYE " + bye + b"\r\n")
        self._flush()
        self._logged_out = True
        self._bye_reason = reason
        self.log.info("Disconnected: {reason} " + self._logout_stats(), reason=reason,
                      log_prefix=self.prefix)
        self._closed = True  # connectionLost must not log it again
        blocked = self._output_paused
        self._release_waiters()
        if self.transport is None:
            return
        if blocked and hasattr(self.transport, "abortConnection"):
            self.transport.abortConnection()  # it would never drain
        else:
            self.transport.loseConnection()

    # -- autologout ------------------------------------------------------------

    def _touch(self) -> None:
        """Client activity (input, or IDLE's keepalive): restart the timer."""
        if self.autologout <= 0 or self._closed:
            return
        call = self._autologout_call
        if call is not None and call.active():
            call.reset(self.autologout)
        else:
            self._autologout_call = self._reactor().callLater(self.autologout, self._inactive)

    def _inactive(self) -> None:
        self._autologout_call = None
        self._disconnect(b"Disconnected for inactivity.", "Disconnected for inactivity")

    # -- output ----------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_SIZE:
            self._flush()

    def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        self._out = []
        self._out_size = 0
        if self._closed or self.transport is None:
            return
        self.bytes_out += len(data)
        self.transport.write(data)

    def _output_blocked(self) -> None:
        self._output_paused = True
        if self._closed or self.output_timeout <= 0:
            return
        if self._output_call is None or not self._output_call.active():
            self._output_call = self._reactor().callLater(self.output_timeout,
                                                          self._output_stuck)

    def _output_stuck(self) -> None:
        """Dovecot: "Disconnected for inactivity in reading our output"."""
        self._output_call = None
        if self._closed:
            return
        reason = "Disconnected for inactivity in reading our output"
        self.log.info("Disconnected: {reason} " + self._logout_stats(), reason=reason,
                      log_prefix=self.prefix)
        self._bye_reason = reason
        self._logged_out = self._closed = True
        self._release_waiters()
        if self.transport is not None:
            abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
            abort()

    def _output_resumed(self) -> None:
        self._output_paused = False
        if self._output_call is not None and self._output_call.active():
            self._output_call.cancel()
        self._output_call = None
        self._release_waiters()
        if not self._closed:
            self._touch()  # the client reads our output: it is active (as Dovecot)
            self._new_slice()
            self._pump()

    def _output_stopped(self) -> None:
        self._output_paused = True
        self._release_waiters()

    def _release_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(None)

    def drained(self) -> defer.Deferred[None]:
        """Fires when the client has read our output (or the session ended);
        long commands yield it to the cooperator while ``output_blocked``."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._closed or not self._output_paused:
            d.callback(None)
        else:
            self._drain_waiters.append(d)
        return d

    @property
    def output_blocked(self) -> bool:
        """True while the transport's buffer is over the bound."""
        return self._output_paused and not self._closed

    def send_paced(self, data: bytes) -> Generator[defer.Deferred[None] | None, None, None]:
        """Write ``data`` in OUTPUT_CHUNK pieces, waiting for the client to
        read between them (a generator step per piece)."""
        view = memoryview(data)
        for start in range(0, len(view), OUTPUT_CHUNK):
            if self._closed:
                return
            if self.output_blocked:
                yield self.drained()
            self._send(bytes(view[start : start + OUTPUT_CHUNK]))
            self._flush()
            yield None

    # -- the command queue --------------------------------------------------------

    def _enqueue(self, item: RawCommand | ReaderError) -> None:
        if self._idle is not None and not self._queue:
            self._idle_input(item)
            return
        self._queue.append(item)
        if len(self._queue) >= QUEUE_MAX and not self._paused:
            self._pause_input()
        self._pump()

    def _pause_input(self) -> None:
        self._paused = True
        self.reader.paused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def _resume_input(self) -> None:
        self._paused = False
        self.reader.paused = False
        if self.transport is not None and not self._closed:
            self.transport.resumeProducing()
        self.reader.resume()  # commands it holds already
        if not self._paused and self.inflater is not None:
            self.inflater.resume()  # then more of the compressed input

    def _want_continuation(self) -> None:
        if self._busy or self._queue:
            self._cont_pending = True
        else:
            self._send(b"+ OK\r\n")
            self._flush()

    def _new_slice(self) -> None:
        """A reactor callback begins: commands may run for ``slice`` seconds
        (and at least one runs)."""
        self._slice_end = time.monotonic() + self.slice
        self._slice_ran = 0

    def _runnable(self) -> bool:
        return (bool(self._queue) and not self._busy and not self._logged_out
                and not self._closed and not self._output_paused)

    def _pump(self) -> None:
        """Run queued commands: synchronously until the slice of this reactor
        turn is used up, then as a task on the global cooperator (one
        command per step)."""
        if self._pumping or self._pump_task is not None:
            return
        self._pumping = True
        try:
            while self._runnable():
                if self._slice_ran and time.monotonic() > self._slice_end:
                    self._pump_task = task.cooperate(self._pump_steps())
                    self._pump_task.whenDone().addBoth(self._pump_task_done)
                    break
                self._step()
        finally:
            self._pumping = False
        self._after_pump()

    def _pump_steps(self) -> Generator[None, None, None]:
        while self._runnable():
            self._step()
            self._after_pump()
            yield None

    def _pump_task_done(self, _result: object) -> None:
        self._pump_task = None
        self._new_slice()
        if self._runnable():
            self._pump()
        else:
            self._after_pump()

    def _step(self) -> None:
        """Run the next queued item (a command may go on asynchronously)."""
        item = self._queue.popleft()
        self._slice_ran += 1
        if isinstance(item, ReaderError):
            self._send((item.tag or b"*") + b" " + item.response + b"\r\n")
            self._flush()
            self._count_bad(item.response)
            return
        self._busy = True
        d = defer.maybeDeferred(self._execute, item)
        d.addBoth(self._command_done)

    def _after_pump(self) -> None:
        if self._closed:
            return
        if self._paused and len(self._queue) <= QUEUE_LOW:
            self._resume_input()
        if not self._queue and not self._busy and self._cont_pending and not self._logged_out:
            self._cont_pending = False
            self._send(b"+ OK\r\n")
            self._flush()

    def _count_bad(self, response: bytes) -> None:
        """Dovecot's bad_counter: 20 BAD replies in a row end the session."""
        if not response.startswith(b"BAD"):
            self._bad_count = 0
            return
        self._bad_count += 1
        if self._bad_count >= MAX_BAD_COMMANDS:
            self._disconnect(b"Too many invalid IMAP commands.", "Too many invalid IMAP commands.")

    def _command_done(self, result: object) -> None:
        if isinstance(result, Failure):
            self.log.error("Unhandled error in command queue: {e}", e=_error_line(result),
                           log_prefix=self.prefix)
        self._busy = False
        self._last_done = time.monotonic()
        self._flush()
        if not self._pumping:  # an asynchronous command: a new reactor turn
            self._new_slice()
            self._pump()

    def _execute(self, raw: RawCommand) -> defer.Deferred[None] | None:
        try:
            tokens = tokenize(raw, utf8=self.utf8)
        except ParseError as e:
            raw.close()
            self._tagged(raw.tag(), bad_response(e))
            return None
        tag = tokens[0] if tokens else None
        if not isinstance(tag, Atom) or extract_tag(tag) != tag:
            self._tagged(None, b"BAD Error in IMAP tag.")
            raw.close()
            return None
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            self._tagged(tag, b"BAD Error in IMAP command: Missing command name.")
            raw.close()
            return None
        name = tokens[1].upper_str()
        args = tokens[2:]
        uid = False
        if name == "UID":
            if not args or not isinstance(args[0], Atom):
                self._tagged(tag, b"BAD Error in IMAP command UID: Missing command.")
                return None
            name = args[0].upper_str()
            args = args[1:]
            uid = True
            if name not in ("FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE", "SORT", "THREAD"):
                self._tagged(tag, b"BAD Error in IMAP command UID: Unknown command.")
                return None
        shown = ("UID " if uid else "") + name
        self._last_command = shown
        handler = getattr(self, "cmd_" + name.lower(), None) if name.isalpha() else None
        if handler is None:
            self._tagged(tag, b"BAD Error in IMAP command %s: Unknown command." % shown[:40].encode())
            return None
        if name in SELECTED_ONLY and self.mailbox is None:
            self._tagged(tag, b"BAD No mailbox selected.")
            return None

        def ok(response: bytes) -> None:
            self._finish(tag, response, name, uid)

        def failed(f: Failure) -> None:
            if f.check(_Silent):
                return
            if f.check(CommandError):
                response = f.value.response
                if response.startswith(b"BAD ") and not response.startswith(b"BAD ["):
                    response = b"BAD Error in IMAP command %s: %s" % (shown.encode(), response[4:])
                self._finish(tag, response, name, uid)
            elif f.check(ParseError):
                msg = str(f.value).encode()
                self._finish(tag, b"BAD Error in IMAP command %s: %s" % (shown.encode(), msg), name, uid)
            elif f.check(StorageError):
                err = f.value
                text = str(err) or type(err).__name__
                self._finish(tag, b"NO [%s] %s" % (err.code.encode(), text.encode()), name, uid)
            else:
                self.log.error("{cmd} failed: {e}", cmd=sanitize(shown, 40), e=_error_line(f),
                               log_prefix=self.prefix)
                self._finish(tag, SERVERBUG, name, uid)

        try:
            kwargs = {"uid": uid} if name in UID_COMMANDS else {}
            result = handler(tag, args, **kwargs)
        except BaseException:
            failed(Failure())
            return None
        finally:
            raw.close()
        if isinstance(result, defer.Deferred):
            result.addCallbacks(ok, failed)
            result.addErrback(lambda f: self.log.error("Finishing {cmd} failed: {e}",
                                                       cmd=sanitize(shown, 40), e=_error_line(f),
                                                       log_prefix=self.prefix))
            return result
        ok(result)
        return None

    def _finish(self, tag: bytes, response: bytes, name: str, uid: bool) -> None:
        if self._closed:
            return
        if self.mailbox is not None and name not in NO_SYNC and not self._logged_out:
            try:
                self._sync(allow_expunge=uid or name not in NO_EXPUNGE)
            except Exception:
                self.log.error("Sync failed: {e}", e=_error_line(Failure()), log_prefix=self.prefix)
        self._tagged(tag, response)
        self._flush()

    def _tagged(self, tag: bytes | None, response: bytes) -> None:
        """A command's completion (tagged, or ``* BAD`` without a tag)."""
        self._send((tag or b"*") + b" " + response + b"\r\n")
        self._count_bad(response)

    # -- mailbox changes ---------------------------------------------------------

    def _sync(self, allow_expunge: bool = True) -> None:
        """Report other sessions' changes as untagged responses (ext_sync)."""
        self._sync_changes(allow_expunge)
        for hook in self.after_sync_hooks:
            hook()

    def _report_expunges(self, old_uids: list[int], expunged: list[int]) -> None:
        if not expunged or self._vanished(expunged):
            return
        gone = set(expunged)
        seqs = [i for i, u in enumerate(old_uids, 1) if u in gone]
        for seq in reversed(seqs):
            self._send(b"* %d EXPUNGE\r\n" % seq)

    # -- helpers -------------------------------------------------------------------

    def _selected(self) -> IMailbox:
        assert self.mailbox is not None
        return self.mailbox

    def _resolve(self, raw: Token, uid: bool) -> list[tuple[int, MessageInfo]]:
        """A sequence set → [(seq, info)] in mailbox order."""
        if not isinstance(raw, Atom):
            raise _bad("Invalid messageset")
        if raw == b"$":
            return self.resolve_saved()  # SEARCHRES (ext_search)
        ranges = parse_sequence_set(raw)
        messages = self._selected().messages
        if uid:
            star = messages[-1].uid if messages else 0
            if not messages:
                return []
            nset = NumberSet(ranges, star)
            return [(i, m) for i, m in enumerate(messages, 1) if m.uid in nset]
        count = len(messages)
        for a, b in ranges:
            if (a == STAR or b == STAR) and count == 0:
                raise CommandError(b"BAD Error in IMAP command: No messages")
            if a > count or b > count:
                raise _bad("Invalid messageset")
        nset = NumberSet(ranges, count)
        return [(i, messages[i - 1]) for i in nset]

    def _load(self, info: MessageInfo) -> mime.ParsedMessage:
        mbox = self._selected()
        key = (mbox.name, mbox.uidvalidity, info.uid)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with mbox.message_file(info.uid) as f:
            data = mime.normalize_crlf(f.read())
        parsed = mime.ParsedMessage(data)
        self.cache.put(key, parsed)
        return parsed

    def _load_header(self, info: MessageInfo) -> mime.ParsedMessage:
        """A message parsed from its top-level header only, for FETCH items
        that need nothing more (a whole message already cached serves too)."""
        mbox = self._selected()
        cached = self.cache.get((mbox.name, mbox.uidvalidity, info.uid))
        if cached is not None:
            return cached
        with mbox.message_file(info.uid) as f:
            block, complete = mime.read_header_block(f)
        if not complete:  # no body separator: parse it all, as _load would
            return self._load(info)
        return mime.ParsedMessage(mime.normalize_crlf(block) + b"\r\n\r\n")

    def _list_entries(
        self, infos: list[MailboxInfo], reference: str, pattern: str
    ) -> list[tuple[str, set[str]]]:
        if pattern.upper().startswith("INBOX") and not reference:
            pattern = "INBOX" + pattern[5:]
        full = reference + pattern
        if reference.upper() == "INBOX" or reference.upper().startswith("INBOX/"):
            full = "INBOX" + full[5:]
        regex = list_pattern(full)
        names = {i.name: set(i.attributes) for i in infos}
        virtual: dict[str, set[str]] = {}
        for name in names:
            parts = name.split("/")
            for k in range(1, len(parts)):
                parent = "/".join(parts[:k])
                if parent not in names:
                    virtual[parent] = {"\\Noselect", "\\HasChildren"}
        out = [(name, attrs) for name, attrs in names.items() if regex.match(name)]
        matched_parents = {n.rsplit("/", k)[0] for n, _a in out for k in range(1, n.count("/") + 1)}
        for name, attrs in virtual.items():
            # A missing parent is shown only where no child of it matched.
            if regex.match(name) and name not in matched_parents:
                out.append((name, attrs))
        return out

    # -- any state -------------------------------------------------------------------

    def cmd_capability(self, tag: bytes, args: list[Token]) -> bytes:
        self._send(b"* CAPABILITY " + self.capabilities + b"\r\n")
        return b"OK Capability completed."

    def cmd_noop(self, tag: bytes, args: list[Token]) -> bytes:
        return b"OK NOOP completed."

    def cmd_check(self, tag: bytes, args: list[Token]) -> bytes:
        return b"OK Check completed."

    def cmd_logout(self, tag: bytes, args: list[Token]) -> bytes:
        self._send(b"* BYE Logging out\r\n")
        self._tagged(tag, b"OK Logout completed.")
        self._flush()
        self._logged_out = True
        if self.transport is not None:
            self.transport.loseConnection()
        raise _Silent()

    def cmd_login(self, tag: bytes, args: list[Token]) -> bytes:
        raise _bad("Already logged in.")

    cmd_authenticate = cmd_login

    def cmd_starttls(self, tag: bytes, args: list[Token]) -> bytes:
        raise CommandError(b"BAD TLS is already active or not available in this state.")

    def cmd_id(self, tag: bytes, args: list[Token]) -> bytes:
        if len(args) != 1:
            raise _bad("Invalid ID arguments")
        self._send(b'* ID ("name" "pydovecot")\r\n')
        return b"OK ID completed."

    def cmd_enable(self, tag: bytes, args: list[Token]) -> bytes:
        if not args or not all(isinstance(a, Atom) for a in args):
            raise _bad("Missing capabilities")
        self._send(b"* ENABLED" + self._enable_rev2(args) + self._enable_ext(args) + b"\r\n")
        return b"OK Enabled."

    def cmd_namespace(self, tag: bytes, args: list[Token]) -> bytes:
        self._send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return b"OK Namespace completed."

    # -- mailboxes ------------------------------------------------------------------

    def cmd_list(self, tag: bytes, args: list[Token], lsub: bool = False) -> bytes:
        return self.list_command(tag, args, lsub)  # ext_mailbox: LIST-EXTENDED

    def cmd_lsub(self, tag: bytes, args: list[Token]) -> bytes:
        return self.cmd_list(tag, args, lsub=True)

    def _one_mailbox(self, args: list[Token], count: int = 1) -> list[str]:
        if len(args) != count or any(isinstance(a, list) for a in args):
            raise _bad("Invalid arguments")
        return [self.decode_mailbox(a) for a in args]

    def cmd_create(self, tag: bytes, args: list[Token]) -> bytes:
        return self.create_command(tag, args)  # ext_mailbox: CREATE (USE)

    def cmd_delete(self, tag: bytes, args: list[Token]) -> bytes:
        (name,) = self._one_mailbox(args)
        if self.mailbox is not None and self.mailbox.name == name:
            self.mailbox.close()
            self.mailbox = None
        self.storage.delete(name)
        return b"OK Delete completed."

    def cmd_rename(self, tag: bytes, args: list[Token]) -> bytes:
        old, new = self._one_mailbox(args, 2)
        self.storage.rename(old, new.rstrip("/"))
        return b"OK Rename completed."

    def cmd_subscribe(self, tag: bytes, args: list[Token]) -> bytes:
        (name,) = self._one_mailbox(args)
        self.storage.subscribe(name)
        return b"OK Subscribe completed."

    def cmd_unsubscribe(self, tag: bytes, args: list[Token]) -> bytes:
        (name,) = self._one_mailbox(args)
        self.storage.unsubscribe(name)
        return b"OK Unsubscribe completed."

    def cmd_status(self, tag: bytes, args: list[Token]) -> bytes:
        return self.status_command(tag, args)  # ext_mailbox: SIZE, DELETED, APPENDLIMIT

    def cmd_select(self, tag: bytes, args: list[Token], readonly: bool = False) -> bytes:
        args, select_params = self._select_params(args)
        if len(args) != 1 or isinstance(args[0], list):
            raise _bad("Invalid arguments")
        name = self.decode_mailbox(args[0])
        if self.mailbox is not None:
            self.mailbox.close()
            self.mailbox = None
            self._send(b"* OK [CLOSED] Previous mailbox closed.\r\n")
        mbox = self.storage.open(name, readonly=readonly)
        self.mailbox = mbox
        keywords = list(mbox.keywords)
        flags = " ".join(["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", *keywords])
        self._send(b"* FLAGS (%s)\r\n" % flags.encode())
        if readonly:
            self._send(b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n")
        else:
            self._send(b"* OK [PERMANENTFLAGS (%s \\*)] Flags permitted.\r\n" % flags.encode())
        self._send(b"* %d EXISTS\r\n" % len(mbox.messages))
        if not self.rev2:  # RFC 9051 has no RECENT
            self._send(b"* %d RECENT\r\n" % len(mbox.recent))
        for seq, info in enumerate(mbox.messages, 1):
            if "\\Seen" not in info.flags:
                self._send(b"* OK [UNSEEN %d] First unseen.\r\n" % seq)
                break
        self._send(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mbox.uidvalidity)
        self._send(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mbox.uidnext)
        self._select_done(mbox, select_params)
        if readonly or mbox.readonly:
            return b"OK [READ-ONLY] Examine completed." if readonly else b"OK [READ-ONLY] Select completed."
        return b"OK [READ-WRITE] Select completed."

    def cmd_examine(self, tag: bytes, args: list[Token]) -> bytes:
        return self.cmd_select(tag, args, readonly=True)

    def cmd_append(self, tag: bytes, args: list[Token]) -> bytes:
        return self.append_command(tag, args)  # rev2: MULTIAPPEND, CATENATE, BINARY

    # -- selected state -------------------------------------------------------------

    def cmd_close(self, tag: bytes, args: list[Token]) -> bytes:
        mbox = self._selected()
        if not mbox.readonly:
            self.counters["expunged"] += len(mbox.expunge())
        mbox.close()
        self.mailbox = None
        return b"OK Close completed."

    def cmd_unselect(self, tag: bytes, args: list[Token]) -> bytes:
        self._selected().close()
        self.mailbox = None
        return b"OK Unselect completed."

    def cmd_expunge(self, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
        mbox = self._selected()
        if mbox.readonly:
            raise CommandError(b"NO [READ-ONLY] Mailbox is read-only.")
        uids = None
        if uid:
            if len(args) != 1:
                raise _bad("Missing messageset")
            uids = [m.uid for _s, m in self._resolve(args[0], True)]
        elif args:
            raise _bad("Unexpected arguments")
        old = [m.uid for m in mbox.messages]
        removed = mbox.expunge(uids)
        self.counters["expunged"] += len(removed)
        self._report_expunges(old, removed)
        return self._expunge_result(b"OK Expunge completed.")

    def cmd_search(self, tag: bytes, args: list[Token], uid: bool = False):
        return self.search_command(tag, args, uid)  # ext_search.SearchMixin

    def cmd_fetch(self, tag: bytes, args: list[Token], uid: bool = False):
        prepared = self.prepare_fetch(args, uid, lambda: self.cmd_fetch(tag, args, uid))
        if prepared is not None:  # ext_sync: big MIME trees parsed in slices first
            return prepared
        mbox = self._selected()
        if len(args) < 2:
            raise _bad("Missing arguments")
        fetch_mods = self._fetch_modifiers(args[2:], uid)
        items = fetch.parse_items(args[1:2])
        if uid and not any(i.name == "UID" for i in items):
            items.insert(0, fetch.FetchItem("UID"))
        targets = self._fetch_targets(args, self._resolve(args[0], uid), items, fetch_mods, uid)
        set_seen = not mbox.readonly and any(
            i.section is not None and not i.peek for i in items
        )
        changed: set[int] = set()
        if set_seen:
            unseen = [m.uid for _s, m in targets if "\\Seen" not in m.flags]
            if unseen:
                changed = set(mbox.store(unseen, ["\\Seen"], "+"))
        small = len(targets) <= FETCH_SYNC and (
            fetch.header_only(items)
            or (all(m.size <= fetch.STREAM_OVER for _s, m in targets)
                and sum(m.size for _s, m in targets) <= FETCH_SYNC_BYTES))
        if small:
            missing = self._fetch_range(targets, items, changed)
            return self._fetch_result(missing)
        state = {"missing": 0}
        d = task.cooperate(self._fetch_steps(targets, items, changed, state)).whenDone()
        d.addCallback(lambda _: self._fetch_result(state["missing"]))
        return d

    def _fetch_result(self, missing: int) -> bytes:
        if missing:
            return b"NO [EXPUNGEISSUED] Some messages were expunged."
        return b"OK Fetch completed."

    def _render(self, seq: int, info: MessageInfo, items: list[fetch.FetchItem],
                changed: set[int], recent: Any, stream: bool = False,
                loaded: mime.ParsedMessage | None = None) -> list:
        rest = [i for i in items if not fetch.streamable(i)] if stream else items
        load = self._load_header if fetch.header_only(rest) else self._load

        def message() -> mime.ParsedMessage:
            return loaded if loaded is not None else load(info)

        return fetch.render_pieces(
            seq, info, items, info.uid in recent, message, self.stats,
            add_flags=info.uid in changed, mailbox=self.mailbox, stream=stream,
        )

    def _render_steps(self, seq: int, info: MessageInfo, items: list[fetch.FetchItem],
                      changed: set[int], recent: Any, loaded: mime.ParsedMessage,
                      pieces: list) -> Generator[None, None, None]:
        """Render a big message's response an item per step (each of
        BODYSTRUCTURE, BODY[1], BINARY[1] … may take milliseconds)."""
        head = b"* %d FETCH (" % seq
        tail = b")\r\n"
        unique: list[fetch.FetchItem] = []
        for item in items:
            if item.name != "FLAGS" or all(i.name != "FLAGS" for i in unique):
                unique.append(item)
        add_flags = info.uid in changed and all(i.name != "FLAGS" for i in unique)
        for k, item in enumerate(unique):
            last = k == len(unique) - 1
            part = fetch.render_pieces(
                seq, info, [item], info.uid in recent, lambda: loaded, self.stats,
                add_flags=add_flags and last, mailbox=self.mailbox, stream=True)
            assert isinstance(part[0], bytes) and isinstance(part[-1], bytes)
            part[0] = part[0][len(head):] if k else part[0]
            if k:
                part[0] = b" " + part[0]
            if not last:
                part[-1] = part[-1][: -len(tail)]
            pieces.extend(p for p in part if not isinstance(p, bytes) or p)
            yield None

    def _load_steps(self, info: MessageInfo,
                    out: list[mime.ParsedMessage]) -> Generator[None, None, None]:
        """:meth:`_load` for a large message, a chunk per cooperator step
        (normalizing 20 MB at once would hold the reactor for ~200 ms)."""
        mbox = self._selected()
        key = (mbox.name, mbox.uidvalidity, info.uid)
        cached = self.cache.get(key)
        if cached is None:
            parts: list[bytes] = []
            with mbox.message_file(info.uid) as f:
                for chunk in fetch.normalized_chunks(f, 4 * fetch.STREAM_CHUNK):
                    parts.append(chunk)
                    yield None
            cached = mime.ParsedMessage(b"".join(parts))
            del parts
            self.cache.put(key, cached)
        out.append(cached)

    def _fetch_range(self, targets, items: list[fetch.FetchItem], changed: set[int]) -> int:
        recent = self.recent_view()
        missing = 0
        for seq, info in targets:
            try:
                pieces = self._render(seq, info, items, changed, recent)
            except ext_fetch.UnknownCTE:
                raise
            except (OSError, StorageError):
                missing += 1
                continue
            for piece in pieces:
                self._send(piece)
        return missing

    def _fetch_steps(self, targets, items: list[fetch.FetchItem], changed: set[int],
                     state: dict[str, int]) -> Generator[Any, None, None]:
        """A large FETCH for the cooperator: one message (or one chunk of a
        streamed literal) per step, waiting while the client is not reading."""
        recent = self.recent_view()
        for seq, info in targets:
            if self._closed:
                return
            if self.output_blocked:
                yield self.drained()
            big = info.size > fetch.STREAM_OVER
            loaded: list[mime.ParsedMessage] = []
            try:
                if big and fetch.needs_body(items):
                    yield from self._load_steps(info, loaded)
                    pieces: list = []
                    yield from self._render_steps(seq, info, items, changed, recent,
                                                  loaded[0], pieces)
                else:
                    pieces = self._render(seq, info, items, changed, recent, stream=big)
            except (OSError, StorageError):
                state["missing"] += 1
                continue
            for piece in pieces:
                if isinstance(piece, fetch.StreamedLiteral):
                    yield from self._stream_literal(piece)
                elif len(piece) > OUTPUT_CHUNK:
                    yield from self.send_paced(piece)
                else:
                    self._send(piece)
            self._flush()
            yield None

    def _stream_literal(self, lit: fetch.StreamedLiteral) -> Generator[Any, None, None]:
        """Send ``label {n}\\r\\n`` and the literal, read from the message file
        a chunk per step (the file is read twice: size first, then data)."""
        mbox = self._selected()
        key = (mbox.name, mbox.uidvalidity, lit.uid)
        scan = self._scans.get(key)
        if scan is None:
            found: list[fetch.MessageScan] = []
            with mbox.message_file(lit.uid) as f:
                yield from fetch.scan_message(f, found)
            scan = found[0]
            self._scans[key] = scan
            while len(self._scans) > 16:
                self._scans.pop(next(iter(self._scans)))
        start, end = scan.window(lit)
        marker = b"~{%d}\r\n" if lit.binary and scan.has_nul else b"{%d}\r\n"
        self._send(lit.label + b" " + marker % (end - start))
        self.stats.body_count += 1
        self.stats.body_bytes += end - start
        pos = 0
        sent = 0
        with mbox.message_file(lit.uid) as f:
            for chunk in fetch.normalized_chunks(f):
                if self._closed:
                    return
                lo, hi = max(start - pos, 0), min(end - pos, len(chunk))
                pos += len(chunk)
                if hi > lo:
                    if self.output_blocked:
                        yield self.drained()
                    self._send(chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk)
                    self._flush()
                    sent += hi - lo
                if pos >= end:
                    break
                yield None
        if sent != end - start:  # the file changed under us: the literal is broken
            self.log.error("Message UID {uid} changed while it was sent", uid=lit.uid,
                           log_prefix=self.prefix)
            self._disconnect(b"Internal error occurred.", "Message changed while sent")

    def cmd_store(self, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
        mbox = self._selected()
        args, unchanged = self._store_modifiers(args)
        if len(args) < 3:
            raise _bad("Missing arguments")
        if not isinstance(args[1], Atom):
            raise _bad("Invalid STORE item")
        item = args[1].upper_str()
        silent = item.endswith(".SILENT")
        base = item[: -len(".SILENT")] if silent else item
        modes = {"FLAGS": "=", "+FLAGS": "+", "-FLAGS": "-"}
        if base not in modes:
            raise _bad(f"Invalid STORE item {item[:30]}")
        flag_tokens = args[2] if len(args) == 3 and isinstance(args[2], list) else args[2:]
        flags = parse_flags(flag_tokens)
        if mbox.readonly:
            raise CommandError(b"NO [READ-ONLY] Mailbox is read-only.")
        targets = self._resolve(args[0], uid)
        mode = modes[base]
        before_deleted = {m.uid for _s, m in targets if "\\Deleted" in m.flags}
        before_modseq = {m.uid: m.modseq for _s, m in targets}
        failed = self._store_flags(mbox, targets, flags, mode, unchanged)
        for seq, info in targets:
            if "\\Deleted" in info.flags and info.uid not in before_deleted:
                self.counters["deleted"] += 1
            if info.uid not in failed:
                self._store_response(seq, info, uid, silent, unchanged, before_modseq[info.uid])
        return self._store_result(targets, failed, uid)

    def _copy(self, args: list[Token], uid: bool) -> tuple[str, list[int], bytes]:
        if len(args) != 2:
            raise _bad("Invalid arguments")
        dest = self.decode_mailbox(args[1])
        targets = self._resolve(args[0], uid)
        uids = [m.uid for _s, m in targets]
        if not uids:
            return dest, [], b""
        try:
            validity, pairs = self.storage.copy(self._selected(), uids, dest)
        except MailboxNotFound:
            raise CommandError(b"NO [TRYCREATE] Mailbox doesn't exist: " + self.encode_mailbox(dest)) from None
        if dest.lower() == "trash" or dest.lower().endswith("/trash"):
            self.counters["trashed"] += len(pairs)
        code = b"COPYUID %d %s %s" % (
            validity, compress([s for s, _d in pairs]), compress([d for _s, d in pairs])
        )
        return dest, uids, code

    def cmd_copy(self, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
        _dest, uids, code = self._copy(args, uid)
        if not uids:
            return b"OK No messages found."
        return b"OK [%s] Copy completed." % code

    def cmd_move(self, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
        mbox = self._selected()
        if mbox.readonly:
            raise CommandError(b"NO [READ-ONLY] Mailbox is read-only.")
        _dest, uids, code = self._copy(args, uid)
        if not uids:
            return b"OK No messages found."
        self._send(b"* OK [%s] Moved UIDs.\r\n" % code)
        old = [m.uid for m in mbox.messages]
        mbox.store(uids, ["\\Deleted"], "+")
        removed = mbox.expunge(uids)
        self.counters["expunged"] += len(removed)
        self._report_expunges(old, removed)
        return b"OK Move completed."

    # -- IDLE -------------------------------------------------------------------------

    def cmd_idle(self, tag: bytes, args: list[Token]) -> defer.Deferred[bytes]:
        if args:
            raise _bad("Unexpected arguments")
        if self.mailbox is not None:
            self._sync()
        self._send(b"+ idling\r\n")
        self._flush()
        self._idle = defer.Deferred()
        self._idle_started = time.monotonic()
        if self.mailbox is not None:
            self._idle_listener = self._idle_changed
            self.storage.add_listener(self.mailbox.name, self._idle_listener)
        if self.idle_interval > 0:
            self._idle_timer = task.LoopingCall(self._idle_tick)
            self._idle_timer.clock = self._reactor()
            self._idle_timer.start(self.idle_interval, now=False)
        return self._idle

    def _idle_changed(self) -> None:
        if self._idle is None or self._closed:
            return
        try:
            self._sync()
        except Exception:
            self.log.error("IDLE sync failed: {e}", e=_error_line(Failure()),
                           log_prefix=self.prefix)
        self._flush()

    def _idle_tick(self) -> None:
        self._touch()  # Dovecot: IDLE's keepalive keeps the session from autologout
        self._idle_changed()
        if not self.output_blocked:  # Dovecot: not while output is still buffered
            self._send(b"* OK Still here\r\n")
            self._flush()

    def _stop_idle(self) -> defer.Deferred[bytes] | None:
        d, self._idle = self._idle, None
        self._idle_started = 0.0
        if self._idle_timer is not None and self._idle_timer.running:
            self._idle_timer.stop()
        self._idle_timer = None
        if self._idle_listener is not None and self.mailbox is not None:
            self.storage.remove_listener(self.mailbox.name, self._idle_listener)
        self._idle_listener = None
        return d

    def _idle_input(self, item: RawCommand | ReaderError) -> None:
        d = self._stop_idle()
        assert d is not None
        if isinstance(item, RawCommand):
            line = item.first_line.strip().upper()
            item.close()
            if line == b"DONE" and len(item.segments) == 1:
                d.callback(b"OK Idle completed.")
                return
        d.errback(CommandError(b"BAD Expected DONE."))


class _Silent(Exception):
    """Raised by LOGOUT: the tagged reply is already sent."""


SELECTED_ONLY = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE",
                 "SORT", "THREAD", "CANCELUPDATE"}
UID_COMMANDS = {"EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "SORT", "THREAD"}
