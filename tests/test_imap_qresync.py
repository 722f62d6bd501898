"""QRESYNC (RFC 7162 §3.2) in IMAPSession: ENABLE, SELECT (QRESYNC …),
VANISHED, UID FETCH (CHANGEDSINCE n VANISHED) and [CLOSED]; over a
StringTransport on the modseq fake, and end to end with imapclient on the
Maildir storage."""

from __future__ import annotations

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests import test_imap_e2e
from tests.test_imap_condstore import client, filled


class QresyncTests(unittest.TestCase):
    def setUp(self):
        self.storage = filled(5)
        self.c = client(self.storage)

    def test_enable_implies_condstore(self):
        out = self.c.send(b"e ENABLE QRESYNC\r\n")
        self.assertEqual(out, b"* ENABLED QRESYNC\r\ne OK Enabled.\r\n")
        self.assertTrue(self.c.session.condstore)

    def test_select_qresync_needs_enable(self):
        out = self.c.send(b"s SELECT INBOX (QRESYNC (1234 1))\r\n")
        self.assertTrue(out.startswith(b"s BAD"), out)

    def test_select_qresync_reports_vanished_and_changes(self):
        self.storage.expunge_elsewhere("INBOX", 2)  # modseq 7
        self.storage.set_flags_elsewhere("INBOX", 4, {"\\Seen"})  # modseq 8
        self.c.send(b"e ENABLE QRESYNC\r\n")
        out = self.c.send(b"s SELECT INBOX (QRESYNC (1234 6))\r\n")
        lines = out.split(b"\r\n")
        self.assertIn(b"* OK [HIGHESTMODSEQ 8] Highest", lines)
        i = lines.index(b"* VANISHED (EARLIER) 2")
        self.assertEqual(lines[i + 1], b"* 3 FETCH (UID 4 FLAGS (\\Recent \\Seen) MODSEQ (8))")
        self.assertEqual(lines[i + 2], b"s OK [READ-WRITE] Select completed.")

    def test_known_uids_limit_vanished(self):
        self.storage.expunge_elsewhere("INBOX", 2)
        self.storage.expunge_elsewhere("INBOX", 5)
        self.c.send(b"e ENABLE QRESYNC\r\n")
        out = self.c.send(b"s EXAMINE INBOX (QRESYNC (1234 6 1:4 (1:4 1:4)))\r\n")
        self.assertIn(b"* VANISHED (EARLIER) 2\r\n", out)
        self.assertNotIn(b"FETCH", out)

    def test_uidvalidity_mismatch_is_a_plain_select(self):
        self.storage.expunge_elsewhere("INBOX", 2)
        self.c.send(b"e ENABLE QRESYNC\r\n")
        out = self.c.send(b"s SELECT INBOX (QRESYNC (999 1))\r\n")
        self.assertNotIn(b"VANISHED", out)
        self.assertIn(b"* OK [UIDVALIDITY 1234]", out)

    def test_vanished_replaces_expunge_and_closed(self):
        self.c.send(b"e ENABLE QRESYNC\r\ns SELECT INBOX\r\n")
        self.c.send(b"t STORE 2:3 +FLAGS.SILENT (\\Deleted)\r\n")
        out = self.c.send(b"x EXPUNGE\r\n")
        self.assertEqual(out, b"* VANISHED 2:3\r\nx OK [HIGHESTMODSEQ 10] Expunge completed.\r\n")
        self.storage.expunge_elsewhere("INBOX", 5)
        self.assertEqual(self.c.send(b"n NOOP\r\n"), b"* VANISHED 5\r\nn OK NOOP completed.\r\n")
        out = self.c.send(b"s SELECT INBOX\r\n")
        self.assertTrue(out.startswith(b"* OK [CLOSED] Previous mailbox closed.\r\n"), out)

    def test_uid_fetch_vanished(self):
        self.c.send(b"e ENABLE QRESYNC\r\ns SELECT INBOX\r\n")
        self.storage.expunge_elsewhere("INBOX", 3)
        self.storage.set_flags_elsewhere("INBOX", 1, {"\\Flagged"})
        out = self.c.send(b"f UID FETCH 1:* FLAGS (CHANGEDSINCE 6 VANISHED)\r\n")
        # The view is stale until the command ends: the changes come as
        # unsolicited VANISHED and FETCH (with UID and MODSEQ) before the OK.
        self.assertEqual(out, b"* VANISHED 3\r\n"
                              b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Flagged) MODSEQ (8))\r\n"
                              b"f OK Fetch completed.\r\n")
        out = self.c.send(b"f UID FETCH 1:* FLAGS (CHANGEDSINCE 6 VANISHED)\r\n")
        self.assertEqual(out, b"* VANISHED (EARLIER) 3\r\n"
                              b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Flagged) MODSEQ (8))\r\n"
                              b"f OK Fetch completed.\r\n")


class QresyncE2ETests(unittest.TestCase):
    """Reconnect with imapclient and resync: exact VANISHED and flags."""

    setUp = test_imap_e2e.E2ETests.setUp
    tearDown = test_imap_e2e.E2ETests.tearDown

    @defer.inlineCallbacks
    def test_resync_after_reconnect(self):
        import imapclient

        def run():
            a = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            for i in range(6):
                a.append("INBOX", b"Subject: m%d\r\n\r\nx\r\n" % i)
            a.enable("QRESYNC")
            info = a.select_folder("INBOX")
            validity, modseq = info[b"UIDVALIDITY"], info[b"HIGHESTMODSEQ"]
            a.logout()
            b = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            b.select_folder("INBOX")
            b.add_flags([2], [b"\\Seen"])
            b.delete_messages([3, 5])
            b.expunge()
            b.logout()
            c = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            c.enable("QRESYNC")
            tag = c._imap._command("SELECT", "INBOX",
                                   f"(QRESYNC ({validity} {modseq} 1:6))")
            typ, data = c._imap._command_complete("SELECT", tag)
            untagged = dict(c._imap.untagged_responses)
            c.logout()
            return typ, untagged

        typ, untagged = yield threads.deferToThread(run)
        self.assertEqual(typ, "OK")
        self.assertEqual(untagged.get("VANISHED"), [b"(EARLIER) 3,5"])
        fetched = untagged.get("FETCH")
        self.assertEqual(len(fetched), 1, fetched)
        self.assertRegex(fetched[0], rb"^2 \(UID 2 FLAGS \((\\Recent )?\\Seen\) MODSEQ \(\d+\)\)$")
