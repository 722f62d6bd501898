"""Sieve at delivery (pydovecot.sieve.deliver) on a real Maildir: script
discovery, the compiled cache, failures (implicit keep and the user's
log), outgoing mail with Pigeonhole's envelope senders and loop checks,
response tracking, and a hostile script sharing the reactor."""

from __future__ import annotations

import email
import json
import os
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from pydovecot.mailproc import main as mailproc
from pydovecot.sieve import binary
from pydovecot.sieve.deliver import SieveDelivery, parse_extensions
from pydovecot.sieve.validate import DEFAULT_EXTENSIONS
from pydovecot.storage import open_storage
from tests.storage_now import now

MESSAGE = (b"Return-Path: <bob@example.org>\r\n"
           b"From: Bob <bob@example.org>\r\nTo: alice@example.com\r\n"
           b"Subject: Lunch?\r\nMessage-ID: <lunch@example.org>\r\n\r\nAt noon?\r\n")


class Config:
    def __init__(self, plugin: dict | None = None, **settings):
        self.plugin = plugin or {}
        self.settings = {"mail_location": "maildir:~/Maildir",
                         "mail_plugins": "sieve", **settings}

    def get(self, key, protocol=None):  # noqa: ARG002
        return self.settings.get(key, "")


class DeliveryTests(TestCase):
    def setUp(self) -> None:
        self.home = tempfile.mkdtemp(prefix="sieve-deliver-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.storage = open_storage("alice", f"maildir:{self.home}/Maildir", self.home)
        self.sent: list[tuple[str, list[str], bytes]] = []

    def script(self, text: str, name: str = ".dovecot.sieve") -> str:
        path = os.path.join(self.home, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def send(self, sender, recipients, data):
        self.sent.append((sender, recipients, data))
        return defer.succeed(None)

    def delivery(self, plugin: dict | None = None, sender: str = "bob@example.org",
                 recipient: str = "alice@example.com", **settings) -> SieveDelivery:
        return SieveDelivery(Config(plugin, **settings), self.storage, "alice",
                             {"home": self.home}, sender, recipient, "s1",
                             "", "lmtp(alice)", send=self.send)

    def boxes(self) -> dict[str, int]:
        storage = now(self.storage)
        return {m.name: storage.status(m.name).messages for m in storage.list_mailboxes()}

    @defer.inlineCallbacks
    def test_personal_script_cache_and_rebuild(self) -> None:
        target = self.script('require ["fileinto", "mailbox"]; fileinto :create "One";',
                             "sieve/main.sieve")
        os.symlink("sieve/main.sieve", os.path.join(self.home, ".dovecot.sieve"))
        with open(os.path.join(self.home, "sieve", "main.svbin"), "wb") as f:
            f.write(b"pigeonhole's")
        outcome = yield self.delivery().run(MESSAGE)
        self.assertEqual(outcome.mailbox, "One")
        cache = os.path.join(self.home, "sieve", "main.pdvbin")
        with open(cache) as f:
            doc = json.load(f)
        self.assertEqual(doc["format"], binary.FORMAT)
        with open(os.path.join(self.home, "sieve", "main.svbin"), "rb") as f:
            self.assertEqual(f.read(), b"pigeonhole's")  # never touched
        # The cached form is used while the script is unchanged ...
        doc["compiled"]["commands"][0]["p"] = ["FromCache"]
        with open(cache, "w") as f:
            json.dump(doc, f)
        outcome = yield self.delivery().run(MESSAGE)
        self.assertEqual(outcome.mailbox, "FromCache")
        # ... and rebuilt when it changes; a broken cache is ignored.
        with open(target, "w") as f:
            f.write('require ["fileinto", "mailbox"]; fileinto :create "Two";')
        outcome = yield self.delivery().run(MESSAGE)
        self.assertEqual(outcome.mailbox, "Two")
        with open(cache, "w") as f:
            f.write("{[")
        outcome = yield self.delivery().run(MESSAGE)
        self.assertEqual(outcome.mailbox, "Two")
        self.assertEqual(self.boxes(), {"INBOX": 0, "One": 1, "FromCache": 1, "Two": 2})

    @defer.inlineCallbacks
    def test_compile_and_runtime_failures_keep_and_log(self) -> None:
        self.script('keep;\nif header :is "x" "y" {\n  frobnicate;\n}\n')
        outcome = yield self.delivery().run(MESSAGE)
        self.assertEqual(outcome.mailbox, "INBOX")
        with open(os.path.join(self.home, ".dovecot.sieve.log")) as f:
            text = f.read()
        self.assertIn("sieve: info: started log at", text)
        self.assertIn(".dovecot: line 3, column 3: error: unknown command 'frobnicate'",
                      text)
        self.assertIn("error: validation failed.", text)
        self.flushLoggedErrors()
        self.script('require "variables"; set "a" "bad"; discard; redirect "${a}";')
        outcome = yield self.delivery().run(MESSAGE)
        self.assertEqual(outcome.mailbox, "INBOX")  # discard undone: implicit keep
        self.assertEqual(self.boxes(), {"INBOX": 2})
        with open(os.path.join(self.home, ".dovecot.sieve.log")) as f:
            self.assertIn("execution failed.", f.read())

    @defer.inlineCallbacks
    def test_vacation_reply_and_tracking(self) -> None:
        self.script('require "vacation"; vacation :days 2 "Back on Monday.";')
        yield self.delivery().run(MESSAGE)
        yield self.delivery().run(MESSAGE.replace(b"<lunch@", b"<second@"))
        self.assertEqual(len(self.sent), 1)  # one reply per sender and period
        sender, rcpts, data = self.sent[0]
        self.assertEqual((sender, rcpts), ("", ["bob@example.org"]))
        reply = email.message_from_bytes(data)
        self.assertEqual(reply["Auto-Submitted"], "auto-replied (vacation)")
        self.assertEqual(reply["Subject"], "Auto: Lunch?")
        self.assertEqual(reply["In-Reply-To"], "<lunch@example.org>")
        self.assertEqual(reply["To"], "<bob@example.org>")
        self.assertEqual(reply["From"], "<alice@example.com>")
        self.assertIn("Back on Monday.", reply.get_payload())
        self.assertTrue(os.path.exists(os.path.join(self.home, ".pydovecot.lda-dupes")))
        self.assertEqual(self.boxes(), {"INBOX": 2})
        # Another :handle is another response.
        self.script('require "vacation"; vacation :handle "other" "x";')
        yield self.delivery().run(MESSAGE)
        self.assertEqual(len(self.sent), 2)
        # sieve_vacation_default_subject_template (Pigeonhole's %{subject}).
        self.script('require "vacation"; vacation :handle "third" "x";')
        yield self.delivery({"sieve_vacation_default_subject_template": "Away (%{subject})"}
                            ).run(MESSAGE)
        self.assertEqual(email.message_from_bytes(self.sent[-1][2])["Subject"],
                         "Away (Lunch?)")
        del self.sent[-1]
        # Null sender and auto-submitted mail get none.
        yield self.delivery(sender="").run(MESSAGE)
        yield self.delivery(sender="carol@example.org").run(
            MESSAGE.replace(b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:"))
        self.assertEqual(len(self.sent), 2)

    @defer.inlineCallbacks
    def test_redirect_envelope_and_loops(self) -> None:
        self.script('redirect "fwd@example.net";')
        yield self.delivery().run(MESSAGE)
        sender, rcpts, data = self.sent[0]
        self.assertEqual((sender, rcpts), ("bob@example.org", ["fwd@example.net"]))
        self.assertTrue(data.startswith(b"X-Sieve: pydovecot Sieve\r\n"
                                        b"X-Sieve-Redirected-From: alice@example.com\r\n"
                                        b"From: Bob"))  # Return-Path dropped
        # The same message again (same Message-ID): not forwarded twice.
        yield self.delivery().run(MESSAGE)
        self.assertEqual(len(self.sent), 1)
        # A message we redirected before comes back: a loop.
        looped = b"X-Sieve-Redirected-From: alice@example.com\r\n" + MESSAGE.replace(
            b"<lunch@", b"<loop@")
        yield self.delivery().run(looped)
        self.assertEqual(len(self.sent), 1)
        other = MESSAGE.replace(b"<lunch@", b"<o@")
        yield self.delivery({"sieve_redirect_envelope_from": "recipient"}).run(other)
        self.assertEqual(self.sent[-1][0], "alice@example.com")
        yield self.delivery(sender="").run(MESSAGE.replace(b"<lunch@", b"<n@"))
        self.assertEqual(self.sent[-1][0], "")  # a bounce stays a bounce
        self.assertEqual(self.boxes(), {"INBOX": 0})

    @defer.inlineCallbacks
    def test_reject(self) -> None:
        self.script('require "reject"; reject "Not here.";')
        outcome = yield self.delivery().run(MESSAGE)
        self.assertEqual(outcome.mailbox, "")
        sender, rcpts, data = self.sent[0]
        self.assertEqual((sender, rcpts), ("", ["bob@example.org"]))
        self.assertIn(b"Your message to <alice@example.com> was automatically rejected:\r\n"
                      b"Not here.", data)
        self.assertIn(b"Auto-Submitted: auto-replied (rejected)", data)
        self.assertIn(b"Original-Message-ID: <lunch@example.org>", data)
        self.assertEqual(self.boxes(), {"INBOX": 0})

    @defer.inlineCallbacks
    def test_before_after_default_and_includes(self) -> None:
        before = self.script('require ["imap4flags"]; addflag "$Before";', "global/before.sieve")
        after = self.script('require ["fileinto", "mailbox"]; fileinto :create "After";',
                            "global/after.sieve")
        self.script('require "include"; include :global "common"; include :personal "mine";',
                    "default.sieve")
        self.script('require "imap4flags"; addflag "$Common";', "global/common.sieve")
        self.script('require ["fileinto", "copy", "mailbox"]; fileinto :copy :create "Mine";',
                    "sieve/mine.sieve")
        plugin = {"sieve_before": before, "sieve_after": after,
                  "sieve_default": os.path.join(self.home, "default.sieve"),
                  "sieve_global": os.path.join(self.home, "global")}
        outcome = yield self.delivery(plugin).run(MESSAGE)
        self.assertEqual(self.boxes(), {"INBOX": 0, "Mine": 1, "After": 1})
        self.assertEqual(outcome.stored, ["Mine", "After"])
        # A before script that discards: nothing after it runs.
        self.script("discard;", "global/before.sieve")
        yield self.delivery(plugin).run(MESSAGE)
        self.assertEqual(self.boxes(), {"INBOX": 0, "Mine": 1, "After": 1})

    @defer.inlineCallbacks
    def test_hostile_script_shares_the_reactor(self) -> None:
        parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\n%s\r\n" % (b"y" * 4000)
                         for _ in range(1000))
        big = (b"From: x@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
               + parts + b"--b--\r\n")
        self.script('require ["foreverypart", "body"]; foreverypart { '
                    'if body :raw :contains "nothing" { keep; } }')
        ticks = []
        loop = task.LoopingCall(lambda: ticks.append(time.monotonic()))
        loop.start(0.01)
        self.addCleanup(loop.stop)
        started = time.process_time()
        outcome = yield self.delivery({"sieve_max_cpu_time": "1s"}).run(big)
        self.assertEqual(outcome.mailbox, "INBOX")  # CPU limit: implicit keep
        self.assertLess(time.process_time() - started, 5)
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        self.assertGreater(len(ticks), 10)
        self.assertLess(max(gaps), 0.1)  # the brief's 100 ms rule for other sessions
        self.flushLoggedErrors()

    def test_extensions_setting(self) -> None:
        self.assertIn("editheader", parse_extensions("+editheader"))
        self.assertNotIn("vacation", parse_extensions("-vacation"))
        self.assertEqual(parse_extensions("fileinto reject"), {"fileinto", "reject"})
        self.assertEqual(parse_extensions(""), DEFAULT_EXTENSIONS)


class FakeSMTP(LineReceiver):
    """Just enough of an MTA for smtplib: records the transaction."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.data: list[bytes] | None = None
        self.sendLine(b"220 mta ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.data is not None:
            if line == b".":
                self.factory.messages.append(b"\r\n".join(self.data))
                self.data = None
                self.sendLine(b"250 2.0.0 queued")
            else:
                self.data.append(line)
            return
        verb = line[:4].upper()
        self.factory.commands.append(line)
        if verb == b"DATA":
            self.data = []
            self.sendLine(b"354 go on")
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 ok")


class SubmissionHostTests(TestCase):
    @defer.inlineCallbacks
    def test_vacation_through_submission_host(self) -> None:
        factory = Factory.forProtocol(FakeSMTP)
        factory.commands, factory.messages = [], []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        home = tempfile.mkdtemp(prefix="sieve-smtp-")
        self.addCleanup(shutil.rmtree, home, True)
        with open(os.path.join(home, ".dovecot.sieve"), "w") as f:
            f.write('require "vacation"; vacation "Away.";')
        storage = open_storage("alice", f"maildir:{home}/Maildir", home)
        config = Config(submission_host=f"127.0.0.1:{port.getHost().port}")
        yield SieveDelivery(config, storage, "alice", {"home": home}, "bob@example.org",
                            "alice@example.com").run(MESSAGE)
        self.assertIn(b"mail FROM:<>", factory.commands)
        self.assertIn(b"rcpt TO:<bob@example.org>", factory.commands)
        self.assertIn(b"Auto-Submitted: auto-replied (vacation)", factory.messages[0])


class MailProcessTests(TestCase):
    @defer.inlineCallbacks
    def test_deliver_goes_through_sieve_when_the_plugin_is_on(self) -> None:
        home = tempfile.mkdtemp(prefix="sieve-mailproc-")
        self.addCleanup(shutil.rmtree, home, True)
        with open(os.path.join(home, ".dovecot.sieve"), "w") as f:
            f.write('require ["fileinto", "envelope", "mailbox"]; if envelope :is "to" '
                    '"alice+x@example.com" { fileinto :create "X"; }')
        process = mailproc.MailProcess(Config(sendmail_path="/bin/false"))
        fd = os.memfd_create("message")
        os.write(fd, MESSAGE)
        result = yield defer.maybeDeferred(
            mailproc.MailLocator(process).deliver, fd=fd, user="alice",
            fields=json.dumps({"home": home}), session="s", sender="bob@example.org",
            recipient="alice+x@example.com")
        self.assertEqual(result["mailbox"], "X")
        # Plugin off: INBOX (the local storage's answer is already in).
        process = mailproc.MailProcess(Config(mail_plugins=""))
        fd = os.memfd_create("message")
        os.write(fd, MESSAGE)
        result = self.successResultOf(mailproc.MailLocator(process).deliver(
            fd=fd, user="alice", fields=json.dumps({"home": home + "/2"}), session="s"))
        self.assertEqual(result["mailbox"], "INBOX")



class DefaultMailboxAndErejectTests(TestCase):
    """As Dovecot with ``lmtp_save_to_detail_mailbox``: the implicit keep
    goes to the +detail mailbox (checked against Dovecot's LMTP), and an
    ``ereject`` at LMTP is that recipient's ``550 5.7.1`` (RFC 5429 2.1;
    Pigeonhole 0.5 has no ereject)."""

    def run_delivery(self, script: str, recipient: str):
        home = tempfile.mkdtemp(prefix="sieve-keep-")
        self.addCleanup(shutil.rmtree, home, True)
        with open(os.path.join(home, ".dovecot.sieve"), "w") as f:
            f.write(script)
        process = mailproc.MailProcess(Config(
            sendmail_path="/bin/false", recipient_delimiter="+",
            lmtp_save_to_detail_mailbox="yes", lda_mailbox_autocreate="yes"))
        fd = os.memfd_create("message")
        os.write(fd, MESSAGE)
        return defer.maybeDeferred(
            mailproc.MailLocator(process).deliver, fd=fd, user="alice",
            fields=json.dumps({"home": home}), session="s", sender="bob@example.org",
            recipient=recipient)

    @defer.inlineCallbacks
    def test_implicit_keep_into_the_detail_mailbox(self) -> None:
        result = yield self.run_delivery('require "fileinto"; if false { stop; }',
                                         "alice+Lists@example.com")
        self.assertEqual(result["mailbox"], "Lists")

    @defer.inlineCallbacks
    def test_ereject_is_the_recipients_reply(self) -> None:
        from pydovecot.master.protocol import DeliveryFailed

        with self.assertRaises(DeliveryFailed) as caught:
            yield self.run_delivery('require "ereject"; ereject "Go\r\naway";',
                                    "alice@example.com")
        self.assertEqual(caught.exception.reply, "550 5.7.1 Go away")
