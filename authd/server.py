"""authd's AMP servers: auth-login, auth-master and auth-userdb.

:class:`AuthEngine` runs passdb and userdb chains the way Dovecot does and
keeps the one-time login cookies.  Three AMP protocol classes, one per
socket, expose only the commands of that socket (see authd.protocol).

Trust: everything from auth-login peers (login processes, which hold the
network's input) is untrusted; the peer's pid comes from the kernel
(SO_PEERCRED), not from the peer.  auth-master peers (root) are trusted to
name the login pid a client fd came from.  Passwords are never logged
unless auth_verbose_passwords says so.
"""

from __future__ import annotations

import collections
import grp
import hashlib
import ipaddress
import json
import os
import pwd
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols import amp

from authd import drivers, sasl
from authd.cache import AuthCache
from authd.chain import PassdbChain, UserdbChain
from authd.exchange import AuthOutcome, Reply, SASLExchange, available_mechanisms
from authd.interfaces import (
    AuthBackendError,
    AuthRequest,
    IPassdb,
    IUserdb,
    PassdbResult,
    PassdbStatus,
)
from authd.penalty import AuthPenalty
from authd.protocol import (
    AuthCancel,
    AuthContinue,
    AuthStart,
    FlushCache,
    MechList,
    PassdbLookup,
    RedeemCookie,
    TooManyExchanges,
    UserIterate,
    UserLookup,
)
from authd.settings import AuthSettings, DbSettings, expand, expand_fields, parse_fields

log = Logger()

AUTH_FAILED = "Authentication failed."
TEMP_FAILED = "Temporary authentication failure."


# -- cookies -----------------------------------------------------------------


@dataclass
class CookieEntry:
    """What a login cookie stands for."""

    user: str
    fields: dict[str, str]
    login_pid: int | None
    local_ip: str
    remote_ip: str
    expires: float


class CookieStore:
    """One-time login cookies, expiring after ``lifetime`` seconds."""

    def __init__(self, clock: IReactorTime, lifetime: float = 60.0):
        self.clock = clock
        self.lifetime = lifetime
        self._entries: collections.OrderedDict[bytes, CookieEntry] = collections.OrderedDict()

    def _prune(self) -> None:
        now = self.clock.seconds()
        while self._entries:
            cookie, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[cookie]

    def issue(
        self,
        user: str,
        fields: dict[str, str],
        login_pid: int | None,
        local_ip: str,
        remote_ip: str,
    ) -> bytes:
        """A fresh 32-byte cookie for a successful login."""
        self._prune()
        cookie = secrets.token_bytes(32)
        expires = self.clock.seconds() + self.lifetime
        self._entries[cookie] = CookieEntry(user, fields, login_pid, local_ip, remote_ip, expires)
        return cookie

    def redeem(self, cookie: bytes, login_pid: int, local_ip: str | None = None,
               remote_ip: str | None = None) -> CookieEntry:
        """The cookie's entry, once; KeyError if unknown, expired, already
        used, issued to another login process or for another connection
        (the cookie is spent either way)."""
        self._prune()
        entry = self._entries.pop(cookie, None)
        if entry is None:
            raise KeyError("unknown or expired cookie")
        if entry.login_pid is None or entry.login_pid != login_pid:
            raise KeyError("cookie was issued to another login process")
        if (local_ip, remote_ip) != (None, None) and (local_ip, remote_ip) != (
                entry.local_ip, entry.remote_ip):
            raise KeyError("cookie was issued for another connection")
        return entry

    def __len__(self) -> int:
        return len(self._entries)


# -- the engine --------------------------------------------------------------


def _merge_fields(db: DbSettings, result: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    """default_fields < result < override_fields, %-expanded."""
    merged = expand_fields(parse_fields(db.default_fields), values)
    merged.update(result)
    merged.update(expand_fields(parse_fields(db.override_fields), values))
    return merged


def _in_nets(ip: str, nets: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for net in nets:
        try:
            if addr in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            log.warn("allow_nets: invalid network {net!r}", net=net)
    return False


class AuthEngine:
    """Passdb/userdb chains, username rules and cookies for all sockets."""

    def __init__(
        self,
        settings: AuthSettings,
        reactor: Any = None,
        passdbs: list[tuple[IPassdb, DbSettings]] | None = None,
        userdbs: list[tuple[IUserdb, DbSettings]] | None = None,
        getuid: Callable[[], int] = os.getuid,
        getgid: Callable[[], int] = os.getgid,
    ):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.settings = settings
        self.reactor = reactor
        self.passdbs = (
            passdbs
            if passdbs is not None
            else [(drivers.create_passdb(db), db) for db in settings.passdbs]
        )
        self.userdbs = (
            userdbs
            if userdbs is not None
            else [(drivers.create_userdb(db), db) for db in settings.userdbs]
        )
        self.getuid = getuid
        self.getgid = getgid
        self.cookies = CookieStore(reactor, settings.cookie_lifetime)
        self.cache = AuthCache(
            reactor, settings.auth_cache_size, settings.auth_cache_ttl,
            settings.auth_cache_negative_ttl,
        )
        self.penalty = AuthPenalty(reactor, settings.login_trusted_networks)
        self.passdb_chain = PassdbChain(self.passdbs, settings, self.cache, self._given_password)
        self.userdb_chain = UserdbChain(self.userdbs, settings, self.cache)
        # A static userdb knows no users: it asks the passdbs (Dovecot's
        # userdb-static without allow_all_users).
        for userdb, _db in self.userdbs:
            if getattr(userdb, "needs_passdb_lookup", False):
                userdb.passdb_lookup = self.passdb_chain.lookup_user

    # -- mechanisms and user names ------------------------------------------

    def mechanisms(self, secured: bool) -> list[str]:
        """Mechanisms to advertise on a (non-)secured connection."""
        names = []
        for name in self.settings.auth_mechanisms:
            upper = name.upper()
            if upper not in sasl.MECHANISMS:
                continue
            if sasl.is_plaintext(upper) and self.settings.disable_plaintext_auth and not secured:
                continue
            names.append(upper)
        return names

    def normalize_user(self, name: str) -> str | None:
        """Apply translation, allowed chars, default realm and
        auth_username_format; None if the name is not acceptable."""
        s = self.settings
        if s.auth_username_translation:
            pairs = s.auth_username_translation
            name = name.translate(str.maketrans(pairs[0::2], pairs[1::2][: len(pairs[0::2])]))
        if not name or len(name) > 255:
            return None
        if s.auth_username_chars and any(c not in s.auth_username_chars for c in name):
            return None
        if s.auth_default_realm and "@" not in name:
            name = f"{name}@{s.auth_default_realm}"
        if s.auth_username_format:
            request = AuthRequest(user=name)
            name = expand(s.auth_username_format, request.variables())
        return name or None

    def _given_password(self, password: str) -> str:
        mode, _, count = self.settings.auth_verbose_passwords.lower().partition(":")
        if mode in ("", "no", "false"):
            return ""
        shown = hashlib.sha1(password.encode()).hexdigest() if mode == "sha1" else password
        if count.isdigit():
            shown = shown[: int(count)]
        return f" (given password: {shown})"

    # -- passdb ---------------------------------------------------------------

    def _passdb_chain(self, request: AuthRequest, password: str) -> defer.Deferred:
        """Run the passdb chain (authd.chain: result_* rules, skip, deny,
        master, the auth cache); fires with a PassdbResult whose
        INTERNAL_FAILURE means a temporary failure."""
        return self.passdb_chain.verify_plain(request, password)

    def lookup_credentials(self, request: AuthRequest, scheme: str) -> defer.Deferred:
        """Stored credentials of ``request.user`` in ``scheme`` through the
        chain's rules; fires with a PassdbResult (``credentials`` on OK)."""
        return self.passdb_chain.lookup_credentials(request, scheme)

    # -- userdb ---------------------------------------------------------------

    def _resolve_id(self, value: str, kind: str) -> str:
        if value.isdigit():
            return value
        try:
            if kind == "uid":
                return str(pwd.getpwnam(value).pw_uid)
            return str(grp.getgrnam(value).gr_gid)
        except KeyError:
            raise AuthBackendError(f"Unknown {kind} name '{value}'") from None

    def _finish_fields(self, user: str, fields: dict[str, str]) -> dict[str, str]:
        """Resolve uid/gid names; fill in mail_uid/mail_gid or, when not
        root, our own ids (a laptop demo user)."""
        fields = dict(fields)
        for kind, setting, current in (
            ("uid", self.settings.mail_uid, self.getuid),
            ("gid", self.settings.mail_gid, self.getgid),
        ):
            value = fields.get(kind) or setting
            if not value:
                if self.getuid() == 0:
                    raise AuthBackendError(
                        f"userdb returned no {kind} for {user} and mail_{kind} is not set"
                    )
                value = str(current())
            fields[kind] = self._resolve_id(value, kind)
        fields["user"] = user
        return fields

    @defer.inlineCallbacks
    def _userdb_chain(self, request: AuthRequest, prefetched: dict[str, str]):
        """Fire with the merged userdb fields, or None if no userdb knows
        the user; AuthBackendError if it can't be told (authd.chain)."""
        fields = yield self.userdb_chain.lookup(request, prefetched)
        if fields is None:
            return None
        fields = dict(fields)
        user = fields.pop("user", "") or request.user
        return self._finish_fields(user, fields)

    # -- entry points ---------------------------------------------------------

    def _set_user(self, request: AuthRequest, authcid: str) -> bool:
        user = self.normalize_user(authcid)
        if user is None:
            if self.settings.auth_verbose:
                log.info(
                    "{who}: Invalid username",
                    who=AuthRequest(
                        user=authcid, remote_ip=request.remote_ip, session=request.session
                    ).log_id("auth"),
                )
            return False
        request.original_user = authcid
        request.user = user
        return True

    def authenticate(self, request: AuthRequest, authcid: str, password: str) -> defer.Deferred:
        """Check a plaintext login; fires with an :class:`AuthOutcome`."""
        if not self._set_user(request, authcid):
            return defer.succeed(AuthOutcome(False))
        d = self._passdb_chain(request, password)
        d.addCallback(self._after_passdb, request)
        return d.addCallback(self._penalty_reset, request)

    def authenticate_master(
        self, request: AuthRequest, login_user: str, master_user: str, password: str
    ) -> defer.Deferred:
        """``login_user*master_user`` (auth_master_user_separator) with the
        master user's password: the master passdbs verify it, then the login
        user goes on as after a normal passdb success (see authd.chain);
        fires with an :class:`AuthOutcome` whose fields carry
        ``master_user``."""
        master = self.normalize_user(master_user)
        if master is None or not self._set_user(request, login_user):
            return defer.succeed(AuthOutcome(False))
        login = request.user
        d = self.passdb_chain.verify_master(request, login, master, password)
        d.addCallback(self._after_passdb, request)

        def add_master(outcome: AuthOutcome) -> AuthOutcome:
            if outcome.ok:
                outcome.fields["master_user"] = master
            return outcome

        d.addCallback(add_master)
        return d.addCallback(self._penalty_reset, request)

    def _penalty_reset(self, outcome: AuthOutcome, request: AuthRequest) -> AuthOutcome:
        if outcome.ok:
            self.penalty.succeeded(request.remote_ip)
        return outcome

    def failure_delay(self, remote_ip: str | None = None, temporary: bool = False) -> float:
        """Count a failed login from ``remote_ip`` (not for temporary
        failures) and return how long to wait before saying so
        (authd.penalty's model; auth_failure_delay without an IP)."""
        base = self.settings.auth_failure_delay
        if not temporary:
            self.penalty.failed(remote_ip)
        return self.penalty.delay(remote_ip, base)

    def flush_cache(self, users: list[str]) -> int:
        """FlushCache: drop the auth cache entries of ``users`` (all if empty)."""
        names = [n for n in (self.normalize_user(u) for u in users) if n]
        if users and not names:
            return 0
        count = self.cache.flush(names)
        log.info("auth cache flushed: {count} entries", count=count)
        return count

    @defer.inlineCallbacks
    def _after_passdb(self, result: PassdbResult, request: AuthRequest):
        """nologin, allow_nets and the userdb chain after the passdb chain."""
        if result.status is PassdbStatus.INTERNAL_FAILURE:
            return AuthOutcome(False, reason=TEMP_FAILED, temporary=True)
        if not result.ok:
            return AuthOutcome(False, reason=result.extra.get("reason") or AUTH_FAILED)
        extra = result.extra
        nodelay = "nodelay" in extra
        if result.nologin:
            if self.settings.auth_verbose:
                log.info("{who}: nologin", who=request.log_id("auth"))
            return AuthOutcome(False, reason=extra.get("reason") or AUTH_FAILED, nodelay=nodelay)
        nets = result.allow_nets
        if nets and not _in_nets(request.remote_ip, nets):
            log.info(
                "{who}: allow_nets check failed: IP not in allowed networks",
                who=request.log_id("auth"),
            )
            return AuthOutcome(False)
        if extra.get("user"):
            request.user = extra["user"]
        request.passdb_success = True
        try:
            fields = yield self._userdb_chain(request, result.userdb_fields())
        except AuthBackendError as e:
            log.error("{who}: userdb lookup failed: {error}", who=request.log_id("auth"), error=e)
            return AuthOutcome(False, reason=TEMP_FAILED, temporary=True)
        if fields is None:
            log.error("{who}: user not found from any userdb", who=request.log_id("auth"))
            return AuthOutcome(False, reason=TEMP_FAILED, temporary=True)
        return AuthOutcome(True, user=fields["user"], fields=fields)

    @defer.inlineCallbacks
    def passdb_lookup(self, name: str, service: str):
        """PassdbLookup: fires with the AMP response dict."""
        user = self.normalize_user(name)
        if user is None:
            return {"found": False}
        request = AuthRequest(user=user, service=service, original_user=name)
        result = yield self.passdb_chain.lookup_user(request)
        if result.status is PassdbStatus.OK:
            extra = {k: v for k, v in result.extra.items() if k != "password"}
            return {"found": True, "user": extra.get("user") or request.user,
                    "fields": json.dumps(extra)}
        if result.status in (PassdbStatus.INTERNAL_FAILURE, PassdbStatus.SCHEME_NOT_AVAILABLE):
            why = ("no passdb can look users up without a password"
                   if result.status is PassdbStatus.SCHEME_NOT_AVAILABLE else "backend failure")
            return {"found": False, "temporary": True, "reason": why}
        return {"found": False}

    @defer.inlineCallbacks
    def iterate_users(self):
        """Every user name the userdbs that can iterate list, each once, in
        userdb order; RuntimeError on a backend failure."""
        names: dict[str, None] = {}
        for userdb, _db in self.userdbs:
            iterate = getattr(userdb, "iterate", None)
            if iterate is None:
                continue
            try:
                found = yield defer.maybeDeferred(iterate)
            except AuthBackendError as e:
                log.error("userdb iterate failed: {error}", error=e)
                raise RuntimeError(str(e)) from None
            names.update(dict.fromkeys(found))
        return list(names)

    @defer.inlineCallbacks
    def user_lookup(self, name: str, service: str):
        """UserLookup: fires with the AMP response dict."""
        user = self.normalize_user(name)
        if user is None:
            return {"found": False}
        request = AuthRequest(user=user, service=service, original_user=name)
        try:
            fields = yield self._userdb_chain(request, {})
        except AuthBackendError as e:
            log.error("{who}: userdb lookup failed: {error}", who=request.log_id("auth"), error=e)
            return {"found": False, "temporary": True}
        if fields is None:
            return {"found": False}
        return {"found": True, "user": fields["user"], "fields": json.dumps(fields)}


# -- auth-login --------------------------------------------------------------


def peer_pid(transport: Any) -> int | None:
    """The connected UNIX peer's pid from SO_PEERCRED, or None."""
    try:
        sock = transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid


class LoginProtocol(amp.AMP):
    """auth-login: SASL exchanges for login processes.

    The exchanges themselves run in :class:`authd.exchange.SASLExchange`;
    this adds the request ids, the failure delay and, on success, the login
    cookie bound to the peer's pid and the connection's addresses."""

    def __init__(self, engine: AuthEngine):
        super().__init__()
        self.engine = engine
        self.pid: int | None = None
        self.exchanges: dict[int, SASLExchange] = {}
        #: Finished exchanges whose failure reply is still being delayed:
        #: they count against the bound too.
        self.delayed = 0
        self.limit_logged = False

    def in_flight(self) -> int:
        """SASL exchanges of this connection not answered for good yet."""
        return len(self.exchanges) + self.delayed

    def connectionMade(self) -> None:
        super().connectionMade()
        self.pid = peer_pid(self.transport)

    def connectionLost(self, reason: Any) -> None:
        for exchange in self.exchanges.values():
            exchange.cancel()
        self.exchanges.clear()
        super().connectionLost(reason)

    def _fail(self, reason: str = AUTH_FAILED, temporary: bool = False, delay: bool = True,
              remote_ip: str | None = None):
        reply = {"status": "fail", "reason": reason, "temporary": temporary}
        seconds = self.engine.failure_delay(remote_ip, temporary) if delay else 0
        if seconds <= 0:
            return defer.succeed(reply)
        self.delayed += 1

        def answer() -> dict:
            self.delayed -= 1
            return reply

        return task.deferLater(self.engine.reactor, seconds, answer)

    @MechList.responder
    def mech_list(self, secured: bool):
        return {"mechanisms": available_mechanisms(self.engine, secured)}

    @AuthStart.responder
    def auth_start(
        self,
        id,
        mechanism,
        service,
        secured,
        local_ip,
        local_port,
        remote_ip,
        remote_port,
        session,
        initial=None,
        channel_binding_type=None,
        channel_binding=None,
        client_cert_user=None,
        valid_client_cert=None,
    ):  # noqa: A002
        if id in self.exchanges:
            return self._fail("Duplicate request id", delay=False)
        limit = self.engine.settings.login_max_exchanges
        if self.in_flight() >= limit:
            if not self.limit_logged:
                self.limit_logged = True
                log.warn("auth-login(pid {pid}): more than {n} concurrent SASL exchanges; "
                         "refusing new ones", pid=self.pid, n=limit)
            raise TooManyExchanges(f"more than {limit} concurrent exchanges")
        self.limit_logged = False
        request = AuthRequest(
            user="",
            service=service,
            mech=mechanism.upper(),
            local_ip=local_ip,
            local_port=local_port,
            remote_ip=remote_ip,
            remote_port=remote_port,
            session=session,
            secured=secured,
        )
        context = sasl.SASLContext(
            settings=self.engine.settings,
            service=service,
            secured=secured,
            channel_binding_type=channel_binding_type or "",
            channel_binding=channel_binding or b"",
            client_cert_user=client_cert_user or "",
            valid_client_cert=bool(valid_client_cert),
        )
        exchange = SASLExchange(self.engine, mechanism, request, context)
        self.exchanges[id] = exchange
        return exchange.start(initial).addCallback(self._reply, id, exchange)

    @AuthContinue.responder
    def auth_continue(self, id, response):  # noqa: A002
        exchange = self.exchanges.get(id)
        if exchange is None or exchange.busy:
            return self._fail("Unknown or busy request id", delay=False)
        return exchange.next(response).addCallback(self._reply, id, exchange)

    @AuthCancel.responder
    def auth_cancel(self, id):  # noqa: A002
        exchange = self.exchanges.pop(id, None)
        if exchange is not None:
            exchange.cancel()
        return {}

    def _reply(self, reply: Reply, id: int, exchange: SASLExchange):  # noqa: A002
        if reply.status == "continue":
            return {"status": "continue", "challenge": reply.challenge}
        if self.exchanges.get(id) is exchange:
            del self.exchanges[id]
        if reply.status != "ok":
            return self._fail(reply.reason, reply.temporary, delay=not reply.nodelay,
                              remote_ip=exchange.request.remote_ip)
        request = exchange.request
        cookie = self.engine.cookies.issue(
            reply.user, reply.fields, self.pid, request.local_ip, request.remote_ip
        )
        log.debug("{who}: authenticated", who=request.log_id("auth"))
        return {"status": "ok", "user": reply.user, "cookie": cookie}


# -- auth-master and auth-userdb ---------------------------------------------


class UserdbProtocol(amp.AMP):
    """auth-userdb: user lookups only (lmtp)."""

    def __init__(self, engine: AuthEngine):
        super().__init__()
        self.engine = engine

    @UserLookup.responder
    def user_lookup(self, user: str, service: str):
        return self.engine.user_lookup(user, service)


class MasterProtocol(amp.AMP):
    """auth-master: cookie redemption and user lookups (the master)."""

    def __init__(self, engine: AuthEngine):
        super().__init__()
        self.engine = engine

    @RedeemCookie.responder
    def redeem_cookie(self, cookie: bytes, login_pid: int, local_ip: str, remote_ip: str):
        try:
            entry = self.engine.cookies.redeem(cookie, login_pid, local_ip, remote_ip)
        except KeyError as e:
            log.warn("auth-master: refused cookie: {reason}", reason=e.args[0])
            raise
        return {"user": entry.user, "fields": json.dumps(entry.fields)}

    @UserLookup.responder
    def user_lookup(self, user: str, service: str):
        return self.engine.user_lookup(user, service)

    @FlushCache.responder
    def flush_cache(self, users: list[str]):
        return {"count": self.engine.flush_cache(users)}

    @PassdbLookup.responder
    def passdb_lookup(self, user: str, service: str):
        return self.engine.passdb_lookup(user, service)

    @UserIterate.responder
    def user_iterate(self, offset: int):
        def page(names: list[str]) -> dict:
            users, size, i = [], 0, max(0, offset)
            while i < len(names) and size + len(names[i].encode()) + 2 < 60000:
                users.append(names[i])
                size += len(names[i].encode()) + 2
                i += 1
            if not users and i < len(names):
                i += 1  # a name too long for one page is left out
            return {"users": users, "next": i if i < len(names) else 0}

        return self.engine.iterate_users().addCallback(page)


class _EngineFactory(ServerFactory):
    noisy = False

    def __init__(self, engine: AuthEngine, protocol: type[amp.AMP]):
        self.engine = engine
        self.protocol = protocol

    def buildProtocol(self, addr: Any) -> amp.AMP:
        proto = self.protocol(self.engine)
        proto.factory = self
        return proto


def build_factories(
    settings: AuthSettings, engine: AuthEngine | None = None
) -> dict[str, ServerFactory]:
    """Server factories keyed by socket name, sharing one engine."""
    from authd.client_protocol import AuthClientFactory

    engine = engine or AuthEngine(settings)
    return {
        "auth-login": _EngineFactory(engine, LoginProtocol),
        "auth-master": _EngineFactory(engine, MasterProtocol),
        "auth-userdb": _EngineFactory(engine, UserdbProtocol),
        "auth-client": AuthClientFactory(engine),
    }
