"""Tests of the SQL passdb/userdb and the dovecot-sql.conf.ext parser.

Backends: SQLite (temp file, always), PostgreSQL (127.0.0.1:5432, user
postgres) and MariaDB (127.0.0.1:3306, root).  Each test makes its own
database and drops it afterwards.  An unreachable server skips its tests,
except with CI=true, where it fails them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time

from sqlalchemy import create_engine, text
from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from authd import drivers, schemes
from authd.drivers.sql import SqlPassdb, SqlUserdb
from authd.interfaces import AuthBackendError, AuthRequest, PassdbStatus
from authd.protocol import AuthStart, RedeemCookie
from authd.server import AuthEngine
from authd.settings import AuthSettings, DbSettings
from authd.sqlconf import SqlConfigError, connect_url, parse_file, parse_query
from tests.authd_clients import serve_authd, start_args

IN_CI = os.environ.get("CI") == "true"

PASSWORDS = {
    "alice@example.com": ("secret1", "SHA512-CRYPT", 1000, "/home/alice"),
    "bob@example.com": ("secret2", "BLF-CRYPT", 1001, "/home/bob"),
    "carol@example.org": ("secret3", "PLAIN", 1002, "/home/carol"),
}
INJECTIONS = [
    "alice' OR '1'='1",
    "alice@example.com' OR '1'='1",
    "'; DROP TABLE users; --",
    "x@example.com'; DROP TABLE users; --",
]

_HASHES: dict[str, str] = {}


def hashed(user: str) -> str:
    """The stored password of a test user (generated once per run)."""
    if user not in _HASHES:
        password, scheme, _, _ = PASSWORDS[user]
        _HASHES[user] = schemes.generate(password, scheme)
    return _HASHES[user]


def write(directory: str, name: str, content: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(content)
    return path


def unavailable(what: str, error: Exception) -> None:
    """Skip (or, in CI, fail) because a database server is not reachable."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        raise AssertionError(message + " (CI=true: the server must run)")
    raise unittest.SkipTest(message)


# -- parsing -------------------------------------------------------------------


class ParseTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sqlconf-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def conf(self, content: str) -> str:
        return write(self.dir, "dovecot-sql.conf.ext", content)

    def test_backslash_continuation_comments_quotes(self):
        path = self.conf(
            "# Dovecot SQL\n"
            "driver = mysql\n"
            "connect = host=localhost dbname=mail user=dovecot password=pw # trailing\n"
            "default_pass_scheme = SHA512-CRYPT\n"
            "password_query = \\\n"
            "  SELECT username AS user, password, '#not a comment' AS x \\\n"
            "  # a comment line inside the continuation\n"
            "\n"
            "  FROM users WHERE username = '%n' AND domain = '%d'\n"
            'user_query = "SELECT home FROM users WHERE email = \\"%u\\""\n'
            "iterate_query = SELECT username, domain FROM users\n"
        )
        config = parse_file(path)
        self.assertEqual(config.driver, "mysql")
        self.assertEqual(config.connect, "host=localhost dbname=mail user=dovecot password=pw")
        self.assertEqual(config.default_pass_scheme, "SHA512-CRYPT")
        self.assertEqual(
            config.password_query,
            "SELECT username AS user, password, '#not a comment' AS x "
            "FROM users WHERE username = '%n' AND domain = '%d'",
        )
        self.assertEqual(config.user_query, 'SELECT home FROM users WHERE email = "%u"')
        self.assertEqual(config.where["password_query"], f"{path}:5")

    def test_defaults_are_dovecots(self):
        config = parse_file(self.conf("driver = sqlite\nconnect = /tmp/x.db\n"))
        self.assertEqual(config.default_pass_scheme, "MD5")
        self.assertIn("WHERE username = '%n' AND domain = '%d'", config.password_query)

    def test_include(self):
        write(self.dir, "inc.conf", "connect = /var/lib/auth.db\n")
        config = parse_file(self.conf("driver = sqlite\n!include inc.conf\n!include_try nope\n"))
        self.assertEqual(config.connect, "/var/lib/auth.db")

    def assertConfError(self, content: str, *fragments: str) -> None:
        path = self.conf(content)
        e = self.assertRaises(SqlConfigError, parse_file, path)
        for fragment in fragments:
            self.assertIn(fragment.format(path=path), str(e))

    def test_errors_name_file_and_line(self):
        self.assertConfError(
            "driver = sqlite\nconnect = /x\npasword_query = SELECT 1\n",
            "{path}:3",
            "unknown setting 'pasword_query'",
        )
        self.assertConfError(
            "driver = sqlite\nconnect = /x\npassword_query = SELECT password\n  FROM users\n",
            "{path}:4",
            "trailing backslash",
        )
        self.assertConfError("driver = oracle\nconnect = x\n", "{path}:1", "unknown driver")
        self.assertConfError("connect = /x\n", "driver not set")
        self.assertConfError("driver = sqlite\n", "connect not set")
        self.assertConfError(
            "driver = mysql\nconnect = host=x bogus=1\n", "{path}:2", "unknown mysql option 'bogus'"
        )
        self.assertConfError(
            "driver = sqlite\nconnect = /x\nuser_query = SELECT home FROM u WHERE x = '%q'\n",
            "{path}:3",
            "user_query",
            "%q",
        )
        self.assertConfError(
            "driver = sqlite\nconnect = /x\nuser_query = SELECT 'oops FROM u\n",
            "{path}:3",
            "unterminated",
        )
        self.assertConfError("driver = sqlite\nconnect = /x\npassword_query = \\\n", "ends inside")

    def test_connect_pgsql(self):
        url = connect_url(
            "pgsql",
            "host=db.example port=5433 dbname=mail user=dovecot password='p w\\'x' "
            "sslmode=require maxconns=7",
        )
        self.assertEqual(url.drivername, "postgresql+psycopg")
        self.assertEqual(
            (url.host, url.port, url.database, url.username, url.password),
            ("db.example", 5433, "mail", "dovecot", "p w'x"),
        )
        self.assertEqual(dict(url.query), {"sslmode": "require", "connect_timeout": "5"})
        self.assertNotIn("p w", repr(url))

    def test_connect_mysql(self):
        url = connect_url(
            "mysql",
            "host=/run/mysqld/mysqld.sock dbname=mail user=dovecot password=pw "
            "ssl_ca=/etc/ca.pem connect_timeout=2",
        )
        self.assertEqual(url.drivername, "mysql+pymysql")
        self.assertEqual(url.host, "localhost")
        self.assertEqual(
            dict(url.query),
            {
                "unix_socket": "/run/mysqld/mysqld.sock",
                "ssl_ca": "/etc/ca.pem",
                "connect_timeout": "2",
            },
        )
        url = connect_url("mysql", "host=a host=b user=u")
        self.assertEqual(url.host, "a")

    def test_connect_sqlite_and_url(self):
        self.assertEqual(
            str(connect_url("sqlite", "/var/lib/auth.db")), "sqlite:////var/lib/auth.db"
        )
        url = connect_url("pgsql", "postgresql+psycopg://u:pw@h:5432/mail?maxconns=3")
        self.assertEqual((url.host, url.database, dict(url.query)), ("h", "mail", {}))
        config = parse_file(
            self.conf("driver = pgsql\nconnect = postgresql+psycopg://u@h/mail?maxconns=3\n")
        )
        self.assertEqual(config.maxconns(), 3)
        config = parse_file(self.conf("driver = mysql\nconnect = host=h maxconns=9\n"))
        self.assertEqual(config.maxconns(), 9)
        self.assertNotIn("maxconns", str(config.url()))


class QueryTemplateTests(unittest.TestCase):
    def test_quoted_variables_become_parameters(self):
        q = parse_query("SELECT password FROM users WHERE username = '%n' AND domain = '%d'")
        self.assertEqual(q.sql, "SELECT password FROM users WHERE username = :p0 AND domain = :p1")
        self.assertEqual(q.params, ("%n", "%d"))
        self.assertEqual(q.bind({"user": "a'b@c"}), {"p0": "a'b", "p1": "c"})

    def test_mixed_literals_bare_variables_and_escapes(self):
        q = parse_query(
            "SELECT 'maildir:~/Maildir' AS mail, 'a:b' AS x, '50%%' AS pct, "
            "'it''s %Lu' AS y FROM t WHERE email = '%n@%d' AND id = %{user} "
            "AND d = '%d'::text /* it's */"
        )
        self.assertEqual(
            q.sql,
            "SELECT 'maildir:~/Maildir' AS mail, 'a\\:b' AS x, '50%' AS pct, "
            ":p0 AS y FROM t WHERE email = :p1 AND id = :p2 AND d = (:p3):\\:text /* it's */",
        )
        self.assertEqual(q.params, ("it's %Lu", "%n@%d", "%{user}", "%d"))
        self.assertEqual(
            q.bind({"user": "Bob@x"}), {"p0": "it's bob@x", "p1": "Bob@x", "p2": "Bob@x", "p3": "x"}
        )

    def test_no_value_reaches_the_sql(self):
        q = parse_query("SELECT 1 FROM t WHERE u = '%u' AND p = \"%w\"", "mysql")
        self.assertEqual(q.sql, "SELECT 1 FROM t WHERE u = :p0 AND p = :p1")

    def test_errors(self):
        self.assertRaises(ValueError, parse_query, "SELECT '%u")
        self.assertRaises(ValueError, parse_query, "SELECT x FROM t WHERE u = '%q'")
        self.assertRaises(ValueError, parse_query, 'SELECT x FROM "t_%d"', "pgsql")


# -- backends --------------------------------------------------------------------


class _Backend:
    """Database tests shared by SQLite, PostgreSQL and MariaDB."""

    driver = ""
    #: A password query that takes at least ``slow_seconds``.
    slow_password_query = ""
    slow_seconds = 0.5
    password_query = (
        "SELECT username, domain, password, 'maildir:~/Maildir' AS userdb_mail \\\n"
        "  FROM users WHERE username = '%n' AND domain = '%d'"
    )

    def make_database(self) -> str:
        """Create a database (dropped at cleanup); its Dovecot connect string."""
        raise NotImplementedError

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sql-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.connect = self.make_database()
        engine = create_engine(connect_url(self.driver, self.connect))
        self.addCleanup(engine.dispose)
        self.engine = engine
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE users (username VARCHAR(64) NOT NULL, domain VARCHAR(64),"
                    " password VARCHAR(255), uid INTEGER, gid INTEGER, home VARCHAR(255))"
                )
            )
            rows = [
                {"u": u.split("@")[0], "d": u.split("@")[1], "p": hashed(u), "i": uid, "h": home}
                for u, (_, _, uid, home) in PASSWORDS.items()
            ]
            rows += [{"u": "twice", "d": "example.com", "p": "{PLAIN}x", "i": 9, "h": "/h"}] * 2
            conn.execute(text("INSERT INTO users VALUES (:u, :d, :p, :i, :i, :h)"), rows)
        self.conf = self.write_conf("dovecot-sql.conf.ext", self.password_query)
        self.passdb = SqlPassdb(self.conf)
        self.userdb = SqlUserdb(self.conf)
        self.addCleanup(self.passdb.close)
        self.addCleanup(self.userdb.close)

    def write_conf(self, name: str, password_query: str) -> str:
        return write(
            self.dir,
            name,
            f"driver = {self.driver}\n"
            f"connect = {self.connect}\n"
            "default_pass_scheme = PLAIN\n"
            f"password_query = {password_query}\n"
            "user_query = SELECT home, uid, gid, 'maildir:~/Maildir' AS mail \\\n"
            "  FROM users WHERE username = '%n' AND domain = '%d'\n"
            "iterate_query = SELECT username, domain FROM users ORDER BY username\n",
        )

    def count_rows(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM users")).scalar_one()

    def verify(self, user: str, password: str, passdb: SqlPassdb | None = None) -> defer.Deferred:
        return (passdb or self.passdb).verify_plain(user, password, AuthRequest(user=user))

    @defer.inlineCallbacks
    def test_passwords_ok(self):
        self.assertIs(self.passdb.conn, self.userdb.conn)  # one pool per file
        for user, (password, _, _, _) in PASSWORDS.items():
            result = yield self.verify(user, password)
            self.assertEqual(result.status, PassdbStatus.OK, user)
            self.assertEqual(result.userdb_fields(), {"mail": "maildir:~/Maildir"})
            self.assertNotIn("user", result.extra)
            self.assertNotIn("password", result.extra)

    @defer.inlineCallbacks
    def test_mismatch_unknown_and_several_rows(self):
        result = yield self.verify("alice@example.com", "secret2")
        self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH)
        result = yield self.verify("bob@example.com", "")
        self.assertEqual(result.status, PassdbStatus.PASSWORD_MISMATCH)
        result = yield self.verify("nobody@example.com", "secret1")
        self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN)
        result = yield self.verify("alice@example.org", "secret1")
        self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN)
        result = yield self.verify("twice@example.com", "x")
        self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertIn("multiple", result.error)
        yield self.assertFailure(
            self.userdb.lookup("twice@example.com", AuthRequest(user="twice@example.com")),
            AuthBackendError,
        )

    @defer.inlineCallbacks
    def test_lookup_credentials(self):
        result = yield self.passdb.lookup_credentials(
            "carol@example.org", "PLAIN", AuthRequest(user="carol@example.org")
        )
        self.assertEqual((result.status, result.credentials), (PassdbStatus.OK, "{PLAIN}secret3"))
        result = yield self.passdb.lookup_credentials(
            "alice@example.com", "CRAM-MD5", AuthRequest(user="alice@example.com")
        )
        self.assertEqual(result.status, PassdbStatus.SCHEME_NOT_AVAILABLE)

    @defer.inlineCallbacks
    def test_userdb_fields(self):
        fields = yield self.userdb.lookup("bob@example.com", AuthRequest(user="bob@example.com"))
        self.assertEqual(
            fields, {"home": "/home/bob", "uid": "1001", "gid": "1001", "mail": "maildir:~/Maildir"}
        )
        fields = yield self.userdb.lookup("nobody@example.com", AuthRequest(user="x"))
        self.assertIsNone(fields)

    @defer.inlineCallbacks
    def test_iterate(self):
        users = yield self.userdb.iterate()
        self.assertEqual(
            users,
            [
                "alice@example.com",
                "bob@example.com",
                "carol@example.org",
                "twice@example.com",
                "twice@example.com",
            ],
        )

    @defer.inlineCallbacks
    def test_sql_injection_is_an_unknown_user(self):
        for name in INJECTIONS:
            result = yield self.verify(name, "secret1")
            self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN, name)
            fields = yield self.userdb.lookup(name, AuthRequest(user=name))
            self.assertIsNone(fields, name)
        self.assertEqual(self.count_rows(), 5)

    @defer.inlineCallbacks
    def test_renamed_user(self):
        path = self.write_conf(
            "rename.conf.ext",
            "SELECT username, 'example.org' AS domain, password FROM users "
            "WHERE username = '%Ln' AND domain = 'example.com'",
        )
        passdb = SqlPassdb(path)
        self.addCleanup(passdb.close)
        result = yield self.verify("ALICE@Example.COM", "secret1", passdb)
        self.assertEqual(result.status, PassdbStatus.OK)
        self.assertEqual(result.extra["user"], "alice@example.org")

    @defer.inlineCallbacks
    def test_reactor_not_blocked_by_slow_query(self):
        passdb = SqlPassdb(self.write_conf("slow.conf.ext", self.slow_password_query))
        self.addCleanup(passdb.close)
        ticks: list[float] = []
        loop = task.LoopingCall(lambda: ticks.append(time.monotonic()))
        loop.start(0.01)
        start = time.monotonic()
        try:
            result = yield self.verify("alice@example.com", "secret1", passdb)
        finally:
            loop.stop()
        elapsed = time.monotonic() - start
        self.assertEqual(result.status, PassdbStatus.OK)
        self.assertGreaterEqual(elapsed, self.slow_seconds)
        expected = elapsed / 0.01
        self.assertGreater(len(ticks), expected * 0.4, f"{len(ticks)} ticks in {elapsed:.2f}s")
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        self.assertLess(max(gaps), 0.25)


class SQLiteTests(_Backend, unittest.TestCase):
    driver = "sqlite"
    # No sleep(): a busy recursive query (pysqlite releases the GIL while
    # SQLite works), about 0.5 s here.
    slow_password_query = (
        "SELECT password FROM users, (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
        "SELECT x + 1 FROM c WHERE x < 1000000) SELECT max(x) FROM c) AS slow "
        "WHERE username = '%n' AND domain = '%d'"
    )
    slow_seconds = 0.1

    def make_database(self) -> str:
        return os.path.join(self.dir, "auth.db")

    @defer.inlineCallbacks
    def test_password_checked_by_database_with_nopassword(self):
        # %w travels as a parameter too, even inside a longer literal.
        path = self.write_conf(
            "w.conf.ext",
            "SELECT NULL AS password, 'Y' AS nopassword FROM users "
            "WHERE username = '%n' AND domain = '%d' AND password = '{PLAIN}%w'",
        )
        passdb = SqlPassdb(path)
        self.addCleanup(passdb.close)
        result = yield self.verify("carol@example.org", "secret3", passdb)
        self.assertEqual(result.status, PassdbStatus.OK)
        result = yield self.verify("carol@example.org", "x' OR '1'='1", passdb)
        self.assertEqual(result.status, PassdbStatus.USER_UNKNOWN)

    @defer.inlineCallbacks
    def test_missing_password_column_and_null_fields(self):
        path = self.write_conf(
            "nopw.conf.ext",
            "SELECT NULL AS nologin, home AS userdb_home FROM users WHERE username = '%n'",
        )
        passdb = SqlPassdb(path)
        self.addCleanup(passdb.close)
        result = yield self.verify("alice@example.com", "secret1", passdb)
        self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertIn("'password'", result.error)
        self.assertEqual(result.extra, {"userdb_home": "/home/alice"})
        self.assertFalse(result.nologin)

    @defer.inlineCallbacks
    def test_missing_table_is_internal_failure(self):
        with self.engine.begin() as conn:
            conn.execute(text("DROP TABLE users"))
        result = yield self.verify("alice@example.com", "secret1")
        self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertIn("no such table", result.error)
        yield self.assertFailure(
            self.userdb.lookup("a@b", AuthRequest(user="a@b")), AuthBackendError
        )
        yield self.assertFailure(self.userdb.iterate(), AuthBackendError)

    def test_registered_driver(self):
        passdb = drivers.create_passdb(DbSettings("sql", self.conf))
        userdb = drivers.create_userdb(DbSettings("sql", self.conf))
        self.addCleanup(passdb.close)
        self.addCleanup(userdb.close)
        self.assertIsInstance(passdb, SqlPassdb)
        self.assertIsInstance(userdb, SqlUserdb)
        self.assertRaises(ValueError, drivers.create_passdb, DbSettings("sql", ""))


class PostgreSQLTests(_Backend, unittest.TestCase):
    driver = "pgsql"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
    password_query = (
        "SELECT username, domain, password, 'maildir:~/Maildir' AS userdb_mail \\\n"
        "  FROM users WHERE username = '%n'::text AND domain = '%d'"
    )
    slow_password_query = (
        "SELECT password FROM users, (SELECT pg_sleep(0.5)) AS slow "
        "WHERE username = '%n' AND domain = '%d'"
    )

    def make_database(self) -> str:
        import psycopg

        name = f"pydovecot_test_{secrets.token_hex(6)}"
        try:
            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
        except psycopg.OperationalError as e:
            unavailable("PostgreSQL at 127.0.0.1:5432", e)

        def drop() -> None:
            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

        self.addCleanup(drop)
        return f"host=127.0.0.1 port=5432 dbname={name} user=postgres maxconns=3"


class MariaDBTests(_Backend, unittest.TestCase):
    driver = "mysql"
    slow_password_query = (
        "SELECT password, SLEEP(0.5) AS slept FROM users WHERE username = '%n' AND domain = '%d'"
    )

    def make_database(self) -> str:
        import pymysql

        name = f"pydovecot_test_{secrets.token_hex(6)}"
        admin = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
        try:
            conn = pymysql.connect(connect_timeout=3, **admin)
        except pymysql.err.OperationalError as e:
            unavailable("MariaDB at 127.0.0.1:3306", e)
        with conn:
            conn.cursor().execute(f"CREATE DATABASE {name}")

        def drop() -> None:
            with pymysql.connect(**admin) as conn:
                conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")

        self.addCleanup(drop)
        return f"host=127.0.0.1 port=3306 dbname={name} user=root"


# -- a database that is down -------------------------------------------------------


class DatabaseDownTests(unittest.TestCase):
    """A server that refuses connections: internal failure, temporary for
    the client, the backend's message logged without the password."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sql-down-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def check(self, driver: str, connect: str):
        conf = write(
            self.dir,
            f"{driver}.conf.ext",
            f"driver = {driver}\nconnect = {connect}\n",
        )
        passdb, userdb = SqlPassdb(conf), SqlUserdb(conf)
        self.addCleanup(passdb.close)
        self.addCleanup(userdb.close)
        result = yield passdb.verify_plain("a@b", "userpass", AuthRequest(user="a@b"))
        self.assertEqual(result.status, PassdbStatus.INTERNAL_FAILURE)
        self.assertIn("Password query failed", result.error)
        self.assertNotIn("Sup3rS3cret", result.error)
        self.assertNotIn("userpass", result.error)
        e = yield self.assertFailure(
            userdb.lookup("a@b", AuthRequest(user="a@b")), AuthBackendError
        )
        self.assertNotIn("Sup3rS3cret", str(e))
        settings = AuthSettings(
            auth_failure_delay=0,
            passdbs=[DbSettings("sql", conf)],
            userdbs=[DbSettings("sql", conf)],
        )
        engine = AuthEngine(settings, passdbs=[(passdb, settings.passdbs[0])], userdbs=[])
        outcome = yield engine.authenticate(AuthRequest(user=""), "a@b", "userpass")
        self.assertTrue(outcome.temporary)
        logged = "\n".join(formatEvent(event) for event in self.events)
        self.assertIn("Password query failed", logged)
        self.assertNotIn("Sup3rS3cret", logged)
        self.assertNotIn("userpass", logged)
        return result.error

    @defer.inlineCallbacks
    def test_pgsql_down(self):
        error = yield self.check(
            "pgsql", "host=127.0.0.1 port=1 dbname=x user=u password=Sup3rS3cret"
        )
        self.assertIn("refused", error.lower())

    @defer.inlineCallbacks
    def test_mysql_down(self):
        error = yield self.check(
            "mysql", "host=127.0.0.1 port=1 dbname=x user=u password=Sup3rS3cret"
        )
        self.assertIn("can't connect", error.lower())


# -- end to end through authd's AMP server --------------------------------------------


class AuthServerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="authd-sql-")  # short: AF_UNIX path limit
        self.addCleanup(shutil.rmtree, self.dir, True)
        db = os.path.join(self.dir, "auth.db")
        engine = create_engine(connect_url("sqlite", db))
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE users (username TEXT, domain TEXT, password TEXT,"
                    " uid INTEGER, gid INTEGER, home TEXT)"
                )
            )
            conn.execute(
                text("INSERT INTO users VALUES ('alice', 'example.com', :p, 1000, 1000, :h)"),
                {"p": hashed("alice@example.com"), "h": "/home/alice"},
            )
        engine.dispose()
        conf = write(
            self.dir,
            "dovecot-sql.conf.ext",
            f"driver = sqlite\nconnect = {db}\ndefault_pass_scheme = SHA512-CRYPT\n"
            "password_query = SELECT username, domain, password FROM users \\\n"
            "  WHERE username = '%n' AND domain = '%d'\n"
            "user_query = SELECT home, uid, gid, 'maildir:~/Maildir' AS mail \\\n"
            "  FROM users WHERE username = '%n' AND domain = '%d'\n",
        )
        settings = AuthSettings(
            base_dir=self.dir,
            auth_mechanisms=["plain"],
            auth_username_format="%Lu",
            auth_failure_delay=0.05,
            passdbs=[DbSettings("sql", conf)],
            userdbs=[DbSettings("sql", conf)],
        )
        self.engine = AuthEngine(settings)
        for db_, _ in self.engine.passdbs + self.engine.userdbs:
            self.addCleanup(db_.close)
        self.clients = yield serve_authd(self, settings, self.engine, self.dir)

    def start(self, initial: bytes) -> defer.Deferred:
        return self.clients["auth-login"].callRemote(
            AuthStart, **start_args(initial, session="s1"))

    @defer.inlineCallbacks
    def test_plain_login_and_cookie(self):
        reply = yield self.start(b"\0Alice@Example.com\0secret1")
        self.assertEqual(reply["status"], "ok")
        self.assertEqual(reply["user"], "alice@example.com")
        redeemed = yield self.clients["auth-master"].callRemote(
            RedeemCookie,
            cookie=reply["cookie"],
            login_pid=os.getpid(),
            local_ip="127.0.0.1",
            remote_ip="127.0.0.1",
        )
        self.assertEqual(redeemed["user"], "alice@example.com")
        self.assertEqual(
            json.loads(redeemed["fields"]),
            {
                "user": "alice@example.com",
                "uid": "1000",
                "gid": "1000",
                "home": "/home/alice",
                "mail": "maildir:~/Maildir",
            },
        )

    @defer.inlineCallbacks
    def test_wrong_password_and_injection_fail(self):
        for initial in (b"\0alice@example.com\0wrong", b"\0alice' OR '1'='1\0secret1"):
            reply = yield self.start(initial)
            self.assertEqual(reply["status"], "fail")
            self.assertFalse(reply.get("temporary"))
