"""submission-login: SMTP submission before authentication (RFC 6409, 4954), as Dovecot's.

Greeting (``220 <hostname> <login_greeting>``), EHLO/HELO, STARTTLS
(RFC 3207; the client must EHLO again), AUTH with SASL through authd
(initial response, ``334`` challenges, ``*`` aborts), NOOP, RSET, QUIT;
every mail command before AUTH is ``530 5.7.0 Authentication required.``.
A successful login is handed to the backend with the client's EHLO domain
as the handoff tag; the mail process (:mod:`pydovecot.submission`) sends
``235 2.7.0 Logged in.``.

Trusts: the :class:`~pydovecot.login.interfaces.ILoginBackend` and the
config.  Client lines are bounded (``max_line``) and parsed defensively;
errors become SMTP 5xx replies with enhanced status codes, never
tracebacks.
"""

from __future__ import annotations

from twisted.internet import defer

from pydovecot.login.common import (
    NEED_MORE,
    PLAINTEXT_MECHANISMS,
    LoginFactory,
    LoginProtocol,
    TooLong,
    decode_sasl,
)
from pydovecot.submission.capability import ehlo_lines, hostname, valid_domain

#: Commands a client may only use after AUTH (Dovecot's submission-login).
NEEDS_AUTH = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "BURL", "VRFY", "EXPN"})


class SubmissionLoginProtocol(LoginProtocol):
    """One pre-auth SMTP submission connection."""

    service = "submission"
    max_line = 4096

    def __init__(self) -> None:
        super().__init__()
        self.helo: bytes | None = None

    # -- greeting ---------------------------------------------------------------

    def hostname(self) -> str:
        return hostname(self.factory.config)

    def send_greeting(self) -> None:
        self.write(f"220 {self.hostname()} {self.backend.greeting}\r\n".encode())

    # -- replies --------------------------------------------------------------

    def reply(self, code: str, text: str) -> None:
        self.write(f"{code} {text}\r\n".encode("utf-8", "replace"))

    def bad(self, code: str, text: str) -> None:
        self.reply(code, text)
        self.bad_command()

    def reply_challenge(self, b64: bytes) -> None:
        self.write(b"334 " + b64 + b"\r\n")

    def reply_auth_failed(self, tag: bytes | None, reason: str | None) -> None:
        self.reply("535", f"5.7.8 {reason or 'Authentication failed'}")

    def reply_auth_temp_fail(self, tag: bytes | None) -> None:
        self.reply("454", "4.7.0 Temporary authentication failure")

    def reply_sasl_bad(self, tag: bytes | None, text: str) -> None:
        self.reply("501", f"5.5.2 {text}")

    def reply_internal_error(self, tag: bytes | None) -> None:
        self.reply("421", "4.3.0 Internal error occurred. Refer to server log for more information.")

    def reply_too_many_bad(self) -> None:
        self.reply("421", "4.7.0 Too many invalid commands.")

    def reply_too_many_auth_failures(self) -> None:
        self.reply("421", "4.7.0 Too many failed authentication attempts.")

    def reply_inactivity(self) -> None:
        self.reply("421", "4.4.2 Disconnected for inactivity.")

    def reply_disconnect(self, text: str, code: str | None = None) -> None:
        self.reply("421", f"4.3.2 {text}")

    def reply_limit_exceeded(self, tag: bytes | None, reason: str) -> None:
        self.reply("421", f"4.7.0 {reason}")

    # -- commands -------------------------------------------------------------

    def process_command(self) -> object:
        line = self.extract_line()
        if line is None:
            return NEED_MORE
        if isinstance(line, TooLong):
            self.bad("500", "5.5.2 Line too long")
            return None
        name, _, arg = line.strip().partition(b" ")
        cmd = name.decode("ascii", "replace").upper()
        handler = getattr(self, f"cmd_{cmd}", None) if cmd.isalpha() else None
        if handler is None:
            if cmd in NEEDS_AUTH:
                self.bad("530", "5.7.0 Authentication required.")
            else:
                self.bad("500", "5.5.1 Unknown command")
            return None
        return handler(arg.strip())

    def _ehlo(self, arg: bytes, extended: bool) -> defer.Deferred | None:
        if not valid_domain(arg):
            self.bad("501", "5.5.4 Invalid parameters")
            return None
        self.helo = arg
        if not extended:
            self.reply("250", self.hostname())
            return None

        def send(mechs: list[str]) -> None:
            starttls = self.backend.tls_available and not self.conn.tls
            self.write(ehlo_lines(self.factory.config, self.hostname(), auth=mechs,
                                  starttls=starttls))

        return self.advertised_mechanisms().addCallback(send)

    def cmd_EHLO(self, arg: bytes) -> defer.Deferred | None:
        return self._ehlo(arg, True)

    def cmd_HELO(self, arg: bytes) -> defer.Deferred | None:
        return self._ehlo(arg, False)

    def cmd_NOOP(self, arg: bytes) -> None:
        self.reply("250", "2.0.0 OK")

    def cmd_RSET(self, arg: bytes) -> None:
        self.reply("250", "2.0.0 OK")

    def cmd_QUIT(self, arg: bytes) -> None:
        self.reply("221", "2.0.0 Bye")
        self.close("Aborted login by logging out")

    def cmd_STARTTLS(self, arg: bytes) -> None:
        if arg:
            self.bad("501", "5.5.4 Invalid parameters")
        elif self.conn.tls:
            self.bad("502", "5.5.1 TLS is already active.")
        elif not self.backend.tls_available:
            self.bad("502", "5.5.1 TLS support isn't enabled.")
        else:
            self.reply("220", "2.0.0 Begin TLS negotiation now.")
            self.helo = None  # RFC 3207 4.2: forget everything, EHLO again
            self.start_tls()

    def cmd_AUTH(self, arg: bytes) -> defer.Deferred | None:
        if self.helo is None:
            self.bad("503", "5.5.1 Bad sequence of commands: EHLO first")
            return None
        args = arg.split()
        if not 1 <= len(args) <= 2:
            self.bad("501", "5.5.4 Invalid parameters")
            return None
        mech = args[0].decode("ascii", "replace").upper()
        initial = None
        if len(args) == 2:
            initial = b"" if args[1] == b"=" else decode_sasl(args[1])
            if initial is None:
                self.bad("501", "5.5.2 Invalid base64 data in initial response")
                return None
        if mech in PLAINTEXT_MECHANISMS and not self.plaintext_allowed():
            self.reply("538", "5.7.11 Plaintext authentication disallowed on "
                              "non-secure (SSL/TLS) connections.")
            self.auth_attempts += 1
            return None

        def check(mechs: list[str]) -> defer.Deferred | None:
            if mech not in mechs:
                self.bad("504", "5.5.4 Unsupported authentication mechanism.")
                return None
            return self.start_auth(self.helo, mech, initial)

        return self.advertised_mechanisms().addCallback(check)


class SubmissionLoginFactory(LoginFactory):
    """Builds :class:`SubmissionLoginProtocol` for one listener (587 or 465).

    ``config`` gives ``hostname`` and the size limit (the login process sets it)."""

    protocol = SubmissionLoginProtocol
    config = None
