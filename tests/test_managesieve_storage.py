"""Script storage as Pigeonhole keeps it, and ManageSieve's config vocabulary.

:class:`SieveStorage`: names validated and kept inside ``~/sieve``, the
active script a relative symlink, crash-safe writes, quotas, the compiled
cache; the delivery side finds the script activated here.  Config: Debian's
stock tree with dovecot-managesieved (protocols.d/managesieved.protocol,
conf.d/20-managesieve.conf) enables ManageSieve on 4190 without a warning,
and the managesieve_* settings are classified.
"""

from __future__ import annotations

import os

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.config import settings as S
from pydovecot.config.parser import parse_config
from pydovecot.sieve.deliver import SieveDelivery
from pydovecot.sieve.storage import (
    InvalidName,
    ISieveStorage,
    QuotaExceeded,
    ScriptActive,
    ScriptExists,
    ScriptNotFound,
    SieveStorage,
    parse_location,
    valid_name,
)
from tests import harness
from tests.doveconf_trees import copy_debian_tree, debian_installed


class StorageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.storage = SieveStorage.for_user({}, "alice", self.home)
        verifyObject(ISieveStorage, self.storage)

    def test_names(self):
        for good in ("a", "my filter", "ünïcode", "x" * 255, "dovecot.orig"):
            self.assertTrue(valid_name(good), good)
        for bad in ("", ".", "..", "a/b", "x" * 256, "a\x00", "a\nb", "a\x7f", "a\x85",
                    "a\u2028", "\udcff"):
            self.assertFalse(valid_name(bad), repr(bad))
            self.assertRaises(InvalidName, self.storage.path, bad)

    def test_locations(self):
        h = self.home
        self.assertEqual(parse_location("", h, "u"), (h + "/sieve", h + "/.dovecot.sieve"))
        self.assertEqual(parse_location("file:~/s;active=~/act", h, "u"), (h + "/s", h + "/act"))
        self.assertEqual(parse_location("~/.dovecot.sieve", h, "u", "~/scripts"),
                         (h + "/scripts", h + "/.dovecot.sieve"))
        self.assertEqual(parse_location("", "", "u"), ("", ""))  # no home: nothing at "/"

    def test_put_activate_rename_delete(self):
        s = self.storage
        s.put("one", b"keep;\r\n", frozenset({"fileinto"}))
        path = os.path.join(self.home, "sieve", "one.sieve")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertTrue(os.path.exists(os.path.join(self.home, "sieve", "one.pdvbin")))
        self.assertEqual(os.listdir(os.path.join(self.home, "sieve", "tmp")), [])
        s.set_active("one")
        self.assertEqual(os.readlink(os.path.join(self.home, ".dovecot.sieve")),
                         "sieve/one.sieve")
        self.assertEqual(s.list(), [("one", True)])
        self.assertRaises(ScriptActive, s.delete, "one")
        s.put("two", b"stop;")
        self.assertRaises(ScriptExists, s.rename, "one", "two")
        s.rename("one", "three")
        self.assertEqual(s.active_name(), "three")  # the link followed the rename
        self.assertFalse(os.path.exists(os.path.join(self.home, "sieve", "one.pdvbin")))
        self.assertRaises(ScriptNotFound, s.get, "one")
        self.assertTrue(s.set_active(""))
        self.assertFalse(s.set_active(""))
        s.delete("three")
        self.assertEqual(s.list(), [("two", False)])

    def test_quota(self):
        s = SieveStorage.for_user({"sieve_quota_max_scripts": "2", "sieve_quota_max_storage": "20",
                                   "sieve_max_script_size": "15"}, "alice", self.home)
        s.put("a", b"keep;")
        s.put("b", b"keep;")
        with self.assertRaises(QuotaExceeded) as e:
            s.check_space("c", 1)
        self.assertEqual(e.exception.code, "QUOTA/MAXSCRIPTS")
        s.check_space("a", 15)  # replacing a counts its new size only
        with self.assertRaises(QuotaExceeded) as e:
            s.check_space("a", 16)
        self.assertEqual(e.exception.code, "QUOTA/MAXSIZE")
        with self.assertRaises(QuotaExceeded) as e:
            s.put("b", b"#" * 15)
            s.check_space("a", 15)
        self.assertEqual(e.exception.code, "QUOTA/MAXSTORAGE")

    def test_links_and_files_outside_are_not_followed(self):
        os.makedirs(os.path.join(self.home, "sieve"))
        os.symlink("/etc/passwd", os.path.join(self.home, ".dovecot.sieve"))
        self.assertIsNone(self.storage.active_name())
        os.symlink("/etc", os.path.join(self.home, "sieve", "etc.sieve"))
        self.assertEqual(self.storage.names(), [])  # a directory is no script

    def test_delivery_runs_the_activated_script(self):
        self.storage.put("mine", b'require "fileinto";\r\nfileinto "Lists";\r\n')
        self.storage.set_active("mine")
        conf = os.path.join(self.home, "c.conf")
        with open(conf, "w") as f:
            f.write(f"base_dir = {self.home}/run\n")
        delivery = SieveDelivery(parse_config(conf), None, "alice", {"home": self.home},
                                 "bob@example.org", "alice")
        _before, _after, personal = delivery.scripts()
        self.assertEqual(os.path.realpath(personal.path),
                         os.path.join(self.home, "sieve", "mine.sieve"))
        self.assertEqual(personal.name, "mine")


class ConfigTests(unittest.TestCase):
    def test_classification(self):
        for name in ("managesieve_implementation_string", "managesieve_max_line_length",
                     "managesieve_logout_format", "managesieve_notify_capability",
                     "managesieve_sieve_capability"):
            self.assertEqual(S.classify(name), "implemented", name)
        for name in ("managesieve_max_compile_errors", "managesieve_client_workarounds"):
            self.assertEqual(S.classify(name), "warned", name)
        self.assertIn("sieve", S.IMPLEMENTED_PROTOCOLS)
        self.assertIn("managesieve-login", S.IMPLEMENTED_SERVICES)

    def test_protocol_sieve_settings_are_used(self):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        with open(os.path.join(d, "c.conf"), "w") as f:
            f.write(f"base_dir = {d}\nprotocols = imap sieve\nprotocol sieve {{\n"
                    "  managesieve_max_line_length = 100\n}\n"
                    "service managesieve-login {\n  inet_listener sieve {\n    port = 14190\n"
                    "  }\n}\n")
        cfg = parse_config(os.path.join(d, "c.conf"))
        self.assertEqual(cfg.warnings, [])
        self.assertEqual(cfg.protocols, ["imap", "sieve"])
        self.assertEqual(cfg.get("managesieve_max_line_length", protocol="sieve"), "100")
        self.assertEqual(cfg.services["managesieve-login"].inet_listeners["sieve"].port, 14190)
        self.assertIn("managesieve-login", cfg.enabled_services())

    def test_debian_tree_enables_managesieve(self):
        if not debian_installed() or not os.path.exists(
                "/usr/share/dovecot/protocols.d/managesieved.protocol"):
            if harness.IN_CI:
                self.fail("Debian's dovecot-core and dovecot-managesieved are not installed")
            raise unittest.SkipTest("Debian's dovecot-managesieved is not installed")
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        cfg = parse_config(copy_debian_tree(root), strict=False)
        self.assertIn("sieve", cfg.protocols)
        self.assertEqual(cfg.services["managesieve-login"].inet_listeners["sieve"].port, 4190)
        noise = [w for w in cfg.warnings if "sieve" in w.split(": ", 1)[-1].lower()]
        self.assertEqual(noise, [])
