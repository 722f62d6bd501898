"""The lmtp process: LMTP from the MTA, delivery through the master.

Started by the master as root with its listening sockets and master channel
(fd 3).  It connects to authd's auth-userdb socket (recipient lookups, no
passwords), adopts its listeners, then chroots to an empty directory and
drops to default_internal_user.  Messages are spooled in memory files and
passed to the master as file descriptors; lmtp never touches a mailbox.

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
from pydovecot.lmtp.protocol import LMTPFactory
from pydovecot.master.protocol import DeliverRequest

log = Logger()


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
            log.error("userdb lookup for {address} failed: {e}", address=address,
                      e=failure.getErrorMessage())
            raise TemporaryLookupFailure(address)

        return d.addCallback(answered).addErrback(failed)

    def deliver(self, user: str, fields: dict, message_fd: int, sender: str, recipient: str,
                session: str = ""):
        d = self.master.callRemote(DeliverRequest, fd=message_fd, user=user, sender=sender,
                                   recipient=recipient, session=session)
        return d.addCallback(lambda _: None)


@defer.inlineCallbacks
def start(args):
    config = load_config(args.config)
    base_dir = config.path_setting("base_dir")

    master = ChannelAMP(on_lost=lambda _: stop_process("master went away"))
    adopt_channel(MASTER_FD, master)
    auth = ChannelAMP(on_lost=lambda _: stop_process("lost the connection to authd"))
    endpoint = UNIXClientEndpoint(reactor, os.path.join(base_dir, "auth-userdb"), timeout=10)
    yield connectProtocol(endpoint, auth)

    backend = MasterDelivery(auth, master, config.get("recipient_delimiter"))
    hostname = config.get("hostname") or socket.gethostname()
    max_size = config.get_size("lmtp_max_message_size") if _known(
        config, "lmtp_max_message_size") else 64 * 1024 * 1024
    for spec in args.listener:
        _name, fd, _ssl = spec.rsplit(":", 2)
        adopt_listener(int(fd), LMTPFactory(backend, hostname, max_size))

    if privileges.is_root():
        uid, gid = privileges.lookup_user(config.get("default_internal_user"))
        privileges.enter_chroot(args.chroot)
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
