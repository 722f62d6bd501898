"""SEARCH extensions: CHARSET, WITHIN, SAVEDATE, MODSEQ, ESEARCH, SEARCHRES,
CONTEXT=SEARCH, the header cache and the IMAP4rev2 answer — over a
StringTransport on the fake storage, and through imaplib/imapclient over a
real socket against Maildir."""

from __future__ import annotations

import datetime
import io
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from pydovecot.imap.search import bench_search
from pydovecot.storage import search as storage_search
from tests import test_imap_e2e
from tests.imap_fakes import FakeStorage
from tests.test_imap_session import MSG1, MSG2, Client

MSG3 = (
    b"From: =?iso-8859-1?q?J=F6rg?= <jorg@example.de>\r\nTo: alice@example.com\r\n"
    b"Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nDate: Fri, 3 May 2024 08:00:00 +0000\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n"
    b"\r\nSch=F6ne Gr=FC=DFe\r\n"
)


class SearchExtTests(unittest.TestCase):
    def setUp(self):
        self.storage = FakeStorage()
        self.storage.append("INBOX", io.BytesIO(MSG1))
        self.storage.append("INBOX", io.BytesIO(MSG2), ["\\Seen", "$Work"])
        self.storage.append("INBOX", io.BytesIO(MSG3), ["\\Flagged"],
                            datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
        self.c = Client(self.storage)
        self.c.start()
        self.c.send(b"s SELECT INBOX\r\n")

    def cmd(self, line: bytes) -> list[bytes]:
        out = self.c.send(b"t " + line + b"\r\n")
        lines = out.split(b"\r\n")[:-1]
        self.assertTrue(lines[-1].startswith(b"t OK"), out)
        return lines[:-1]

    def search(self, keys: bytes) -> bytes:
        return self.cmd(b"SEARCH " + keys)[-1]

    def test_keys(self):
        cases = {
            b"CHARSET ISO-8859-1 SUBJECT gr\xfc\xdfe": b"3",
            b"CHARSET UTF-8 SUBJECT GR\xc3\x9c\xc3\x9fE": b"3",
            b"CHARSET utf-8 FROM j\xc3\xb6rg": b"3",
            b"CHARSET ISO-8859-1 BODY sch\xf6ne": b"3",
            b"CHARSET KOI8-R ALL": b"1 2 3",
            b"YOUNGER 86400": b"3", b"OLDER 86400": b"1 2",
            b"SAVEDSINCE 1-Jan-2000": b"1 2 3", b"SAVEDBEFORE 1-Jan-2000": b"",
            b"SAVEDON 1-May-2024": b"1 2", b"SAVEDATESUPPORTED": b"1 2 3",
            b"MODSEQ 1": b"1 2 3 (MODSEQ 1)", b"MODSEQ 2": b"",
            b'MODSEQ "/flags/\\\\seen" all 1': b"1 2 3 (MODSEQ 1)",
            b"OR (FLAGGED) (KEYWORD $work)": b"2 3", b"NOT (1:2)": b"3",
            b"1,3 UNSEEN": b"1 3", b"UID 2:*": b"2 3", b"HEADER Content-Type \"\"": b"2 3",
        }
        for keys, expected in cases.items():
            got = self.search(keys)
            self.assertEqual(got, (b"* SEARCH " + expected).rstrip(), keys)
        out = self.c.send(b"x SEARCH CHARSET X-NOPE ALL\r\ny SEARCH CHARSET base64 ALL\r\n")
        self.assertEqual(out, b"x NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
                              b"y NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n")
        for bad in (b"OLDER 0", b"YOUNGER x", b"MODSEQ", b'MODSEQ "/flags/x" bogus 1',
                    b"MODSEQ 99999999999999999999", b"HEADER \"a b\" x", b"UID (1)", b"KEYWORD \"x\"",
                    b"CHARSET ISO-8859-1", b"1:x"):
            out = self.c.send(b"y SEARCH " + bad + b"\r\n")
            self.assertTrue(out.startswith(b"y BAD "), (bad, out))

    def test_esearch(self):
        self.assertEqual(self.cmd(b"SEARCH RETURN (MIN MAX COUNT ALL) NOT 2"),
                         [b'* ESEARCH (TAG "t") MIN 1 MAX 3 COUNT 2 ALL 1,3'])
        self.assertEqual(self.cmd(b"UID SEARCH RETURN () ALL"), [b'* ESEARCH (TAG "t") UID ALL 1:3'])
        self.assertEqual(self.cmd(b"SEARCH RETURN (MIN) DELETED"), [b'* ESEARCH (TAG "t")'])
        self.assertEqual(self.cmd(b"SEARCH RETURN (COUNT) DELETED"), [b'* ESEARCH (TAG "t") COUNT 0'])
        self.assertEqual(self.cmd(b"SEARCH RETURN (PARTIAL 2:5) ALL"),
                         [b'* ESEARCH (TAG "t") PARTIAL (2:5 2:3)'])
        self.assertEqual(self.cmd(b"SEARCH RETURN (COUNT) CHARSET UTF-8 MODSEQ 1"),
                         [b"* OK [HIGHESTMODSEQ 1] Highest", b'* ESEARCH (TAG "t") COUNT 3 MODSEQ 1'])
        for bad in (b"RETURN (BOGUS) ALL", b"RETURN ALL", b"RETURN", b"RETURN (PARTIAL) ALL",
                    b"RETURN (PARTIAL 0:1) ALL"):
            out = self.c.send(b"y SEARCH " + bad + b"\r\n")
            self.assertTrue(out.startswith(b"y BAD "), (bad, out))

    def test_searchres(self):
        self.assertEqual(self.cmd(b"SEARCH RETURN (SAVE) UNSEEN"), [])  # SAVE alone: no ESEARCH
        self.assertEqual(self.cmd(b"FETCH $ (UID)"), [b"* 1 FETCH (UID 1)", b"* 3 FETCH (UID 3)"])
        self.assertEqual(self.cmd(b"UID FETCH $ (FLAGS)")[0], b"* 1 FETCH (UID 1 FLAGS (\\Recent))")
        self.assertEqual(self.search(b"$"), b"* SEARCH 1 3")
        self.assertEqual(self.search(b"UID $ FLAGGED"), b"* SEARCH 3")
        self.assertEqual(self.cmd(b"STORE $ +FLAGS.SILENT (\\Answered)"), [])
        self.assertEqual(self.search(b"ANSWERED"), b"* SEARCH 1 3")
        self.assertIn(b"COPYUID", self.c.send(b"c COPY $ INBOX\r\n"))
        # MIN/MAX alone save just those
        self.cmd(b"SEARCH RETURN (SAVE MIN MAX) ALL")
        self.assertEqual(self.search(b"$"), b"* SEARCH 1 5")
        # a failing SAVE search leaves $ empty; so does another SELECT
        self.c.send(b"f SEARCH RETURN (SAVE) CHARSET X-NOPE ALL\r\n")
        self.assertEqual(self.search(b"$"), b"* SEARCH")
        self.cmd(b"SEARCH RETURN (SAVE) ALL")
        self.c.send(b"s SELECT INBOX\r\n")
        self.assertEqual(self.cmd(b"FETCH $ FLAGS"), [])

    def test_rev2_answers_esearch(self):
        self.c.session.rev2 = True
        self.assertEqual(self.cmd(b"UID SEARCH SEEN"), [b'* ESEARCH (TAG "t") UID ALL 2'])
        self.assertEqual(self.cmd(b"SEARCH DELETED"), [b'* ESEARCH (TAG "t")'])

    def test_header_cache(self):
        mbox = self.c.session.mailbox
        cache = mbox._cache  # the fake storage's index
        self.assertEqual(self.search(b"FROM bob"), b"* SEARCH 2")
        self.assertEqual(cache[(2, "header.from")], ["Bob <bob@example.org>"])
        self.assertEqual(cache[(3, "header.from")], ["=?iso-8859-1?q?J=F6rg?= <jorg@example.de>"])

        def no_files(uid):
            raise AssertionError("opened a message file")

        real = mbox._search_source

        def source():
            src = real()
            src.open_message = no_files
            return src

        mbox._search_source = source
        mbox.message_file = no_files
        self.c.session.cache = type(self.c.session.cache)()
        self.assertEqual(self.search(b"FROM J\xc3\xb6RG"), b"* SEARCH 3")
        self.assertEqual(self.search(b"FLAGGED LARGER 10 SINCE 1-Jan-2020 UID 1:* YOUNGER 9999"),
                         b"* SEARCH 3")
        self.assertEqual(self.cmd(b"SORT (FROM) UTF-8 ALL")[0], b"* SORT 1 2 3")

    def test_context_update(self):
        other = Client(self.storage)
        other.start()
        other.send(b"s SELECT INBOX\r\n")
        self.assertEqual(self.c.send(b"a UID SEARCH RETURN (UPDATE) UNSEEN\r\n"),
                         b'* ESEARCH (TAG "a") UID ALL 1,3\r\na OK Search completed.\r\n')
        self.assertEqual(self.c.send(b"b SORT RETURN (UPDATE COUNT) (REVERSE DATE) UTF-8 UNSEEN\r\n"),
                         b'* ESEARCH (TAG "b") COUNT 2\r\nb OK Sort completed.\r\n')
        other.send(b"o STORE 1 +FLAGS (\\Seen)\r\n")
        self.storage.append("INBOX", io.BytesIO(b"Subject: new\r\nDate: Sat, 4 May 2024 00:00:00 +0000\r\n\r\nx\r\n"))
        out = self.c.send(b"n NOOP\r\n")
        self.assertEqual(out, b"* 4 EXISTS\r\n* 4 RECENT\r\n* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen))\r\n"
                              b'* ESEARCH (TAG "a") UID REMOVEFROM (0 1)\r\n'
                              b'* ESEARCH (TAG "a") UID ADDTO (0 4)\r\n'
                              b'* ESEARCH (TAG "b") REMOVEFROM (0 1)\r\n'
                              b'* ESEARCH (TAG "b") ADDTO (1 4)\r\n'  # newest first
                              b'* ESEARCH (TAG "b") COUNT 2\r\nn OK NOOP completed.\r\n')
        self.assertEqual(self.c.send(b"c CANCELUPDATE \"a\" \"b\"\r\n"), b"c OK Updates cancelled.\r\n")
        self.assertTrue(self.c.send(b"c CANCELUPDATE \"a\"\r\n").startswith(b"c BAD "))
        other.send(b"o STORE 3 +FLAGS (\\Seen)\r\n")
        self.assertNotIn(b"ESEARCH", self.c.send(b"n NOOP\r\n"))

    def test_context_sort_positions(self):
        self.cmd(b"SORT RETURN (UPDATE) (DATE) UTF-8 ALL")
        self.c.send(b"u SEARCH RETURN (UPDATE COUNT) UNSEEN\r\n")
        self.storage.append("INBOX", io.BytesIO(b"Subject: x\r\nDate: Thu, 2 May 2024 11:00:00 +0000\r\n\r\nx\r\n"))
        out = self.c.send(b"n NOOP\r\n")
        self.assertIn(b'* ESEARCH (TAG "t") ADDTO (3 4)\r\n', out)  # between 2 May 10:00 and 3 May
        self.assertIn(b'* ESEARCH (TAG "u") ADDTO (0 4)\r\n* ESEARCH (TAG "u") COUNT 3\r\n', out)
        # own STORE changes the UNSEEN result too
        out = self.c.send(b"m STORE 4 +FLAGS (\\Seen)\r\n")
        self.assertIn(b'* ESEARCH (TAG "u") REMOVEFROM (0 4)\r\n* ESEARCH (TAG "u") COUNT 2\r\n', out)
        # another SELECT ends every context
        self.c.send(b"s SELECT INBOX\r\nn NOOP\r\n")
        self.assertEqual(self.c.session.search_updates().contexts, {})

    def test_search_stops_when_the_session_goes(self):
        """A long storage search is cancelled (its sliced work stopped)
        when the session closes; nothing is answered or logged."""
        self.patch(storage_search, "COOPERATE_OVER", 1)
        self.patch(storage_search, "CONTENT_STEP", 1)
        for i in range(300):
            self.storage.append("INBOX", io.BytesIO(b"Subject: bulk %d\r\n\r\nhay\r\n" % i))
        self.c.send(b"n NOOP\r\n")
        mbox = self.c.session.mailbox
        opened: list[int] = []
        real = mbox._search_source

        def source():
            src = real()
            inner = src.open_message

            def counting(uid):
                opened.append(uid)
                return inner(uid)

            src.open_message = counting
            return src

        mbox._search_source = source
        self.c.session.dataReceived(b"t SEARCH BODY needle\r\n")
        self.c.session.connectionLost(None)
        self.c.session.clock.advance(1)  # the session's watch sees it gone
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        def check(_):
            self.assertLess(len(opened), 100)
            self.assertNotIn(b"t OK", self.c.take())
            self.assertEqual(self.flushLoggedErrors(), [])

        return deferLater(reactor, 0.3, lambda: None).addCallback(check)

    def test_large_content_search_cooperates(self):
        self.patch(storage_search, "COOPERATE_OVER", 1)
        self.patch(storage_search, "CONTENT_STEP", 2)
        for i in range(5):
            self.storage.append("INBOX", io.BytesIO(b"Subject: bulk %d\r\n\r\nneedle\r\n" % i))
        self.c.send(b"n NOOP\r\n")
        d = defer.Deferred()
        from twisted.internet import reactor

        self.c.session.dataReceived(b"t SEARCH BODY needle\r\n")
        reactor.callLater(0.3, d.callback, None)

        def check(_):
            self.assertEqual(self.c.take(), b"* SEARCH 4 5 6 7 8\r\nt OK Search completed.\r\n")

        return d.addCallback(check)


class SearchE2ETests(unittest.TestCase):
    setUp = test_imap_e2e.E2ETests.setUp
    tearDown = test_imap_e2e.E2ETests.tearDown

    @defer.inlineCallbacks
    def test_clients(self):
        import imaplib

        import imapclient

        self.storage.append("INBOX", io.BytesIO(MSG1))
        self.storage.append("INBOX", io.BytesIO(MSG2), ["\\Seen"])
        self.storage.append("INBOX", io.BytesIO(MSG3))

        def run():
            out = {}
            c = imaplib.IMAP4("127.0.0.1", self.addr, timeout=10)
            c.select("INBOX")
            typ, data = c._simple_command("UID", "SEARCH", "RETURN", "(MIN COUNT SAVE)", "UNSEEN")
            out["esearch"] = (typ, c._untagged_response(typ, data, "ESEARCH")[1])
            out["fetch"] = c.fetch("$", "(UID)")
            out["charset"] = c.search("ISO-8859-1", "BODY", '"sch\xf6ne"'.encode("latin-1"))
            c.literal = "Grüße".encode()
            out["literal"] = c.search("UTF-8", "SUBJECT")
            c.logout()
            ic = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            ic.select_folder("INBOX")
            out["criteria"] = ic.search(["OR", "SEEN", "SUBJECT", "Grüße"], charset="UTF-8")
            out["within"] = ic.search(["YOUNGER", 3600])
            out["modseq"] = ic.search(["MODSEQ", 1])
            ic.logout()
            return out

        r = yield threads.deferToThread(run)
        self.assertEqual(r["esearch"][0], "OK")
        self.assertRegex(r["esearch"][1][0], rb'^\(TAG "[A-Z0-9]+"\) UID MIN 1 COUNT 2$')
        self.assertEqual(r["fetch"][1], [b"1 (UID 1)", b"3 (UID 3)"])
        self.assertEqual(r["charset"], ("OK", [b"3"]))
        self.assertEqual(r["literal"], ("OK", [b"3"]))
        self.assertEqual(r["criteria"], [2, 3])
        self.assertEqual(r["within"], [1, 2, 3])
        self.assertEqual(list(r["modseq"]), [1, 2, 3])

    def test_bench_search(self):
        for i in range(50):
            self.storage.append("INBOX", io.BytesIO(b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i % 7)))
        mbox = storage_search.sync_result(self.storage.open("INBOX"))
        start = time.perf_counter()
        self.assertEqual(self.successResultOf(bench_search(mbox, b"SUBJECT m49")), [50])
        self.assertEqual(len(self.successResultOf(bench_search(mbox, b"BODY \"body 3\""))), 7)
        # the second header search is answered from the index cache
        self.assertEqual(self.successResultOf(
            bench_search(mbox, b"OR SUBJECT m1 SUBJECT m2", uid=False))[:2], [2, 3])
        self.assertLess(time.perf_counter() - start, 5)
        mbox.close()
