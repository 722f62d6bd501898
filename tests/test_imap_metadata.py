"""METADATA (RFC 5464): GETMETADATA/SETMETADATA for mailboxes and the server.

The same commands go to Debian's Dovecot 2.3 (``imap_metadata = yes``,
``mail_attribute_dict = file:%h/dovecot-attributes``) and to pydovecot,
and the answers must agree (DEPTH listings compared as sets: Dovecot's
order is its dict's).  Then what Dovecot does not show: limits
(``NO [METADATA MAXSIZE n]``, ``[METADATA TOOMANY]``), all-or-nothing
SETMETADATA, server entries, internal entries, the capability and the
setting, the file read by Dovecot, and the real master with imaplib.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import subprocess
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pydovecot.config import load_config
from pydovecot.imap.session import IMAPSession
from pydovecot.session import SessionContext
from pydovecot.storage.maildir import MaildirStorage
from tests import dovecot_side
from tests.dovecot_side import DOVECOT_IMAP, SideBySide, by_tag, split_responses
from tests.harness import Master, User, privileged
from tests.storage_now import now

ON = {"imap_metadata": "yes"}
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"

#: Commands (after SELECT INBOX) whose answers must match Dovecot's.
SCRIPT = [
    b"GETMETADATA INBOX /private/comment",
    b'SETMETADATA INBOX (/private/comment "hello" /shared/comment {3+}\r\nxyz'
    b' /private/vendor/foo/bar "deep" /private/vendor/foo "mid")',
    b"GETMETADATA INBOX (/private/comment /shared/comment /private/nonexist)",
    b"GETMETADATA (DEPTH infinity) INBOX /private",
    b"GETMETADATA (DEPTH infinity) INBOX (/private /shared)",
    b"GETMETADATA (MAXSIZE 3) INBOX (/private/comment /shared/comment)",
    b"GETMETADATA (MAXSIZE 4 DEPTH infinity) INBOX /private",
    b"GETMETADATA (DEPTH 1) INBOX /private/vendor",
    b"GETMETADATA (DEPTH 1) INBOX /private",
    b"GETMETADATA (DEPTH 0) INBOX /private/vendor/foo",
    b"GETMETADATA (DEPTH 1) INBOX /private/vendor/foo",
    b"GETMETADATA (DEPTH 2) INBOX /private",
    b"GETMETADATA (MAXSIZE 4294967296) INBOX /private/comment",
    b"GETMETADATA (FOO 1) INBOX /private/comment",
    b"GETMETADATA () INBOX /private/comment",
    b"GETMETADATA INBOX",
    b"GETMETADATA INBOX /PRIVATE/COMMENT",
    b"SETMETADATA INBOX (/foo \"x\")",
    b"SETMETADATA INBOX (/private//x \"x\")",
    b"SETMETADATA INBOX (/private/x/ \"x\")",
    b"SETMETADATA INBOX (/private/a*b \"x\")",
    b"SETMETADATA INBOX (/private/a%b \"x\")",
    b"SETMETADATA INBOX /private/comment \"x\"",
    b"SETMETADATA INBOX (/private/x)",
    b"SETMETADATA INBOX (/private/comment ~{3+}\r\na\x00b)",
    b"SETMETADATA INBOX (/private/vendor/vendor.dovecot/pvt/x \"y\")",
    b"GETMETADATA INBOX /private/vendor/vendor.dovecot/pvt/x",
    b"SETMETADATA INBOX (/private/comment \"\")",
    b"GETMETADATA INBOX /private/comment",
    b"SETMETADATA INBOX (/Private/Comment \"case\")",
    b"GETMETADATA INBOX /private/comment",
    b"SETMETADATA INBOX (/private/comment NIL)",
    b"GETMETADATA INBOX /private/comment",
    b"CREATE Sub",
    b"SETMETADATA Sub (/private/comment \"sub\")",
    b"RENAME Sub Sub2",
    b"GETMETADATA Sub2 /private/comment",
    b"GETMETADATA Sub /private/comment",
    b'GETMETADATA "" /private/comment',
    b'SETMETADATA "" (/private/comment "srv")',
    b'GETMETADATA "" /private/comment',
    b"GETMETADATA (DEPTH infinity) INBOX /private",
    b"SETMETADATA INBOX (/private/comment \"\xc3\xa9t\xc3\xa9\")",
    b"GETMETADATA INBOX /private/comment",
    b"SETMETADATA INBOX ()",
    b"GETMETADATA INBOX ()",
]

_METADATA = re.compile(rb"^\* METADATA (\S+|\"[^\"]*\") \((.*)\)\r\n$", re.S)


def entries(body: bytes) -> list[tuple[bytes, bytes | None]]:
    """``e1 {n}\\r\\nv1 e2 NIL …`` → [(e1, v1), (e2, None), …]."""
    out: list[tuple[bytes, bytes | None]] = []
    pos = 0
    while pos < len(body):
        sp = body.index(b" ", pos)
        name = body[pos:sp]
        pos = sp + 1
        if body.startswith(b"NIL", pos):
            out.append((name, None))
            pos += 3
        else:
            m = re.compile(rb"\{(\d+)\}\r\n").match(body, pos)
            assert m, body[pos:pos + 40]
            n = int(m.group(1))
            out.append((name, body[m.end():m.end() + n]))
            pos = m.end() + n
        pos += 1  # the space between pairs (or past the end)
    return out


def normalize(answer: list[bytes]) -> list[object]:
    """Untagged METADATA as (mailbox, sorted entries); the rest as is."""
    norm: list[object] = []
    for resp in answer:
        m = _METADATA.match(resp)
        norm.append((m.group(1), sorted(entries(m.group(2)), key=lambda e: e[0]))
                    if m else resp)
    return norm


class MetadataSide(SideBySide):
    """SideBySide with METADATA switched on for both servers."""

    def _setup(self, messages: list[bytes]) -> None:
        super()._setup(messages)
        with open(self.conf, "a") as f:
            f.write("imap_metadata = yes\nmail_attribute_dict = file:%h/dovecot-attributes\n")

    def ours(self, commands: list[bytes]) -> list[list[bytes]]:
        script, tags = self._script(commands)
        got = by_tag(run_session(self.storage, script + b"ZZ LOGOUT\r\n"), tags)
        return [got[t] for t in tags]


def run_session(storage, script: bytes, settings: dict | None = None) -> bytes:
    """Run ``script`` through an in-process session; its whole output."""
    transport = StringTransport()
    session = IMAPSession(storage, SessionContext("alice", "md", settings=dict(ON if settings is None else settings)))
    session.clock = Clock()
    session.slice = 60.0
    session.makeConnection(transport)
    session.start(None, b"")
    session.dataReceived(script)
    return transport.value()


class DovecotSideBySide(unittest.TestCase):
    def test_same_answers_as_dovecot(self) -> None:
        side = MetadataSide([MESSAGE])
        self.addCleanup(side.cleanup)
        theirs, ours = side.both(SCRIPT)
        for cmd, a, b in zip(SCRIPT, theirs, ours, strict=True):
            self.assertEqual(normalize(a), normalize(b), cmd)

    def test_dovecot_reads_what_we_wrote(self) -> None:
        """Our dovecot-attributes file, read by Dovecot's imap on the same home."""
        dovecot_side.require()
        home = tempfile.mkdtemp(prefix="mdside-")
        self.addCleanup(shutil.rmtree, home, True)
        os.chmod(home, 0o755)
        storage = MaildirStorage("alice", os.path.join(home, "Maildir"), home=home)
        now(storage).create("Sub")
        out = run_session(storage, b'a SETMETADATA INBOX (/private/comment "one" /shared/x/y {3+}\r\ntwo)\r\n'
                                   b'b SETMETADATA Sub (/private/comment "sub")\r\n'
                                   b'c SETMETADATA "" (/private/comment "srv")\r\n')
        self.assertEqual(out.count(b"OK Setmetadata completed."), 3, out)
        subprocess.run(["chown", "-R", "nobody:nogroup", home], check=True)
        conf = os.path.join(home, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"base_dir = {home}/run\nstate_dir = {home}/state\nlog_path = {home}/log\n"
                    f"mail_location = maildir:{home}/Maildir\nmail_uid = nobody\n"
                    "mail_gid = nogroup\nfirst_valid_uid = 1\nfirst_valid_gid = 1\nssl = no\n"
                    "imap_metadata = yes\nmail_attribute_dict = file:%h/dovecot-attributes\n"
                    "namespace inbox {\n inbox = yes\n separator = /\n}\n")
        script = (b"a GETMETADATA (DEPTH infinity) INBOX (/private /shared)\r\n"
                  b"b GETMETADATA Sub /private/comment\r\nc GETMETADATA \"\" /private/comment\r\n"
                  b"z LOGOUT\r\n")
        proc = subprocess.run([DOVECOT_IMAP, "-c", conf], input=script, capture_output=True,
                              env={"USER": "nobody", "HOME": home, "PATH": "/usr/bin:/bin"},
                              timeout=60)
        got = by_tag(proc.stdout, [b"a", b"b", b"c"])
        self.assertEqual(normalize(got[b"a"]), [
            (b"INBOX", [(b"/private/comment", b"one"), (b"/shared/x/y", b"two")]), b"a OK"])
        self.assertEqual(normalize(got[b"b"]), [(b"Sub", [(b"/private/comment", b"sub")]), b"b OK"])
        self.assertEqual(normalize(got[b"c"]), [(b'""', [(b"/private/comment", b"srv")]), b"c OK"])


class Semantics(unittest.TestCase):
    def setUp(self) -> None:
        home = self.mktemp()
        os.makedirs(home)
        self.storage = MaildirStorage("alice", os.path.join(home, "Maildir"), home=home)

    def run_lines(self, *lines: bytes, settings: dict | None = None) -> list[bytes]:
        script = b"".join(b"t%d %s\r\n" % (i, line) for i, line in enumerate(lines))
        return split_responses(run_session(self.storage, script, settings))

    def tagged(self, out: list[bytes], i: int) -> bytes:
        return next(r for r in out if r.startswith(b"t%d " % i)).rstrip(b"\r\n")

    def test_disabled_by_default(self) -> None:
        out = self.run_lines(b"CAPABILITY", b"GETMETADATA INBOX /private/comment",
                             b'SETMETADATA INBOX (/private/comment "x")', settings={})
        self.assertNotIn(b"METADATA", out[0])
        self.assertEqual(self.tagged(out, 1), b"t1 NO [CANNOT] Generic mailbox attributes not enabled.")
        self.assertEqual(self.tagged(out, 2), b"t2 NO [CANNOT] Generic mailbox attributes not enabled.")
        self.assertIsNone(now(self.storage).get_attribute("INBOX", "/private/comment"))

    def test_capability_when_enabled(self) -> None:
        out = self.run_lines(b"CAPABILITY")
        self.assertIn(b" METADATA", out[0])

    def test_value_too_large_and_too_many(self) -> None:
        now(self.storage).configure({"mail_attribute_max_value_size": "10",
                                "mail_attribute_max_entries": "3"})
        out = self.run_lines(
            b'SETMETADATA INBOX (/private/a "0123456789A")',
            b'SETMETADATA INBOX (/private/a "1" /private/b "2" /private/c "3" /private/d "4")',
            b'SETMETADATA INBOX (/private/a "1" /private/b "2" /private/c "3")',
            b'SETMETADATA INBOX (/shared/a "1" /private/d "4")',
            b"GETMETADATA (DEPTH infinity) INBOX (/private /shared)")
        self.assertEqual(self.tagged(out, 0), b"t0 NO [METADATA MAXSIZE 10] Metadata value is "
                                              b"too large (the limit is 10 octets)")
        self.assertTrue(self.tagged(out, 1).startswith(b"t1 NO [METADATA TOOMANY]"))
        self.assertEqual(self.tagged(out, 2), b"t2 OK Setmetadata completed.")
        # all or nothing: /shared/a is not kept although only /private/d was too many
        self.assertTrue(self.tagged(out, 3).startswith(b"t3 NO [METADATA TOOMANY]"))
        listing = next(r for r in out if r.startswith(b"* METADATA"))
        self.assertEqual(entries(_METADATA.match(listing).group(2)), [
            (b"/private/a", b"1"), (b"/private/b", b"2"), (b"/private/c", b"3")])

    def test_server_shared_entry_and_missing_mailbox(self) -> None:
        out = self.run_lines(b'SETMETADATA "" (/shared/comment "the server")',
                             b'GETMETADATA "" /shared/comment',
                             b"GETMETADATA nosuch /private/comment",
                             b'SETMETADATA nosuch (/private/comment "x")',
                             b'SETMETADATA INBOX (/private "x")')
        self.assertEqual(self.tagged(out, 0), b"t0 OK Setmetadata completed.")
        self.assertIn(b'* METADATA "" (/shared/comment {10}\r\nthe server)\r\n', out)
        self.assertTrue(self.tagged(out, 2).startswith(b"t2 NO [NONEXISTENT]"))
        self.assertTrue(self.tagged(out, 3).startswith(b"t3 NO [NONEXISTENT]"))
        self.assertTrue(self.tagged(out, 4).startswith(b"t4 BAD "))
        # the server's entries are not INBOX's
        out = self.run_lines(b"GETMETADATA (DEPTH infinity) INBOX /shared")
        self.assertFalse([r for r in out if r.startswith(b"* METADATA")])

    def test_internal_entries_stay_hidden(self) -> None:
        now(self.storage).set_attribute("INBOX", "/private/vendor/vendor.dovecot/pvt/urlauth", b"k")
        out = self.run_lines(b"GETMETADATA (DEPTH infinity) INBOX /private",
                             b"GETMETADATA INBOX /private/vendor/vendor.dovecot/pvt/urlauth")
        self.assertFalse([r for r in out if r.startswith(b"* METADATA") and b"{1}" in r])
        self.assertIn(b"* METADATA INBOX (/private/vendor/vendor.dovecot/pvt/urlauth NIL)\r\n", out)

    def test_large_literal_value(self) -> None:
        value = b"v" * 20000
        out = self.run_lines(b"SETMETADATA INBOX (/private/big {%d+}\r\n%s)" % (len(value), value),
                             b"GETMETADATA INBOX /private/big")
        self.assertEqual(self.tagged(out, 0), b"t0 OK Setmetadata completed.")
        self.assertIn(b"* METADATA INBOX (/private/big {20000}\r\n" + value + b")\r\n", out)


class ConfigSetting(unittest.TestCase):
    def load(self, text: str):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return load_config(path)

    def test_attribute_dict_values(self) -> None:
        cfg = self.load("imap_metadata = yes\nmail_attribute_dict = file:%h/dovecot-attributes\n")
        self.assertEqual(cfg.settings["imap_metadata"], "yes")
        with self.assertRaises(Exception) as caught:
            self.load("mail_attribute_dict = redis:host=127.0.0.1\n")
        self.assertIn("mail_attribute_dict", str(caught.exception))


class ThroughTheMaster(unittest.TestCase):
    """imaplib against the real master: the setting reaches the mail process."""

    def setUp(self) -> None:
        self.master = Master(users=[User("alice", "secret")], extra_config="imap_metadata = yes\n",
                             **privileged())
        self.addCleanup(self.master.cleanup)
        self.master.start()

    def test_set_and_get(self) -> None:
        imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
        imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
        imap = imaplib.IMAP4("127.0.0.1", self.master.ports["imap"], timeout=20)
        self.addCleanup(lambda: imap.state == "LOGOUT" or imap.shutdown())
        imap.login("alice", "secret")
        typ, caps = imap.capability()
        self.assertIn(b"METADATA", caps[0].split())
        typ, data = imap._simple_command("SETMETADATA", "INBOX", '(/private/comment "from imaplib")')
        self.assertEqual(typ, "OK", data)
        typ, data = imap._simple_command("GETMETADATA", "INBOX", "/private/comment")
        self.assertEqual(typ, "OK", data)
        typ, data = imap._untagged_response(typ, data, "METADATA")
        self.assertIn(b"from imaplib", b"".join(x if isinstance(x, bytes) else b"".join(x) for x in data))
        imap.logout()
        home = os.path.join(self.master.dir, "home", "alice")
        with open(os.path.join(home, "dovecot-attributes"), "rb") as f:
            self.assertIn(b"from imaplib", f.read())

