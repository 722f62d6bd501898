"""The LMTP server protocol (RFC 2033 over RFC 5321 grammar).

Parses LHLO, MAIL, RCPT, DATA, BDAT (CHUNKING, RFC 3030), RSET, NOOP,
VRFY, STARTTLS, XCLIENT and QUIT from the MTA, with PIPELINING: input is
parsed one command at a time and replies are written in order even though
recipient lookups and deliveries are asynchronous.  DATA is dot-unstuffed
(BDAT is taken as it is) and spooled into an anonymous file (memfd where
available) behind the headers Dovecot's lmtp adds (``Return-Path:``,
``Delivered-To:`` per ``lmtp_hdr_delivery_address``, ``Received:`` per
``lmtp_add_received_header``); each accepted recipient then gets its own
reply after its delivery.  Replies are worded as Dovecot 2.3's lmtp words
them (tests/test_lmtp_dovecot.py compares both).

Extensions beyond Dovecot 2.3's lmtp (which refuses them): SIZE, DSN
(RET, ENVID, NOTIFY; ORCPT is Dovecot's too) and SMTPUTF8 are advertised
and their parameters accepted.

Input is flow-controlled: while a lookup or a delivery is in flight the
transport is paused, so the MTA's pipelined bytes wait in the kernel, not
here: at most what was read before the pause (one read, 64 KiB) is held.

Trusts: the :class:`~pydovecot.lmtp.interfaces.IDeliveryBackend`.  The MTA's
input is bounded (command lines, recipients, message size, pending bytes)
but otherwise trusted no more than any client's; every value of it that
reaches a log line goes through :func:`pydovecot.log.sanitize`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydovecot.lmtp.interfaces import IDeliveryBackend, TemporaryLookupFailure
from pydovecot.log import sanitize
from pydovecot.login.common import new_session_id, parse_networks
from pydovecot.master.protocol import DeliveryFailed
from pydovecot.stats import events

log = Logger()

MAX_COMMAND_LINE = 1000  # RFC 5321 4.5.3.1.4, with CRLF
MAX_RECIPIENTS = 1000
DATA_CHUNK = 65536  # spool partial lines over this size
ADDRESS = re.compile(r"^<([^<>\s]*)>(?:\s+(.*))?$")
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
XTEXT = re.compile(r"\+([0-9A-F]{2})")
#: XCLIENT fields Dovecot 2.3 advertises (FORWARD/SESSION/PROTO are taken
#: and ignored, as Dovecot's lmtp ignores what it does not use).
XCLIENT_FIELDS = "ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT"
MAIL_PARAMS = frozenset({"BODY", "SIZE", "SMTPUTF8", "RET", "ENVID", "AUTH"})
RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})


@dataclass
class Recipient:
    address: str
    fields: dict
    orcpt: str | None = None
    notify: str | None = None
    user: str = ""
    index: int = 1  # Dovecot's: counts every RCPT that got past the syntax


@dataclass
class Transaction:
    sender: str
    body_8bit: bool = False
    recipients: list[Recipient] = field(default_factory=list)
    size: int = 0
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    number: int = 1
    chunked: bool = False  # BDAT started
    rcpt_count: int = 0


@dataclass
class LMTPSettings:
    """What the lmtp service's settings say (see :meth:`from_config`)."""

    hostname: str = "localhost"
    max_size: int = 0  # 0: no limit
    greeting: str = "Dovecot ready."
    hdr_delivery_address: str = "final"  # final | original | none
    add_received_header: bool = True
    rcpt_check_quota: bool = False
    user_concurrency_limit: int = 0
    trusted_networks: list = field(default_factory=list)
    tls_context: Any = None

    @classmethod
    def from_config(cls, config, hostname: str, max_size: int,
                    tls_context: Any = None) -> LMTPSettings:
        def get(key: str) -> str:
            return config.get(key, protocol="lmtp")

        return cls(hostname=hostname, max_size=max_size,
                   greeting=get("login_greeting"),
                   hdr_delivery_address=get("lmtp_hdr_delivery_address") or "none",
                   add_received_header=config.get_bool("lmtp_add_received_header", "lmtp"),
                   rcpt_check_quota=config.get_bool("lmtp_rcpt_check_quota", "lmtp"),
                   user_concurrency_limit=config.get_int("lmtp_user_concurrency_limit",
                                                         "lmtp"),
                   trusted_networks=parse_networks(config.get_list("login_trusted_networks")),
                   tls_context=tls_context)


def open_spool() -> IO[bytes]:
    """An anonymous read/write file for a message body."""
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("lmtp-spool", os.MFD_CLOEXEC), "w+b")
        except OSError:
            pass
    return tempfile.TemporaryFile("w+b")


def parse_path(arg: str, keyword: str) -> tuple[str, dict[str, str]] | str:
    """Parse ``FROM:<addr> PARAM=VALUE …`` into the address and parameters,
    or the reason (Dovecot's words) it is invalid."""
    if arg[:len(keyword)].upper() != keyword:
        return "Invalid parameters"
    rest = arg[len(keyword):].strip()
    if not rest.startswith("<"):
        return "Missing '<' at beginning of path"
    m = ADDRESS.match(rest)
    if m is None:
        return "Invalid address"
    params: dict[str, str] = {}
    for p in (m.group(2) or "").split():
        k, _, v = p.partition("=")
        params[k.upper()] = v
    return m.group(1), params


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext (``+2B`` is ``+``)."""
    return XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


def strip_route(address: str) -> str:
    """Drop an RFC 5321 source route (``@a,@b:user@dom``)."""
    if address.startswith("@") and ":" in address:
        return address.split(":", 1)[1]
    return address


def message_date(when: float | None = None) -> str:
    """An RFC 5322 date as Dovecot's message_date_create writes it."""
    t = time.localtime(when)
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
              "Nov", "Dec")
    return (f"{days[t.tm_wday]}, {t.tm_mday:02d} {months[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} " + time.strftime("%z", t))


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
        self._txn_count = 0
        # connection (XCLIENT may replace these)
        self.remote_ip = ""
        self.remote_port = 0
        self.login: str | None = None
        self.tls = False
        self.trusted = False
        # DATA state
        self._in_data = False
        self._bdat_left = 0  # octets of the current BDAT chunk still to read
        self._bdat_last = False
        self._bdat_size = 0
        self._bdat_discard = False
        #: a BDAT failed: DATA/BDAT refused until RSET or LHLO (Dovecot's)
        self._chunk_failed = False
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

    @property
    def settings(self) -> LMTPSettings:
        return self.factory.settings

    def reply(self, line: str) -> None:
        if not self._closed:
            self.transport.write(line.encode("utf-8", "replace") + b"\r\n")

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        if isinstance(host, str):
            self.remote_ip, self.remote_port = host, int(getattr(peer, "port", 0) or 0)
        self.trusted = self._in_trusted_networks(self.remote_ip)
        self._reset_timer()
        self._greet()

    def _greet(self) -> None:
        self.reply(f"220 {self.settings.hostname} {self.settings.greeting}")

    def _in_trusted_networks(self, ip: str) -> bool:
        """Dovecot's lmtp trusts login_trusted_networks only (no loopback
        implied; a UNIX socket has no address)."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == n.version and addr in n
                   for n in self.settings.trusted_networks)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._close_spool()
        self._end_transaction()

    def _reset_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle_timeout)
        else:
            self._timer = self.factory.clock.callLater(self.idle_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.reply(f"421 4.4.2 {self.settings.hostname} Disconnected for inactivity")
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
                if self._bdat_left:
                    result = self._read_chunk()
                elif self._in_data:
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

    def capabilities(self) -> list[str]:
        caps = ["8BITMIME", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES", "PIPELINING"]
        if self.settings.max_size:
            caps.append(f"SIZE {self.settings.max_size}")
        else:
            caps.append("SIZE")
        caps.append("SMTPUTF8")
        if self.settings.tls_context is not None and not self.tls:
            caps.append("STARTTLS")
        if self.trusted:
            caps.append(f"XCLIENT {XCLIENT_FIELDS}")
        return caps

    def cmd_LHLO(self, arg: str) -> None:
        if not arg:
            self.reply("501 Missing hostname")
            return
        self.lhlo = arg
        self._end_transaction()
        self._chunk_failed = False
        self.reply(f"250-{self.settings.hostname}")
        caps = self.capabilities()
        for cap in caps[:-1]:
            self.reply(f"250-{cap}")
        self.reply(f"250 {caps[-1]}")

    def cmd_STARTTLS(self, arg: str) -> None:
        if self.tls:
            self.reply("502 5.5.1 TLS is already active.")
            return
        if self.settings.tls_context is None:
            self.reply("502 5.5.1 TLS support is not enabled.")
            return
        if arg:
            self.reply("501 5.5.4 Invalid parameters")
            return
        if self.txn is not None:
            self.reply("503 5.5.0 Bad sequence of commands")
            return
        self.reply("220 2.0.0 Begin TLS negotiation now.")
        self._buffer = b""  # RFC 3207: nothing pipelined past STARTTLS
        self.transport.startTLS(self.settings.tls_context)
        self.tls = True
        self.lhlo = None

    def cmd_XCLIENT(self, arg: str) -> None:
        if not self.trusted:
            self.reply("550 5.7.14 You are not from trusted IP")
            return
        if self.txn is not None:
            self.reply("503 5.5.0 MAIL transaction active")
            return
        values: dict[str, str] = {}
        for p in arg.split():
            k, eq, v = p.partition("=")
            if not eq:
                self.reply("501 5.5.4 Invalid parameters")
                return
            values[k.upper()] = xtext_decode(v)
        addr = values.get("ADDR")
        if addr is not None and addr.upper() not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
            raw = addr[5:] if addr.upper().startswith("IPV6:") else addr
            try:
                ipaddress.ip_address(raw)
            except ValueError:
                self.reply("501 5.5.4 Invalid ADDR parameter")
                return
            values["ADDR"] = raw
        for key in ("PORT", "TTL", "TIMEOUT"):
            v = values.get(key)
            if v is not None and v.upper() not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]") and (
                    not v.isdigit() or (key == "PORT" and int(v) > 65535)):
                self.reply(f"501 5.5.4 Invalid {key} parameter")
                return
        if "ADDR" in values and not values["ADDR"].startswith("["):
            self.remote_ip = values["ADDR"]
        if values.get("PORT", "").isdigit():
            self.remote_port = int(values["PORT"])
        helo = values.get("HELO")
        if helo is not None and not helo.startswith("["):
            self.lhlo = helo
        if values.get("LOGIN") and not values["LOGIN"].startswith("["):
            self.login = values["LOGIN"]
        if values.get("TIMEOUT", "").isdigit() and int(values["TIMEOUT"]) > 0:
            self.idle_timeout = float(values["TIMEOUT"])
            self._reset_timer()
        # Still trusted: XCLIENT may be repeated by the proxy that sent it.
        self._greet()

    def cmd_HELO(self, arg: str) -> None:
        self.reply("500 5.5.1 Unknown command")

    cmd_EHLO = cmd_HELO

    def cmd_MAIL(self, arg: str) -> None:
        if self.txn is not None:
            self.reply("503 5.5.0 MAIL already given")
            return
        parsed = parse_path(arg, "FROM:")
        if isinstance(parsed, str):
            self.reply(f"501 5.5.4 Invalid FROM: {parsed}")
            return
        sender, params = parsed
        if set(params) - MAIL_PARAMS:
            self.reply("555 5.5.4 Unsupported parameters")
            return
        body = params.get("BODY", "7BIT").upper()
        if body not in ("7BIT", "8BITMIME"):
            self.reply("555 5.5.4 Unsupported mail BODY type")
            return
        size = params.get("SIZE")
        if size is not None:
            if not size.isdigit():
                self.reply("501 5.5.4 Invalid SIZE parameter")
                return
            if self.settings.max_size and int(size) > self.settings.max_size:
                self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                return
        if "SMTPUTF8" in params and params["SMTPUTF8"]:
            self.reply("501 5.5.4 Unexpected value for SMTPUTF8 parameter")
            return
        if "SMTPUTF8" not in params and not sender.isascii():
            self.reply("553 5.6.7 Non-ASCII address requires SMTPUTF8")
            return
        ret = params.get("RET")
        if ret is not None and ret.upper() not in ("FULL", "HDRS"):
            self.reply("501 5.5.4 Invalid RET parameter")
            return
        self._txn_count += 1
        self.txn = Transaction(strip_route(sender), body_8bit=body == "8BITMIME",
                               size=int(size) if size else 0,
                               smtputf8="SMTPUTF8" in params,
                               ret=ret.upper() if ret else None,
                               envid=xtext_decode(params["ENVID"]) if "ENVID" in params
                               else None, number=self._txn_count)
        self.reply("250 2.1.0 OK")

    def cmd_RCPT(self, arg: str) -> defer.Deferred | None:
        if self.txn is None:
            self.reply("503 5.5.0 MAIL needed first")
            return None
        parsed = parse_path(arg, "TO:")
        if isinstance(parsed, str):
            self.reply(f"501 5.5.4 Invalid TO: {parsed}")
            return None
        if not parsed[0]:
            self.reply("501 5.5.4 Invalid TO: Null path not allowed")
            return None
        address, params = parsed
        address = strip_route(address)
        if set(params) - RCPT_PARAMS:
            self.reply("555 5.5.4 Unsupported parameters")
            return None
        if not address.isascii() and not self.txn.smtputf8:
            self.reply("553 5.6.7 Non-ASCII address requires SMTPUTF8")
            return None
        orcpt = None
        if "ORCPT" in params:
            kind, semi, value = params["ORCPT"].partition(";")
            if not semi or not kind:
                self.reply("501 5.5.4 Invalid ORCPT parameter")
                return None
            value = xtext_decode(value)
            orcpt = value if kind.lower() in ("rfc822", "utf-8") else None
        notify = params.get("NOTIFY")
        if notify is not None:
            words = {w.upper() for w in notify.split(",")}
            if not words <= {"NEVER", "SUCCESS", "FAILURE", "DELAY"} or (
                    "NEVER" in words and len(words) > 1):
                self.reply("501 5.5.4 Invalid NOTIFY parameter")
                return None
        if len(self.txn.recipients) >= MAX_RECIPIENTS:
            self.reply("452 4.5.3 Too many recipients")
            return None
        txn = self.txn
        txn.rcpt_count += 1
        index = txn.rcpt_count
        d = defer.maybeDeferred(self.backend.lookup, address)

        def found(fields: dict | None):
            if fields is None:
                self.reply(f"550 5.1.1 <{address}> User doesn't exist: {address}")
                return None
            fields = dict(fields)
            fields.setdefault("user", address)
            user = str(fields["user"])
            limit = self.settings.user_concurrency_limit
            if limit and self.factory.user_deliveries.get(user, 0) >= limit:
                self.reply(f"451 4.3.0 <{address}> Too many concurrent deliveries for user")
                return None
            rcpt = Recipient(address, fields, orcpt=orcpt, notify=notify, user=user,
                             index=index)
            if not self.settings.rcpt_check_quota:
                return accept(rcpt)
            q = defer.maybeDeferred(self.backend.check_quota, user, fields, txn.size)
            return q.addCallback(quota_checked, rcpt)

        def quota_checked(text: str | None, rcpt: Recipient) -> None:
            if text:
                self.reply(text)
                return
            accept(rcpt)

        def accept(rcpt: Recipient) -> None:
            if self.txn is not txn:  # the transaction ended meanwhile
                return
            txn.recipients.append(rcpt)
            self.factory.user_deliveries[rcpt.user] = \
                self.factory.user_deliveries.get(rcpt.user, 0) + 1
            self.reply("250 2.1.5 OK")

        def failed(failure: Failure) -> None:
            if not failure.check(TemporaryLookupFailure):
                log.failure("lmtp: lookup of {address} failed", failure,
                            address=sanitize(address))
            self.reply(f"451 4.3.0 <{address}> Temporary user lookup failure")

        return d.addCallback(found).addErrback(failed)

    def _end_transaction(self) -> None:
        """Forget the transaction; its recipients stop counting against
        lmtp_user_concurrency_limit."""
        txn, self.txn = self.txn, None
        if txn is not None:
            self._release(txn)
        self._bdat_discard = False
        if self._spool is not None and not self._in_data:
            self._close_spool()

    def _release(self, txn: Transaction) -> None:
        counts = self.factory.user_deliveries
        for r in txn.recipients:
            n = counts.get(r.user, 0) - 1
            if n > 0:
                counts[r.user] = n
            else:
                counts.pop(r.user, None)
        txn.recipients = []

    def cmd_RSET(self, arg: str) -> None:
        self._end_transaction()
        self._chunk_failed = False
        self.reply("250 2.0.0 OK")

    def cmd_NOOP(self, arg: str) -> None:
        self.reply("250 2.0.0 OK")

    def cmd_VRFY(self, arg: str) -> None:
        self.reply("252 2.3.3 Try RCPT instead")

    def cmd_QUIT(self, arg: str) -> None:
        self.reply("221 2.0.0 Bye")
        self.close()

    def _data_allowed(self, chunking: bool) -> bool:
        if self._chunk_failed:
            self.reply("503 5.5.0 Previous data chunk failed, issue RSET first")
            return False
        if self.txn is None:
            self.reply("503 5.5.0 MAIL needed first")
            return False
        if self.txn.chunked and not chunking:
            self.reply("503 5.5.0 Bad sequence of commands")
            return False
        if not self.txn.recipients:
            self.reply("503 5.5.0 No valid recipients")
            return False
        return True

    def _start_spool(self) -> None:
        self._spool = open_spool()
        self._data_size = 0
        self._data_too_big = False
        self._at_line_start = True
        self._header_block = b""

    def cmd_DATA(self, arg: str) -> None:
        if not self._data_allowed(False):
            return
        self._start_spool()
        self._in_data = True
        self.reply("354 OK")

    def cmd_BDAT(self, arg: str) -> object:
        words = arg.split()
        if not words or not words[0].isdigit() or len(words[0]) > 19:
            self.reply("501 5.5.4 Invalid chunk size parameter")
            return None
        size = int(words[0])
        if len(words) > 2 or (len(words) == 2 and words[1].upper() != "LAST"):
            self.reply("501 5.5.4 Invalid end marker parameter")
            self._discard(size)
            return None
        last = len(words) == 2
        if not self._data_allowed(True):
            self._chunk_failed = True
            self._discard(size)
            return None
        assert self.txn is not None
        if not self.txn.chunked:
            self.txn.chunked = True
            self._start_spool()
        self._bdat_left, self._bdat_last, self._bdat_size = size, last, size
        if size == 0:
            return self._chunk_done()
        return None

    def _discard(self, size: int) -> None:
        """Skip a refused chunk's octets (the MTA sends them regardless)."""
        self._bdat_discard = size > 0
        self._bdat_left = size
        self._bdat_last = False

    def _read_chunk(self) -> object:
        if not self._buffer:
            return False
        take = self._buffer[:self._bdat_left]
        self._buffer = self._buffer[len(take):]
        self._bdat_left -= len(take)
        if not self._bdat_discard:
            self._spool_write(take)
        if self._bdat_left:
            return False
        if self._bdat_discard:
            self._bdat_discard = False
            return None
        return self._chunk_done()

    def _chunk_done(self) -> object:
        if self._bdat_last:
            return self._end_of_data()
        if self._data_too_big and self.txn is not None:
            self._chunk_failed = True
            self._close_spool()
            self.reply("552 5.3.4 Message size exceeds administrative limit")
            return None
        self.reply(f"250 2.0.0 Added {self._bdat_size} octets")
        return None

    # -- DATA -----------------------------------------------------------------

    def _spool_write(self, chunk: bytes) -> None:
        self._data_size += len(chunk)
        if len(self._header_block) < DATA_CHUNK:
            self._header_block += chunk[:DATA_CHUNK]
        if self.settings.max_size and self._data_size > self.settings.max_size:
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

    def transaction_id(self, txn: Transaction) -> str:
        """Dovecot's: the session id, then ``:T<n>`` from the second one."""
        return self.session_id if txn.number == 1 else f"{self.session_id}:T{txn.number}"

    def added_headers(self, txn: Transaction) -> bytes:
        """Return-Path, Delivered-To and Received as Dovecot 2.3's lmtp
        writes them (lmtp_local_add_headers, smtp_server_transaction_write_
        trace_record): the per-recipient ones only for a lone recipient."""
        s = self.settings
        out = [f"Return-Path: <{txn.sender}>\r\n"]
        rcpt_to = trace_for = None
        if len(txn.recipients) == 1:
            r = txn.recipients[0]
            if s.hdr_delivery_address == "final":
                rcpt_to = trace_for = r.address
            elif s.hdr_delivery_address == "original":
                # Dovecot: Delivered-To only from ORCPT; Received's "for"
                # falls back to the final address.
                rcpt_to, trace_for = r.orcpt, r.orcpt or r.address
        if rcpt_to is not None:
            out.append(f"Delivered-To: {rcpt_to}\r\n")
        if s.add_received_header:
            rec = f"Received: from {self.lhlo or 'unknown'}"
            if self.remote_ip:
                rec += f" ([{self.remote_ip}])"
            tls = self._tls_description()
            if tls:
                rec += f"\r\n\t({tls})"
            rec += f"\r\n\tby {s.hostname} with {'LMTPS' if self.tls else 'LMTP'}"
            rec += f"\r\n\tid {self.transaction_id(txn)}"
            rec += f"\r\n\t(envelope-from <{txn.sender}>)"
            if trace_for is not None:
                rec += f"\r\n\tfor <{trace_for}>"
            rec += f"; {message_date()}\r\n"
            out.append(rec)
        return "".join(out).encode("utf-8", "replace")

    def _tls_description(self) -> str:
        if not self.tls:
            return ""
        try:
            conn = self.transport.getHandle()
            name, bits = conn.get_cipher_name(), conn.get_cipher_bits()
            return (f"using {conn.get_protocol_version_name()} with cipher {name} "
                    f"({bits}/{bits} bits)")
        except Exception:
            return "using TLS"

    def _end_of_data(self) -> defer.Deferred | None:
        txn = self.txn
        spool, self._spool = self._spool, None
        self._bdat_left, self._bdat_last = 0, False
        assert txn is not None and spool is not None
        self.txn = None
        if self._data_too_big:
            spool.close()
            for r in txn.recipients:
                self.reply(f"552 5.2.3 <{r.address}> Message size exceeds administrative limit")
            self._release(txn)
            return None
        spool.flush()
        msgid = self._message_id()
        # The headers go in front: copy the body behind them (one spool).
        final = open_spool()
        final.write(self.added_headers(txn))
        spool.seek(0)
        while True:
            block = spool.read(DATA_CHUNK)
            if not block:
                break
            final.write(block)
        spool.close()
        final.flush()
        return self._deliver_all(txn, final, msgid)

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
                yield self._deliver_one(txn, r, r.index, spool, msgid)
        finally:
            spool.close()
            count = len(txn.recipients)
            self._release(txn)
            # Dovecot's event for the transaction (the stats process)
            events.emit("smtp_server_transaction_finished", duration=events.since(start),
                        mail_from=sanitize(txn.sender or "", 200), transaction_id=self.session_id,
                        recipients=count, status_code="250",
                        enhanced_code="2.0.0")

    def _deliver_one(self, txn: Transaction, r: Recipient, n: int, spool: IO[bytes],
                     msgid: str) -> defer.Deferred:
        self._delivery_count += 1
        user = str(r.fields.get("user") or r.address)
        session = self.transaction_id(txn) + (f":R{n}" if n > 1 else "")
        prefix = f"lmtp({sanitize(user)})<{os.getpid()}><{session}>"
        d = defer.maybeDeferred(self.backend.deliver, user, r.fields, spool.fileno(),
                                txn.sender, r.address, session=session, msgid=msgid,
                                orig_recipient=r.orcpt)

        def saved(mailbox: object) -> None:
            where = mailbox if isinstance(mailbox, str) and mailbox else "INBOX"
            log.info("msgid={msgid}: saved mail to {where}", msgid=sanitize(msgid),
                     where=sanitize(where), log_prefix=prefix)
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
                 clock: IReactorTime | None = None, settings: LMTPSettings | None = None):
        from twisted.internet import reactor

        self.backend = backend
        self.settings = settings or LMTPSettings(hostname=hostname, max_size=max_size)
        self.hostname = self.settings.hostname
        self.max_size = self.settings.max_size
        self.clock = clock if clock is not None else reactor
        #: user -> recipients in open transactions (lmtp_user_concurrency_limit)
        self.user_deliveries: dict[str, int] = {}
