"""The IMAP client core: one authenticated connection in the AUTHENTICATED
and SELECTED states (Dovecot's imap-client.c, imap-commands-util.c and
imap-sync.c in one small class).

Runs inside a per-user mail process: the login process has already
authenticated the client, so the user is trusted as given by the master
(SessionContext), while every byte from the client is untrusted.  The core
owns the connection, the command queue, output and flow control, and the
selected mailbox's view and its sync; it knows no command.  Commands are
read by :class:`~pydovecot.imap.parser.CommandReader`, queued, looked up in
the registry (:mod:`pydovecot.imap.commands.registry`) and run strictly in
order; a handler may return a Deferred or a coroutine.  Handlers use only
the public surface below (``send``, ``flush``, ``tagged``, ``resolve``,
``selected``, ``load``, ``sync`` …), never the underscore state.  Storage
is reached only through :class:`~pydovecot.storage.interfaces.IMailStorage`,
whose every answer is awaited: the tagged reply (and the next command)
waits for the after-command sync, and syncs of the view never overlap.

Many sessions share one reactor, so no session may hold it or grow the
process (see ARCHITECTURE.md, "Facts"):

* Output flow control: the core registers a push producer on its
  transport, whose buffer is capped at :data:`OUTPUT_BOUND`.  While the
  client does not read, no new command starts and long commands (FETCH,
  LIST, STATUS) wait between responses (``output_blocked``/``drained``);
  large literals are streamed from the message file in chunks.
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

import inspect
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer, interfaces, task
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydovecot.imap import capability, context, fetch, mime, syntax
from pydovecot.imap.commands import registry
from pydovecot.imap.compress import DeflateTransport, Inflater
from pydovecot.imap.errors import SERVERBUG, CommandError, Silent, bad, error_line
from pydovecot.imap.parser import (
    STAR,
    Atom,
    CommandReader,
    NumberSet,
    ParseError,
    RawCommand,
    ReaderError,
    Token,
    bad_response,
    compress,
    extract_tag,
    parse_sequence_set,
    tokenize,
)
from pydovecot.imap.specialuse import SpecialUse, from_namespaces
from pydovecot.log import sanitize
from pydovecot.session import SessionContext
from pydovecot.stats import events
from pydovecot.storage.interfaces import (
    IMailbox,
    IMailStorage,
    MessageInfo,
    StorageError,
    SyncResult,
)

FLUSH_SIZE = 128 * 1024
#: The transport's write buffer above which the session stops producing.
OUTPUT_BOUND = 256 * 1024
#: Larger byte strings are written in pieces of this size, under back-pressure.
OUTPUT_CHUNK = 64 * 1024
#: Seconds of queued commands run in one reactor turn before yielding.
SLICE = 0.004
QUEUE_MAX = 64  # stop reading input when this many commands wait
QUEUE_LOW = QUEUE_MAX // 4  # and read again when the queue is this short
#: Parsed messages a session keeps cached, in bytes of message text.
CACHE_BYTES = 4 * 1024 * 1024
#: Dovecot's CLIENT_MAX_BAD_COMMANDS.
MAX_BAD_COMMANDS = 20
#: Dovecot's CLIENT_OUTPUT_TIMEOUT_MSECS: a client that reads none of our
#: output for this long is disconnected.
OUTPUT_TIMEOUT = 5 * 60.0
#: Dovecot's CLIENT_IDLE_TIMEOUT_MSECS (30 minutes).
AUTOLOGOUT = 30 * 60.0


class Waiter(TypingProtocol):
    """What takes the client's input while a command waits for it (IDLE)."""

    started: float

    def input(self, item: RawCommand | ReaderError) -> None: ...

    def stop(self) -> None: ...


@implementer(interfaces.IPushProducer)
class _Output:
    """The session's push producer: the transport pauses it while its
    buffer is over the bound, and resumes it when it has drained."""

    def __init__(self, session: Client):
        self.session = session

    def pauseProducing(self) -> None:
        self.session._output_blocked()

    def resumeProducing(self) -> None:
        self.session._output_resumed()

    def stopProducing(self) -> None:
        self.session._output_stopped()


#: The system flags as FLAGS and PERMANENTFLAGS list them (Dovecot's order).
FLAGS_ORDER = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class Client(Protocol):
    """One authenticated IMAP client connection (the engine's core)."""

    log = Logger(namespace="pydovecot.imap")
    OUTPUT_CHUNK = OUTPUT_CHUNK

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
        #: Keywords the selected mailbox's FLAGS/PERMANENTFLAGS told the client of.
        self.announced_keywords: set[str] = set()
        # bounded in count, per message and in total: a session never holds
        # more than CACHE_BYTES of message text
        self.cache = mime.MessageCache(size=16, max_bytes=CACHE_BYTES // 4,
                                       total_bytes=CACHE_BYTES)
        self.scans: dict[tuple, fetch.MessageScan] = {}  # streamed messages' sizes
        self.stats = fetch.FetchStats()
        self.counters = {"deleted": 0, "expunged": 0, "trashed": 0}
        self.bytes_in = 0
        self.bytes_out = 0
        self._queue: deque[RawCommand | ReaderError] = deque()
        self._busy = False
        self._cmd_start = time.monotonic()  # when the running command began (stats)
        #: Held while the selected view syncs: syncs never overlap, and no
        #: command starts while a sync a listener began (IDLE, NOTIFY) runs.
        self._sync_lock = defer.DeferredLock()
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
        self.logged_out = False
        self.closed = False
        #: While a command reads input itself (IDLE): it gets the next item.
        self.waiter: Waiter | None = None
        self._last_command = ""
        self._last_done = 0.0
        self.clock: Any = None  # IReactorTime; the global reactor unless set
        self.after_sync_hooks: list[Callable[[], None]] = []  # e.g. CONTEXT=SEARCH updates
        # Enabled extensions (features.py switches them on).
        self.condstore = False  # RFC 7162
        self.qresync = False
        self.rev2 = False  # ENABLE IMAP4rev2
        self.utf8 = False  # ENABLE UTF8=ACCEPT (implied by IMAP4rev2)
        self.compressed = False  # COMPRESS=DEFLATE
        # State of single commands that outlives them.
        self.notifier: Any = None  # NOTIFY's notify.Notifier
        self.preparing = False  # FETCH runs again after its big messages were parsed
        self._saved_result: tuple[Any, frozenset[int]] | None = None  # SEARCHRES $
        self._updates: context.UpdateContexts | None = None  # CONTEXT=SEARCH
        self.reader.literal_minus = syntax.is_yes(settings.get("imap_literal_minus"))
        namespaces = ctx.namespaces or settings.get("namespaces")
        self.special_use = SpecialUse(from_namespaces(namespaces), storage)
        # autocreate = yes mailboxes: no command runs before the storage answered
        self._busy = True
        d = defer.Deferred.fromCoroutine(self.special_use.autocreate(storage))
        d.addErrback(lambda f: self.log.error("Autocreating mailboxes failed: {e}",
                                              e=error_line(f), log_prefix=self.prefix))
        d.addBoth(self._command_done)

    # -- connection ----------------------------------------------------------

    def reactor(self) -> Any:
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
            self.send(tag + b" OK [CAPABILITY " + self.capabilities + b"] Logged in\r\n")
            self.flush()
        self._started = True
        self.touch()
        self._new_slice()
        early, self._early = b"".join(self._early), []
        if pending or early:
            self._input(pending + early)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.logged_out or self.closed:
            return
        if not self._started:
            self._early.append(data)
            return
        self.touch()
        self._new_slice()
        self._input(data)

    def _input(self, data: bytes) -> None:
        if self.inflater is not None:
            self.inflater.feed(data)
        else:
            self.reader.feed(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self.stop_waiting()
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
        if self.notifier is not None:
            self.notifier.stop()  # NOTIFY's storage listeners
        for item in self._queue:
            if isinstance(item, RawCommand):
                item.close()
        self._queue.clear()
        if self.mailbox is not None:
            try:
                self.mailbox.close()
            except Exception:
                self.log.error("Closing mailbox failed: {e}", e=error_line(Failure()),
                               log_prefix=self.prefix)
            self.mailbox = None
        stats = self._logout_stats()
        if self._bye_reason:
            return  # _disconnect logged why
        if self.logged_out:
            self.log.info("Disconnected: Logged out " + stats, log_prefix=self.prefix)
        else:
            if self.waiter is not None and self.waiter.started:
                why = f"IDLE running for {time.monotonic() - self.waiter.started:.3f} secs"
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

    def disconnect(self, bye: bytes, reason: str) -> None:
        """Send ``* BYE …`` and close, as Dovecot's client_disconnect_with_error."""
        if self.closed or self.logged_out:
            return
        self.send(b"* BYE " + bye + b"\r\n")
        self.flush()
        self.logged_out = True
        self._bye_reason = reason
        self.log.info("Disconnected: {reason} " + self._logout_stats(), reason=reason,
                      log_prefix=self.prefix)
        self.closed = True  # connectionLost must not log it again
        blocked = self._output_paused
        self._release_waiters()
        if self.transport is None:
            return
        if blocked and hasattr(self.transport, "abortConnection"):
            self.transport.abortConnection()  # it would never drain
        else:
            self.transport.loseConnection()

    # -- autologout ------------------------------------------------------------

    def touch(self) -> None:
        """Client activity (input, or IDLE's keepalive): restart the timer."""
        if self.autologout <= 0 or self.closed:
            return
        call = self._autologout_call
        if call is not None and call.active():
            call.reset(self.autologout)
        else:
            self._autologout_call = self.reactor().callLater(self.autologout, self._inactive)

    def _inactive(self) -> None:
        self._autologout_call = None
        self.disconnect(b"Disconnected for inactivity.", "Disconnected for inactivity")

    # -- output ----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        self._out = []
        self._out_size = 0
        if self.closed or self.transport is None:
            return
        self.bytes_out += len(data)
        self.transport.write(data)

    def _output_blocked(self) -> None:
        self._output_paused = True
        if self.closed or self.output_timeout <= 0:
            return
        if self._output_call is None or not self._output_call.active():
            self._output_call = self.reactor().callLater(self.output_timeout,
                                                          self._output_stuck)

    def _output_stuck(self) -> None:
        """Dovecot: "Disconnected for inactivity in reading our output"."""
        self._output_call = None
        if self.closed:
            return
        reason = "Disconnected for inactivity in reading our output"
        self.log.info("Disconnected: {reason} " + self._logout_stats(), reason=reason,
                      log_prefix=self.prefix)
        self._bye_reason = reason
        self.logged_out = self.closed = True
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
        if not self.closed:
            self.touch()  # the client reads our output: it is active (as Dovecot)
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
        if self.closed or not self._output_paused:
            d.callback(None)
        else:
            self._drain_waiters.append(d)
        return d

    @property
    def output_blocked(self) -> bool:
        """True while the transport's buffer is over the bound."""
        return self._output_paused and not self.closed

    def send_paced(self, data: bytes) -> Generator[defer.Deferred[None] | None, None, None]:
        """Write ``data`` in OUTPUT_CHUNK pieces, waiting for the client to
        read between them (a generator step per piece)."""
        view = memoryview(data)
        for start in range(0, len(view), OUTPUT_CHUNK):
            if self.closed:
                return
            if self.output_blocked:
                yield self.drained()
            self.send(bytes(view[start : start + OUTPUT_CHUNK]))
            self.flush()
            yield None

    def run_steps(self, steps: Generator[Any, None, None], sync_steps: int) -> defer.Deferred[None]:
        """Run a long command's generator: up to ``sync_steps`` steps at once
        while each storage answer it waits for is already in, the rest as a
        task on the global cooperator (a yielded Deferred pauses it)."""
        for _ in range(sync_steps):
            try:
                value = next(steps)
            except StopIteration:
                return defer.succeed(None)
            if isinstance(value, defer.Deferred) and not value.called:
                def rest(first: defer.Deferred[Any] = value) -> Generator[Any, None, None]:
                    yield first
                    yield from steps

                return task.cooperate(rest()).whenDone()
        return task.cooperate(steps).whenDone()

    # -- the command queue --------------------------------------------------------

    def _enqueue(self, item: RawCommand | ReaderError) -> None:
        if self.waiter is not None and not self._queue:
            waiter, self.waiter = self.waiter, None
            waiter.input(item)
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
        if self.transport is not None and not self.closed:
            self.transport.resumeProducing()
        self.reader.resume()  # commands it holds already
        if not self._paused and self.inflater is not None:
            self.inflater.resume()  # then more of the compressed input

    def _want_continuation(self) -> None:
        if self._busy or self._queue:
            self._cont_pending = True
        else:
            self.send(b"+ OK\r\n")
            self.flush()

    def _new_slice(self) -> None:
        """A reactor callback begins: commands may run for ``slice`` seconds
        (and at least one runs)."""
        self._slice_end = time.monotonic() + self.slice
        self._slice_ran = 0

    def _runnable(self) -> bool:
        return (bool(self._queue) and not self._busy and not self.logged_out
                and not self.closed and not self._output_paused
                and not self._sync_lock.locked)

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
            self.send((item.tag or b"*") + b" " + item.response + b"\r\n")
            self.flush()
            self._count_bad(item.response)
            return
        self._busy = True
        self._cmd_start = time.monotonic()
        d = defer.maybeDeferred(self._execute, item)
        d.addBoth(self._command_done)

    def _after_pump(self) -> None:
        if self.closed:
            return
        if self._paused and len(self._queue) <= QUEUE_LOW:
            self._resume_input()
        if not self._queue and not self._busy and self._cont_pending and not self.logged_out:
            self._cont_pending = False
            self.send(b"+ OK\r\n")
            self.flush()

    def _count_bad(self, response: bytes) -> None:
        """Dovecot's bad_counter: 20 BAD replies in a row end the session."""
        if not response.startswith(b"BAD"):
            self._bad_count = 0
            return
        self._bad_count += 1
        if self._bad_count >= MAX_BAD_COMMANDS:
            self.disconnect(b"Too many invalid IMAP commands.", "Too many invalid IMAP commands.")

    def _command_done(self, result: object) -> None:
        if isinstance(result, Failure):
            self.log.error("Unhandled error in command queue: {e}", e=error_line(result),
                           log_prefix=self.prefix)
        self._busy = False
        self._last_done = time.monotonic()
        self.flush()
        if not self._pumping:  # an asynchronous command: a new reactor turn
            self._new_slice()
            self._pump()

    def _execute(self, raw: RawCommand) -> defer.Deferred[None] | None:
        try:
            tokens = tokenize(raw, utf8=self.utf8)
        except ParseError as e:
            raw.close()
            self.tagged(raw.tag(), bad_response(e))
            return None
        tag = tokens[0] if tokens else None
        if not isinstance(tag, Atom) or extract_tag(tag) != tag:
            self.tagged(None, b"BAD Error in IMAP tag.")
            raw.close()
            return None
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            self.tagged(tag, b"BAD Error in IMAP command: Missing command name.")
            raw.close()
            return None
        name = tokens[1].upper_str()
        args = tokens[2:]
        uid = False
        if name == "UID":
            if not args or not isinstance(args[0], Atom):
                self.tagged(tag, b"BAD Error in IMAP command UID: Missing command.")
                return None
            name = args[0].upper_str()
            args = args[1:]
            uid = True
            cmd = registry.lookup(name)
            if cmd is None or not cmd.flags & registry.Flag.UID:
                self.tagged(tag, b"BAD Error in IMAP command UID: Unknown command.")
                return None
        else:
            cmd = registry.lookup(name)
        shown = ("UID " if uid else "") + name
        self._last_command = shown
        if cmd is None:
            response = b"BAD Error in IMAP command %s: Unknown command." % shown[:40].encode()
            self._command_event(tag, "unknown", response)
            self.tagged(tag, response)
            return None
        if cmd.flags & registry.Flag.SELECTED and self.mailbox is None:
            self.tagged(tag, b"BAD No mailbox selected.")
            return None

        def ok(response: bytes) -> defer.Deferred[None]:
            return self._finish(tag, response, cmd, uid)

        def failed(f: Failure) -> defer.Deferred[None] | None:
            if f.check(Silent):
                return None
            if f.check(CommandError):
                response = f.value.response
                if response.startswith(b"BAD ") and not response.startswith(b"BAD ["):
                    response = b"BAD Error in IMAP command %s: %s" % (shown.encode(), response[4:])
                return self._finish(tag, response, cmd, uid)
            if f.check(ParseError):
                msg = str(f.value).encode()
                return self._finish(tag, b"BAD Error in IMAP command %s: %s" % (shown.encode(), msg),
                                    cmd, uid)
            if f.check(StorageError):
                err = f.value
                text = str(err) or type(err).__name__
                return self._finish(tag, b"NO [%s] %s" % (err.code.encode(), text.encode()), cmd, uid)
            self.log.error("{cmd} failed: {e}", cmd=sanitize(shown, 40), e=error_line(f),
                           log_prefix=self.prefix)
            return self._finish(tag, SERVERBUG, cmd, uid)

        try:
            result = cmd.handler(self, tag, args, uid)
            if inspect.iscoroutine(result):
                result = defer.Deferred.fromCoroutine(result)
        except BaseException:
            return failed(Failure())
        finally:
            raw.close()
        if not isinstance(result, defer.Deferred):
            result = defer.succeed(result)
        result.addCallbacks(ok, failed)
        result.addErrback(lambda f: self.log.error("Finishing {cmd} failed: {e}",
                                                   cmd=sanitize(shown, 40), e=error_line(f),
                                                   log_prefix=self.prefix))
        return result

    def _finish(self, tag: bytes, response: bytes, cmd: registry.Command,
                uid: bool) -> defer.Deferred[None]:
        """The after-command sync, then the tagged reply: the reply (and the
        next command) waits until the sync's answer is in."""
        return defer.Deferred.fromCoroutine(self._finish_async(tag, response, cmd, uid))

    async def _finish_async(self, tag: bytes, response: bytes, cmd: registry.Command,
                            uid: bool) -> None:
        if self.closed:
            return
        if (self.mailbox is not None and not cmd.flags & registry.Flag.NO_SYNC
                and not self.logged_out):
            try:
                await self.sync(allow_expunge=cmd.allows_expunges(uid))
            except Exception:
                self.log.error("Sync failed: {e}", e=error_line(Failure()), log_prefix=self.prefix)
        if self.closed:
            return
        self._command_event(tag, ("UID " if uid else "") + cmd.name, response)
        self.tagged(tag, response)
        self.flush()

    def _command_event(self, tag: bytes, name: str, response: bytes) -> None:
        """Dovecot's ``imap_command_finished`` event, for the stats process."""
        events.emit("imap_command_finished", duration=events.since(self._cmd_start),
                    cmd_name=name, tagged_reply_state=response.split(b" ", 1)[0].decode("ascii", "replace"),
                    tagged_reply=sanitize(response.decode("utf-8", "replace"), 200),
                    cmd_tag=sanitize(tag.decode("latin-1"), 64), user=self.ctx.user,
                    session=self.ctx.session_id)

    def tagged(self, tag: bytes | None, response: bytes) -> None:
        """A command's completion (tagged, or ``* BAD`` without a tag)."""
        self.send((tag or b"*") + b" " + response + b"\r\n")
        self._count_bad(response)

    # -- mailbox changes ---------------------------------------------------------

    async def sync(self, allow_expunge: bool = True) -> None:
        """Report other sessions' changes as untagged responses (ext_sync);
        awaits the storage's sync and then every after-sync hook (a hook
        may return an awaitable)."""
        await self.sync_changes(allow_expunge)
        for hook in list(self.after_sync_hooks):
            result = hook()
            if inspect.isawaitable(result):
                await result

    def report_expunges(self, old_uids: list[int], expunged: list[int]) -> None:
        if not expunged:
            return
        if self._updates is not None:  # RFC 5267: REMOVEFROM before the EXPUNGE
            self._updates.on_expunge(old_uids, expunged)
        if self.vanished(expunged):
            return
        gone = set(expunged)
        seqs = [i for i, u in enumerate(old_uids, 1) if u in gone]
        for seq in reversed(seqs):
            self.send(b"* %d EXPUNGE\r\n" % seq)

    # -- helpers -------------------------------------------------------------------

    def selected(self) -> IMailbox:
        assert self.mailbox is not None
        return self.mailbox

    def resolve(self, raw: Token, uid: bool) -> list[tuple[int, MessageInfo]]:
        """A sequence set → [(seq, info)] in mailbox order."""
        if not isinstance(raw, Atom):
            raise bad("Invalid messageset")
        if raw == b"$":
            return self.resolve_saved()  # SEARCHRES
        ranges = parse_sequence_set(raw)
        messages = self.selected().messages
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
                raise bad("Invalid messageset")
        nset = NumberSet(ranges, count)
        return [(i, messages[i - 1]) for i in nset]

    def cached_message(self, info: MessageInfo) -> mime.ParsedMessage | None:
        """``info``'s parsed message if the session's LRU holds it."""
        mbox = self.selected()
        return self.cache.get((mbox.name, mbox.uidvalidity, info.uid))

    async def load(self, info: MessageInfo) -> mime.ParsedMessage:
        """``info``'s message, read through the storage and parsed (LRU)."""
        mbox = self.selected()
        key = (mbox.name, mbox.uidvalidity, info.uid)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with await mbox.message_file(info.uid) as f:
            data = mime.normalize_crlf(f.read())
        parsed = mime.ParsedMessage(data)
        self.cache.put(key, parsed)
        return parsed

    async def load_header(self, info: MessageInfo) -> mime.ParsedMessage:
        """A message parsed from its top-level header only, for FETCH items
        that need nothing more (a whole message already cached serves too)."""
        mbox = self.selected()
        cached = self.cache.get((mbox.name, mbox.uidvalidity, info.uid))
        if cached is not None:
            return cached
        with await mbox.message_file(info.uid) as f:
            block, complete = mime.read_header_block(f)
        if not complete:  # no body separator: parse it all, as _load would
            return await self.load(info)
        return mime.ParsedMessage(mime.normalize_crlf(block) + b"\r\n\r\n")

    def loader(self, info: MessageInfo) -> Callable[[], mime.ParsedMessage]:
        """A thunk for synchronous evaluators (SEARCH, SORT): the parsed
        message from the session's LRU, where the caller put it with
        :meth:`load` before (it raises StorageError if it is not there)."""
        def load() -> mime.ParsedMessage:
            msg = self.cached_message(info)
            if msg is None:
                raise StorageError(f"Message UID {info.uid} was not loaded")
            return msg

        return load

    # -- the selected view ------------------------------------------------------------

    def send_flags(self, mbox: IMailbox, extra: Iterable[str] = ()) -> None:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS …]`` with the mailbox's
        keywords (and ``extra`` ones): at SELECT, and again whenever a
        keyword the client was not told of is about to reach it."""
        keywords = list(mbox.keywords)
        known = set(keywords)
        for kw in [*sorted(self.announced_keywords), *extra]:
            if kw not in known and not kw.startswith("\\"):
                keywords.append(kw)
                known.add(kw)
        self.announced_keywords = known
        flags = " ".join([*FLAGS_ORDER, *keywords]).encode()
        self.send(b"* FLAGS (%s)\r\n" % flags)
        if mbox.readonly:
            self.send(b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n")
        else:
            self.send(b"* OK [PERMANENTFLAGS (%s \\*)] Flags permitted.\r\n" % flags)

    def announce_keywords(self, flags: Iterable[str] = ()) -> None:
        """RFC 3501 7.2.6 / RFC 9051 7.3.5: before a FETCH FLAGS (or any
        response) carries a keyword new to this session (another session,
        a delivery or this one created it), FLAGS and PERMANENTFLAGS list it."""
        mbox = self.mailbox
        if mbox is None:
            return
        new = {k for k in (*mbox.keywords, *flags) if not k.startswith("\\")}
        new -= self.announced_keywords
        if new:
            self.send_flags(mbox, sorted(new))

    def select(self, mbox: IMailbox | None) -> None:
        """Make ``mbox`` the selected view (None: unselect), closing the old one."""
        if self.mailbox is not None and self.mailbox is not mbox:
            self.mailbox.close()
        if self.closed and mbox is not None:  # the client left while the storage answered
            mbox.close()
            mbox = None
        self.mailbox = mbox

    async def sync_changes(self, allow_expunge: bool = True) -> None:
        """Report other sessions' and deliveries' changes to the selected
        mailbox.  Without ``allow_expunge`` (FETCH, STORE, SEARCH) the view
        keeps expunged messages so sequence numbers do not move; they are
        reported at the next command that allows it."""
        if self.mailbox is None:
            return
        await self._sync_lock.acquire()
        try:
            await self._sync_view(allow_expunge)
        finally:
            self._sync_lock.release()
            if not self._busy and not self._pumping and not self.closed:
                self._new_slice()  # a sync a listener began: queued commands may go
                self._pump()
        notifier = self.notifier
        if notifier is not None and not self.closed:
            if allow_expunge:
                notifier.selected_dirty = False
            await notifier.flush_pending()  # outside the lock: it may sync again

    async def _sync_view(self, allow_expunge: bool) -> None:
        mbox = self.mailbox
        if mbox is None:
            return
        old_uids = [m.uid for m in mbox.messages]
        result: SyncResult = await mbox.sync(allow_expunge=allow_expunge)
        if self.mailbox is not mbox or self.closed:
            return  # the session moved on (or ended) while the storage answered
        if mbox.deleted:
            self._mailbox_gone()
            return
        if result.added or result.flags_changed:
            touched = {*result.added, *result.flags_changed}
            self.announce_keywords(
                f for info in mbox.messages if info.uid in touched for f in info.flags)
        self.report_expunges(old_uids, result.expunged)
        if result.added or len(mbox.messages) != len(old_uids) - len(result.expunged):
            self.send(b"* %d EXISTS\r\n" % len(mbox.messages))
        if result.added and not self.rev2:  # RECENT goes with new messages, as in Dovecot
            self.send(b"* %d RECENT\r\n" % len(mbox.recent))
        if result.flags_changed:
            changed = set(result.flags_changed)
            for seq, info in enumerate(mbox.messages, 1):
                if info.uid in changed:
                    self.send(b"* %d FETCH (UID %d FLAGS %s%s)\r\n" % (
                        seq, info.uid, fetch.format_flags(info.flags, info.uid in self.recent_view()),
                        self.modseq_part(info)))

    def _mailbox_gone(self) -> None:
        """The selected mailbox was deleted or renamed away under this
        session: Dovecot's BYE, then the connection closes (nothing more,
        not even the tagged reply of the running command, is sent)."""
        self.log.info("Selected mailbox was deleted, disconnecting", log_prefix=self.prefix)
        self.send(b"* BYE Selected mailbox was deleted, have to disconnect.\r\n")
        self.flush()
        self.stop_waiting()
        self.closed = True
        if self.transport is not None:
            self.transport.loseConnection()

    def recent_view(self) -> set[int]:
        """The selected mailbox's \\Recent UIDs as this client may see them."""
        if self.rev2 or self.mailbox is None:
            return set()
        return self.mailbox.recent

    def modseq_part(self, info: MessageInfo) -> bytes:
        """`` MODSEQ (n)`` for FETCH responses once CONDSTORE is enabled."""
        return b" MODSEQ (%d)" % info.modseq if self.condstore else b""

    def vanished(self, expunged: list[int]) -> bool:
        """Under QRESYNC, expunges are ``* VANISHED uids`` (RFC 7162 3.2.10)."""
        if not self.qresync:
            return False
        if expunged:
            self.send(b"* VANISHED %s\r\n" % compress(sorted(expunged)))
        return True

    def enable_condstore(self) -> bool:
        """Turn CONDSTORE on (ENABLE); True if it was off."""
        was = self.condstore
        self.condstore = True
        return not was

    async def announce_condstore(self) -> None:
        """Turn CONDSTORE on for a CONDSTORE-enabling command: in the
        selected state it also reports HIGHESTMODSEQ (RFC 7162 3.1)."""
        if self.enable_condstore() and self.mailbox is not None:
            modseq = await self.highestmodseq(self.mailbox)
            self.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % modseq)

    async def highestmodseq(self, mbox: IMailbox) -> int:
        """The HIGHESTMODSEQ this view may report."""
        if mbox.highestmodseq > 0:
            return mbox.highestmodseq
        if mbox.seen_modseq > 0:
            return mbox.seen_modseq
        try:
            status = (await self.storage.status(mbox.name)).highestmodseq
        except Exception:
            status = 0
        return max([status, 1, *(m.modseq for m in mbox.messages)])

    async def vanished_since(self, mbox: IMailbox, modseq: int, known: NumberSet | None,
                             present: set[int]) -> list[int]:
        """UIDs expunged since ``modseq`` (limited to ``known``).  RFC 7162
        lets a server over-report, so without an expunge log every absent
        UID below UIDNEXT is listed."""
        if known is not None:
            return [u for u in known if u not in present and u < mbox.uidnext]
        try:
            return sorted(set(await mbox.vanished_since(modseq)) - present)
        except NotImplementedError:
            pass
        return [u for u in range(1, mbox.uidnext) if u not in present]

    # -- SEARCHRES ($) and CONTEXT=SEARCH state ----------------------------------------

    def saved_uids(self) -> frozenset[int]:
        """The ``$`` variable: UIDs saved by the last SEARCH RETURN (SAVE) in
        this selected mailbox (empty after SELECT)."""
        saved = self._saved_result
        if saved is None or saved[0] is not self.mailbox or self.mailbox is None:
            return frozenset()
        return saved[1]

    def save_result(self, uids: Any) -> None:
        """SEARCH RETURN (SAVE): set ``$``."""
        self._saved_result = (self.mailbox, frozenset(uids))

    def resolve_saved(self) -> list[tuple[int, MessageInfo]]:
        """``$`` as a sequence set: [(seq, info)] still in the view."""
        saved = self.saved_uids()
        if not saved or self.mailbox is None:
            return []
        return [(i, m) for i, m in enumerate(self.mailbox.messages, 1) if m.uid in saved]

    def search_updates(self) -> context.UpdateContexts:
        """The client's CONTEXT=SEARCH update contexts (made on first use)."""
        if self._updates is None:
            self._updates = context.UpdateContexts(self)
            self.after_sync_hooks.append(self._updates.on_sync)
        return self._updates

    # -- names -------------------------------------------------------------------------

    def decode_mailbox(self, tok: Token) -> str:
        """A mailbox argument → its name (UTF-8 once enabled); NO [CANNOT] if malformed."""
        return syntax.decode_mailbox(tok, self.utf8)

    def encode_mailbox(self, name: str) -> bytes:
        return syntax.encode_mailbox(name, self.utf8)

    def decode_pattern(self, raw: bytes) -> str:
        """A LIST reference or pattern; ValueError if it cannot match anything."""
        return syntax.decode_pattern(raw, self.utf8)

    # -- commands that change the connection ---------------------------------------------

    def idle_point(self) -> bool:
        """True when no command runs (or IDLE waits), so unsolicited data may be sent now."""
        if self.closed or self.logged_out:
            return False
        return not self._busy or self.waiter is not None

    def wait_input(self, waiter: Waiter) -> None:
        """Give the next input item to ``waiter`` instead of the queue (IDLE)."""
        self.waiter = waiter

    def stop_waiting(self) -> None:
        """End a waiting command's wait (the connection closes)."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.stop()

    def logout(self, tag: bytes) -> None:
        """``* BYE``, the tagged OK, and close (LOGOUT)."""
        self.send(b"* BYE Logging out\r\n")
        self.tagged(tag, b"OK Logout completed.")
        self.flush()
        self.logged_out = True
        if self.transport is not None:
            self.transport.loseConnection()

    def start_compression(self) -> None:
        """Deflate from now on (COMPRESS's OK is already on the wire)."""
        self.compressed = True
        if self.transport is not None:
            self.transport = DeflateTransport(self.transport)
        self.inflater = Inflater(self.reader, self._inflate_failed)

    def _inflate_failed(self, why: str) -> None:
        self.log.info("Disconnecting: corrupt compressed input ({why})", why=why,
                      log_prefix=self.prefix)
        if self.transport is not None:
            self.transport.loseConnection()


__all__ = ["Client", "OUTPUT_BOUND", "OUTPUT_CHUNK", "SLICE", "QUEUE_MAX", "MAX_BAD_COMMANDS"]
