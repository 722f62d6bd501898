"""Tests for pydovecot.imap.parser and pydovecot.imap.mutf7."""

from __future__ import annotations

from twisted.trial import unittest

from pydovecot.imap import mutf7
from pydovecot.imap.parser import (
    STAR,
    Atom,
    CommandReader,
    Literal,
    NumberSet,
    ParseError,
    RawCommand,
    ReaderError,
    String,
    compress,
    parse_sequence_set,
    tokenize,
)


class Collector:
    def __init__(self, **kw):
        self.items: list = []
        self.continuations = 0
        self.reader = CommandReader(self.items.append, self._cont, **kw)

    def _cont(self) -> None:
        self.continuations += 1

    def tokens(self, i: int = 0):
        item = self.items[i]
        assert isinstance(item, RawCommand), item
        return tokenize(item)


class ReaderTests(unittest.TestCase):
    def test_simple_and_chunks(self):
        c = Collector()
        data = b"a1 NOOP\r\na2 SELECT INBOX\r\n"
        for i in range(len(data)):
            c.reader.feed(data[i : i + 1])
        self.assertEqual(len(c.items), 2)
        self.assertEqual(c.tokens(1), [b"a2", b"SELECT", b"INBOX"])

    def test_bare_lf_and_empty_lines(self):
        c = Collector()
        c.reader.feed(b"\r\na1 NOOP\n")
        self.assertEqual(c.tokens(), [b"a1", b"NOOP"])

    def test_sync_literal_split(self):
        c = Collector()
        c.reader.feed(b"a1 LOGIN {5}\r\n")
        self.assertEqual(c.continuations, 1)
        self.assertEqual(c.items, [])
        c.reader.feed(b"he")
        c.reader.feed(b"llo {3}\r")
        self.assertEqual(c.continuations, 1)
        c.reader.feed(b"\n")
        self.assertEqual(c.continuations, 2)
        c.reader.feed(b"a b (x)\r\n")
        toks = c.tokens()
        self.assertEqual(toks, [b"a1", b"LOGIN", b"hello", b"a b", [b"x"]])
        self.assertIsInstance(toks[3], String)

    def test_literal_plus(self):
        c = Collector()
        c.reader.feed(b"a1 APPEND INBOX {3+}\r\nabc\r\n")
        self.assertEqual(c.continuations, 0)
        self.assertEqual(c.tokens(), [b"a1", b"APPEND", b"INBOX", b"abc"])

    def test_literal_with_crlf_inside(self):
        c = Collector()
        c.reader.feed(b"a1 X {4+}\r\n\r\n\r\n\r\n")
        self.assertEqual(c.tokens(), [b"a1", b"X", b"\r\n\r\n"])

    def test_zero_literal(self):
        c = Collector()
        c.reader.feed(b"a1 X {0}\r\n\r\n")
        self.assertEqual(c.tokens(), [b"a1", b"X", b""])
        self.assertEqual(c.continuations, 0)

    def test_large_literal_spooled(self):
        c = Collector()
        size = 200 * 1024
        c.reader.feed(b"a1 APPEND INBOX {%d+}\r\n" % size + b"x" * size + b"\r\n")
        toks = c.tokens()
        self.assertIsInstance(toks[3], Literal)
        self.assertEqual(toks[3].getvalue(), b"x" * size)

    def test_line_too_long_not_buffered(self):
        c = Collector(max_line=100)
        c.reader.feed(b"a1 NOOP " + b"x" * 200)
        self.assertEqual(len(c.items), 1)
        err = c.items[0]
        self.assertIsInstance(err, ReaderError)
        self.assertEqual(err.tag, b"a1")
        self.assertIn(b"TOOBIG", err.response)
        self.assertEqual(len(c.reader._buf), 0)
        c.reader.feed(b"y" * 1000 + b"\r\na2 NOOP\r\n")
        self.assertEqual(c.tokens(1), [b"a2", b"NOOP"])

    def test_line_too_long_complete_line(self):
        c = Collector(max_line=50)
        c.reader.feed(b"a1 NOOP " + b"x" * 60 + b"\r\na2 NOOP\r\n")
        self.assertIsInstance(c.items[0], ReaderError)
        self.assertEqual(c.tokens(1), [b"a2", b"NOOP"])

    def test_sync_literal_too_big(self):
        c = Collector(max_literal=10)
        c.reader.feed(b"a1 APPEND INBOX {11}\r\na2 NOOP\r\n")
        self.assertEqual(c.continuations, 0)
        self.assertIsInstance(c.items[0], ReaderError)
        self.assertEqual(c.items[0].response, b"NO [TOOBIG] Literal too large")
        self.assertEqual(c.tokens(1), [b"a2", b"NOOP"])

    def test_literal_plus_too_big_discarded(self):
        c = Collector(max_literal=10)
        c.reader.feed(b"a1 APPEND INBOX {20+}\r\n" + b"z" * 20 + b" more\r\na2 NOOP\r\n")
        self.assertIsInstance(c.items[0], ReaderError)
        self.assertEqual(c.items[0].tag, b"a1")
        self.assertEqual(c.tokens(1), [b"a2", b"NOOP"])

    def test_eight_bit(self):
        c = Collector()
        c.reader.feed("a1 SEARCH CHARSET UTF-8 TEXT \"h\u00e9\"\r\n".encode())
        self.assertEqual(c.tokens()[-1], "h\u00e9".encode())


class TokenizeTests(unittest.TestCase):
    def tok(self, line: bytes):
        return tokenize(RawCommand([(line, None)]))

    def test_quoted_escapes(self):
        self.assertEqual(self.tok(rb'a "x\"y\\z"'), [b"a", b'x"y\\z'])

    def test_bad_escape(self):
        self.assertRaises(ParseError, self.tok, rb'a "x\n"')

    def test_unterminated(self):
        self.assertRaises(ParseError, self.tok, b'a "xy')
        self.assertRaises(ParseError, self.tok, b"a (x")
        self.assertRaises(ParseError, self.tok, b"a x)")

    def test_nesting_limit(self):
        self.assertRaises(ParseError, self.tok, b"a " + b"(" * 100 + b")" * 100)
        self.assertEqual(self.tok(b"a ((x))"), [b"a", [[b"x"]]])

    def test_body_section_atom(self):
        toks = self.tok(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (A B)]<0.10> FLAGS)")
        self.assertEqual(toks[3], [b"BODY.PEEK[HEADER.FIELDS (A B)]<0.10>", b"FLAGS"])
        self.assertIsInstance(toks[3][0], Atom)

    def test_flags_and_wildcards(self):
        self.assertEqual(self.tok(b'a LIST "" %/*'), [b"a", b"LIST", b"", b"%/*"])
        self.assertEqual(self.tok(rb"a (\Seen \*)"), [b"a", [b"\\Seen", b"\\*"]])

    def test_literal_marker_mid_line(self):
        self.assertRaises(ParseError, self.tok, b"a {3} x")


class SequenceSetTests(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_sequence_set(b"1:3,7,9:*"), [(1, 3), (7, 7), (9, STAR)])
        self.assertEqual(parse_sequence_set(b"*"), [(STAR, STAR)])

    def test_invalid(self):
        for raw in (b"", b"0", b"1:", b"a", b"1,,2", b"1:2:3", b"$", b"99999999999"):
            self.assertRaises(ParseError, parse_sequence_set, raw)

    def test_numberset(self):
        s = NumberSet(parse_sequence_set(b"5:3,10,8:*"), 12)
        self.assertEqual(list(s), [3, 4, 5, 8, 9, 10, 11, 12])
        self.assertIn(4, s)
        self.assertNotIn(6, s)
        big = NumberSet(parse_sequence_set(b"1:4294967295"), 5)
        self.assertIn(4000000000, big)

    def test_star_beyond(self):
        self.assertEqual(list(NumberSet(parse_sequence_set(b"10:*"), 4)), [4, 5, 6, 7, 8, 9, 10])

    def test_compress(self):
        self.assertEqual(compress([1, 2, 3, 7, 9, 10]), b"1:3,7,9:10")


class MUTF7Tests(unittest.TestCase):
    def test_roundtrip(self):
        for name in ("INBOX", "Entw\u00fcrfe", "&", "\u65e5\u672c\u8a9e/x", "a&b\u00e9"):
            self.assertEqual(mutf7.decode(mutf7.encode(name)), name)

    def test_known(self):
        self.assertEqual(mutf7.encode("Entw\u00fcrfe"), b"Entw&APw-rfe")
        self.assertEqual(mutf7.encode("&"), b"&-")
        self.assertEqual(mutf7.decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
                         "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e")

    def test_invalid(self):
        for raw in (b"&abc", b"&U,BTFw", "\u00e9".encode(), b"&AGE-"):
            self.assertRaises(ValueError, mutf7.decode, raw)
