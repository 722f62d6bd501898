"""RFC 9208 QUOTA side by side with Debian's Dovecot (imap_quota plugin):
GETQUOTAROOT, GETQUOTA, SETQUOTA and the ``NO [OVERQUOTA]`` of APPEND,
COPY and MOVE, with the same ``plugin { quota … }`` on both sides."""

from __future__ import annotations

import io
import re
import subprocess

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pydovecot.imap.session import IMAPSession
from pydovecot.session import SessionContext
from tests.dovecot_side import DOVECOT_IMAP, SideBySide, _commands, _read_until, split_responses
from tests.storage_now import result_now

MSG = b"From: a@example.org\r\nSubject: %d\r\n\r\n" + b"x" * 1000 + b"\r\n"
PLUGIN = {
    "quota": "count:User quota",
    "quota_rule": "*:storage=5K",
    "quota_rule2": "Trash:storage=+10K",
    "quota_rule3": "*:messages=4",
    "quota_grace": "0",
    "quota_vsizes": "yes",
}


class QuotaSide(SideBySide):
    """SideBySide with the quota and imap_quota plugins on both sides."""

    plugin = PLUGIN

    def _setup(self, messages: list[bytes]) -> None:
        super()._setup([])
        lines = "\n".join(f"  {k} = {v}" for k, v in self.plugin.items())
        with open(self.conf, "a") as f:
            f.write("mail_plugins = $mail_plugins quota\n"
                    "protocol imap {\n  mail_plugins = $mail_plugins imap_quota\n}\n"
                    f"plugin {{\n{lines}\n}}\n")
        appends = [append(m) for m in messages] + [b"CREATE Trash"]
        got = self.raw_dovecot(appends, select=False)
        assert all(b" OK " in g for g in got), got
        for m in messages:
            result_now(self.storage.append("INBOX", io.BytesIO(m)))
        result_now(self.storage.configure(dict(self.plugin)))
        result_now(self.storage.create("Trash"))

    def raw_dovecot(self, commands: list[bytes], select: bool = True) -> list[bytes]:
        env = {"USER": "nobody", "HOME": self.dhome, "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen([DOVECOT_IMAP, "-c", self.conf], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        out = [_read_until(proc.stdout, None)]
        try:
            for cmd in _commands(self._lines(commands, select)):
                proc.stdin.write(cmd)
                proc.stdin.flush()
                out.append(_read_until(proc.stdout, cmd.split(b" ", 1)[0]))
            proc.stdin.close()
        finally:
            proc.wait(timeout=60)
        return _answers(b"".join(out), len(commands))

    def raw_ours(self, commands: list[bytes], settings: dict | None = None) -> list[bytes]:
        transport = StringTransport()
        settings = {"mail_plugins": "quota imap_quota"} if settings is None else settings
        session = IMAPSession(self.storage, SessionContext("alice", "side", settings=settings))
        session.clock = Clock()
        session.slice = 60.0
        session.makeConnection(transport)
        session.start(None, b"")
        session.dataReceived(self._lines(commands))
        return _answers(transport.value(), len(commands))

    @staticmethod
    def _lines(commands: list[bytes], select: bool = True) -> bytes:
        return (b"S SELECT INBOX\r\n" if select else b"") + b"".join(
            b"T%d %s\r\n" % (i, c) for i, c in enumerate(commands)) + b"ZZ LOGOUT\r\n"


_NOISE = re.compile(rb"^\* (\d+ (EXISTS|RECENT|EXPUNGE)|OK|FLAGS|CAPABILITY|PREAUTH|BYE)")
_TIMING = re.compile(rb" \(\d+\.\d+ \+ [0-9.+ ]*secs\)")


def _answers(out: bytes, n: int) -> list[bytes]:
    """Each command's untagged data and its full tagged line (APPENDUID /
    COPYUID codes and timings dropped: UIDVALIDITY differs)."""
    answers: dict[int, list[bytes]] = {}
    pending: list[bytes] = []
    for resp in split_responses(out):
        m = re.match(rb"T(\d+) ", resp)
        if m:
            line = _TIMING.sub(b"", resp.rstrip(b"\r\n")).rstrip(b".")
            line = re.sub(rb" \[(APPENDUID|COPYUID)[^\]]*\]", b"", line)
            answers[int(m.group(1))] = pending + [line]
            pending = []
        elif resp.startswith(b"* ") and not _NOISE.match(resp):
            pending.append(resp.rstrip(b"\r\n"))
    return [b"\n".join(answers.get(i, [b"(none)"])) for i in range(n)]


def append(msg: bytes, box: bytes = b"INBOX") -> bytes:
    return b"APPEND %s {%d+}\r\n%s" % (box, len(msg), msg)


class QuotaSideBySide(unittest.TestCase):
    side_class = QuotaSide

    def setUp(self):
        self.side = self.side_class([MSG % i for i in range(3)])
        self.addCleanup(self.side.cleanup)

    def compare(self, commands: list[bytes]) -> list[bytes]:
        theirs = self.side.raw_dovecot(commands)
        ours = self.side.raw_ours(commands)
        for cmd, t, o in zip(commands, theirs, ours, strict=True):
            self.assertEqual(o, t, f"{cmd[:60]!r}\n dovecot: {t!r}\n ours:    {o!r}")
        return theirs

    def test_getquotaroot_getquota(self):
        self.compare([b"GETQUOTAROOT INBOX", b"GETQUOTAROOT Trash", b'GETQUOTA "User quota"',
                      b"GETQUOTA nosuch", b'GETQUOTAROOT "nosuch"'])

    def test_setquota_refused(self):
        self.compare([b'SETQUOTA "User quota" (STORAGE 100)', b"SETQUOTA x"])

    def test_overquota_append_copy_move(self):
        out = self.compare([append(MSG % 9), append(MSG % 10), b"COPY 1:3 INBOX",
                            b"COPY 1 Trash", b"MOVE 1 Trash", b"GETQUOTAROOT INBOX"])
        self.assertIn(b"[OVERQUOTA]", out[1])

    def test_expunge_frees_at_once(self):
        self.compare([append(MSG % 9), append(MSG % 10), b"STORE 1:2 +FLAGS.SILENT (\\Deleted)",
                      b"EXPUNGE", append(MSG % 10), b"GETQUOTA \"User quota\""])

    def test_status_deleted_storage(self):
        # RFC 9208; Dovecot 2.3 has no DELETED-STORAGE, so ours alone
        out = self.side.raw_ours([b"STORE 1 +FLAGS.SILENT (\\Deleted)",
                                  b"STATUS Trash (DELETED-STORAGE MESSAGES)",
                                  b"UNSELECT", b"STATUS INBOX (DELETED DELETED-STORAGE)"])
        self.assertEqual(out[1].split(b"\n")[0], b"* STATUS Trash (DELETED-STORAGE 0 MESSAGES 0)")
        self.assertEqual(out[3].split(b"\n")[0], b"* STATUS INBOX (DELETED 1 DELETED-STORAGE 2)")
        off = self.side.raw_ours([b"STATUS INBOX (DELETED-STORAGE)"], settings={})
        self.assertIn(b"BAD", off[0])

    def test_status_of_the_selected_mailbox(self):
        # view_status awaits the view's HIGHESTMODSEQ (it was a coroutine object)
        out = self.side.raw_ours([b"STATUS INBOX (HIGHESTMODSEQ DELETED-STORAGE)"])
        self.assertRegex(out[0], rb"^\* STATUS INBOX \(HIGHESTMODSEQ \d+ DELETED-STORAGE 0\)\n"
                                 rb"T0 OK \[CLIENTBUG\]")

    def test_capabilities_only_with_imap_quota(self):
        s = IMAPSession(self.side.storage, SessionContext("alice", "side", settings={
            "mail_plugins": "quota imap_quota"}))
        self.assertIn(b"QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE", s.capabilities)
        s2 = IMAPSession(self.side.storage, SessionContext("alice", "side", settings={}))
        self.assertNotIn(b"QUOTA", s2.capabilities)
        off = self.side.raw_ours([b"GETQUOTAROOT INBOX"], settings={})
        self.assertIn(b"BAD", off[0])


class MaildirQuotaSide(QuotaSide):
    """maildir: backend (physical sizes, maildirsize) and Dovecot's default
    quota_grace (10%), which is for deliveries only: not for IMAP APPEND."""

    plugin = {"quota": "maildir:User quota", "quota_rule": "*:storage=4K",
              "quota_rule2": "Trash:storage=+10K", "quota_rule3": "*:messages=6"}


class MaildirQuotaSideBySide(QuotaSideBySide):
    side_class = MaildirQuotaSide

    def test_no_grace_for_append(self):
        out = self.compare([b'GETQUOTA "User quota"', append(MSG % 9),
                            b'GETQUOTA "User quota"'])
        self.assertIn(b"[OVERQUOTA]", out[1])  # 3099 + 1033 > 4096, within the 10% grace


class UnlimitedSideBySide(unittest.TestCase):
    """Roots without limits: GETQUOTAROOT leaves them out ("OK No quota"),
    GETQUOTA answers no QUOTA line, an ``ignoreunlimited`` one does not exist."""

    PLUGINS = ({"quota": "maildir:User quota"},
               {"quota": "maildir:User quota", "quota_rule": "*:storage=1M",
                "quota2": "maildir:Other:ignoreunlimited"})

    def test_unlimited_roots(self):
        for plugin in self.PLUGINS:
            side = type("Side", (QuotaSide,), {"plugin": plugin})([MSG % i for i in range(2)])
            self.addCleanup(side.cleanup)
            commands = [b"GETQUOTAROOT INBOX", b'GETQUOTA "User quota"', b"GETQUOTA Other"]
            theirs, ours = side.raw_dovecot(commands), side.raw_ours(commands)
            for cmd, t, o in zip(commands, theirs, ours, strict=True):
                self.assertEqual(o, t, f"{plugin} {cmd!r}")


class MaxMailSizeSideBySide(unittest.TestCase):
    def test_limit(self):
        plugin = {"quota": "maildir:User quota", "quota_rule": "*:storage=1M",
                  "quota_max_mail_size": "1k"}
        side = type("Side", (QuotaSide,), {"plugin": plugin})([])
        self.addCleanup(side.cleanup)
        commands = [append(MSG % 1 + b"y" * 2000 + b"\r\n"), append(b"small\r\n")]
        theirs, ours = side.raw_dovecot(commands), side.raw_ours(commands)
        self.assertEqual(ours, theirs)
        self.assertIn(b"NO [LIMIT] Mail size is larger", ours[0])


class FakeStorageQuota(unittest.TestCase):
    """The fake storage enforces the same rules (tests/imap_fakes.py)."""

    def test_append_over(self):
        from pydovecot.storage.interfaces import OverQuota
        from tests.imap_fakes import FakeStorage

        s = FakeStorage()
        result_now(s.configure({"quota": "count:User quota", "quota_rule": "*:bytes=100", "quota_vsizes": "yes",
                                "quota_grace": "0"}))
        result_now(s.append("INBOX", io.BytesIO(b"x" * 60)))
        d = s.append("INBOX", io.BytesIO(b"x" * 60))
        self.failureResultOf(d, OverQuota)
        self.assertEqual([(r.name, r.usage, r.limit) for r in
                          result_now(s.get_quota("User quota"))], [("STORAGE", 60, 100), ("MESSAGE", 1, 0)])
