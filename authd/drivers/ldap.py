"""Dovecot's LDAP passdb and userdb (``driver = ldap``, ``args = /path/dovecot-ldap.conf.ext``).

Password lookups search ``pass_filter`` as the service account (``dn`` /
``dnpass``) and check the ``password`` field (from ``userPassword``) with
:mod:`authd.schemes`.  With ``auth_bind = yes`` the user's DN is searched
(or built from ``auth_bind_userdn``) and the directory checks the password
by a bind on a separate connection.  The userdb maps ``user_attrs`` of the
``user_filter`` entry to userdb fields.  See :mod:`authd.ldapconf` for the
file format and the pydovecot-only ``timeout`` and ``threads`` settings.

ldap3 blocks, so every directory operation runs in this driver's own thread
pool; each pool thread keeps its bound service connection and its
auth-bind connection for reuse.  Connecting tries the ``uris`` in order
(failover); a broken connection is dropped and the operation retried once
on a fresh one.  A lookup that can't finish within ``timeout`` is an
internal (temporary) failure, never a password mismatch.

Trust: the config file is trusted.  User names and request values come from
clients: they are escaped (RFC 4515 for filters, RFC 4514 for DNs) before
being put into templates, never the templates themselves.  Attribute values
from the directory are data, never re-expanded.  Passwords and ``dnpass``
never reach a log line or an error message.
"""

from __future__ import annotations

import math
import ssl
import threading
from collections.abc import Callable
from typing import Any

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from authd import ldapconf, schemes
from authd.drivers.passwd_file import credentials_in
from authd.interfaces import (
    AuthBackendError,
    AuthRequest,
    IPassdb,
    IUserdb,
    PassdbResult,
    PassdbStatus,
)
from authd.ldapconf import AttrMap, LdapConfig, ldap_template_values
from authd.settings import expand

log = Logger()

_SCOPES = {"base": ldap3.BASE, "onelevel": ldap3.LEVEL, "subtree": ldap3.SUBTREE}
_DEREFS = {
    "never": ldap3.DEREF_NEVER,
    "searching": ldap3.DEREF_SEARCH,
    "finding": ldap3.DEREF_BASE,
    "always": ldap3.DEREF_ALWAYS,
}
_REQUIRE_CERT = {
    "never": ssl.CERT_NONE,
    "allow": ssl.CERT_NONE,
    "try": ssl.CERT_REQUIRED,
    "demand": ssl.CERT_REQUIRED,
    "hard": ssl.CERT_REQUIRED,
}
SUCCESS = 0
INVALID_CREDENTIALS = 49
NO_SUCH_OBJECT = 32

#: What a broken or unreachable connection raises.
_CONNECTION_ERRORS = (ldap_exc.LDAPException, OSError)


class LdapError(Exception):
    """The directory could not answer; the message is safe to log."""


# -- escaping ----------------------------------------------------------------


def escape_dn_value(value: str) -> str:
    """RFC 4514 escaping of one attribute value for a DN template."""
    if not value:
        return value
    return escape_rdn(value).replace("\\\x00", "\\00")


def filter_values(values: dict[str, str]) -> dict[str, str]:
    """Request values escaped for an RFC 4515 filter template."""
    return {k: escape_filter_chars(v) for k, v in values.items()}


def dn_values(values: dict[str, str]) -> dict[str, str]:
    """Request values escaped for an RFC 4514 DN template."""
    return {k: escape_dn_value(v) for k, v in values.items()}


def user_values(user: str, request: AuthRequest) -> dict[str, str]:
    """The request's %-values with ``user`` (and its parts) set to ``user``."""
    values = dict(request.variables(), user=user)
    values["username"], _, values["domain"] = user.partition("@")
    return values


# -- attribute maps ----------------------------------------------------------


def wanted_attrs(maps: list[AttrMap]) -> list[str]:
    """LDAP attributes to request for a map; empty means all."""
    names: list[str] = []
    for item in maps:
        for name in ([item.ldap_attr] if item.ldap_attr else []) + item.template_attrs():
            if name.lower() not in (n.lower() for n in names):
                names.append(name)
    return names


def map_fields(
    attrs: dict[str, list[str]], maps: list[AttrMap], values: dict[str, str]
) -> dict[str, str]:
    """Dovecot fields from an entry's attributes (lower-case names)."""
    fields: dict[str, str] = {}
    for item in maps:
        if not item.field:
            continue
        present = attrs.get(item.ldap_attr.lower()) if item.ldap_attr else None
        if item.template is None:
            if present:
                fields[item.field] = present[0]
            continue
        if item.ldap_attr and not present:
            continue
        tvalues = dict(values)
        tvalues.update(ldap_template_values(item.template, attrs))
        fields[item.field] = expand(item.template, tvalues)
    return fields


# -- the blocking side -------------------------------------------------------


class Directory:
    """Connections to the configured servers.  Every method but
    :meth:`close` runs in a pool thread; each thread has its own service
    connection and auth-bind connection."""

    def __init__(self, config: LdapConfig, warn: Callable[[str], None] | None = None):
        self.config = config
        self.warn = warn or (lambda message: None)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[ldap3.Connection] = set()

    # connections

    def _tls(self) -> ldap3.Tls:
        cfg = self.config
        return ldap3.Tls(
            validate=_REQUIRE_CERT[cfg.tls_require_cert],
            ca_certs_file=cfg.tls_ca_cert_file or None,
            ca_certs_path=cfg.tls_ca_cert_dir or None,
            local_certificate_file=cfg.tls_cert_file or None,
            local_private_key_file=cfg.tls_key_file or None,
            ciphers=cfg.tls_cipher_suite or None,
        )

    def connect(self, user: str | None = None, password: str | None = None) -> ldap3.Connection:
        """A new connection to the first server that answers, StartTLS'd if
        configured, bound as ``user`` when given; LdapError otherwise."""
        cfg = self.config
        errors: list[str] = []
        connect_timeout = max(cfg.timeout / len(cfg.uris), 0.5)
        for uri in cfg.uris:
            server = ldap3.Server(
                uri, tls=self._tls(), connect_timeout=connect_timeout, get_info=ldap3.NONE
            )
            conn = ldap3.Connection(
                server,
                user=user,
                password=password,
                authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
                auto_bind=ldap3.AUTO_BIND_NONE,
                receive_timeout=max(math.ceil(cfg.timeout), 1),  # ldap3 wants an int
                raise_exceptions=False,
                read_only=True,
                check_names=False,
                version=cfg.ldap_version,
            )
            try:
                conn.open(read_server_info=False)
                if cfg.tls and not server.ssl:
                    if not conn.start_tls(read_server_info=False):
                        raise LdapError(f"StartTLS failed: {_describe(conn)}")
                bound = conn.bind(read_server_info=False) if user else True
            except (*_CONNECTION_ERRORS, LdapError) as e:
                errors.append(f"Connection to {uri} failed: {e}")
                _close(conn)
                continue
            conn.password = None  # don't keep the secret around
            if not bound:
                error = _describe(conn)
                _close(conn)
                raise LdapError(f"Bind as {user} on {uri} failed: {error}")
            if errors:
                self.warn("; ".join(errors) + f"; using {uri}")
            with self._lock:
                self._open.add(conn)
            conn.pydovecot_uri = uri  # type: ignore[attr-defined]
            return conn
        raise LdapError("; ".join(errors))

    def _drop(self, name: str) -> None:
        conn = getattr(self._local, name, None)
        setattr(self._local, name, None)
        if conn is not None:
            with self._lock:
                self._open.discard(conn)
            _close(conn)

    def _service(self) -> ldap3.Connection:
        conn = getattr(self._local, "service", None)
        if conn is None or conn.closed:
            self._drop("service")
            conn = self._local.service = self.connect(self.config.dn or None, self.config.dnpass)
        return conn

    def close(self) -> None:
        """Close every connection (after the pool has stopped)."""
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            _close(conn)

    # operations

    def search(self, base: str, search_filter: str, attrs: list[str]) -> list[tuple[str, dict]]:
        """(dn, {lower-case attribute: [values]}) of the matching entries."""
        cfg = self.config
        for attempt in (0, 1):
            conn = self._service()
            try:
                ok = conn.search(
                    base,
                    search_filter,
                    search_scope=_SCOPES[cfg.scope],
                    dereference_aliases=_DEREFS[cfg.deref],
                    attributes=attrs or ldap3.ALL_ATTRIBUTES,
                    time_limit=max(int(cfg.timeout), 1),
                )
            except _CONNECTION_ERRORS as e:
                self._drop("service")
                if attempt:
                    raise LdapError(f"Search on {conn.pydovecot_uri} failed: {e}") from None
                continue
            code = (conn.result or {}).get("result")
            if ok or code in (SUCCESS, NO_SUCH_OBJECT):
                return [
                    (item["dn"], _decode(item.get("raw_attributes", {})))
                    for item in conn.response or []
                    if item.get("type") == "searchResEntry"
                ]
            if conn.closed or code is None:
                self._drop("service")
                if attempt:
                    raise LdapError(f"Search on {conn.pydovecot_uri} failed: connection lost")
                continue
            raise LdapError(
                f"ldap_search(base={base}, filter={search_filter}) failed: {_describe(conn)}"
            )
        raise AssertionError("unreachable")

    def check_bind(self, dn: str, password: str) -> bool:
        """Does ``password`` bind as ``dn``?  LdapError on trouble."""
        for attempt in (0, 1):
            conn = getattr(self._local, "auth", None)
            if conn is None or conn.closed:
                self._drop("auth")
                conn = self._local.auth = self.connect()
            try:
                ok = conn.rebind(user=dn, password=password, read_server_info=False)
            except (ldap_exc.LDAPBindError, *_CONNECTION_ERRORS) as e:
                self._drop("auth")
                if attempt:
                    raise LdapError(f"Bind on {conn.pydovecot_uri} failed: {e}") from None
                continue
            finally:
                conn.password = None
            if ok:
                return True
            code = (conn.result or {}).get("result")
            if code == INVALID_CREDENTIALS:
                return False
            self._drop("auth")
            if code is None and not attempt:
                continue
            raise LdapError(f"Bind as {dn} on {conn.pydovecot_uri} failed: {_describe(conn)}")
        raise AssertionError("unreachable")


def _describe(conn: ldap3.Connection) -> str:
    result = conn.result or {}
    text = result.get("description") or conn.last_error or "no answer"
    message = result.get("message")
    return f"{text} ({message})" if message else str(text)


def _close(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass


def _decode(raw: dict[str, list[bytes]]) -> dict[str, list[str]]:
    return {
        name.lower(): [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values
        ]
        for name, values in raw.items()
    }


# -- the driver --------------------------------------------------------------


@implementer(IPassdb, IUserdb)
class LdapDb:
    """``driver = ldap``, ``args = /etc/dovecot/dovecot-ldap.conf.ext``."""

    driver = "ldap"

    def __init__(self, args: str, reactor: Any = None):
        path = args.strip()
        if not path:
            raise ValueError("ldap: no config file given in args")
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = ldapconf.load(path)
        self.directory = Directory(self.config, self._warn_from_thread)
        self.pool = ThreadPool(minthreads=0, maxthreads=self.config.threads, name=f"ldap {path}")
        self._closed = False
        reactor.callWhenRunning(self.pool.start)
        self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self.close)

    def _warn_from_thread(self, message: str) -> None:
        self.reactor.callFromThread(log.warn, "ldap: {error}", error=message)

    def close(self) -> None:
        """Stop the pool (waits for running lookups) and close connections."""
        if self._closed:
            return
        self._closed = True
        try:
            self.reactor.removeSystemEventTrigger(self._trigger)
        except (ValueError, KeyError):
            pass
        self.pool.stop()
        self.directory.close()

    def _run(self, func: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``func`` in the pool; errback LdapError on timeout or trouble."""
        timeout = self.config.timeout

        def translate(failure: Any) -> Any:
            if failure.check(defer.TimeoutError, defer.CancelledError):
                raise LdapError(f"LDAP lookup timed out after {timeout:g} s")
            if failure.check(LdapError):
                return failure
            log.failure("ldap: lookup crashed", failure)
            raise LdapError(f"LDAP lookup crashed: {failure.getErrorMessage()}")

        d = threads.deferToThreadPool(self.reactor, self.pool, func, *args)
        d.addTimeout(timeout, self.reactor)
        d.addErrback(translate)
        return d

    # blocking helpers (pool threads)

    def _find(
        self, search_filter: str, maps: list[AttrMap], values: dict[str, str]
    ) -> tuple[str, dict[str, list[str]]] | None:
        cfg = self.config
        base = expand(cfg.base, dn_values(values))
        flt = expand(search_filter, filter_values(values))
        entries = self.directory.search(base, flt, wanted_attrs(maps))
        if not entries:
            return None
        if len(entries) > 1:
            raise LdapError(f"Filter {flt} matched {len(entries)} entries under {base}, aborting")
        return entries[0]

    def _passdb_blocking(self, user: str, password: str | None, values: dict[str, str]):
        """verify_plain (password given) or credential lookup (None) in a thread."""
        cfg = self.config
        if cfg.auth_bind and cfg.auth_bind_userdn and password is not None:
            if not password:
                return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, error="empty password")
            dn = expand(cfg.auth_bind_userdn, dn_values(values))
            ok = self.directory.check_bind(dn, password)
            return PassdbResult(PassdbStatus.OK if ok else PassdbStatus.PASSWORD_MISMATCH)
        found = self._find(cfg.pass_filter, cfg.pass_attrs, values)
        if found is None:
            return PassdbResult(PassdbStatus.USER_UNKNOWN)
        dn, attrs = found
        fields = map_fields(attrs, cfg.pass_attrs, values)
        stored = fields.pop("password", None)
        noscheme = fields.pop("password_noscheme", None)
        if stored is None and noscheme is not None:
            stored = "{" + cfg.default_pass_scheme + "}" + noscheme
        if password is None:
            return ("lookup", stored, fields)
        if "nopassword" in fields:
            return PassdbResult(PassdbStatus.OK, fields)
        if cfg.auth_bind:
            if not password:
                return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, fields, error="empty password")
            ok = self.directory.check_bind(dn, password)
            return PassdbResult(PassdbStatus.OK if ok else PassdbStatus.PASSWORD_MISMATCH, fields)
        if not stored:
            return PassdbResult(
                PassdbStatus.PASSWORD_MISMATCH, fields, error="no password in passdb"
            )
        try:
            ok = schemes.verify(password, stored, cfg.default_pass_scheme)
        except schemes.SchemeError as e:
            return PassdbResult(
                PassdbStatus.INTERNAL_FAILURE, fields, error=f"Invalid password in passdb: {e}"
            )
        return PassdbResult(PassdbStatus.OK if ok else PassdbStatus.PASSWORD_MISMATCH, fields)

    def _userdb_blocking(self, values: dict[str, str]) -> dict[str, str] | None:
        cfg = self.config
        found = self._find(cfg.user_filter, cfg.user_attrs, values)
        if found is None:
            return None
        return map_fields(found[1], cfg.user_attrs, values)

    # -- passdb ------------------------------------------------------------

    @staticmethod
    def _internal(failure: Any) -> PassdbResult:
        failure.trap(LdapError)
        return PassdbResult(PassdbStatus.INTERNAL_FAILURE, error=failure.getErrorMessage())

    def verify_plain(self, user: str, password: str, request: AuthRequest) -> defer.Deferred:
        d = self._run(self._passdb_blocking, user, password, user_values(user, request))
        d.addErrback(self._internal)
        return d

    def lookup_credentials(self, user: str, scheme: str, request: AuthRequest) -> defer.Deferred:
        if self.config.auth_bind:
            return defer.succeed(
                PassdbResult(
                    PassdbStatus.SCHEME_NOT_AVAILABLE,
                    error="auth_bind = yes: the passdb can't return credentials",
                )
            )

        def finish(found: Any) -> PassdbResult:
            if isinstance(found, PassdbResult):
                return found
            _, stored, fields = found
            if not stored:
                return PassdbResult(
                    PassdbStatus.SCHEME_NOT_AVAILABLE, fields, error="no password in passdb"
                )
            return credentials_in(stored, scheme, self.config.default_pass_scheme, fields)

        d = self._run(self._passdb_blocking, user, None, user_values(user, request))
        d.addCallback(finish)
        d.addErrback(self._internal)
        return d

    # -- userdb ------------------------------------------------------------

    def lookup(self, user: str, request: AuthRequest) -> defer.Deferred:
        def backend_error(failure: Any) -> None:
            failure.trap(LdapError)
            raise AuthBackendError(failure.getErrorMessage())

        d = self._run(self._userdb_blocking, user_values(user, request))
        d.addErrback(backend_error)
        return d


def _register() -> None:
    """Register ``driver = ldap`` (run on import, from drivers._load())."""
    from authd import drivers

    drivers.register_passdb("ldap", LdapDb)
    drivers.register_userdb("ldap", LdapDb)
    if "passwd-file" not in drivers.PASSDB_DRIVERS:
        # Imported before the registry was loaded: load the rest too, or
        # the non-empty registry would hide the other drivers.
        drivers._load()


_register()
