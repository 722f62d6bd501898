"""After a mail process's rehearsal nothing Sieve does may import a module
(after the privilege drop it could not): a fresh interpreter rehearses as
pydovecot.mailproc.main does, then forbids imports and delivers through
scripts using every extension, failures and outgoing mail."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(r'''
    import os, sys, tempfile, shutil
    import pydovecot.mailproc.main as main
    from twisted.internet import reactor, defer
    from pydovecot.mailproc.rehearsal import rehearse, SAMPLE
    from pydovecot.sieve.deliver import SieveDelivery
    from pydovecot.sieve.rehearsal import SCRIPT, _Config
    from pydovecot.sieve.validate import ALL_EXTENSIONS
    from pydovecot.storage import open_storage

    main.preload_codecs()

    class Guard:
        def find_spec(self, name, path=None, target=None):
            raise ImportError(f"imported after the rehearsal: {name}")

    @defer.inlineCallbacks
    def go():
        yield rehearse({})
        root = tempfile.mkdtemp()
        storage = open_storage("u", f"maildir:{root}/Maildir", root)
        sys.meta_path.insert(0, Guard())
        names = ", ".join(f'"{e}"' for e in sorted(ALL_EXTENSIONS))
        scripts = [SCRIPT % names, "frobnicate;", 'require "reject"; reject "no";',
                   'require "variables"; set "a" "x"; redirect "${a}";',
                   'require ["vacation"]; vacation :subject "\u00e9t\u00e9" "away";']
        config = _Config({"sendmail_path": "/bin/true"})
        fields = {"home": root, "sieve_extensions": " ".join("+" + e for e in ALL_EXTENSIONS)}
        for n, text in enumerate(scripts):
            with open(os.path.join(root, ".dovecot.sieve"), "w") as f:
                f.write(text)
            message = b"Return-Path: <s%d@example.org>\r\n" % n + SAMPLE.replace(
                b"<rehearsal@", b"<m%d@" % n)
            yield SieveDelivery(config, storage, "u", fields, f"s{n}@example.org",
                                "alice+tag@example.org", "s", "", "lmtp(u)").run(message)
        sys.meta_path.remove(sys.meta_path[0])
        shutil.rmtree(root)
        print("DONE")

    def run():
        d = go()
        d.addErrback(lambda f: print("FAILED", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
''')


class RehearsalCoversSieve(SynchronousTestCase):
    def test_no_import_after_the_rehearsal(self) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT)
        proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, env=env,
                              timeout=120, cwd=ROOT)
        out = proc.stdout.decode() + proc.stderr.decode()
        self.assertIn("DONE", out)
        self.assertNotIn("imported after the rehearsal", out)
        self.assertNotIn("FAILED", out)
