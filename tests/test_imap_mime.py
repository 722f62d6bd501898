"""Tests for ENVELOPE, BODYSTRUCTURE and BODY[section] extraction."""

from __future__ import annotations

from twisted.trial import unittest

from pydovecot.imap import fetch, mime
from pydovecot.imap.parser import ParseError

NESTED = (
    b"From: Alice <alice@example.com>\n"
    b"To: bob@example.org, \"Carol, C.\" <carol@example.net>\n"
    b"Cc: friends: dave@example.com, Erin <erin@example.com>;, frank@example.com\n"
    b"Subject: =?UTF-8?B?w6lsw6hwaGFudA==?= test\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\n"
    b"Message-ID: <1@example.com>\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\n"
    b"\n"
    b"preamble\n"
    b"--outer\n"
    b"Content-Type: multipart/alternative; boundary=inner\n"
    b"\n"
    b"--inner\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: quoted-printable\n"
    b"\n"
    b"caf=C3=A9 plain\n"
    b"--inner\n"
    b"Content-Type: text/html\n"
    b"\n"
    b"<p>html</p>\n"
    b"--inner--\n"
    b"--outer\n"
    b"Content-Type: message/rfc822\n"
    b"Content-Disposition: attachment; filename=\"fwd.eml\"\n"
    b"\n"
    b"From: Inner <inner@example.com>\n"
    b"Subject: inner subject\n"
    b"Content-Type: multipart/mixed; boundary=x\n"
    b"\n"
    b"--x\n"
    b"\n"
    b"inner part one\n"
    b"--x\n"
    b"Content-Type: application/octet-stream; name=a.bin\n"
    b"Content-Transfer-Encoding: base64\n"
    b"Content-Language: en, de\n"
    b"\n"
    b"AAEC\n"
    b"--x--\n"
    b"--outer--\n"
    b"epilogue\n"
)


def parsed(raw: bytes) -> mime.ParsedMessage:
    return mime.ParsedMessage(mime.normalize_crlf(raw))


def section(msg: mime.ParsedMessage, spec: bytes) -> bytes:
    return fetch.section_bytes(msg, fetch.parse_section(spec))


class EnvelopeTests(unittest.TestCase):
    def test_groups_and_quoted_names(self):
        env = mime.envelope(parsed(NESTED).root)
        self.assertEqual(
            env,
            b'("Mon, 7 Feb 1994 21:52:25 -0800" "=?UTF-8?B?w6lsw6hwaGFudA==?= test" '
            b'(("Alice" NIL "alice" "example.com")) (("Alice" NIL "alice" "example.com")) '
            b'(("Alice" NIL "alice" "example.com")) '
            b'((NIL NIL "bob" "example.org")("Carol, C." NIL "carol" "example.net")) '
            b'((NIL NIL "friends" NIL)(NIL NIL "dave" "example.com")'
            b'("Erin" NIL "erin" "example.com")(NIL NIL NIL NIL)'
            b'(NIL NIL "frank" "example.com")) NIL NIL "<1@example.com>")',
        )

    def test_minimal_message(self):
        env = mime.envelope(parsed(b"\nbody only\n").root)
        self.assertEqual(env, b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")

    def test_sender_reply_to_defaults_and_route(self):
        msg = parsed(b"From: a@b.c\nSender: <@r1,@r2:s@d.e>\nReply-To:\nTo: x\n\n")
        env = mime.envelope(msg.root)
        self.assertIn(b'((NIL "@r1,@r2" "s" "d.e"))', env)
        self.assertIn(b'((NIL NIL "x" "MISSING_DOMAIN"))', env)  # as Dovecot writes it

    def test_eight_bit_subject_is_literal(self):
        env = mime.envelope(parsed("Subject: caf\u00e9\n\n".encode()).root)
        self.assertIn(b"{5}\r\ncaf\xc3\xa9", env)

    def test_parse_addresses_comment(self):
        self.assertEqual(
            mime.parse_addresses(b"joe@x.org (Joe Smith), \"A \\\"q\\\"\" <a@b>"),
            [(b"Joe Smith", None, b"joe", b"x.org"), (b'A "q"', None, b"a", b"b")],  # name from the comment, as Dovecot
        )


class BodyStructureTests(unittest.TestCase):
    def test_no_content_type(self):
        msg = parsed(b"Subject: x\n\nline1\nline2\n")
        self.assertEqual(
            mime.bodystructure(msg.root),
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2 NIL NIL NIL NIL)',
        )
        self.assertEqual(
            mime.bodystructure(msg.root, extended=False),
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2)',
        )

    def test_nested(self):
        bs = mime.bodystructure(parsed(NESTED).root)
        self.assertTrue(bs.startswith(
            b'((("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 15 0 NIL NIL NIL NIL)'
            b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0 NIL NIL NIL NIL)'
            b' "alternative" ("boundary" "inner") NIL NIL NIL)'
            b'("message" "rfc822" NIL NIL NIL "7bit" '
        ), bs)
        self.assertIn(b'(NIL "inner subject" (("Inner" NIL "inner" "example.com"))', bs)
        self.assertIn(
            b'("application" "octet-stream" ("name" "a.bin") NIL NIL "base64" 4 NIL NIL ("en" "de") NIL)',
            bs,
        )
        self.assertIn(b'("attachment" ("filename" "fwd.eml")) NIL NIL)', bs)
        self.assertTrue(bs.endswith(b' "mixed" ("boundary" "outer") NIL NIL NIL)'), bs)

    def test_digest_default(self):
        raw = (b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: s\n\nb\n--d--\n")
        bs = mime.bodystructure(parsed(raw).root, extended=False)
        self.assertTrue(bs.startswith(b'(("message" "rfc822" NIL NIL NIL "7bit" 15 (NIL "s"'), bs)

    def test_unterminated_multipart_and_no_boundary(self):
        raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nonly\n"
        self.assertIn(b'"mixed"', mime.bodystructure(parsed(raw).root))
        raw = b"Content-Type: multipart/mixed\n\nno boundary\n"
        bs = mime.bodystructure(parsed(raw).root)
        self.assertTrue(bs.startswith(b'("multipart" "mixed" NIL'), bs)

    def test_deep_nesting_is_bounded(self):
        raw = b"".join(b"Content-Type: message/rfc822\n\n" for _ in range(200)) + b"x\n"
        mime.bodystructure(parsed(raw).root)


class SectionTests(unittest.TestCase):
    def setUp(self):
        self.msg = parsed(NESTED)

    def test_whole_and_header(self):
        self.assertEqual(section(self.msg, b""), mime.normalize_crlf(NESTED))
        header = section(self.msg, b"HEADER")
        self.assertTrue(header.startswith(b"From: Alice"))
        self.assertTrue(header.endswith(b"outer\"\r\n\r\n"))
        self.assertTrue(section(self.msg, b"TEXT").startswith(b"preamble\r\n--outer"))

    def test_numeric_parts(self):
        self.assertEqual(section(self.msg, b"1.1"), b"caf=C3=A9 plain")
        self.assertEqual(section(self.msg, b"1.2"), b"<p>html</p>")
        self.assertEqual(section(self.msg, b"1.2.MIME"), b"Content-Type: text/html\r\n\r\n")
        self.assertTrue(section(self.msg, b"2").startswith(b"From: Inner"))
        self.assertEqual(section(self.msg, b"2.1"), b"inner part one")
        self.assertEqual(section(self.msg, b"2.2"), b"AAEC")
        self.assertEqual(section(self.msg, b"2.HEADER.FIELDS (subject)"),
                         b"Subject: inner subject\r\n\r\n")
        self.assertTrue(section(self.msg, b"2.TEXT").startswith(b"--x\r\n"))
        self.assertEqual(section(self.msg, b"3"), b"")
        self.assertEqual(section(self.msg, b"1.1.1"), b"")

    def test_single_part_numbering(self):
        msg = parsed(b"Subject: s\n\nbody\n")
        self.assertEqual(section(msg, b"1"), b"body\r\n")
        self.assertEqual(section(msg, b"2"), b"")

    def test_header_fields(self):
        self.assertEqual(section(self.msg, b"HEADER.FIELDS (SUBJECT message-id)"),
                         b"Subject: =?UTF-8?B?w6lsw6hwaGFudA==?= test\r\n"
                         b"Message-ID: <1@example.com>\r\n\r\n")
        out = section(self.msg, b"HEADER.FIELDS.NOT (From To Cc Subject Date Message-ID)")
        self.assertEqual(out, b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
                              b"boundary=\"outer\"\r\n\r\n")

    def test_folded_header_kept(self):
        msg = parsed(b"Subject: a\n  b\nX: y\n\nz")
        self.assertEqual(section(msg, b"HEADER.FIELDS (SUBJECT)"), b"Subject: a\r\n  b\r\n\r\n")

    def test_invalid_sections(self):
        for spec in (b"FOO", b"MIME", b"0", b"1.HEADER.FIELDS", b"HEADER.FIELDS ()", b"TEXT x"):
            self.assertRaises(ParseError, fetch.parse_section, spec)


class FetchItemTests(unittest.TestCase):
    def test_partial_label(self):
        item = fetch.parse_item(b"BODY.PEEK[HEADER.FIELDS (From)]<5.10>")
        self.assertTrue(item.peek)
        self.assertEqual(item.partial, (5, 10))
        self.assertEqual(item.label, b"BODY[HEADER.FIELDS (FROM)]<5>")

    def test_render_partial(self):
        import datetime

        from pydovecot.storage.interfaces import MessageInfo

        msg = parsed(b"Subject: s\n\n0123456789")
        info = MessageInfo(7, {"\\Seen"}, 22, datetime.datetime(2024, 2, 3, 4, 5, 6,
                                                                  tzinfo=datetime.UTC))
        items = [fetch.parse_item(b"UID"), fetch.parse_item(b"BODY[TEXT]<2.3>"),
                 fetch.parse_item(b"BODY[TEXT]<20.3>"), fetch.parse_item(b"INTERNALDATE"),
                 fetch.parse_item(b"RFC822.SIZE")]
        stats = fetch.FetchStats()
        line = fetch.render(3, info, items, False, lambda: msg, stats)
        self.assertEqual(
            line,
            b'* 3 FETCH (UID 7 BODY[TEXT]<2> {3}\r\n234 BODY[TEXT]<20> {0}\r\n '
            b'INTERNALDATE " 3-Feb-2024 04:05:06 +0000" RFC822.SIZE 22)\r\n',
        )
        self.assertEqual((stats.body_count, stats.body_bytes), (2, 3))

    def test_macros_and_errors(self):
        from pydovecot.imap.parser import Atom

        names = [i.name for i in fetch.parse_items([Atom(b"FULL")])]
        self.assertEqual(names, ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"])
        self.assertRaises(ParseError, fetch.parse_items, [[Atom(b"BOGUS")]])
        self.assertRaises(ParseError, fetch.parse_items, [[]])
