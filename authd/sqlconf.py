"""Dovecot 2.3's ``dovecot-sql.conf.ext``: parse it, translate ``connect``,
and turn its %-variable query templates into bound-parameter SQL.

The file format is Dovecot's old settings parser, unchanged: ``key = value``
lines, ``#`` comments outside quotes, a trailing backslash continues the
value on the next line (joined with one space, the next line's indentation
dropped), a value wholly in quotes is unquoted, ``!include``/``!include_try``.
An indented line without a preceding backslash is an error, as in Dovecot.

``connect`` is Dovecot's ``host=… port=… dbname=… user=… password=…`` (plus
libpq options such as ``sslmode`` for pgsql, the mysql driver's ``ssl_*``
options, and ``maxconns``, the connection pool size), a file path for
sqlite, or a plain SQLAlchemy URL.

Trust: the file is root's and trusted (it holds the database password,
which never appears in errors or logs).  The values expanded into queries
come from clients and are never spliced into SQL: every ``'%u'``-style
quoted literal and every bare ``%u`` becomes a bound parameter.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from sqlalchemy.engine import URL, make_url

from authd.settings import expand
from pydovecot.config.parser import strip_comment

DRIVERS = {"pgsql", "mysql", "sqlite"}

#: Keys of dovecot-sql.conf.ext and Dovecot 2.3's defaults.
DEFAULTS: dict[str, str] = {
    "driver": "",
    "connect": "",
    "password_query": (
        "SELECT username, domain, password FROM users WHERE username = '%n' AND domain = '%d'"
    ),
    "user_query": "SELECT home, uid, gid FROM users WHERE username = '%n' AND domain = '%d'",
    "update_query": "UPDATE users SET password = '%w' WHERE username = '%n' AND domain = '%d'",
    "iterate_query": "SELECT username, domain FROM users",
    "default_pass_scheme": "MD5",
    "userdb_warning_disable": "no",
}

DEFAULT_MAXCONNS = 5
DEFAULT_CONNECT_TIMEOUT = 5

#: Dovecot connect keys → SQLAlchemy URL parts; other keys become query options.
_URL_KEYS = {"host", "port", "dbname", "user", "password"}
#: libpq's spelling of some keys differs from the mysql driver's.
_PG_ALIASES = {"hostaddr": "host"}
#: Dovecot mysql driver options → pymysql connect() arguments.
_MYSQL_OPTIONS = {
    "ssl_ca": "ssl_ca",
    "ssl_ca_path": "ssl_capath",
    "ssl_cert": "ssl_cert",
    "ssl_key": "ssl_key",
    "ssl_cipher": "ssl_cipher",
    "ssl_verify_server_cert": "ssl_check_hostname",
    "connect_timeout": "connect_timeout",
    "read_timeout": "read_timeout",
    "write_timeout": "write_timeout",
    "character_set": "charset",
    "option_file": "read_default_file",
    "option_group": "read_default_group",
}


class SqlConfigError(ValueError):
    """The file is malformed; the message names file and line."""


@dataclass
class SqlConfig:
    """One dovecot-sql.conf.ext, parsed."""

    path: str
    driver: str
    connect: str
    password_query: str = DEFAULTS["password_query"]
    user_query: str = DEFAULTS["user_query"]
    update_query: str = DEFAULTS["update_query"]
    iterate_query: str = DEFAULTS["iterate_query"]
    default_pass_scheme: str = DEFAULTS["default_pass_scheme"]
    #: Where each key was set (``file:line``) for later error messages.
    where: dict[str, str] = field(default_factory=dict)

    def url(self) -> URL:
        return connect_url(self.driver, self.connect)

    def maxconns(self) -> int:
        return connect_maxconns(self.driver, self.connect)


# -- the file ----------------------------------------------------------------


def _unescape(value: str) -> str:
    """Dovecot's str_unescape: ``\\x`` → ``x``."""
    return re.sub(r"\\(.)", r"\1", value)


def read_settings(path: str, _depth: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """The ``key = value`` pairs of a file (and where each was set)."""
    if _depth > 10:
        raise SqlConfigError(f"{path}: !include nested too deeply")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SqlConfigError(f"{path}: {e.strerror or e}") from None
    values: dict[str, str] = {}
    where: dict[str, str] = {}
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(lines, 1):
        line = strip_comment(raw.strip()).rstrip()
        if not line:
            continue  # blank and comment lines, even inside a continuation
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].rstrip())
            continue
        if pending:
            line = " ".join([*pending, line])
            pending = []
        here = f"{path}:{start}"
        key, sep, value = line.partition("=")
        key = key.strip()
        if key.startswith("!include"):
            word, _, target = line.partition(" ")
            if word not in ("!include", "!include_try") or not target.strip():
                raise SqlConfigError(f"{here}: invalid {word}")
            target = target.strip().strip("\"'")
            if not os.path.isabs(target):
                target = os.path.join(os.path.dirname(path), target)
            if word == "!include_try" and not os.path.exists(target):
                continue
            more, more_where = read_settings(target, _depth + 1)
            values.update(more)
            where.update(more_where)
            continue
        if not sep or not key or " " in key or "\t" in key:
            hint = ""
            if raw[:1].isspace():
                hint = " (continue a value on the next line with a trailing backslash)"
            raise SqlConfigError(f"{here}: expecting 'key = value'{hint}")
        if key not in DEFAULTS:
            raise SqlConfigError(f"{here}: unknown setting '{key}'")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = _unescape(value[1:-1])
        values[key] = value
        where[key] = here
    if pending:
        raise SqlConfigError(f"{path}:{start}: file ends inside a continued value")
    return values, where


def parse_file(path: str) -> SqlConfig:
    """Read and check a dovecot-sql.conf.ext."""
    values, where = read_settings(path)
    driver = values.get("driver", "")
    if not driver:
        raise SqlConfigError(f"{path}: driver not set")
    if driver not in DRIVERS:
        raise SqlConfigError(
            f"{where['driver']}: unknown driver '{driver}' (use pgsql, mysql or sqlite)"
        )
    if not values.get("connect"):
        raise SqlConfigError(f"{path}: connect not set")
    known = {k: v for k, v in values.items() if k in SqlConfig.__dataclass_fields__}
    config = SqlConfig(path=path, **known, where=where)
    try:
        config.url()
    except ValueError as e:
        raise SqlConfigError(f"{where['connect']}: {e}") from None
    for key in ("password_query", "user_query", "iterate_query"):
        try:
            parse_query(getattr(config, key), driver)
        except ValueError as e:
            raise SqlConfigError(f"{where.get(key, path)}: {key}: {e}") from None
    return config


# -- connect -----------------------------------------------------------------


def split_connect(connect: str) -> list[tuple[str, str]]:
    """``host=a password='x y'`` → pairs; values may be single-quoted with
    backslash escapes (libpq's syntax)."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(connect)
    while i < n:
        if connect[i].isspace():
            i += 1
            continue
        eq = connect.find("=", i)
        if eq < 0:
            raise ValueError(f"connect: expecting key=value at '{connect[i:].split()[0]}'")
        key = connect[i:eq].strip()
        if not key or any(c.isspace() for c in key):
            raise ValueError("connect: expecting key=value")
        i = eq + 1
        while i < n and connect[i] in " \t":
            i += 1
        value: list[str] = []
        if i < n and connect[i] == "'":
            i += 1
            while i < n and connect[i] != "'":
                if connect[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(connect[i])
                i += 1
            if i >= n:
                raise ValueError(f"connect: unterminated quote in value of {key}")
            i += 1
        else:
            while i < n and not connect[i].isspace():
                value.append(connect[i])
                i += 1
        pairs.append((key, "".join(value)))
    return pairs


def _is_url(connect: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", connect.strip(), re.I))


def connect_url(driver: str, connect: str) -> URL:
    """The SQLAlchemy URL for Dovecot's ``connect`` (or a plain URL)."""
    connect = connect.strip()
    if _is_url(connect):
        try:
            url = make_url(connect)
        except Exception as e:  # ArgumentError
            raise ValueError(f"invalid URL: {e}") from None
        url = url.difference_update_query(["maxconns"])
        return url
    if driver == "sqlite":
        return URL.create("sqlite", database=connect)
    if driver not in ("pgsql", "mysql"):
        raise ValueError(f"unknown driver '{driver}'")
    parts: dict[str, str] = {}
    query: dict[str, str | list[str]] = {}
    for key, value in split_connect(connect):
        key = _PG_ALIASES.get(key, key) if driver == "pgsql" else key
        if key == "maxconns":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"connect: invalid maxconns '{value}'")
            continue
        if key in _URL_KEYS:
            if key == "host" and "host" in parts:
                continue  # Dovecot round-robins several hosts; we use the first
            parts[key] = value
        elif driver == "mysql":
            if key not in _MYSQL_OPTIONS and key != "client_flags":
                raise ValueError(f"connect: unknown mysql option '{key}'")
            if key == "client_flags":
                query["client_flag"] = value
            else:
                query[_MYSQL_OPTIONS[key]] = value
        else:
            query[key] = value  # libpq accepts its own options
    port = parts.get("port")
    if port is not None and not port.isdigit():
        raise ValueError(f"connect: invalid port '{port}'")
    host = parts.get("host")
    if driver == "mysql" and host and host.startswith("/"):
        query["unix_socket"] = host  # a socket path, as Dovecot allows
        host = "localhost"
    query.setdefault("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT))
    return URL.create(
        "postgresql+psycopg" if driver == "pgsql" else "mysql+pymysql",
        username=parts.get("user") or None,
        password=parts.get("password") or None,
        host=host or None,
        port=int(port) if port else None,
        database=parts.get("dbname") or None,
        query=query,
    )


def connect_maxconns(driver: str, connect: str) -> int:
    """Dovecot's ``maxconns`` (connections, and so worker threads)."""
    connect = connect.strip()
    if _is_url(connect):
        value = make_url(connect).query.get("maxconns")
        value = value[0] if isinstance(value, tuple) else value
    elif driver == "sqlite":
        return 1 if connect == ":memory:" else DEFAULT_MAXCONNS
    else:
        value = dict(split_connect(connect)).get("maxconns")
    return int(value) if value and value.isdigit() and int(value) > 0 else DEFAULT_MAXCONNS


# -- query templates -----------------------------------------------------------

_VAR_RE = re.compile(
    r"%-?0?\d*(?:\.0?-?\d*)?[LURHNMXEDT]{0,10}(?:\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}|[A-Za-z%])"
)
#: A colon that SQLAlchemy's text() would read as a bind parameter.
_COLON_RE = re.compile(r":(?=[\w$])")


@dataclass(frozen=True)
class Query:
    """A query template as SQL with ``:p0``… and one %-template per param."""

    sql: str
    params: tuple[str, ...]

    def bind(self, values: dict[str, str]) -> dict[str, str]:
        """The parameter values for one request (expanded, never spliced)."""
        return {f"p{i}": expand(t, values) for i, t in enumerate(self.params)}


def _has_variable(text: str) -> bool:
    return "%" in text.replace("%%", "")


def _literal(text: str) -> str:
    """Literal SQL: Dovecot's ``%%`` is ``%``; colons escaped for text()."""
    return _COLON_RE.sub(r"\\:", text.replace("%%", "%"))


def parse_query(template: str, driver: str = "") -> Query:
    """Rewrite a Dovecot query template into bound-parameter SQL.

    A quoted literal that holds %-variables (``'%u'``, ``'%n@%d'``) becomes
    one parameter, quotes removed; a bare variable (``%{uid}``) becomes one
    too.  Raises ValueError for unknown variables or broken quoting.
    """
    sql: list[str] = []
    params: list[str] = []
    i, n = 0, len(template)
    plain_start = 0

    def flush(end: int) -> None:
        sql.append(_literal(template[plain_start:end]))

    def add_param(tmpl: str) -> None:
        expand(tmpl, {"user": "u@d", "w": "", "password": ""})  # validates
        sql.append(f":p{len(params)}")
        params.append(tmpl)

    while i < n:
        c = template[i]
        if template.startswith("/*", i):
            end = template.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated /* comment")
            i = end + 2
        elif c in "'\"":
            j = i + 1
            while j < n:
                if template[j] == c:
                    if j + 1 < n and template[j + 1] == c:  # '' inside ''
                        j += 2
                        continue
                    break
                if template[j] == "\\" and driver == "mysql" and j + 1 < n:
                    j += 2
                    continue
                j += 1
            if j >= n:
                raise ValueError("unterminated quoted string")
            body = template[i + 1 : j]
            if _has_variable(body):
                if c == '"' and driver == "pgsql":
                    raise ValueError(f'variables in a quoted identifier: "{body}"')
                flush(i)
                unquoted = body.replace(c + c, c)
                if driver == "mysql":
                    unquoted = re.sub(r"\\(.)", r"\1", unquoted)
                add_param(unquoted)
                plain_start = j + 1
            i = j + 1
        elif c == "%":
            if template.startswith("%%", i):
                i += 2
                continue
            m = _VAR_RE.match(template, i)
            if m is None:
                raise ValueError(f"invalid variable at '{template[i : i + 12]}'")
            flush(i)
            add_param(m.group(0))
            i = plain_start = m.end()
        else:
            i += 1
    flush(n)
    # ":p0::text" would not be read as a parameter; "(:p0)::text" is.
    rendered = re.sub(r"(:p\d+)(?=:)", r"(\1)", "".join(sql))
    return Query(rendered, tuple(params))
