"""imap-login: the IMAP pre-auth grammar (RFC 3501/9051) as Dovecot speaks it.

Greeting, CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN and AUTHENTICATE
(SASL-IR), with quoted strings and synchronising / LITERAL+ literals.
Successful logins are handed to the backend (see
:meth:`pydovecot.login.common.LoginProtocol.handoff`); the mail process
sends the tagged OK.

Trusts: the :class:`~pydovecot.login.interfaces.ILoginBackend`.  Client
input is bounded (8 KiB per command including literals; the content of an
over-long literal is skipped whole, never read as commands) and parsed
defensively with the mail process's tokenizer
(:func:`pydovecot.imap.parser.parse_arguments`, one IMAP grammar for both
processes); errors become tagged BAD replies, never tracebacks.
"""

from __future__ import annotations

import re

from twisted.internet import defer
from twisted.logger import Logger

from pydovecot.imap.parser import Atom, ParseError, parse_arguments
from pydovecot.log import sanitize
from pydovecot.login.common import (
    NEED_MORE,
    PLAINTEXT_MECHANISMS,
    LoginFactory,
    LoginProtocol,
    TooLong,
    decode_sasl,
)

log = Logger()

BASE_CAPABILITIES = "IMAP4rev1 IMAP4rev2 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+"

#: Commands only valid after login: answered "Not logged in", not "Unknown".
POST_AUTH_COMMANDS = frozenset("""
    SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB STATUS
    APPEND CHECK CLOSE EXPUNGE SEARCH FETCH STORE COPY MOVE UID IDLE NAMESPACE
    ENABLE UNSELECT GETQUOTA GETQUOTAROOT SETQUOTA GETACL SETACL DELETEACL
    MYRIGHTS LISTRIGHTS GETMETADATA SETMETADATA NOTIFY COMPRESS ESEARCH SORT
    THREAD CANCELUPDATE REPLACE UIDEXPUNGE
""".split())

LITERAL_AT_END = re.compile(rb"\{(\d{1,10})(\+?)\}$")
TAG_CHARS = re.compile(rb"^[\x21-\x7e]+$")
MAX_ID_FIELDS = 30
MAX_ID_VALUE = 1024
MAX_ID_FIELD = 30  # RFC 2971 3.3: field names are at most 30 octets
#: RFC 2971's maxima (30 pairs, 30-octet fields, 1024-octet values), quoted
#: with every octet escaped, fit in an ID line of this size; other
#: commands keep ``max_line``.
MAX_ID_LINE = 2 * MAX_ID_FIELDS * (2 * MAX_ID_VALUE + 16) + 256
_ID_COMMAND = re.compile(rb"[^ \r\n]{1,64} ID[ (]", re.I)


#: Dovecot's alert when a client sent a password in the clear where that is
#: disallowed (client_check_plaintext_auth with pass_sent).
PASSWORD_EXPOSED = (b"* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, but "
                    b"your client did it anyway. If anyone was listening, the password was "
                    b"exposed.\r\n")


def quote(value: str) -> str:
    """An IMAP quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class IMAPLoginProtocol(LoginProtocol):
    """One pre-auth IMAP client connection."""

    service = "imap"
    #: One command with its literals: room for RFC 2971's ID maxima (30
    #: pairs of 30-octet fields and 1024-octet values, ~32 KiB, up to twice
    #: that quoted with escapes), which Dovecot's imap-login accepts.
    max_line = 65536

    def __init__(self) -> None:
        super().__init__()
        self._scan_pos = 0  # start of the unread part of the current command
        self._continued: set[int] = set()  # literals already sent "+ OK" for
        self.client_id: dict[str, str | None] | None = None

    # -- framing ------------------------------------------------------------

    def extract_command(self) -> bytes | TooLong | None:
        """One whole command (literals included, final CRLF stripped)."""
        if self._pending_too_long is not None or self._skipping is not None:
            return self.extract_line()
        buf = self._buffer
        pos = self._scan_pos
        limit = MAX_ID_LINE if _ID_COMMAND.match(buf) else self.max_line
        while True:
            i = buf.find(b"\n", pos, limit + 2)
            if i < 0:
                if len(buf) > limit:
                    return self._too_long(buf[:128])
                self._scan_pos = pos
                return None
            line = buf[pos:i].rstrip(b"\r")
            m = LITERAL_AT_END.search(line)
            if m is None:
                self._buffer = buf[i + 1:]
                self._scan_pos = 0
                self._continued.clear()
                cmd = buf[:i]
                return cmd[:-1] if cmd.endswith(b"\r") else cmd
            size, nonsync = int(m.group(1)), bool(m.group(2))
            end = i + 1 + size
            if end > limit:
                if nonsync:
                    return self._too_long(buf[:128])
                # Refuse the synchronising literal: the client won't send it.
                self._buffer = buf[i + 1:]
                self._scan_pos = 0
                self._continued.clear()
                return TooLong(buf[:128])
            if len(buf) < end:
                if not nonsync and i not in self._continued:
                    self._continued.add(i)
                    self.write(b"+ OK\r\n")
                self._scan_pos = pos
                return None
            pos = end

    def _too_long(self, head: bytes) -> TooLong | None:
        self._scan_pos = 0
        self._continued.clear()
        self.begin_skipping(head)
        if self._pending_too_long is None:
            return None
        pending, self._pending_too_long = self._pending_too_long, None
        return pending

    # -- greeting and capabilities -------------------------------------------

    def capabilities(self) -> defer.Deferred:
        """Deferred[str]: the pre-login CAPABILITY list."""

        def build(mechs: list[str]) -> str:
            caps = [BASE_CAPABILITIES]
            if self.backend.tls_available and not self.conn.tls:
                caps.append("STARTTLS")
            if not self.plaintext_allowed():
                caps.append("LOGINDISABLED")
            caps.extend(f"AUTH={m}" for m in mechs)
            return " ".join(caps)

        return self.advertised_mechanisms().addCallback(build)

    def send_greeting(self) -> defer.Deferred:
        def greet(caps: str) -> None:
            self.write(f"* OK [CAPABILITY {caps}] {self.backend.greeting}\r\n".encode())

        return self.capabilities().addCallback(greet)

    # -- replies ------------------------------------------------------------

    def tagged(self, tag: bytes | None, text: str) -> None:
        self.write((tag or b"*") + b" " + text.encode("utf-8") + b"\r\n")

    def reply_auth_failed(self, tag: bytes | None, reason: str | None) -> None:
        self.tagged(tag, f"NO [AUTHENTICATIONFAILED] {reason or 'Authentication failed.'}")

    def reply_auth_temp_fail(self, tag: bytes | None) -> None:
        self.tagged(tag, "NO [UNAVAILABLE] Temporary authentication failure.")

    def reply_sasl_bad(self, tag: bytes | None, text: str) -> None:
        self.tagged(tag, f"BAD {text}")

    def reply_internal_error(self, tag: bytes | None) -> None:
        self.tagged(tag, "NO [UNAVAILABLE] Internal error occurred. "
                         "Refer to server log for more information.")

    def reply_too_many_bad(self) -> None:
        self.write(b"* BYE Too many invalid IMAP commands.\r\n")

    def reply_too_many_auth_failures(self) -> None:
        self.write(b"* BYE Too many failed authentication attempts.\r\n")

    def reply_inactivity(self) -> None:
        self.write(b"* BYE Disconnected for inactivity.\r\n")

    def reply_disconnect(self, text: str, code: str | None = None) -> None:
        self.write(f"* BYE {f'[{code}] ' if code else ''}{text}\r\n".encode())

    def reply_limit_exceeded(self, tag: bytes | None, reason: str) -> None:
        self.reply_disconnect(reason, code="LIMIT")

    def literal_follows(self, line_end: bytes) -> int | None:
        m = LITERAL_AT_END.search(line_end)
        return int(m.group(1)) if m is not None and m.group(2) else None

    def bad(self, tag: bytes | None, text: str) -> None:
        self.tagged(tag, f"BAD {text}")
        self.bad_command()

    # -- commands -------------------------------------------------------------

    def process_command(self) -> object:
        cmd = self.extract_command()
        if cmd is None:
            return NEED_MORE
        if isinstance(cmd, TooLong):
            tag = cmd.head.split(b" ", 1)[0]
            self.bad(tag if TAG_CHARS.match(tag) and tag != b"+" else None,
                     "Error in IMAP command: Too long argument.")
            return None
        if not cmd.strip():
            return None  # Dovecot ignores empty lines
        parts = cmd.split(b" ", 2)
        tag = parts[0]
        if not TAG_CHARS.match(tag) or tag == b"+" or any(c in tag for c in b'(){%*"\\'):
            self.bad(None, "Error in IMAP command received by server.")
            return None
        if len(parts) < 2 or not parts[1]:
            self.bad(tag, "Error in IMAP command received by server.")
            return None
        name = parts[1].decode("ascii", "replace").upper()
        rest = parts[2] if len(parts) > 2 else b""
        handler = getattr(self, f"cmd_{name}", None) if name.isalpha() else None
        if handler is None:
            printable = name if name.isprintable() and len(name) <= 32 else "?"
            if name in POST_AUTH_COMMANDS:
                self.bad(tag, f"Error in IMAP command {printable}: Not logged in.")
            else:
                self.bad(tag, f"Error in IMAP command {printable}: Unknown command.")
            return None
        try:
            args = parse_arguments(rest)
        except ParseError as e:
            self.bad(tag, f"Error in IMAP command {name}: {e}.")
            return None
        return handler(tag, args)

    def cmd_CAPABILITY(self, tag: bytes, args: list) -> defer.Deferred | None:
        if args:
            self.bad(tag, "Error in IMAP command CAPABILITY: Unexpected arguments.")
            return None

        def send(caps: str) -> None:
            self.write(f"* CAPABILITY {caps}\r\n".encode())
            self.tagged(tag, "OK Pre-login capabilities listed, "
                             "post-login capabilities have more.")

        return self.capabilities().addCallback(send)

    def cmd_NOOP(self, tag: bytes, args: list) -> None:
        self.tagged(tag, "OK NOOP completed.")

    def cmd_LOGOUT(self, tag: bytes, args: list) -> None:
        self.write(b"* BYE Logging out\r\n")
        self.tagged(tag, "OK Logout completed.")
        self.close("Aborted login by logging out")

    def cmd_ID(self, tag: bytes, args: list) -> None:
        if len(args) != 1 or not (isinstance(args[0], list) or args[0].upper() == b"NIL"):
            self.bad(tag, "Error in IMAP command ID: Invalid parameters.")
            return
        if isinstance(args[0], list):
            fields = args[0]
            if len(fields) % 2 or len(fields) > 2 * MAX_ID_FIELDS or any(
                    isinstance(f, list) or len(f) > MAX_ID_VALUE for f in fields) or any(
                    len(k) > MAX_ID_FIELD for k in fields[0::2]):
                self.bad(tag, "Error in IMAP command ID: Invalid parameters.")
                return
            self.client_id = {
                k.decode("utf-8", "replace").lower():
                    None if isinstance(v, Atom) and v.upper() == b"NIL"
                    else v.decode("utf-8", "replace")
                for k, v in zip(fields[0::2], fields[1::2], strict=True)
            }
            log.debug("imap-login: client ID: {id}", id=sanitize(
                ", ".join(f"{k}={v}" for k, v in self.client_id.items()), 1024))
            if self.forward_trusted:
                self.forward_id(self.client_id)
        self.write(b'* ID ("name" "pydovecot")\r\n')
        self.tagged(tag, "OK ID completed.")

    def forward_id(self, fields: dict[str, str | None]) -> None:
        """A trusted proxy's ID fields (Dovecot's client_update_info):
        x-originating-ip/-port, x-connected-ip/-port and x-session-id (or
        x-session-ext-id) describe the real client; invalid ones are ignored."""
        def get(key: str) -> str | None:
            return fields.get(key)

        self.forward(remote_ip=get("x-originating-ip"), remote_port=get("x-originating-port"),
                     local_ip=get("x-connected-ip"), local_port=get("x-connected-port"),
                     session=get("x-session-id") or get("x-session-ext-id"))

    def cmd_STARTTLS(self, tag: bytes, args: list) -> None:
        if args:
            self.bad(tag, "Error in IMAP command STARTTLS: Unexpected arguments.")
        elif self.conn.tls:
            self.bad(tag, "TLS is already active.")
        elif not self.backend.tls_available:
            self.bad(tag, "TLS support isn't enabled.")
        else:
            self.tagged(tag, "OK Begin TLS negotiation now.")
            self.start_tls()

    def cmd_LOGIN(self, tag: bytes, args: list) -> defer.Deferred | None:
        if len(args) != 2 or any(isinstance(a, list) for a in args):
            self.bad(tag, "Error in IMAP command LOGIN: Invalid arguments.")
            return None
        if not self.plaintext_allowed():
            self.write(PASSWORD_EXPOSED)
            self.tagged(tag, "NO [PRIVACYREQUIRED] Plaintext authentication disallowed "
                             "on non-secure (SSL/TLS) connections.")
            self.auth_attempts += 1
            return None
        user, password = args
        if b"\0" in user or b"\0" in password:
            self.bad(tag, "Error in IMAP command LOGIN: Invalid arguments.")
            return None
        self.user = user.decode("utf-8", "replace")
        return self.start_auth(tag, "PLAIN", b"\0" + user + b"\0" + password)

    def cmd_AUTHENTICATE(self, tag: bytes, args: list) -> defer.Deferred | None:
        if not 1 <= len(args) <= 2 or any(isinstance(a, list) for a in args):
            self.bad(tag, "Error in IMAP command AUTHENTICATE: Invalid arguments.")
            return None
        mech = args[0].decode("ascii", "replace").upper()
        initial = None
        if len(args) == 2:
            initial = decode_sasl(args[1])
            if initial is None:
                self.bad(tag, "Invalid base64 data in initial response")
                return None
        if mech in PLAINTEXT_MECHANISMS and not self.plaintext_allowed():
            if initial is not None:  # the password already went by
                self.write(PASSWORD_EXPOSED)
            self.tagged(tag, "NO [PRIVACYREQUIRED] Plaintext authentication disallowed "
                             "on non-secure (SSL/TLS) connections.")
            self.auth_attempts += 1
            return None

        def check(mechs: list[str]) -> defer.Deferred | None:
            if mech not in mechs:
                self.bad(tag, "Unsupported authentication mechanism.")
                return None
            return self.start_auth(tag, mech, initial)

        return self.advertised_mechanisms().addCallback(check)


class IMAPLoginFactory(LoginFactory):
    """Builds :class:`IMAPLoginProtocol` for one listener (143 or 993)."""

    protocol = IMAPLoginProtocol
