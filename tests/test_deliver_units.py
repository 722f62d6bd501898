"""Unit tests beside tests/test_isolation_deliver.py: path expansion, home
checks, LMTP flow control and replies, the lmtp auth client's timeout, the
mail process's contained responders and codec preload."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from pydovecot.config.variables import UnsafePathValue, expand_path, fixed_prefix
from pydovecot.lmtp.process import AuthUserdbClient
from pydovecot.lmtp.protocol import LMTPFactory
from pydovecot.log import format_line
from pydovecot.mailproc import main as mailproc
from pydovecot.master.protocol import Deliver, DeliveryFailed
from pydovecot.master.service import HomeRefused, checked_home


class PathExpansionTests(unittest.SynchronousTestCase):
    def test_user_values_stay_in_their_component(self) -> None:
        self.assertEqual(expand_path("/v/%d/%Ln", {"user": "Alice@Dom"}), "/v/Dom/alice")
        self.assertEqual(expand_path("%h/Maildir", {"home": "/a/b"}), "/a/b/Maildir")
        for user in ("../../etc/x@dom", "a/b", "..", ".@.", "x\x00y", "x\ry", "x@a/b",
                     "x@..", "a..b"):
            with self.assertRaises(UnsafePathValue, msg=repr(user)):
                expand_path("/v/%d/%n", {"user": user})
        # %{long} forms are checked too; a template's own text is not.
        with self.assertRaises(UnsafePathValue):
            expand_path("/v/%{username}", {"user": "a/b"})
        self.assertEqual(expand_path("/v/../%n", {"user": "a"}), "/v/../a")

    def test_fixed_prefix(self) -> None:
        self.assertEqual(fixed_prefix("/var/vmail/%d/%n"), "/var/vmail")
        self.assertEqual(fixed_prefix("/srv/u%n"), "/srv")
        self.assertEqual(fixed_prefix("%h"), "")
        self.assertEqual(fixed_prefix("/home/"), "/home")

    def test_userdb_homes_must_be_absolute_and_normalised(self) -> None:
        self.assertEqual(checked_home("/var/vmail/dom/alice"), "/var/vmail/dom/alice")
        self.assertEqual(checked_home("/var/vmail/alice/"), "/var/vmail/alice")
        for home in ("relative/x", "/v/../etc", "/v/./x", "/v//x", "/v/a\nb", "/v/\x00"):
            with self.assertRaises(HomeRefused, msg=repr(home)):
                checked_home(home)


class Backend:
    """A delivery backend whose deliveries wait until the test fires them."""

    def __init__(self):
        self.pending: list[defer.Deferred] = []
        self.failure: Exception | None = None

    def lookup(self, address):
        return defer.succeed({"user": address.split("@")[0]})

    def deliver(self, user, fields, message_fd, sender, recipient, session="", msgid="",
                orig_recipient=None):
        if self.failure is not None:
            return defer.fail(self.failure)
        d = defer.Deferred()
        self.pending.append(d)
        return d


class LMTPFlowTests(unittest.SynchronousTestCase):
    def connect(self, backend) -> tuple:
        factory = LMTPFactory(backend, "mx.example.org", 1 << 20, clock=Clock())
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_input_is_paused_while_a_delivery_is_in_flight(self) -> None:
        backend = Backend()
        proto, transport = self.connect(backend)
        proto.dataReceived(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@d>\r\nDATA\r\n"
                           b"Message-ID: <m\x1b[31m@x>\r\n\r\nhi\r\n.\r\nNOOP\r\n")
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(b"NOOP\r\n" * 10)  # what was in flight before the pause
        self.assertEqual(len(backend.pending), 1)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        backend.pending[0].callback(None)
        self.assertEqual(transport.producerState, "producing")
        out = transport.value()
        self.assertIn(b" Saved\r\n", out)
        self.assertEqual(out.count(b"250 2.0.0 OK\r\n"), 11)
        lines = [format_line(e, "lmtp") for e in events if "msgid" in e]
        self.assertEqual(len(lines), 1)
        self.assertIn("msgid=<m?[31m@x>", lines[0])  # sanitised, one line

    def test_delivery_failed_is_that_recipients_reply(self) -> None:
        backend = Backend()
        backend.failure = DeliveryFailed("452 4.2.2 Not enough disk space")
        proto, transport = self.connect(backend)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto.dataReceived(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@d>\r\nDATA\r\nhi\r\n.\r\n")
        self.assertIn(b"452 4.2.2 <u@d> Not enough disk space\r\n", transport.value())
        self.assertEqual([e for e in events if e.get("log_failure")], [])


class AuthClientTests(unittest.SynchronousTestCase):
    def test_a_call_authd_never_answers_times_out(self) -> None:
        clock = Clock()
        client = AuthUserdbClient("/nonexistent", timeout=5, clock=clock)

        class Stuck:
            def callRemote(self, command, **kwargs):
                return defer.Deferred()

        client.protocol = Stuck()
        d = client.callRemote(Deliver)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, TimeoutError)


class MailProcessTests(unittest.SynchronousTestCase):
    def test_every_codec_is_preloaded(self) -> None:
        names = mailproc.codec_names()
        for name in ("utf_16_be", "iso2022_jp", "koi8_r", "cp866", "big5hkscs", "iso8859_7",
                     "shift_jis", "utf_7", "idna"):
            self.assertIn(name, names)
        # Only Windows-only codecs (and the aliases table itself) are missing.
        self.assertLessEqual(set(mailproc.preload_codecs()), {"mbcs", "oem", "cp65001",
                                                             "aliases"})

    def test_failed_save_is_delivery_failed_and_the_home_is_made(self) -> None:
        class Config:
            def get(self, key, protocol=None):
                return "maildir:~/Maildir" if key == "mail_location" else ""

        root = tempfile.mkdtemp()
        self.addCleanup(os.system, f"chmod -R u+w {root}; rm -rf {root}")
        process = mailproc.MailProcess(Config())
        locator = mailproc.MailLocator(process)
        home = os.path.join(root, "dom", "alice")

        def deliver(user, fields):
            r = os.memfd_create("message")
            os.write(r, b"Subject: x\r\n\r\nhi\r\n")
            return locator.deliver(fd=r, user=user, fields=json.dumps(fields), session="s")

        self.assertEqual(self.successResultOf(deliver("alice", {"home": home}))["mailbox"],
                         "INBOX")
        self.assertEqual(os.stat(home).st_mode & 0o777, 0o700)
        with self.assertRaises(DeliveryFailed) as e:
            deliver("carol", {"home": home + "2", "mail": "mdbox:~/mdbox"})
        self.assertTrue(e.exception.reply.startswith("451 4.3.0"))
        # An undeclared error is contained: logged, answered as a declared one.
        self.patch(process, "deliver", lambda **kw: 1 / 0)
        with self.assertRaises(RuntimeError):
            locator.deliver(fd=0, user="x", fields="{}", session="s")
        self.flushLoggedErrors(ZeroDivisionError)


class DiskNameTests(unittest.SynchronousTestCase):
    def test_undecodable_directory_names_are_skipped_not_errors(self) -> None:
        from pydovecot.storage.names import from_dirname

        self.assertEqual(from_dirname(".Entw&APw-rfe"), "Entwürfe")
        # Modified UTF-7 storage: raw UTF-8, broken shifts, bytes that are
        # not UTF-8 at all.
        for raw in (b".Caf\xc3\xa9", b".&Jjo", b".\xff\xfe", b".A&AOk-.\x80", b".&AOk"):
            self.assertIsNone(from_dirname(os.fsdecode(raw)), raw)
        # UTF-8 storage (:UTF-8): real UTF-8 is a name, invalid UTF-8 is not.
        self.assertEqual(from_dirname(os.fsdecode(b".Caf\xc3\xa9"), utf8=True), "Café")
        for raw in (b".\xff\xfe", b".A.\x80"):
            self.assertIsNone(from_dirname(os.fsdecode(raw), utf8=True), raw)
