"""Dovecot's SQL passdb and userdb (``driver = sql``), on SQLAlchemy.

``passdb { driver = sql  args = /etc/dovecot/dovecot-sql.conf.ext }`` and
the same for userdb; the file is Dovecot 2.3's (see :mod:`authd.sqlconf`).
A passdb and a userdb naming the same file share one connection pool, as in
Dovecot.  Databases: PostgreSQL (psycopg), MySQL/MariaDB (pymysql), SQLite.

Result columns are Dovecot's fields: ``password`` (or ``password_noscheme``),
``user``/``username``/``domain`` (rename the user), ``nopassword``,
``nologin``, ``allow_nets``, ``userdb_*`` (prefetch), and for the userdb
``uid``, ``gid``, ``home``, ``mail`` …; a NULL column is no field.  More
than one row is an internal failure.

Blocking database calls and slow password hashes run in a dedicated thread
pool (``maxconns`` threads, started and stopped with the reactor); the
engine pools as many connections and pings them before use.  Trust: the
config file is root's; user names and passwords come from clients and only
ever reach the database as bound parameters.  Database errors are reported
with the backend's message, never with query parameters or the connection
password.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from authd import schemes
from authd.drivers.passwd_file import credentials_in
from authd.interfaces import (
    AuthBackendError,
    AuthRequest,
    IPassdb,
    IUserdb,
    PassdbResult,
    PassdbStatus,
)
from authd.sqlconf import Query, SqlConfig, parse_file, parse_query

log = Logger()

T = TypeVar("T")

Row = dict[str, Any]


class SqlQueryError(Exception):
    """A query failed; the message is the backend's, safe to log."""


def _text(value: Any) -> str:
    """A column value as Dovecot's text field."""
    if isinstance(value, bool):
        return "t" if value else "f"  # what libpq hands Dovecot
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def rename_user(user: str, row: Row) -> str:
    """The user name after the row's ``user``/``username``/``domain``
    columns, applied in column order as Dovecot does."""
    for key, value in row.items():
        if value is None:
            continue
        value = _text(value)
        if key == "user":
            user = value
        elif key == "username":
            if "@" not in value and "@" in user:
                value += "@" + user.split("@", 1)[1]
            user = value
        elif key == "domain":
            user = user.split("@", 1)[0] + ("@" + value if value else "")
    return user


def _request_values(user: str, request: AuthRequest, password: str | None = None) -> dict[str, str]:
    values = dict(request.variables(), user=user)
    values["username"], _, values["domain"] = user.partition("@")
    values["w"] = values["password"] = password or ""
    return values


class SqlConnection:
    """One database (one dovecot-sql.conf.ext): engine and thread pool.

    Shared by every passdb/userdb naming the same file; reference counted.
    """

    _shared: dict[str, SqlConnection] = {}

    @classmethod
    def for_file(cls, path: str, reactor: Any = None) -> SqlConnection:
        key = os.path.abspath(path)
        conn = cls._shared.get(key)
        if conn is None or conn.closed:
            conn = cls._shared[key] = cls(parse_file(path), reactor)
        conn.users += 1
        return conn

    def __init__(self, config: SqlConfig, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.users = 0
        self.closed = False
        self.password_query = parse_query(config.password_query, config.driver)
        self.user_query = parse_query(config.user_query, config.driver)
        self.iterate_query = parse_query(config.iterate_query, config.driver)
        url = config.url()
        self._secret = url.password or ""
        self.maxconns = config.maxconns()
        options: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
        if not (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")):
            options.update(pool_size=self.maxconns, max_overflow=0)
        self.engine: Engine = create_engine(url, **options)
        self.pool = ThreadPool(minthreads=0, maxthreads=self.maxconns, name=f"sql {config.path}")
        reactor.callWhenRunning(self.pool.start)
        self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self._shutdown)
        log.debug(
            "sql: {path}: {url} (maxconns={n})",
            path=config.path,
            url=url.render_as_string(hide_password=True),
            n=self.maxconns,
        )

    # -- running things in the pool -------------------------------------------

    def run(self, func: Callable[..., T], *args: Any) -> defer.Deferred:
        """``func(*args)`` in the pool; the Deferred fires with its result."""
        if self.closed:
            return defer.fail(SqlQueryError("SQL connection is closed"))
        return deferToThreadPool(self.reactor, self.pool, func, *args)

    def _message(self, e: BaseException) -> str:
        """The backend's message, one line, no secrets, no parameters."""
        orig = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
        message = str(orig)
        if isinstance(e, SQLAlchemyError) and orig is e:
            message = message.split("\n[SQL:", 1)[0]
        if self._secret:
            message = message.replace(self._secret, "<hidden>")
        return "; ".join(line.strip() for line in message.splitlines() if line.strip())

    def fetch(self, query: Query, values: dict[str, str], limit: int | None = 2) -> list[Row]:
        """Run ``query`` (blocking: call in the pool); up to ``limit`` rows
        as dicts in column order.  Raises SqlQueryError."""
        try:
            with self.engine.connect() as conn:
                result = conn.execute(text(query.sql), query.bind(values))
                keys = list(result.keys())
                rows = result.fetchmany(limit) if limit else result.fetchall()
                result.close()
        except (SQLAlchemyError, OSError) as e:
            raise SqlQueryError(self._message(e)) from None
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # -- shutdown -------------------------------------------------------------

    def _shutdown(self) -> None:
        """Reactor shutdown: drop connections, stop the threads."""
        if self.closed:
            return
        self.closed = True
        self._shared.pop(os.path.abspath(self.config.path), None)
        self.engine.dispose()
        self.pool.stop()

    def release(self) -> defer.Deferred:
        """One user is done; the last one closes the pool and engine."""
        self.users -= 1
        if self.users > 0 or self.closed:
            return defer.succeed(None)
        d = self.run(self.engine.dispose)
        d.addErrback(lambda f: log.failure("sql: disposing the engine failed", f))

        def stop(_: object) -> None:
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError, TypeError):
                pass
            self._shutdown()

        d.addCallback(stop)
        return d


class _SqlDb:
    """Common part of the passdb and userdb."""

    driver = "sql"

    def __init__(self, args: str, reactor: Any = None):
        path = args.strip()
        if not path:
            raise ValueError("sql: args must name a dovecot-sql.conf.ext file")
        self.conn = SqlConnection.for_file(path, reactor)
        self._closed = False

    @property
    def config(self) -> SqlConfig:
        return self.conn.config

    def close(self) -> defer.Deferred:
        """Release the shared connection (tests; authd relies on shutdown)."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        return self.conn.release()


@implementer(IPassdb)
class SqlPassdb(_SqlDb):
    """``passdb { driver = sql  args = FILE }``: ``password_query``."""

    def _lookup(self, user: str, values: dict[str, str]) -> tuple[Row | None, PassdbResult | None]:
        """(row, None) or (None, a final result); blocking."""
        try:
            rows = self.conn.fetch(self.conn.password_query, values)
        except SqlQueryError as e:
            return None, PassdbResult(
                PassdbStatus.INTERNAL_FAILURE, error=f"Password query failed: {e}"
            )
        if not rows:
            return None, PassdbResult(PassdbStatus.USER_UNKNOWN)
        if len(rows) > 1:
            return None, PassdbResult(
                PassdbStatus.INTERNAL_FAILURE,
                error="Password query returned multiple matches",
            )
        return rows[0], None

    def _fields(self, user: str, row: Row) -> tuple[str | None, bool, dict[str, str]]:
        """(stored password, whether a password column exists, extra fields)."""
        stored: str | None = None
        has_password = False
        extra: dict[str, str] = {}
        for key, value in row.items():
            if key in ("password", "password_noscheme"):
                has_password = True
                if value is not None and _text(value):
                    stored = _text(value)
                    if key == "password_noscheme":
                        stored = "{" + self.config.default_pass_scheme + "}" + stored
            elif key and value is not None and key not in ("user", "username", "domain"):
                extra[key] = _text(value)
        renamed = rename_user(user, row)
        if renamed != user:
            extra["user"] = renamed
        return stored, has_password, extra

    def _verify(self, user: str, password: str, values: dict[str, str]) -> PassdbResult:
        row, final = self._lookup(user, values)
        if final is not None:
            return final
        assert row is not None
        stored, has_password, extra = self._fields(user, row)
        if "nopassword" in extra:
            return PassdbResult(PassdbStatus.OK, extra)
        if not has_password:
            return PassdbResult(
                PassdbStatus.INTERNAL_FAILURE,
                extra,
                error="Password query must return a field named 'password'",
            )
        if stored is None:
            return PassdbResult(
                PassdbStatus.PASSWORD_MISMATCH,
                extra,
                error="Empty password returned without nopassword",
            )
        try:
            ok = schemes.verify(password, stored, self.config.default_pass_scheme)
        except schemes.SchemeError as e:
            return PassdbResult(
                PassdbStatus.INTERNAL_FAILURE, extra, error=f"Invalid password in passdb: {e}"
            )
        return PassdbResult(PassdbStatus.OK if ok else PassdbStatus.PASSWORD_MISMATCH, extra)

    def verify_plain(self, user: str, password: str, request: AuthRequest) -> defer.Deferred:
        return self.conn.run(self._verify, user, password, _request_values(user, request, password))

    def _credentials(self, user: str, scheme: str, values: dict[str, str]) -> PassdbResult:
        row, final = self._lookup(user, values)
        if final is not None:
            return final
        assert row is not None
        stored, _, extra = self._fields(user, row)
        if stored is None:
            return PassdbResult(
                PassdbStatus.SCHEME_NOT_AVAILABLE, extra, error="no password in passdb"
            )
        return credentials_in(stored, scheme, self.config.default_pass_scheme, extra)

    def lookup_credentials(self, user: str, scheme: str, request: AuthRequest) -> defer.Deferred:
        return self.conn.run(self._credentials, user, scheme, _request_values(user, request))


@implementer(IUserdb)
class SqlUserdb(_SqlDb):
    """``userdb { driver = sql  args = FILE }``: ``user_query`` and
    ``iterate_query``."""

    def _lookup(self, user: str, values: dict[str, str]) -> dict[str, str] | None:
        try:
            rows = self.conn.fetch(self.conn.user_query, values)
        except SqlQueryError as e:
            raise AuthBackendError(f"User query failed: {e}") from None
        if not rows:
            return None
        if len(rows) > 1:
            raise AuthBackendError("User query returned multiple matches")
        row = rows[0]
        fields = {
            key: _text(value)
            for key, value in row.items()
            if key and value is not None and key not in ("user", "username", "domain")
        }
        if any(row.get(k) is not None for k in ("user", "username", "domain")):
            fields["user"] = rename_user(user, row)
        return fields

    def lookup(self, user: str, request: AuthRequest) -> defer.Deferred:
        return self.conn.run(self._lookup, user, _request_values(user, request))

    def _iterate(self) -> list[str]:
        try:
            rows = self.conn.fetch(self.conn.iterate_query, {}, limit=None)
        except SqlQueryError as e:
            raise AuthBackendError(f"Iterate query failed: {e}") from None
        users: list[str] = []
        for row in rows:
            if row.get("user") is not None:
                users.append(_text(row["user"]))
            elif row.get("username") is not None:
                domain = row.get("domain")
                name = _text(row["username"])
                users.append(f"{name}@{_text(domain)}" if domain not in (None, "") else name)
            elif "user" not in row and "username" not in row:
                raise AuthBackendError("Iterate query didn't return 'user' or 'username' field")
        return users

    def iterate(self) -> defer.Deferred:
        """Fire with every user name (``iterate_query``), for doveadm-style
        tools; errback with AuthBackendError on database trouble."""
        return self.conn.run(self._iterate)


def _register() -> None:
    from authd.drivers import register_passdb, register_userdb

    register_passdb("sql", SqlPassdb)
    register_userdb("sql", SqlUserdb)


_register()
