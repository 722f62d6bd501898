"""The master: owns the sockets, starts and supervises every other process.

It reads the config, opens the listening sockets (inet and unix), creates
authd's sockets, and spawns authd, one login process per login service,
lmtp and a pool of idle mail processes.  It turns a login process's
hand-off into a session in the right mail process, after redeeming the
login cookie with authd, and routes lmtp's deliveries the same way.
SIGHUP reloads the config; stopping the service stops every child.

Trusts: the config file and authd.  Does not trust login processes or lmtp:
a cookie proves a login, and a delivery's recipient is looked up anew.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import stat
import sys

from twisted.application.service import Service
from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionClosed
from twisted.logger import FilteringLogObserver, Logger, LogLevel, PredicateResult
from twisted.protocols import amp

from authd.protocol import RedeemCookie, UserLookup
from pydovecot import privileges
from pydovecot.channel import ChannelAMP, ChannelLocator
from pydovecot.config import ConfigError, load_config
from pydovecot.config.variables import expand_path, fixed_prefix
from pydovecot.log import DovecotLineObserver, MasterLog, QuietTwisted, sanitize
from pydovecot.master import sdnotify
from pydovecot.master.admin import AdminServer
from pydovecot.master.children import (
    Child,
    ProcessLimit,
    SupervisedChild,
    mail_vsz_limit,
    python_module_argv,
)
from pydovecot.master.mailpool import MailProcessPool, mail_idle_kill
from pydovecot.master.protocol import (
    Deliver,
    DeliverRequest,
    DeliveryFailed,
    HandOff,
    LimitExceeded,
    NewClient,
    OpenStorage,
    QuotaCheck,
    QuotaCheckRequest,
    RelayStorage,
    SessionEnded,
)
from pydovecot.stats.relay import AuthLocator, StatsForwarding, StatsRelay
from pydovecot.storage.rpc import broker as rpc_broker
from pydovecot.tls import check_server_tls

log = Logger(namespace="master")

LOGIN_SERVICES = {"imap-login": "imap", "pop3-login": "pop3", "managesieve-login": "sieve",
                  "submission-login": "submission"}
#: Postfix's policy service (pydovecot/quotastatus), when it has a listener.
QUOTA_STATUS = "quota-status"
#: Served by the unprivileged stats process, when they have a listener.
STATS_SERVICES = ("stats", "health-check")
AUTH_SOCKETS = ("auth-login", "auth-master", "auth-userdb", "auth-client")
#: Sockets hard-linked into the login chroot (as Dovecot keeps the login
#: processes' auth socket in their chroot), so a login process can
#: reconnect to a restarted authd; the link keeps the socket's mode.
CHROOT_SOCKETS = ("auth-login",)
FIRST_CHILD_FD = 4
#: Exit code of a start stopped by a config error (as Dovecot's FATAL_DEFAULT).
FATAL_EXIT = 89


#: Mail processes tried for one login when they die under it.
HANDOFF_ATTEMPTS = 3


class AuthMasterClient:
    """The master's connection to authd's auth-master socket; reconnects."""

    def __init__(self, path: str):
        self.path = path
        self.protocol: amp.AMP | None = None
        self._connecting: defer.Deferred | None = None

    def _connected(self) -> defer.Deferred:
        if self.protocol is not None and self.protocol.transport is not None:
            return defer.succeed(self.protocol)
        if self._connecting is None:
            proto = ChannelAMP(on_lost=lambda _: setattr(self, "protocol", None))
            d = connectProtocol(UNIXClientEndpoint(reactor, self.path, timeout=5), proto)

            def done(result):
                self._connecting = None
                if isinstance(result, amp.AMP):
                    self.protocol = result
                return result

            self._connecting = d.addBoth(done)
        d = defer.Deferred()
        self._connecting.addBoth(lambda r: (d.callback(r), r)[1])
        return d

    @defer.inlineCallbacks
    def call(self, command, **kwargs):
        proto = yield self._connected()
        result = yield proto.callRemote(command, **kwargs)
        return result

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()


class LoginLocator(StatsForwarding):
    """Commands a login process may send: HandOff only."""

    def __init__(self, master: MasterService):
        self.master = master
        self.child: Child | None = None

    @HandOff.responder
    def handoff(self, **kwargs):
        return self.master.handoff(self.child.pid, **kwargs)


class LmtpLocator(StatsForwarding):
    """Commands lmtp may send: DeliverRequest only."""

    def __init__(self, master: MasterService):
        self.master = master

    @DeliverRequest.responder
    def deliver(self, **kwargs):
        return self.master.deliver(**kwargs)

    @QuotaCheckRequest.responder
    def check_quota(self, user, size):
        return self.master.check_quota(user, size)


class QuotaStatusLocator(StatsForwarding):
    """Commands quota-status may send: QuotaCheckRequest only."""

    def __init__(self, master: MasterService):
        self.master = master

    @QuotaCheckRequest.responder
    def check_quota(self, user, size):
        return self.master.check_quota(user, size)


class MailLocator(StatsForwarding):
    """Commands a mail process may send: SessionEnded only."""

    def __init__(self, master: MasterService):
        self.master = master
        self.child: Child | None = None

    @SessionEnded.responder
    def session_ended(self, session):
        self.master.session_ended(self.child.pid, session)
        return {}

    @OpenStorage.responder
    def open_storage(self, requester, owner, **where):  # pydovecot.storage.rpc.broker
        return rpc_broker.open_storage(self.master, self.child.pid, requester, owner, **where)

    def _sendFileDescriptor(self, descriptor: int) -> int:
        # OpenStorage answers an fd: AMP sends it through the responder.
        return self.child.channel._sendFileDescriptor(descriptor)


class RelayLocator(StatsForwarding):
    """Commands the storage-rpc service may send: RelayStorage only."""

    def __init__(self, master: MasterService):
        self.master = master

    @RelayStorage.responder
    def relay_storage(self, requester, owner):  # pydovecot.storage.rpc.broker
        return rpc_broker.relay_storage(self.master, requester, owner)

    def _sendFileDescriptor(self, descriptor: int) -> int:
        return self.channel._sendFileDescriptor(descriptor)


class MasterService(Service):
    name = "pydovecot-master"

    def __init__(self, config_path: str | None = None,
                 listen_fds: dict[str, int] | None = None):
        self.config_path = config_path
        self.config = _load(config_path)  # errors stop the start here
        from authd.drivers import check_config  # backend modules authd would miss

        for error in check_config(self.config, import_modules=False):
            raise ConfigError(error)
        self.supervised: dict[str, list[SupervisedChild]] = {}
        self.listeners: dict[str, list[tuple[str, socket.socket, bool]]] = {}
        #: Every bound inet/unix listener, keyed by what it was opened for,
        #: so that a reload keeps the ones it still needs.
        self.bound: dict[tuple, socket.socket] = {}
        #: Listening sockets handed to us (``--listen-fd NAME=FD``).
        self.inherited: dict[str, socket.socket] = _inherited_sockets(listen_fds or {})
        #: anvil: open sessions per (user, remote IP, protocol), and each
        #: session's key by session id.
        self.userip: dict[tuple[str, str, str], int] = {}
        #: (mail pid, session id) -> anvil keys; a list, as a session id
        #: comes from a login process and may repeat.
        self.session_keys: dict[tuple[int, str], list[tuple[str, str, str]]] = {}
        #: Sessions whose end a mail process reported before its NewClient
        #: answer reached us (a client that left at once).
        self.ended_early: set[tuple[int, str]] = set()
        self.config.check_files()  # a `key = <file` that can't be read
        self.auth_sockets: dict[str, socket.socket] = {}
        self.pool: MailProcessPool | None = None
        self.auth: AuthMasterClient | None = None
        self.stats = StatsRelay(self)  # children's events to the stats process
        self._log_observer = None
        self._log_line_observer = None
        self._log_file = None
        self.admin = AdminServer(self)  # pydoveadm's socket, opened at start

    def setServiceParent(self, parent) -> None:
        """Under twistd, be the application's log observer, so that
        Twisted's own chatter (start-up banner, factories, AMP connections)
        reaches neither the terminal nor the log."""
        from twisted.logger import ILogObserver

        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, FilteringLogObserver(
                DovecotLineObserver(sys.stdout, "master"),
                [lambda e: PredicateResult.no if e.get("log_console") is False
                 else PredicateResult.maybe, TwistedChatter(), QuietTwisted()]))
        super().setServiceParent(parent)

    # -- start -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._start_logging()
        for warning in self.config.warnings:
            log.warn("{warning}", warning=warning, log_prefix="config")
        try:
            self._prepare_dirs()
            check_server_tls(self.config)  # Fatal FILE:LINE for unusable TLS settings
            self._write_snapshot(self.config)
            self._check_users()
            self.bound = self._open_listeners()
            self._open_auth_sockets()
            self.admin.observe()
            self.admin.start(self.base_dir)
        except (ConfigError, KeyError, OSError) as e:
            self._fatal(e)
        self.auth = AuthMasterClient(os.path.join(self.base_dir, "auth-master"))
        self._start_children()
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(self.reload))
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(self.reopen_log))
        log.info("pydovecot starting up for {protocols} (core dumps disabled)",
                 protocols=", ".join(self.config.protocols), log_prefix="master")
        sdnotify.ready(f"serving {', '.join(self.config.protocols)}")

    def _fatal(self, error: Exception) -> None:
        """Stop the start with one line (no traceback) and exit code 89."""
        text = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, OSError) and error.filename:
            text = f"{error.filename}: {error.strerror}"
        # the terminal gets the one "pydovecot: Fatal:" line below instead
        log.critical("{text}", text=str(text), log_prefix="master", log_console=False)
        for sock in self.bound.values():
            sock.close()
        self.admin.stop_listening()
        for name, sock in self.auth_sockets.items():
            sock.close()
            _unlink(os.path.join(self.base_dir, name))
        os.write(2, f"pydovecot: Fatal: {text}\n".encode(errors="replace"))
        raise SystemExit(FATAL_EXIT)

    @property
    def base_dir(self) -> str:
        return self.config.path_setting("base_dir")

    @property
    def chroot_dir(self) -> str:
        return os.path.join(self.base_dir, "empty")

    def _start_logging(self) -> None:
        from twisted.logger import globalLogPublisher

        # log_path / info_log_path / debug_log_path / syslog (pydovecot.log)
        master_log = MasterLog(self.config)
        if master_log.active:
            self._log_file = self._log_line_observer = master_log
            self._log_observer = FilteringLogObserver(
                master_log, [TwistedChatter(), QuietTwisted()])
            globalLogPublisher.addObserver(self._log_observer)

    def reopen_log(self) -> None:
        """SIGUSR1 (Dovecot's ``doveadm log reopen``; logrotate's
        postrotate): reopen the log files.  Children log through the master,
        so its files are the only ones."""
        if self._log_file is None:
            return
        for path in self._log_file.reopen():
            log.error("SIGUSR1: can't reopen {path}", path=path, log_prefix="master")
        log.info("log file reopened", log_prefix="master")

    def _prepare_dirs(self) -> None:
        for path in (self.base_dir, self.config.path_setting("state_dir")):
            os.makedirs(path, mode=0o755, exist_ok=True)
        os.makedirs(self.chroot_dir, mode=0o755, exist_ok=True)
        for name in CHROOT_SOCKETS:  # our own links, from the last run
            _unlink(os.path.join(self.chroot_dir, name))
        if privileges.is_root():
            st = os.stat(self.chroot_dir)
            if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o022 or os.listdir(self.chroot_dir):
                raise ConfigError(f"{self.chroot_dir}: the login chroot must be an empty "
                                  "directory owned by root and writable by no one else")

    def _check_users(self) -> None:
        if not privileges.is_root():
            log.info("not running as root: processes keep uid {uid}, logins are not chrooted",
                     uid=os.getuid(), log_prefix="master")
            return
        for setting in ("default_login_user", "default_internal_user"):
            try:
                privileges.lookup_user(self.config.get(setting))
            except KeyError as e:  # it explains the fix
                where = self.config.origins.get(setting, self.config.path)
                raise ConfigError(f"{where}: {setting}: {e.args[0]}") from None

    def _open_listeners(self, keep: dict[tuple, socket.socket] | None = None
                        ) -> dict[tuple, socket.socket]:
        """Open the config's listeners into ``self.listeners``; return them by
        key.  Sockets in ``keep`` (a reload's old ones) and inherited ones
        that match are reused; on an error, the ones opened here are closed
        and ConfigError raised."""
        keep = keep or {}
        bound: dict[tuple, socket.socket] = {}
        listeners: dict[str, list[tuple[str, socket.socket, bool]]] = {}
        fresh: list[socket.socket] = []
        try:
            for name in self._services_with_listeners():
                service = self.config.services[name]
                opened = []
                for listener in service.inet_listeners.values():
                    if not listener.port:
                        continue
                    for address in listener.addresses:
                        key = ("inet", listener.name, address, listener.port)
                        sock = keep.get(key) or self._inherited_for(listener.name, address,
                                                                    listener.port)
                        if sock is None:
                            sock = _inet_socket(address, listener.port)
                            if sock is None:
                                continue
                            fresh.append(sock)
                        bound[key] = sock
                        opened.append((listener.name, sock, listener.ssl))
                for listener in service.unix_listeners.values():
                    if name == "lmtp":
                        path = _under(self.base_dir, listener.path)
                        key = ("unix", path, listener.mode, listener.user, listener.group)
                        sock = keep.get(key)
                        if sock is None:
                            sock = _unix_socket(path, listener)
                            fresh.append(sock)
                        bound[key] = sock
                        opened.append((listener.name, sock, False))
                listeners[name] = opened
        except BaseException:
            for sock in fresh:
                sock.close()
            raise
        self.listeners = listeners
        return bound

    def _inherited_for(self, name: str, address: str, port: int) -> socket.socket | None:
        """The handed-in socket for listener ``name`` if it is bound where
        the config says (a config that moved the port gets a new socket)."""
        sock = self.inherited.get(name)
        if sock is None:
            return None
        host, bound_port = sock.getsockname()[:2]
        wanted = address.strip().strip("[]")
        if wanted in ("*", ""):
            wanted = "0.0.0.0"
        return sock if bound_port == port and host == wanted else None

    def _services_with_listeners(self) -> list[str]:
        names = [s for s, proto in LOGIN_SERVICES.items() if proto in self.config.protocols]
        if "lmtp" in self.config.protocols:
            names.append("lmtp")
        names += [name for name in STATS_SERVICES if self._has_port(name)]
        if self._has_port(QUOTA_STATUS):
            names.append(QUOTA_STATUS)
        if self._has_port("storage-rpc"):  # pydovecot.storage.rpc.tcp
            names.append("storage-rpc")
        return names

    def _has_port(self, name: str) -> bool:
        service = self.config.services.get(name)
        return service is not None and any(li.port for li in service.inet_listeners.values())

    def _open_auth_sockets(self) -> None:
        service = self.config.services.get("auth")
        listeners = service.unix_listeners if service is not None else {}
        for name in AUTH_SOCKETS:
            listener = listeners.get(name)
            path = os.path.join(self.base_dir, name)
            self.auth_sockets[name] = _unix_socket(path, listener, default_mode=0o600)
            if name in CHROOT_SOCKETS:
                link = os.path.join(self.chroot_dir, name)
                _unlink(link)
                os.link(path, link)
        # Any other listener (Dovecot's `unix_listener /var/spool/postfix/private/auth`)
        # is one more auth-client socket, at its own path (absolute or under base_dir).
        for name, listener in listeners.items():
            if name not in AUTH_SOCKETS:
                self.auth_sockets[name] = _unix_socket(listener.path, listener)

    # -- children -------------------------------------------------------------

    @property
    def snapshot_path(self) -> str:
        from pydovecot.config.parser import SNAPSHOT_SUFFIX

        return os.path.join(self.base_dir, "config" + SNAPSHOT_SUFFIX)

    def _write_snapshot(self, config) -> None:
        from pydovecot.config.parser import write_snapshot

        write_snapshot(config, self.snapshot_path)

    def _config_args(self) -> list[str]:
        # The config we run, not the file (which a refused reload left bad).
        return ["-c", self.snapshot_path]

    def _start_children(self) -> None:
        self._start_services()
        # imap and pop3 sessions share the per-uid mail processes; the imap
        # service's limits govern them.
        imap = self.config.services["imap"]
        self.pool = MailProcessPool(
            self._make_mail,
            # One idle, pre-imported spare keeps cold logins off an
            # interpreter start; more only cost memory (~34 MiB PSS each).
            prespawn=imap.process_min_avail or 1,
            client_limit=imap.client_limit,
            process_limit=imap.process_limit,
        )
        self.pool.idle_kill = mail_idle_kill(self.config)
        self.pool.start()
        self.stats.start()

    def _start_services(self) -> None:
        """authd, the login processes and lmtp."""
        self._supervise("auth", self._make_authd)
        for name in self._services_with_listeners():
            if name in LOGIN_SERVICES:
                service = self.config.services[name]
                # Each login process serves many clients (service_count = 0,
                # Dovecot's high-performance mode): process_min_avail of
                # them, never more than process_limit.
                count = min(max(1, service.process_min_avail), service.process_limit)
                limit = ProcessLimit(service.process_limit)  # service_count successors
                for _ in range(count):
                    self._supervise(name, lambda n=name: self._make_login(n), limit)
            elif name == "lmtp":
                self._supervise("lmtp", self._make_lmtp)
            elif name == QUOTA_STATUS:
                self._supervise(QUOTA_STATUS, self._make_quota_status)
            elif name == "storage-rpc":
                self._supervise(name, self._make_storage_rpc)
            elif name == "stats" or name == "health-check" and not self._has_port("stats"):
                self._supervise("stats", self._make_stats)  # serves both

    def _supervise(self, role: str, make, limit: ProcessLimit | None = None) -> None:
        supervised = SupervisedChild(role, make, limit)
        self.supervised.setdefault(role, []).append(supervised)
        supervised.start()

    def _make_authd(self) -> Child:
        args, fds = [], {}
        for number, (name, sock) in enumerate(self.auth_sockets.items(), FIRST_CHILD_FD):
            fds[number] = sock.fileno()
            kind = name if name in AUTH_SOCKETS else "auth-client"
            args += ["--socket", f"{kind}={number}"]
        argv = python_module_argv("authd", *self._config_args(), *args)
        return Child("auth", argv, locator=AuthLocator(self), extra_fds=fds)

    def _listener_args(self, name: str, first: int = FIRST_CHILD_FD
                       ) -> tuple[list[str], dict[int, int]]:
        args, fds = [], {}
        for number, (lname, sock, ssl) in enumerate(self.listeners.get(name, []), first):
            fds[number] = sock.fileno()
            args += ["--listener", f"{lname}:{number}:{int(ssl)}"]
        return args, fds

    def _make_login(self, name: str) -> Child:
        args, fds = self._listener_args(name)
        argv = python_module_argv(
            "pydovecot.login.process", *self._config_args(), "--service", name,
            "--protocol", LOGIN_SERVICES[name], "--chroot", self.chroot_dir, *args)
        locator = LoginLocator(self)
        child = Child(name, argv, locator=locator, extra_fds=fds)
        child.vsz_limit = self.config.services[name].vsz_limit  # RLIMIT_AS
        locator.child = child
        return child

    def _make_lmtp(self) -> Child:
        args, fds = self._listener_args("lmtp")
        argv = python_module_argv("pydovecot.lmtp.process", *self._config_args(),
                                  "--chroot", self.chroot_dir, *args)
        return Child("lmtp", argv, locator=LmtpLocator(self), extra_fds=fds)

    def _make_quota_status(self) -> Child:
        args, fds = self._listener_args(QUOTA_STATUS)
        argv = python_module_argv("pydovecot.quotastatus.main", *self._config_args(),
                                  "--chroot", self.chroot_dir, *args)
        return Child(QUOTA_STATUS, argv, locator=QuotaStatusLocator(self), extra_fds=fds)

    def _make_stats(self) -> Child:
        args, fds = self._listener_args("stats")
        health, more = self._listener_args("health-check", FIRST_CHILD_FD + len(fds))
        fds.update(more)
        args += [a.replace("--listener", "--health") for a in health]
        argv = python_module_argv("pydovecot.stats.main", *self._config_args(),
                                  "--chroot", self.chroot_dir, *args)
        return Child("stats", argv, locator=ChannelLocator(), extra_fds=fds)

    def _make_storage_rpc(self) -> Child:
        args, fds = self._listener_args("storage-rpc")
        argv = python_module_argv("pydovecot.storage.rpc.tcp", *self._config_args(),
                                  "--chroot", self.chroot_dir, *args)
        return Child("storage-rpc", argv, locator=RelayLocator(self), extra_fds=fds)

    def _make_mail(self) -> Child:
        locator = MailLocator(self)
        child = Child("mail", python_module_argv("pydovecot.mailproc.main",
                                                 *self._config_args()), locator=locator)
        # One mail process serves many sessions: only an explicit limit.
        child.vsz_limit = mail_vsz_limit(self.config)
        locator.child = child
        child.exited.addCallback(lambda _: self.anvil_process_gone(child.pid))
        return child

    # -- anvil: mail_max_userip_connections ------------------------------------

    def anvil_connect(self, user: str, remote_ip: str, service: str) -> tuple[str, str, str]:
        """Count one more session for (user, IP, protocol), or raise
        LimitExceeded as Dovecot's anvil does (the limit is per protocol)."""
        from pydovecot.log import sanitize

        key = (user, remote_ip, service)
        limit = self.config.get_int("mail_max_userip_connections", service)
        if limit and self.userip.get(key, 0) >= limit:
            log.info("Maximum number of connections from user+IP exceeded "
                     "(mail_max_userip_connections={limit}): user=<{user}>, "
                     "service={service}, rip={ip}",
                     service=service, limit=limit, user=sanitize(user), ip=remote_ip,
                     log_prefix="master")
            raise LimitExceeded("Maximum number of connections from user+IP exceeded "
                                f"(mail_max_userip_connections={limit})")
        self.userip[key] = self.userip.get(key, 0) + 1
        return key

    def session_started(self, process, key: tuple[str, str, str], session: str) -> None:
        """A mail process took a session: count it in the pool and anvil."""
        ident = (process.pid, session)
        if ident in self.ended_early:
            self.ended_early.discard(ident)
            self.anvil_release(key)
            return
        self.pool.session_started(process)
        self.session_keys.setdefault(ident, []).append(key)

    def session_ended(self, pid: int, session: str) -> None:
        ident = (pid, session)
        keys = self.session_keys.get(ident)
        if not keys:
            if len(self.ended_early) < 10000:
                self.ended_early.add(ident)
            return
        key = keys.pop()
        if not keys:
            del self.session_keys[ident]
        self.pool.session_ended(pid)
        self.anvil_release(key)

    def anvil_release(self, key: tuple[str, str, str]) -> None:
        count = self.userip.get(key, 0) - 1
        if count > 0:
            self.userip[key] = count
        else:
            self.userip.pop(key, None)

    def anvil_process_gone(self, pid: int) -> None:
        """A mail process ended: its sessions ended with it."""
        for ident in [i for i in self.session_keys if i[0] == pid]:
            for key in self.session_keys.pop(ident):
                self.anvil_release(key)
        self.ended_early = {i for i in self.ended_early if i[0] != pid}

    # -- logins and deliveries ---------------------------------------------

    def mail_ids(self, user: str, fields: dict) -> tuple[int, int]:
        """The uid/gid a user's mail process must run as."""
        if not privileges.is_root():
            return os.getuid(), os.getgid()
        uid = _resolve_id(fields.get("uid") or self.config.get("mail_uid"), "uid")
        gid = _resolve_id(fields.get("gid") or self.config.get("mail_gid"), "gid", uid)
        if uid is None or gid is None:
            raise RuntimeError(f"user {user}: userdb gave no uid/gid and mail_uid is unset")
        first = self.config.get_int("first_valid_uid")
        last = self.config.get_int("last_valid_uid")
        if uid < first or (last and uid > last) or uid == 0:
            raise RuntimeError(f"user {user}: mail access for uid {uid} is not permitted "
                               f"(first_valid_uid={first})")
        first_gid = self.config.get_int("first_valid_gid")
        last_gid = self.config.get_int("last_valid_gid")
        if gid < first_gid or (last_gid and gid > last_gid):
            raise RuntimeError(f"user {user}: Mail access for users with GID {gid} not permitted "
                               f"(see first_valid_gid in config file, gid from userdb lookup)")
        return uid, gid

    def prepare_home(self, user: str, fields: dict, uid: int, gid: int) -> str:
        """Fill in ``home`` from mail_home when the userdb gave none, check
        it, and return the fields as JSON.  Raises :class:`HomeRefused` with
        the reason for a home that is not absolute and normalised, or (from
        mail_home) lies outside the template's fixed root.

        The home itself is never created here, as root: the user's own mail
        process creates it with the user's privileges.  Only mail_home's
        root, a path from the config file alone, is made when missing
        (owned by mail_uid/mail_gid when those are set)."""
        home = fields.get("home") or ""
        template = self.config.get("mail_home")
        if home:
            home = checked_home(home)
        elif template:
            try:
                home = expand_path(template, {"user": user, "uid": str(uid), "gid": str(gid)})
            except ValueError as e:
                raise HomeRefused(f"mail_home: {e}") from None
            root = os.path.abspath(fixed_prefix(template) or "/")
            home = os.path.abspath(home)  # relative to our cwd, which children share
            if not home.startswith(root.rstrip("/") + "/"):
                raise HomeRefused(f"home {sanitize(home)} is outside mail_home's root {root}")
            checked_home(home)
            self._make_home_root(root)
        if home:
            fields["home"] = home
        return json.dumps(fields)

    def _make_home_root(self, root: str) -> None:
        """Create mail_home's fixed root once, if missing (config-named)."""
        made = getattr(self, "_home_roots", None)
        if made is None:
            made = self._home_roots = set()
        if root in made or os.path.isdir(root):
            made.add(root)
            return
        os.makedirs(root, mode=0o755, exist_ok=True)
        if privileges.is_root() and self.config.get("mail_uid"):
            uid = _resolve_id(self.config.get("mail_uid"), "uid")
            gid = _resolve_id(self.config.get("mail_gid"), "gid", uid)
            os.chown(root, uid, gid if gid is not None else -1)
        made.add(root)

    @defer.inlineCallbacks
    def handoff(self, login_pid: int, fd: int, cookie: bytes, service: str, pending: bytes,
                mechanism: str, session: str, local_ip: str, local_port: int, remote_ip: str,
                remote_port: int, secured: bool, tag: bytes | None = None):
        try:
            try:
                redeemed = yield self.auth.call(RedeemCookie, cookie=cookie, login_pid=login_pid,
                                                local_ip=local_ip, remote_ip=remote_ip)
            except Exception as e:
                log.error("login from pid {pid} refused: cookie not accepted by auth ({e})",
                          pid=login_pid, e=e, log_prefix="master")
                raise KeyError("bad cookie") from None
            user = redeemed["user"]
            fields = json.loads(redeemed["fields"])
            anvil_key = self.anvil_connect(user, remote_ip, service)
            try:
                uid, gid = self.mail_ids(user, fields)
                fields_json = self.prepare_home(user, fields, uid, gid)
                kwargs = dict(
                    fd=fd, service=service, user=user, fields=fields_json,
                    pending=pending, session=session, local_ip=local_ip, local_port=local_port,
                    remote_ip=remote_ip, remote_port=remote_port, secured=secured)
                if tag is not None:
                    kwargs["tag"] = tag
                for attempt in range(HANDOFF_ATTEMPTS):
                    process = yield self.pool.process_for(uid, gid, user)
                    try:
                        yield process.call(NewClient, **kwargs)
                        break
                    except ConnectionClosed:
                        # Killed, not yet reaped (its channel is marked lost,
                        # so the pool won't pick it again): the client, whose
                        # fd is still ours, goes to another process of its uid.
                        if attempt + 1 == HANDOFF_ATTEMPTS:
                            raise RuntimeError("mail processes keep dying") from None
                        log.warn("{service}({user}): mail process {pid} went away; "
                                 "trying another", service=service, user=sanitize(user),
                                 pid=process.pid, log_prefix="master")
            except Exception as e:
                self.anvil_release(anvil_key)
                log.error("{service}({user}): cannot start session: {e}", service=service,
                          user=sanitize(user), e=sanitize(e), log_prefix="master")
                raise RuntimeError(str(e)) from None
            self.session_started(process, anvil_key, session)
            return {"mpid": process.pid, "user": user}
        finally:
            os.close(fd)

    @defer.inlineCallbacks
    def deliver(self, fd: int, user: str, sender: str, recipient: str, session: str,
                msgid: str = "", orig_recipient: str | None = None):
        """Deliver lmtp's message for one recipient through the user's mail
        process.  Every failure is that recipient's alone: logged once
        (here, or by the mail process for a failed save) and answered as
        :class:`DeliveryFailed` (LMTP 4xx), or KeyError for no such user."""
        prefix = f"lmtp({sanitize(user)})<{sanitize(session)}>"
        try:
            name, fields, process = yield self._delivery_target(user, prefix, session)
            prefix = f"lmtp({sanitize(name)})<{sanitize(session)}>"
            kwargs = {"msgid": msgid} if msgid else {}
            if orig_recipient:
                kwargs["orig_recipient"] = orig_recipient
            try:
                result = yield process.call(Deliver, fd=fd, user=name, fields=fields,
                                            session=session, sender=sender,
                                            recipient=recipient, **kwargs)
            except DeliveryFailed:
                raise  # the mail process logged why
            except Exception as e:
                log.error("delivery failed in mail process {pid}: {e}", pid=process.pid,
                          e=sanitize(e), log_prefix=prefix)
                raise DeliveryFailed() from None
            return result
        finally:
            os.close(fd)

    @defer.inlineCallbacks
    def _delivery_target(self, user: str, prefix: str, session: str = ""):
        """(canonical name, prepared userdb fields, the mail process) for a
        delivery or a quota check: authd's userdb lookup for lmtp, the
        user's ids and home, a mail process of that uid.  DeliveryFailed
        (logged) on a temporary failure, KeyError for no such user."""
        try:
            found = yield _within(self.auth.call(UserLookup, user=user, service="lmtp"),
                                  USERDB_TIMEOUT, "authd did not answer")
        except Exception as e:
            log.error("userdb lookup failed: {e}", e=sanitize(e), log_prefix=prefix)
            raise DeliveryFailed(DeliveryFailed.USERDB) from None
        if not found["found"]:
            if found.get("temporary"):
                raise DeliveryFailed(DeliveryFailed.USERDB)
            raise KeyError(user)
        name = found["user"]
        where = f"lmtp({sanitize(name)})<{sanitize(session)}>" if session else prefix
        try:
            fields = json.loads(found["fields"])
            uid, gid = self.mail_ids(name, fields)
            fields = self.prepare_home(name, fields, uid, gid)
            process = yield self.pool.process_for(uid, gid, name)
        except Exception as e:
            log.error("delivery refused: {e}", e=sanitize(e), log_prefix=where)
            raise DeliveryFailed(DeliveryFailed.TEMPORARY) from None
        return name, fields, process

    @defer.inlineCallbacks
    def check_quota(self, user: str, size: int):
        """Ask the user's mail process whether ``size`` octets fit the
        user's quota (the storage is read only there, as the user)."""
        prefix = f"lmtp({sanitize(user)})"
        name, fields, process = yield self._delivery_target(user, prefix)
        try:
            result = yield process.call(QuotaCheck, user=name, fields=fields, size=size)
        except DeliveryFailed:
            raise
        except Exception as e:
            log.error("quota check failed: {e}", e=sanitize(e), log_prefix=prefix)
            raise DeliveryFailed(DeliveryFailed.TEMPORARY) from None
        return result

    # -- reload and stop -----------------------------------------------------

    def reload(self) -> None:
        old_config, old_listeners = self.config, self.listeners
        try:
            config = _load(self.config_path)
            config.check_files()
            self.config = config
            bound = self._open_listeners(keep=self.bound)
        except Exception as e:
            self.config, self.listeners = old_config, old_listeners
            log.error("SIGHUP: config not reloaded: {e}", e=e, log_prefix="master")
            return
        log.info("SIGHUP received - reloading configuration", log_prefix="master")
        sdnotify.reloading()
        try:
            os.makedirs(self.base_dir, mode=0o755, exist_ok=True)
            self._write_snapshot(config)
        except OSError as e:
            log.error("SIGHUP: can't write {path}: {e}", path=self.snapshot_path, e=e,
                      log_prefix="master")
        new_listeners, self.listeners = self.listeners, old_listeners
        for key, sock in self.bound.items():
            if key not in bound and sock not in self.inherited.values():
                sock.close()
        self.bound = bound
        # Running sessions keep their mail processes (and the config those
        # started with), as in Dovecot; idle spares are replaced.
        d = defer.DeferredList([s.stop(signal.SIGTERM) for group in self.supervised.values()
                                for s in group])
        imap = config.services["imap"]
        self.pool.reconfigure(imap.process_min_avail or 1, imap.client_limit,
                              imap.process_limit)
        self.pool.idle_kill = mail_idle_kill(config)

        def restart(_):
            self.listeners = new_listeners
            self.supervised = {}
            self._start_services()
            sdnotify.ready(f"serving {', '.join(config.protocols)}")

        d.addCallback(restart)

    def _stop_children(self, signo: int) -> defer.Deferred:
        waits = []
        for group in self.supervised.values():
            for supervised in group:
                waits.append(supervised.stop(signo))
        if self.pool is not None:
            waits.append(self.pool.stop(signo))
        d = defer.DeferredList(waits)
        timeout = reactor.callLater(5, self._kill_all)
        d.addBoth(lambda r: (timeout.active() and timeout.cancel(), r)[1])
        return d

    def _kill_all(self) -> None:
        for group in self.supervised.values():
            for supervised in group:
                if supervised.child is not None:
                    supervised.child.signal(signal.SIGKILL)
        if self.pool is not None:
            for process in self.pool.all_processes():
                process.child.signal(signal.SIGKILL)

    def _close_listeners(self) -> None:
        for sock in [*self.bound.values(), *self.inherited.values()]:
            sock.close()
        self.bound, self.inherited, self.listeners = {}, {}, {}

    def stopService(self):
        super().stopService()
        log.info("pydovecot shutting down", log_prefix="master")
        sdnotify.stopping()
        self.stats.stop()
        d = self._stop_children(signal.SIGTERM)

        def cleanup(_):
            self.admin.stop_listening()
            if self.auth is not None:
                self.auth.close()
            self._close_listeners()
            _unlink(self.snapshot_path)
            for name, sock in self.auth_sockets.items():
                sock.close()
                _unlink(os.path.join(self.base_dir, name))
                if name in CHROOT_SOCKETS:
                    _unlink(os.path.join(self.chroot_dir, name))
            if self._log_observer is not None:
                from twisted.logger import globalLogPublisher

                globalLogPublisher.removeObserver(self._log_observer)
                self._log_file.close()

        return d.addBoth(cleanup)


#: Seconds a delivery's userdb lookup may wait for authd (lmtp's own
#: recipient lookups use the same bound).
USERDB_TIMEOUT = 10.0


def _within(d: defer.Deferred, seconds: float, why: str) -> defer.Deferred:
    """``d``'s result, or TimeoutError(why) after ``seconds`` (a late
    result is dropped; ``d`` itself is never cancelled)."""
    result = defer.Deferred()

    def timed_out():
        if not result.called:
            result.errback(TimeoutError(why))

    timer = reactor.callLater(seconds, timed_out)

    def done(value):
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(value)

    d.addBoth(done)
    return result


def _load(path: str | None):
    """The config; the embedded default (None) gets a self-signed
    certificate in its state dir on first start, as Debian's package makes."""
    config = load_config(path)
    if path is None:
        from pydovecot.config import selfsigned

        try:
            selfsigned.provide(config)
        except OSError as e:
            raise ConfigError(f"{config.path_setting('state_dir')}/ssl: can't write the "
                              f"self-signed certificate: {e.strerror}") from None
    return config


class TwistedChatter:
    """Drop Twisted's own info-level events (banner, reactor, factories,
    ports, AMP connections); its warnings and errors still pass."""

    def __call__(self, event: dict) -> PredicateResult:
        namespace = event.get("log_namespace") or ""
        level = event.get("log_level")
        if (namespace.startswith("twisted.") or namespace == "log_legacy") and level in (
                LogLevel.debug, LogLevel.info):
            return PredicateResult.no
        return PredicateResult.maybe


class HomeRefused(ValueError):
    """A user's home is refused (the message says why)."""


def checked_home(home: str) -> str:
    """``home`` if it is absolute and normalised, with no ``..`` level and
    no NUL or control character; HomeRefused otherwise."""
    if (not os.path.isabs(home) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in home)
            or ".." in home.split("/") or os.path.normpath(home) != home.rstrip("/")
            and home != "/"):
        raise HomeRefused(f"home {sanitize(home)!r} is not an absolute, normalised path")
    return os.path.normpath(home)


def _resolve_id(value, kind: str, uid: int | None = None) -> int | None:
    if value in (None, ""):
        if kind == "gid" and uid is not None:
            try:
                return pwd.getpwuid(uid).pw_gid
            except KeyError:
                return None
        return None
    value = str(value)
    if value.isdigit():
        return int(value)
    import grp

    try:
        return pwd.getpwnam(value).pw_uid if kind == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        raise RuntimeError(f"unknown {kind} {value!r}") from None


def _inherited_sockets(fds: dict[str, int]) -> dict[str, socket.socket]:
    """The listening TCP sockets handed in by ``--listen-fd NAME=FD``."""
    result = {}
    for name, fd in fds.items():
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise ConfigError(f"--listen-fd {name}={fd}: {e.strerror}") from None
        if (sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.type != socket.SOCK_STREAM
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            sock.detach()
            raise ConfigError(f"--listen-fd {name}={fd}: not a listening TCP socket")
        sock.setblocking(False)
        result[name] = sock
    return result


def _under(base: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _inet_socket(address: str, port: int) -> socket.socket | None:
    """A listening TCP socket; '*' is every IPv4 address, '::' every IPv6."""
    address = address.strip()
    if address in ("*", ""):
        family, host = socket.AF_INET, "0.0.0.0"
    elif address == "::" or ":" in address:
        family, host = socket.AF_INET6, address.strip("[]")
    else:
        family, host = socket.AF_INET, address
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if family == socket.AF_INET6 and address == "::":
            log.warn("IPv6 listener [::]:{port} not opened: {e}", port=port, e=e,
                     log_prefix="master")
            return None
        raise ConfigError(f"cannot listen on {address}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _unix_socket(path: str, listener=None, default_mode: int = 0o600) -> socket.socket:
    _unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    mode = listener.mode if listener is not None and listener.mode is not None else default_mode
    os.chmod(path, mode)
    if privileges.is_root() and listener is not None and (listener.user or listener.group):
        import grp

        uid = pwd.getpwnam(listener.user).pw_uid if listener.user else -1
        gid = grp.getgrnam(listener.group).gr_gid if listener.group else -1
        os.chown(path, uid, gid)
    sock.listen(128)
    sock.setblocking(False)
    return sock
