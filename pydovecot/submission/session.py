"""The authenticated SMTP submission session (RFC 6409), served in the user's mail process.

After submission-login's AUTH, the session greets with ``235 2.7.0 Logged
in.`` and serves EHLO/HELO, MAIL, RCPT, DATA, BDAT (CHUNKING), BURL imap
(RFC 4468, URLAUTH through the user's own storage), RSET, NOOP, QUIT and
VRFY.  MAIL and RCPT are relayed at once to ``submission_relay_host`` and
the relay's replies passed back; the message is spooled to an unlinked
temporary file (bounded by ``submission_max_mail_size``) and streamed to
the relay, whose final reply the client gets.

Flow control: one command at a time; while it waits (relay, storage) the
client is not read, and while the client does not read our replies (the
transport's buffer is full) no further command is processed.  So a
session holds at most one input line plus a socket buffer in memory.

Trusts: the session context (user, from the master) and the user's storage.
Does not trust: client bytes, URLs, and the relay's replies beyond framing.
"""

from __future__ import annotations

import re
import tempfile
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from pydovecot.imap import urlauth
from pydovecot.imap.imapurl import URLError, apply_partial
from pydovecot.imap.imapurl import parse as parse_url
from pydovecot.log import sanitize
from pydovecot.session import SessionContext
from pydovecot.storage.interfaces import IMailStorage
from pydovecot.submission import relay as relay_mod
from pydovecot.submission.capability import hostname, max_mail_size, valid_domain
from pydovecot.submission.relay import RelayError, Reply, reply

log = Logger()

MAX_LINE = 4096
_PATH = re.compile(rb"^(FROM|TO):\s*<([^<>\s]*)>(( [!-~]+)*)$", re.I)
COMMANDS = ("EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "BURL", "RSET", "NOOP", "QUIT",
            "VRFY", "AUTH", "STARTTLS", "HELP")


@implementer(IPushProducer)
class _Output:
    """Told by the transport when the client stops reading our replies."""

    def __init__(self, session: SubmissionSession):
        self.session = session

    def pauseProducing(self) -> None:
        self.session.output_paused = True

    def resumeProducing(self) -> None:
        self.session.output_paused = False
        self.session.process()

    def stopProducing(self) -> None:
        pass


class SubmissionSession(protocol.Protocol):
    """One logged-in submission client."""

    def __init__(self, config, storage: IMailStorage, ctx: SessionContext):
        self.config = config
        self.storage = storage
        self.ctx = ctx
        self.mailbox = None  # urlauth's resolver looks for a selected mailbox
        self.host = hostname(config)
        self.max_size = max_mail_size(config)
        self.helo = ""
        self.buf = b""
        self.busy = False
        self.output_paused = False
        self.closed = False
        self.relay: relay_mod.RelayProtocol | None = None
        self.reset()
        self.bytes_in = 0
        self.bytes_out = 0

    def reset(self) -> None:
        self.mail_from = False
        self.rcpts = 0
        self.spool: Any = None
        self.size = 0
        self.too_big = False
        self.data_mode = False
        self.mid_line = False
        self.bdat_left = 0
        self.bdat_last = False
        self.chunk_failed = False

    # -- connection -------------------------------------------------------------

    def start(self, helo: bytes | None, pending: bytes = b"") -> None:
        if hasattr(self.transport, "registerProducer"):
            self.transport.registerProducer(_Output(self), True)
        self.helo = (helo or b"").decode("ascii", "replace")
        self.send(reply(235, "2.7.0 Logged in."))
        self.buf = pending
        self.process()

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.buf += data
        self.process()

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        if self.relay is not None:
            self.relay.quit()
        if self.spool is not None:
            self.spool.close()
        fmt = str(self.config.get("submission_logout_format") or "in=%i out=%o")
        stats = fmt.replace("%i", str(self.bytes_in)).replace("%o", str(self.bytes_out))
        log.info("Disconnected: Logged out {stats}", stats=stats,
                 log_prefix=self.ctx.log_prefix("submission"))

    def send(self, r: Reply) -> None:
        data = r.encode()
        self.bytes_out += len(data)
        self.transport.write(data)

    def quit(self, r: Reply) -> None:
        self.send(r)
        self.closed = True
        self.transport.loseConnection()

    # -- input --------------------------------------------------------------------

    def process(self) -> None:
        while not self.busy and not self.closed and not self.output_paused:
            if self.bdat_left:
                if not self.buf:
                    break
                chunk, self.buf = self.buf[:self.bdat_left], self.buf[self.bdat_left:]
                self.bdat_left -= len(chunk)
                self.store_chunk_guard(chunk)
                if not self.bdat_left:
                    self.chunk_done()
                continue
            i = self.buf.find(b"\n", 0, MAX_LINE + 2)
            if i < 0:
                if len(self.buf) > MAX_LINE:
                    if self.data_mode:  # a long message line: stored in pieces
                        piece, self.buf = self.buf[:MAX_LINE], self.buf[MAX_LINE:]
                        self.data_line(piece, partial=True)
                        continue
                    self.quit(reply(500, "5.5.2 Line too long"))
                break
            line, self.buf = self.buf[:i].rstrip(b"\r"), self.buf[i + 1:]
            if self.data_mode:
                self.data_line(line)
                continue
            self.run(self.command(line))
        if self.busy or self.output_paused:
            self.transport.pauseProducing()
        elif not self.closed:
            self.transport.resumeProducing()

    def run(self, result: object) -> None:
        if isinstance(result, defer.Deferred):
            self.busy = True
            result.addErrback(self._failed)
            result.addBoth(self._done)

    def _failed(self, failure) -> None:
        log.error("submission command failed: {e}", e=sanitize(failure.getErrorMessage()),
                  log_prefix=self.ctx.log_prefix("submission"))
        if not self.closed:
            self.send(reply(451, "4.3.0 Internal error occurred. Refer to server log for "
                                 "more information."))

    def _done(self, _: object) -> None:
        self.busy = False
        if not self.closed:
            self.process()

    def command(self, line: bytes) -> object:
        name, _, arg = line.strip().partition(b" ")
        cmd = name.decode("ascii", "replace").upper()
        if cmd not in COMMANDS:
            self.send(reply(500, "5.5.1 Unknown command"))
            return None
        return getattr(self, f"cmd_{cmd}")(arg.strip())

    # -- commands -------------------------------------------------------------------

    def cmd_EHLO(self, arg: bytes) -> defer.Deferred | None:
        if not valid_domain(arg):
            self.send(reply(501, "5.5.4 Invalid parameters"))
            return None
        self.helo = arg.decode("ascii")
        self.reset_transaction()
        return defer.ensureDeferred(self._ehlo())

    async def _ehlo(self) -> None:
        """The relay's extensions shape the reply (as Dovecot's): it is
        connected first."""
        try:
            relay = await self._relay()
        except RelayError as e:
            self._relay_failed(e)
            return
        ext = relay.extensions
        size = self.max_size
        if relay.size:
            size = min(size or relay.size, max(relay.size - 1024, 1))
        lines = [self.host, "8BITMIME", "AUTH", f"BURL imap imap://{self.host}", "CHUNKING"]
        lines += ["DSN"] if "DSN" in ext else []
        lines += ["ENHANCEDSTATUSCODES", "PIPELINING", f"SIZE {size}" if size else "SIZE"]
        lines += [x for x in ("SMTPUTF8", "VRFY") if x in ext]
        self.send(Reply(250, [x.encode() for x in lines]))

    def cmd_HELO(self, arg: bytes) -> None:
        if not valid_domain(arg):
            self.send(reply(501, "5.5.4 Invalid parameters"))
            return
        self.helo = arg.decode("ascii")
        self.reset_transaction()
        self.send(reply(250, self.host))

    def cmd_AUTH(self, arg: bytes) -> None:
        self.send(reply(503, "5.5.0 Already authenticated"))

    def cmd_STARTTLS(self, arg: bytes) -> None:
        self.send(reply(502, "5.5.1 TLS is already active." if self.ctx.secured
                        else "5.5.1 Unsupported command"))

    def cmd_HELP(self, arg: bytes) -> None:
        self.send(reply(214, "2.0.0 See RFC 6409"))

    def cmd_NOOP(self, arg: bytes) -> None:
        self.send(reply(250, "2.0.0 OK"))

    def cmd_VRFY(self, arg: bytes) -> defer.Deferred | None:
        """Relayed when the relay offers VRFY (as Dovecot's)."""
        if not arg:
            self.send(reply(501, "5.5.4 Invalid parameters"))
            return None

        async def go() -> None:
            try:
                relay = await self._relay()
                if "VRFY" not in relay.extensions:
                    self.send(reply(252, "2.3.3 Try RCPT instead"))
                    return
                await self._relay_cmd(b"VRFY " + arg)
            except RelayError as e:
                self._relay_failed(e)

        return defer.ensureDeferred(go())

    def cmd_QUIT(self, arg: bytes) -> None:
        self.quit(reply(221, "2.0.0 Bye"))

    def cmd_RSET(self, arg: bytes) -> defer.Deferred | None:
        self.reset_transaction()
        if self.relay is None:
            self.send(reply(250, "2.0.0 OK"))
            return None
        return defer.ensureDeferred(self._relay_cmd(b"RSET"))

    def reset_transaction(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self.reset()

    async def _relay(self) -> relay_mod.RelayProtocol:
        if self.relay is None or self.relay.lost:
            ctx = self.ctx
            addr = f"IPV6:{ctx.remote_ip}" if ":" in ctx.remote_ip else ctx.remote_ip
            xclient = {"ADDR": addr, "PORT": str(ctx.remote_port or ""),
                       "HELO": self.helo, "LOGIN": ctx.user}
            self.relay = await relay_mod.connect(self.config, self.helo or self.host, xclient)
        return self.relay

    async def _relay_cmd(self, line: bytes) -> Reply:
        relay = await self._relay()
        r = await relay.command(line)
        self.send(r)
        return r

    def cmd_MAIL(self, arg: bytes) -> defer.Deferred | None:
        if self.mail_from:
            self.send(reply(503, "5.5.1 MAIL already given"))
            return None
        m = _PATH.match(arg)
        if arg[:5].upper() == b"FROM:" and not arg[5:].lstrip().startswith(b"<"):
            self.send(reply(501, "5.5.4 Invalid FROM: Missing '<' at beginning of path"))
            return None
        if not m or m.group(1).upper() != b"FROM":
            self.send(reply(501, "5.5.4 Invalid parameters"))
            return None
        size = re.search(rb"\bSIZE=(\d{1,20})", arg, re.I)
        if size and self.max_size and int(size.group(1)) > self.max_size:
            self.send(reply(552, "5.3.4 Message size exceeds fixed maximum message size"))
            return None

        async def go() -> None:
            try:
                r = await self._relay_cmd(b"MAIL " + arg)
            except RelayError as e:
                self._relay_failed(e)
                return
            self.mail_from = r.code == 250

        return defer.ensureDeferred(go())

    def _relay_failed(self, e: Exception) -> None:
        log.error("relay failed: {e}", e=sanitize(str(e)),
                  log_prefix=self.ctx.log_prefix("submission"))
        if self.relay is not None:
            self.relay.quit()
        self.relay = None
        self.reset_transaction()  # the relay forgot it: the client starts again
        self.send(reply(451, "4.4.0 Failed to relay command to the mail server"))

    def cmd_RCPT(self, arg: bytes) -> defer.Deferred | None:
        if not self.mail_from:
            self.send(reply(503, "5.5.0 MAIL needed first"))
            return None
        m = _PATH.match(arg)
        if arg[:3].upper() == b"TO:" and not arg[3:].lstrip().startswith(b"<"):
            self.send(reply(501, "5.5.4 Invalid TO: Missing '<' at beginning of path"))
            return None
        if not m or m.group(1).upper() != b"TO" or not m.group(2):
            self.send(reply(501, "5.5.4 Invalid parameters"))
            return None
        limit = self.config.get_int("submission_max_recipients")
        if limit and self.rcpts >= limit:
            self.send(reply(451, "4.5.3 Too many recipients"))
            return None

        async def go() -> None:
            try:
                r = await self._relay_cmd(b"RCPT " + arg)
            except RelayError as e:
                self._relay_failed(e)
                return
            if r.code == 250 or r.code == 251:
                self.rcpts += 1

        return defer.ensureDeferred(go())

    def _ready_for_data(self) -> bool:
        if not self.mail_from:
            self.send(reply(503, "5.5.0 MAIL needed first"))
            return False
        if not self.rcpts:
            self.send(reply(554, "5.5.1 No valid recipients"))
            return False
        return True

    def _open_spool(self) -> None:
        if self.spool is None:
            self.spool = tempfile.TemporaryFile()

    def store(self, data: bytes) -> None:
        self.size += len(data)
        if self.max_size and self.size > self.max_size:
            self.too_big = True
        if not self.too_big:
            self.spool.write(data)

    def cmd_DATA(self, arg: bytes) -> None:
        if self.spool is not None:
            self.send(reply(503, "5.5.1 DATA cannot be used with BDAT"))
            return
        if not self._ready_for_data():
            return
        self._open_spool()
        self.data_mode = True
        self.send(reply(354, "OK"))

    def data_line(self, line: bytes, partial: bool = False) -> None:
        """One DATA line (or a piece of a long one), dot-unstuffed."""
        mid_line, self.mid_line = self.mid_line, partial
        if not mid_line:
            if line == b"." and not partial:
                self.data_mode = False
                self.run(defer.ensureDeferred(self.finish()))
                return
            if line.startswith(b"."):
                line = line[1:]
        self.store(line if partial else line + b"\r\n")

    def cmd_BDAT(self, arg: bytes) -> None:
        parts = arg.split()
        if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or len(parts[0]) > 15 or (
                len(parts) == 2 and parts[1].upper() != b"LAST"):
            self.send(reply(501, "5.5.4 Invalid parameters"))
            return
        size = int(parts[0])
        self.bdat_last = len(parts) == 2
        self.chunk_failed = not self.mail_from or not self.rcpts
        if not self.chunk_failed:
            self._open_spool()
        self.bdat_left = size
        if size == 0:
            self.chunk_done()

    def chunk_done(self) -> None:
        if self.chunk_failed:
            self._ready_for_data()
            return
        if self.bdat_last:
            self.run(defer.ensureDeferred(self.finish()))
        else:
            self.send(reply(250, f"2.0.0 Added {self.size} octets"))

    def store_chunk_guard(self, data: bytes) -> None:
        if not self.chunk_failed:
            self.store(data)

    def cmd_BURL(self, arg: bytes) -> defer.Deferred | None:
        parts = arg.split()
        if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[1].upper() != b"LAST"):
            self.send(reply(501, "5.5.4 Invalid parameters"))
            return None
        if not self._ready_for_data():
            return None
        self._open_spool()
        return defer.ensureDeferred(self.burl(parts[0], len(parts) == 2))

    async def burl(self, text: bytes, last: bool) -> None:
        try:
            url = parse_url(text)
        except URLError as e:
            self.send(reply(554, f"5.5.4 Invalid URL: {e}"[:200]))
            return
        why = urlauth.fetch_check(self, url)
        target = None
        if why is None:
            target, why = await urlauth.verified_target(self, url)
        if target is None:
            self.send(reply(554, f"5.6.6 IMAP URL resolution failed: {why}"[:200]))
            return
        self.store(apply_partial(target.data, url.partial))
        if last:
            await self.finish()
        else:
            self.send(reply(250, f"2.0.0 Added {self.size} octets"))

    async def finish(self) -> None:
        spool, size, too_big = self.spool, self.size, self.too_big
        if too_big:
            self.reset_transaction()
            self.send(reply(552, "5.3.4 Message size exceeds fixed maximum message size"))
            return
        try:
            assert self.relay is not None
            spool.flush()
            r = await self.relay.send_message(spool, size)
        except (RelayError, AssertionError) as e:
            self._relay_failed(e)
            self.reset_transaction()
            return
        self.reset_transaction()
        self.send(r)


def new_session(config, storage: IMailStorage, ctx: SessionContext) -> SubmissionSession:
    return SubmissionSession(config, storage, ctx)
