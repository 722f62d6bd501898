"""The same IMAP commands to Debian's Dovecot 2.3 and to pydovecot, side by side.

Dovecot's ``imap`` binary runs pre-authenticated on stdin/stdout
(``/usr/lib/dovecot/imap -c <private config>``, no master, no port) as the
``nobody`` user on a private Maildir; pydovecot's :class:`IMAPSession`
runs in-process over a StringTransport on a :class:`MaildirStorage` of its
own.  Both mailboxes get the same messages in the same order, so UIDs and
sequence numbers agree, and each command's answer (untagged data plus the
tagged status word) can be compared.

Trusts: the test's own messages and commands; Dovecot from the Debian
package.  Needs root (Dovecot drops to ``nobody``) and dovecot-imapd:
:func:`require` skips otherwise and fails when CI=true.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest

from pydovecot.imap.session import IMAPSession
from pydovecot.session import SessionContext
from pydovecot.storage.maildir import MaildirStorage
from tests.harness import IN_CI

DOVECOT_IMAP = "/usr/lib/dovecot/imap"
_LITERAL_END = re.compile(rb"~?\{(\d+)\+?\}\r\n$")
_TIMING = re.compile(rb" \(\d+\.\d+ \+ [0-9.+ ]*secs\)\.?")
#: Untagged responses that are mailbox state, not a command's data.
_STATE = (b"* OK", b"* NO", b"* BAD", b"* FLAGS", b"* CAPABILITY", b"* PREAUTH", b"* BYE")
_STATE_RE = re.compile(rb"^\* \d+ (EXISTS|RECENT|EXPUNGE)\r\n$")


def require() -> None:
    """Skip (fail under CI=true) when Dovecot cannot be run here."""
    reason = None
    if not os.path.exists(DOVECOT_IMAP):
        reason = "Debian's dovecot-imapd is not installed"
    elif os.geteuid() != 0:
        reason = "running Dovecot's imap as nobody needs root"
    if reason:
        if IN_CI:
            raise AssertionError(reason)
        raise SkipTest(reason)


def split_responses(out: bytes) -> list[bytes]:
    """A server's output as whole responses (literals kept inside theirs)."""
    responses: list[bytes] = []
    pos, cur = 0, b""
    while pos < len(out):
        eol = out.find(b"\r\n", pos)
        if eol < 0:
            cur += out[pos:]
            break
        line = out[pos:eol + 2]
        pos = eol + 2
        cur += line
        m = _LITERAL_END.search(line)
        if m:
            n = int(m.group(1))
            cur += out[pos:pos + n]
            pos += n
            continue
        responses.append(cur)
        cur = b""
    if cur:
        responses.append(cur)
    return responses


def by_tag(out: bytes, tags: list[bytes]) -> dict[bytes, list[bytes]]:
    """Each tag's untagged data responses followed by ``<tag> <status>``
    (mailbox-state responses and the status text are dropped)."""
    result: dict[bytes, list[bytes]] = {}
    pending: list[bytes] = []
    wanted = set(tags)
    for resp in split_responses(out):
        tag, _, rest = resp.partition(b" ")
        if tag in wanted:
            status = rest.split(b" ", 1)[0].rstrip(b"\r\n")
            result[tag] = pending + [tag + b" " + status]
            pending = []
        elif resp.startswith(_STATE) or _STATE_RE.match(resp):
            continue
        elif resp.startswith(b"* "):
            pending.append(_TIMING.sub(b"", resp))
    return result


def _commands(script: bytes) -> list[bytes]:
    """A script of commands (LITERAL+ literals inside) split per command."""
    return [resp for resp in split_responses(script)]


def _read_until(f, tag: bytes | None) -> bytes:
    """Responses up to the tagged one (``tag``; None: the greeting)."""
    out = b""
    while True:
        line = f.readline()
        if not line:
            return out
        out += line
        m = _LITERAL_END.search(line)
        if m:
            out += f.read(int(m.group(1)))
            continue
        if tag is None or line.startswith(tag + b" ") or line.startswith(b"* BYE "):
            return out


class SideBySide:
    """Two Maildirs with the same messages: Dovecot's and pydovecot's."""

    def __init__(self, messages: list[bytes]):
        require()
        self.dir = tempfile.mkdtemp(prefix="dvside-")
        try:
            self._setup(messages)
        except BaseException:
            self.cleanup()
            raise

    def _setup(self, messages: list[bytes]) -> None:
        os.chmod(self.dir, 0o755)
        self.dhome = os.path.join(self.dir, "dovecot")
        os.makedirs(os.path.join(self.dhome, "Maildir"))
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
mail_location = maildir:{self.dhome}/Maildir
mail_uid = nobody
mail_gid = nogroup
first_valid_uid = 1
first_valid_gid = 1
ssl = no
imap_capability = +BINARY
namespace inbox {{
  inbox = yes
  separator = /
}}
""")
        shutil.chown(self.dhome, "nobody", "nogroup")
        shutil.chown(os.path.join(self.dhome, "Maildir"), "nobody", "nogroup")
        appends = [b"A%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(m), m) for i, m in enumerate(messages)]
        got = self._run_dovecot(b"".join(appends), [b"A%d" % i for i in range(len(messages))])
        for i in range(len(messages)):
            assert got[b"A%d" % i][-1] == b"A%d OK" % i, got
        self.storage = MaildirStorage("alice", os.path.join(self.dir, "ours", "Maildir"))
        for m in messages:
            self.storage.append("INBOX", io.BytesIO(m))

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run_dovecot(self, script: bytes, tags: list[bytes]) -> dict[bytes, list[bytes]]:
        """Run each ``tag command`` line of ``script`` in turn (Dovecot runs
        pipelined FETCHes in parallel, so one at a time keeps answers apart)."""
        env = {"USER": "nobody", "HOME": self.dhome, "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen([DOVECOT_IMAP, "-c", self.conf], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        out = b""
        try:
            out += _read_until(proc.stdout, None)
            for cmd in _commands(script) + [b"ZZ LOGOUT\r\n"]:
                proc.stdin.write(cmd)
                proc.stdin.flush()
                out += _read_until(proc.stdout, cmd.split(b" ", 1)[0])
            proc.stdin.close()
        except BrokenPipeError:
            pass  # Dovecot said BYE: the commands not answered are reported below
        finally:
            proc.wait(timeout=60)
        got = by_tag(out, tags)
        if len(got) != len(tags):
            log = os.path.join(self.dir, "dovecot.log")
            text = open(log, errors="replace").read()[-3000:] if os.path.exists(log) else ""
            raise AssertionError(f"dovecot answered {sorted(got)} of {tags}: {out[-2000:]!r} {text}")
        return got

    def _script(self, commands: list[bytes]) -> tuple[bytes, list[bytes]]:
        tags = [b"T%d" % i for i in range(len(commands))]
        lines = [b"S SELECT INBOX\r\n"] + [t + b" " + c + b"\r\n" for t, c in zip(tags, commands, strict=True)]
        return b"".join(lines), tags

    def dovecot(self, commands: list[bytes]) -> list[list[bytes]]:
        """Dovecot's answer to each command (after SELECT INBOX)."""
        script, tags = self._script(commands)
        got = self._run_dovecot(script, tags)
        return [got[t] for t in tags]

    def ours(self, commands: list[bytes]) -> list[list[bytes]]:
        """pydovecot's answer to each command (after SELECT INBOX)."""
        script, tags = self._script(commands)
        transport = StringTransport()
        session = IMAPSession(self.storage, SessionContext("alice", "side", settings={}))
        session.clock = Clock()
        session.slice = 60.0
        session.makeConnection(transport)
        session.start(None, b"")
        session.dataReceived(script + b"ZZ LOGOUT\r\n")
        got = by_tag(transport.value(), tags)
        assert len(got) == len(tags), transport.value()[-2000:]
        return [got[t] for t in tags]

    def both(self, commands: list[bytes]) -> tuple[list[list[bytes]], list[list[bytes]]]:
        return self.dovecot(commands), self.ours(commands)
