"""No silent ignores: every setting is classified, and "implemented" ones are read.

Walks pydovecot's settings table.  Every Dovecot setting is exactly one of
implemented, refused or warned.  An implemented setting needs a reader: its
name as a string constant (``cfg.get("name")``, ``fields["name"]``) or, for
service and listener settings, as an attribute (``svc.process_limit``) in
code outside pydovecot/config — or, for the few the config package itself
acts on (``CONFIG_READERS``: protocols, listen, mail_plugins, …), in
pydovecot/config/parser.py.  Sieve is implemented by pydovecot/sieve (a
separate branch): until that package exists, ``sieve`` and the sieve*
plugin keys are on the documented allow-list below.
"""

from __future__ import annotations

import ast
import os

from twisted.trial import unittest

from pydovecot.config import settings as S
from pydovecot.config.parser import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Implemented by pydovecot/sieve (merged separately): accepted without a
#: reader while that package is missing, required to have one once it exists.
SIEVE_ALLOW = frozenset({"sieve"})


def _names(paths: list[str]) -> tuple[set[str], set[str]]:
    """String constants and attribute names used in the .py files under paths."""
    strings: set[str] = set()
    attrs: set[str] = set()
    for base in paths:
        files = [base] if base.endswith(".py") else [
            os.path.join(d, f) for d, _dirs, fs in os.walk(base) for f in fs if f.endswith(".py")]
        for path in files:
            if os.sep + os.path.join("pydovecot", "config") + os.sep in path and base != path:
                continue
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    strings.add(node.value)
                elif isinstance(node, ast.Attribute):
                    attrs.add(node.attr)
    return strings, attrs


class ClassificationTests(unittest.TestCase):
    def test_every_setting_is_classified_once(self) -> None:
        for name in S.KNOWN_SETTINGS:
            kinds = [name in S.IMPLEMENTED, name in S.REFUSED, name in S.WARNED]
            self.assertEqual(sum(kinds), 1, f"{name}: {kinds}")
        for name in S.SERVICE_SETTINGS:
            self.assertFalse(name in S.SERVICE_REFUSED and name in S.SERVICE_WARNED, name)

    def test_refused_and_warned_defaults_pass(self) -> None:
        """A tree that spells every refused or warned setting at Dovecot's
        default starts without a Fatal or a warning."""
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        path = os.path.join(d, "dovecot.conf")
        with open(path, "w") as f:
            for name in sorted(set(S.REFUSED) | set(S.WARNED)):
                f.write(f'{name} = "{S.default_of(name)}"\n')
        cfg = parse_config(path)
        self.assertEqual(cfg.warnings, [])

    def test_every_refused_setting_is_fatal_with_file_line(self) -> None:
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        path = os.path.join(d, "dovecot.conf")
        for name in sorted(S.REFUSED):
            value = {"bool": "yes" if S.default_of(name) == "no" else "no", "time": "7 secs",
                     "size": "7 M"}.get(S.type_of(name), "x-non-default")
            with open(path, "w") as f:
                f.write(f"\n{name} = {value}\n")
            cfg = parse_config(path, strict=False)
            self.assertEqual(len(cfg.refusals), 1, name)
            self.assertTrue(cfg.refusals[0].startswith(f"{path}:2: {name} = {value}: refused: "),
                            cfg.refusals[0])


class ReaderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.strings, self.attrs = _names(
            [os.path.join(ROOT, "pydovecot"), os.path.join(ROOT, "authd")])
        self.config_strings, _ = _names([os.path.join(ROOT, "pydovecot", "config", "parser.py")])

    def test_implemented_settings_have_readers(self) -> None:
        missing = []
        for name in S.IMPLEMENTED:
            if name in self.strings:
                continue
            if name in S.CONFIG_READERS and name in self.config_strings:
                continue
            missing.append(name)
        self.assertEqual(missing, [], "implemented settings nobody reads: refuse or warn them")

    def test_config_readers_are_read_by_the_parser(self) -> None:
        for name in S.CONFIG_READERS:
            self.assertIn(name, self.config_strings, name)

    def test_implemented_service_and_listener_settings_have_readers(self) -> None:
        implemented = [n for n in S.SERVICE_SETTINGS
                       if n not in S.SERVICE_REFUSED and n not in S.SERVICE_WARNED]
        implemented += [n for n in S.INET_LISTENER_SETTINGS
                        if n not in S.LISTENER_REFUSED and n not in S.LISTENER_WARNED]
        implemented += list(S.UNIX_LISTENER_SETTINGS)
        # the parser turns `address` into InetListener.addresses
        readers = {"address": "addresses"}
        missing = [n for n in implemented
                   if readers.get(n, n) not in self.attrs and n not in self.strings]
        self.assertEqual(missing, [])

    def test_namespace_and_mailbox_keys_have_readers(self) -> None:
        # type, prefix, location, separator: the parser refuses what pydovecot
        # can't do; inbox and name: the one namespace is the INBOX one.
        checked = {"type", "prefix", "location", "separator", "inbox", "name"}
        self.assertEqual(set(S.NAMESPACE_IMPLEMENTED) - checked, set())
        for name in checked - {"name", "inbox"}:
            self.assertIn(f"namespace {name}", open(
                os.path.join(ROOT, "pydovecot", "config", "parser.py")).read())
        for name in S.MAILBOX_IMPLEMENTED - {"name"}:
            self.assertIn(name, self.strings, name)

    def test_mail_plugins_have_readers(self) -> None:
        sieve = os.path.join(ROOT, "pydovecot", "sieve")
        for name in S.MAIL_PLUGINS_IMPLEMENTED:
            if name in SIEVE_ALLOW and not os.path.isdir(sieve):
                continue  # documented allow-list: implemented on the sieve branch
            strings, _ = _names([sieve]) if name in SIEVE_ALLOW else (self.strings, None)
            self.assertIn(name, strings, f"mail_plugins {name} has no reader")
