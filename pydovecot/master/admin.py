"""The master's admin socket: pydoveadm's verbs, run in the master.

``<base_dir>/admin`` is a UNIX socket of mode 0600 owned by the master's
user (root in production); a connection whose peer (SO_PEERCRED) is not
that user, or root, is closed at once.  On it pydoveadm sends
:class:`~pydovecot.admin.protocol.AdminCommand`.  The master answers
process control (``reload`` as SIGHUP does, ``stop``), sessions from its
own records (``who``, ``kick``), auth (``auth test`` over auth-client's
Dovecot protocol, ``auth lookup``, ``auth cache flush``, ``user`` and the
user list for ``-A`` on auth-master), the
ring of recent Error/Warning/Fatal lines it logged (``log errors``), and
hands every mailbox verb to the user's mail process
(:class:`~pydovecot.admin.protocol.AdminRequest` over its channel), which
the pool provides as it does for a login.  No mail file is touched here.

Trusts: the peer once its uid is checked (the admin); the mail process's
result documents are size-bounded when read.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import json
import os
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.protocols.basic import LineOnlyReceiver

from authd.protocol import FlushCache, PassdbLookup, UserIterate, UserLookup
from pydovecot.admin.protocol import (
    EX_NOPERM,
    EX_NOTFOUND,
    EX_NOUSER,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    EXPAND,
    RIGHT,
    AdminCommand,
    AdminError,
    AdminRequest,
    header,
    pack,
    result,
    unpack,
)
from pydovecot.admin.verbs import VERBS
from pydovecot.channel import adopt_listener
from pydovecot.log import sanitize

if TYPE_CHECKING:
    from pydovecot.master.service import MasterService

log = Logger(namespace="master")

SOCKET_NAME = "admin"
#: Lines kept for ``log errors`` (Dovecot's log process keeps 1000).
RING_SIZE = 1000
RING_LEVELS = {LogLevel.warn: "Warning", LogLevel.error: "Error", LogLevel.critical: "Fatal"}
#: Seconds a mail process may take for one admin request.
MAIL_TIMEOUT = 600.0
#: The most users ``-A`` runs a verb for.
MAX_USERS = 1_000_000
#: A verb's result that is a mail process's result fd, passed on as it is.
FORWARD = "_forward_fd"
#: Seconds auth-client may take to answer ``auth test`` (failures are delayed).
AUTH_TIMEOUT = 30.0


class ErrorRing:
    """A log observer keeping the last :data:`RING_SIZE` warnings and errors."""

    def __init__(self, size: int = RING_SIZE):
        self.lines: collections.deque[tuple[float, str, str, str]] = collections.deque(
            maxlen=size)

    def __call__(self, event: dict) -> None:
        level = RING_LEVELS.get(event.get("log_level"))
        if level is None:
            return
        try:
            text = formatEvent(event)
        except Exception:  # a bad format string is no reason to lose the line
            text = str(event.get("log_format", ""))
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}: {failure.getErrorMessage()}"
        prefix = event.get("log_prefix") or event.get("log_namespace") or "master"
        self.lines.append((event.get("log_time") or time.time(), level, str(prefix),
                           text.replace("\n", " ")))


def peer_uid(transport: Any) -> int | None:
    """The connected UNIX peer's uid (SO_PEERCRED), or None."""
    try:
        sock = transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    except (OSError, AttributeError):
        return None


class AdminProtocol(amp.AMP):
    """One pydoveadm connection."""

    def __init__(self, server: AdminServer):
        super().__init__()
        self.server = server
        self.sent_fds: list[int] = []
        self.lost = False

    def connectionMade(self) -> None:
        super().connectionMade()
        uid = peer_uid(self.transport)
        if uid not in (0, os.geteuid()):
            log.warn("admin: refused a connection from uid {uid}", uid=uid,
                     log_prefix="master")
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        self.lost = True
        self._close_sent()
        super().connectionLost(reason)

    def _close_sent(self) -> None:
        # An answer's fd was sent once the next command (or the close) came:
        # the CLI read the answer before it sent anything else.
        for fd in self.sent_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.sent_fds = []

    @AdminCommand.responder
    def admin_command(self, verb: str, args: str, input: int | None = None):  # noqa: A002
        self._close_sent()
        d = defer.ensureDeferred(self.server.run(verb, args, input))

        def answer(value: dict) -> dict:
            packed = {"output": value[FORWARD]} if FORWARD in value else pack(value)
            if "output" in packed:
                self.sent_fds.append(packed["output"])
                if self.lost:  # nobody to send it to
                    self._close_sent()
            return packed

        def closed(r):
            if input is not None:
                try:
                    os.close(input)
                except OSError:
                    pass
            return r

        return d.addCallback(answer).addBoth(closed)


class AdminServer:
    """The admin socket and the master-side verbs."""

    def __init__(self, master: MasterService):
        self.master = master
        self.ring = ErrorRing()
        self.port = None
        self.path = ""
        self.verbs: dict[str, Callable[[dict], Awaitable[dict]]] = {
            "reload": self.reload, "stop": self.stop, "who": self.who, "kick": self.kick,
            "auth test": self.auth_test, "auth lookup": self.auth_lookup,
            "auth cache flush": self.auth_cache_flush, "user": self.user,
            "log errors": self.log_errors, "user list": self.user_list,
        }

    # -- life cycle ----------------------------------------------------------

    def observe(self) -> None:
        """Start keeping error lines (from the master's start on)."""
        globalLogPublisher.addObserver(self.ring)

    def start(self, base_dir: str) -> None:
        self.path = os.path.join(base_dir, SOCKET_NAME)
        _unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)  # before listen(): nobody connected yet
            sock.listen(16)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        factory = Factory.forProtocol(lambda: AdminProtocol(self))
        factory.noisy = False
        # keeps the socket's 0600 (Twisted's own listenUNIX would chmod it)
        self.port = adopt_listener(sock.detach(), factory)

    def stop_listening(self) -> None:
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        if self.path:
            _unlink(self.path)
        globalLogPublisher.removeObserver(self.ring)

    # -- dispatch --------------------------------------------------------------

    async def run(self, verb: str, args: str, input_fd: int | None) -> dict:
        try:
            params = json.loads(args)
            if not isinstance(params, dict):
                raise ValueError
        except ValueError:
            raise AdminError(EX_USAGE, "malformed arguments") from None
        try:
            handler = self.verbs.get(verb)
            if handler is not None:
                return await handler(params)
            spec = VERBS.get(verb)
            if spec is None or spec.where != "mail":
                raise AdminError(EX_USAGE, f"Unknown command: {sanitize(verb)}")
            return await self.mail_verb(verb, params, input_fd)
        except AdminError:
            raise
        except Exception:
            log.failure("admin: {verb} failed", verb=sanitize(verb), log_prefix="master")
            raise AdminError(EX_SOFTWARE, "Internal error occurred. Refer to server log "
                                          "for more information.") from None

    async def lookup(self, user: str) -> tuple[str, dict]:
        """The userdb's canonical name and fields for ``user``."""
        try:
            found = await self.master.auth.call(UserLookup, user=user, service="doveadm")
        except Exception as e:
            raise AdminError(EX_TEMPFAIL, f"User lookup failed: {sanitize(e)}") from None
        if not found["found"]:
            if found.get("temporary"):
                raise AdminError(EX_TEMPFAIL, "User lookup failed: Internal error occurred. "
                                              "Refer to server log for more information.")
            raise AdminError(EX_NOUSER, "User doesn't exist")
        return found["user"], json.loads(found["fields"])

    async def mail_verb(self, verb: str, params: dict, input_fd: int | None) -> dict:
        user = params.get("user")
        if not isinstance(user, str) or not user:
            raise AdminError(EX_USAGE, "-u <user> missing")
        name, fields = await self.lookup(user)
        master = self.master
        try:
            uid, gid = master.mail_ids(name, fields)
            fields_json = master.prepare_home(name, fields, uid, gid)
            process = await master.pool.process_for(uid, gid, name)
        except (RuntimeError, ValueError) as e:
            raise AdminError(EX_TEMPFAIL, sanitize(e)) from None
        kwargs = {"verb": verb, "user": name, "fields": fields_json,
                  "args": json.dumps({k: v for k, v in params.items() if k != "user"})}
        if input_fd is not None:
            kwargs["input"] = input_fd
        try:
            answer = await _within(process.call(AdminRequest, **kwargs), MAIL_TIMEOUT)
        except AdminError:
            raise
        except Exception as e:
            raise AdminError(EX_TEMPFAIL, f"mail process {process.pid}: "
                                          f"{sanitize(getattr(e, 'value', e))}") from None
        if answer.get("output") is not None:
            # a large result goes on to pydoveadm as the very file, unread
            return {FORWARD: answer["output"]}
        return unpack(answer)

    # -- process control ---------------------------------------------------------

    async def reload(self, params: dict) -> dict:
        reactor.callLater(0, self.master.reload)
        return result()

    async def stop(self, params: dict) -> dict:
        log.info("stop requested by pydoveadm", log_prefix="master")
        reactor.callLater(0.1, reactor.stop)
        return result()

    # -- sessions ------------------------------------------------------------------

    def sessions(self) -> list[dict]:
        """Every session the master knows: user, service, mail pid, ip, id."""
        out = []
        for (pid, session), keys in self.master.session_keys.items():
            for user, ip, service in keys:
                out.append({"user": user, "service": service, "pid": pid, "ip": ip,
                            "session": session})
        return out

    async def who(self, params: dict) -> dict:
        match = _who_filter(params.get("argv") or [])
        sessions = [s for s in self.sessions() if match(s)]
        if (params.get("options") or {}).get("1"):
            return result([header("username", "username", EXPAND), header("service", "proto"),
                           header("pid"), header("ip")],
                          [[s["user"], s["service"], str(s["pid"]), s["ip"]] for s in sessions],
                          formatter="table")
        groups: dict[tuple[str, str], dict] = {}
        for s in sessions:
            g = groups.setdefault((s["user"], s["service"]), {"n": 0, "pids": [], "ips": []})
            g["n"] += 1
            if s["pid"] not in g["pids"]:
                g["pids"].append(s["pid"])
            if s["ip"] not in g["ips"]:
                g["ips"].append(s["ip"])
        rows = [[user, str(g["n"]), service, "(" + " ".join(map(str, g["pids"])) + ")",
                 "(" + " ".join(g["ips"]) + ")"] for (user, service), g in groups.items()]
        return result([header("username"), header("connections", "#", RIGHT),
                       header("service", "proto"), header("pids", "(pids)"),
                       header("ips", "(ips)")], rows, formatter="table")

    async def kick(self, params: dict) -> dict:
        argv = params.get("argv") or []
        if not argv:
            raise AdminError(EX_USAGE, "user and/or ip[/bits] must be specified.")
        match = _who_filter(argv)
        targets: dict[tuple[int, str], list[str]] = {}
        for s in self.sessions():
            if match(s):
                targets.setdefault((s["pid"], s["user"]), []).append(s["session"])
        kicked: set[str] = set()
        for (pid, user), ids in targets.items():
            process = self.master.pool.by_pid.get(pid)
            if process is None or not process.usable:
                continue
            try:
                answer = await _within(process.call(
                    AdminRequest, verb="kick", user=user, fields="{}",
                    args=json.dumps({"sessions": ids})), MAIL_TIMEOUT)
            except Exception as e:
                log.warn("kick: mail process {pid}: {e}", pid=pid, e=sanitize(e),
                         log_prefix="master")
                continue
            if unpack(answer).get("rows"):
                kicked.add(user)
        if not kicked:
            return result(text="no users kicked\n", exit=EX_NOTFOUND)
        users = sorted(kicked)
        return result(text="kicked connections from the following users:\n"
                           + "".join(f"{u} " for u in users) + "\n")

    # -- auth -------------------------------------------------------------------

    async def auth_test(self, params: dict) -> dict:
        argv = params.get("argv") or []
        if len(argv) != 2:
            raise AdminError(EX_USAGE, "auth test: <user> [<password>]")
        user, password = argv
        opts = params.get("options") or {}
        path = opts.get("a") or os.path.join(self.master.base_dir, "auth-client")
        info = {"service": "doveadm"}
        for item in opts.get("x") or []:
            key, _, value = str(item).partition("=")
            if key in ("service", "lip", "rip", "lport", "rport", "session"):
                info[key] = value
        master_user = opts.get("M") or user
        status, fields = await _auth_client_plain(path, user, master_user, password, info)
        lines = [f"passdb: {user} auth {'succeeded' if status == 'OK' else 'failed'}\n"]
        if fields:
            lines.append("extra fields:\n")
            lines += [f"  {f}\n" for f in fields]
        return result(text="".join(lines), exit=0 if status == "OK" else EX_NOPERM)

    async def auth_lookup(self, params: dict) -> dict:
        """doveadm auth lookup: the passdb's view of each user (no password
        check, no hash shown); ``-f FIELD`` prints one field."""
        users = [str(u) for u in params.get("argv") or []]
        if not users:
            raise AdminError(EX_USAGE, "auth lookup: <user> missing")
        show = (params.get("options") or {}).get("f")
        show = show if isinstance(show, str) else None
        text, errors, code = [], [], 0
        for i, user in enumerate(users):
            if i:
                text.append("\n")
            try:
                found = await self.master.auth.call(PassdbLookup, user=user, service="doveadm")
            except Exception as e:
                errors.append(f"passdb lookup failed for {user}: {sanitize(e)}")
                code = EX_TEMPFAIL
                continue
            if not found["found"]:
                if found.get("temporary"):
                    errors.append(f"passdb lookup failed for {user}: "
                                  f"{found.get('reason') or 'backend failure'}")
                    code = EX_TEMPFAIL
                else:
                    text.append(f"passdb lookup: user {user} doesn't exist\n")
                    code = EX_NOUSER
                continue
            fields = json.loads(found.get("fields") or "{}")
            if show is not None:
                text += [f"{v}\n" for k, v in fields.items() if k == show]
                continue
            text.append(f"passdb: {user}\n")
            if found.get("user") and found["user"] != user:
                text.append(f"  {'user':<10}: {found['user']}\n")
            for key, value in fields.items():
                if key == "user":
                    continue
                text.append(f"  {key:<10}: {value}\n" if value != "" else f"  {key:<10}\n")
        return result(text="".join(text), errors=errors, exit=code)

    async def auth_cache_flush(self, params: dict) -> dict:
        users = [str(u) for u in params.get("argv") or []]
        try:
            answer = await self.master.auth.call(FlushCache, users=users)
        except Exception as e:
            log.error("admin: auth cache flush failed: {e}", e=sanitize(e), log_prefix="master")
            return result(errors=["Cache flush failed"], exit=EX_TEMPFAIL)
        return result(text=f"{answer['count']} cache entries flushed\n")

    async def user(self, params: dict) -> dict:
        masks = [str(u) for u in params.get("argv") or []]
        opts = params.get("options") or {}
        if not masks:
            raise AdminError(EX_USAGE, "user: <user mask> missing")
        if any("*" in m or "?" in m for m in masks):
            # doveadm lists the matching users the userdb iterates
            listed = await self.user_list({})
            patterns = [_wildcard(m) for m in masks]
            names = [row[0] for row in listed["rows"]
                     if any(p.fullmatch(row[0]) for p in patterns)]
            return result(text="".join(f"{n}\n" for n in names))
        show = opts.get("f") if isinstance(opts.get("f"), str) else None
        userdb_only = bool(opts.get("u"))
        rows, text, code = [], [], 0
        for i, mask in enumerate(masks):
            if i and (show is None):
                text.append("\n")
            try:
                name, fields = await self.lookup(mask)
            except AdminError as e:
                if e.code != EX_NOUSER:
                    raise
                code = EX_NOUSER
                text.append(("userdb lookup: user %s doesn't exist\n" if userdb_only
                             else "\nuserdb lookup: user %s doesn't exist\n") % mask)
                continue
            if userdb_only:
                if show is not None:
                    if show in fields:
                        text.append(f"{fields[show]}\n")
                    continue
                text.append(f"userdb: {mask}\n")
                if name != mask:
                    text.append(f"  {'user':<10}: {name}\n")
                for key, value in fields.items():
                    if key != "user":
                        text.append(f"  {key:<10}: {value}\n")
                continue
            values = self._mail_user_fields(name, mask, fields)
            if show is not None:
                text += [f"{v}\n" for k, v in values if k == show]
                continue
            rows += [[k, v] for k, v in values]
        if show is not None or userdb_only:
            return result(text="".join(text), exit=code)
        return result([header("field"), header("value")], rows, text="".join(text), exit=code,
                      formatter="tab")

    def _mail_user_fields(self, name: str, given: str, fields: dict) -> list[tuple[str, str]]:
        """As doveadm user prints a mail user: user (when renamed), uid,
        gid, home, mail, then the other userdb fields."""
        config = self.master.config
        out = []
        if name != given:
            out.append(("user", name))
        out.append(("uid", str(fields.get("uid") or config.get("mail_uid") or "")))
        out.append(("gid", str(fields.get("gid") or config.get("mail_gid") or "")))
        home = fields.get("home") or ""
        if not home and config.get("mail_home"):
            from pydovecot.config.variables import expand_path

            try:
                home = expand_path(config.get("mail_home"), {"user": name})
            except ValueError:
                home = ""
        out.append(("home", home))
        out.append(("mail", str(fields.get("mail") or config.get("mail_location") or "")))
        for key, value in fields.items():
            if key not in ("uid", "gid", "home", "mail", "user"):
                out.append((key, str(value)))
        return out

    async def user_list(self, params: dict) -> dict:
        """Every user the userdbs can list (``-A``), from authd's iterate."""
        names: list[str] = []
        offset = 0
        while True:
            try:
                answer = await self.master.auth.call(UserIterate, offset=offset)
            except Exception as e:
                raise AdminError(EX_TEMPFAIL, f"User listing failed: "
                                              f"{sanitize(getattr(e, 'value', e))}") from None
            names += answer["users"]
            if not answer["next"] or answer["next"] <= offset or len(names) > MAX_USERS:
                break
            offset = answer["next"]
        return result([header("username")], [[n] for n in names[:MAX_USERS]])

    # -- log errors -------------------------------------------------------------

    async def log_errors(self, params: dict) -> dict:
        since = (params.get("options") or {}).get("s")
        try:
            since_t = float(since) if since else 0.0
        except ValueError:
            raise AdminError(EX_USAGE, "Invalid -s parameter") from None
        rows = [[time.strftime("%b %d %H:%M:%S", time.localtime(t)), level, prefix, text]
                for t, level, prefix, text in list(self.ring.lines) if t >= since_t]
        out = result([header("timestamp"), header("type"), header("prefix"), header("text")],
                     rows, formatter="formatted")
        out["format"] = "%{timestamp} %{type}: %{prefix}: %{text}\n"
        return out


# -- helpers -----------------------------------------------------------------


def _wildcard(mask: str) -> re.Pattern[str]:
    """Dovecot's wildcard_match_icase: ``*`` any run, ``?`` one character."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in mask), re.IGNORECASE | re.DOTALL)


def _who_filter(masks: list[str]) -> Callable[[dict], bool]:
    """doveadm's who/kick filter: a user mask (``*``/``?``, case-insensitive)
    and/or an IP network."""
    user_re = None
    net = None
    for mask in masks:
        try:
            net = ipaddress.ip_network(mask, strict=False)
            continue
        except ValueError:
            pass
        if user_re is not None:
            raise AdminError(EX_USAGE, "Multiple username masks not supported")
        user_re = _wildcard(mask)

    def match(s: dict) -> bool:
        if user_re is not None and not user_re.fullmatch(s["user"]):
            return False
        if net is not None:
            try:
                return ipaddress.ip_address(s["ip"]) in net
            except ValueError:
                return False
        return True

    return match


def _within(d: defer.Deferred, seconds: float) -> defer.Deferred:
    """``d``'s result, or TimeoutError after ``seconds`` (``d`` is not
    cancelled: its late answer is dropped)."""
    out: defer.Deferred = defer.Deferred()
    timer = reactor.callLater(seconds, lambda: out.called or out.errback(
        TimeoutError("no answer")))

    def done(value):
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(value)

    d.addBoth(done)
    return out


class _AuthClient(LineOnlyReceiver):
    """Dovecot's auth protocol 1.2, client side, for one AUTH PLAIN."""

    delimiter = b"\n"
    MAX_LENGTH = 16384

    def __init__(self, request: str):
        self.request = request
        self.done: defer.Deferred = defer.Deferred()
        self.handshaken = False

    def connectionMade(self) -> None:
        self.transport.write(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())

    def lineReceived(self, line: bytes) -> None:
        parts = line.decode("utf-8", "replace").split("\t")
        if not self.handshaken:
            if parts[0] == "DONE":
                self.handshaken = True
                self.transport.write(self.request.encode() + b"\n")
            return
        if parts[0] in ("OK", "FAIL") and len(parts) >= 2 and parts[1] == "1":
            if not self.done.called:
                self.done.callback((parts[0], [_tabunescape(p) for p in parts[2:]]))
            self.transport.loseConnection()
        elif parts[0] == "CONT" and not self.done.called:
            self.done.callback(("CONT", []))
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.errback(ConnectionError("auth server closed the connection"))


def _tabunescape(value: str) -> str:
    return re.sub("\x01(.)", lambda m: {"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}.get(
        m[1], m[1]), value)


def _tabescape(value: str) -> str:
    return (value.replace("\x01", "\x011").replace("\t", "\x01t").replace("\r", "\x01r")
            .replace("\n", "\x01n"))


async def _auth_client_plain(path: str, user: str, authz_as: str, password: str,
                             info: dict[str, str]) -> tuple[str, list[str]]:
    """Authenticate ``user`` with PLAIN on auth-client; (status, fields)."""
    initial = base64.b64encode(f"{user}\0{authz_as}\0{password}".encode()).decode()
    params = [f"{k}={_tabescape(v)}" for k, v in info.items()]
    request = "\t".join(["AUTH", "1", "PLAIN", *params, "secured", f"resp={initial}"])
    proto = _AuthClient(request)
    try:
        await connectProtocol(UNIXClientEndpoint(reactor, path, timeout=10), proto)
    except Exception as e:
        raise AdminError(EX_TEMPFAIL, f"Couldn't connect to auth socket {path}: "
                                      f"{sanitize(e)}") from None
    try:
        return await _within(proto.done, AUTH_TIMEOUT)
    except Exception as e:
        raise AdminError(EX_TEMPFAIL, f"auth test: {sanitize(e)}") from None
    finally:
        if proto.transport is not None:
            proto.transport.loseConnection()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
