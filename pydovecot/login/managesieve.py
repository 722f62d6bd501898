"""managesieve-login: ManageSieve before authentication (RFC 5804), as Pigeonhole's.

Greeting (the capability listing, then ``OK "<greeting>"``), CAPABILITY,
NOOP, LOGOUT, STARTTLS (the listing is sent again over TLS) and
AUTHENTICATE with SASL through authd (initial response; challenges are
quoted base64 strings, answers quoted strings or literals, ``"*"``
aborts).  A successful login is handed to the backend; the mail process
sends ``OK "Logged in."``.

Trusts: the :class:`~pydovecot.login.interfaces.ILoginBackend` and the
config.  Client input is bounded (one command with its literals at most
``max_line`` bytes; an over-long one is skipped whole, literals included)
and parsed with :mod:`pydovecot.managesieve.grammar`; errors become NO
replies, never tracebacks.
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
from pydovecot.managesieve.capability import capability_lines, extensions_from, plugin_settings
from pydovecot.managesieve.grammar import (
    GrammarError,
    Str,
    command_name,
    literal_size,
    parse_arguments,
    response,
    scan,
)

PLAINTEXT_REFUSED = ("Plaintext authentication disallowed on non-secure (SSL/TLS) "
                     "connections.")
#: What Pigeonhole's managesieve-login answers to any command it cannot run:
#: unknown ones, post-login ones and wrong arguments alike.
RECEIVED_ERROR = "Error in MANAGESIEVE command received by server."


class ManageSieveLoginProtocol(LoginProtocol):
    """One pre-auth ManageSieve client connection."""

    service = "sieve"
    max_bad_commands = 3  # Pigeonhole's managesieve-login

    # -- framing ------------------------------------------------------------

    def extract_command(self) -> bytes | TooLong | None:
        """One whole command (literals included, final CRLF stripped)."""
        if self._pending_too_long is not None or self._skipping is not None:
            return self.extract_line()
        found = scan(self._buffer, self.max_line, self.max_line)
        if found.kind == "more":
            return None
        if found.kind == "command":
            self._buffer = self._buffer[found.end:]
            return found.data
        self.begin_skipping(found.data)
        if self._pending_too_long is None:
            return None
        pending, self._pending_too_long = self._pending_too_long, None
        return pending

    def literal_follows(self, line_end: bytes) -> int | None:
        return literal_size(line_end)

    # -- greeting and capabilities -------------------------------------------

    def capabilities(self) -> defer.Deferred:
        """Deferred[bytes]: the pre-login capability listing."""
        config = self.factory.config

        def build(mechs: list[str]) -> bytes:
            starttls = self.backend.tls_available and not self.conn.tls
            return capability_lines(config, extensions_from(plugin_settings(config)),
                                    sasl=mechs, starttls=starttls)

        return self.advertised_mechanisms().addCallback(build)

    def send_greeting(self) -> defer.Deferred:
        def greet(caps: bytes) -> None:
            self.write(caps + response("OK", self.backend.greeting))

        return self.capabilities().addCallback(greet)

    # -- replies ------------------------------------------------------------

    def no(self, text: str, code: str | None = None) -> None:
        self.write(response("NO", text, code))

    def bad(self, text: str) -> None:
        """Answer an invalid command; the last one allowed gets only the BYE
        (as Pigeonhole's)."""
        if self.bad_commands + 1 < self.max_bad_commands:
            self.no(text)
        self.bad_command()

    def reply_challenge(self, b64: bytes) -> None:
        self.write(b'"' + b64 + b'"\r\n')

    def reply_auth_failed(self, tag: bytes | None, reason: str | None) -> None:
        self.no(reason or "Authentication failed.")

    def reply_auth_temp_fail(self, tag: bytes | None) -> None:
        self.no("Temporary authentication failure.", "TRYLATER")

    def reply_sasl_bad(self, tag: bytes | None, text: str) -> None:
        self.no(text)

    def reply_internal_error(self, tag: bytes | None) -> None:
        self.no("Internal error occurred. Refer to server log for more information.",
                "TRYLATER")

    def reply_too_many_bad(self) -> None:
        self.write(response("BYE", "Too many invalid MANAGESIEVE commands."))

    def reply_too_many_auth_failures(self) -> None:
        self.write(response("BYE", "Too many failed authentication attempts."))

    def reply_inactivity(self) -> None:
        self.write(response("BYE", "Disconnected for inactivity."))

    def reply_disconnect(self, text: str, code: str | None = None) -> None:
        self.write(response("BYE", text, "TRYLATER" if code else None))

    def reply_limit_exceeded(self, tag: bytes | None, reason: str) -> None:
        self.write(response("BYE", reason, "TRYLATER"))

    # -- commands -------------------------------------------------------------

    def process_command(self) -> object:
        cmd = self.extract_command()
        if cmd is None:
            return NEED_MORE
        if isinstance(cmd, TooLong):
            name = command_name(cmd.head) or "?"
            self.bad(f"Error in MANAGESIEVE command {name[:32]}: Too long argument.")
            return None
        if not cmd.strip():
            return None
        name = command_name(cmd)
        handler = getattr(self, f"cmd_{name}", None) if name.isalpha() else None
        if handler is None:
            self.bad(RECEIVED_ERROR)
            return None
        try:
            args = parse_arguments(cmd[len(name):])
        except GrammarError:
            self.bad(RECEIVED_ERROR)
            return None
        return handler(args)

    def cmd_CAPABILITY(self, args: list) -> defer.Deferred | None:
        if args:
            self.bad(RECEIVED_ERROR)
            return None

        def send(caps: bytes) -> None:
            self.write(caps + response("OK", "Capability completed."))

        return self.capabilities().addCallback(send)

    def cmd_NOOP(self, args: list) -> None:
        if len(args) > 1:
            self.bad(RECEIVED_ERROR)
        elif args and not isinstance(args[0], Str):
            self.bad("Invalid echo tag.")
        elif args:
            self.write(b'OK (TAG ' + _q(args[0]) + b') "Done"\r\n')
        else:
            self.write(response("OK", "NOOP Completed"))

    def cmd_LOGOUT(self, args: list) -> None:
        self.write(response("OK", "Logout completed."))
        self.close("Aborted login by logging out")

    def cmd_STARTTLS(self, args: list) -> defer.Deferred | None:
        if args:
            self.bad(RECEIVED_ERROR)
        elif self.conn.tls:
            self.bad("TLS is already active.")
        elif not self.backend.tls_available:
            self.bad("TLS support isn't enabled.")
        else:
            self.write(response("OK", "Begin TLS negotiation now."))
            self.start_tls()
            # RFC 5804 2.2: the capabilities again, over the new layer.
            return self.capabilities().addCallback(
                lambda caps: self.write(caps + response("OK", "TLS negotiation successful.")))
        return None

    def cmd_AUTHENTICATE(self, args: list) -> defer.Deferred | None:
        if not 1 <= len(args) <= 2 or not all(isinstance(a, Str) for a in args):
            self.bad(RECEIVED_ERROR)
            return None
        mech = args[0].decode("ascii", "replace").upper()
        initial = None
        if len(args) == 2:
            initial = decode_sasl(args[1])
            if initial is None:  # an auth failure, not an invalid command
                self.no("Invalid base64 data in initial response")
                self.auth_attempts += 1
                return None
        if mech in PLAINTEXT_MECHANISMS and not self.plaintext_allowed():
            self.no(PLAINTEXT_REFUSED, "ENCRYPT-NEEDED")
            self.auth_attempts += 1
            return None

        def check(mechs: list[str]) -> defer.Deferred | None:
            if mech not in mechs:
                self.no("Unsupported authentication mechanism.")
                self.auth_attempts += 1
                return None
            return self.start_auth(None, mech, initial)

        return self.advertised_mechanisms().addCallback(check)

    def _sasl_input(self) -> object:
        """A SASL answer: one string (quoted or literal), ``"*"`` aborts."""
        cmd = self.extract_command()
        if cmd is None:
            return NEED_MORE
        self._sasl_waiting = False
        if isinstance(cmd, TooLong):
            return self._sasl_abort("Authentication response too long.")
        try:
            args = parse_arguments(cmd)
        except GrammarError:
            args = []
        if len(args) != 1 or not isinstance(args[0], Str):
            return self._sasl_abort("Invalid SASL response: expected a string.")
        if args[0] == b"*":
            return self._sasl_abort("Authentication aborted by client.")
        answer = decode_sasl(args[0])
        if answer is None:
            return self._sasl_abort("Invalid base64 data in continued response")
        d = defer.maybeDeferred(self.backend.auth_continue, self.conn, answer)
        return self._on_auth_reply(d)


def _q(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class ManageSieveLoginFactory(LoginFactory):
    """Builds :class:`ManageSieveLoginProtocol` for one listener (4190).

    ``config`` gives the capability settings (the login process sets it)."""

    protocol = ManageSieveLoginProtocol
    config = None
