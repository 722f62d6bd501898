"""SMTP AUTH through a real Postfix against pydovecot's auth-client socket.

Starts the real master with Dovecot's documented Postfix listener
(``service auth { unix_listener <absolute path> { mode = 0660 user =
postfix group = postfix } }``), then a private Postfix instance
(tests.postfix) whose smtpd uses ``smtpd_sasl_type = dovecot`` on that
path, and logs in with swaks.  Needs root, postfix and swaks: skipped
without them, failed under CI=true.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import postfix
from tests.harness import IN_CI, Master, User, ensure_system_user


class PostfixAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = postfix.unavailable()
        if reason:
            if IN_CI:
                self.fail(f"CI must run the Postfix SMTP AUTH test: {reason}")
            raise SkipTest(reason)
        ensure_system_user("pydovecot-null")
        ensure_system_user("pydovecot")
        ensure_system_user("pdvmail")
        self.master = Master(users=[User("alice", "secret"), User("bob", "hunter2")],
                             login_user="pydovecot-null", internal_user="pydovecot",
                             mail_uid="pdvmail")
        self.addCleanup(self.master.cleanup)
        self.socket_path = os.path.join(self.master.dir, "postfix", "private", "auth")
        os.makedirs(os.path.dirname(self.socket_path), mode=0o755)
        self.master.extra_config = (
            "service auth {\n"
            f"  unix_listener {self.socket_path} {{\n"
            "    mode = 0660\n    user = postfix\n    group = postfix\n  }\n}\n")
        self.master.write_config()
        self.master.start()
        self.postfix = postfix.Postfix(self.socket_path)
        self.addCleanup(self.postfix.cleanup)
        self.postfix.start()

    def swaks(self, user: str, password: str, mech: str = "PLAIN"):
        result = self.postfix.swaks(user, password, mech)
        self.output = (f"swaks exit {result.returncode}\n{result.stdout}{result.stderr}\n"
                       f"--- postfix.log\n{self.postfix.log()}\n{self.master.output()}")
        return result

    def test_listener_at_absolute_path(self) -> None:
        st = os.stat(self.socket_path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.assertEqual(pwd.getpwuid(st.st_uid).pw_name, "postfix")
        self.assertEqual(grp.getgrgid(st.st_gid).gr_name, "postfix")
        # The default auth-client socket under base_dir exists too.
        self.assertTrue(os.path.exists(os.path.join(self.master.dir, "run", "auth-client")))

    def test_plain_login_succeeds(self) -> None:
        result = self.swaks("alice", "secret")
        self.assertEqual(result.returncode, 0, self.output)
        self.assertIn("235 ", result.stdout, self.output)

    def test_login_mechanism_succeeds(self) -> None:
        result = self.swaks("bob", "hunter2", mech="LOGIN")
        self.assertEqual(result.returncode, 0, self.output)
        self.assertIn("235 ", result.stdout, self.output)

    def test_wrong_password_is_refused(self) -> None:
        result = self.swaks("alice", "not-the-password")
        self.assertEqual(result.returncode, 28, self.output)  # swaks: AUTH failed
        self.assertIn("535 ", result.stdout, self.output)
        self.master.wait_for(lambda: "Password mismatch" in self.master.log(), 10,
                             "authd's mismatch log line")

    def test_unknown_user_is_refused(self) -> None:
        result = self.swaks("nobody", "secret")
        self.assertEqual(result.returncode, 28, self.output)
        self.assertIn("535 ", result.stdout, self.output)
