"""SORT (RFC 5256), SORT=DISPLAY (RFC 5957) and THREAD's base subject,
pinned to the RFC text and to Debian's Dovecot 2.3 answering the same
commands on the same messages (:mod:`tests.dovecot_side`)."""

from __future__ import annotations

from twisted.trial import unittest

from pydovecot.imap.sort import base_subject, collate
from tests.dovecot_side import SideBySide

SUBJECTS = [
    "a", "[b", "_c", "B", "=?utf-8?q?=C3=89mile?=", "zed", "Re: [list] Re: zed", "Fwd: a (fwd)",
    "[fwd: b]", "[x] [y]", "re [z]: q", "  RE:  Fw:[a]  hello   (FWD)  ",
    "[Fwd: Re: [list] topic (fwd)]", "[]", "Re:", "fw:fwd: re: x", "ab", "Ab", "\\\\", "{", "~",
    "`", "^", "[a][b]", "Re: [a]", "[a] Re: b", "Re:Re: x", "Re[2]: x", "RE : x", "Fwd:",
    "[fwd: [fwd: x]]", "x (fwd) (fwd)", "(fwd)", "[ab]   ", "re: [fwd: x]", "Re:\tx",
    "Re: x\r\n (fwd)", "fw: re: [l] [m] b", "[l] [m] b", "[fwd: Re: x] (fwd)", "[fwd:x",
    "Fwd: [fwd:x]", "", "=?utf-8?q?Re=3A_x?=", "RE: [x]",
]
ADDRESSES = [
    "zz@x", '"Name" <aa@x>', "Grp: m@x;", "<>", "(Cmt) bb@x", "bb@x (Zed)",
    "=?utf-8?q?=C3=A9?= <e@x>", "Ann <_u@x>", 'Bob <"[u"@x>', "cc@x", "", "group2:;",
    "Zoe <ab@x>", '"[list]" <l@x>',
]


def _messages() -> list[bytes]:
    msgs = []
    for i, subject in enumerate(SUBJECTS):
        head = b"Subject: " + subject.encode() + b"\r\nDate: Mon, 1 Jan 2024 00:%02d:00 +0000\r\n" % (59 - i)
        addr = ADDRESSES[i % len(ADDRESSES)].encode()
        if addr:
            head += b"From: " + addr + b"\r\nTo: " + addr + b"\r\nCc: " + addr + b"\r\n"
        msgs.append(head + b"\r\nbody\r\n")
    return msgs


class BaseSubjectTests(unittest.TestCase):
    def test_trailer(self):
        """RFC 5256 2.1 (2): "Remove all trailing text of the subject that
        matches the subj-trailer ABNF; repeat until no more matches are
        possible." subj-trailer = "(fwd)" / WSP"""
        self.assertEqual(base_subject("x (fwd) (fwd)"), ("x", True))
        self.assertEqual(base_subject("x   "), ("x", False))

    def test_leader_and_blob(self):
        """RFC 5256 2.1 (3) "Remove all prefix text of the subject that
        matches the subj-leader ABNF." subj-leader = (*subj-blob subj-refwd)
        / WSP; subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":";
        (4) "If there is prefix text of the subject that matches the
        subj-blob ABNF, and removing that prefix leaves a non-empty
        subj-base, then remove the prefix text." (5) "Repeat (3) and (4)
        until no matches remain."""
        self.assertEqual(base_subject("Re: [list] Re: zed"), ("zed", True))
        self.assertEqual(base_subject("re [z]: q"), ("q", True))
        self.assertEqual(base_subject("RE : x"), ("x", True))
        self.assertEqual(base_subject("Re[2]: x"), ("x", True))
        self.assertEqual(base_subject("[l] [m] b"), ("b", False))
        self.assertEqual(base_subject("[a] Re: b"), ("b", True))
        self.assertEqual(base_subject("[x]"), ("[x]", False))  # would leave nothing
        self.assertEqual(base_subject("[a][b]"), ("[b]", False))
        self.assertEqual(base_subject("Re:"), ("", True))

    def test_fwd_wrapper(self):
        """RFC 5256 2.1 (6): "If the resulting text begins with the
        subj-fwd-hdr ABNF and ends with the subj-fwd-trl ABNF, remove the
        subj-fwd-hdr and subj-fwd-trl and repeat from step (2)."
        subj-fwd-hdr = "[fwd:"; subj-fwd-trl = "]"."""
        self.assertEqual(base_subject("[Fwd: Re: [list] topic (fwd)]"), ("topic", True))
        self.assertEqual(base_subject("[fwd: [fwd: x]]"), ("x", True))
        self.assertEqual(base_subject("[fwd:x"), ("[fwd:x", False))

    def test_whitespace(self):
        """RFC 5256 2.1 (1): "convert all tabs and continuations to space.
        Convert all multiple spaces to a single space."""
        self.assertEqual(base_subject("  RE:  Fw:[a]  hello   (FWD)  "), ("hello", True))
        self.assertEqual(base_subject("a\t\tb\r\n c"), ("a b c", False))


class CollationTests(unittest.TestCase):
    def test_ascii_casemap_upper(self):
        """RFC 5256 section 3: "the "i;ascii-casemap" collation" (RFC 4790
        9.2: "... all lower-case US-ASCII letters are converted to upper
        case"), so ``[``, ``\\``, ``^`` and ``_`` (0x5B-0x5F) sort after the
        letters and ``a`` equals ``A``."""
        keys = sorted(["_c", "b", "[x", "A", "zed", "^", "`"], key=collate)
        self.assertEqual(keys, ["A", "b", "zed", "[x", "^", "_c", "`"])
        self.assertEqual(collate("ab"), collate("AB"))

    def test_beyond_ascii(self):
        """Beyond ASCII Dovecot compares i;unicode-casemap keys (RFC 5051):
        title-cased and decomposed, so É sorts with E."""
        self.assertEqual(collate("\u00e9mile"), "E\u0301MILE")
        self.assertLess(collate("\u00e9mile"), collate("f"))


class DovecotSortTests(unittest.TestCase):
    """SORT and THREAD against Debian's Dovecot 2.3 on the same messages."""

    def setUp(self):
        self.side = SideBySide(_messages())
        self.addCleanup(self.side.cleanup)

    def test_same_orders(self):
        """RFC 5256 SUBJECT: "Base subject text as defined by the base
        subject extraction"; FROM/TO/CC: "addr-mailbox of the first "From"
        address" (a group's name when the field starts with a group);
        RFC 5957 DISPLAYFROM: "the display-name of the first "From"
        address ... If no display name is available, the addr-spec"; ties
        by sequence number ("sorted by sequence number")."""
        keys = [b"SUBJECT", b"REVERSE SUBJECT", b"FROM", b"TO", b"CC", b"DISPLAYFROM",
                b"DISPLAYTO", b"REVERSE DISPLAYFROM", b"FROM SUBJECT", b"REVERSE CC DATE",
                b"ARRIVAL", b"DATE", b"SIZE"]
        cmds = [b"SORT (" + k + b") UTF-8 ALL" for k in keys]
        cmds += [b"THREAD ORDEREDSUBJECT UTF-8 ALL", b"THREAD REFERENCES UTF-8 ALL",
                 b"UID SORT (DISPLAYFROM) UTF-8 SUBJECT x"]
        theirs, ours = self.side.both(cmds)
        for cmd, t, o in zip(cmds, theirs, ours, strict=True):
            self.assertEqual(o, t, cmd)
            self.assertEqual(o[-1][-2:], b"OK")
