"""pydovecot-lda under real MDA callers.

- Postfix: a private Postfix delivers to a local user through
  ``mailbox_command = …/pydovecot-lda -c CONF -f "$SENDER" -a "$RECIPIENT"``;
  local(8) runs it as that user (no -d: the invoking user).
- fetchmail: fetches alice's mail from pydovecot's own POP3 (the real
  master) and hands it to ``pydovecot-lda -d bob`` as its ``mda``; run as
  root, the lda looks bob up through the master's auth-userdb socket and
  drops to bob's uid.

local(8) runs the command as the user, who must be able to execute the
interpreter: when ours lives under a 0700 directory (root's pyenv here),
:func:`user_python` gives the test a hard-linked copy outside it.  Needs
root, postfix and fetchmail: skips otherwise, fails under CI=true.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from tests.harness import IN_CI, ROOT, Master, User, ensure_system_user, privileged
from tests.postfix import Postfix, unavailable

FETCHMAIL = shutil.which("fetchmail", path="/usr/bin:/bin")
LOCAL_USER = "pdvlda"


def _reachable_by_others(path: str) -> bool:
    path = os.path.realpath(path)
    while path != "/":
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True


def user_python(case: unittest.TestCase, workdir: str) -> tuple[str, dict[str, str]]:
    """An interpreter other users can run, and the environment it needs."""
    exe = os.path.realpath(sys.executable)
    if _reachable_by_others(exe):
        return exe, {}
    copy = os.path.join(workdir, "python")
    subprocess.run(["cp", "-al", sys.base_prefix, copy], check=True)
    rel = os.path.relpath(exe, sys.base_prefix)
    return os.path.join(copy, rel), {"LD_LIBRARY_PATH": os.path.join(copy, "lib")}


def write_wrapper(path: str, python: str, env: dict[str, str]) -> None:
    """``pydovecot-lda`` as a command (our checkout first on the path)."""
    exports = "".join(f"{k}={v} " for k, v in env.items())
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n{exports}PYTHONPATH={ROOT} exec {python} -m pydovecot.lda.main "
                f'"$@"\n')
    os.chmod(path, 0o755)


class LocalPostfix(Postfix):
    """The test Postfix plus local(8) for mydestination."""

    def write_config(self) -> None:
        super().write_config()
        with open(os.path.join(self.config_dir, "master.cf"), "a") as f:
            f.write("local     unix  -       n       n       -       -       local\n")


class PostfixMailboxCommandTests(unittest.TestCase):
    timeout = 240

    def test_mailbox_command(self):
        reason = unavailable()
        if reason:
            if IN_CI:
                self.fail(reason)
            raise unittest.SkipTest(reason)
        work = tempfile.mkdtemp(prefix="pdv-lda-postfix-")
        self.addCleanup(shutil.rmtree, work, True)
        os.chmod(work, 0o755)
        uid, gid = ensure_system_user(LOCAL_USER, home=f"/var/tmp/{LOCAL_USER}", system=True)
        mail = os.path.join(work, "mail")
        os.makedirs(mail)
        shutil.chown(mail, uid, gid)
        conf = os.path.join(work, "pydovecot.conf")
        with open(conf, "w") as f:
            f.write(f"base_dir = {work}/run\nmail_location = maildir:{mail}/%u/Maildir\n")
        python, env = user_python(self, work)
        wrapper = os.path.join(work, "pydovecot-lda")
        write_wrapper(wrapper, python, env)
        postfix = LocalPostfix("/nonexistent", extra_main_cf=f"""
mydestination = lda.test
smtpd_sasl_auth_enable = no
smtpd_relay_restrictions = permit_mynetworks, reject
mailbox_command = {wrapper} -c {conf} -f "$SENDER" -a "$RECIPIENT"
""")
        self.addCleanup(postfix.cleanup)
        postfix.start()
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
            s.sendmail("bob@example.org", [f"{LOCAL_USER}@lda.test"],
                       b"From: bob@example.org\r\nSubject: via postfix\r\n"
                       b"Message-ID: <pf@x>\r\n\r\nhello\r\n")
        pattern = os.path.join(mail, LOCAL_USER, "Maildir", "new", "*")
        deadline = time.monotonic() + 120
        while not glob.glob(pattern):
            if time.monotonic() > deadline:
                self.fail(f"not delivered:\n{postfix.log()}")
            time.sleep(0.2)
        [path] = glob.glob(pattern)
        st = os.stat(path)
        self.assertEqual((st.st_uid, st.st_gid), (uid, gid))  # written as the user
        with open(path, "rb") as f:
            data = f.read()
        self.assertIn(b"Subject: via postfix", data)
        self.assertIn(f"Delivered-To: {LOCAL_USER}@lda.test".encode(), data)  # Postfix's own
        self.assertTrue(data.rstrip().endswith(b"hello"))
        # the file is there before the LDA exits and local(8) logs the status
        while "status=sent (delivered to command:" not in postfix.log():
            if time.monotonic() > deadline:
                self.fail(f"no status=sent:\n{postfix.log()}")
            time.sleep(0.2)


class FetchmailMdaTests(unittest.TestCase):
    timeout = 240

    def test_fetchmail_mda(self):
        if os.geteuid() != 0 or FETCHMAIL is None:
            reason = "fetchmail is not installed" if FETCHMAIL is None else "needs root"
            if IN_CI:
                self.fail(reason)
            raise unittest.SkipTest(reason)
        master = Master(users=[User("alice", "secret"), User("bob", "hunter2")],
                        **privileged())
        self.addCleanup(master.cleanup)
        master.start()
        with smtplib.LMTP("127.0.0.1", master.ports["lmtp"], timeout=30) as lmtp:
            lmtp.sendmail("carol@example.org", ["alice"],
                          b"From: carol@example.org\r\nSubject: fetched\r\n"
                          b"Message-ID: <fm@x>\r\n\r\nover pop3\r\n")
        work = tempfile.mkdtemp(prefix="pdv-lda-fetchmail-")
        self.addCleanup(shutil.rmtree, work, True)
        wrapper = os.path.join(work, "pydovecot-lda")
        write_wrapper(wrapper, sys.executable, {})
        rc = os.path.join(work, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(f'poll 127.0.0.1 service {master.ports["pop3"]} protocol pop3 '
                    f'auth password no dns\n'
                    f'  user "alice" password "secret" is root here\n'
                    f'  mda "{wrapper} -c {master.config_path} -d bob -f %F"\n'
                    f'  sslproto "" no rewrite\n')
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=work, FETCHMAILHOME=work)
        r = subprocess.run([FETCHMAIL, "-f", rc, "--nodetach", "-v", "--nosyslog"],
                           capture_output=True, text=True, env=env, timeout=120)
        self.assertIn(r.returncode, (0,), r.stdout + r.stderr + master.output()[-3000:])
        bob_new = glob.glob(os.path.join(master.dir, "home", "bob", "Maildir", "new", "*"))
        self.assertEqual(len(bob_new), 1, r.stdout + r.stderr)
        st = os.stat(bob_new[0])
        self.assertEqual(st.st_uid, pwd.getpwnam("pdvmail").pw_uid)
        with open(bob_new[0], "rb") as f:
            data = f.read()
        self.assertIn(b"Subject: fetched", data)
        self.assertIn(b"over pop3", data)
        # fetched and deleted from alice's maildrop
        self.assertEqual(glob.glob(os.path.join(master.dir, "home", "alice", "Maildir", "new",
                                                "*")), [])
