"""The lmtp process: LMTP from the MTA, delivery through the master.

Started by the master as root with its listening sockets and master channel
(fd 3).  It adopts its listeners, chroots to base_dir (which holds only the
master's sockets; it must reach auth-userdb there again when authd
restarts) and drops to default_internal_user.  Recipient lookups go to
authd's auth-userdb socket (no passwords); the connection is remade when
authd restarts, and a lookup authd does not answer within
:data:`LOOKUP_TIMEOUT` is a ``451 4.3.0``, never a hang.  Messages are
spooled in memory files and passed to the master as file descriptors; lmtp
never touches a mailbox.

Trusts: the master and authd.  Does not trust: the MTA's bytes, parsed by
``pydovecot.lmtp.protocol``.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401  (before the chroot)
import json
import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from authd.protocol import UserLookup
from pydovecot import privileges
from pydovecot.channel import (
    MASTER_FD,
    ChannelAMP,
    adopt_channel,
    adopt_listener,
    run_child,
    stop_process,
)
from pydovecot.config import load_config
from pydovecot.lmtp.interfaces import IDeliveryBackend, TemporaryLookupFailure
from pydovecot.lmtp.protocol import LMTPFactory, LMTPSettings
from pydovecot.log import sanitize
from pydovecot.master.protocol import DeliverRequest, QuotaCheckRequest
from pydovecot.tls import server_context_factory

log = Logger()

#: Seconds a recipient lookup may wait for authd before it is a 451 4.3.0.
LOOKUP_TIMEOUT = 10.0
#: Reconnect delays while authd is away (seconds, doubling up to the last).
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0)


class AuthUserdbClient:
    """lmtp's connection to auth-userdb: remade whenever authd goes away;
    every call answers (or fails) within ``timeout``."""

    def __init__(self, path: str, timeout: float = LOOKUP_TIMEOUT, clock=None):
        self.path = path
        self.timeout = timeout
        self.clock = clock or reactor
        self.protocol: ChannelAMP | None = None
        self._connecting: defer.Deferred | None = None
        self._retry = 0
        self._stopped = False

    def connect(self) -> defer.Deferred:
        """Deferred[ChannelAMP], connecting if needed (shared by callers)."""
        if self.protocol is not None:
            return defer.succeed(self.protocol)
        pending = self._connecting
        if pending is None:
            proto = ChannelAMP(on_lost=lambda _: self._lost(proto))
            endpoint = UNIXClientEndpoint(self.clock, self.path, timeout=self.timeout)

            def connected(p):
                self.protocol, self._retry = p, 0
                return p

            def failed(failure):
                self._schedule()
                return failure

            pending = self._connecting = defer.Deferred()
            d = connectProtocol(endpoint, proto).addCallbacks(connected, failed)
            d.addBoth(self._connect_done).addBoth(pending.callback)
        mine = defer.Deferred()
        pending.addBoth(lambda r: (mine.callback(r), r)[1])
        return mine

    def _connect_done(self, result):
        """The connection (or None when it failed) for every waiter."""
        self._connecting = None
        if isinstance(result, Failure):
            result.trap(Exception)
            return None
        return result

    def _lost(self, proto) -> None:
        if self.protocol is proto:
            self.protocol = None
        if not self._stopped:
            log.warn("connection to authd lost; reconnecting")
            self._schedule()

    def _schedule(self) -> None:
        delay = RECONNECT_DELAYS[min(self._retry, len(RECONNECT_DELAYS) - 1)]
        self._retry += 1
        self.clock.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        if not self._stopped and self.protocol is None and self._connecting is None:
            self.connect()

    def callRemote(self, command, **kwargs) -> defer.Deferred:
        """Like AMP's, but failing with TimeoutError after ``timeout``
        (the late answer, if any, is dropped)."""
        result = defer.Deferred()

        def answer(value):
            if not result.called:
                result.callback(value)

        def timed_out():
            if not result.called:
                result.errback(TimeoutError(f"authd did not answer in {self.timeout:.0f}s"))

        timer = self.clock.callLater(self.timeout, timed_out)
        d = self.connect()

        def call(proto):
            if proto is None:
                raise ConnectionError("authd is not reachable")
            return proto.callRemote(command, **kwargs)

        d.addCallback(call)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), answer(r))[1])
        return result

    def stop(self) -> None:
        self._stopped = True


@implementer(IDeliveryBackend)
class MasterDelivery:
    """Looks recipients up in authd and delivers through the master."""

    def __init__(self, auth: ChannelAMP, master: ChannelAMP, delimiter: str):
        self.auth = auth
        self.master = master
        self.delimiter = delimiter

    def strip_detail(self, address: str) -> str:
        """``alice+list@example.org`` → ``alice@example.org``."""
        local, at, domain = address.partition("@")
        for delim in self.delimiter:
            if delim and delim in local:
                local = local.split(delim, 1)[0]
                break
        return f"{local}{at}{domain}"

    def lookup(self, address: str):
        d = self.auth.callRemote(UserLookup, user=self.strip_detail(address), service="lmtp")

        def answered(result):
            if result.get("temporary"):
                raise TemporaryLookupFailure(address)
            if not result["found"]:
                return None
            fields = json.loads(result.get("fields") or "{}")
            fields["user"] = result["user"]
            return fields

        def failed(failure):
            failure.trap(Exception)
            if failure.check(TemporaryLookupFailure):
                return failure
            log.error("userdb lookup for {address} failed: {e}", address=sanitize(address),
                      e=sanitize(failure.getErrorMessage()))
            raise TemporaryLookupFailure(address)

        return d.addCallback(answered).addErrback(failed)

    def deliver(self, user: str, fields: dict, message_fd: int, sender: str, recipient: str,
                session: str = "", msgid: str = "", orig_recipient: str | None = None):
        extra = {"orig_recipient": orig_recipient} if orig_recipient else {}
        d = self.master.callRemote(DeliverRequest, fd=message_fd, user=user, sender=sender,
                                   recipient=recipient, session=session, msgid=msgid, **extra)
        return d.addCallback(lambda r: r.get("mailbox") or "INBOX")

    def check_quota(self, user: str, fields: dict, size: int):
        """Asks the user's mail process, through the master (lmtp never
        reads mail storage); an unknown user or a failed check lets the
        recipient through to DATA, where delivery decides."""
        d = self.master.callRemote(QuotaCheckRequest, user=user, size=max(0, int(size)))

        def failed(failure):
            log.warn("quota check for {user} failed: {e}", user=sanitize(user),
                     e=sanitize(failure.getErrorMessage()))
            return None

        return d.addCallbacks(lambda r: r["reply"] or None, failed)


@defer.inlineCallbacks
def start(args):
    config = load_config(args.config)
    base_dir = config.path_setting("base_dir")

    master = ChannelAMP(on_lost=lambda _: stop_process("master went away"))
    adopt_channel(MASTER_FD, master)
    root = privileges.is_root()
    auth = AuthUserdbClient(os.path.join(base_dir, "auth-userdb"))
    if (yield auth.connect()) is None:
        log.warn("authd not reachable yet; lookups will retry")

    backend = MasterDelivery(auth, master, config.get("recipient_delimiter"))
    hostname = config.get("hostname") or socket.gethostname()
    max_size = config.get_size("lmtp_max_message_size") if _known(
        config, "lmtp_max_message_size") else 64 * 1024 * 1024
    # STARTTLS and XCLIENT (login_trusted_networks) need these settings.
    tls_context = server_context_factory(config)
    settings = LMTPSettings.from_config(config, hostname, max_size, tls_context)
    for spec in args.listener:
        _name, fd, _ssl = spec.rsplit(":", 2)
        adopt_listener(int(fd), LMTPFactory(backend, hostname, max_size, settings=settings))

    if root:
        uid, gid = privileges.lookup_user(config.get("default_internal_user"))
        # Not the empty login chroot: auth-userdb must stay reachable for
        # reconnects.  base_dir is root's and holds only sockets, each with
        # the mode the master gave it.
        privileges.enter_chroot(base_dir)
        auth.path = "/auth-userdb"  # the same socket, seen from inside
        privileges.drop_to(uid, gid)
        privileges.set_no_new_privs()
    else:
        log.info("not started as root: running unchrooted as uid {uid}", uid=os.getuid())


def _known(config, key: str) -> bool:
    try:
        return bool(config.get(key))
    except Exception:
        return False



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pydovecot-lmtp")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--listener", action="append", default=[])
    parser.add_argument("--chroot", required=True)
    args = parser.parse_args(argv)
    run_child("lmtp", lambda: start(args))


if __name__ == "__main__":
    main()
