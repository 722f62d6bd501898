"""mbsync (isync) against the real master: two-way sync, then a no-op run.

Starts ``twistd -n pydovecot`` (as root with real privilege drop, like
tests.test_process), fills a folder tree with a few hundred generated
messages (bench/generate.py) over imaplib, and runs Debian's ``mbsync``
with a ``.mbsyncrc`` in the test's temp dir.  The local side starts with
messages and a folder of its own, so the first run goes both ways; a
second run must find nothing to do; then flags change on both sides, a
message is deleted locally and one arrives on the server; after that sync
a last run must again find nothing to do.  mbsync's progress counters
(printed only to a terminal, so stdout is a pty) and exit code are
checked, and the server is checked independently with imaplib: folders,
every message's bytes and flags.  Trusts only the clients' views, never
the server's files.

The helpers here (server snapshots, local Maildir snapshots) are shared
with tests.test_offlineimap and tests.test_client_scenarios; the generator
itself (bench/generate.py) is unit-tested at the end.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import imaplib
import os
import pty
import re
import select
import shutil
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench.generate import FLAG_LETTERS, MailGenerator, Message, write_maildir
from tests.harness import Master, User, ensure_system_user
from tests.storage_now import now

IS_ROOT = os.geteuid() == 0
MBSYNC = shutil.which("mbsync")
FOLDERS = {"INBOX": 120, "Archive": 20, "Archive/2024": 80, "Lists/python": 60, "Sent": 20}
_FETCH_RE = re.compile(rb"UID (\d+)|FLAGS \(([^)]*)\)")
_LETTERS = {v: k for k, v in FLAG_LETTERS.items()}
# A snapshot: folder → {Message-ID: (sha1 of CRLF bytes, frozenset(flags))}.
Snapshot = dict[str, dict[str, tuple[str, frozenset[str]]]]


def start_master(test: SynchronousTestCase) -> Master:
    """A master per test, dropping privileges for real when run as root."""
    kwargs: dict = {}
    if IS_ROOT:
        for name in ("pydovecot-null", "pydovecot", "pdvmail"):
            ensure_system_user(name)
        kwargs = dict(login_user="pydovecot-null", internal_user="pydovecot",
                      mail_uid="pdvmail")
    master = Master(users=[User("alice", "secret")], **kwargs)
    test.addCleanup(master.cleanup)
    master.start()
    return master


def imap_login(master: Master) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", master.ports["imap"], timeout=30)
    client.login("alice", "secret")
    return client


def digest(data: bytes) -> str:
    """Hash of a message with line ends made CRLF (clients may store LF),
    without the ``X-TUID`` header mbsync adds to every message it uploads."""
    data = data.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    head = b"\n".join(line for line in head.split(b"\n") if not line.startswith((b"X-TUID: ", b"X-OfflineIMAP: ")))
    return hashlib.sha1((head + sep + body).replace(b"\n", b"\r\n")).hexdigest()


def message_id(data: bytes) -> str:
    m = re.search(rb"^Message-ID:\s*(<[^>]+>)", data, re.M | re.I)
    return m.group(1).decode() if m else ""


def populate(master: Master, seed: int = 7) -> Snapshot:
    """Create FOLDERS on the server and APPEND generated messages with
    flags and dates; returns what the server should now hold."""
    gen = MailGenerator(seed, attachment_scale=0.05)
    expected: Snapshot = {}
    client = imap_login(master)
    try:
        for folder, count in FOLDERS.items():
            if folder != "INBOX":
                typ, data = client.create(folder)
                assert typ == "OK", (folder, data)
            expected[folder] = {}
            for msg in gen.messages(count):
                flags = " ".join(sorted(msg.flags))
                typ, data = client.append(folder, f"({flags})",
                                          imaplib.Time2Internaldate(msg.date), msg.data)
                assert typ == "OK", data
                expected[folder][msg.message_id] = (digest(msg.data), frozenset(msg.flags))
    finally:
        client.logout()
    return expected


def server_snapshot(master: Master) -> tuple[Snapshot, dict[str, tuple[int, int]]]:
    """(messages by folder, {folder: (UIDVALIDITY, UIDNEXT)}) as imaplib sees them."""
    client = imap_login(master)
    snap: Snapshot = {}
    uids: dict[str, tuple[int, int]] = {}
    try:
        typ, listing = client.list()
        assert typ == "OK", listing
        folders = []
        for line in listing:
            m = re.match(rb'\(([^)]*)\) (?:"."|NIL) (.+)$', line)
            assert m, line
            name = m.group(2).strip(b'"').decode()
            if b"\\Noselect" not in m.group(1) and b"\\NonExistent" not in m.group(1):
                folders.append(name)
        for folder in folders:
            typ, data = client.status(folder, "(UIDVALIDITY UIDNEXT)")
            assert typ == "OK", data
            nums = dict(re.findall(rb"(UIDVALIDITY|UIDNEXT) (\d+)", data[0]))
            uids[folder] = (int(nums[b"UIDVALIDITY"]), int(nums[b"UIDNEXT"]))
            typ, data = client.select(folder, readonly=True)
            assert typ == "OK", data
            snap[folder] = {}
            if int(data[0]) == 0:
                continue
            typ, data = client.fetch("1:*", "(UID FLAGS BODY.PEEK[])")
            assert typ == "OK", data
            for item in data:
                if not isinstance(item, tuple):
                    continue
                flags: frozenset[str] = frozenset()
                for m in _FETCH_RE.finditer(item[0]):
                    if m.group(2) is not None:
                        flags = frozenset(m.group(2).decode().split()) - {"\\Recent"}
                snap[folder][message_id(item[1])] = (digest(item[1]), flags)
    finally:
        client.logout()
    return snap, uids


def maildir_snapshot(root: str, inbox: str | None = None) -> tuple[Snapshot, list[str]]:
    """(messages by folder, every file name) of a local Maildir tree whose
    folders are directories (``Archive/2024``), INBOX at ``inbox``."""
    snap: Snapshot = {}
    names: list[str] = []
    dirs = []
    for path, subdirs, _files in os.walk(root):
        if "cur" in subdirs and "new" in subdirs:
            dirs.append(path)
    for path in dirs:
        if inbox and os.path.abspath(path) == os.path.abspath(inbox):
            folder = "INBOX"
        else:
            folder = os.path.relpath(path, root).replace(os.sep, "/")
        snap[folder] = {}
        for sub in ("cur", "new"):
            for name in sorted(os.listdir(os.path.join(path, sub))):
                with open(os.path.join(path, sub, name), "rb") as f:
                    data = f.read()
                info = name.split(":2,", 1)[1] if ":2," in name else ""
                flags = frozenset(_LETTERS[c] for c in info if c in _LETTERS)
                snap[folder][message_id(data)] = (digest(data), flags)
                names.append(f"{folder}/{sub}/{name}")
    return snap, sorted(names)


def write_local(folder_dir: str, msg: Message, flags: str = "", n: int = 0) -> str:
    """Drop a local-only message into a Maildir folder (cur/ with flags)."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(folder_dir, sub), exist_ok=True)
    name = f"{int(msg.date.timestamp())}.L{n}P{os.getpid()}.localhost:2,{flags}"
    path = os.path.join(folder_dir, "cur", name)
    with open(path, "wb") as f:
        f.write(msg.lf())
    return path


def set_local_flags(path: str, flags: str) -> str:
    """Rename a local Maildir file to carry ``flags`` (letters)."""
    base = os.path.basename(path).split(":2,", 1)[0]
    new = os.path.join(os.path.dirname(os.path.dirname(path)), "cur",
                       f"{base}:2,{''.join(sorted(flags))}")
    os.rename(path, new)
    return new


def find_local(root: str, msgid: str) -> str:
    for path, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(path, name)
            if os.path.basename(path) in ("cur", "new"):
                with open(full, "rb") as f:
                    if message_id(f.read(8192)) == msgid:
                        return full
    raise AssertionError(f"{msgid} not in {root}")


def set_server_flags(master: Master, folder: str, msgid: str, op: str, flags: str) -> None:
    client = imap_login(master)
    try:
        client.select(folder)
        typ, data = client.uid("SEARCH", "HEADER", "Message-ID", msgid)
        assert typ == "OK" and data[0], (msgid, data)
        typ, data = client.uid("STORE", data[0].decode(), op, f"({flags})")
        assert typ == "OK", data
    finally:
        client.logout()


def _counters(text: str) -> dict[str, tuple[int, int, int]]:
    """The last ``C: … F: +a/b *c/d #e/f  N: +…`` line → {"F": (+, *, #), "N": …}."""
    lines = re.findall(r"C: \d+/\d+\s+B: \d+/\d+\s+F:([^N]*)N:([^\r\n]*)", text)
    if not lines:
        raise AssertionError(f"no progress counters in mbsync output:\n{text}")
    result = {}
    for side, part in zip("FN", lines[-1], strict=True):
        nums = re.findall(r"([+*#])(\d+)/\d+", part)
        counts = dict(nums)
        result[side] = (int(counts.get("+", 0)), int(counts.get("*", 0)),
                        int(counts.get("#", 0)))
    return result


class MbsyncTests(SynchronousTestCase):
    """Two-way sync with mbsync; see the module docstring."""

    maxDiff = None

    def setUp(self) -> None:
        if MBSYNC is None:
            raise SkipTest("mbsync not installed (Debian package isync)")
        self.master = start_master(self)
        self.tmp = tempfile.mkdtemp(prefix="mbsync-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.local = os.path.join(self.tmp, "Mail")
        self.inbox = os.path.join(self.local, "INBOX")
        os.makedirs(self.local)
        self.rc = os.path.join(self.tmp, "mbsyncrc")
        with open(self.rc, "w") as f:
            f.write(f"""\
IMAPAccount pydovecot
Host 127.0.0.1
Port {self.master.ports['imap']}
User alice
Pass secret
SSLType None
AuthMechs LOGIN
Timeout 60
PipelineDepth 50

IMAPStore remote
Account pydovecot

MaildirStore local
Path {self.local}/
Inbox {self.inbox}
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
Sync All
SyncState *
""")

    def mbsync(self, timeout: float = 120) -> tuple[int, dict[str, tuple[int, int, int]], str]:
        """Run ``mbsync -a`` with stdout on a pty (for its counters)."""
        master_fd, slave_fd = pty.openpty()
        proc = subprocess.Popen([MBSYNC, "-c", self.rc, "-a"], stdin=subprocess.DEVNULL,
                                stdout=slave_fd, stderr=subprocess.PIPE, cwd=self.tmp)
        os.close(slave_fd)
        out = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master_fd], [], [], 1)
                if ready:
                    try:
                        chunk = os.read(master_fd, 65536)
                    except OSError:  # EIO: the child closed the pty
                        break
                    if not chunk:
                        break
                    out += chunk
                elif proc.poll() is not None:
                    break
            else:
                proc.kill()
                raise AssertionError(f"mbsync timed out:\n{out.decode(errors='replace')}")
            code = proc.wait(timeout)
        finally:
            os.close(master_fd)
            stderr = proc.stderr.read().decode(errors="replace")
            proc.stderr.close()
        text = out.decode(errors="replace") + stderr
        self.assertEqual(code, 0, f"mbsync failed:\n{text}\n{self.master.output()}")
        self.assertNotIn("Error", stderr, text)
        return code, _counters(text), text

    def seed_local(self) -> dict[str, Message]:
        """Local-only messages: 4 in INBOX, 3 in a local-only folder
        ``Archive/2023`` (whose parent exists on both sides: a new far-side
        parent made by CREATE would only reach the near side on the next run)."""
        gen = MailGenerator(99, attachment_scale=0.05)
        local: dict[str, Message] = {}
        for n in range(4):
            msg = gen.message()
            msg.flags = {"\\Seen", "\\Flagged"} if n % 2 else {"\\Seen"}
            write_local(self.inbox, msg, "FS" if n % 2 else "S", n)
            local["INBOX/" + msg.message_id] = msg
        for n in range(3):
            msg = gen.message(kind="attachment")
            msg.flags = {"\\Answered", "\\Seen"}
            write_local(os.path.join(self.local, "Archive", "2023"), msg, "RS", 10 + n)
            local["Archive/2023/" + msg.message_id] = msg
        return local

    def test_two_way_sync_then_noop(self) -> None:
        expected = populate(self.master)
        local = self.seed_local()
        for key, msg in local.items():
            folder = key.rsplit("/", 1)[0] if not key.startswith("INBOX/") else "INBOX"
            expected.setdefault(folder, {})[msg.message_id] = (digest(msg.data),
                                                               frozenset(msg.flags))
        total = sum(FOLDERS.values())

        # Run 1: pull every server message, push the local-only ones.
        _code, counts, text = self.mbsync()
        self.assertEqual(counts["N"][0], total, text)
        self.assertEqual(counts["F"][0], len(local), text)
        server, _ = server_snapshot(self.master)
        # The parent Lists may be listed as a mailbox or not at all.
        self.assertEqual(set(server) - {"Lists"}, set(expected))
        for folder, msgs in expected.items():
            self.assertEqual(server[folder], msgs, folder)
        near, _ = maildir_snapshot(self.local, self.inbox)
        for folder, msgs in expected.items():
            self.assertEqual(near[folder], msgs, folder)

        # Run 2: a second run right away finds nothing to do.
        time.sleep(1.1)  # mbsync ignores Maildir changes within the current second
        _code, counts, text = self.mbsync()
        self.assertEqual(counts, {"F": (0, 0, 0), "N": (0, 0, 0)}, text)
        self.assertEqual(server_snapshot(self.master)[0], server)
        self.assertEqual(maildir_snapshot(self.local, self.inbox)[0], near)

        # Changes on both sides: local flags, a local delete, server flags,
        # a new server message.
        mids = sorted(expected["Archive/2024"])
        path = find_local(os.path.join(self.local, "Archive", "2024"), mids[0])
        set_local_flags(path, "FS")
        expected["Archive/2024"][mids[0]] = (expected["Archive/2024"][mids[0]][0],
                                             frozenset({"\\Flagged", "\\Seen"}))
        path = find_local(os.path.join(self.local, "Archive", "2024"), mids[1])
        set_local_flags(path, "T")
        del expected["Archive/2024"][mids[1]]
        inbox_mid = sorted(expected["INBOX"])[0]
        set_server_flags(self.master, "INBOX", inbox_mid, "FLAGS", "\\Answered \\Seen")
        expected["INBOX"][inbox_mid] = (expected["INBOX"][inbox_mid][0],
                                        frozenset({"\\Answered", "\\Seen"}))
        new = MailGenerator(5).message(kind="forward")
        client = imap_login(self.master)
        client.append("Lists/python", "()", None, new.data)
        client.logout()
        expected["Lists/python"][new.message_id] = (digest(new.data), frozenset())
        time.sleep(1.1)  # mbsync ignores Maildir changes within the current second

        # Run 3: propagates exactly those changes.
        _code, counts, text = self.mbsync()
        self.assertEqual(counts["N"][:2], (1, 1), text)  # the new message; INBOX flags
        self.assertEqual(counts["F"][:2], (0, 2), text)  # \Flagged; \Deleted (then expunged)
        server, uids = server_snapshot(self.master)
        for folder, msgs in expected.items():
            self.assertEqual(server[folder], msgs, folder)
        near, names = maildir_snapshot(self.local, self.inbox)
        for folder, msgs in expected.items():
            self.assertEqual(near[folder], msgs, folder)

        # Run 4: nothing to do, and nothing changes on either side.
        time.sleep(1.1)
        _code, counts, text = self.mbsync()
        self.assertEqual(counts, {"F": (0, 0, 0), "N": (0, 0, 0)}, text)
        self.assertEqual(server_snapshot(self.master), (server, uids))
        self.assertEqual(maildir_snapshot(self.local, self.inbox), (near, names))



class GeneratedMaildirTests(SynchronousTestCase):
    """bench/generate.py: reproducible, well-formed, and a Maildir it writes
    opens in pydovecot's storage with the UIDs, flags, sizes and dates given."""

    def test_reproducible_and_varied(self) -> None:
        first = [m.data for m in MailGenerator(5).messages(300)]
        self.assertEqual(first, [m.data for m in MailGenerator(5).messages(300)])
        msgs = list(MailGenerator(5).messages(300))
        kinds = {m.kind for m in msgs}
        self.assertEqual(kinds, {"plain", "alternative", "attachment", "list", "forward", "qp"})
        self.assertTrue(any(m.subject.startswith("Re: ") for m in msgs))
        for msg in msgs:
            self.assertNotIn(b"\n", msg.data.replace(b"\r\n", b""))
            parsed = email.message_from_bytes(msg.data, policy=email.policy.default)
            self.assertEqual(parsed["Message-ID"], msg.message_id)
            self.assertEqual(parsed.defects, [], msg.data[:300])
            if msg.kind == "forward":
                types = [p.get_content_type() for p in parsed.walk()]
                self.assertIn("message/rfc822", types)
                self.assertIn("text/html", types)
            if parsed["In-Reply-To"]:
                self.assertIn(parsed["In-Reply-To"], parsed["References"])

    def test_maildir_opens_in_storage(self) -> None:
        from pydovecot.storage import open_storage

        home = tempfile.mkdtemp(prefix="generate-test-")
        self.addCleanup(shutil.rmtree, home, True)
        msgs = list(MailGenerator(9, attachment_scale=0.05).messages(200))
        self.assertEqual(write_maildir(os.path.join(home, "Maildir"), msgs, uidvalidity=1234),
                         200)
        box = now(open_storage("alice", "maildir:~/Maildir", home)).open("INBOX")
        try:
            self.assertEqual(box.uidvalidity, 1234)
            self.assertEqual(box.uidnext, 201)
            self.assertEqual([m.uid for m in box.messages], list(range(1, 201)))
            for info, msg in zip(box.messages, msgs, strict=True):
                self.assertEqual(info.flags, msg.flags)
                self.assertEqual(info.size, len(msg.data))
                self.assertEqual(int(info.internaldate.timestamp()), int(msg.date.timestamp()))
            with box.message_file(17) as f:  # the answer is in at once (tests.storage_now)
                self.assertEqual(digest(f.read()), digest(msgs[16].data))
        finally:
            box.close()
