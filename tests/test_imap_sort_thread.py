"""SORT, THREAD, ESORT and SORT=DISPLAY: base subjects and threading
(pydovecot.imap.sort / thread) as units, the commands over a StringTransport,
and imapclient's sort()/thread() over a real socket against Maildir."""

from __future__ import annotations

import io

from twisted.internet import defer, threads
from twisted.trial import unittest

from pydovecot.imap.sort import base_subject
from pydovecot.imap.thread import (
    ThreadMessage,
    message_ids,
    ordered_subject,
    references,
    render,
)
from tests import test_imap_e2e
from tests.imap_fakes import FakeStorage
from tests.test_imap_session import Client


class BaseSubjectTests(unittest.TestCase):
    """RFC 5256 section 2.1, step by step."""

    def test_cases(self):
        cases = {
            "Hello": ("Hello", False),
            "Re: Hello": ("Hello", True),
            "RE:Hello": ("Hello", True),
            "re : Hello": ("Hello", True),  # *WSP before ":"
            "Fw: Hello": ("Hello", True),
            "FWD: Re: Hello": ("Hello", True),
            "Re[2]: Hello": ("Hello", True),  # subj-blob inside subj-refwd
            "Re: [list] Re: Hello": ("Hello", True),  # blob then refwd, repeated
            "[list] Hello": ("Hello", False),  # step 4: blob removed
            "[list]": ("[list]", False),  # … unless nothing would be left
            "[a][b] x": ("x", False),
            "Hello (fwd)": ("Hello", True),  # step 2 trailer
            "Hello (FWD)  (fwd) ": ("Hello", True),
            "[Fwd: Re: Hello]": ("Hello", True),  # step 6 wrapper, then again
            "[fwd: [fwd: Hello]]": ("Hello", True),
            "  Hello\tworld  ": ("Hello world", False),  # step 1 and trailing WSP
            "Re: ": ("", True),
            "": ("", False),
            "Reply": ("Reply", False),  # not "re:"
            "Re: [PATCH] fix": ("fix", True),
        }
        for subject, expected in cases.items():
            self.assertEqual(base_subject(subject), expected, subject)


def msg(ident, date, subject="", mid=None, refs=(), reply=None):
    base, was_reply = base_subject(subject)
    return ThreadMessage(ident, ident, float(date), base.casefold(),
                         was_reply if reply is None else reply, mid, list(refs))


class ThreadTests(unittest.TestCase):
    def thread(self, msgs):
        return render(references(msgs))

    def test_message_ids(self):
        self.assertEqual(message_ids(b"<a@b> junk <c@d>\r\n <nope> <e@f>"), ["a@b", "c@d", "e@f"])
        self.assertEqual(message_ids(None), [])

    def test_chain_and_siblings(self):
        self.assertEqual(self.thread([
            msg(1, 1, "a", "1@x"), msg(2, 2, "Re: a", "2@x", ["1@x"]),
            msg(3, 3, "Re: a", "3@x", ["1@x", "2@x"]),
        ]), "(1 2 3)")
        self.assertEqual(self.thread([
            msg(1, 1, "a", "1@x"), msg(2, 3, "Re: a", "2@x", ["1@x"]),
            msg(3, 2, "Re: a", "3@x", ["1@x"]),
        ]), "(1 (3)(2))")  # siblings by sent date

    def test_rfc_example_shape(self):
        # (2)(3 6 (4 23)(44 7 96)) from RFC 5256 section 4
        ms = [
            msg(2, 1, "x", "2@x"), msg(3, 2, "y", "3@x"), msg(6, 3, "Re: y", "6@x", ["3@x"]),
            msg(4, 4, "Re: y", "4@x", ["3@x", "6@x"]), msg(23, 5, "Re: y", "23@x", ["6@x", "4@x"]),
            msg(44, 6, "Re: y", "44@x", ["6@x"]), msg(7, 7, "Re: y", "7@x", ["44@x"]),
            msg(96, 8, "Re: y", "96@x", ["44@x", "7@x"]),
        ]
        self.assertEqual(self.thread(ms), "(2)(3 6 (4 23)(44 7 96))")

    def test_dummies(self):
        # two replies to a message we do not have: a dummy root holds them
        self.assertEqual(self.thread([
            msg(1, 1, "Re: a", "1@x", ["0@x"]), msg(2, 2, "Re: b", "2@x", ["0@x"]),
        ]), "((1)(2))")
        # one reply to a missing message is promoted to the root
        self.assertEqual(self.thread([msg(1, 1, "Re: a", "1@x", ["0@x"])]), "(1)")
        # a missing message inside a chain is pruned and its child promoted
        self.assertEqual(self.thread([
            msg(1, 1, "a", "1@x"), msg(2, 2, "Re: a", "2@x", ["1@x", "gone@x"]),
        ]), "(1 2)")

    def test_subject_merge(self):
        # a reply without references joins the original's thread
        self.assertEqual(self.thread([
            msg(1, 1, "hello", "1@x"), msg(2, 2, "Re: hello", "2@x"),
        ]), "(1 2)")
        # two originals with one subject get a dummy parent
        self.assertEqual(self.thread([
            msg(1, 1, "hello", "1@x"), msg(2, 2, "hello", "2@x"),
        ]), "((1)(2))")
        # empty subjects never merge
        self.assertEqual(self.thread([msg(1, 1, "", "1@x"), msg(2, 2, "", "2@x")]), "(1)(2)")
        # a dummy root with the subject absorbs a real message
        self.assertEqual(self.thread([
            msg(1, 1, "Re: s", "1@x", ["0@x"]), msg(2, 2, "Re: s", "2@x", ["0@x"]),
            msg(3, 3, "s", "3@x"),
        ]), "((1)(2)(3))")

    def test_hostile_headers(self):
        # reference loops, self references, duplicate and missing ids
        out = self.thread([
            msg(1, 1, "a", "1@x", ["2@x"]), msg(2, 2, "b", "2@x", ["1@x"]),
            msg(3, 3, "c", "3@x", ["3@x"]), msg(4, 4, "d", "1@x"), msg(5, 5, "e"),
        ])
        self.assertEqual(out, "(2 1)(3)(4)(5)")  # 1B links first; the loop is refused
        ids = [int(x) for x in out.replace("(", " ").replace(")", " ").split()]
        self.assertEqual(sorted(ids), [1, 2, 3, 4, 5])

    def test_ordered_subject(self):
        roots = ordered_subject([
            msg(1, 3, "a"), msg(2, 1, "b"), msg(3, 4, "Re: a"), msg(4, 5, "A"), msg(5, 2, "c"),
            msg(6, 6, "Re: c"),
        ])
        self.assertEqual(render(roots), "(2)(5 6)(1 (3)(4))")


SORT_MSGS = [
    b"From: Zed <zed@example.com>\r\nTo: bob@example.org\r\nCc: x@y\r\n"
    b"Subject: Re: beta\r\nDate: Thu, 2 May 2024 10:00:00 +0000\r\n"
    b"Message-ID: <b@x>\r\nReferences: <a@x>\r\n\r\nsecond\r\n",
    b"From: adam@example.com\r\nTo: \"Carol\" <carol@example.org>\r\n"
    b"Subject: beta\r\nDate: Wed, 1 May 2024 10:00:00 +0000\r\nMessage-ID: <a@x>\r\n\r\nfirst, longer body\r\n",
    b"From: =?utf-8?q?=C3=89mile?= <emile@example.com>\r\nTo: alice@example.org\r\n"
    b"Subject: [list] alpha\r\nDate: Fri, 3 May 2024 09:00:00 +0200\r\n\r\nthird\r\n",
]


class SortCommandTests(unittest.TestCase):
    def setUp(self):
        self.storage = FakeStorage()
        for m in SORT_MSGS:
            self.storage.append("INBOX", io.BytesIO(m))
        self.c = Client(self.storage)
        self.c.start()
        self.c.send(b"s SELECT INBOX\r\n")

    def first(self, cmd: bytes) -> bytes:
        out = self.c.send(b"t " + cmd + b"\r\n")
        self.assertTrue(out.splitlines()[-1].startswith(b"t OK"), out)
        return out.split(b"\r\n")[0]

    def test_sort_keys(self):
        cases = {
            b"SORT (SUBJECT) UTF-8 ALL": b"* SORT 3 1 2",  # alpha, beta (1 before 2)
            b"SORT (DATE) UTF-8 ALL": b"* SORT 2 1 3",
            b"SORT (REVERSE DATE) UTF-8 ALL": b"* SORT 3 1 2",
            b"SORT (ARRIVAL) UTF-8 ALL": b"* SORT 1 2 3",
            b"SORT (REVERSE ARRIVAL) UTF-8 ALL": b"* SORT 1 2 3",  # equal dates: mailbox order
            b"SORT (REVERSE SIZE) UTF-8 ALL": b"* SORT 1 2 3",
            b"SORT (FROM) UTF-8 ALL": b"* SORT 2 3 1",  # adam, emile, zed
            b"SORT (TO) UTF-8 ALL": b"* SORT 3 1 2",  # alice, bob, carol
            b"SORT (CC) UTF-8 ALL": b"* SORT 2 3 1",  # "" "" x
            b"SORT (SIZE) UTF-8 ALL": b"* SORT 3 2 1",
            b"SORT (DISPLAYFROM) UTF-8 ALL": b"* SORT 2 3 1",  # adam@…, Émile, Zed
            b"SORT (DISPLAYTO) UTF-8 ALL": b"* SORT 3 1 2",  # alice@, bob@, Carol
            b"SORT (SUBJECT REVERSE DATE) UTF-8 ALL": b"* SORT 3 1 2",
            b"SORT (SUBJECT) UTF-8 NOT FROM zed": b"* SORT 3 2",
            b"UID SORT (DATE) US-ASCII ALL": b"* SORT 2 1 3",
            b"SORT (FROM) ISO-8859-1 ALL": b"* SORT 2 3 1",
        }
        for cmd, expected in cases.items():
            self.assertEqual(self.first(cmd), expected, cmd)

    def test_esort(self):
        self.assertEqual(self.first(b"SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL"),
                         b'* ESEARCH (TAG "t") MIN 2 MAX 3 COUNT 3 ALL 2,1,3')
        self.assertEqual(self.first(b"UID SORT RETURN () (REVERSE DATE) UTF-8 ALL"),
                         b'* ESEARCH (TAG "t") UID ALL 3,1:2')
        self.assertEqual(self.first(b"SORT RETURN (COUNT) (DATE) UTF-8 DELETED"),
                         b'* ESEARCH (TAG "t") COUNT 0')
        self.assertEqual(self.first(b"SORT RETURN (PARTIAL 2:3) (DATE) UTF-8 ALL"),
                         b'* ESEARCH (TAG "t") PARTIAL (2:3 1,3)')
        # SAVE keeps the sorted MIN for $
        self.assertEqual(self.c.send(b"u SORT RETURN (SAVE MIN) (DATE) UTF-8 ALL\r\nv SEARCH $\r\n"),
                         b'* ESEARCH (TAG "u") MIN 2\r\nu OK Sort completed.\r\n'
                         b"* SEARCH 2\r\nv OK Search completed.\r\n")

    def test_errors(self):
        for bad in (b"SORT SUBJECT UTF-8 ALL", b"SORT () UTF-8 ALL", b"SORT (BOGUS) UTF-8 ALL",
                    b"SORT (REVERSE) UTF-8 ALL", b"SORT (DATE) UTF-8", b"THREAD BOGUS UTF-8 ALL",
                    b"THREAD REFERENCES", b"SORT RETURN (FOO) (DATE) UTF-8 ALL"):
            out = self.c.send(b"x " + bad + b"\r\n")
            self.assertTrue(out.startswith(b"x BAD "), (bad, out))
        out = self.c.send(b"y SORT (DATE) X-NOPE ALL\r\nz THREAD REFERENCES X-NOPE ALL\r\n")
        self.assertEqual(out, b"y NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
                              b"z NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n")

    def test_thread(self):
        self.assertEqual(self.first(b"THREAD REFERENCES UTF-8 ALL"), b"* THREAD (2 1)(3)")
        self.assertEqual(self.first(b"UID THREAD ORDEREDSUBJECT UTF-8 ALL"), b"* THREAD (2 1)(3)")
        self.assertEqual(self.first(b"THREAD REFERENCES UTF-8 DELETED"), b"* THREAD")
        self.assertEqual(self.first(b"THREAD REFERENCES UTF-8 NOT 2"), b"* THREAD (1)(3)")


class SortE2ETests(unittest.TestCase):
    """imapclient's sort() and thread() against the Maildir storage."""

    setUp = test_imap_e2e.E2ETests.setUp
    tearDown = test_imap_e2e.E2ETests.tearDown

    @defer.inlineCallbacks
    def test_imapclient_sort_thread(self):
        import imapclient

        for m in SORT_MSGS:
            self.storage.append("INBOX", io.BytesIO(m))

        def run():
            c = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            caps = c.capabilities()
            c.select_folder("INBOX")
            out = {
                "caps": caps,
                "sort": c.sort(["SUBJECT"]),
                "rsort": c.sort(["REVERSE", "DATE"], ["NOT", "FROM", "zed"]),
                "thread": c.thread("REFERENCES"),
                "othread": c.thread("ORDEREDSUBJECT", charset="UTF-8"),
                "display": c.sort(["DISPLAYFROM"]),
            }
            c.logout()
            return out

        r = yield threads.deferToThread(run)
        for cap in (b"SORT", b"SORT=DISPLAY", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT", b"ESORT"):
            self.assertIn(cap, r["caps"])
        self.assertEqual(r["sort"], [3, 1, 2])  # UIDs
        self.assertEqual(r["rsort"], [3, 2])
        self.assertEqual(r["thread"], ((2, 1), (3,)))
        self.assertEqual(r["othread"], ((2, 1), (3,)))
        self.assertEqual(r["display"], [2, 3, 1], r)
