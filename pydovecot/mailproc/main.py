"""The per-user mail process: IMAP and POP3 sessions and deliveries.

Started by the master with ``spawnProcess`` as root (or as the master's own
user), it imports everything it will ever need and waits, idle, on its
channel (fd 3).  :class:`~pydovecot.master.protocol.Assign` makes it take on
one uid/gid for good — before it sees a single client byte.  From then on it
serves every session and delivery of that uid from one reactor.

Trusts: the master (user names, userdb fields, fds).  Does not trust: the
clients' bytes, which the protocol engines parse.
"""

from __future__ import annotations

import argparse
import codecs

# Imported before any privilege drop: after it, nothing new can be imported
# when the interpreter lives under a 0700 directory.
import email.parser  # noqa: F401
import encodings.idna  # noqa: F401
import json
import os
import signal
import socket
import sys

import setproctitle
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.logger import Logger

import pydovecot.storage.maildir  # noqa: F401  (open_storage imports it lazily)
from pydovecot import privileges
from pydovecot.channel import MASTER_FD, ChannelAMP, ChannelLocator, adopt_channel, stop_process
from pydovecot.config import load_config
from pydovecot.config.variables import expand
from pydovecot.imap.session import IMAPSession
from pydovecot.log import start_child_logging
from pydovecot.mailproc.rehearsal import rehearse
from pydovecot.master.protocol import Assign, Deliver, NewClient, SessionEnded
from pydovecot.pop3.session import POP3Session
from pydovecot.session import SessionContext
from pydovecot.storage import open_storage
from pydovecot.storage.interfaces import IMailStorage

log = Logger()

# Charsets mail may be written in: load their codecs while we still can.
PRELOAD_CODECS = (
    "utf-8 latin-1 ascii cp1252 cp1251 cp1250 iso8859-2 iso8859-15 iso8859-5 koi8-r "
    "iso2022-jp shift_jis euc-jp gb2312 gbk gb18030 big5 euc-kr utf-16 utf-7"
).split()


def preload_codecs() -> None:
    for name in PRELOAD_CODECS:
        try:
            codecs.lookup(name)
        except LookupError:
            pass


class MailProcess:
    """One mail process: its storages (one per user) and its sessions."""

    def __init__(self, config):
        self.config = config
        self.storages: dict[str, IMailStorage] = {}
        self.sessions: set = set()
        self.assigned = False
        self.channel: ChannelAMP | None = None
        self._settings: dict[str, dict] = {}

    # -- from the master ---------------------------------------------------

    def assign(self, uid: int, gid: int, groups: list[int], label: str) -> dict:
        if self.assigned:
            raise RuntimeError("mail process already assigned")
        if privileges.is_root():
            privileges.drop_to(uid, gid, groups)
            privileges.set_no_new_privs()
        self.assigned = True
        setproctitle.setproctitle(f"pydovecot/mail {label}")
        return {}

    def storage_for(self, user: str, fields: dict) -> IMailStorage:
        storage = self.storages.get(user)
        if storage is None:
            home = fields.get("home", "")
            values = {"user": user, "home": home, "uid": str(os.getuid()),
                      "gid": str(os.getgid()), "service": "imap"}
            location = fields.get("mail") or self.config.get("mail_location")
            location = expand(location, values)
            storage = open_storage(user, location, home)
            self.storages[user] = storage
        return storage

    def new_client(self, fd: int, service: str, user: str, fields: str, pending: bytes,
                   session: str, local_ip: str, local_port: int, remote_ip: str,
                   remote_port: int, secured: bool, tag: bytes | None = None) -> dict:
        try:
            if not self.assigned:
                raise RuntimeError("mail process was given a client before Assign")
            userdb = json.loads(fields)
            storage = self.storage_for(user, userdb)
            ctx = SessionContext(
                user=user, session_id=session, remote_ip=remote_ip, remote_port=remote_port,
                local_ip=local_ip, local_port=local_port, secured=secured, fields=userdb,
                settings=self.session_settings(service),
                namespaces=getattr(self.config, "namespaces", None) or {},
            )
            if service == "pop3":
                proto = POP3Session(storage, ctx)
            else:
                proto = IMAPSession(storage, ctx)
            self._watch(proto, session)
            sock = socket.socket(fileno=fd)
            try:
                reactor.adoptStreamConnection(
                    sock.fileno(), sock.family, Factory.forProtocol(lambda: proto))
            finally:
                sock.detach()
                os.close(fd)
        except Exception:
            log.failure("cannot start session {session} for {user}", session=session, user=user)
            raise
        if service == "pop3":
            proto.start(pending)
        else:
            proto.start(tag, pending)
        return {}

    def deliver(self, fd: int, user: str, fields: str, session: str) -> dict:
        try:
            storage = self.storage_for(user, json.loads(fields))
            with os.fdopen(fd, "rb") as message:
                message.seek(0)
                _validity, uid = storage.append("INBOX", message)
        except Exception:
            log.failure("delivery to {user} failed", user=user)
            raise
        return {"uid": uid, "mailbox": "INBOX"}

    def session_settings(self, service: str) -> dict:
        """The settings a session reads, per protocol; looked up once (the
        config never changes in a mail process), copied for each session."""
        settings = self._settings.get(service)
        if settings is None:
            settings = self._settings[service] = {
                key: self.config.get(key, protocol=service) for key in SESSION_SETTINGS}
        return dict(settings)

    # -- sessions ----------------------------------------------------------

    def _watch(self, proto, session: str) -> None:
        """Tell the master when ``proto``'s connection ends."""
        self.sessions.add(proto)
        lost = proto.connectionLost

        def connection_lost(reason):
            try:
                lost(reason)
            finally:
                self.sessions.discard(proto)
                if self.channel is not None and self.channel.transport is not None:
                    self.channel.callRemote(SessionEnded, session=session)

        proto.connectionLost = connection_lost

    def shutdown(self) -> None:
        for proto in list(self.sessions):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.loseConnection()


SESSION_SETTINGS = (
    "imap_max_line_length", "imap_idle_notify_interval", "imap_capability", "imap_literal_minus",
    "imap_logout_format", "pop3_uidl_format", "pop3_logout_format", "mail_max_userip_connections",
    "hostname", "imap_autologout", "pop3_autologout",
)


class MailLocator(ChannelLocator):
    """The commands the master may send a mail process."""

    def __init__(self, process: MailProcess):
        self.process = process

    @Assign.responder
    def assign(self, uid, gid, groups, label):
        return self.process.assign(uid, gid, groups, label)

    @NewClient.responder
    def new_client(self, **kwargs):
        return self.process.new_client(**kwargs)

    @Deliver.responder
    def deliver(self, **kwargs):
        return self.process.deliver(**kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pydovecot-mail")
    parser.add_argument("-c", "--config", default=None)
    args = parser.parse_args(argv)
    start_child_logging("mail")
    setproctitle.setproctitle("pydovecot/mail (idle)")
    preload_codecs()
    config = load_config(args.config)
    process = MailProcess(config)

    def master_gone(_reason):
        # The master is our only reason to exist.
        process.shutdown()
        stop_process("master went away")

    channel = ChannelAMP(MailLocator(process), on_lost=master_gone)
    process.channel = channel

    def begin():
        # Rehearse while still privileged, then take the master's commands
        # (they wait in the socket meanwhile).
        d = rehearse(process.session_settings("imap"))
        d.addBoth(lambda _: adopt_channel(MASTER_FD, channel))

    reactor.callWhenRunning(begin)

    def on_term(*_):
        reactor.callFromThread(process.shutdown)
        reactor.callFromThread(stop_process, "SIGTERM from the master")

    signal.signal(signal.SIGTERM, on_term)
    reactor.run(installSignalHandlers=False)
    sys.exit(0)


if __name__ == "__main__":
    main()
