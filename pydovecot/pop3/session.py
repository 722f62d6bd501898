"""The POP3 session after login (TRANSACTION and UPDATE states, RFC 1939).

Built by the mail process on an adopted client connection; it trusts its
:class:`~pydovecot.session.SessionContext` and storage, and trusts nothing
the client sends: every line is length-checked and parsed strictly, and
no exception text ever reaches the client.  INBOX is snapshotted at start
(the maildrop does not change during a session).

The session shares its mail process's reactor with many others, so it
registers a push producer on its transport (buffer capped at
:data:`OUTPUT_BOUND`): while the client does not read, no further
command is run and large replies (RETR/TOP of big messages, LIST/UIDL of
many) wait between chunks; those are streamed as tasks on Twisted's
global cooperator, a chunk per step.  Pipelined commands run for at most
:data:`SLICE` seconds per reactor turn; unprocessed input is bounded
(:data:`MAX_PENDING`, then the socket is not read).  As Dovecot's pop3:
20 bad commands in a row end the session (``-ERR Too many bad
commands.``), and an idle one is logged out after ``pop3_autologout``
(10 minutes).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, BinaryIO

from twisted.internet import defer, interfaces, protocol, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydovecot.imap.capability import parse_seconds
from pydovecot.log import sanitize
from pydovecot.session import SessionContext
from pydovecot.stats import events
from pydovecot.storage.interfaces import IMailbox, IMailStorage, MessageInfo

MAX_LINE = 512
CHUNK = 65536
STREAM_ABOVE = 256 * 1024  #: replies bigger than this are streamed
OUTPUT_BOUND = 256 * 1024  #: the transport's buffer above which we stop producing
LIST_CHUNK = 1000  #: LIST/UIDL lines per step
SLICE = 0.004  #: seconds of pipelined commands per reactor turn
MAX_PENDING = 64 * 1024  #: unprocessed input above which the socket is not read
MAX_BAD_COMMANDS = 20  #: Dovecot's CLIENT_MAX_BAD_COMMANDS
AUTOLOGOUT = 10 * 60.0  #: Dovecot's CLIENT_IDLE_TIMEOUT_MSECS for pop3
OUTPUT_TIMEOUT = 5 * 60.0  #: Dovecot's CLIENT_OUTPUT_TIMEOUT_MSECS: output unread this long
DEFAULT_UIDL_FORMAT = "%08Xu%08Xv"
CAPABILITIES = ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "USER"]
INTERNAL_ERROR = b"-ERR [SYS/TEMP] Internal error occurred. Refer to server log for more information.\r\n"

_VAR = re.compile(r"%(0?)(\d*)([Xx]?)([a-zA-Z%])")


def format_uidl(fmt: str, uid: int, uidvalidity: int) -> str:
    """Expand a pop3_uidl_format (``%u`` uid, ``%v`` uidvalidity, with
    Dovecot's ``%08X`` padding and hex modifiers)."""

    def sub(m: re.Match[str]) -> str:
        zero, width, hexmod, var = m.groups()
        if var == "%":
            return "%"
        value = {"u": uid, "v": uidvalidity}.get(var)
        if value is None:
            raise ValueError(f"pop3_uidl_format variable %{var} is not supported")
        text = format(value, "X" if hexmod == "X" else "x") if hexmod else str(value)
        return text.rjust(int(width or 0), "0" if zero else " ")

    return _VAR.sub(sub, fmt)


def pop3_lines(f: BinaryIO, body_lines: int | None = None) -> Iterator[bytes]:
    """The message as POP3 sends it: CRLF line ends, dot-stuffed, ending
    with CRLF (the terminating ``.`` is not included).  With
    ``body_lines``, only the header and that many body lines (TOP)."""
    rest = b""
    in_header = True
    left = body_lines
    done = False

    def convert(lines: list[bytes]) -> list[bytes]:
        nonlocal in_header, left, done
        out = []
        for line in lines:
            if done:
                break
            if not in_header and left is not None:
                if left <= 0:
                    done = True
                    break
                left -= 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if in_header and line == b"":
                in_header = False
            out.append(b"." + line + b"\r\n" if line.startswith(b".") else line + b"\r\n")
        return out

    while not done and (chunk := f.read(CHUNK)):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        out = convert(lines)
        if out:
            yield b"".join(out)
    if rest and not done:
        out = convert([rest])
        if out:
            yield b"".join(out)


@implementer(interfaces.IPushProducer)
class _Output:
    """The session's push producer: paused while the transport's buffer is
    over the bound, resumed when it has drained."""

    def __init__(self, session: POP3Session):
        self.session = session

    def pauseProducing(self) -> None:
        self.session._output_blocked()

    def resumeProducing(self) -> None:
        self.session._output_resumed()

    def stopProducing(self) -> None:
        self.session._closing = True
        self.session._output_resumed()


def _error_line(f: Failure) -> str:
    """An unexpected exception as one bounded log line (no traceback)."""
    where = ""
    if f.frames:
        func, path, line = f.frames[-1][:3]
        where = f" at {path.rsplit('/', 1)[-1]}:{line} in {func}"
    return f"{f.type.__name__}: {sanitize(f.getErrorMessage(), 200)}{where}"


class POP3Session(protocol.Protocol):
    """One logged-in POP3 client."""

    log = Logger()

    def __init__(self, storage: IMailStorage, ctx: SessionContext):
        self.storage = storage
        self.ctx = ctx
        self.log_prefix = ctx.log_prefix("pop3")
        self.mailbox: IMailbox | None = None
        self.messages: list[MessageInfo] = []
        self.deleted: set[int] = set()  # indexes into messages
        self.retrieved: set[int] = set()
        settings = ctx.settings or {}
        self.uidl_format = str(settings.get("pop3_uidl_format") or DEFAULT_UIDL_FORMAT)
        self.autologout = parse_seconds(settings.get("pop3_autologout"), AUTOLOGOUT)
        self.clock: Any = None  # IReactorTime; the global reactor unless set
        self._buf = bytearray()
        self._skipping = False  # discarding the rest of an over-long line
        self._busy = False  # a streamed reply is in progress
        self._started = False
        self._closing = False
        self._quit = False
        self._output_paused = False
        self._reading_paused = False
        self._waiters: list[defer.Deferred[None]] = []
        self._processing = False
        self._later: Any = None  # the cooperator task continuing _process
        self._slice_end = 0.0
        self._bad_count = 0
        self._errored = False  # the current command answered -ERR
        self._autologout_call: Any = None
        self._output_call: Any = None
        self.output_timeout = OUTPUT_TIMEOUT
        self.stats = {"top": 0, "top_bytes": 0, "retr": 0, "retr_bytes": 0}

    # -- connection ---------------------------------------------------

    def _reactor(self) -> Any:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        return self.clock

    def start(self, pending: bytes = b"") -> None:
        """Greet (``+OK Logged in.``) and process pipelined ``pending``."""
        transport = self.transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = OUTPUT_BOUND
        if hasattr(transport, "registerProducer") and getattr(transport, "producer", None) is None:
            transport.registerProducer(_Output(self), True)
        self._wait_for(self.storage.open("INBOX"),
                       lambda mailbox: self._opened(mailbox, pending), self._open_failed)

    def _opened(self, mailbox: IMailbox, pending: bytes) -> None:
        if self._closing:  # the client left while the storage answered
            mailbox.close()
            return
        self.mailbox = mailbox
        try:
            self.messages = list(mailbox.messages)
            format_uidl(self.uidl_format, 1, 1)
        except Exception:
            self._open_failed(Failure())
            return
        self._started = True
        self.transport.write(b"+OK Logged in.\r\n")
        self.dataReceived(pending)

    def _open_failed(self, failure: Failure) -> None:
        if self._closing:
            return
        self.log.error("Couldn't open INBOX: {e}", e=_error_line(failure),
                       log_prefix=self.log_prefix)
        self.transport.write(b"-ERR [SYS/TEMP] Couldn't open INBOX.\r\n")
        self._close()

    def _wait_for(self, d: defer.Deferred[Any], then: Callable[[Any], None],
                  failed: Callable[[Failure], None]) -> None:
        """Go on with ``then(value)`` (or ``failed(failure)``) once the
        storage has answered; later commands wait meanwhile (``_busy``).
        An answer already in runs at once, in this reactor turn."""
        self._busy = True
        later: list[bool] = []

        def answered(result: object) -> None:
            self._busy = False
            if isinstance(result, Failure):
                failed(result)
            else:
                then(result)
            if later and not self._busy and not self._closing and self._started:
                self._slice_end = time.monotonic() + SLICE  # a new reactor turn
                self._process()

        d.addBoth(answered)
        d.addErrback(lambda f: self.log.error("POP3 command failed: {e}", e=_error_line(f),
                                              log_prefix=self.log_prefix))
        later.append(True)

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        if self._started and not self._closing:
            self._touch()
            self._slice_end = time.monotonic() + SLICE
            self._process()

    def _write(self, data: bytes) -> None:
        """A reply; an -ERR for the client's mistake counts as a bad command."""
        if data.startswith(b"-ERR") and not data.startswith(b"-ERR [SYS/"):
            self._errored = True
        self.transport.write(data)

    def _process(self) -> None:
        """Run the complete command lines received, for the rest of this
        reactor turn's slice; then go on as a cooperator task."""
        if self._processing or self._later is not None:
            return
        self._processing = True
        try:
            while not self._busy and not self._closing and not self._output_paused:
                if time.monotonic() > self._slice_end:
                    self._later = task.cooperate(self._process_later())
                    self._later.whenDone().addBoth(self._later_done)
                    return
                if not self._one_line():
                    break
        finally:
            self._processing = False
            self._flow_input()

    def _process_later(self) -> Generator[None, None, None]:
        while not self._busy and not self._closing and not self._output_paused:
            if not self._one_line():
                return
            self._flow_input()
            yield None

    def _later_done(self, _result: object) -> None:
        self._later = None
        self._slice_end = time.monotonic() + SLICE
        self._process()

    def _flow_input(self) -> None:
        """Stop reading the socket while too much input waits."""
        if self._closing:
            return
        if len(self._buf) > MAX_PENDING and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif len(self._buf) <= MAX_PENDING // 4 and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _one_line(self) -> bool:
        """Handle one line from the buffer; False if no complete line."""
        buf = self._buf
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > MAX_LINE:
                buf.clear()
                if not self._skipping:
                    self._skipping = True
                    self._write(b"-ERR Command too long\r\n")
                    self._count_bad()
            return False
        line = bytes(buf[:nl])
        del buf[: nl + 1]
        if self._skipping:
            self._skipping = False
            return True
        if len(line) > MAX_LINE:
            self._write(b"-ERR Command too long\r\n")
            self._count_bad()
            return True
        self._errored = False
        try:
            self._command(line.rstrip(b"\r"))
        except Exception:
            name = line.split(b" ", 1)[0]
            self.log.error("POP3 command {cmd} failed: {e}", cmd=sanitize(name, 20),
                           e=_error_line(Failure()), log_prefix=self.log_prefix)
            self.transport.write(INTERNAL_ERROR)
        self._count_bad()
        return True

    def _count_bad(self) -> None:
        if not self._errored:
            self._bad_count = 0
            return
        self._errored = False
        self._bad_count += 1
        if self._bad_count >= MAX_BAD_COMMANDS and not self._closing:
            self.transport.write(b"-ERR Too many bad commands.\r\n")
            self.log.info("Disconnected: Too many bad commands.", log_prefix=self.log_prefix)
            self._close()

    # -- flow control and timers --------------------------------------

    def _output_blocked(self) -> None:
        self._output_paused = True
        if self._closing or self.output_timeout <= 0:
            return
        if self._output_call is None or not self._output_call.active():
            self._output_call = self._reactor().callLater(self.output_timeout,
                                                          self._output_stuck)

    def _output_stuck(self) -> None:
        self._output_call = None
        if not self._closing:
            self.log.info("Disconnected for inactivity in reading our output",
                          log_prefix=self.log_prefix)
            self._close()

    def _output_resumed(self) -> None:
        self._output_paused = False
        if self._output_call is not None and self._output_call.active():
            self._output_call.cancel()
        self._output_call = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        if self._started and not self._closing:
            self._touch()  # the client reads our output: it is active (as Dovecot)
            self._slice_end = time.monotonic() + SLICE
            self._process()

    def _drained(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self._closing or not self._output_paused:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def _touch(self) -> None:
        if self.autologout <= 0 or self._closing:
            return
        call = self._autologout_call
        if call is not None and call.active():
            call.reset(self.autologout)
        else:
            self._autologout_call = self._reactor().callLater(self.autologout, self._inactive)

    def _inactive(self) -> None:
        self._autologout_call = None
        if self._closing:
            return
        if self._busy:  # Dovecot: the client is not reading our output
            self.log.info("Disconnected for inactivity in reading our output",
                          log_prefix=self.log_prefix)
        else:
            self.transport.write(b"-ERR Disconnected for inactivity.\r\n")
            self.log.info("Disconnected for inactivity", log_prefix=self.log_prefix)
        self._close()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._closing = True
        if self._autologout_call is not None and self._autologout_call.active():
            self._autologout_call.cancel()
        self._autologout_call = None
        self._output_resumed()  # also stops the output timer  # wakes a paused stream, which then stops
        if self._later is not None:
            try:
                self._later.stop()
            except task.TaskDone:
                pass
            self._later = None
        if self.mailbox is not None:
            self.mailbox.close()
        if not self._started:
            return
        why = "Logged out" if self._quit else "Connection closed"
        s = self.stats
        self.log.info(
            "Disconnected: {why} top={top}/{top_bytes}, retr={retr}/{retr_bytes}, "
            "del={dele}/{total}, size={size}",
            why=why, dele=len(self.deleted) if self._quit else 0, total=len(self.messages),
            size=sum(m.size for m in self.messages), log_prefix=self.log_prefix, **s,
        )

    def _close(self) -> None:
        self._closing = True
        if self._output_paused and hasattr(self.transport, "abortConnection"):
            self.transport.abortConnection()  # a client that does not read: never drains
        else:
            self.transport.loseConnection()

    # -- commands -----------------------------------------------------

    def _command(self, line: bytes) -> None:
        text = line.decode("ascii", "replace")
        name, _, args = text.partition(" ")
        name = name.upper()
        handler = getattr(self, "do_" + name, None) if name.isalpha() else None
        if handler is None:
            shown = name if name.isprintable() else "?"
            self._write(f"-ERR Unknown command: {shown}\r\n".encode())
            return
        start = time.monotonic()
        handler(args.split())
        events.emit("pop3_command_finished", duration=events.since(start), cmd_name=name,
                    user=self.ctx.user, session=self.ctx.session_id)

    def _msg(self, arg: str) -> int | None:
        """Index for a message-number argument, or None after an -ERR."""
        if not arg.isdigit() or len(arg) > 10:
            self._write(f"-ERR Invalid message number: {arg[:20]}\r\n".encode())
            return None
        n = int(arg)
        if not 1 <= n <= len(self.messages) or n - 1 in self.deleted:
            msg = "Message is deleted." if n - 1 in self.deleted else f"There's no message {n}."
            self._write(f"-ERR {msg}\r\n".encode())
            return None
        return n - 1

    def _argc(self, args: list[str], low: int, high: int) -> bool:
        if low <= len(args) <= high:
            return True
        self._write(b"-ERR Invalid arguments.\r\n")
        return False

    def do_CAPA(self, args: list[str]) -> None:
        self._write(("+OK\r\n" + "".join(c + "\r\n" for c in CAPABILITIES) + ".\r\n").encode())

    def do_NOOP(self, args: list[str]) -> None:
        self._write(b"+OK\r\n")

    def do_STAT(self, args: list[str]) -> None:
        live = [m for i, m in enumerate(self.messages) if i not in self.deleted]
        self._write(f"+OK {len(live)} {sum(m.size for m in live)}\r\n".encode())

    def do_LIST(self, args: list[str]) -> None:
        if not self._argc(args, 0, 1):
            return
        if args:
            i = self._msg(args[0])
            if i is not None:
                self._write(f"+OK {i + 1} {self.messages[i].size}\r\n".encode())
            return
        live = [i for i in range(len(self.messages)) if i not in self.deleted]
        head = f"+OK {len(live)} messages:\r\n".encode()
        self._multiline(head, live, lambda i: f"{i + 1} {self.messages[i].size}\r\n")

    def _uidl(self, i: int) -> str:
        assert self.mailbox is not None
        return format_uidl(self.uidl_format, self.messages[i].uid, self.mailbox.uidvalidity)

    def do_UIDL(self, args: list[str]) -> None:
        if not self._argc(args, 0, 1):
            return
        if args:
            i = self._msg(args[0])
            if i is not None:
                self._write(f"+OK {i + 1} {self._uidl(i)}\r\n".encode())
            return
        live = [i for i in range(len(self.messages)) if i not in self.deleted]
        self._multiline(b"+OK\r\n", live, lambda i: f"{i + 1} {self._uidl(i)}\r\n")

    def _multiline(self, head: bytes, items: list[int], line: Any) -> None:
        """A LIST/UIDL listing: at once when short, else LIST_CHUNK lines
        per cooperator step under back-pressure."""
        if len(items) <= LIST_CHUNK:
            self._write(head + "".join(line(i) for i in items).encode() + b".\r\n")
            return

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(items), LIST_CHUNK):
                yield "".join(line(i) for i in items[start : start + LIST_CHUNK]).encode()

        self._stream(head, chunks(), None)

    def do_DELE(self, args: list[str]) -> None:
        if not self._argc(args, 1, 1):
            return
        i = self._msg(args[0])
        if i is not None:
            self.deleted.add(i)
            self._write(b"+OK Marked to be deleted.\r\n")

    def do_RSET(self, args: list[str]) -> None:
        self.deleted.clear()
        self._write(b"+OK\r\n")

    def do_RETR(self, args: list[str]) -> None:
        if not self._argc(args, 1, 1):
            return
        i = self._msg(args[0])
        if i is not None:
            self._send(i, f"+OK {self.messages[i].size} octets\r\n".encode(), None)

    def do_TOP(self, args: list[str]) -> None:
        if not self._argc(args, 2, 2):
            return
        if not args[1].isdigit() or len(args[1]) > 10:
            self._write(b"-ERR Invalid number of lines.\r\n")
            return
        i = self._msg(args[0])
        if i is not None:
            self._send(i, b"+OK\r\n", int(args[1]))

    def _send(self, i: int, head: bytes, body_lines: int | None) -> None:
        assert self.mailbox is not None
        msg = self.messages[i]

        def failed(failure: Failure) -> None:
            self.log.error("Couldn't open message UID {uid}: {e}", uid=msg.uid,
                           e=_error_line(failure), log_prefix=self.log_prefix)
            self._write(b"-ERR [SYS/TEMP] Couldn't read the message.\r\n")

        self._wait_for(self.mailbox.message_file(msg.uid),
                       lambda f: self._send_file(i, head, body_lines, f), failed)

    def _send_file(self, i: int, head: bytes, body_lines: int | None, f: BinaryIO) -> None:
        msg = self.messages[i]
        if self._closing:
            f.close()
            return
        if body_lines is None:
            self.stats["retr"] += 1
            self.stats["retr_bytes"] += msg.size
            self.retrieved.add(i)
        else:
            self.stats["top"] += 1
        chunks = pop3_lines(f, body_lines)
        if msg.size <= STREAM_ABOVE:
            with f:
                data = b"".join(chunks)
            if body_lines is not None:
                self.stats["top_bytes"] += len(data)
            self._write(head + data + b".\r\n")
            return
        self._stream(head, chunks, f, body_lines is not None)

    def _stream(self, head: bytes, chunks: Iterator[bytes], f: BinaryIO | None,
                top: bool = False) -> None:
        """Send a multi-line reply a chunk per cooperator step; later
        pipelined commands wait for it."""
        self._busy = True
        self._write(head)

        def steps() -> Generator[Any, None, None]:
            try:
                for chunk in chunks:
                    if self._closing:
                        return
                    if self._output_paused:
                        yield self._drained()
                        if self._closing:
                            return
                    if top:
                        self.stats["top_bytes"] += len(chunk)
                    self.transport.write(chunk)
                    yield None
                self.transport.write(b".\r\n")
            finally:
                if f is not None:
                    f.close()

        task.cooperate(steps()).whenDone().addBoth(self._stream_done)

    def _stream_done(self, result: object = None) -> None:
        if isinstance(result, Failure):
            self.log.error("Sending a reply failed: {e}", e=_error_line(result),
                           log_prefix=self.log_prefix)
            self._close()
        self._busy = False
        if not self._closing:
            self._slice_end = time.monotonic() + SLICE
            self._process()

    def do_QUIT(self, args: list[str]) -> None:
        assert self.mailbox is not None
        self._quit = True
        dele = [self.messages[i].uid for i in sorted(self.deleted)]
        seen = [self.messages[i].uid for i in sorted(self.retrieved - self.deleted)]

        def failed(failure: Failure) -> None:
            self.log.error("POP3 UPDATE failed: {e}", e=_error_line(failure),
                           log_prefix=self.log_prefix)
            self._write(b"-ERR [SYS/TEMP] Couldn't update the mailbox.\r\n")
            self._close()

        def done(_: object) -> None:
            self._write(b"+OK Logging out.\r\n")
            self._close()

        self._wait_for(defer.Deferred.fromCoroutine(self._update(self.mailbox, seen, dele)),
                       done, failed)

    @staticmethod
    async def _update(mailbox: IMailbox, seen: list[int], dele: list[int]) -> None:
        """The UPDATE state: \\Seen for what was retrieved, DELE expunged."""
        if seen:
            await mailbox.store(seen, ["\\Seen"], "+")
        if dele:
            await mailbox.store(dele, ["\\Deleted"], "+")
            await mailbox.expunge(dele)
