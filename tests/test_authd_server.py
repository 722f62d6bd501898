"""End-to-end tests of authd's AMP servers on real UNIX sockets."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.trial import unittest

from authd.interfaces import AuthRequest
from authd.protocol import AuthContinue, AuthStart, MechList, RedeemCookie, UserLookup
from authd.server import AuthEngine
from authd.settings import AuthSettings, DbSettings
from tests.authd_clients import serve_authd, start_args

USERS = """\
alice:{PLAIN}secret:1000:1001::/home/alice::userdb_mail=maildir:~/Maildir
bob:{PLAIN}builder:::::
"""


ADDRS = {"local_ip": "127.0.0.1", "remote_ip": "127.0.0.1"}


class ServerTests(unittest.TestCase):
    def setUp(self) -> None:
        # Short path: AF_UNIX paths are limited to 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="authd-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.passwd = os.path.join(self.dir, "users")
        with open(self.passwd, "w") as f:
            f.write(USERS)
        self.settings = AuthSettings(
            base_dir=self.dir,
            auth_mechanisms=["plain", "login"],
            auth_username_format="%Ln",
            auth_failure_delay=0.05,
            auth_verbose=True,
            passdbs=[DbSettings("passwd-file", f"scheme=PLAIN {self.passwd}")],
            userdbs=[DbSettings("passwd-file", self.passwd)],
            mail_uid="",
        )
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def serve(self, engine: AuthEngine | None = None):
        self.clients = yield serve_authd(self, self.settings, engine, self.dir)

    def log_text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)

    @defer.inlineCallbacks
    def login(self, initial: bytes | None, **kw):
        """AuthStart; the reply without unset optional keys."""
        if not hasattr(self, "clients"):
            yield self.serve()
        reply = yield self.clients["auth-login"].callRemote(AuthStart, **start_args(initial, **kw))
        return {k: v for k, v in reply.items() if v is not None}

    @defer.inlineCallbacks
    def test_mech_list(self):
        yield self.serve()
        login = self.clients["auth-login"]
        plain = yield login.callRemote(MechList, secured=False)
        self.assertEqual(plain["mechanisms"], [])
        secured = yield login.callRemote(MechList, secured=True)
        self.assertEqual(secured["mechanisms"], ["PLAIN", "LOGIN"])
        self.settings.disable_plaintext_auth = False
        plain = yield login.callRemote(MechList, secured=False)
        self.assertEqual(plain["mechanisms"], ["PLAIN", "LOGIN"])

    @defer.inlineCallbacks
    def test_plaintext_refused_when_not_secured(self):
        reply = yield self.login(b"\0alice\0secret", secured=False)
        self.assertEqual(reply["status"], "fail")

    @defer.inlineCallbacks
    def test_plain_ok_cookie_redeemed_once(self):
        reply = yield self.login(b"\0alice\0secret")
        self.assertEqual(reply["status"], "ok")
        self.assertEqual(reply["user"], "alice")
        self.assertEqual(len(reply["cookie"]), 32)
        master = self.clients["auth-master"]
        redeemed = yield master.callRemote(
            RedeemCookie, cookie=reply["cookie"], login_pid=os.getpid(), **ADDRS
        )
        self.assertEqual(redeemed["user"], "alice")
        fields = json.loads(redeemed["fields"])
        self.assertEqual(
            fields,
            {
                "user": "alice",
                "uid": "1000",
                "gid": "1001",
                "home": "/home/alice",
                "mail": "maildir:~/Maildir",
            },
        )
        yield self.assertFailure(
            master.callRemote(RedeemCookie, cookie=reply["cookie"], login_pid=os.getpid(), **ADDRS),
            KeyError,
        )
        self.assertNotIn("secret", self.log_text())

    @defer.inlineCallbacks
    def test_wrong_pid_refused(self):
        reply = yield self.login(b"\0alice\0secret")
        master = self.clients["auth-master"]
        yield self.assertFailure(
            master.callRemote(
                RedeemCookie, cookie=reply["cookie"], login_pid=os.getpid() + 1, **ADDRS
            ),
            KeyError,
        )
        yield self.assertFailure(
            master.callRemote(RedeemCookie, cookie=b"x" * 32, login_pid=os.getpid(), **ADDRS),
            KeyError,
        )

    @defer.inlineCallbacks
    def test_cookie_bound_to_the_connection(self):
        reply = yield self.login(b"\0alice\0secret")
        master = self.clients["auth-master"]
        yield self.assertFailure(
            master.callRemote(
                RedeemCookie,
                cookie=reply["cookie"],
                login_pid=os.getpid(),
                local_ip="127.0.0.1",
                remote_ip="192.0.2.1",
            ),
            KeyError,
        )

    @defer.inlineCallbacks
    def test_cookie_expires(self):
        clock = task.Clock()
        yield self.serve(AuthEngine(self.settings))
        engine = AuthEngine(self.settings, reactor=clock)
        cookie = engine.cookies.issue("alice", {}, os.getpid(), "", "")
        clock.advance(61)
        self.assertRaises(KeyError, engine.cookies.redeem, cookie, os.getpid())

    @defer.inlineCallbacks
    def test_failures_identical_and_delayed(self):
        start = time.monotonic()
        wrong = yield self.login(b"\0alice\0wrong", id=1)
        unknown = yield self.login(b"\0mallory\0wrong", id=2)
        self.assertGreaterEqual(time.monotonic() - start, 0.1)
        self.assertEqual(wrong, unknown)
        self.assertEqual(
            wrong, {"status": "fail", "reason": "Authentication failed.", "temporary": False}
        )
        text = self.log_text()
        self.assertIn("passwd-file(alice,127.0.0.1,<sess1>): Password mismatch", text)
        self.assertIn("passwd-file(mallory,127.0.0.1,<sess1>): unknown user", text)
        self.assertNotIn("wrong", text)

    @defer.inlineCallbacks
    def test_verbose_passwords(self):
        self.settings.auth_verbose_passwords = "plain"
        yield self.login(b"\0alice\0hunter2")
        self.assertIn("Password mismatch (given password: hunter2)", self.log_text())
        self.settings.auth_verbose_passwords = "sha1:8"
        yield self.login(b"\0alice\0hunter2", id=2)
        self.assertIn("(given password: f3bbbd66)", self.log_text())

    @defer.inlineCallbacks
    def test_username_format(self):
        reply = yield self.login(b"\0Alice@Example.ORG\0secret")
        self.assertEqual((reply["status"], reply["user"]), ("ok", "alice"))

    @defer.inlineCallbacks
    def test_invalid_username_chars(self):
        reply = yield self.login(b"\0ali ce\0secret")
        self.assertEqual(reply["reason"], "Authentication failed.")

    @defer.inlineCallbacks
    def test_login_mechanism(self):
        login = yield self.login(None, mech="LOGIN")
        self.assertEqual(login, {"status": "continue", "challenge": b"Username:"})
        proto = self.clients["auth-login"]
        reply = yield proto.callRemote(AuthContinue, id=1, response=b"alice")
        self.assertEqual(reply["challenge"], b"Password:")
        reply = yield proto.callRemote(AuthContinue, id=1, response=b"secret")
        self.assertEqual(reply["status"], "ok")

    @defer.inlineCallbacks
    def test_exchanges_per_connection_are_bounded(self):
        """A login connection (a compromised login process) can't hold more
        than login_max_exchanges exchanges in flight, pending failure
        delays included; AuthStart beyond that gets the declared LIMIT."""
        from authd.protocol import AuthCancel, TooManyExchanges

        self.settings.login_max_exchanges = 3
        self.settings.auth_failure_delay = 0.5
        for i in (1, 2):
            reply = yield self.login(None, mech="LOGIN", id=i)
            self.assertEqual(reply["status"], "continue")
        failing = self.login(b"\0alice\0wrong", id=3)  # answered after the delay
        yield self.assertFailure(self.login(None, mech="LOGIN", id=4), TooManyExchanges)
        proto = self.clients["auth-login"]
        yield proto.callRemote(AuthCancel, id=1)
        reply = yield self.login(None, mech="LOGIN", id=5)
        self.assertEqual(reply["status"], "continue")
        yield self.assertFailure(self.login(None, mech="LOGIN", id=6), TooManyExchanges)
        self.assertEqual((yield failing)["status"], "fail")
        reply = yield self.login(None, mech="LOGIN", id=7)
        self.assertEqual(reply["status"], "continue")
        self.assertEqual(self.log_text().count("concurrent SASL exchanges"), 2)

    @defer.inlineCallbacks
    def test_malformed_sasl(self):
        reply = yield self.login(b"garbage")
        self.assertEqual(reply["status"], "fail")
        reply = yield self.clients["auth-login"].callRemote(AuthContinue, id=99, response=b"x")
        self.assertEqual(reply["status"], "fail")
        reply = yield self.login(b"\0alice\0secret\0extra", id=3)
        self.assertEqual(reply["status"], "fail")

    @defer.inlineCallbacks
    def test_backend_failure_is_temporary(self):
        os.unlink(self.passwd)
        reply = yield self.login(b"\0alice\0secret")
        self.assertEqual(
            reply,
            {"status": "fail", "reason": "Temporary authentication failure.", "temporary": True},
        )
        self.assertIn(self.passwd, self.log_text())

    @defer.inlineCallbacks
    def test_missing_uid_as_root(self):
        yield self.serve(AuthEngine(self.settings, getuid=lambda: 0))
        reply = yield self.login(b"\0bob\0builder")
        self.assertTrue(reply["temporary"])
        self.assertIn("no uid for bob", self.log_text())

    @defer.inlineCallbacks
    def test_missing_uid_unprivileged_and_mail_uid(self):
        yield self.serve(AuthEngine(self.settings, getuid=lambda: 4242, getgid=lambda: 4343))
        lookup = yield self.clients["auth-master"].callRemote(
            UserLookup, user="bob", service="lmtp"
        )
        self.assertEqual(json.loads(lookup["fields"])["uid"], "4242")
        self.settings.mail_uid, self.settings.mail_gid = "0", "0"
        engine = AuthEngine(self.settings, getuid=lambda: 0)
        result = yield engine.user_lookup("bob", "lmtp")
        self.assertEqual(json.loads(result["fields"])["gid"], "0")

    @defer.inlineCallbacks
    def test_user_lookup(self):
        yield self.serve()
        for name in ("auth-master", "auth-userdb"):
            found = yield self.clients[name].callRemote(UserLookup, user="ALICE", service="lmtp")
            self.assertEqual((found["found"], found["user"]), (True, "alice"))
            self.assertEqual(json.loads(found["fields"])["home"], "/home/alice")
            missing = yield self.clients[name].callRemote(UserLookup, user="zed", service="lmtp")
            self.assertEqual(missing["found"], False)

    @defer.inlineCallbacks
    def test_userdb_socket_is_restricted(self):
        yield self.serve()
        userdb = self.clients["auth-userdb"]
        yield self.assertFailure(
            userdb.callRemote(AuthStart, **start_args(b"\0alice\0secret")), amp.UnhandledCommand
        )
        yield self.assertFailure(
            userdb.callRemote(RedeemCookie, cookie=b"x", login_pid=1, **ADDRS), amp.UnhandledCommand
        )
        yield self.assertFailure(
            self.clients["auth-login"].callRemote(RedeemCookie, cookie=b"x", login_pid=1, **ADDRS),
            amp.UnhandledCommand,
        )


class _AuthdProcess:
    """ProcessProtocol of a standalone authd: collects stderr and fires
    ``ready`` with the socket paths authd reports ("listening on PATH")
    once the last of them is up; ``ended`` with the exit reason."""

    def __init__(self, expected: int):
        from twisted.internet import protocol

        outer = self
        self.expected = expected
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.err = b""
        self.paths: list[str] = []

        class Proto(protocol.ProcessProtocol):
            def errReceived(self, data):
                outer.err += data
                for line in outer.err.decode(errors="replace").splitlines():
                    _, sep, path = line.partition("listening on ")
                    if sep and path not in outer.paths:
                        outer.paths.append(path)
                if len(outer.paths) >= outer.expected and not outer.ready.called:
                    outer.ready.callback(outer.paths)

            def processEnded(self, reason):
                if not outer.ready.called:
                    outer.ready.errback(RuntimeError(
                        "authd ended before listening:\n" + outer.err.decode(errors="replace")))
                outer.ended.callback(reason.value)

        self.protocol = Proto()


class SubprocessTests(unittest.TestCase):
    """``python -m authd -c CONFIG`` as a real process.

    authd reports each socket it listens on; the test connects to what it
    reported, once it reported all of them, instead of polling for a path
    under a fixed retry budget (which a loaded machine can exhaust)."""

    timeout = 30

    def spawn(self, conf: str, expected: int) -> tuple[_AuthdProcess, Any]:
        proc = _AuthdProcess(expected)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        transport = reactor.spawnProcess(
            proc.protocol,
            sys.executable,
            [sys.executable, "-m", "authd", "-c", conf],
            env=dict(
                os.environ,
                PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            ),
            # No cwd change: Twisted can posix_spawn() rather than fork() the
            # trial process, whose thread pool has threads by now.
        )
        return proc, transport

    @defer.inlineCallbacks
    def test_missing_socket_owner_is_fatal_before_listening(self):
        """The old flake's root cause: as root, authd listened on auth-login
        and only then chowned it to default_login_user; where that user did
        not exist yet (a clean CI machine: tests that create it run later)
        getpwnam raised, authd died, and a client that had connected in
        between lost its connection.  Now the owners are resolved first."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("socket owners are only set as root")
        base = tempfile.mkdtemp(prefix="authd-test-")
        self.addCleanup(shutil.rmtree, base, True)
        conf = os.path.join(base, "pydovecot.conf")
        with open(conf, "w") as f:
            f.write(f"base_dir = {base}/run\ndefault_login_user = pdnosuchuser\n"
                    "passdb {\n  driver = static\n  args = nopassword\n}\n")
        proc, _transport = self.spawn(conf, expected=1)
        yield self.assertFailure(proc.ready, RuntimeError)
        reason = yield proc.ended
        self.assertEqual(reason.exitCode, os.EX_CONFIG)
        self.assertFalse(os.path.exists(os.path.join(base, "run", "auth-login")))
        fatal = [line for line in proc.err.decode().splitlines() if "Fatal" in line]
        self.assertEqual(len(fatal), 1, proc.err.decode())
        self.assertIn("pdnosuchuser", fatal[0])
        self.assertNotIn(b"Traceback", proc.err)

    @defer.inlineCallbacks
    def test_standalone(self):
        if os.geteuid() == 0:  # the sockets' owners and authd's own user
            from tests.harness import ensure_system_user

            ensure_system_user("pydovecot-null")
            ensure_system_user("pydovecot")
        base = tempfile.mkdtemp(prefix="authd-test-")
        self.addCleanup(shutil.rmtree, base, True)
        # base is 0700 and root's: as root, authd drops to
        # default_internal_user but still reads the passwd-file it opened.
        with open(os.path.join(base, "users"), "w") as f:
            f.write(f"alice:{{PLAIN}}secret:{os.getuid()}:{os.getgid()}::/tmp::\n")
        conf = os.path.join(base, "pydovecot.conf")
        with open(conf, "w") as f:
            f.write(
                f"base_dir = {base}/run\nauth_mechanisms = plain login\nauth_failure_delay = 0\n"
                "auth_verbose = yes\npassdb {\n  driver = passwd-file\n  args = users\n}\n"
                "userdb {\n  driver = passwd-file\n  args = users\n}\n"
            )
        proc, transport = self.spawn(conf, expected=4)
        try:
            paths = yield proc.ready
            sock = os.path.join(base, "run", "auth-login")
            self.assertIn(sock, paths)
            self.assertEqual(os.stat(sock).st_mode & 0o777, 0o600)
            client = yield connectProtocol(UNIXClientEndpoint(reactor, sock), amp.AMP())
            reply = yield client.callRemote(AuthStart, **start_args(b"\0alice\0secret"))
            self.assertEqual(reply["status"], "ok")
            wrong = yield client.callRemote(AuthStart, **start_args(b"\0alice\0nope", id=2))
            self.assertEqual(wrong["status"], "fail")
            if os.geteuid() == 0:  # it dropped root before serving
                import pwd

                from tests.harness import proc_ids

                entry = pwd.getpwnam("pydovecot")
                self.assertEqual(proc_ids(transport.pid), (entry.pw_uid, entry.pw_gid))
            client.transport.loseConnection()
        finally:
            if transport.pid is not None:
                transport.signalProcess("TERM")
            reason = yield proc.ended
        self.assertEqual(reason.exitCode, 0, proc.err.decode())
        self.assertIn(b"Password mismatch", proc.err)
        self.assertNotIn(b"nope", proc.err)


class StaticUserdbEngineTests(unittest.TestCase):
    """Dovecot's userdb-static user verification, in the engine."""

    def engine(self, passdb: DbSettings, static_args: str = "") -> AuthEngine:
        directory = tempfile.mkdtemp(prefix="authd-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "users")
        with open(path, "w") as f:
            f.write(USERS)
        if passdb.driver == "passwd-file":
            passdb.args = f"scheme=PLAIN {path}"
        settings = AuthSettings(
            auth_failure_delay=0, auth_username_format="%Ln", passdbs=[passdb],
            userdbs=[DbSettings("static", f"uid=1000 gid=1000 home=/h/%n {static_args}")])
        return AuthEngine(settings)

    @defer.inlineCallbacks
    def test_lookups(self):
        engine = self.engine(DbSettings("passwd-file"))
        self.assertEqual((yield engine.user_lookup("nosuch", "lmtp")), {"found": False})
        found = yield engine.user_lookup("bob", "lmtp")
        self.assertEqual(json.loads(found["fields"])["home"], "/h/bob")
        outcome = yield engine.authenticate(AuthRequest(user="", service="imap"), "bob",
                                            "builder")
        self.assertTrue(outcome.ok)
        engine = self.engine(DbSettings("passwd-file"), "allow_all_users=yes")
        self.assertTrue((yield engine.user_lookup("nosuch", "lmtp"))["found"])

    @defer.inlineCallbacks
    def test_passdb_without_lookups_is_a_temporary_failure(self):
        from authd.drivers.pam import PamPassdb

        settings = DbSettings("pam", "")
        engine = self.engine(settings)
        self.assertIsInstance(engine.passdbs[0][0], PamPassdb)
        reply = yield engine.user_lookup("bob", "lmtp")
        self.assertEqual(reply, {"found": False, "temporary": True})
        self.flushLoggedErrors()


class CheckConfigTests(unittest.TestCase):
    def test_missing_modules_are_named_with_the_pip_extra(self):
        from authd import drivers

        directory = tempfile.mkdtemp(prefix="authd-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        conf = os.path.join(directory, "sql.conf.ext")
        with open(conf, "w") as f:
            f.write("driver = mysql\nconnect = host=x\n")
        settings = AuthSettings(passdbs=[DbSettings("sql", conf), DbSettings("passwd-file", "x")],
                                userdbs=[DbSettings("ldap", "x")])
        self.assertEqual(drivers.check_config(settings), [])
        saved = {name: sys.modules.get(name) for name in ("pymysql", "ldap3")}

        def restore():
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module

        self.addCleanup(restore)
        sys.modules.update(pymysql=None, ldap3=None)  # import raises ImportError
        self.assertEqual(drivers.check_config(settings), [
            "passdb sql: Python module 'pymysql' is not installed "
            "(pip install 'pydovecot[backends]')",
            "userdb ldap: Python module 'ldap3' is not installed "
            "(pip install 'pydovecot[backends]')",
        ])
        self.assertRaises(drivers.MissingModule, drivers.create_passdb, DbSettings("sql", conf))
