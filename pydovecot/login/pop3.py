"""pop3-login: the POP3 AUTHORIZATION state (RFC 1939, 2449, 2595, 5034).

Greeting, CAPA, STLS, USER/PASS, AUTH (SASL with initial response), QUIT.
Successful logins are handed to the backend; the mail process sends the
``+OK`` for PASS/AUTH.

Trusts: the :class:`~pydovecot.login.interfaces.ILoginBackend`.  Client
lines are bounded (8 KiB) and parsed defensively; errors become ``-ERR``
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

PLAINTEXT_REFUSED = (b"-ERR [AUTH] Plaintext authentication disallowed "
                     b"on non-secure (SSL/TLS) connections.\r\n")


class POP3LoginProtocol(LoginProtocol):
    """One pre-auth POP3 client connection."""

    service = "pop3"

    def __init__(self) -> None:
        super().__init__()
        self._user_arg: bytes | None = None

    def send_greeting(self) -> None:
        # Dovecot's pop3-login tells a trusted proxy it may send XCLIENT.
        xclient = "[XCLIENT] " if self.forward_trusted else ""
        self.write(f"+OK {xclient}{self.backend.greeting}\r\n".encode())

    # -- replies --------------------------------------------------------------

    def err(self, text: str) -> None:
        self.write(b"-ERR " + text.encode("utf-8") + b"\r\n")

    def reply_auth_failed(self, tag: bytes | None, reason: str | None) -> None:
        self.err(f"[AUTH] {reason or 'Authentication failed.'}")

    def reply_auth_temp_fail(self, tag: bytes | None) -> None:
        self.err("[SYS/TEMP] Temporary authentication failure.")

    def reply_sasl_bad(self, tag: bytes | None, text: str) -> None:
        self.err(text)

    def reply_internal_error(self, tag: bytes | None) -> None:
        self.err("[SYS/TEMP] Internal error occurred. Refer to server log for more information.")

    def reply_too_many_bad(self) -> None:
        self.err("Too many invalid commands.")

    def reply_too_many_auth_failures(self) -> None:
        self.err("Too many failed authentication attempts.")

    def reply_inactivity(self) -> None:
        self.err("Disconnected for inactivity.")

    def reply_disconnect(self, text: str, code: str | None = None) -> None:
        # POP3 has no [LIMIT]: a refusal for a limit is a temporary failure.
        self.err(f"[SYS/TEMP] {text}" if code else text)

    def reply_limit_exceeded(self, tag: bytes | None, reason: str) -> None:
        # Dovecot 2.3 pop3-login: a temporary failure of the login.
        self.err(f"[SYS/TEMP] {reason}")

    def bad(self, text: str) -> None:
        self.err(text)
        self.bad_command()

    # -- commands -------------------------------------------------------------

    def process_command(self) -> object:
        line = self.extract_line()
        if line is None:
            return NEED_MORE
        if isinstance(line, TooLong):
            self.bad("Input line too long.")
            return None
        if not line.strip():
            self.bad("Unknown command: ")
            return None
        name, _, arg = line.partition(b" ")
        cmd = name.decode("ascii", "replace").upper()
        handler = getattr(self, f"cmd_{cmd}", None) if cmd.isalpha() else None
        if handler is None:
            printable = cmd if cmd.isprintable() and len(cmd) <= 32 else "?"
            self.bad(f"Unknown command: {printable}")
            return None
        return handler(arg)

    def cmd_CAPA(self, arg: bytes) -> defer.Deferred:
        def send(mechs: list[str]) -> None:
            lines = ["+OK", "CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING",
                     "AUTH-RESP-CODE"]
            if self.backend.tls_available and not self.conn.tls:
                lines.append("STLS")
            if self.plaintext_allowed():
                lines.append("USER")
            lines.append(" ".join(["SASL", *mechs]))
            lines.append(".")
            self.write("".join(f"{x}\r\n" for x in lines).encode())

        return self.advertised_mechanisms().addCallback(send)

    def cmd_QUIT(self, arg: bytes) -> None:
        self.write(b"+OK Logging out\r\n")
        self.close("Aborted login by logging out")

    def cmd_NOOP(self, arg: bytes) -> None:
        self.write(b"+OK\r\n")

    def cmd_XCLIENT(self, arg: bytes) -> None:
        """A trusted proxy's view of the client, as Dovecot's pop3-login takes
        it: ADDR, PORT, SESSION, TTL, FORWARD (base64 forward fields, checked
        and not used); any invalid value rejects the whole update."""
        if not self.forward_trusted:
            self.write(b"+OK You are not from trusted IP - ignoring\r\n")
            return
        values: dict[str, str] = {}
        ok = True
        for item in arg.decode("utf-8", "replace").split(" "):
            key, eq, value = item.partition("=")
            key = key.upper()
            if not eq:
                continue
            if key in ("ADDR", "PORT", "SESSION"):
                values[key] = value
            elif key == "TTL":
                ok = ok and value.isdigit() and len(value) <= 10
            elif key == "FORWARD":
                ok = ok and decode_sasl(value.encode("ascii", "replace")) is not None
        if ok:
            ok = self.forward(remote_ip=values.get("ADDR"), remote_port=values.get("PORT"),
                              session=values.get("SESSION"), strict=True)
        if not ok:
            self.err("Invalid parameters")
            return
        self.write(b"+OK Updated\r\n")

    def cmd_APOP(self, arg: bytes) -> None:
        self.bad("APOP not supported.")

    def cmd_STLS(self, arg: bytes) -> None:
        if self.conn.tls:
            self.bad("TLS is already active.")
        elif not self.backend.tls_available:
            self.bad("TLS support isn't enabled.")
        else:
            self.write(b"+OK Begin TLS negotiation now.\r\n")
            self.start_tls()

    def cmd_USER(self, arg: bytes) -> None:
        if not self.plaintext_allowed():
            self.write(PLAINTEXT_REFUSED)
            self.auth_attempts += 1
            return
        if not arg or b"\0" in arg:
            self.bad("No username given.")
            return
        self._user_arg = arg
        self.user = arg.decode("utf-8", "replace")
        self.write(b"+OK\r\n")

    def cmd_PASS(self, arg: bytes) -> defer.Deferred | None:
        if not self.plaintext_allowed():
            self.write(PLAINTEXT_REFUSED)
            self.auth_attempts += 1
            return None
        user, self._user_arg = self._user_arg, None
        if user is None:
            self.bad("No username given.")
            return None
        if b"\0" in arg:
            self.bad("Invalid password.")
            return None
        return self.start_auth(None, "PLAIN", b"\0" + user + b"\0" + arg)

    def cmd_AUTH(self, arg: bytes) -> defer.Deferred | None:
        args = arg.split()
        if not args:
            def listing(mechs: list[str]) -> None:
                self.write(b"+OK\r\n" + b"".join(m.encode() + b"\r\n" for m in mechs) + b".\r\n")

            return self.advertised_mechanisms().addCallback(listing)
        if len(args) > 2:
            self.bad("Invalid parameters.")
            return None
        mech = args[0].decode("ascii", "replace").upper()
        initial = None
        if len(args) == 2:
            initial = decode_sasl(args[1])
            if initial is None:
                self.bad("Invalid base64 data in initial response")
                return None
        if mech in PLAINTEXT_MECHANISMS and not self.plaintext_allowed():
            self.write(PLAINTEXT_REFUSED)
            self.auth_attempts += 1
            return None

        def check(mechs: list[str]) -> defer.Deferred | None:
            if mech not in mechs:
                self.bad("Unsupported authentication mechanism.")
                return None
            return self.start_auth(None, mech, initial)

        return self.advertised_mechanisms().addCallback(check)


class POP3LoginFactory(LoginFactory):
    """Builds :class:`POP3LoginProtocol` for one listener (110 or 995)."""

    protocol = POP3LoginProtocol
