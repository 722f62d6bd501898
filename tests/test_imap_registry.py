"""The command table and the feature registry (issue 8): every advertised
capability maps to a registered command or feature, the table carries
the command properties the core acts on, and ENABLE goes through the
feature registry."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial import unittest

from pydovecot.imap import capability, commands, features
from pydovecot.imap.commands import registry
from pydovecot.imap.commands.registry import Flag


def _provider(cap: str) -> str | None:
    """The module behind an advertised capability, or None."""
    feature = features.lookup(cap)
    if feature is None and "=" in cap and cap.split("=", 1)[1].isdigit():
        feature = features.lookup(cap.split("=", 1)[0])  # APPENDLIMIT=n
    if feature is not None:
        return feature.module
    cmd = registry.lookup(cap)
    return cmd.module if cmd is not None else None


class CapabilityTests(unittest.TestCase):
    def test_every_capability_maps_to_a_command_or_feature(self) -> None:
        for settings in ({}, {"imap_literal_minus": "yes"}):
            caps = capability.capability_string(settings).split()
            missing = [c for c in caps if _provider(c) is None]
            self.assertEqual(missing, [], f"unregistered capabilities with {settings}")

    def test_enable_features_are_advertised(self) -> None:
        caps = {c.upper() for c in capability.capability_string({}).split()}
        enableable = [f.name for f in features.features() if f.enable is not None]
        self.assertEqual(sorted(enableable), ["CONDSTORE", "IMAP4rev2", "QRESYNC", "UTF8=ACCEPT"])
        for name in enableable:
            self.assertIn(name.upper(), caps)

    def test_feature_names_are_unique(self) -> None:
        self.assertRaises(ValueError, features.register, "CONDSTORE", __name__)


class TableTests(unittest.TestCase):
    def test_table_is_complete(self) -> None:
        names = {c.name for c in commands.load()}
        for name in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD", "SELECT", "EXAMINE", "LIST",
                     "LSUB", "STATUS", "APPEND", "COPY", "MOVE", "EXPUNGE", "IDLE", "ENABLE",
                     "ID", "NAMESPACE", "NOTIFY", "GENURLAUTH", "URLFETCH", "RESETKEY",
                     "COMPRESS", "CANCELUPDATE", "LOGOUT", "NOOP", "CAPABILITY"):
            self.assertIn(name, names)

    def test_one_module_per_family(self) -> None:
        self.assertEqual(registry.lookup("STORE").module, "pydovecot.imap.commands.store")
        self.assertEqual(registry.lookup("MOVE").module, "pydovecot.imap.commands.copy")
        self.assertEqual(registry.lookup("SORT").module, "pydovecot.imap.commands.search")
        for cmd in registry.table():
            self.assertTrue(cmd.module.startswith("pydovecot.imap.commands."), cmd)

    def test_flags(self) -> None:
        uid = {c.name for c in registry.table() if c.flags & Flag.UID}
        self.assertEqual(uid, {"EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "SORT", "THREAD"})
        no_expunge = {c.name for c in registry.table() if c.flags & Flag.NO_EXPUNGE}
        self.assertEqual(no_expunge, {"FETCH", "STORE", "SEARCH", "SORT", "THREAD"})
        no_sync = {c.name for c in registry.table() if c.flags & Flag.NO_SYNC}
        self.assertEqual(no_sync, {"LOGOUT", "SELECT", "EXAMINE", "CLOSE", "UNSELECT", "IDLE"})
        selected = {c.name for c in registry.table() if c.flags & Flag.SELECTED}
        self.assertEqual(selected, {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH",
                                    "STORE", "COPY", "MOVE", "SORT", "THREAD", "CANCELUPDATE"})
        fetch = registry.lookup("fetch")
        assert fetch is not None
        self.assertFalse(fetch.allows_expunges(False))
        self.assertTrue(fetch.allows_expunges(True))

    def test_register_rejects_clashes_and_bad_names(self) -> None:
        self.assertRaises(ValueError, registry.add_command, "FETCH", lambda *a: b"OK")
        self.assertRaises(ValueError, registry.add_command, "X-Y", lambda *a: b"OK")

    def test_listing(self) -> None:
        out = subprocess.run([sys.executable, "-m", "pydovecot.imap.commands"],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        self.assertRegex(out, r"(?m)^  STORE +SELECTED\|UID\|USES_SEQS\|NO_EXPUNGE +pydovecot\.imap\.commands\.store$")
        self.assertRegex(out, r"(?m)^  CONDSTORE +enable +pydovecot\.imap\.features$")


class AsyncHandlerTests(unittest.TestCase):
    """The core takes a Deferred or a coroutine from any handler, so
    handlers can ``await`` storage calls once those return Deferreds."""

    def test_coroutine_handler(self) -> None:
        from twisted.internet import defer

        from tests.imap_fakes import FakeStorage
        from tests.test_imap_session import Client

        waiting: defer.Deferred[str] = defer.Deferred()

        async def handler(client, tag, args, uid):  # type: ignore[no-untyped-def]
            value = await waiting
            client.send(b"* OK " + value.encode() + b"\r\n")
            return b"OK Async completed."

        registry.add_command("ASYNCX", handler)
        self.addCleanup(registry.remove_command, "ASYNCX")
        c = Client(FakeStorage())
        c.start()
        self.assertEqual(c.send(b"a ASYNCX\r\nb NOOP\r\n"), b"")
        waiting.callback("storage answered")
        self.assertEqual(c.take(), b"* OK storage answered\r\na OK Async completed.\r\n"
                                   b"b OK NOOP completed.\r\n")
