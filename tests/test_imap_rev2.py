"""IMAP4rev2, UTF8=ACCEPT, the grammar limits, APPEND extensions and the
BINARY/PREVIEW/SAVEDATE FETCH items: unit tests over a StringTransport and
end-to-end tests with imaplib/imapclient on the real Maildir storage."""

from __future__ import annotations

import datetime
import imaplib
import io
import socket

from twisted.internet import defer, threads
from twisted.trial import unittest

from pydovecot.imap import ext_fetch, fetch, mime
from pydovecot.imap.parser import Binary, CommandReader, LiteralString, ParseError, tokenize
from pydovecot.storage.deferred import answers
from pydovecot.storage.interfaces import MessageInfo
from tests import test_imap_e2e as e2e
from tests.imap_fakes import FakeStorage
from tests.test_imap_session import MSG1, MSG2, Client

B64_MSG = (
    b"From: a@example.com\r\nSubject: bin\r\nContent-Type: multipart/mixed; boundary=xx\r\n\r\n"
    b"--xx\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nsoup\r\n"
    b"--xx\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAECAwQ=\r\n"
    b"--xx\r\nContent-Type: application/x-foo\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
    b"begin 644\r\n"
    b"--xx--\r\n"
)


class Rev2SessionTests(unittest.TestCase):
    def setUp(self):
        self.storage = FakeStorage()
        self.storage.append("INBOX", io.BytesIO(MSG1))
        self.storage.append("INBOX", io.BytesIO(MSG2), ["\\Seen"])
        self.storage.append("INBOX", io.BytesIO(B64_MSG))
        self.c = Client(self.storage)
        self.c.start()

    def test_capabilities(self):
        caps = self.c.send(b"c CAPABILITY\r\n").split(b"\r\n")[0].split()
        for cap in (b"IMAP4rev1", b"IMAP4rev2", b"UTF8=ACCEPT", b"ENABLE", b"LITERAL+",
                    b"MULTIAPPEND", b"CATENATE", b"BINARY", b"COMPRESS=DEFLATE", b"SAVEDATE",
                    b"PREVIEW", b"LIST-EXTENDED", b"LIST-STATUS", b"SPECIAL-USE", b"STATUS=SIZE"):
            self.assertIn(cap, caps)
        minus = Client(self.storage, {"imap_literal_minus": "yes"})
        out = minus.start()
        self.assertIn(b" LITERAL- ", out)
        self.assertNotIn(b"LITERAL+", out)

    def test_enable(self):
        out = self.c.send(b"e ENABLE IMAP4rev2 UTF8=ACCEPT X-UNKNOWN\r\n")
        self.assertEqual(out, b"* ENABLED IMAP4rev2\r\ne OK Enabled.\r\n")  # rev2 implies UTF8
        self.assertEqual(self.c.send(b"f ENABLE IMAP4rev2\r\n"), b"* ENABLED\r\nf OK Enabled.\r\n")
        other = Client(self.storage)
        other.start()
        self.assertEqual(other.send(b"e ENABLE utf8=accept\r\n"),
                         b"* ENABLED UTF8=ACCEPT\r\ne OK Enabled.\r\n")
        self.assertFalse(other.session.rev2)
        self.assertTrue(other.session.utf8)
        self.assertTrue(self.c.send(b"g ENABLE\r\n").startswith(b"g BAD"))

    def test_rev2_select_has_no_recent(self):
        self.c.send(b"e ENABLE IMAP4rev2\r\n")
        out = self.c.send(b"s SELECT INBOX\r\n")
        self.assertIn(b"* 3 EXISTS\r\n", out)
        self.assertNotIn(b"RECENT", out)
        out = self.c.send(b"f FETCH 1 FLAGS\r\n")
        self.assertNotIn(b"\\Recent", out)
        rev1 = Client(self.storage)
        rev1.start()
        self.assertIn(b"* 0 RECENT\r\n", rev1.send(b"s SELECT INBOX\r\n"))

    def test_utf8_mailbox_names(self):
        self.c.send(b'c CREATE "Caf&AOk-"\r\n')  # modified UTF-7 from a rev1 client
        self.assertIn("Café", self.storage.boxes)
        out = self.c.send(b'l LIST "" "*"\r\n')
        self.assertIn(b'"/" Caf&AOk-\r\n', out)
        self.c.send(b"e ENABLE UTF8=ACCEPT\r\n")
        out = self.c.send(b'l LIST "" "*"\r\n')
        self.assertIn('"/" "Café"\r\n'.encode(), out)
        out = self.c.send('c CREATE "Ünïcode/Straße"\r\n'.encode())
        self.assertTrue(out.endswith(b"c OK Create completed.\r\n"), out)
        self.assertIn("Ünïcode/Straße", self.storage.boxes)
        out = self.c.send('s STATUS "Ünïcode/Straße" (MESSAGES)\r\n'.encode())
        self.assertIn('* STATUS "Ünïcode/Straße" (MESSAGES 0)'.encode(), out)
        # invalid UTF-8 in a quoted string is BAD; in a literal name NO [CANNOT]
        self.assertTrue(self.c.send(b'x CREATE "bad\xff"\r\n').startswith(b"x BAD "))
        out = self.c.send(b"y CREATE {4}\r\n")
        out += self.c.send(b"ba\xffd\r\n")
        self.assertIn(b"y NO [CANNOT]", out)

    def test_name_validation(self):
        out = self.c.send(b'a CREATE "&Jjo"\r\n')
        self.assertIn(b"a NO [CANNOT] Invalid mailbox name: not modified UTF-7", out)
        self.c.send(b"e ENABLE UTF8=ACCEPT\r\n")
        out = self.c.send(b'b CREATE {3}\r\n')
        out += self.c.send(b"a\x01b\r\n")
        self.assertIn(b"b NO [CANNOT] Invalid mailbox name: contains control characters", out)

    def test_limits(self):
        minus = Client(self.storage, {"imap_literal_minus": "yes"})
        minus.start()
        big = b"x" * 5000
        out = minus.send(b"a APPEND INBOX {5000+}\r\n" + big + b"\r\nb NOOP\r\n")
        self.assertEqual(out, b"a BAD [TOOBIG] Non-synchronizing literal larger than 4096 bytes\r\n"
                              b"b OK NOOP completed.\r\n")
        out = minus.send(b"c APPEND INBOX {10+}\r\nSubject: x\r\n")
        self.assertIn(b"c OK [APPENDUID", out)
        deep = b"(" * 40 + b")" * 40
        out = self.c.send(b"d FETCH 1 " + deep + b"\r\ne NOOP\r\n")
        self.assertEqual(out, b"d BAD [LIMIT] Error in IMAP command: Too deep parenthesized list\r\n"
                              b"e OK NOOP completed.\r\n")
        small = Client(self.storage, {"imap_append_limit": "100"})
        small.start()
        out = small.send(b"f APPEND INBOX {200}\r\n")
        self.assertEqual(out, b"f NO [TOOBIG] Literal too large\r\n")
        self.assertIn(b"APPENDLIMIT=100", small.send(b"g CAPABILITY\r\n"))

    def test_multiappend(self):
        out = self.c.send(
            b'a APPEND INBOX (\\Seen) {12+}\r\nSubject: one (\\Flagged) '
            b'"01-Jan-2024 10:00:00 +0100" {12+}\r\nSubject: two {14+}\r\nSubject: three\r\n')
        self.assertEqual(out, b"a OK [APPENDUID 1234 4:6] Append completed.\r\n")
        box = self.storage.boxes["INBOX"].messages
        self.assertEqual([m.data for m in box[3:]],
                         [b"Subject: one", b"Subject: two", b"Subject: three"])
        self.assertEqual(box[4].flags, {"\\Flagged"})
        self.assertEqual(box[4].internaldate.utcoffset(), datetime.timedelta(hours=1))
        # all or nothing: an empty third message fails the command before any save
        out = self.c.send(b"b APPEND INBOX {3+}\r\nabc {3+}\r\ndef {0+}\r\n\r\n")
        self.assertEqual(out, b"b NO Can't save a zero byte message.\r\n")
        self.assertEqual(len(self.storage.boxes["INBOX"].messages), 6)
        out = self.c.send(b"c APPEND Nowhere {3+}\r\nabc\r\n")
        self.assertIn(b"c NO [TRYCREATE]", out)

    def test_multiappend_rollback(self):
        real = self.storage.append
        calls = []

        def failing(name, message, flags=(), when=None):
            calls.append(name)
            if len(calls) == 2:
                from pydovecot.storage.interfaces import StorageError

                raise StorageError("disk full")
            return real(name, message, flags, when)

        self.storage.append = failing
        out = self.c.send(b"a APPEND INBOX {3+}\r\nabc {3+}\r\ndef\r\n")
        self.assertEqual(out, b"a NO [SERVERBUG] disk full\r\n")
        self.assertEqual(len(self.storage.boxes["INBOX"].messages), 3)

    def test_catenate_and_binary_append(self):
        self.c.send(b"s SELECT INBOX\r\n")
        out = self.c.send(b'a APPEND INBOX CATENATE (TEXT {8+}\r\nHeader: '
                          b'URL "/INBOX/;UID=1/;SECTION=TEXT" TEXT {2+}\r\nok)\r\n')
        self.assertIn(b"a OK [APPENDUID 1234 4]", out)
        self.assertEqual(self.storage.boxes["INBOX"].messages[-1].data,
                         b"Header: Today: soup and bread.\r\nok")
        out = self.c.send(b'b APPEND INBOX CATENATE (URL "/INBOX/;UID=77")\r\n')
        self.assertIn(b'b NO [BADURL "/INBOX/;UID=77"]', out)
        out = self.c.send(b"c APPEND INBOX ~{5+}\r\na\x00b\x00c\r\n")
        self.assertIn(b"c OK [APPENDUID 1234 5]", out)
        self.assertEqual(self.storage.boxes["INBOX"].messages[-1].data, b"a\x00b\x00c")
        out = self.c.send(b"d APPEND INBOX UTF8 (~{3+}\r\nabc)\r\n")
        self.assertTrue(out.startswith(b"d BAD"), out)
        self.c.send(b"e ENABLE UTF8=ACCEPT\r\n")
        out = self.c.send("f APPEND INBOX UTF8 (~{11+}\r\nSubject: é)\r\n".encode())
        self.assertIn(b"f OK [APPENDUID", out)

    def test_fetch_binary(self):
        self.c.send(b"s SELECT INBOX\r\n")
        out = self.c.send(b"f FETCH 3 (BINARY.PEEK[1] BINARY.SIZE[2] BINARY.PEEK[2]<1.2>)\r\n")
        self.assertEqual(
            out, "* 3 FETCH (BINARY[1] {10}\r\ncafé soup BINARY.SIZE[2] 5 BINARY[2]<1> {2}\r\n"
                 "\x01\x02)\r\nf OK Fetch completed.\r\n".encode())
        out = self.c.send(b"g FETCH 3 BINARY[3]\r\n")
        self.assertEqual(out, b"g NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding: x-uuencode\r\n")
        out = self.c.send(b"h FETCH 2 (BINARY[1])\r\n")  # base64 single part
        self.assertIn("BINARY[1] {14}\r\némile says hi".encode(), out)
        out = self.c.send(b"i FETCH 1 (FLAGS BINARY[1])\r\n")
        self.assertIn(b"\\Seen", out)  # BINARY without .PEEK sets \Seen
        self.assertTrue(self.c.send(b"j FETCH 1 BINARY[HEADER]\r\n").startswith(b"j BAD"))

    def test_fetch_preview_savedate(self):
        self.c.send(b"s SELECT INBOX\r\n")
        out = self.c.send(b"f FETCH 1:3 (PREVIEW SAVEDATE)\r\n")
        self.assertIn(b'* 1 FETCH (PREVIEW "Today: soup and bread." SAVEDATE NIL', out)
        self.assertIn("PREVIEW {10}\r\ncafé soup".encode(), out)
        out = self.c.send(b"g FETCH 1 (PREVIEW (LAZY))\r\n")
        self.assertIn(b'PREVIEW "Today: soup and bread."', out)
        self.assertTrue(self.c.send(b"h FETCH 1 (PREVIEW (FOO))\r\n").startswith(b"h BAD"))


class FetchPieceTests(unittest.TestCase):
    def test_decode_cte(self):
        self.assertEqual(ext_fetch.decode_cte(b"aGVsbG8=\r\n", b"BASE64"), b"hello")
        self.assertEqual(ext_fetch.decode_cte(b"a=3Db=\r\nc", b"quoted-printable"), b"a=bc")
        self.assertEqual(ext_fetch.decode_cte(b"raw", b"8bit"), b"raw")
        self.assertRaises(ext_fetch.UnknownCTE, ext_fetch.decode_cte, b"x", b"x-foo")

    def test_preview(self):
        msg = mime.ParsedMessage(
            b"Content-Type: text/html\r\n\r\n<html><style>p{}</style><p>Hi &amp; <b>bye</b></p>"
            b"\r\n> quoted\r\n</html>")
        self.assertEqual(ext_fetch.make_preview(msg), "Hi & bye")
        long = mime.ParsedMessage(b"\r\n" + b"word " * 100 + b"\r\n-- \r\nsig")
        self.assertEqual(len(ext_fetch.make_preview(long)), ext_fetch.PREVIEW_CHARS)
        self.assertEqual(ext_fetch.make_preview(mime.ParsedMessage(b"Content-Type: image/png\r\n\r\nx")), "")

    def test_preview_cache(self):
        class Box:
            def __init__(self):
                self.store = {}

            @answers
            def cached(self, uid, key):
                return self.store.get((uid, key))

            @answers
            def set_cached(self, uid, key, value):
                self.store[(uid, key)] = value

        box = Box()
        info = MessageInfo(7, set(), 10, datetime.datetime.now(datetime.UTC))
        loads = []

        def load():
            loads.append(1)
            return mime.ParsedMessage(b"\r\nhello there")

        for _ in range(2):
            text = self.successResultOf(defer.Deferred.fromCoroutine(
                ext_fetch.preview_text(info, load, box)))
            self.assertEqual(ext_fetch.preview(info, load, text), b'PREVIEW "hello there"')
        self.assertEqual(len(loads), 1)
        self.assertEqual(box.store, {(7, "preview"): "hello there"})
        info.savedate = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
        self.assertEqual(fetch.savedate(info), b'SAVEDATE " 1-May-2024 12:00:00 +0000"')


class GrammarTests(unittest.TestCase):
    def reader(self, **kw):
        items = []
        return items, CommandReader(items.append, lambda: None, **kw)

    def test_literal8_and_literal_strings(self):
        items, r = self.reader()
        r.feed(b"a APPEND X ~{3+}\r\na\x00b {2+}\r\nhi \"q\"\r\n")
        toks = tokenize(items[0])
        self.assertIsInstance(toks[3], Binary)
        self.assertIsInstance(toks[4], LiteralString)
        self.assertNotIsInstance(toks[5], LiteralString)

    def test_utf8_quoted(self):
        items, r = self.reader()
        r.feed('a X "é"\r\n'.encode() + b'b X "\xff"\r\n')
        self.assertEqual(tokenize(items[0], utf8=True)[2], "é".encode())
        with self.assertRaises(ParseError):
            tokenize(items[1], utf8=True)
        tokenize(items[1])  # rev1 stays lenient

    def test_literal_count_limit(self):
        from pydovecot.imap import parser

        items, r = self.reader()
        r.feed(b"a APPEND X" + b" {1+}\r\nx" * (parser.MAX_COMMAND_LITERALS + 1) + b"\r\nb NOOP\r\n")
        self.assertEqual(items[0].response, b"NO [LIMIT] Too many literals in one command")
        self.assertEqual(tokenize(items[1]), [b"b", b"NOOP"])


class Rev2E2ETests(unittest.TestCase):
    """imaplib / imapclient against the real Maildir storage."""

    setUp = e2e.E2ETests.setUp
    tearDown = e2e.E2ETests.tearDown

    @defer.inlineCallbacks
    def test_imapclient_utf8(self):
        import imapclient

        def run():
            c = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            caps = c.capabilities()
            enabled = c.enable("UTF8=ACCEPT")
            c._imap._mode_utf8()  # imaplib: send and read UTF-8 from now on
            c.create_folder("Brühe")
            names = [f[2] for f in c.list_folders()]
            c.append("Brühe", B64_MSG)
            c.select_folder("Brühe")
            data = c.fetch([1], ["BINARY.PEEK[1]", "BINARY.SIZE[2]", "PREVIEW"])
            c.logout()
            return caps, enabled, names, data

        caps, enabled, names, data = yield threads.deferToThread(run)
        self.assertIn(b"IMAP4REV2", caps)
        self.assertEqual(enabled, [b"UTF8=ACCEPT"])
        self.assertIn("Brühe", names)
        self.assertEqual(data[1][b"BINARY[1]"], "café soup".encode())
        self.assertEqual(data[1][b"BINARY.SIZE[2]"], 5)
        self.assertEqual(data[1][b"PREVIEW"], "café soup".encode())

    @defer.inlineCallbacks
    def test_multiappend_raw_socket(self):
        def run():
            s = socket.create_connection(("127.0.0.1", self.addr), timeout=10)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"a ENABLE IMAP4rev2\r\nb APPEND INBOX {11+}\r\nSubject: 1 {11+}\r\nSubject: 2\r\n"
                      b"c SELECT INBOX\r\nd FETCH 1:* (UID SAVEDATE)\r\ne LOGOUT\r\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            s.close()
            return out

        out = yield threads.deferToThread(run)
        self.assertIn(b"* ENABLED IMAP4rev2\r\n", out)
        self.assertIn(b"b OK [APPENDUID ", out)
        self.assertIn(b":2] Append completed.", out)
        self.assertNotIn(b"RECENT", out)
        self.assertIn(b"* 2 FETCH (UID 2 SAVEDATE ", out)

    @defer.inlineCallbacks
    def test_imaplib_binary_and_literal_minus(self):
        def run():
            c = imaplib.IMAP4("127.0.0.1", self.addr, timeout=10)
            c.append("INBOX", None, None, B64_MSG)
            c.select("INBOX")
            typ, data = c.fetch("1", "(BINARY.PEEK[2] BINARY[3])")
            typ2, data2 = c.fetch("1", "(BINARY.PEEK[2])")
            c.logout()
            return typ, data, typ2, data2

        typ, data, typ2, data2 = yield threads.deferToThread(run)
        self.assertEqual(typ, "NO")
        self.assertEqual(typ2, "OK")
        self.assertEqual(data2[0][1], b"\x00\x01\x02\x03\x04")
