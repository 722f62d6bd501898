"""BINARY (RFC 3516), quoted-printable (RFC 2045 6.7) and URLFETCH BINARY /
BODYPARTSTRUCTURE (RFC 5524), pinned to the RFC text and to Debian's
Dovecot 2.3 answering the same commands on the same messages
(:mod:`tests.dovecot_side`)."""

from __future__ import annotations

import binascii
import io
import re
import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pydovecot.imap import ext_fetch, mime
from pydovecot.imap.session import IMAPSession
from pydovecot.session import SessionContext
from pydovecot.storage import open_storage
from tests.dovecot_side import SideBySide, by_tag

QP_BODY = (b"trailing space   \r\nsoft break= \t\r\nnext=3Dline=\r\n"
           b"end =41=4a=4A =\r\nok x\r\n")
MSG = (b"From: a@example.org\r\nSubject: qp\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
       b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
       + QP_BODY +
       b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
       b"Subject: inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       b"aGVsbG8AeA==\r\n"
       b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       b"AAECAw==\r\n"
       b"--b--\r\n")
MSG_UU = (MSG[:-len(b"--b--\r\n")] +
       b"--b\r\nContent-Type: application/x-foo\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
       b"begin 644 x\r\n"
       b"--b--\r\n")
QP_DECODED = b"trailing space\r\nsoft breaknext=lineend AJJ ok x"
_LITERAL = re.compile(rb"~?\{(\d+)\}\r\n")


class Client:
    """One pydovecot session on a StringTransport (started, not selected)."""

    def __init__(self, storage):
        self.transport = StringTransport()
        self.session = IMAPSession(storage, SessionContext("alice", "s1", settings={}))
        self.session.clock = Clock()
        self.session.slice = 60.0
        self.session.makeConnection(self.transport)
        self.session.start(None, b"")

    def send(self, data: bytes) -> bytes:
        self.session.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        return out


def quoted(out: bytes, prefix: bytes) -> bytes:
    """The first quoted string of the untagged response ``prefix``."""
    line = next(x for x in out.split(b"\r\n") if x.startswith(prefix))
    return line.split(b'"')[1]


def parsed(data: bytes) -> mime.ParsedMessage:
    return mime.ParsedMessage(mime.normalize_crlf(data))


def literals(response: bytes) -> list[bytes]:
    """The literal contents of one FETCH response, in order."""
    out, pos = [], 0
    while True:
        m = _LITERAL.search(response, pos)
        if m is None:
            return out
        n = int(m.group(1))
        out.append(response[m.end():m.end() + n])
        pos = m.end() + n


class QuotedPrintableTests(unittest.TestCase):
    def test_trailing_whitespace_removed(self):
        """RFC 2045 6.7 rule 3: "when decoding a Quoted-Printable body, any
        trailing white space on a line must be deleted, as it will
        necessarily have been added by intermediate transport agents."""
        self.assertEqual(mime.qp_decode(b"a  \t\r\nb \r\n"), b"a\r\nb\r\n")
        self.assertEqual(mime.qp_decode(b"tail \t"), b"tail")
        # an encoded space is data, not transport padding
        self.assertEqual(mime.qp_decode(b"a=20\r\nb=09 \r\n"), b"a \r\nb\t\r\n")

    def test_soft_line_break_with_whitespace(self):
        """RFC 2045 6.7 rule 5: "an equal sign as the last character on a
        encoded line indicates such a non-significant ("soft") line break
        in the encoded text" -- after rule 3 deleted trailing white space,
        so ``= \\t`` before the line break is a soft break too."""
        self.assertEqual(mime.qp_decode(b"soft= \t\r\nbreak"), b"softbreak")
        self.assertEqual(mime.qp_decode(b"soft=\r\nbreak=\r\n"), b"softbreak")
        self.assertEqual(mime.qp_decode(b"lf only=\nx"), b"lf onlyx")
        # what the stdlib gets wrong
        self.assertEqual(binascii.a2b_qp(b"soft= \r\nbreak"), b"soft= \r\nbreak")
        self.assertEqual(binascii.a2b_qp(b"a==41"), b"a=41")

    def test_hex_octets_and_robust_equals(self):
        """RFC 2045 6.7 rule 1: "the octet is represented by an "=" followed
        by a two digit hexadecimal representation"; for an "=" not followed
        by two hex digits, "the robust implementation might ... include the
        "=" character and the following character in the decoded data
        without any transformation" (lower-case hex is decoded, as Dovecot
        does)."""
        self.assertEqual(mime.qp_decode(b"=41=4a=4A=00"), b"AJJ\x00")
        self.assertEqual(mime.qp_decode(b"a=ZZb"), b"a=ZZb")
        self.assertEqual(mime.qp_decode(b"a==41"), b"a=A")
        self.assertEqual(mime.qp_decode(b"a=4"), b"a=4")
        self.assertEqual(mime.qp_decode(QP_BODY), QP_DECODED + b"\r\n")

    def test_decode_cte(self):
        """RFC 3516 4.3: "If the server does not know how to decode the
        section's CTE, it MUST fail the request and issue a "NO" response
        that contains the "UNKNOWN-CTE" extended response code."""
        self.assertEqual(ext_fetch.decode_cte(b"aGk=\r\n", b" Base64 "), b"hi")
        self.assertEqual(ext_fetch.decode_cte(b"a= \r\nb", b"quoted-printable"), b"ab")
        self.assertEqual(ext_fetch.decode_cte(b"x\x00", b"binary"), b"x\x00")
        with self.assertRaises(ext_fetch.UnknownCTE):
            ext_fetch.decode_cte(b"begin", b"x-uuencode")


class BinarySectionTests(unittest.TestCase):
    def test_leaf_and_nested_message(self):
        """RFC 3516 4.2: BINARY[...] "Requests that the specified section be
        transmitted after performing CTE-related decoding"; a
        message/rfc822 part comes with the parts inside it decoded and
        labelled ``binary`` (Dovecot's binary converter)."""
        msg = parsed(MSG)
        self.assertEqual(ext_fetch.binary_section(msg, [1]), QP_DECODED)
        self.assertEqual(ext_fetch.binary_section(msg, [2, 1]), b"hello\x00x")
        self.assertEqual(ext_fetch.binary_section(msg, [2]),
                         b"Subject: inner\r\nContent-Type: text/plain\r\n"
                         b"Content-Transfer-Encoding: binary\r\n\r\nhello\x00x")
        self.assertEqual(ext_fetch.binary_section(msg, [3]), b"\x00\x01\x02\x03")
        self.assertEqual(ext_fetch.binary_section(msg, [9]), b"")
        with self.assertRaises(ext_fetch.UnknownCTE):
            ext_fetch.binary_section(parsed(MSG_UU), [4])

    def test_whole_message_converted(self):
        """BINARY[] of a multipart message: every base64/quoted-printable part
        decoded, its Content-Transfer-Encoding field now ``binary``, the
        rest (boundaries, other headers, unknown encodings) as stored."""
        whole = ext_fetch.binary_section(parsed(MSG), [])
        self.assertIn(b"Content-Transfer-Encoding: binary\r\n\r\n" + QP_DECODED + b"\r\n--b\r\n", whole)
        self.assertIn(b"\r\n\r\n\x00\x01\x02\x03\r\n--b--\r\n", whole)
        self.assertNotIn(b"base64", whole)
        self.assertTrue(whole.startswith(b"From: a@example.org\r\n"))

    def test_unknown_cte_inside(self):
        """RFC 3516 4.3: "If the server does not know how to decode the
        section's CTE, it MUST fail the request" -- also when the section
        is a message or multipart with such a part inside (Dovecot says NO
        to BINARY[] there too); the other parts still decode."""
        msg = parsed(MSG_UU)
        with self.assertRaises(ext_fetch.UnknownCTE):
            ext_fetch.binary_section(msg, [])
        self.assertEqual(ext_fetch.binary_section(msg, [3]), b"\x00\x01\x02\x03")

    def test_cte_field_not_last(self):
        """The Content-Transfer-Encoding field is replaced where it stands,
        folded or not; other fields are kept."""
        msg = parsed(b"Content-Transfer-Encoding:\r\n base64\r\nSubject: s\r\n\r\naGk=\r\n")
        self.assertEqual(ext_fetch.binary_section(msg, []),
                         b"Content-Transfer-Encoding: binary\r\nSubject: s\r\n\r\nhi")

    def test_literal8_only_for_nul(self):
        """RFC 3516 4.3: "If the domain of the decoded data is "8bit" and the
        data does not contain the NUL octet, the server SHOULD return the
        data in a <string> instead of a <literal8>"."""
        self.assertEqual(ext_fetch.binary_literal(b"caf\xc3\xa9"), b"{5}\r\ncaf\xc3\xa9")
        self.assertEqual(ext_fetch.binary_literal(b"a\x00b"), b"~{3}\r\na\x00b")

    def test_part_span_not_for_encoded_trees(self):
        """A big message/rfc822 or multipart part is sent as a view only when
        nothing inside it needs decoding (else BINARY would send it raw)."""
        msg = parsed(MSG)
        self.assertIsNone(ext_fetch.part_span(msg, [2], True, 10))
        self.assertEqual(ext_fetch.part_span(msg, [2], False, 10),
                         (msg.root.children[1].body_start, msg.root.children[1].end))
        plain = parsed(b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n\r\n"
                       + b"x" * 100 + b"\r\n--q--\r\n")
        self.assertIsNotNone(ext_fetch.part_span(plain, [1], True, 10))


class DovecotBinaryTests(unittest.TestCase):
    """FETCH BINARY against Debian's Dovecot 2.3 on the same message."""

    def setUp(self):
        self.side = SideBySide([MSG, MSG_UU])
        self.addCleanup(self.side.cleanup)

    def test_same_decoded_content_and_sizes(self):
        """RFC 3516 4.3 BINARY.SIZE: "The size of the section after removing
        any CTE-related encoding.  The value returned MUST match the size
        of the <nstring> or <literal8> that will be returned by the
        corresponding FETCH BINARY request."  Dovecot and pydovecot send the
        same decoded bytes for every part and the whole message."""
        cmds = [b"FETCH 1 (BINARY.PEEK[%s] BINARY.SIZE[%s])" % (s, s)
                for s in (b"1", b"2", b"2.1", b"3", b"")]
        theirs, ours = self.side.both(cmds)
        for cmd, t, o in zip(cmds, theirs, ours, strict=True):
            self.assertEqual(t[-1][-2:], b"OK", cmd)
            self.assertEqual(o[-1][-2:], b"OK", cmd)
            self.assertEqual(literals(o[0]), literals(t[0]), cmd)
            (data,) = literals(o[0])
            self.assertIn(b"BINARY.SIZE[", o[0])
            size = int(re.search(rb"BINARY\.SIZE\[[0-9.]*\] (\d+)", o[0]).group(1))
            self.assertEqual(size, len(data), cmd)  # the MUST above
        self.assertEqual(literals(ours[0][0]), [QP_DECODED])
        self.assertIn(b"BINARY[1] {%d}\r\n" % len(QP_DECODED), ours[0][0])  # no NUL: a string
        self.assertIn(b"BINARY[3] ~{4}\r\n", ours[3][0])  # NUL: literal8

    def test_partial_and_unknown_cte(self):
        """RFC 3516 4.3: "If <number> is present it refers to the offset
        within the DECODED section data"; an unknown CTE fails with
        UNKNOWN-CTE."""
        cmds = [b"FETCH 1 (BINARY.PEEK[2.1]<2.3>)", b"FETCH 2 (BINARY.PEEK[4])",
                b"FETCH 2 (BINARY.SIZE[4])", b"FETCH 2 (BINARY.PEEK[])"]
        theirs, ours = self.side.both(cmds)
        self.assertEqual(literals(ours[0][0]), [b"llo"])
        self.assertEqual(literals(theirs[0][0]), [b"llo"])
        self.assertEqual([t[-1] for t in theirs[1:]], [b"T1 NO", b"T2 NO", b"T3 NO"])
        self.assertEqual([o[-1] for o in ours[1:]], [b"T1 NO", b"T2 NO", b"T3 NO"])

    def test_unknown_cte_code(self):
        """The NO carries the UNKNOWN-CTE code (RFC 3516 4.3)."""
        transport = StringTransport()
        session = IMAPSession(self.side.storage, SessionContext("alice", "b", settings={}))
        session.clock = Clock()
        session.slice = 60.0  # both commands in this turn, however slow the machine
        session.makeConnection(transport)
        session.start(None, b"")
        session.dataReceived(b"s SELECT INBOX\r\nf FETCH 2 BINARY[4]\r\n")
        self.assertIn(b"f NO [UNKNOWN-CTE]", transport.value())
        self.assertEqual(by_tag(transport.value(), [b"f"])[b"f"], [b"f NO"])


class URLFetchBinaryTests(unittest.TestCase):
    """RFC 5524 URLFETCH (BINARY) and (BODYPARTSTRUCTURE) on a real Maildir."""

    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="imap-conform-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.storage = open_storage("alice", "maildir:~/Maildir", self.home)
        self.storage.append("INBOX", io.BytesIO(MSG))
        self.storage.append("INBOX", io.BytesIO(MSG_UU))
        self.c = Client(self.storage)

    def gen(self, rump: bytes) -> bytes:
        out = self.c.send(b'g GENURLAUTH "' + rump + b'" INTERNAL\r\n')
        self.assertTrue(out.endswith(b"g OK GENURLAUTH completed.\r\n"), out)
        return quoted(out, b"* GENURLAUTH ")

    def test_binary_is_decoded(self):
        """RFC 5524 section 3: BINARY "requests that the URL data be
        returned ... after performing CTE-related decoding" (as FETCH
        BINARY, RFC 3516): quoted-printable per RFC 2045 6.7, a nested
        message with the parts inside it decoded."""
        url1 = self.gen(b"imap://alice@h/INBOX/;UID=1/;SECTION=1;URLAUTH=anonymous")
        url2 = self.gen(b"imap://alice@h/INBOX/;UID=1/;SECTION=2;URLAUTH=anonymous")
        out = self.c.send(b'f URLFETCH ("%s" BINARY) ("%s" BINARY)\r\n' % (url1, url2))
        self.assertIn(b'* URLFETCH "%s" (BINARY {%d}\r\n%s)\r\n' % (url1, len(QP_DECODED), QP_DECODED),
                      out)
        inner = ext_fetch.binary_section(parsed(MSG), [2])
        self.assertIn(b'* URLFETCH "%s" (BINARY ~{%d}\r\n%s)\r\n' % (url2, len(inner), inner), out)
        url4 = self.gen(b"imap://alice@h/INBOX/;UID=2/;SECTION=4;URLAUTH=anonymous")
        out = self.c.send(b'f URLFETCH ("%s" BINARY)\r\n' % url4)
        self.assertIn(b'* URLFETCH "%s" (BINARY NIL)\r\n' % url4, out)  # unknown CTE

    def test_bodypartstructure_sizes(self):
        """RFC 5524 section 3: with BINARY, BODYPARTSTRUCTURE describes the
        data BINARY returns, so body-fld-octets and body-fld-lines are the
        decoded ones (Dovecot's imap_msgpart_vsizes_to_binary); without
        BINARY they are the stored ones."""
        url1 = self.gen(b"imap://alice@h/INBOX/;UID=1/;SECTION=1;URLAUTH=anonymous")
        out = self.c.send(b'f URLFETCH ("%s" BODYPARTSTRUCTURE BINARY) ("%s" BODYPARTSTRUCTURE)\r\n'
                          % (url1, url1))
        decoded = (b'(BODYPARTSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL '
                   b'"quoted-printable" %d 1 NIL NIL NIL NIL))' % len(QP_DECODED))
        stored = (b'(BODYPARTSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL '
                  b'"quoted-printable" %d 4 NIL NIL NIL NIL))' % (len(QP_BODY) - 2))
        self.assertIn(b'* URLFETCH "%s" ' % url1 + decoded + b" (BINARY {", out)
        self.assertIn(b'* URLFETCH "%s" ' % url1 + stored + b"\r\n", out)
        url2 = self.gen(b"imap://alice@h/INBOX/;UID=1/;SECTION=2;URLAUTH=anonymous")
        out = self.c.send(b'f URLFETCH ("%s" BODYPARTSTRUCTURE BINARY)\r\n' % url2)
        inner = ext_fetch.binary_section(parsed(MSG), [2])
        self.assertIn(b'"7bit" %d (NIL "inner"' % len(inner), out)
        self.assertIn(b'"base64" 7 0 NIL NIL NIL NIL) 4 NIL', out)


NUL_MESSAGE = (b"From: a@example.org\r\nSubject: nul\r\n"
               b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
               b"\r\nab\x00cd\r\n--x--\r\n")


class NulInBodySectionTests(unittest.TestCase):
    """A string literal can't carry NUL (RFC 3501 4.3); RFC 3516 gives NUL
    to BINARY[] (literal8).  BODY[] sections of such a part come with 0x80
    in its place, as Dovecot sends them, and the same size."""

    def test_same_as_dovecot(self):
        side = SideBySide([NUL_MESSAGE])
        self.addCleanup(side.cleanup)
        cmds = [b"FETCH 1 (BODY.PEEK[1])", b"FETCH 1 (BODY.PEEK[])", b"FETCH 1 (BODY.PEEK[TEXT])",
                b"FETCH 1 (BINARY.PEEK[1])", b"FETCH 1 (RFC822.SIZE BINARY.SIZE[1])",
                b"FETCH 1 (BODY.PEEK[1]<1.3>)"]
        theirs, ours = side.both(cmds)
        self.assertEqual(theirs, ours)
        self.assertIn(b"ab\x80cd", ours[0][0])
        self.assertIn(b"BINARY[1] ~{5}\r\nab\x00cd", ours[3][0])

    def test_big_message_streamed(self):
        """A message big enough to be streamed from its file (and a big part
        sent as a view of the parsed message) gets the same replacement."""
        from pydovecot.imap import fetch

        filler = b"x" * 75 + b"\r\n"
        body = filler * (fetch.STREAM_OVER // len(filler) + 10)
        big = NUL_MESSAGE.replace(b"ab\x00cd", body + b"ab\x00cd" + body)
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        storage = open_storage("alice", f"maildir:{d}/Maildir", d)
        self.successResultOf(storage.append("INBOX", io.BytesIO(big)))
        transport = StringTransport()
        session = IMAPSession(storage, SessionContext("alice", "n", settings={}))
        session.clock = Clock()
        session.slice = 60.0
        session.makeConnection(transport)
        session.start(None, b"")
        session.dataReceived(b"s SELECT INBOX\r\nf FETCH 1 (BODY.PEEK[])\r\ng FETCH 1 (BODY.PEEK[1])\r\n")
        return self._until(transport, b"g OK", big)

    def _until(self, transport, tag: bytes, big: bytes):
        from twisted.internet import reactor, task

        def check():
            out = transport.value()
            if tag not in out:
                return task.deferLater(reactor, 0.05, check)
            whole = literals(out.split(b"f OK")[0].split(b"* 1 FETCH (BODY[]")[1])
            self.assertEqual(len(whole[0]), len(big))
            self.assertNotIn(b"\x00", whole[0])
            self.assertIn(b"ab\x80cd", whole[0])
            part = out.split(b"* 1 FETCH (BODY[1]")[1]
            self.assertNotIn(b"\x00", part)
            self.assertIn(b"ab\x80cd", part)
            return None

        return check()
