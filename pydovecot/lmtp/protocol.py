"""The LMTP server protocol (RFC 2033 over RFC 5321 grammar).

Parses LHLO, MAIL, RCPT, DATA, RSET, NOOP, VRFY and QUIT from the MTA,
with PIPELINING: input is parsed one command at a time and replies are
written in order even though recipient lookups and deliveries are
asynchronous.  DATA is dot-unstuffed and spooled into an anonymous file
(memfd where available) with a ``Return-Path:`` header prepended; each
accepted recipient then gets its own reply after its delivery.

Input is flow-controlled: while a lookup or a delivery is in flight the
transport is paused, so the MTA's pipelined bytes wait in the kernel, not
here: at most what was read before the pause (one read, 64 KiB) is held.

Trusts: the :class:`~pydovecot.lmtp.interfaces.IDeliveryBackend`.  The MTA's
input is bounded (command lines, recipients, message size, pending bytes)
but otherwise trusted no more than any client's; every value of it that
reaches a log line goes through :func:`pydovecot.log.sanitize`.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydovecot.lmtp.interfaces import IDeliveryBackend, TemporaryLookupFailure
from pydovecot.log import sanitize
from pydovecot.login.common import new_session_id
from pydovecot.master.protocol import DeliveryFailed
from pydovecot.stats import events

log = Logger()

MAX_COMMAND_LINE = 1000  # RFC 5321 4.5.3.1.4, with CRLF
MAX_RECIPIENTS = 1000
DATA_CHUNK = 65536  # spool partial lines over this size
ADDRESS = re.compile(r"^<([^<>\s]*)>(?:\s+(.*))?$")
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass
class Recipient:
    address: str
    fields: dict


@dataclass
class Transaction:
    sender: str
    body_8bit: bool = False
    recipients: list[Recipient] = field(default_factory=list)


def open_spool() -> IO[bytes]:
    """An anonymous read/write file for a message body."""
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("lmtp-spool", os.MFD_CLOEXEC), "w+b")
        except OSError:
            pass
    return tempfile.TemporaryFile("w+b")


def parse_path(arg: str, keyword: str) -> tuple[str, dict[str, str]] | None:
    """Parse ``FROM:<addr> PARAM=VALUE …`` into the address and parameters."""
    if arg[:len(keyword)].upper() != keyword:
        return None
    m = ADDRESS.match(arg[len(keyword):].strip())
    if m is None:
        return None
    params: dict[str, str] = {}
    for p in (m.group(2) or "").split():
        k, _, v = p.partition("=")
        params[k.upper()] = v
    return m.group(1), params


def strip_route(address: str) -> str:
    """Drop an RFC 5321 source route (``@a,@b:user@dom``)."""
    if address.startswith("@") and ":" in address:
        return address.split(":", 1)[1]
    return address


class LMTPProtocol(Protocol):
    """One LMTP connection from the MTA."""

    idle_timeout = 300.0
    factory: LMTPFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._busy = False
        self._looping = False
        self._closed = False
        self._skipping = False
        self._timer = None
        self.session_id = new_session_id()
        self.lhlo: str | None = None
        self.txn: Transaction | None = None
        # DATA state
        self._in_data = False
        self._spool: IO[bytes] | None = None
        self._data_size = 0
        self._data_too_big = False
        self._at_line_start = True
        self._header_block = b""
        self._delivery_count = 0
        self._paused = False

    @property
    def backend(self) -> IDeliveryBackend:
        return self.factory.backend

    def reply(self, line: str) -> None:
        if not self._closed:
            self.transport.write(line.encode("utf-8", "replace") + b"\r\n")

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        self._reset_timer()
        self.reply(f"220 {self.factory.hostname} pydovecot LMTP ready")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._close_spool()

    def _reset_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle_timeout)
        else:
            self._timer = self.factory.clock.callLater(self.idle_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.reply(f"421 4.4.2 {self.factory.hostname} Disconnected for inactivity")
        self.close()

    def close(self) -> None:
        self._closed = True
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._reset_timer()
        self._buffer += data
        self._process()
        self._flow()

    def _flow(self) -> None:
        """Pause reading while a lookup or delivery is in flight; resume once
        it is done and the buffer is worked off (when not busy, every byte
        read has been parsed or spooled)."""
        want_pause = self._busy
        if want_pause and not self._paused and not self._closed:
            self._paused = True
            self.transport.pauseProducing()
        elif not want_pause and self._paused:
            self._paused = False
            if not self._closed:
                self.transport.resumeProducing()

    # -- input loop ---------------------------------------------------------

    def _process(self) -> None:
        if self._looping:
            return
        self._looping = True
        try:
            while not self._busy and not self._closed:
                if self._in_data:
                    result = self._read_data()
                else:
                    result = self._read_command()
                if result is False:
                    break
                if isinstance(result, defer.Deferred):
                    self._busy = True
                    result.addErrback(self._failed)
                    result.addBoth(self._done)
        finally:
            self._looping = False

    def _failed(self, failure: Failure) -> None:
        log.failure("lmtp: internal error", failure)
        self.reply("451 4.3.0 Internal error occurred. Refer to server log for more information.")
        self.close()

    def _done(self, _: object) -> None:
        self._busy = False
        self._process()
        self._flow()

    def _read_command(self) -> object:
        i = self._buffer.find(b"\n")
        if self._skipping:
            if i < 0:
                self._buffer = b""
                return False
            self._buffer = self._buffer[i + 1:]
            self._skipping = False
            self.reply("500 5.5.2 Line too long")
            return None
        if i < 0:
            if len(self._buffer) > MAX_COMMAND_LINE:
                self._buffer = b""
                self._skipping = True
            return False
        line, self._buffer = self._buffer[:i], self._buffer[i + 1:]
        if len(line) > MAX_COMMAND_LINE:
            self.reply("500 5.5.2 Line too long")
            return None
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        name, _, arg = text.partition(" ")
        handler = getattr(self, f"cmd_{name.upper()}", None) if name.isalpha() else None
        if handler is None:
            self.reply("500 5.5.1 Unknown command")
            return None
        return handler(arg.strip())

    # -- commands -------------------------------------------------------------

    def cmd_LHLO(self, arg: str) -> None:
        if not arg:
            self.reply("501 5.5.4 Missing hostname")
            return
        self.lhlo = arg
        self.txn = None
        self.reply(f"250-{self.factory.hostname}")
        self.reply("250-8BITMIME")
        self.reply("250-ENHANCEDSTATUSCODES")
        self.reply("250-PIPELINING")
        self.reply(f"250 SIZE {self.factory.max_size}")

    def cmd_HELO(self, arg: str) -> None:
        self.reply("500 5.5.1 Use LHLO")

    cmd_EHLO = cmd_HELO

    def cmd_MAIL(self, arg: str) -> None:
        if self.lhlo is None:
            self.reply("503 5.5.1 LHLO needed first")
            return
        if self.txn is not None:
            self.reply("503 5.5.1 MAIL already given")
            return
        parsed = parse_path(arg, "FROM:")
        if parsed is None:
            self.reply("501 5.5.4 Invalid FROM: Invalid address")
            return
        sender, params = parsed
        body = params.pop("BODY", "7BIT").upper()
        size = params.pop("SIZE", None)
        if body not in ("7BIT", "8BITMIME") or params:
            self.reply("555 5.5.4 Unsupported parameters")
            return
        if size is not None:
            if not size.isdigit():
                self.reply("501 5.5.4 Invalid SIZE parameter")
                return
            if self.factory.max_size and int(size) > self.factory.max_size:
                self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                return
        self.txn = Transaction(strip_route(sender), body_8bit=body == "8BITMIME")
        self.reply("250 2.1.0 OK")

    def cmd_RCPT(self, arg: str) -> defer.Deferred | None:
        if self.txn is None:
            self.reply("503 5.5.1 MAIL needed first")
            return None
        parsed = parse_path(arg, "TO:")
        if parsed is None or not parsed[0]:
            self.reply("501 5.5.4 Invalid TO: Invalid address")
            return None
        address, params = parsed
        address = strip_route(address)
        if params:
            self.reply("555 5.5.4 Unsupported parameters")
            return None
        if len(self.txn.recipients) >= MAX_RECIPIENTS:
            self.reply("452 4.5.3 Too many recipients")
            return None
        txn = self.txn
        d = defer.maybeDeferred(self.backend.lookup, address)

        def found(fields: dict | None) -> None:
            if fields is None:
                self.reply(f"550 5.1.1 <{address}> User doesn't exist: {address}")
                return
            fields = dict(fields)
            fields.setdefault("user", address)
            txn.recipients.append(Recipient(address, fields))
            self.reply("250 2.1.5 OK")

        def failed(failure: Failure) -> None:
            if not failure.check(TemporaryLookupFailure):
                log.failure("lmtp: lookup of {address} failed", failure,
                            address=sanitize(address))
            self.reply(f"451 4.3.0 <{address}> Temporary user lookup failure")

        return d.addCallbacks(found, failed)

    def cmd_RSET(self, arg: str) -> None:
        self.txn = None
        self.reply("250 2.0.0 OK")

    def cmd_NOOP(self, arg: str) -> None:
        self.reply("250 2.0.0 OK")

    def cmd_VRFY(self, arg: str) -> None:
        self.reply("252 2.3.3 Try RCPT instead")

    def cmd_QUIT(self, arg: str) -> None:
        self.reply("221 2.0.0 OK")
        self.close()

    def cmd_DATA(self, arg: str) -> None:
        if self.txn is None:
            self.reply("503 5.5.1 MAIL needed first")
            return
        if not self.txn.recipients:
            self.reply("554 5.5.1 No valid recipients")
            self.txn = None
            return
        self._spool = open_spool()
        self._spool.write(f"Return-Path: <{self.txn.sender}>\r\n".encode("utf-8", "replace"))
        self._in_data = True
        self._data_size = 0
        self._data_too_big = False
        self._at_line_start = True
        self._header_block = b""
        self.reply("354 OK")

    # -- DATA -----------------------------------------------------------------

    def _spool_write(self, chunk: bytes) -> None:
        self._data_size += len(chunk)
        if len(self._header_block) < DATA_CHUNK:
            self._header_block += chunk[:DATA_CHUNK]
        if self.factory.max_size and self._data_size > self.factory.max_size:
            self._data_too_big = True
        if not self._data_too_big and self._spool is not None:
            self._spool.write(chunk)

    def _read_data(self) -> object:
        while True:
            i = self._buffer.find(b"\n")
            if i < 0:
                if len(self._buffer) > DATA_CHUNK:
                    # A very long line: spool it in pieces (keep a trailing CR).
                    chunk, self._buffer = self._buffer[:-1], self._buffer[-1:]
                    if self._at_line_start and chunk.startswith(b"."):
                        chunk = chunk[1:]
                    self._spool_write(chunk)
                    self._at_line_start = False
                return False
            line, self._buffer = self._buffer[:i + 1], self._buffer[i + 1:]
            if self._at_line_start:
                if line in (b".\r\n", b".\n"):
                    self._in_data = False
                    return self._end_of_data()
                if line.startswith(b"."):
                    line = line[1:]
            self._at_line_start = True
            self._spool_write(line)

    def _end_of_data(self) -> defer.Deferred | None:
        txn, self.txn = self.txn, None
        spool, self._spool = self._spool, None
        assert txn is not None and spool is not None
        if self._data_too_big:
            spool.close()
            for r in txn.recipients:
                self.reply(f"552 5.2.3 <{r.address}> Message size exceeds administrative limit")
            return None
        spool.flush()
        msgid = self._message_id()
        return self._deliver_all(txn, spool, msgid)

    def _message_id(self) -> str:
        head = self._header_block.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        m = MESSAGE_ID.search(head)
        self._header_block = b""
        if m is None:
            return "<none>"
        return m.group(1).decode("utf-8", "replace")[:200]

    @defer.inlineCallbacks
    def _deliver_all(self, txn: Transaction, spool: IO[bytes], msgid: str):
        start = time.monotonic()
        try:
            for r in txn.recipients:
                if self._closed:
                    break
                yield self._deliver_one(txn, r, spool, msgid)
        finally:
            spool.close()
            # Dovecot's event for the transaction (the stats process)
            events.emit("smtp_server_transaction_finished", duration=events.since(start),
                        mail_from=sanitize(txn.sender or "", 200), transaction_id=self.session_id,
                        recipients=len(txn.recipients), status_code="250",
                        enhanced_code="2.0.0")

    def _deliver_one(self, txn: Transaction, r: Recipient, spool: IO[bytes],
                     msgid: str) -> defer.Deferred:
        self._delivery_count += 1
        user = str(r.fields.get("user") or r.address)
        session = f"{self.session_id}:{self._delivery_count}"
        prefix = f"lmtp({sanitize(user)})<{os.getpid()}><{session}>"
        d = defer.maybeDeferred(self.backend.deliver, user, r.fields, spool.fileno(),
                                txn.sender, r.address, session=session, msgid=msgid)

        def saved(_: object) -> None:
            log.info("msgid={msgid}: saved mail to INBOX", msgid=sanitize(msgid),
                     log_prefix=prefix)
            self.reply(f"250 2.0.0 <{r.address}> {session} Saved")

        def failed(failure: Failure) -> None:
            if failure.check(DeliveryFailed):
                # Logged, with its reason, where it failed.
                code, _, rest = failure.value.reply.partition(" ")
                enhanced, _, text = rest.partition(" ")
                if not (len(code) == 3 and code[0] in "45" and code.isdigit()):
                    code, enhanced, text = "451", "4.2.0", rest
                self.reply(f"{code} {enhanced} <{r.address}> {text}")
                return
            log.failure("msgid={msgid}: save failed to INBOX", failure, msgid=sanitize(msgid),
                        log_prefix=prefix)
            self.reply(f"451 4.2.0 <{r.address}> Internal error occurred. "
                       "Refer to server log for more information.")

        return d.addCallbacks(saved, failed)

    def _close_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class LMTPFactory(Factory):
    """Builds :class:`LMTPProtocol` for the lmtp listener."""

    protocol = LMTPProtocol

    def __init__(self, backend: IDeliveryBackend, hostname: str, max_size: int,
                 clock: IReactorTime | None = None):
        from twisted.internet import reactor

        self.backend = backend
        self.hostname = hostname
        self.max_size = max_size
        self.clock = clock if clock is not None else reactor
