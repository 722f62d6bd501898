"""The authenticated ManageSieve session: commands, bounds, flow control, and
the same command sequence answered by Pigeonhole and by us.

Our :class:`ManageSieveSession` runs in-process over a StringTransport on a
temporary home; Pigeonhole's ``/usr/lib/dovecot/managesieve`` runs
pre-authenticated on stdin/stdout with a private config (USER/HOME in the
environment, as ``nobody``; needs root, fails under CI=true without it).
Responses are compared after normalising what is an implementation's own:
the IMPLEMENTATION and SIEVE capability values (NOTIFY: Pigeonhole's
enotify, which our interpreter lacks) and the wording of
compile errors (both must be a ``NO`` literal ending in ``error:
validation failed.``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.config.parser import parse_config
from pydovecot.managesieve.grammar import GrammarError, parse_arguments, scan
from pydovecot.managesieve.session import BATCH, new_session
from pydovecot.session import SessionContext
from tests.harness import IN_CI

PIGEONHOLE = "/usr/lib/dovecot/managesieve"
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


def lit(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return b"{%d+}\r\n" % len(raw) + raw


def split_responses(out: bytes) -> list[list[bytes]]:
    """Each response: its data lines (literals inside) and its final OK/NO/BYE."""
    responses, current, pos = [], [], 0
    item = b""
    while pos < len(out):
        eol = out.find(b"\r\n", pos)
        if eol < 0:
            break
        line = out[pos:eol + 2]
        pos = eol + 2
        item += line
        m = _LITERAL.search(line)
        if m:
            n = int(m.group(1))
            item += out[pos:pos + n]
            pos += n
            continue
        current.append(item.rstrip(b"\r\n"))
        if item.startswith((b"OK", b"NO", b"BYE")):
            responses.append(current)
            current = []
        item = b""
    return responses


def normalise(responses: list[list[bytes]]) -> list[list[bytes]]:
    out = []
    for resp in responses:
        norm = []
        for line in resp:
            m = re.match(rb'^"(IMPLEMENTATION|SIEVE|NOTIFY)" ', line)
            if m and m.group(1) == b"NOTIFY":
                continue  # Pigeonhole has enotify ("mailto"); our interpreter has not
            if m:
                norm.append(b'"' + m.group(1) + b'" <value>')
            elif line.startswith(b"NO {") and line.endswith(b"validation failed."):
                norm.append(b"NO <compile errors>")
            else:
                norm.append(line)
        # LISTSCRIPTS: Pigeonhole lists in directory order
        out.append(sorted(norm[:-1]) + norm[-1:])
    return out


class Session:
    """Our session on a temporary home, over a StringTransport."""

    def __init__(self, home: str, conf: str, user: str = "alice"):
        self.config = parse_config(conf)
        ctx = SessionContext(user=user, session_id="test", fields={"home": home})
        self.proto = new_session(self.config, ctx)
        verifyObject(IPushProducer, self.proto)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.proto.start(None, b"")

    @defer.inlineCallbacks
    def run(self, commands: list[bytes], timeout: float = 20):
        """Send each command after the previous one's answer; the answers."""
        self.transport.clear()
        done = 0
        for cmd in commands:
            self.proto.dataReceived(cmd + b"\r\n")
            waited = 0.0
            while len(split_responses(self.transport.value())) <= done:
                if waited > timeout or self.transport.disconnecting:
                    break
                yield task.deferLater(_reactor, 0.01, lambda: None)
                waited += 0.01
            done += 1
        return split_responses(self.transport.value())


@defer.inlineCallbacks
def wait_for(predicate, timeout: float = 20):
    """Until ``predicate()`` holds (AssertionError after ``timeout`` seconds)."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("timed out")
        yield task.deferLater(_reactor, 0.01, lambda: None)
        waited += 0.01


def write_conf(path: str, extra: str = "", plugin: str = "") -> str:
    with open(path, "w") as f:
        f.write(f"""
base_dir = {os.path.dirname(path)}/run
ssl = no
protocols = sieve
{extra}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
{plugin}
}}
""")
    return path


COMMANDS = [
    b'CAPABILITY',
    b'LISTSCRIPTS',
    b'PUTSCRIPT "a" ' + lit('require "fileinto";\r\nfileinto "X";\r\n'),
    b'PUTSCRIPT "bad" ' + lit('require "foo";\r\nfrob 1;\r\n'),
    b'CHECKSCRIPT ' + lit('keep;\r\n'),
    b'CHECKSCRIPT ' + lit('kee p;\r\n'),
    b'SETACTIVE "a"', b'LISTSCRIPTS', b'GETSCRIPT "a"', b'DELETESCRIPT "a"',
    b'PUTSCRIPT "b" ' + lit('keep;\r\n'),
    b'RENAMESCRIPT "a" "b"', b'RENAMESCRIPT "a" "c"', b'LISTSCRIPTS',
    b'HAVESPACE "x" 5000', b'HAVESPACE "x" 10', b'HAVESPACE "c" 2000',
    b'PUTSCRIPT "d" ' + lit('keep;\r\n'), b'PUTSCRIPT "e" ' + lit('keep;\r\n'),
    b'HAVESPACE "new" 10',
    b'SETACTIVE ""', b'SETACTIVE ""', b'SETACTIVE "zz"', b'DELETESCRIPT "c"',
    b'DELETESCRIPT "nope"', b'GETSCRIPT "nope"',
    b'CAPABILITY x', b'LISTSCRIPTS 1', b'GETSCRIPT', b'SETACTIVE', b'RENAMESCRIPT "a"',
    b'GETSCRIPT "a" "b"', b'HAVESPACE "x" abc', b'HAVESPACE "x" -1',
    b'NOOP', b'NOOP "tag1"', b'NOOP "t\\"q"', b'NOOP 1', b'FOO', b'UNAUTHENTICATE',
    b'STARTTLS', b'AUTHENTICATE "PLAIN"',
    b'PUTSCRIPT "x/y" ' + lit('keep;'), b'PUTSCRIPT "x\x01" ' + lit('keep;'),
    b'PUTSCRIPT "' + b'n' * 300 + b'" ' + lit('keep;'),
    b'PUTSCRIPT "q"', b'PUTSCRIPT "a',
    b'PUTSCRIPT "u\xc3\xa9" ' + lit('keep;'), b'DELETESCRIPT "d"',
    b'PUTSCRIPT "q" "keep;"', b'GETSCRIPT {1+}\r\nq', b'getscript "q"',
    b'PUTSCRIPT "big" ' + lit('#' * 3000 + '\r\nkeep;\r\n'),
    b'LISTSCRIPTS',
    b'LOGOUT',
]
QUOTA = "  sieve_quota_max_scripts = 3\n  sieve_quota_max_storage = 2k\n"


class PigeonholeSideBySide(unittest.TestCase):
    """The same commands to Pigeonhole's managesieve and to ours."""

    def setUp(self) -> None:
        reason = None
        if not os.path.exists(PIGEONHOLE):
            reason = "Debian's dovecot-managesieved is not installed"
        elif os.geteuid() != 0:
            reason = "running Pigeonhole's managesieve as nobody needs root"
        if reason:
            if IN_CI:
                self.fail(reason)
            raise unittest.SkipTest(reason)
        self.dir = tempfile.mkdtemp(prefix="mside-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)

    def pigeonhole(self, commands: list[bytes]) -> list[list[bytes]]:
        home = os.path.join(self.dir, "dovecot")
        os.makedirs(home)
        shutil.chown(home, "nobody", "nogroup")
        conf = os.path.join(self.dir, "dovecot.conf")
        write_conf(conf, f"state_dir = {self.dir}/state\nlog_path = {self.dir}/dovecot.log\n"
                         f"mail_location = maildir:{home}/Maildir\nmail_uid = nobody\n"
                         "mail_gid = nogroup\nfirst_valid_uid = 1\nfirst_valid_gid = 1\n",
                   QUOTA)
        env = {"USER": "nobody", "HOME": home, "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen([PIGEONHOLE, "-c", conf], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        out = b""
        watchdog = threading.Timer(60, proc.kill)  # a missing answer must not hang us
        watchdog.start()
        self.addCleanup(watchdog.cancel)
        for cmd in commands:  # one at a time: each answer before the next command
            proc.stdin.write(cmd + b"\r\n")
            proc.stdin.flush()
            while True:
                line = proc.stdout.readline()
                out += line
                m = _LITERAL.search(line)
                if m:
                    out += proc.stdout.read(int(m.group(1)))
                    if line.startswith((b"OK", b"NO", b"BYE")):  # NO {n}: then CRLF
                        out += proc.stdout.readline()
                        break
                    continue
                if not line or line.startswith((b"OK", b"NO", b"BYE")):
                    break
        proc.stdin.close()
        proc.wait(timeout=30)
        self.pigeonhole_home = home
        return split_responses(out)

    @defer.inlineCallbacks
    def test_same_answers(self):
        theirs = self.pigeonhole(COMMANDS)
        home = os.path.join(self.dir, "ours")
        os.makedirs(home)
        conf = write_conf(os.path.join(self.dir, "ours.conf"), "", QUOTA)
        ours = yield Session(home, conf).run(COMMANDS)
        self.assertEqual(len(ours), len(COMMANDS), ours)
        self.assertEqual(len(theirs), len(COMMANDS))
        for cmd, a, b in zip(COMMANDS, normalise(theirs), normalise(ours), strict=True):
            self.assertEqual(a, b, cmd)
        # the same files on disk: scripts and the active link
        for name in ("sieve", ".dovecot.sieve"):
            self.assertEqual(os.path.lexists(os.path.join(home, name)),
                             os.path.lexists(os.path.join(self.pigeonhole_home, name)), name)
        listing = {n for n in os.listdir(os.path.join(self.pigeonhole_home, "sieve"))
                   if n.endswith(".sieve")}
        mine = {n for n in os.listdir(os.path.join(home, "sieve")) if n.endswith(".sieve")}
        self.assertEqual(listing, mine)

    @defer.inlineCallbacks
    def test_active_link_as_pigeonhole_writes_it(self):
        commands = [b'PUTSCRIPT "s" ' + lit("keep;\r\n"), b'SETACTIVE "s"', b"LOGOUT"]
        self.pigeonhole(commands)
        home = os.path.join(self.dir, "ours")
        os.makedirs(home)
        conf = write_conf(os.path.join(self.dir, "ours.conf"))
        yield Session(home, conf).run(commands)
        self.assertEqual(os.readlink(os.path.join(home, ".dovecot.sieve")),
                         os.readlink(os.path.join(self.pigeonhole_home, ".dovecot.sieve")))


class SessionTests(unittest.TestCase):
    """Our session alone: settings, bounds, storage layout, flow control."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="msess-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.home = os.path.join(self.dir, "home")
        os.makedirs(self.home)

    def session(self, extra: str = "", plugin: str = "") -> Session:
        return Session(self.home, write_conf(os.path.join(self.dir, "c.conf"), extra, plugin))

    @defer.inlineCallbacks
    def test_capability_settings_change_the_listing(self):
        s = self.session("protocol sieve {\n  managesieve_implementation_string = Cyrus "
                         "timsieved v2.2.13\n  managesieve_notify_capability = mailto\n"
                         "  managesieve_sieve_capability = fileinto\n}\n")
        (caps,) = yield s.run([b"CAPABILITY"])
        self.assertEqual(caps, [b'"IMPLEMENTATION" "Cyrus timsieved v2.2.13"',
                                b'"SIEVE" "fileinto"', b'"MAXREDIRECTS" "4"',
                                b'"NOTIFY" "mailto"', b'"VERSION" "1.0"',
                                b'OK "Capability completed."'])
        plain = self.session(plugin="  sieve_extensions = -vacation\n  sieve_max_redirects = 2\n")
        (caps,) = yield plain.run([b"CAPABILITY"])
        self.assertFalse(any(ln.startswith(b'"NOTIFY"') for ln in caps))
        sieve = caps[1].split(b'"')[3].split()
        self.assertNotIn(b"vacation", sieve)
        self.assertIn(b"fileinto", sieve)
        self.assertIn(b'"MAXREDIRECTS" "2"', caps)

    @defer.inlineCallbacks
    def test_max_line_length_and_logout_format(self):
        s = self.session("protocol sieve {\n  managesieve_max_line_length = 100\n"
                         "  managesieve_logout_format = in=%i puts=%{put_count}\n}\n")
        (ok,) = yield s.run([b"NOOP " + b'"' + b"x" * 50 + b'"'])
        self.assertTrue(ok[0].startswith(b"OK (TAG"))
        (bye,) = yield s.run([b"NOOP " + b"x" * 200])
        self.assertEqual(bye, [b'BYE "Input buffer full, aborting"'])
        self.assertTrue(s.transport.disconnecting)
        logged = []
        from twisted.logger import globalLogPublisher

        def observe(event):
            if "summary" in event:
                logged.append(event["summary"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        s.proto.connectionLost(None)
        self.assertEqual(len(logged), 1)
        self.assertTrue(re.match(r"in=\d+ puts=0$", logged[0]), logged)

    @defer.inlineCallbacks
    def test_quota_settings(self):
        s = self.session(plugin="  sieve_quota_max_scripts = 1\n  sieve_quota_max_storage = 100\n"
                                "  sieve_max_script_size = 50\n")
        got = yield s.run([b'PUTSCRIPT "a" ' + lit("keep;"), b'PUTSCRIPT "b" ' + lit("keep;"),
                           b'PUTSCRIPT "a" ' + lit("stop;"), b'HAVESPACE "a" 60',
                           b'PUTSCRIPT "a" ' + lit("#" * 60),
                           b'PUTSCRIPT "a" {999999+}\r\n' + b"#" * 999999])
        self.assertEqual(got, [
            [b'OK "PUTSCRIPT completed."'],
            [b'NO (QUOTA/MAXSCRIPTS) "Script count quota exceeded (max 1 scripts)."'],
            [b'OK "PUTSCRIPT completed."'],
            [b'NO (QUOTA/MAXSIZE) "Script is too large (max 50 bytes)."'],
            [b'NO (QUOTA/MAXSIZE) "Script is too large (max 50 bytes)."'],
            [b'NO (QUOTA/MAXSIZE) "Script is too large (max 50 bytes)."'],
        ])
        with open(os.path.join(self.home, "sieve", "a.sieve"), "rb") as f:
            self.assertEqual(f.read(), b"stop;")
        self.assertLess(len(s.proto._buffer), 1000)

    @defer.inlineCallbacks
    def test_putscript_refreshes_the_compiled_cache(self):
        s = self.session()
        yield s.run([b'PUTSCRIPT "a" ' + lit('require "fileinto";\r\nfileinto "A";\r\n')])
        binary = os.path.join(self.home, "sieve", "a.pdvbin")
        with open(binary) as f:
            first = f.read()
        self.assertIn('"A"', first)
        yield s.run([b'PUTSCRIPT "a" ' + lit('require "fileinto";\r\nfileinto "B";\r\n')])
        with open(binary) as f:
            self.assertIn('"B"', f.read())
        self.assertEqual(os.listdir(os.path.join(self.home, "sieve", "tmp")), [])
        yield s.run([b'RENAMESCRIPT "a" "b"', b'DELETESCRIPT "b"'])
        self.assertEqual(sorted(os.listdir(os.path.join(self.home, "sieve"))), ["tmp"])

    @defer.inlineCallbacks
    def test_a_script_written_by_hand_is_kept(self):
        with open(os.path.join(self.home, ".dovecot.sieve"), "w") as f:
            f.write("keep;\n")
        s = self.session()
        got = yield s.run([b"LISTSCRIPTS", b'PUTSCRIPT "new" ' + lit("keep;"),
                           b'SETACTIVE "new"', b"LISTSCRIPTS"])
        self.assertEqual(got[0], [b'OK "Listscripts completed."'])
        self.assertEqual(got[3], [b'"dovecot.orig"', b'"new" ACTIVE',
                                  b'OK "Listscripts completed."'])

    @defer.inlineCallbacks
    def test_a_link_out_of_the_directory_is_not_active(self):
        os.symlink("/etc/passwd", os.path.join(self.home, ".dovecot.sieve"))
        s = self.session()
        got = yield s.run([b"LISTSCRIPTS", b'SETACTIVE ""', b'GETSCRIPT "../../etc/passwd"'])
        self.assertEqual(got[0], [b'OK "Listscripts completed."'])
        self.assertTrue(got[2][0].startswith(b'NO "Invalid Sieve script name'))

    @defer.inlineCallbacks
    def test_pipelined_commands_yield_between_batches(self):
        s = self.session()
        s.transport.clear()
        s.proto.dataReceived(b"NOOP\r\n" * (BATCH * 3))
        # the first batch ran at once; the rest waits for later reactor turns
        self.assertEqual(s.transport.value().count(b"OK"), BATCH)
        yield wait_for(lambda: s.transport.value().count(b"OK") == BATCH * 3)

    @defer.inlineCallbacks
    def test_a_client_that_does_not_read_stops_its_own_session_only(self):
        s = self.session()
        other = self.session()
        yield s.run([b'PUTSCRIPT "a" ' + lit("#" * 1000)])
        s.transport.clear()
        s.proto.pauseProducing()  # what the transport does when its buffer is full
        self.assertTrue(s.transport.producerState == "paused")
        s.proto.dataReceived(b'GETSCRIPT "a"\r\n' * 5)
        self.assertEqual(s.transport.value(), b"")  # nothing runs while paused
        (ok,) = yield other.run([b"NOOP"])
        self.assertEqual(ok, [b'OK "NOOP Completed"'])
        s.proto.resumeProducing()
        yield wait_for(lambda: s.transport.value().count(b"Getscript completed") == 5)

    @defer.inlineCallbacks
    def test_no_home(self):
        conf = write_conf(os.path.join(self.dir, "c.conf"))
        s = Session("", conf)
        got = yield s.run([b"LISTSCRIPTS", b'PUTSCRIPT "a" ' + lit("keep;")])
        self.assertEqual(got[0], [b'OK "Listscripts completed."'])
        self.assertTrue(got[1][0].startswith(b'NO "No Sieve script storage'))


class GrammarTests(unittest.SynchronousTestCase):
    def test_scan_bounds(self):
        self.assertEqual(scan(b"NOOP", 10, 10).kind, "more")
        self.assertEqual(scan(b"NOOP\r\n", 10, 10).data, b"NOOP")
        self.assertEqual(scan(b"x" * 20, 10, 10).kind, "overflow")
        found = scan(b'PUTSCRIPT "a" {50+}\r\n', 100, 10)
        self.assertEqual((found.kind, found.skip, found.literal), ("overflow", 50, True))
        self.assertEqual(scan(b'PUTSCRIPT "a" {5+}\r\nkeep;\r\n', 100, 10).kind, "command")

    def test_arguments(self):
        self.assertEqual(parse_arguments(b' "a\\"b" {3+}\r\nx\r\n 12'), [b'a"b', b"x\r\n", b"12"])
        for bad in (b' "a', b' "a\\n"', b' "\xff"', b" (x)", b' "a""b"'):
            self.assertRaises(GrammarError, parse_arguments, bad)
