"""The POP3 session after login (TRANSACTION and UPDATE states, RFC 1939).

Built by the mail process on an adopted client connection; it trusts its
:class:`~pydovecot.session.SessionContext` and storage, and trusts nothing
the client sends: every line is length-checked and parsed strictly, and
no exception text ever reaches the client.  INBOX is snapshotted at start
(the maildrop does not change during a session).  Replies are written
with one ``transport.write`` each; large RETR/TOP replies are streamed as
a push producer, and later pipelined commands wait for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from twisted.internet import interfaces, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydovecot.session import SessionContext
from pydovecot.storage.interfaces import IMailbox, IMailStorage, MessageInfo

MAX_LINE = 512
CHUNK = 65536
STREAM_ABOVE = 256 * 1024  #: replies bigger than this are streamed
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
class _Streamer:
    """Writes one multi-line reply in chunks, pausing with the transport."""

    def __init__(self, session: POP3Session, head: bytes, chunks: Iterator[bytes], f: BinaryIO):
        self.session = session
        self.pending = head
        self.chunks = chunks
        self.file = f
        self.paused = False
        self.finished = False

    def start(self) -> None:
        self.session.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        transport = self.session.transport
        while not self.paused and not self.finished:
            chunk = next(self.chunks, None)
            if chunk is None:
                self._finish(self.pending + b".\r\n")
                return
            transport.write(self.pending + chunk)
            self.pending = b""

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.finished = True
        self.file.close()

    def _finish(self, tail: bytes) -> None:
        self.finished = True
        self.file.close()
        transport = self.session.transport
        transport.write(tail)
        transport.unregisterProducer()
        self.session._stream_done()


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
        self.uidl_format = str(ctx.settings.get("pop3_uidl_format") or DEFAULT_UIDL_FORMAT)
        self._buf = b""
        self._skipping = False  # discarding the rest of an over-long line
        self._busy = False  # a streamed reply is in progress
        self._started = False
        self._closing = False
        self._quit = False
        self.stats = {"top": 0, "top_bytes": 0, "retr": 0, "retr_bytes": 0}

    # -- connection ---------------------------------------------------

    def start(self, pending: bytes = b"") -> None:
        """Greet (``+OK Logged in.``) and process pipelined ``pending``."""
        try:
            self.mailbox = self.storage.open("INBOX")
            self.messages = list(self.mailbox.messages)
            format_uidl(self.uidl_format, 1, 1)
        except Exception:
            self.log.failure("Couldn't open INBOX", log_prefix=self.log_prefix)
            self.transport.write(b"-ERR [SYS/TEMP] Couldn't open INBOX.\r\n")
            self._close()
            return
        self._started = True
        self.transport.write(b"+OK Logged in.\r\n")
        self.dataReceived(pending)

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        if self._started:
            self._process()

    def _process(self) -> None:
        while not self._busy and not self._closing:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf = b""
                    if not self._skipping:
                        self._skipping = True
                        self.transport.write(b"-ERR Command too long\r\n")
                return
            line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > MAX_LINE:
                self.transport.write(b"-ERR Command too long\r\n")
                continue
            try:
                self._command(line.rstrip(b"\r"))
            except Exception:
                self.log.failure("POP3 command failed", log_prefix=self.log_prefix)
                self.transport.write(INTERNAL_ERROR)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._closing = True
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
        self.transport.loseConnection()

    # -- commands -----------------------------------------------------

    def _command(self, line: bytes) -> None:
        text = line.decode("ascii", "replace")
        name, _, args = text.partition(" ")
        name = name.upper()
        handler = getattr(self, "do_" + name, None) if name.isalpha() else None
        if handler is None:
            shown = name if name.isprintable() else "?"
            self.transport.write(f"-ERR Unknown command: {shown}\r\n".encode())
            return
        handler(args.split())

    def _msg(self, arg: str) -> int | None:
        """Index for a message-number argument, or None after an -ERR."""
        if not arg.isdigit() or len(arg) > 10:
            self.transport.write(f"-ERR Invalid message number: {arg[:20]}\r\n".encode())
            return None
        n = int(arg)
        if not 1 <= n <= len(self.messages) or n - 1 in self.deleted:
            msg = "Message is deleted." if n - 1 in self.deleted else f"There's no message {n}."
            self.transport.write(f"-ERR {msg}\r\n".encode())
            return None
        return n - 1

    def _argc(self, args: list[str], low: int, high: int) -> bool:
        if low <= len(args) <= high:
            return True
        self.transport.write(b"-ERR Invalid arguments.\r\n")
        return False

    def do_CAPA(self, args: list[str]) -> None:
        self.transport.write(("+OK\r\n" + "".join(c + "\r\n" for c in CAPABILITIES) + ".\r\n").encode())

    def do_NOOP(self, args: list[str]) -> None:
        self.transport.write(b"+OK\r\n")

    def do_STAT(self, args: list[str]) -> None:
        live = [m for i, m in enumerate(self.messages) if i not in self.deleted]
        self.transport.write(f"+OK {len(live)} {sum(m.size for m in live)}\r\n".encode())

    def do_LIST(self, args: list[str]) -> None:
        if not self._argc(args, 0, 1):
            return
        if args:
            i = self._msg(args[0])
            if i is not None:
                self.transport.write(f"+OK {i + 1} {self.messages[i].size}\r\n".encode())
            return
        lines = [f"{i + 1} {m.size}\r\n" for i, m in enumerate(self.messages) if i not in self.deleted]
        head = f"+OK {len(lines)} messages:\r\n"
        self.transport.write((head + "".join(lines) + ".\r\n").encode())

    def _uidl(self, i: int) -> str:
        assert self.mailbox is not None
        return format_uidl(self.uidl_format, self.messages[i].uid, self.mailbox.uidvalidity)

    def do_UIDL(self, args: list[str]) -> None:
        if not self._argc(args, 0, 1):
            return
        if args:
            i = self._msg(args[0])
            if i is not None:
                self.transport.write(f"+OK {i + 1} {self._uidl(i)}\r\n".encode())
            return
        lines = [f"{i + 1} {self._uidl(i)}\r\n" for i in range(len(self.messages))
                 if i not in self.deleted]
        self.transport.write(("+OK\r\n" + "".join(lines) + ".\r\n").encode())

    def do_DELE(self, args: list[str]) -> None:
        if not self._argc(args, 1, 1):
            return
        i = self._msg(args[0])
        if i is not None:
            self.deleted.add(i)
            self.transport.write(b"+OK Marked to be deleted.\r\n")

    def do_RSET(self, args: list[str]) -> None:
        self.deleted.clear()
        self.transport.write(b"+OK\r\n")

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
            self.transport.write(b"-ERR Invalid number of lines.\r\n")
            return
        i = self._msg(args[0])
        if i is not None:
            self._send(i, b"+OK\r\n", int(args[1]))

    def _send(self, i: int, head: bytes, body_lines: int | None) -> None:
        assert self.mailbox is not None
        msg = self.messages[i]
        try:
            f = self.mailbox.message_file(msg.uid)
        except Exception:
            self.log.failure("Couldn't open message UID {uid}", uid=msg.uid,
                             log_prefix=self.log_prefix)
            self.transport.write(b"-ERR [SYS/TEMP] Couldn't read the message.\r\n")
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
            self.transport.write(head + data + b".\r\n")
            return
        self._busy = True
        self.transport.pauseProducing()
        _Streamer(self, head, chunks, f).start()

    def _stream_done(self) -> None:
        self._busy = False
        if not self._closing:
            self.transport.resumeProducing()
            self._process()

    def do_QUIT(self, args: list[str]) -> None:
        assert self.mailbox is not None
        self._quit = True
        dele = [self.messages[i].uid for i in sorted(self.deleted)]
        seen = [self.messages[i].uid for i in sorted(self.retrieved - self.deleted)]
        try:
            if seen:
                self.mailbox.store(seen, ["\\Seen"], "+")
            if dele:
                self.mailbox.store(dele, ["\\Deleted"], "+")
                self.mailbox.expunge(dele)
        except Exception:
            self.log.failure("POP3 UPDATE failed", log_prefix=self.log_prefix)
            self.transport.write(b"-ERR [SYS/TEMP] Couldn't update the mailbox.\r\n")
            self._close()
            return
        self.transport.write(b"+OK Logging out.\r\n")
        self._close()
