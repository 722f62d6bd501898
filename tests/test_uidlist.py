"""Tests for the dovecot-uidlist, keywords and subscriptions formats."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time

from twisted.trial import unittest

from pydovecot.storage import keywords, subscriptions
from pydovecot.storage.uidlist import Dotlock, LockTimeout, UidList, read_uidlist

DOVECOT_WRITTEN = (
    b"3 V1795380208 N1 Gc83e3820f053036bea2a000083ecc375\n"
    b"1 :1795380208.M540557P10986.vm,S=18,W=21\n"
    b"2 S3 W4 K0abc :1795380208.M556247P10986.vm,S=3,W=4:2,S\n"
    b"garbage line\n"
)


class UidListTests(unittest.TestCase):
    def test_parse_dovecot(self) -> None:
        ul = UidList.parse(DOVECOT_WRITTEN)
        self.assertEqual(ul.uidvalidity, 1795380208)
        self.assertEqual(ul.guid, "c83e3820f053036bea2a000083ecc375")
        self.assertEqual(ul.nextuid, 3)  # stale N header corrected
        self.assertEqual([r.uid for r in ul.records], [1, 2])
        self.assertEqual(ul.records[1].basename, "1795380208.M556247P10986.vm,S=3,W=4")
        self.assertEqual(ul.records[1].ext, {"S": "3", "W": "4", "K": "0abc"})

    def test_roundtrip(self) -> None:
        ul = UidList.parse(DOVECOT_WRITTEN)
        again = UidList.parse(ul.serialize())
        self.assertEqual(again, ul)
        self.assertTrue(ul.serialize().startswith(b"3 V1795380208 N3 G"))
        self.assertIn(b"\n2 S3 W4 K0abc :1795380208.M556247P10986.vm,S=3,W=4\n", ul.serialize())

    def test_version1(self) -> None:
        ul = UidList.parse(b"1 1000 5\n3 123.M1P2.host:2,S\n")
        self.assertEqual((ul.uidvalidity, ul.nextuid), (1000, 5))
        self.assertEqual(ul.records[0].basename, "123.M1P2.host")

    def test_append_and_header(self) -> None:
        from pydovecot.storage.uidlist import UidRecord, append_records, read_uidlist_header

        d = self.mktemp()
        os.mkdir(d)
        path = os.path.join(d, "dovecot-uidlist")
        with open(path, "wb") as f:
            f.write(DOVECOT_WRITTEN.replace(b"garbage line\n", b""))
        self.assertEqual(read_uidlist_header(path), (1795380208, 3))
        self.assertTrue(append_records(path, [UidRecord(3, "c"), UidRecord(4, "d", {"W": "9"})]))
        self.assertEqual(read_uidlist_header(path), (1795380208, 5))
        ul = read_uidlist(path)
        self.assertEqual([(r.uid, r.basename, r.ext.get("W")) for r in ul.records][2:],
                         [(3, "c", None), (4, "d", "9")])
        with open(path, "ab") as f:
            f.write(b"5 :torn")  # no LF: appending would glue lines
        self.assertFalse(append_records(path, [UidRecord(6, "e")]))
        self.assertIsNone(read_uidlist_header(os.path.join(d, "missing")))

    def test_bad(self) -> None:
        self.assertRaises(ValueError, UidList.parse, b"7 junk\n")
        d = self.mktemp()
        os.mkdir(d)
        with open(os.path.join(d, "u"), "wb") as f:
            f.write(b"\xff\n")
        self.assertIsNone(read_uidlist(os.path.join(d, "u")))
        self.assertIsNone(read_uidlist(os.path.join(d, "missing")))


def _hold(path: str, secs: float) -> None:
    with Dotlock(path):
        time.sleep(secs)


class DotlockTests(unittest.TestCase):
    def test_exclusive_and_stale(self) -> None:
        d = tempfile.mkdtemp()
        path = os.path.join(d, "dovecot-uidlist")
        with Dotlock(path):
            self.assertTrue(os.path.exists(path + ".lock"))
            self.assertRaises(LockTimeout, Dotlock(path, wait=0.05).acquire)
        self.assertFalse(os.path.exists(path + ".lock"))
        # A lock older than 120 s is stale.
        with open(path + ".lock", "w") as f:
            f.write("1:otherhost")
        os.utime(path + ".lock", (time.time() - 200, time.time() - 200))
        with Dotlock(path, wait=0.05):
            pass
        # A lock of a dead process on this host is stale.
        p = multiprocessing.get_context("fork").Process(target=_hold, args=(path, 0))
        p.start()
        p.join()
        import socket

        with open(path + ".lock", "w") as f:
            f.write(f"{p.pid}:{socket.gethostname()}")
        with Dotlock(path, wait=0.05):
            pass


class KeywordsTests(unittest.TestCase):
    def test_keywords(self) -> None:
        d = self.mktemp()
        os.mkdir(d)
        with open(os.path.join(d, keywords.FILENAME), "w") as f:
            f.write("0 $Junk\n1 kw2\nbad\n")
        kw = keywords.Keywords(d)
        kw.load()
        self.assertEqual(kw.defined(), ["$Junk", "kw2"])
        self.assertEqual(kw.name_for("b"), "kw2")
        letters, dropped = kw.letters_for({"kw2", "New"})
        self.assertEqual((letters, dropped), ("bc", set()))
        with open(os.path.join(d, keywords.FILENAME)) as f:
            self.assertEqual(f.read(), "0 $Junk\n1 kw2\n2 New\n")
        _, dropped = kw.letters_for({f"k{i}" for i in range(30)})
        self.assertEqual(len(dropped), 30 - 23)


class SubscriptionsTests(unittest.TestCase):
    def test_formats(self) -> None:
        dovecot = b"V\t2\n\nINBOX\nFoo\tBar\n&AOk-t&AOk-\tx\n"
        self.assertEqual(subscriptions.parse(dovecot), ["INBOX", "Foo/Bar", "\u00e9t\u00e9/x"])
        self.assertEqual(subscriptions.serialize(["INBOX", "Foo/Bar", "\u00e9t\u00e9/x"]), dovecot)
        self.assertEqual(subscriptions.parse(b"INBOX\nFoo.Bar\n"), ["INBOX", "Foo/Bar"])
        d = self.mktemp()
        os.mkdir(d)
        s = subscriptions.Subscriptions(d)
        s.change("A/B", True)
        s.change("A/B", True)
        s.change("C", True)
        s.change("C", False)
        self.assertEqual(s.read(), ["A/B"])
