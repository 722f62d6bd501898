"""The per-user mail process: IMAP and POP3 sessions and deliveries.

Started by the master with ``spawnProcess`` as root (or as the master's own
user), it imports everything it will ever need and waits, idle, on its
channel (fd 3).  :class:`~pydovecot.master.protocol.Assign` makes it take on
one uid/gid for good — before it sees a single client byte.  From then on it
serves every session and delivery of that uid from one reactor.  Every
codec Python has is loaded before that drop (mail and SEARCH may name any
charset; nothing can be imported afterwards).  Users' homes are created
here, with the user's privileges, never by the root master.

One user's failure is that user's alone: every command from the master
declares its errors, a responder's undeclared exception is logged once and
answered as a declared one (AMP would otherwise close the channel, and
every session of this uid with it), and a delivery that cannot be saved is
a :class:`~pydovecot.master.protocol.DeliveryFailed` for that recipient.

Trusts: the master (user names, userdb fields, fds).  Does not trust: the
clients' bytes, which the protocol engines parse.
"""

from __future__ import annotations

import argparse
import codecs

# Imported before any privilege drop: after it, nothing new can be imported
# when the interpreter lives under a 0700 directory.
import email.charset
import email.parser  # noqa: F401
import encodings
import encodings.aliases
import encodings.idna  # noqa: F401
import functools
import json
import os
import pkgutil
import signal
import socket
import stringprep  # noqa: F401  (idna, SASLprep)
import sys
import time
import unicodedata  # noqa: F401

import setproctitle
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

import pydovecot.storage.maildir  # noqa: F401  (open_storage imports it lazily)
import pydovecot.storage.mbox  # noqa: F401  (likewise)
from pydovecot import privileges
from pydovecot.admin.protocol import AdminRequest
from pydovecot.channel import MASTER_FD, ChannelAMP, ChannelLocator, adopt_channel, stop_process
from pydovecot.config import load_config
from pydovecot.config.variables import expand_path
from pydovecot.imap.session import IMAPSession
from pydovecot.log import sanitize, start_child_logging
from pydovecot.mailproc import admin, autoexpunge, delivery
from pydovecot.mailproc.rehearsal import rehearse
from pydovecot.managesieve.session import new_session as new_managesieve_session
from pydovecot.master.protocol import (
    Assign,
    Deliver,
    DeliveryFailed,
    NewClient,
    QuotaCheck,
    ServeStorage,
    SessionEnded,
)
from pydovecot.pop3.session import POP3Session
from pydovecot.session import SessionContext
from pydovecot.stats import events
from pydovecot.storage import open_storage
from pydovecot.storage.interfaces import IMailStorage, StorageError
from pydovecot.storage.rpc import broker as rpc_broker
from pydovecot.submission.session import new_session as new_submission_session

log = Logger()

def codec_names() -> set[str]:
    """Every codec this interpreter has, derived rather than hand-kept:
    each ``encodings`` submodule with a codec, every alias target, and the
    charsets the email package maps names to.  Mail may arrive in any of
    them, SEARCH CHARSET may name any, and mailbox names need utf-16-be."""
    names = {m.name for m in pkgutil.iter_modules(encodings.__path__)}
    names |= set(encodings.aliases.aliases.values())
    names |= {v for v in email.charset.ALIASES.values()}
    names |= {v[2] for v in email.charset.CHARSETS.values() if v[2]}
    names |= set(email.charset.CODEC_MAP.values()) - {None}
    return names


def preload_codecs() -> list[str]:
    """Import every codec while still privileged (about 3 MiB, measured:
    cheaper than a LookupError for one user's mail after the drop);
    returns the names that are no codec here (Windows-only ones)."""
    missing = []
    for name in sorted(codec_names()):
        try:
            codecs.lookup(name)  # imports encodings.<module> through the registry
        except (ImportError, LookupError, AttributeError):
            missing.append(name)
    return missing


def contained(command):
    """Wrap a responder for ``command`` so that an error it does not declare
    is logged here, once, and answered as a declared one: an undeclared
    exception would make AMP close the channel, and with it every session
    this process serves."""
    declared = tuple(command.errors)

    def wrap(method):
        @functools.wraps(method)
        def responder(self, **kwargs):
            try:
                return method(self, **kwargs)
            except declared:
                raise
            except Exception:
                log.failure("{command}: unexpected error (contained)",
                            command=command.__name__)
                raise RuntimeError("internal error") from None

        return command.responder(responder)

    return wrap


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
        """The user's storage, opened once; the home is created here, with
        the user's privileges (as Dovecot's mail processes do)."""
        storage = self.storages.get(user)
        if storage is None:
            home = fields.get("home", "")
            values = {"user": user, "home": home, "uid": str(os.getuid()),
                      "gid": str(os.getgid()), "service": "imap"}
            location = fields.get("mail") or self.config.get("mail_location")
            location = expand_path(location, values)
            if location.startswith("rpc:"):  # another uid's storage, via the master
                storage = rpc_broker.remote_storage(self.channel, user, location[4:])
                self.storages[user] = storage
                return storage
            if home:
                make_home(home)
            storage = open_storage(user, location, home)
            # mail_cache_* limits; the local storage applies them before it
            # answers, so sessions started right after see them
            settings = {k: self.config.get(k) for k in CACHE_SETTINGS}
            settings.update(quota_settings(self.config, fields))
            storage.configure(settings).addErrback(
                lambda f, user=user: log.error("configuring the storage of {user} failed: {e}",
                                               user=sanitize(user), e=f.getErrorMessage()))
            self.storages[user] = storage
        return storage

    def new_client(self, fd: int, service: str, user: str, fields: str, pending: bytes,
                   session: str, local_ip: str, local_port: int, remote_ip: str,
                   remote_port: int, secured: bool, tag: bytes | None = None) -> dict:
        """Take over a logged-in client.  A user whose storage cannot be
        opened is refused (the login process answers NO) and logged once;
        the fd is ours either way."""
        adopted = False
        try:
            if not self.assigned:
                raise RuntimeError("mail process was given a client before Assign")
            userdb = json.loads(fields)
            try:
                storage = self.storage_for(user, userdb)
            except (OSError, StorageError, ValueError) as e:
                log.error("cannot start session {session}: {e}", session=sanitize(session),
                          e=sanitize(_reason(e)),
                          log_prefix=f"{service}({sanitize(user)})<{os.getpid()}>")
                raise RuntimeError(f"cannot open the mail storage: {_reason(e)}") from None
            ctx = SessionContext(
                user=user, session_id=session, remote_ip=remote_ip, remote_port=remote_port,
                local_ip=local_ip, local_port=local_port, secured=secured, fields=userdb,
                settings=self.session_settings(service),
                namespaces=getattr(self.config, "namespaces", None) or {},
            )
            autoexpunge.session_starting(self, storage, ctx, service)
            if service == "pop3":
                proto = POP3Session(storage, ctx)
            elif service == "sieve":
                proto = new_managesieve_session(self.config, ctx)
            elif service == "submission":
                proto = new_submission_session(self.config, storage, ctx)
            else:
                proto = IMAPSession(storage, ctx)
            sock = socket.socket(fileno=fd)
            try:
                reactor.adoptStreamConnection(
                    sock.fileno(), sock.family, Factory.forProtocol(lambda: proto))
            finally:
                sock.detach()
            adopted = True
            self._watch(proto, session)
        finally:
            os.close(fd)  # the reactor holds its own duplicate once adopted
        if adopted:
            if service == "pop3":
                proto.start(pending)
            elif service in ("sieve", "submission"):
                proto.start(tag if service == "submission" else None, pending)
            else:
                proto.start(tag, pending)
        return {}

    def deliver(self, fd: int, user: str, fields: str, session: str, msgid: str = "",
                sender: str | None = None, recipient: str | None = None,
                orig_recipient: str | None = None):
        """Save the message read from ``fd`` into the user's INBOX, or where
        the user's Sieve scripts say (``mail_plugins = … sieve`` for lmtp;
        see :mod:`pydovecot.mailproc.delivery`).  Any failure is this
        recipient's alone: logged once, with its reason, and answered as
        :class:`DeliveryFailed` (an LMTP 4xx)."""
        prefix = f"lmtp({sanitize(user)})<{os.getpid()}><{sanitize(session)}>"
        what = f"msgid={sanitize(msgid or '<none>')}: save failed to INBOX"
        message = os.fdopen(fd, "rb")
        try:
            userdb = json.loads(fields)
            storage = DeliveryStorage(self.storage_for(user, userdb))  # quota_grace
        except (OSError, StorageError, ValueError) as e:
            message.close()
            log.error("{what}: cannot open the user's storage: {e}", what=what,
                      e=sanitize(_reason(e)), log_prefix=prefix)
            raise DeliveryFailed(DeliveryFailed.TEMPORARY) from None
        start = time.monotonic()
        d = delivery.deliver(self.config, storage, user, userdb, message, session, msgid,
                             sender, recipient, prefix, orig_recipient=orig_recipient)

        def close(result: object) -> object:
            size = os.fstat(message.fileno()).st_size if not message.closed else 0
            message.close()  # once the storage has answered
            fields = {"user": user, "message_id": msgid or "", "message_size": size}
            if isinstance(result, Failure):
                fields["error"] = sanitize(_reason(result.value), 200)
            events.emit("mail_delivery_finished", duration=events.since(start), **fields)
            return result

        return d.addBoth(close)

    def check_quota(self, user: str, fields: str, size: int) -> defer.Deferred[dict]:
        """Would ``size`` octets fit ``user``'s INBOX now?  ``reply`` is ""
        or the LMTP/SMTP answer Dovecot gives (552 5.2.2, or 452 4.2.2 with
        quota_full_tempfail = yes)."""
        try:
            storage = self.storage_for(user, json.loads(fields))
        except Exception as e:
            log.error("quota check: cannot open the storage of {user}: {e}",
                      user=sanitize(user), e=sanitize(_reason(e)))
            raise DeliveryFailed(DeliveryFailed.TEMPORARY) from None

        def over(failure):
            failure.trap(StorageError)
            reply = delivery.quota_reply(failure.value)
            if reply is None:
                raise DeliveryFailed(DeliveryFailed.TEMPORARY)
            code, _, text = reply.partition(" ")
            enh, _, text = text.partition(" ")
            return {"reply": f"{code} {enh} <{user}> {text}"}

        return storage.check_quota("INBOX", max(0, size)).addCallbacks(
            lambda _: {"reply": ""}, over)

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


class DeliveryStorage:
    """The user's storage as a delivery (LMTP, Sieve's fileinto) sees it:
    each append runs inside the storage's ``delivering()`` (quota_grace
    lets the message that crosses the limit in, as Dovecot's LDA/LMTP
    does); everything else is the storage's own."""

    def __init__(self, storage: IMailStorage):
        self._storage = storage

    def __getattr__(self, name: str):
        return getattr(self._storage, name)

    def append(self, *args, **kwargs):
        grace = getattr(self._storage, "delivering", None)
        if grace is None:
            return self._storage.append(*args, **kwargs)
        with grace():
            return self._storage.append(*args, **kwargs)


def quota_enabled(config) -> bool:
    """``quota`` in ``mail_plugins``, globally or for any protocol."""
    values = [config.get("mail_plugins")]
    values += [v.get("mail_plugins", "") for v in
               (getattr(config, "protocol_settings", None) or {}).values()]
    return any("quota" in (v or "").replace(",", " ").split() for v in values)


def quota_settings(config, fields: dict) -> dict[str, str]:
    """The quota plugin's settings for one user: ``plugin {}``, then the
    userdb's ``quota*`` fields over them (``userdb_quota_rule=*:storage=50M``
    arrives as ``quota_rule``), as Dovecot merges them; ``{}`` when the
    plugin is not loaded.  ``quota_warning_executable`` is the script of
    ``service quota-warning { executable = script PATH }``."""
    if not quota_enabled(config):
        return {}
    out = {k: v for k, v in (getattr(config, "plugin", None) or {}).items()
           if k.startswith("quota")}
    for key, value in fields.items():
        if isinstance(key, str) and key.startswith("quota") and isinstance(value, str):
            out[key] = value
    raw = (getattr(config, "raw_services", None) or {}).get("quota-warning", {})
    words = (raw.get("settings", {}).get("executable") or "").split()
    if words[:1] == ["script"] and len(words) > 1:
        out["quota_warning_executable"] = words[-1]
    out.setdefault("quota_full_tempfail", config.get("quota_full_tempfail"))
    return out


CACHE_SETTINGS = ("mail_cache_max_size", "mail_cache_max_headers_count",
                  "mail_cache_max_header_name_length", "mbox_lock_timeout",
                  "mbox_dotlock_change_timeout", "mbox_read_locks", "mbox_write_locks")
SESSION_SETTINGS = (
    "imap_max_line_length", "imap_idle_notify_interval", "imap_capability", "imap_literal_minus",
    "imap_metadata", "mail_plugins",
    "imap_logout_format", "pop3_uidl_format", "pop3_logout_format", "mail_max_userip_connections",
    "hostname", "imap_autologout", "pop3_autologout",
)


class MailLocator(ChannelLocator):
    """The commands the master may send a mail process."""

    def __init__(self, process: MailProcess):
        self.process = process

    @contained(Assign)
    def assign(self, uid, gid, groups, label):
        return self.process.assign(uid, gid, groups, label)

    @contained(NewClient)
    def new_client(self, **kwargs):
        return self.process.new_client(**kwargs)

    @contained(Deliver)
    def deliver(self, **kwargs):
        return self.process.deliver(**kwargs)

    @contained(QuotaCheck)
    def check_quota(self, user, fields, size):
        return self.process.check_quota(user, fields, size)

    @contained(ServeStorage)
    def serve_storage(self, fd, user, requester, fields, relayed=False):  # storage.rpc.broker
        userdb = json.loads(fields)
        rpc_broker.serve(self.process.storage_for(user, userdb), fd, requester, userdb, relayed)
        return {}

    @contained(AdminRequest)
    def admin(self, **kwargs):  # pydoveadm's mailbox verbs (mailproc/admin.py)
        return admin.handle(self.process, **kwargs)

    def _sendFileDescriptor(self, descriptor: int) -> int:
        # AMP serialises a Descriptor in a response through the responder
        # object (AdminRequest's result fd): the channel sends it.
        return self.channel._sendFileDescriptor(descriptor)


def make_home(home: str) -> None:
    """Create a missing home (and parents) 0700, as this process's user."""
    if not os.path.isdir(home):
        os.makedirs(home, mode=0o700, exist_ok=True)


def _reason(e: Exception) -> str:
    """An error's reason for a log line (OSError: strerror and the path)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


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
