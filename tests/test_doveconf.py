"""pydoveconf: its modes, its output fed back, and Debian's doveconf as the oracle.

Debian's ``doveconf`` (dovecot-core) reads the same trees: its ``-n`` output
must match pydoveconf's line for line after normalising what Dovecot adds
(header comments, Pigeonhole's managesieve capabilities, empty
``location =``/``prefix =`` it prints for namespaces, quotes), and its output
parsed by pydovecot must give the configuration pydovecot reads from the
original.  With CI=true a missing doveconf fails instead of skipping.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import os
import re
import subprocess
import tempfile

from twisted.trial import unittest

from pydovecot.config import settings as S
from pydovecot.config.cli import main
from pydovecot.config.parser import Config, parse_config
from tests.doveconf_trees import RICH_TREE, copy_debian_tree, debian_installed, write_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI") == "true"


def run(*argv: str) -> tuple[int, str, str]:
    """pydoveconf's exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def doveconf(*argv: str) -> str:
    result = subprocess.run(["doveconf", *argv], capture_output=True, text=True, timeout=60)
    return result.stdout


def normalise(text: str) -> list[str]:
    """doveconf -n lines without what only one side prints."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or line.startswith("managesieve_"):
            continue
        if re.fullmatch(r"\s+[a-z_]+ = ", line):  # doveconf's empty namespace keys
            continue
        lines.append(line.replace('"', ""))
    return lines


def semantic(cfg: Config) -> dict:
    """What a Config means, without where it came from."""
    d = cfg.to_dict()
    for key in ("path", "cwd", "warnings", "refusals", "source_files", "origins", "explicit",
                "raw_services", "settings"):
        d.pop(key)
    d["values"] = {k: cfg.get(k) for k in sorted(S.KNOWN_SETTINGS)}
    for flt in d["filters"]:
        flt.pop("origin")
    for ns in d["namespaces"].values():  # doveconf prints `location = ` and `prefix = `
        for key in [k for k, v in ns.items() if v == ""]:
            del ns[key]
    return d


class _Trees(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pydoveconf-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", self.dir], check=False))
        self.rich = write_tree(os.path.join(self.dir, "rich"), RICH_TREE)

    def debian(self) -> str:
        if not debian_installed():
            if IN_CI:
                self.fail("Debian's dovecot-core (doveconf, /etc/dovecot) is not installed")
            raise unittest.SkipTest("dovecot-core not installed")
        return copy_debian_tree(os.path.join(self.dir, "debian"))

    def trees(self) -> list[str]:
        return [self.rich, self.debian()]

    def feed_back(self, text: str, name: str) -> Config:
        path = os.path.join(os.path.dirname(self.rich), "..", name)
        with open(path, "w") as f:
            f.write(text)
        return parse_config(path, strict=False)


class RoundTripTests(_Trees):
    def test_n_fed_back_gives_the_same_config(self) -> None:
        for tree in self.trees():
            code, out, err = run("-c", tree, "-n", "-P")
            self.assertIn(code, (0, 89), err)
            again = self.feed_back(out, "n.conf")
            self.assertEqual(semantic(again), semantic(parse_config(tree, strict=False)), tree)

    def test_a_fed_back_gives_the_same_config(self) -> None:
        code, out, _err = run("-c", self.rich, "-a", "-P")
        again = self.feed_back(out, "a.conf")
        original = semantic(parse_config(self.rich, strict=False))
        self.assertEqual(semantic(again)["values"], original["values"])
        self.assertEqual(semantic(again)["services"], original["services"])

    def test_secrets_hidden_without_P(self) -> None:
        with open(os.path.join(self.dir, "key.pem"), "w") as f:
            f.write("KEY")
        path = write_tree(os.path.join(self.dir, "s"), {
            "dovecot.conf": f"ssl_key = <{self.dir}/key.pem\nssl_key_password = sesame\n"})
        _code, out, _err = run("-c", path, "-n")
        self.assertIn("ssl_key = # hidden, use -P to show it", out)
        self.assertNotIn("sesame", out)
        _code, out, _err = run("-c", path, "-n", "-P")
        self.assertIn(f"ssl_key = <{self.dir}/key.pem", out)
        self.assertIn("ssl_key_password = sesame", out)


class ModeTests(_Trees):
    def test_h_prints_one_value(self) -> None:
        self.assertEqual(run("-c", self.rich, "-h", "recipient_delimiter")[1], "-\n")
        self.assertEqual(run("-c", self.rich, "-h", "auth_mechanisms")[1], "plain login\n")
        code, _out, err = run("-c", self.rich, "-h", "no_such_setting")
        self.assertEqual(code, 89)
        self.assertIn("Unknown setting: no_such_setting", err)

    def test_f_applies_filters(self) -> None:
        def value(key: str, *filters: str) -> str:
            args = [x for f in filters for x in ("-f", f)]
            return run("-c", self.rich, *args, "-h", key)[1].rstrip("\n")

        self.assertEqual(value("imap_idle_notify_interval"), "1 mins")
        self.assertEqual(value("imap_idle_notify_interval", "protocol=imap"), "3 mins")
        self.assertEqual(value("login_greeting", "protocol=imap"), "not pop3")
        self.assertEqual(value("login_greeting", "protocol=pop3"), "Mail server ready # here")
        self.assertEqual(value("mail_debug", "remote=10.1.2.3"), "yes")
        self.assertEqual(value("mail_debug", "remote=192.168.1.1"), "no")
        self.assertEqual(value("mail_plugins", "protocol=lmtp remote=10.0.0.1"), " notify sieve")
        _code, out, _err = run("-c", self.rich, "-f", "protocol=imap", "-n")
        self.assertIn("imap_idle_notify_interval = 3 mins", out)
        self.assertNotIn("protocol imap {", out)
        self.assertEqual(run("-f", "bogus=1", "-n")[0], 64)

    def test_S_simple_output(self) -> None:
        _code, out, _err = run("-c", self.rich, "-S")
        lines = set(out.splitlines())
        self.assertIn("recipient_delimiter=-", lines)
        self.assertIn("service/imap-login/inet_listener/imap/port=10143", lines)
        self.assertIn("service/imap-login/inet_listener/#1/port=10144", lines)
        self.assertIn("namespace/inbox/mailbox/Sent Messages/special_use=\\Sent", lines)
        self.assertIn("passdb/1/args=my args", lines)
        self.assertIn("plugin/sieve_dir=~/sieve", lines)

    def test_refusals_are_fatal_lines_and_exit_89(self) -> None:
        path = write_tree(os.path.join(self.dir, "q"), {
            "dovecot.conf": "mail_plugins = quota_clone\nmail_cache_fields = date\n"})
        code, out, err = run("-c", path, "-n")
        self.assertEqual(code, 89)
        self.assertIn("mail_plugins = quota_clone", out)  # the dump is still printed
        self.assertIn(f"pydoveconf: Fatal: {path}:1: mail_plugins: quota_clone: refused", err)
        self.assertIn(f"pydoveconf: Warning: {path}:2: setting 'mail_cache_fields'", err)

    def test_default_is_the_embedded_config(self) -> None:
        code, out, err = run("-n")
        self.assertEqual(code, 0, err)
        self.assertIn("pydovecot.conf", out.splitlines()[0])
        self.assertIn("listen = 127.0.0.1", out)

    def test_console_script_declared(self) -> None:
        cp = configparser.ConfigParser()
        cp.read(os.path.join(ROOT, "setup.cfg"))
        scripts = cp["options.entry_points"]["console_scripts"]
        self.assertIn("pydoveconf = pydovecot.config.cli:main", scripts)


class DoveconfOracleTests(_Trees):
    """Debian's doveconf on the same trees."""

    def setUp(self) -> None:
        super().setUp()
        self.debian_tree = self.debian()

    def test_n_output_matches_doveconf(self) -> None:
        for tree in (self.rich, self.debian_tree):
            theirs = normalise(doveconf("-P", "-n", "-c", tree))
            ours = normalise(run("-P", "-n", "-c", tree)[1])
            # doveconf keeps a section's `<file` as written, pydovecot reads it
            ours = [x for x in ours if "my args" not in x]
            theirs = [x for x in theirs if "<args.txt" not in x]
            self.assertTrue(theirs, "doveconf printed nothing")
            self.assertEqual(ours, theirs, tree)

    def test_doveconf_output_reads_as_the_original(self) -> None:
        for tree in (self.rich, self.debian_tree):
            text = doveconf("-P", "-n", "-c", tree)
            text = text.replace("args = <args.txt", "args = my args")
            # doveconf -n omits what equals Dovecot's default: where
            # pydovecot's default differs, say it, as Dovecot would use it
            differing = [k for k, (_t, d) in S.IMPLEMENTED.items()
                         if k in S.DOVECOT_DEFAULTS and S.DOVECOT_DEFAULTS[k] != d
                         and not re.search(rf"^{k} = ", text, re.M)]
            ours = semantic(parse_config(tree, strict=False))
            theirs = semantic(self.feed_back(text, "doveconf.conf"))
            for key in differing:
                ours["values"].pop(key)
                theirs["values"].pop(key)
            for key in S.PIGEONHOLE_DEFAULTS:
                theirs["values"].pop(key)
                ours["values"].pop(key)
            self.assertEqual(theirs, ours, tree)

    def test_dollar_expansion_as_doveconf(self) -> None:
        text = (
            "ssl = no\n"
            "auth_mechanisms = $auth_mechanisms login\n"
            "protocols = $protocols imap\n"
            "hostname = a $hostname\n"
            "login_greeting = $hostname x\n"
            'postmaster_address = "$mail_plugins"\n'
            "mail_plugins = notify\n"
            "protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n"
            "  mail_plugins = $mail_plugins stats\n}\n"
            "remote 10.0.0.1 {\n  mail_plugins = $mail_plugins last_login\n"
            "  protocol imap {\n    mail_plugins = $mail_plugins old_stats\n  }\n}\n"
            "mail_plugins = $mail_plugins mail_log\n"
        )
        path = write_tree(os.path.join(self.dir, "d"), {"dovecot.conf": text})
        theirs = normalise(doveconf("-n", "-c", path))
        ours = normalise(run("-n", "-c", path)[1])
        self.assertEqual(ours, theirs)
