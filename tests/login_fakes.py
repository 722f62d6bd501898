"""Test doubles for the login and LMTP protocol tests.

A fake :class:`ILoginBackend` (SASL PLAIN/LOGIN for alice/secret, a handoff
that answers like a mail process would), a fake :class:`IDeliveryBackend`,
a self-signed TLS context, and a trial mixin that listens on 127.0.0.1:0
and cleans every server connection up.  Trusts nothing; tests only.
"""

from __future__ import annotations

import os
import ssl as stdlib_ssl

from twisted.internet import defer, reactor, ssl, task
from zope.interface import implementer

from pydovecot.lmtp.interfaces import IDeliveryBackend, TemporaryLookupFailure
from pydovecot.login.interfaces import AuthReply, ConnectionInfo, ILoginBackend, IRelay
from tests.certs import self_signed

USERS = {b"alice": b"secret"}


def server_tls_context() -> ssl.CertificateOptions:
    """A server context with a fresh self-signed certificate (CN=localhost)."""
    cert_pem, key_pem = self_signed("localhost", days=1)
    pem = key_pem + cert_pem
    return ssl.PrivateCertificate.loadPEM(pem).options()


def client_tls_context() -> stdlib_ssl.SSLContext:
    """A client context that does not verify (the cert is self-signed)."""
    ctx = stdlib_ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = stdlib_ssl.CERT_NONE
    return ctx


@implementer(IRelay)
class FakeRelay:
    """Stands in for the mail process behind a TLS relay: answers lines."""

    def __init__(self, transport, service: str):
        self.transport = transport
        self.service = service
        self.received = b""
        self.lost = False

    def from_client(self, data: bytes) -> None:
        self.received += data
        while b"\n" in self.received:
            line, self.received = self.received.split(b"\n", 1)
            words = line.strip().split()
            if self.service == "imap" and len(words) >= 2:
                if words[1].upper() == b"LOGOUT":
                    self.transport.write(b"* BYE Logging out\r\n" + words[0] +
                                         b" OK Logout completed.\r\n")
                    self.transport.loseConnection()
                else:
                    self.transport.write(words[0] + b" OK Done.\r\n")
            elif self.service == "pop3" and words:
                self.transport.write(b"+OK Logging out.\r\n" if words[0].upper() == b"QUIT"
                                     else b"+OK\r\n")
                if words[0].upper() == b"QUIT":
                    self.transport.loseConnection()

    def client_lost(self) -> None:
        self.lost = True


@implementer(ILoginBackend)
class FakeLoginBackend:
    """SASL PLAIN and LOGIN for alice/secret; records handoffs and logs."""

    greeting = "pydovecot ready."
    disable_plaintext_auth = True

    def __init__(self, tls_context=None):
        self.tls_context = tls_context
        self.tls_available = tls_context is not None
        self.mech_list = ["PLAIN", "LOGIN"]
        self.exchanges: dict[str, list] = {}
        self.handoffs: list[dict] = []
        self.disconnects: list[tuple] = []
        self.cancelled = 0
        self.handoff_fails = False
        self.handoff_error: Exception | None = None  # e.g. LimitExceeded(...)
        self.temporary_failure = False
        self.hold_auth = False  # auth_start answers only when released
        self.held: list[defer.Deferred] = []
        self.active = 0  # SASL exchanges in flight
        self.max_active = 0

    def mechanisms(self, conn: ConnectionInfo):
        return defer.succeed(list(self.mech_list))

    def _check(self, user: bytes, password: bytes) -> AuthReply:
        if self.temporary_failure:
            return AuthReply("fail", temporary=True)
        if USERS.get(user) == password:
            return AuthReply("ok", user=user.decode(), cookie=os.urandom(16))
        return AuthReply("fail", user=user.decode("utf-8", "replace"))

    def auth_start(self, conn, service, mechanism, initial):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        d = self._auth_start(conn, service, mechanism, initial)
        if self.hold_auth:
            held: defer.Deferred = defer.Deferred()
            self.held.append(held)
            held.addCallback(lambda _, answer=d: answer)
            d = held

        def done(reply):
            self.active -= 1
            return reply

        return d.addBoth(done)

    def _auth_start(self, conn, service, mechanism, initial):
        self.exchanges[conn.session_id] = [mechanism]
        if mechanism == "PLAIN":
            if initial is None:
                return defer.succeed(AuthReply("continue", challenge=b""))
            return defer.succeed(self._plain(initial))
        if mechanism == "LOGIN":
            return defer.succeed(AuthReply("continue", challenge=b"Username:"))
        return defer.succeed(AuthReply("fail"))

    def _plain(self, data: bytes) -> AuthReply:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return AuthReply("fail")
        return self._check(parts[1], parts[2])

    def auth_continue(self, conn, response):
        state = self.exchanges[conn.session_id]
        state.append(response)
        if state[0] == "PLAIN":
            return defer.succeed(self._plain(response))
        if len(state) == 2:
            return defer.succeed(AuthReply("continue", challenge=b"Password:"))
        return defer.succeed(self._check(state[1], state[2]))

    def auth_cancel(self, conn):
        self.cancelled += 1

    def start_tls(self, protocol) -> None:
        protocol.transport.startTLS(self.tls_context)

    def handoff(self, protocol, conn, reply, service, mechanism, tag, pending):
        if self.handoff_fails:
            return defer.fail(RuntimeError("master is gone"))
        if self.handoff_error is not None:
            return defer.fail(self.handoff_error)
        self.handoffs.append(dict(user=reply.user, service=service, mechanism=mechanism,
                                  tag=tag, pending=pending, tls=conn.tls, protocol=protocol))
        transport = protocol.transport
        if service == "imap":
            transport.write(tag + b" OK Logged in\r\n")
        else:
            transport.write(b"+OK Logged in.\r\n")
        if conn.tls:
            relay = FakeRelay(transport, service)
            self.handoffs[-1]["relay"] = relay
            return defer.succeed(relay)
        return defer.succeed(None)

    def log_login(self, conn, service, user, mechanism, mpid):
        pass

    def log_disconnect(self, conn, service, reason, user, auth_attempts):
        self.disconnects.append((service, reason, user, auth_attempts))


class UntrustedMixin:
    """Factory mixin: every connection counts as untrusted (not loopback)."""

    def connection_info(self, transport):
        conn = super().connection_info(transport)
        conn.trusted = False
        return conn


@implementer(IDeliveryBackend)
class FakeDeliveryBackend:
    """Knows alice and carol; ``temp@…`` fails temporarily; records mail."""

    users = {"alice": "alice", "alice@example.com": "alice", "carol@example.com": "carol"}

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.delivered: list[tuple[str, bytes, str, str]] = []
        self.fail_users: set[str] = set()

    def _later(self, f, *a):
        return task.deferLater(reactor, self.delay, f, *a)

    def lookup(self, address: str):
        def answer():
            if address.startswith("temp@"):
                raise TemporaryLookupFailure(address)
            user = self.users.get(address.lower())
            return None if user is None else {"user": user, "uid": 1000}
        return self._later(answer)

    def deliver(self, user, fields, message_fd, sender, recipient, session="", msgid="",
                orig_recipient=None):
        def store():
            if user in self.fail_users:
                raise OSError("disk full")
            size = os.fstat(message_fd).st_size
            self.delivered.append((user, os.pread(message_fd, size, 0), sender, recipient))
        return self._later(store)

    def check_quota(self, user, fields, size):
        """Everyone fits (the quota tests have their own backend)."""
        return self._later(lambda: None)


class ListeningMixin:
    """trial TestCase mixin: listen on 127.0.0.1:0, clean up connections."""

    def listen(self, factory) -> int:
        self.server_protocols = protocols = []
        build = factory.buildProtocol

        def record(addr):
            p = build(addr)
            protocols.append(p)
            return p

        factory.buildProtocol = record
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._cleanup, port)
        return port.getHost().port

    @defer.inlineCallbacks
    def _cleanup(self, port):
        for _ in range(30):
            if all(p.transport is None or p.transport.disconnected
                   for p in self.server_protocols):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        for p in self.server_protocols:
            if p.transport is not None and not p.transport.disconnected:
                p.transport.abortConnection()
        yield task.deferLater(reactor, 0.01, lambda: None)
        yield port.stopListening()
