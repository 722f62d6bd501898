"""The storage interfaces are honest (issue 8 part 3).

* ``zope.interface.verify.verifyObject`` passes for every implementation:
  the Maildir storage and a mailbox it opened, the in-memory fakes of
  ``tests.imap_fakes`` and the modseq fakes of ``tests.test_imap_condstore``.
* Every member protocol code uses on a storage object is declared on
  ``IMailStorage`` or ``IMailbox``.  The check is a heuristic over the
  sources of ``pydovecot/imap``, ``pop3``, ``lmtp`` and ``mailproc`` (ast):
  an attribute read or call on a name (or an attribute) called
  ``storage``, ``mailbox``, ``mbox``, ``view`` or ``opened``, on
  ``self._selected()``, and the string constant of a ``getattr`` /
  ``hasattr`` on one of those, counts as a use.  A variable of one of
  those names that holds a mailbox *name* (a str) would show up as
  ``str`` methods; those are ignored.  It cannot see a storage object
  passed under another name, so it is a tripwire, not a proof.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import pathlib

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

import pydovecot
from pydovecot.storage.interfaces import IMailbox, IMailStorage, MailboxNotFound, StorageError
from pydovecot.storage.maildir import MaildirStorage
from pydovecot.storage.mbox import MboxStorage
from tests.imap_fakes import FakeStorage
from tests.remote_storage import SYNCHRONOUS, RemoteMailbox, RemoteStorage
from tests.storage_now import result_now
from tests.test_imap_condstore import ModseqStorage

PROTOCOL_DIRS = ("imap", "pop3", "lmtp", "mailproc")
STORAGE_NAMES = {"storage", "mailbox", "mbox", "view", "opened"}
#: Used today by protocol code but not part of the interface: the
#: special-use and URLAUTH modules still read the Maildir root and keep a
#: key store on the storage; issue 8 moves them to the attribute API
#: (helper R's branch), after which this set must be emptied.
NOT_YET_MIGRATED: set[str] = set()  # every member protocol code uses is declared


def _declared() -> set[str]:
    return set(IMailStorage.names(all=True)) | set(IMailbox.names(all=True))


def _is_storage_expr(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in STORAGE_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in STORAGE_NAMES
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "_selected"
    return False


def storage_uses(root: pathlib.Path) -> dict[str, set[str]]:
    """Member name → ``file:line`` places where protocol code uses it on
    a storage object (by the heuristic in the module docstring)."""
    uses: dict[str, set[str]] = {}
    for sub in PROTOCOL_DIRS:
        for path in sorted((root / sub).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                name = None
                if isinstance(node, ast.Attribute) and _is_storage_expr(node.value):
                    name = node.attr
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                      and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                      and _is_storage_expr(node.args[0])
                      and isinstance(node.args[1], ast.Constant)
                      and isinstance(node.args[1].value, str)):
                    name = node.args[1].value
                if name is not None and not hasattr(str, name):
                    where = f"{path.relative_to(root.parent)}:{node.lineno}"
                    uses.setdefault(name, set()).add(where)
    return uses


def verify(test: unittest.TestCase, iface: type, obj: object) -> None:
    """verifyObject, plus the real signature of each method (a decorated
    method's wrapper takes ``*args``, so verifyObject alone would accept
    any): its parameters are the declared ones, in order."""
    test.assertTrue(verifyObject(iface, obj))
    for name in iface.names(all=True):
        desc = iface[name]
        if not hasattr(desc, "getSignatureInfo"):
            continue
        params = [p for p in inspect.signature(getattr(obj, name)).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        declared = list(desc.getSignatureInfo()["positional"])
        test.assertEqual([p.name for p in params][:len(declared)], declared,
                         f"{type(obj).__name__}.{name}")


class VerifyObjectTests(unittest.TestCase):
    def test_maildir(self) -> None:
        d = self.mktemp()
        storage = MaildirStorage("alice", os.path.join(d, "Maildir"), home=d)
        result_now(storage.append("INBOX", io.BytesIO(b"Subject: x\r\n\r\nbody\r\n")))
        verify(self, IMailStorage, storage)
        box = result_now(storage.open("INBOX"))
        self.addCleanup(box.close)
        verify(self, IMailbox, box)
        ro = result_now(storage.open("INBOX", readonly=True))
        self.addCleanup(ro.close)
        verify(self, IMailbox, ro)

    def test_mbox(self) -> None:
        d = self.mktemp()
        storage = MboxStorage("alice", os.path.join(d, "mail"), home=d)
        result_now(storage.append("INBOX", io.BytesIO(b"Subject: x\r\n\r\nbody\r\n")))
        verify(self, IMailStorage, storage)
        for readonly in (False, True):
            box = result_now(storage.open("INBOX", readonly=readonly))
            self.addCleanup(box.close)
            verify(self, IMailbox, box)

    def test_fakes(self) -> None:
        for cls in (FakeStorage, ModseqStorage):
            storage = cls()
            result_now(storage.append("INBOX", io.BytesIO(b"Subject: x\r\n\r\nbody\r\n")))
            verify(self, IMailStorage, storage)
            box = result_now(storage.open("INBOX"))
            verify(self, IMailbox, box)
            box.close()

    def test_remote(self) -> defer.Deferred:
        """The remote-like proxy (tests.remote_storage), built from the
        interface's names, passes too; its methods answer only later."""
        d = self.mktemp()
        storage = RemoteStorage(MaildirStorage("alice", os.path.join(d, "Maildir"), home=d))
        verify(self, IMailStorage, storage)
        status = storage.status("INBOX")
        self.assertFalse(status.called)
        inner = result_now(storage.target.open("INBOX"))
        self.addCleanup(inner.close)
        box = RemoteMailbox(inner)
        verify(self, IMailbox, box)
        synced = box.sync()
        self.assertFalse(synced.called)
        declared = {n for n in IMailbox.names(all=True) if n not in SYNCHRONOUS
                    and hasattr(IMailbox[n], "getSignatureInfo")}
        self.assertTrue(declared <= set(vars(RemoteMailbox)))
        return defer.gatherResults([status, synced])

    @defer.inlineCallbacks
    def test_rpc(self):
        """The storage RPC client (pydovecot.storage.rpc) over a real AMP
        socketpair to a Maildir storage."""
        from pydovecot.storage.rpc.client import local_pair

        d = self.mktemp()
        storage = local_pair(MaildirStorage("alice", os.path.join(d, "Maildir"), home=d))
        self.addCleanup(storage.disconnect)
        verify(self, IMailStorage, storage)
        box = yield storage.open("INBOX")
        verify(self, IMailbox, box)
        box.close()

    def test_methods_answer_with_deferreds(self) -> None:
        """Every asynchronous method of the Maildir storage and the fakes
        answers with a Deferred, errors included (a failed Deferred, not a
        raise)."""
        d = self.mktemp()
        for storage in (MaildirStorage("alice", os.path.join(d, "Maildir"), home=d),
                        MboxStorage("alice", os.path.join(d, "mail"), home=d),
                        FakeStorage(), ModseqStorage()):
            name = type(storage).__name__
            self.assertIsInstance(storage.status("INBOX"), defer.Deferred, name)
            missing = storage.status("nonexistent")
            self.assertIsInstance(missing, defer.Deferred, name)
            self.failureResultOf(missing, MailboxNotFound)
            self.failureResultOf(storage.open("nonexistent"), MailboxNotFound)
            box = self.successResultOf(storage.open("INBOX"))
            self.assertIsInstance(box.sync(), defer.Deferred, name)
            self.failureResultOf(box.message_file(99), StorageError)
            self.assertIsNone(box.close(), name)  # synchronous by choice

    def test_declared_members_are_documented(self) -> None:
        for iface in (IMailStorage, IMailbox):
            for name in iface.names():
                self.assertTrue(iface[name].getDoc().strip(), f"{iface.__name__}.{name}")


class ProtocolUsesTests(unittest.TestCase):
    def test_every_used_member_is_declared(self) -> None:
        root = pathlib.Path(pydovecot.__file__).parent
        uses = storage_uses(root)
        self.assertIn("status", uses)  # the walk sees something at all
        missing = {name: sorted(places)[:3] for name, places in uses.items()
                   if name not in _declared() and name not in NOT_YET_MIGRATED}
        self.assertEqual(missing, {}, "used on storage objects but not declared")

    def test_heuristic_finds_getattr_probes(self) -> None:
        d = pathlib.Path(self.mktemp()) / "pkg"
        (d / "imap").mkdir(parents=True)
        for sub in PROTOCOL_DIRS[1:]:
            (d / sub).mkdir()
        (d / "imap" / "x.py").write_text(
            "def f(self, mbox, name):\n"
            "    getattr(mbox, 'frobnicate', None)\n"
            "    self.storage.wibble()\n"
            "    self._selected().wobble\n"
            "    mailbox = name\n"
            "    mailbox.endswith('/')\n")
        self.assertEqual(set(storage_uses(d)), {"frobnicate", "wibble", "wobble"})
