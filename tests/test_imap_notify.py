"""NOTIFY (RFC 5465): parsing, STATUS/LIST/EXISTS pushes, NOTIFY NONE and
NOTIFICATIONOVERFLOW; over a StringTransport on the modseq fake, and end
to end with two raw clients on the Maildir storage."""

from __future__ import annotations

import io

from twisted.internet import defer, task, threads
from twisted.trial import unittest

from pydovecot.imap import notify
from pydovecot.imap.parser import ParseError, RawCommand, tokenize
from pydovecot.imap.session import decode_mailbox
from tests import test_imap_e2e
from tests.test_imap_concurrency import Raw
from tests.test_imap_condstore import client, filled, message

SET = (b"NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange)) "
       b"(PERSONAL (MailboxName SubscriptionChange MessageNew MessageExpunge))")


def args(line: bytes):
    return tokenize(RawCommand([(line, None)]))[2:]


class ParseTests(unittest.TestCase):
    def test_set(self):
        spec = notify.parse(args(b"a " + SET), decode_mailbox)
        self.assertEqual([f.kind for f in spec.filters], ["SELECTED", "PERSONAL"])
        self.assertEqual(spec.filters[0].events, {"MessageNew", "MessageExpunge", "FlagChange"})
        self.assertIsNone(notify.parse(args(b"a NOTIFY NONE"), decode_mailbox))
        spec = notify.parse(args(b'a NOTIFY SET STATUS (MAILBOXES (INBOX "a b") (MessageNew '
                                 b"MessageExpunge)) (SUBTREE Work NONE)"), decode_mailbox)
        self.assertTrue(spec.status)
        self.assertEqual(spec.filters[0].names, ["INBOX", "a b"])
        self.assertEqual(spec.filters[1].names, ["Work"])

    def test_errors(self):
        for bad in (b"a NOTIFY", b"a NOTIFY SET", b"a NOTIFY SET (SELECTED (MessageNew))",
                    b"a NOTIFY SET (SELECTED (FlagChange))", b"a NOTIFY SET (FOO (MessageNew))",
                    b"a NOTIFY SET (PERSONAL (MessageNew (UID) MessageExpunge))",
                    b"a NOTIFY SET (SELECTED (MailboxName))",
                    b"a NOTIFY SET (SELECTED NONE) (SELECTED-DELAYED NONE)"):
            self.assertRaises(ParseError, notify.parse, args(bad), decode_mailbox)
        self.assertRaises(notify.BadEvent, notify.parse,
                          args(b"a NOTIFY SET (PERSONAL (AnnotationChange))"), decode_mailbox)


class NotifySessionTests(unittest.TestCase):
    def setUp(self):
        self.storage = filled(2)
        self.storage.create("Archive")
        self.c = client(self.storage)
        self.clock = task.Clock()
        self.c.session.clock = self.clock
        self.other = client(self.storage)

    def test_badevent(self):
        out = self.c.send(b"n NOTIFY SET (PERSONAL (ServerMetadataChange))\r\n")
        self.assertTrue(out.startswith(b"n NO [BADEVENT "), out)

    def test_pushes_between_commands(self):
        self.c.send(b"s SELECT INBOX\r\n")
        self.assertEqual(self.c.send(b"n " + SET + b"\r\n"), b"n OK NOTIFY completed.\r\n")
        self.storage.append("Archive", message(9))
        self.assertEqual(self.c.take(), b"* STATUS Archive (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1234 "
                                        b"UNSEEN 1)\r\n")
        self.storage.append("INBOX", message(10))
        self.assertEqual(self.c.take(), b"* 3 EXISTS\r\n* 3 RECENT\r\n")
        self.storage.set_flags_elsewhere("INBOX", 1, {"\\Seen"})
        self.assertEqual(self.c.take(), b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen))\r\n")
        self.other.send(b"c CREATE Work\r\n")
        self.assertEqual(self.c.take(), b'* LIST () "/" Work\r\n')
        self.other.send(b"c SUBSCRIBE Work\r\n")
        self.assertEqual(self.c.take(), b'* LIST (\\Subscribed) "/" Work\r\n')
        self.other.send(b"c RENAME Work Play\r\n")
        self.assertEqual(self.c.take(), b'* LIST () "/" Play ("OLDNAME" ("Work"))\r\n')
        self.storage.append("Play", message(11))  # the renamed mailbox is watched
        self.assertIn(b"* STATUS Play (MESSAGES 1 ", self.c.take())
        self.other.send(b"c DELETE Play\r\n")
        self.assertEqual(self.c.take(), b'* LIST (\\NonExistent) "/" Play\r\n')
        self.assertEqual(self.c.send(b"n NOTIFY NONE\r\n"), b"n OK NOTIFY completed.\r\n")
        self.storage.append("Archive", message(12))
        self.assertEqual(self.c.take(), b"")

    def test_waits_while_a_command_runs(self):
        self.c.send(b"s SELECT INBOX\r\nn " + SET + b"\r\n")
        self.c.session._busy = True  # as during a long FETCH
        self.storage.expunge_elsewhere("INBOX", 1)
        self.storage.append("Archive", message(9))
        self.assertEqual(self.c.take(), b"")
        self.c.session._busy = False
        self.clock.advance(notify.RETRY)
        self.assertEqual(self.c.take(), b"* 1 EXPUNGE\r\n* STATUS Archive (MESSAGES 1 UIDNEXT 2 "
                                        b"UIDVALIDITY 1234 UNSEEN 1)\r\n")

    def test_status_option_and_condstore(self):
        self.c.send(b"e ENABLE CONDSTORE\r\n")
        out = self.c.send(b"n NOTIFY SET STATUS (MAILBOXES Archive (MessageNew MessageExpunge))\r\n")
        self.assertEqual(out, b"* STATUS Archive (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 1234 UNSEEN 0 "
                              b"HIGHESTMODSEQ 3)\r\nn OK NOTIFY completed.\r\n")

    def test_overflow(self):
        self.c.send(b"n " + SET + b"\r\n")
        self.c.session.notifier.overflow_limit = 1
        self.c.session._busy = True
        self.storage.create("B")
        self.storage.create("C")
        self.c.session._busy = False
        self.assertEqual(self.c.take(), b"")
        self.assertEqual(self.c.send(b"x NOOP\r\n"),
                         b"* OK [NOTIFICATIONOVERFLOW] Too many notifications.\r\nx OK NOOP completed.\r\n")
        self.assertIsNone(self.c.session.notifier)
        self.storage.append("Archive", message(9))
        self.assertEqual(self.c.take(), b"")


class NotifyE2ETests(unittest.TestCase):
    setUp = test_imap_e2e.E2ETests.setUp
    tearDown = test_imap_e2e.E2ETests.tearDown

    @defer.inlineCallbacks
    def test_other_session_and_delivery(self):
        self.storage.create("Archive")

        def run():
            a, b = Raw(self.addr), Raw(self.addr)
            a.cmd("SELECT INBOX")
            a.cmd(SET.decode())
            b.cmd("CREATE Lists")
            lines = [a.line()]
            b.cmd('APPEND Archive {13+}\r\nSubject: x\r\n\r\n')
            lines.append(a.line())
            self.storage.append("INBOX", io.BytesIO(b"Subject: d\r\n\r\nx\r\n"))  # a delivery
            lines += [a.line(), a.line()]
            a.close()
            b.close()
            return lines

        lines = yield threads.deferToThread(run)
        self.assertEqual(lines[0], b'* LIST () "/" Lists')
        self.assertRegex(lines[1], rb"^\* STATUS Archive \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ "
                                   rb"UNSEEN 1\)$")
        self.assertEqual(lines[2:], [b"* 1 EXISTS", b"* 1 RECENT"])
