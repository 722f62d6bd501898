"""The contract between a login protocol and the login process around it.

Login protocols (``pydovecot.login.imap``, ``pydovecot.login.pop3``) speak
only the pre-auth grammar.  Everything else — asking authd, TLS contexts,
handing the connection over to the master — is done by an
:class:`ILoginBackend` that the login process gives them.  The protocols
trust nothing from the client and never see a password hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zope.interface import Attribute, Interface


@dataclass
class ConnectionInfo:
    """Addresses and state of one client connection."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    session_id: str
    tls: bool = False  # TLS is on (implicit or after STARTTLS/STLS)
    trusted: bool = False  # loopback or login_trusted_networks
    #: The client's transport, for what only the TLS session knows (channel
    #: binding, the client certificate); set by the login process.
    transport: Any = field(default=None, repr=False, compare=False)

    @property
    def secured(self) -> bool:
        """Plaintext auth is allowed: TLS, or a trusted network."""
        return self.tls or self.trusted


@dataclass
class AuthReply:
    """authd's answer to one SASL step (see authd.protocol.AUTH_REPLY)."""

    status: str  # "continue" | "ok" | "fail"
    challenge: bytes | None = None  # raw bytes; the protocol base64-encodes
    user: str | None = None
    cookie: bytes | None = None
    reason: str | None = None
    temporary: bool = False


class IRelay(Interface):
    """After a TLS connection is handed off, the login process relays
    plaintext between the client's TLS transport and the mail process."""

    def from_client(data: bytes) -> None:
        """Decrypted bytes from the client, to go to the mail process."""

    def client_lost() -> None:
        """The client's connection is gone."""


class ILoginBackend(Interface):
    """What a login protocol may ask of its login process."""

    tls_available = Attribute("bool: a certificate is configured (STARTTLS/STLS)")
    disable_plaintext_auth = Attribute("bool: refuse plaintext auth unless secured")
    greeting = Attribute("str: login_greeting, e.g. 'Dovecot ready.'")

    def mechanisms(conn: ConnectionInfo):
        """Deferred[list[str]]: SASL mechanisms to advertise on ``conn``."""

    def auth_start(conn: ConnectionInfo, service: str, mechanism: str, initial: bytes | None):
        """Deferred[AuthReply]: start a SASL exchange (one per connection).

        The backend applies auth_failure_delay before a "fail" reply fires.
        """

    def auth_continue(conn: ConnectionInfo, response: bytes):
        """Deferred[AuthReply]: the client's decoded answer to a challenge."""

    def auth_cancel(conn: ConnectionInfo) -> None:
        """The client cancelled or went away mid-exchange."""

    def start_tls(protocol) -> None:
        """Switch ``protocol.transport`` to TLS (server side), at once.
        Call it after writing the OK reply to STARTTLS/STLS."""

    def handoff(protocol, conn: ConnectionInfo, reply: AuthReply, service: str,
                mechanism: str, tag: bytes | None, pending: bytes):
        """Deferred[IRelay | None]: give the connection to a mail process.

        ``tag`` is the IMAP tag of the LOGIN/AUTHENTICATE command (None for
        POP3); the mail process sends the final OK.  ``pending`` holds the
        bytes read after that command (pipelining).  The protocol must have
        paused its transport and must not write to it again.  The result is
        None for a plaintext connection (the fd has left this process: ignore
        the later connectionLost) or an IRelay for TLS (resume the transport
        and feed it everything the client sends).  On failure the protocol
        answers with a temporary error and closes.
        """

    def log_login(conn: ConnectionInfo, service: str, user: str, mechanism: str, mpid: int) -> None:
        """Log the Dovecot-shaped ``Login: user=<…>, method=…`` line."""

    def log_disconnect(conn: ConnectionInfo, service: str, reason: str, user: str | None,
                       auth_attempts: int) -> None:
        """Log ``Disconnected (…): user=<…>, rip=…`` for a connection that
        did not log in."""
