"""pydovecot-lda side by side with Debian's dovecot-lda: the same
invocations (as root with -d, the user looked up in a passwd-file userdb,
Dovecot's through its running master's auth-userdb, ours through authd's
drivers) must give the same exit codes and store the same bytes in the
same mailboxes.  Needs root and Dovecot: skips otherwise, fails under
CI=true."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from tests.dovecot_side import require
from tests.harness import ROOT
from tests.test_lmtp_dovecot import DovecotLMTP

DOVECOT_LDA = "/usr/lib/dovecot/dovecot-lda"
MESSAGE = (b"From bob@example.org  Mon Dec  7 10:00:00 2026\n"
           b"From: bob@example.org\nSubject: lda side by side\nMessage-ID: <lsbs@x>\n\n"
           b"body\n.\n")

#: (arguments after -c CONF, stdin)
CASES: list[tuple[list[str], bytes]] = [
    (["-d", "alice", "-f", "bob@example.org"], MESSAGE),
    (["-d", "alice", "-f", "<>", "-a", "alice+x@example.com", "-r", "alice@example.com"],
     MESSAGE[MESSAGE.index(b"\n") + 1:]),
    (["-d", "alice", "-m", "Work"], MESSAGE),
    (["-d", "alice", "-m", "Work", "-o", "lda_mailbox_autocreate=yes"], MESSAGE),
    (["-d", "alice", "-m", "Work"], MESSAGE),
    (["-d", "nobody-here"], MESSAGE),
    (["-f", "bob@example.org"], MESSAGE),
    (["-Z"], b""),
]


def stored(home: str) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for sub in ("new", "cur"):
        for path in glob.glob(os.path.join(home, "Maildir", "**", sub, "*"), recursive=True,
                              include_hidden=True):
            box = os.path.relpath(os.path.dirname(os.path.dirname(path)), home)
            with open(path, "rb") as f:
                out.setdefault(box, []).append(f.read())
    return {k: sorted(v) for k, v in sorted(out.items())}


class LDASideBySideTests(unittest.TestCase):
    timeout = 240

    def test_same_exit_codes_and_stored_bytes(self):
        require()
        if not os.path.exists(DOVECOT_LDA):
            self.fail("dovecot-lda is not installed")
        dovecot = DovecotLMTP(["alice"])
        self.addCleanup(dovecot.cleanup)
        dconf = os.path.join(dovecot.dir, "dovecot.conf")
        ours = tempfile.mkdtemp(prefix="pdv-lda-sbs-")
        self.addCleanup(shutil.rmtree, ours, True)
        os.chmod(ours, 0o755)
        home = os.path.join(ours, "home", "alice")
        os.makedirs(home)
        shutil.chown(home, "nobody", "nogroup")
        with open(os.path.join(ours, "users"), "w") as f:
            f.write(f"alice::65534:65534::{home}::\n")
        conf = os.path.join(ours, "pydovecot.conf")
        with open(conf, "w") as f:
            f.write(f"""base_dir = {ours}/run
mail_location = maildir:~/Maildir
auth_username_format = %Ln
passdb {{
  driver = passwd-file
  args = {ours}/users
}}
userdb {{
  driver = passwd-file
  args = {ours}/users
}}
""")
        env = dict(os.environ, PYTHONPATH=ROOT)
        results = []
        for args, data in CASES:
            theirs = subprocess.run([DOVECOT_LDA, "-c", dconf, *args], input=data,
                                    capture_output=True, timeout=60)
            mine = subprocess.run([sys.executable, "-m", "pydovecot.lda.main", "-c", conf,
                                   *args], input=data, capture_output=True, env=env,
                                  timeout=60)
            results.append((args, theirs.returncode, mine.returncode))
            if args == ["-Z"]:  # the usage (stdout) and getopt's words, word for word
                self.assertEqual(mine.stdout, theirs.stdout)
                self.assertEqual(mine.stderr.split(b": ", 1)[1],
                                 theirs.stderr.split(b": ", 1)[1])
            if args == ["-f", "bob@example.org"]:  # the refusal as root
                self.assertEqual(mine.stderr.splitlines()[-1], theirs.stderr.splitlines()[-1])
        self.assertEqual([r[2] for r in results], [r[1] for r in results], results)
        self.assertEqual([r[1] for r in results], [0, 0, 0, 0, 0, 67, 64, 64])
        self.assertEqual(stored(home), stored(os.path.join(dovecot.home, "alice")))
        self.assertEqual(len(stored(home)["Maildir/.Work"]), 2)
