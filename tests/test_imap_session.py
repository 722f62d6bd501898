"""Protocol tests for pydovecot.imap.session over a StringTransport."""

from __future__ import annotations

import io

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from pydovecot.imap.session import IMAPSession
from pydovecot.session import SessionContext
from tests.imap_fakes import FakeStorage

MSG1 = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= menu\r\nDate: Wed, 1 May 2024 10:00:00 +0200\r\n"
    b"\r\nToday: soup and bread.\r\n"
)
MSG2 = (
    b"From: Bob <bob@example.org>\nTo: alice@example.com\nCc: carol@example.net\n"
    b"Subject: Re: lunch\nDate: Thu, 2 May 2024 10:00:00 +0000\nX-Prio: high\n"
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    b"w6ltaWxlIHNheXMgaGk=\n"
)


class Client:
    """One session on a StringTransport, fed line by line."""

    def __init__(self, storage: FakeStorage, settings: dict | None = None):
        self.transport = StringTransport()
        self.session = IMAPSession(storage, SessionContext("alice", "s1", settings=settings or {}))
        self.session.clock = Clock()  # autologout and IDLE timers
        self.session.slice = 60.0  # pipelined commands all run at once, however slow
        self.session.makeConnection(self.transport)

    def start(self, tag=b"L", pending=b""):
        self.session.start(tag, pending)
        return self.take()

    def send(self, data: bytes) -> bytes:
        self.session.dataReceived(data)
        return self.take()

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out


class SessionTests(unittest.TestCase):
    def setUp(self):
        self.storage = FakeStorage()
        self.storage.append("INBOX", io.BytesIO(MSG1))
        self.storage.append("INBOX", io.BytesIO(MSG2), ["\\Seen", "$Work"])
        self.c = Client(self.storage)
        self.c.start()

    def select(self, c: Client | None = None) -> bytes:
        return (c or self.c).send(b"s SELECT INBOX\r\n")

    def test_start_and_pending(self):
        c = Client(self.storage)
        c.session.dataReceived(b"b NOOP\r\n")  # before start(): held back
        out = c.start(b"a1", b"a2 CAPABILITY\r\n")
        self.assertTrue(out.startswith(b"a1 OK [CAPABILITY IMAP4rev1 LITERAL+ "))
        self.assertIn(b"\r\n* CAPABILITY IMAP4rev1 ", out)
        self.assertTrue(out.endswith(b"a2 OK Capability completed.\r\nb OK NOOP completed.\r\n"))

    def test_no_login_tag(self):
        c = Client(self.storage)
        self.assertEqual(c.start(None, b""), b"")

    def test_select_responses(self):
        out = self.select()
        self.assertEqual(
            out,
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] "
            b"Flags permitted.\r\n* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n"
            b"* OK [UIDVALIDITY 1234] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
            b"s OK [READ-WRITE] Select completed.\r\n",
        )
        out = self.c.send(b"e EXAMINE inbox\r\n")
        self.assertIn(b"* OK [PERMANENTFLAGS ()]", out)
        self.assertTrue(out.endswith(b"e OK [READ-ONLY] Examine completed.\r\n"))
        self.assertIn(b"NO [NONEXISTENT]", self.c.send(b"x SELECT nosuch\r\n"))
        self.assertEqual(self.c.send(b"f FETCH 1 FLAGS\r\n"), b"f BAD No mailbox selected.\r\n")

    def test_malformed(self):
        out = self.c.send(
            b"\r\n* NOOP\r\nx\r\na UID\r\nb UID FOO 1\r\nc FOO\r\nd LIST (\r\n"
            b'e STATUS INBOX (BOGUS)\r\nf SELECT "unterminated\r\ng SELECT INBOX extra\r\n'
            b"h NOOP\r\n"
        )
        lines = out.split(b"\r\n")
        self.assertEqual(lines[0], b"* BAD Error in IMAP tag.")
        for i, tag in enumerate(b"xabcdefg", 1):
            self.assertTrue(lines[i].startswith(bytes([tag]) + b" BAD "), lines[i])
        self.assertEqual(lines[9], b"h OK NOOP completed.")

    def test_fetch_bad_items(self):
        self.select()
        for cmd in (b"FETCH 1 (BOGUS)", b"FETCH 1 BODY[", b"FETCH 3 FLAGS", b"FETCH 0 FLAGS",
                    b"FETCH x FLAGS", b"FETCH 1 BODY[1.MIME]<0.0>"):
            out = self.c.send(b"t " + cmd + b"\r\n")
            self.assertTrue(out.startswith(b"t BAD "), (cmd, out))

    def test_internal_error(self):
        def boom(name):
            raise RuntimeError("boom")

        self.storage.status = boom
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        out = self.c.send(b"t STATUS INBOX (MESSAGES)\r\nu NOOP\r\n")
        self.assertEqual(
            out,
            b"t NO [SERVERBUG] Internal error occurred. Refer to server log for more "
            b"information.\r\nu OK NOOP completed.\r\n",
        )
        # Logged once, one bounded line with no traceback.
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("STATUS failed: RuntimeError: boom at ", errors[0])
        self.assertNotIn("\n", errors[0])
        self.assertFalse(any("log_failure" in e for e in events))

    def test_line_too_long(self):
        c = Client(self.storage, {"imap_max_line_length": 100})
        c.start()
        out = c.send(b"t1 NOOP " + b"x" * 300)
        self.assertEqual(out, b"t1 BAD [TOOBIG] Command line too long\r\n")
        self.assertEqual(c.send(b"xxx\r\nt2 NOOP\r\n"), b"t2 OK NOOP completed.\r\n")

    def test_append_sync_literal_and_limit(self):
        c = Client(self.storage, {"imap_append_limit": 1000})
        c.start()
        self.assertEqual(c.send(b"a APPEND INBOX (\\Seen) {10}\r\n"), b"+ OK\r\n")
        out = c.send(b"Subject: x\r\n")
        self.assertEqual(out, b"a OK [APPENDUID 1234 3] Append completed.\r\n")
        out = c.send(b'b APPEND INBOX " 5-Jan-2020 10:11:12 +0100" {5+}\r\nhello\r\n')
        self.assertEqual(out, b"b OK [APPENDUID 1234 4] Append completed.\r\n")
        self.assertEqual(
            self.storage.boxes["INBOX"].messages[-1].internaldate.isoformat(),
            "2020-01-05T10:11:12+01:00",
        )
        out = c.send(b"c APPEND INBOX {2000}\r\n")
        self.assertEqual(out, b"c NO [TOOBIG] Literal too large\r\n")
        self.assertIn(b"d NO [TRYCREATE]", c.send(b"d APPEND Nope {1+}\r\nx\r\n"))
        self.assertIn(b"e BAD", c.send(b"e APPEND INBOX (\\Bogus) {1+}\r\nx\r\n"))
        self.assertIn(b"f BAD", c.send(b'f APPEND INBOX "not a date" {1+}\r\nx\r\n'))
        self.assertIn(b"g NO ", c.send(b"g APPEND INBOX {0}\r\n\r\n"))

    def test_fetch_and_seen(self):
        self.select()
        out = self.c.send(b"f FETCH 1 (BODY[HEADER.FIELDS (Subject)])\r\n")
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {39}\r\n"
            b"Subject: =?utf-8?q?caf=C3=A9?= menu\r\n\r\n FLAGS (\\Recent \\Seen))\r\n"
            b"f OK Fetch completed.\r\n",
        )
        out = self.c.send(b"g UID FETCH 2 (RFC822.SIZE BODY.PEEK[TEXT]<0.4>)\r\n")
        self.assertEqual(
            out,
            b"* 2 FETCH (UID 2 RFC822.SIZE 247 BODY[TEXT]<0> {4}\r\nw6lt)\r\n"
            b"g OK Fetch completed.\r\n",
        )
        out = self.c.send(b"h FETCH 2 (RFC822.HEADER RFC822.TEXT)\r\n")
        self.assertIn(b"RFC822.HEADER {", out)
        self.assertIn(b"RFC822.TEXT {22}\r\nw6ltaWxlIHNheXMgaGk=\r\n)", out)

    def test_fetch_readonly_does_not_set_seen(self):
        self.c.send(b"e EXAMINE INBOX\r\n")
        out = self.c.send(b"f FETCH 1 (BODY[TEXT])\r\n")
        self.assertNotIn(b"FLAGS", out)
        self.assertEqual(self.storage.boxes["INBOX"].messages[0].flags, set())

    def test_store(self):
        self.select()
        out = self.c.send(b"a STORE 1:2 +FLAGS (\\Flagged Foo)\r\n")
        self.assertEqual(  # a new keyword: FLAGS first (RFC 3501 7.2.6)
            out,
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work Foo)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work Foo \\*)] "
            b"Flags permitted.\r\n"
            b"* 1 FETCH (FLAGS (\\Recent \\Flagged Foo))\r\n"
            b"* 2 FETCH (FLAGS (\\Recent \\Flagged \\Seen $Work Foo))\r\n"
            b"a OK Store completed.\r\n",
        )
        out = self.c.send(b"b UID STORE 2 -FLAGS.SILENT \\Flagged\r\n")
        self.assertEqual(out, b"b OK Store completed.\r\n")
        out = self.c.send(b"c UID STORE 1 FLAGS (\\Deleted)\r\n")
        self.assertEqual(out, b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Deleted))\r\nc OK Store completed.\r\n")
        self.assertIn(b"d BAD", self.c.send(b"d STORE 1 +FLAGS (\\Recent)\r\n"))
        self.assertIn(b"e BAD", self.c.send(b"e STORE 1 XFLAGS (\\Seen)\r\n"))
        self.c.send(b"x EXAMINE INBOX\r\n")
        self.assertIn(b"f NO [READ-ONLY]", self.c.send(b"f STORE 1 +FLAGS (\\Seen)\r\n"))

    def test_expunge_sequence_numbers(self):
        for i in range(3, 7):
            self.storage.append("INBOX", io.BytesIO(b"Subject: %d\r\n\r\nx" % i))
        self.select()
        self.c.send(b"a STORE 2,4,5 +FLAGS.SILENT (\\Deleted)\r\n")
        out = self.c.send(b"b EXPUNGE\r\n")
        self.assertEqual(out, b"* 5 EXPUNGE\r\n* 4 EXPUNGE\r\n* 2 EXPUNGE\r\nb OK Expunge completed.\r\n")
        self.c.send(b"c STORE 1:3 +FLAGS.SILENT (\\Deleted)\r\n")
        out = self.c.send(b"d UID EXPUNGE 6\r\n")
        self.assertEqual(out, b"* 3 EXPUNGE\r\nd OK Expunge completed.\r\n")
        out = self.c.send(b"e CLOSE\r\n")
        self.assertEqual(out, b"e OK Close completed.\r\n")
        self.assertEqual(len(self.storage.boxes["INBOX"].messages), 0)

    def test_unsolicited_from_other_session(self):
        self.select()
        other = Client(self.storage)
        other.start()
        self.select(other)
        other.send(b"a STORE 1 +FLAGS (\\Deleted \\Answered)\r\na EXPUNGE\r\n")
        self.storage.append("INBOX", io.BytesIO(b"Subject: new\r\n\r\nx"))
        # FETCH must not report the EXPUNGE (RFC 3501 7.4.1).
        out = self.c.send(b"f FETCH 1 FLAGS\r\n")
        self.assertEqual(out, b"* 1 FETCH (FLAGS (\\Recent))\r\nf OK Fetch completed.\r\n")
        out = self.c.send(b"n NOOP\r\n")
        self.assertEqual(out, b"* 1 EXPUNGE\r\n* 2 EXISTS\r\n* 2 RECENT\r\nn OK NOOP completed.\r\n")
        other.send(b"b STORE 1 +FLAGS (\\Flagged)\r\n")
        out = self.c.send(b"n NOOP\r\n")
        self.assertEqual(out, b"* 1 FETCH (UID 2 FLAGS (\\Recent \\Flagged \\Seen $Work))\r\n"
                              b"n OK NOOP completed.\r\n")

    def test_copy_move(self):
        self.storage.create("Archive")
        self.select()
        out = self.c.send(b"c COPY 1:2 Archive\r\n")
        self.assertEqual(out, b"c OK [COPYUID 1234 1:2 1:2] Copy completed.\r\n")
        self.assertIn(b"d NO [TRYCREATE]", self.c.send(b"d COPY 1 Nope\r\n"))
        out = self.c.send(b"m UID MOVE 2 Archive\r\n")
        self.assertEqual(
            out, b"* OK [COPYUID 1234 2 3] Moved UIDs.\r\n* 2 EXPUNGE\r\nm OK Move completed.\r\n"
        )
        self.assertEqual(len(self.storage.boxes["Archive"].messages), 3)
        self.assertEqual(self.c.send(b"u UID COPY 99 Archive\r\n"), b"u OK No messages found.\r\n")

    def test_mailbox_commands(self):
        c = self.c
        self.assertEqual(c.send(b"a CREATE Entw&APw-rfe/x/\r\n"), b"a OK Create completed.\r\n")
        self.assertIn(b"NO [ALREADYEXISTS]", c.send(b"b CREATE inbox\r\n"))
        out = c.send(b'l LIST "" *\r\n')
        self.assertEqual(
            out,
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b'* LIST (\\HasChildren) "/" Entw&APw-rfe\r\n'
            b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe/x\r\n'
            b"l OK List completed.\r\n",
        )
        self.assertEqual(c.send(b'l LIST "" %\r\n').count(b"* LIST"), 2)
        self.assertEqual(c.send(b'l LIST "Entw&APw-rfe/" %\r\n'),
                         b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe/x\r\nl OK List completed.\r\n')
        self.assertEqual(c.send(b'l LIST "" ""\r\n'),
                         b'* LIST (\\Noselect) "/" ""\r\nl OK List completed.\r\n')
        self.assertEqual(c.send(b'l LIST "" inBOX\r\n'),
                         b'* LIST (\\HasNoChildren) "/" INBOX\r\nl OK List completed.\r\n')
        c.send(b"r RENAME Entw&APw-rfe Drafts\r\n")
        self.assertIn(b'"/" Drafts/x', c.send(b'l LIST "" *\r\n'))
        c.send(b'u SUBSCRIBE "Drafts/x"\r\nv SUBSCRIBE gone\r\n')
        out = c.send(b'l LSUB "" *\r\n')
        self.assertEqual(out, b'* LSUB () "/" Drafts/x\r\n* LSUB (\\Noselect) "/" gone\r\n'
                              b"l OK Lsub completed.\r\n")
        out = c.send(b'l LSUB "" %\r\n')
        self.assertEqual(out, b'* LSUB (\\Noselect) "/" gone\r\n* LSUB (\\Noselect) "/" Drafts\r\n'
                              b"l OK Lsub completed.\r\n")
        c.send(b"w UNSUBSCRIBE gone\r\n")
        self.assertEqual(self.storage.subs, ["Drafts/x"])
        self.assertEqual(c.send(b"d DELETE Drafts/x\r\n"), b"d OK Delete completed.\r\n")
        self.assertIn(b"NO [NONEXISTENT]", c.send(b"d DELETE Drafts/x\r\n"))
        self.assertIn(b"NO [CANNOT]", c.send(b"d CREATE &Jjo\r\n"))
        out = c.send(b"s STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)\r\n")
        self.assertEqual(out, b"* STATUS INBOX (MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY 1234 "
                              b"UNSEEN 1)\r\ns OK Status completed.\r\n")

    def test_misc_commands(self):
        out = self.c.send(b'i ID ("name" "x")\r\nj ID NIL\r\nn NAMESPACE\r\ne ENABLE CONDSTORE\r\n'
                          b"k CHECK\r\nl LOGIN a b\r\n")
        self.assertEqual(
            out,
            b'* ID ("name" "pydovecot")\r\ni OK ID completed.\r\n'
            b'* ID ("name" "pydovecot")\r\nj OK ID completed.\r\n'
            b'* NAMESPACE (("" "/")) NIL NIL\r\nn OK Namespace completed.\r\n'
            b"* ENABLED CONDSTORE\r\ne OK Enabled.\r\nk BAD No mailbox selected.\r\n"
            b"l BAD Error in IMAP command LOGIN: Already logged in.\r\n",
        )

    def test_search(self):
        self.select()

        def search(keys: bytes) -> bytes:
            out = self.c.send(b"s SEARCH " + keys + b"\r\n")
            self.assertTrue(out.endswith(b"s OK Search completed.\r\n"), out)
            return out.split(b"\r\n")[0]

        cases = {
            b"ALL": b"1 2", b"SEEN": b"2", b"UNSEEN": b"1", b"NEW": b"1", b"OLD": b"",
            b"RECENT": b"1 2", b"KEYWORD $work": b"2", b"UNKEYWORD $Work": b"1",
            b"SUBJECT CAF\xc3\x89": b"1", b"CHARSET UTF-8 SUBJECT CAF\xc3\x89": b"1",
            b"FROM bob": b"2", b"TO BOB": b"1", b"CC carol": b"2", b"BCC x": b"",
            b"HEADER X-Prio HIGH": b"2", b'HEADER x-prio ""': b"2",
            b"BODY soup": b"1", b"CHARSET UTF-8 BODY \xc3\xa9mile": b"2",
            b"TEXT lunch": b"2", b"TEXT bread": b"1",
            b"LARGER 200": b"2", b"SMALLER 200": b"1",
            b"SENTON 1-May-2024": b"1", b"SENTSINCE 2-May-2024": b"2",
            b"SENTBEFORE 2-May-2024": b"1", b"ON 1-May-2024": b"1 2",
            b"BEFORE 1-May-2024": b"", b"SINCE 1-May-2024": b"1 2",
            b"NOT SEEN": b"1", b"OR SEEN FROM alice": b"1 2", b"(SEEN FROM bob)": b"2",
            b"2:*": b"2", b"*": b"2", b"UID 1": b"1", b"UID 2:*,1": b"1 2",
            b"UNDELETED UNFLAGGED UNANSWERED UNDRAFT": b"1 2",
            b"DELETED": b"", b"FLAGGED": b"", b"ANSWERED": b"", b"DRAFT": b"",
        }
        for keys, expected in cases.items():
            self.assertEqual(search(keys), (b"* SEARCH " + expected).rstrip(), keys)
        out = self.c.send(b"u UID SEARCH FROM bob\r\n")
        self.assertEqual(out, b"* SEARCH 2\r\nu OK Search completed.\r\n")
        # Any text codec Python has is a CHARSET (KOI8-R works); others are refused.
        self.assertIn(b"x NO [BADCHARSET (UTF-8 US-ASCII)]",
                      self.c.send(b"x SEARCH CHARSET X-NOPE ALL\r\n"))
        for bad in (b"BOGUS", b"", b"OR SEEN", b"SINCE 31-Foo-2020", b"LARGER x", b"(", b"NOT"):
            self.assertIn(b"y BAD", self.c.send(b"y SEARCH " + bad + b"\r\n"), bad)

    def test_search_literal_charset(self):
        self.select()
        self.assertEqual(self.c.send(b"s SEARCH CHARSET UTF-8 SUBJECT {5}\r\n"), b"+ OK\r\n")
        self.assertEqual(self.c.send(b"caf\xc3\xa9\r\n"), b"* SEARCH 1\r\ns OK Search completed.\r\n")

    def test_idle(self):
        c = self.c
        clock = _Clock()
        c.session.clock = clock
        c.session.idle_interval = 120
        self.select()
        self.assertEqual(c.send(b"i IDLE\r\n"), b"+ idling\r\n")
        self.storage.append("INBOX", io.BytesIO(b"Subject: new\r\n\r\nx"))
        self.assertEqual(c.take(), b"* 3 EXISTS\r\n* 3 RECENT\r\n")
        clock.advance(121)
        self.assertEqual(c.take(), b"* OK Still here\r\n")
        self.assertEqual(c.send(b"DONE\r\nn NOOP\r\n"), b"i OK Idle completed.\r\nn OK NOOP completed.\r\n")
        self.assertEqual(self.storage.listeners["INBOX"], [])
        c.send(b"j IDLE\r\n")
        self.assertEqual(c.send(b"NOOP\r\n"), b"j BAD Error in IMAP command IDLE: Expected DONE.\r\n")

    def test_logout_and_log_line(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.select()
        self.c.send(b"f FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT])\r\n")
        out = self.c.send(b"l LOGOUT\r\nn NOOP\r\n")
        self.assertEqual(out, b"* BYE Logging out\r\nl OK Logout completed.\r\n")
        self.assertTrue(self.c.transport.disconnecting)
        self.c.session.connectionLost(None)
        from twisted.logger import formatEvent

        lines = [formatEvent(e) for e in events if e.get("log_prefix", "").startswith("imap(alice)")]
        self.assertEqual(len(lines), 1)
        self.assertRegex(
            lines[0],
            r"^Disconnected: Logged out in=\d+ out=\d+ deleted=0 expunged=0 trashed=0 "
            r"hdr_count=1 hdr_bytes=\d+ body_count=1 body_bytes=24$",
        )

    def test_vanished_log_line(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.c.send(b"n NOOP\r\n")
        self.c.session.connectionLost(None)
        from twisted.logger import formatEvent

        lines = [formatEvent(e) for e in events if e.get("log_prefix", "").startswith("imap(alice)")]
        self.assertRegex(lines[0], r"^Disconnected: Connection closed \(NOOP finished .*\) in=8 out=\d+ ")

    def test_continuation_waits_for_queue(self):
        """A sync literal's '+ OK' is not sent while an earlier command runs."""
        from twisted.internet import defer

        from pydovecot.imap.commands import registry

        d: defer.Deferred[bytes] = defer.Deferred()
        registry.add_command("SLOW", lambda client, tag, args, uid: d)
        self.addCleanup(registry.remove_command, "SLOW")
        out = self.c.send(b"a SLOW\r\nb APPEND INBOX {3}\r\n")
        self.assertEqual(out, b"")
        d.callback(b"OK slow done.")
        self.assertEqual(self.c.take(), b"a OK slow done.\r\n+ OK\r\n")
        self.assertIn(b"b OK [APPENDUID", self.c.send(b"abc\r\n"))


class _Clock:
    """Minimal IReactorTime for LoopingCall."""

    def __init__(self):
        from twisted.internet.task import Clock

        self._c = Clock()

    def __getattr__(self, name):
        return getattr(self._c, name)
