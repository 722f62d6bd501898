"""Session-level conformance, each scenario run on Dovecot 2.3 and on pydovecot.

Every scenario drives several sessions on one mailbox
(:class:`tests.dovecot_pair.Pair`): Debian's Dovecot ``imap`` processes on
its Maildir, and pydovecot sessions sharing one storage; the same
assertions judge both, so a ``…_dovecot`` test shows what the RFC text
means in practice and its ``…_ours`` twin holds pydovecot to it.

a. RFC 3501 7.2.6 / RFC 9051 7.3.5: a keyword reaches a session (FETCH
   FLAGS) only after an untagged FLAGS and PERMANENTFLAGS listed it, also
   when another session or a delivery created it.
b. RFC 9051 7.1 (EXPUNGEISSUED), RFC 2180 4.1: a FETCH of a message
   another session expunged completes (what is still known is served;
   ``OK [EXPUNGEISSUED]`` when some data was not); COPY of it fails with
   ``NO [EXPUNGEISSUED]``.
c. STATUS RECENT with the mailbox selected elsewhere, and STATUS of the
   session's own selected mailbox (its view: Dovecot adds the view's
   \\Recent messages).
d. RFC 7162 3.1.5: ESEARCH's MODSEQ is that of the message returned for
   MIN or MAX, the highest of all for ALL/COUNT.
e. RFC 5267 4.3: CONTEXT=SEARCH updates remove expunged messages
   (REMOVEFROM before the EXPUNGE, sequence and UID contexts alike).
f. RFC 5258 4: LIST (SUBSCRIBED RECURSIVEMATCH) lists a parent that is
   not itself subscribed only for subscribed children the pattern does
   not list, with CHILDINFO.
g. RFC 5465 5: MessageNew and MessageExpunge go together only for the
   selected mailbox.
h. RFC 2971 3.3: ID with 30 pairs and 1024-octet values, before login and
   after.
"""

from __future__ import annotations

import io
import re
import socket

from twisted.internet import reactor, task, threads
from twisted.trial import unittest

from pydovecot.login.imap import IMAPLoginFactory
from tests.dovecot_pair import DovecotLogin, Pair, exchange, settle
from tests.dovecot_side import split_responses
from tests.login_fakes import FakeLoginBackend, ListeningMixin

MESSAGES = [b"Subject: m%d\r\nFrom: a@b.c\r\n\r\nbody %d\r\n" % (i, i) for i in range(1, 5)]
FRESH = b"Subject: fresh\r\nFrom: x@y.z\r\n\r\nnever fetched\r\n"


def append(mailbox: bytes, message: bytes, flags: bytes = b"") -> bytes:
    """An APPEND command with a LITERAL+ literal."""
    flags = b" (" + flags + b")" if flags else b""
    return b"APPEND %s%s {%d+}\r\n%s" % (mailbox, flags, len(message), message)


def responses(out: bytes) -> list[bytes]:
    return [r.rstrip(b"\r\n") for r in split_responses(out)]


def tagged(out: bytes) -> bytes:
    """The tagged status response (the last one), without its tag."""
    return responses(out)[-1].split(b" ", 1)[1]


def untagged(out: bytes, pattern: bytes) -> list[bytes]:
    return [r for r in responses(out) if re.match(pattern, r)]


def flag_list(text: bytes) -> list[str]:
    return text.decode().split()


def assert_keywords_announced(case: unittest.TestCase, transcript: bytes) -> set[str]:
    """Every keyword in a FETCH FLAGS came after FLAGS and PERMANENTFLAGS
    responses that listed it (RFC 3501 7.2.6); returns the keywords seen."""
    flags: set[str] = set()
    permanent: set[str] = set()
    seen: set[str] = set()
    for r in responses(transcript):
        m = re.match(rb"^\* FLAGS \(([^)]*)\)$", r)
        if m:
            flags = set(flag_list(m.group(1)))
            continue
        m = re.match(rb"^\* OK \[PERMANENTFLAGS \(([^)]*)\)\]", r)
        if m:
            permanent = set(flag_list(m.group(1)))
            continue
        m = re.match(rb"^\* \d+ FETCH \(.*?\bFLAGS \(([^)]*)\)", r)
        if m:
            for kw in flag_list(m.group(1)):
                if kw.startswith("\\"):
                    continue
                seen.add(kw)
                case.assertIn(kw, flags, f"{kw} before FLAGS listed it: {r!r}")
                if permanent:  # () in a read-only session
                    case.assertIn(kw, permanent, f"{kw} before PERMANENTFLAGS listed it: {r!r}")
    return seen


class Side:
    """One server of the pair: new sessions and deliveries."""

    def __init__(self, pair: Pair, kind: str):
        self.pair = pair
        self.kind = kind

    def new(self):
        return self.pair.dovecot() if self.kind == "dovecot" else self.pair.ours()

    async def deliver(self, mailbox: str, message: bytes, flags: tuple[str, ...] = ()) -> None:
        """A delivery: for pydovecot through the storage, as the mail process
        delivers; Dovecot's is another session's APPEND."""
        if self.kind == "dovecot":
            s = self.new()
            out = await s.cmd(append(mailbox.encode(), message, " ".join(flags).encode()))
            assert tagged(out).startswith(b"OK"), out
            s.close()
        else:
            await settle(self.pair.storage.append(mailbox, io.BytesIO(message), list(flags)))


class PairCase(unittest.TestCase):
    messages = MESSAGES

    def setUp(self) -> None:
        self.pair = Pair(self.messages)
        self.addCleanup(self.pair.cleanup)

    def side(self, kind: str) -> Side:
        return Side(self.pair, kind)


async def pause(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


# -- a. keywords are announced before they are used --------------------------------


class KeywordTests(PairCase):
    async def keywords(self, side: Side) -> None:
        a, b = side.new(), side.new()
        await a.cmd(b"SELECT INBOX")
        await b.cmd(b"SELECT INBOX")
        await b.cmd(b"STORE 1 +FLAGS ($New1)")
        out = await a.cmd(b"FETCH 1 FLAGS")
        self.assertIn(b"$New1", out)
        await b.cmd(append(b"INBOX", FRESH, b"$New2"))
        await a.cmd(b"NOOP")
        self.assertIn(b"$New2", await a.cmd(b"FETCH 5 FLAGS"))
        await b.cmd(b"STORE 3 +FLAGS.SILENT ($Quiet)")
        self.assertIn(b"$Quiet", await a.cmd(b"UID FETCH 3 FLAGS"))
        await a.cmd(b"STORE 2 +FLAGS ($Own)")
        await b.cmd(b"NOOP")
        await side.deliver("INBOX", FRESH, ("$Delivered",))
        await a.cmd(b"NOOP")
        self.assertIn(b"$Delivered", await a.cmd(b"FETCH 6 FLAGS"))
        seen_a = assert_keywords_announced(self, a.transcript)
        seen_b = assert_keywords_announced(self, b.transcript)
        self.assertEqual(seen_a, {"$New1", "$New2", "$Quiet", "$Own", "$Delivered"})
        self.assertTrue({"$New1", "$Own"} <= seen_b, seen_b)

    async def test_keywords_dovecot(self) -> None:
        await self.keywords(self.side("dovecot"))

    async def test_keywords_ours(self) -> None:
        await self.keywords(self.side("ours"))

    async def other_session_keyword(self, side: Side) -> None:
        """A keyword another session creates, seen by this one's FETCH."""
        a, b = side.new(), side.new()
        await a.cmd(b"SELECT INBOX")
        await b.cmd(b"SELECT INBOX")
        await b.cmd(b"STORE 2 +FLAGS ($Other)")
        out = await a.cmd(b"FETCH 2 (UID FLAGS)")
        self.assertIn(b"$Other", out)
        assert_keywords_announced(self, a.transcript)

    async def test_keyword_of_other_session_dovecot(self) -> None:
        await self.other_session_keyword(self.side("dovecot"))

    async def test_keyword_of_other_session_ours(self) -> None:
        await self.other_session_keyword(self.side("ours"))

    async def examined_keyword(self, side: Side) -> None:
        """A read-only session gets FLAGS too (its PERMANENTFLAGS stay ())."""
        a, b = side.new(), side.new()
        await a.cmd(b"EXAMINE INBOX")
        await b.cmd(b"SELECT INBOX")
        await b.cmd(b"STORE 1 +FLAGS ($Ro)")
        out = await a.cmd(b"NOOP")
        self.assertIn(b"* OK [PERMANENTFLAGS ()]", out)
        self.assertIn(b"$Ro", await a.cmd(b"FETCH 1 FLAGS"))
        self.assertEqual(assert_keywords_announced(self, a.transcript), {"$Ro"})

    async def test_examined_keyword_dovecot(self) -> None:
        await self.examined_keyword(self.side("dovecot"))

    async def test_examined_keyword_ours(self) -> None:
        await self.examined_keyword(self.side("ours"))

    async def idle_keyword(self, side: Side) -> None:
        """A keyword another session or a delivery creates while this one IDLEs."""
        a, b = side.new(), side.new()
        await a.cmd(b"SELECT INBOX")
        await b.cmd(b"SELECT INBOX")

        async def store() -> None:
            await b.cmd(b"STORE 2 +FLAGS ($Idle)")

        out = await a.idle(store, b"$Idle")
        self.assertIn(b"$Idle", out)

        async def deliver() -> None:
            await side.deliver("INBOX", FRESH, ("$Pushed",))

        out = await a.idle(deliver, b"EXISTS")
        self.assertIn(b"* 5 EXISTS", out)
        self.assertIn(b"$Pushed", await a.cmd(b"FETCH 5 FLAGS"))
        self.assertEqual(assert_keywords_announced(self, a.transcript), {"$Idle", "$Pushed"})

    async def test_idle_dovecot(self) -> None:
        await self.idle_keyword(self.side("dovecot"))

    async def test_idle_ours(self) -> None:
        await self.idle_keyword(self.side("ours"))


# -- b. concurrent expunges ---------------------------------------------------------


class ConcurrentExpungeTests(PairCase):
    async def expunged_by_other(self, side: Side):
        a, b = side.new(), side.new()
        await b.cmd(b"CREATE Other")
        await a.cmd(b"SELECT INBOX")
        await b.cmd(b"SELECT INBOX")
        await a.cmd(b"FETCH 1 (ENVELOPE BODY.PEEK[])")  # message 1's data is at hand
        await b.cmd(b"STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        await b.cmd(b"EXPUNGE")
        return a, b

    async def fetch(self, side: Side) -> None:
        a, _b = await self.expunged_by_other(side)
        # what the view still knows: served, the command does not fail
        out = await a.cmd(b"FETCH 1:2 (UID FLAGS)")
        self.assertEqual(len(untagged(out, rb"^\* [12] FETCH \(UID [12] FLAGS")), 2, out)
        self.assertTrue(tagged(out).startswith(b"OK"), out)
        # data still available (parsed before the expunge): a plain OK
        out = await a.cmd(b"FETCH 1 (ENVELOPE)")
        self.assertEqual(len(untagged(out, rb'^\* 1 FETCH \(ENVELOPE \(NIL "m1"')), 1, out)
        self.assertEqual(tagged(out), b"OK Fetch completed" + tagged(out)[18:], out)
        self.assertNotIn(b"EXPUNGEISSUED", tagged(out))
        # the body is gone: still a FETCH response, and OK [EXPUNGEISSUED]
        out = await a.cmd(b"FETCH 2 (BODY.PEEK[])")
        self.assertEqual(len(untagged(out, rb"^\* 2 FETCH \(")), 1, out)
        self.assertTrue(tagged(out).startswith(b"OK [EXPUNGEISSUED]"), out)
        out = await a.cmd(b"FETCH 2 (ENVELOPE)")
        self.assertEqual(len(untagged(out, rb"^\* 2 FETCH \(ENVELOPE \(")), 1, out)
        self.assertTrue(tagged(out).startswith(b"OK"), out)
        out = await a.cmd(b"FETCH 1:3 (UID BODY.PEEK[TEXT])")
        self.assertEqual([r.split()[1] for r in untagged(out, rb"^\* \d+ FETCH")],
                         [b"1", b"2", b"3"], out)
        self.assertIn(b"body 3", out)
        self.assertTrue(tagged(out).startswith(b"OK [EXPUNGEISSUED]"), out)
        out = await a.cmd(b"SEARCH BODY body")
        self.assertIn(b" 3 4", untagged(out, rb"^\* SEARCH")[0])
        self.assertTrue(tagged(out).startswith(b"OK"), out)
        self.assertEqual(untagged(a.transcript, rb"^\* \d+ EXPUNGE"), [])
        # UID FETCH may report the expunges, after the data
        out = await a.cmd(b"UID FETCH 2 (BODY.PEEK[])")
        self.assertTrue(tagged(out).startswith(b"OK [EXPUNGEISSUED]"), out)
        self.assertEqual(untagged(out, rb"^\* \d+ EXPUNGE"), [b"* 2 EXPUNGE", b"* 1 EXPUNGE"])
        fetched = untagged(out, rb"^\* \d+ FETCH")
        self.assertEqual(len(fetched), 1, out)
        self.assertIn(b"UID 2", fetched[0])
        self.assertLess(out.index(b"FETCH"), out.index(b"EXPUNGE"))

    async def test_fetch_dovecot(self) -> None:
        await self.fetch(self.side("dovecot"))

    async def test_fetch_ours(self) -> None:
        await self.fetch(self.side("ours"))

    async def copy(self, side: Side) -> None:
        a, _b = await self.expunged_by_other(side)
        out = await a.cmd(b"COPY 2 Other")
        self.assertTrue(tagged(out).startswith(b"NO [EXPUNGEISSUED]"), out)
        self.assertNotIn(b"COPYUID", out)
        out = await a.cmd(b"STATUS Other (MESSAGES)")
        self.assertIn(b"* STATUS Other (MESSAGES 0)", out)
        self.assertEqual(untagged(a.transcript, rb"^\* \d+ EXPUNGE"), [b"* 2 EXPUNGE", b"* 1 EXPUNGE"])

    async def test_copy_dovecot(self) -> None:
        await self.copy(self.side("dovecot"))

    async def test_copy_ours(self) -> None:
        await self.copy(self.side("ours"))


# -- c. STATUS RECENT ---------------------------------------------------------------


def status_of(out: bytes) -> dict[str, int]:
    m = re.search(rb"\* STATUS \S+ \(([^)]*)\)", out)
    assert m is not None, out
    words = m.group(1).split()
    return {k.decode(): int(v) for k, v in zip(words[0::2], words[1::2], strict=True)}


class StatusRecentTests(PairCase):
    async def recent(self, side: Side) -> None:
        a, b = side.new(), side.new()
        await a.cmd(b"SELECT INBOX")  # A holds \Recent for 1-4
        query = b"STATUS INBOX (MESSAGES RECENT)"
        self.assertEqual(status_of(await b.cmd(query)), {"MESSAGES": 4, "RECENT": 0})
        own = await a.cmd(query)
        self.assertEqual(status_of(own), {"MESSAGES": 4, "RECENT": 4})
        self.assertTrue(tagged(own).startswith(b"OK [CLIENTBUG]"), own)  # as Dovecot
        await side.deliver("INBOX", FRESH)
        # nobody has seen the new message: it is recent for whoever does
        self.assertEqual(status_of(await b.cmd(query)), {"MESSAGES": 5, "RECENT": 1})
        await a.cmd(b"NOOP")
        self.assertIn(b"* 5 EXISTS", a.transcript)
        self.assertEqual(status_of(await b.cmd(query)), {"MESSAGES": 5, "RECENT": 0})
        self.assertEqual(status_of(await a.cmd(query)), {"MESSAGES": 5, "RECENT": 5})

    async def test_recent_dovecot(self) -> None:
        await self.recent(self.side("dovecot"))

    async def test_recent_ours(self) -> None:
        await self.recent(self.side("ours"))

    async def examined(self, side: Side) -> None:
        """A read-only session shows \\Recent without taking it; another
        session's SELECT takes it."""
        a, b, c = side.new(), side.new(), side.new()
        await a.cmd(b"EXAMINE INBOX")
        query = b"STATUS INBOX (MESSAGES RECENT)"
        self.assertEqual(status_of(await b.cmd(query)), {"MESSAGES": 4, "RECENT": 4})
        self.assertEqual(status_of(await a.cmd(query)), {"MESSAGES": 4, "RECENT": 4})
        await c.cmd(b"SELECT INBOX")
        self.assertEqual(status_of(await b.cmd(query)), {"MESSAGES": 4, "RECENT": 0})
        self.assertEqual(status_of(await a.cmd(query)), {"MESSAGES": 4, "RECENT": 4})
        self.assertEqual(status_of(await c.cmd(query)), {"MESSAGES": 4, "RECENT": 4})

    async def test_examined_dovecot(self) -> None:
        await self.examined(self.side("dovecot"))

    async def test_examined_ours(self) -> None:
        await self.examined(self.side("ours"))


# -- d. ESEARCH MODSEQ --------------------------------------------------------------


class EsearchModseqTests(PairCase):
    async def modseq(self, side: Side) -> None:
        a = side.new()
        await a.cmd(b"ENABLE CONDSTORE")
        await a.cmd(b"SELECT INBOX")
        for n, flag in ((1, b"\\Answered"), (2, b"\\Flagged"), (3, b"\\Seen")):
            await a.cmd(b"STORE %d +FLAGS.SILENT (%s)" % (n, flag))
        out = await a.cmd(b"FETCH 1:* (MODSEQ)")
        m = {int(s): int(v) for s, v in re.findall(rb"\* (\d+) FETCH \(MODSEQ \((\d+)\)\)", out)}
        self.assertEqual(sorted(m), [1, 2, 3, 4])
        self.assertTrue(m[4] < m[1] < m[2] < m[3], m)

        async def esearch(cmd: bytes) -> bytes:
            out = await a.cmd(cmd)
            lines = untagged(out, rb"^\* ESEARCH")
            self.assertEqual(len(lines), 1, out)
            return lines[0].split(b") ", 1)[1]

        self.assertEqual(await esearch(b"SEARCH RETURN (MIN) MODSEQ 1"), b"MIN 1 MODSEQ %d" % m[1])
        self.assertEqual(await esearch(b"SEARCH RETURN (MAX) MODSEQ 1"), b"MAX 4 MODSEQ %d" % m[4])
        self.assertEqual(await esearch(b"SEARCH RETURN (MIN MAX) MODSEQ 1"),
                         b"MIN 1 MAX 4 MODSEQ %d" % m[1])
        self.assertEqual(await esearch(b"SEARCH RETURN (ALL) MODSEQ 1"), b"ALL 1:4 MODSEQ %d" % m[3])
        self.assertEqual(await esearch(b"SEARCH RETURN (COUNT) MODSEQ 1"), b"COUNT 4 MODSEQ %d" % m[3])
        self.assertEqual(await esearch(b"UID SEARCH RETURN (MAX) UID 1:2 MODSEQ 1"),
                         b"UID MAX 2 MODSEQ %d" % m[2])
        self.assertEqual(await esearch(b"UID SEARCH RETURN (MIN) UID 2:4 MODSEQ 1"),
                         b"UID MIN 2 MODSEQ %d" % m[2])

    async def test_modseq_dovecot(self) -> None:
        await self.modseq(self.side("dovecot"))

    async def test_modseq_ours(self) -> None:
        await self.modseq(self.side("ours"))


# -- e. CONTEXT=SEARCH after EXPUNGE ------------------------------------------------


class ContextExpungeTests(PairCase):
    async def removefrom(self, side: Side) -> None:
        a, b = side.new(), side.new()
        await a.cmd(b"SELECT INBOX")
        await b.cmd(b"SELECT INBOX")
        await a.cmd(b"SEARCH RETURN (ALL UPDATE) UNSEEN")
        await a.cmd(b"UID SEARCH RETURN (COUNT UPDATE) ALL")
        tags = [b'(TAG "t2") REMOVEFROM', b'(TAG "t3") UID REMOVEFROM']
        await a.cmd(b"STORE 2 +FLAGS.SILENT (\\Deleted)")
        out = await a.cmd(b"EXPUNGE")  # this session's own expunge
        self.assertIn(b'* ESEARCH (TAG "t2") REMOVEFROM (0 2)', responses(out))
        self.assertIn(b'* ESEARCH (TAG "t3") UID REMOVEFROM (0 2)', responses(out))
        for t in tags:
            self.assertLess(out.index(t), out.index(b"* 2 EXPUNGE"), out)
        await b.cmd(b"STORE 3 +FLAGS.SILENT (\\Deleted)")
        await b.cmd(b"EXPUNGE")  # another session's: seq 2 (UID 3) in A's view
        out = await a.cmd(b"NOOP")
        self.assertIn(b'* ESEARCH (TAG "t2") REMOVEFROM (0 2)', responses(out))
        self.assertIn(b'* ESEARCH (TAG "t3") UID REMOVEFROM (0 3)', responses(out))
        for t in tags:
            self.assertLess(out.index(t), out.index(b"* 2 EXPUNGE"), out)
        await side.deliver("INBOX", FRESH)
        out = await a.cmd(b"NOOP")
        self.assertIn(b'* ESEARCH (TAG "t2") ADDTO (0 3)', responses(out))
        self.assertIn(b'* ESEARCH (TAG "t3") UID ADDTO (0 5)', responses(out))

    async def test_removefrom_dovecot(self) -> None:
        await self.removefrom(self.side("dovecot"))

    async def test_removefrom_ours(self) -> None:
        await self.removefrom(self.side("ours"))


# -- f. LIST (SUBSCRIBED RECURSIVEMATCH) ----------------------------------------------


def listed(out: bytes) -> dict[str, tuple[bool, bool]]:
    """LIST responses → {name: (\\Subscribed, CHILDINFO SUBSCRIBED)}."""
    got = {}
    for r in untagged(out, rb"^\* LIST "):
        m = re.match(rb'^\* LIST \(([^)]*)\) "/" ("?)([^" ]+)\2(.*)$', r)
        assert m is not None, r
        childinfo = re.search(rb'\(\s*"?CHILDINFO"?\s+\("SUBSCRIBED"\)\s*\)', m.group(4)) is not None
        got[m.group(3).decode()] = (b"\\Subscribed" in m.group(1), childinfo)
    return got


class RecursiveMatchTests(PairCase):
    async def childinfo(self, side: Side) -> None:
        a = side.new()
        for name in (b"Foo", b"Foo/Bar", b"Foo/Baz", b"Moo", b"Moo/Bar", b"Zed", b"Zed/A",
                     b"Zed/A/B"):
            await a.cmd(b"CREATE " + name)
        for name in (b"Foo", b"Foo/Bar", b"Moo/Bar", b"Zed/A/B"):
            await a.cmd(b"SUBSCRIBE " + name)
        cmd = b'LIST (SUBSCRIBED RECURSIVEMATCH) "" '
        # the subscribed children are listed themselves: no unsubscribed
        # parent is added for them (a subscribed one keeps CHILDINFO)
        self.assertEqual(listed(await a.cmd(cmd + b'"*"')), {
            "Foo": (True, True), "Foo/Bar": (True, False), "Moo/Bar": (True, False),
            "Zed/A/B": (True, False)})
        self.assertEqual(listed(await a.cmd(cmd + b'"%"')), {
            "Foo": (True, True), "Moo": (False, True), "Zed": (False, True)})
        self.assertEqual(listed(await a.cmd(cmd + b'"%/%"')), {
            "Foo/Bar": (True, False), "Moo/Bar": (True, False), "Zed/A": (False, True)})
        self.assertEqual(listed(await a.cmd(cmd + b'"Zed*"')), {"Zed/A/B": (True, False)})

    async def test_childinfo_dovecot(self) -> None:
        await self.childinfo(self.side("dovecot"))

    async def test_childinfo_ours(self) -> None:
        await self.childinfo(self.side("ours"))


# -- g. NOTIFY MessageExpunge without MessageNew ----------------------------------------


class NotifyEventsTests(PairCase):
    async def pairing(self, side: Side) -> None:
        a = side.new()
        accepted = [b"(PERSONAL (MessageExpunge))", b"(PERSONAL (MessageNew))",
                    b"(PERSONAL (FlagChange))", b"(INBOXES (MessageExpunge FlagChange))",
                    b"(SELECTED (MessageNew MessageExpunge)) (PERSONAL (MessageExpunge))",
                    b"(SELECTED (MessageNew MessageExpunge FlagChange))"]
        refused = [b"(SELECTED (MessageExpunge))", b"(SELECTED (MessageNew))",
                   b"(SELECTED-DELAYED (MessageExpunge FlagChange))", b"(SELECTED (FlagChange))"]
        for spec in accepted:
            out = await a.cmd(b"NOTIFY SET " + spec)
            self.assertTrue(tagged(out).startswith(b"OK"), (spec, out))
        for spec in refused:
            out = await a.cmd(b"NOTIFY SET " + spec)
            self.assertTrue(tagged(out).startswith(b"BAD"), (spec, out))

    async def test_pairing_dovecot(self) -> None:
        await self.pairing(self.side("dovecot"))

    async def test_pairing_ours(self) -> None:
        await self.pairing(self.side("ours"))

    async def expunge_only(self, side: Side) -> None:
        a, b = side.new(), side.new()
        await b.cmd(b"CREATE Other")
        await b.cmd(append(b"Other", FRESH))
        out = await a.cmd(b"NOTIFY SET STATUS (PERSONAL (MessageExpunge))")
        self.assertTrue(tagged(out).startswith(b"OK"), out)
        self.assertIn(b"MESSAGES 1", untagged(out, rb"^\* STATUS Other ")[0])
        await b.cmd(b"SELECT Other")
        await b.cmd(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
        await b.cmd(b"EXPUNGE")
        for _ in range(40):  # Dovecot notices through inotify, soon
            await a.cmd(b"NOOP")
            statuses = untagged(a.transcript, rb"^\* STATUS Other ")
            if b"MESSAGES 0" in statuses[-1]:
                break
            await pause(0.25)
        self.assertIn(b"MESSAGES 0", statuses[-1], a.transcript)

    async def test_expunge_only_dovecot(self) -> None:
        await self.expunge_only(self.side("dovecot"))

    async def test_expunge_only_ours(self) -> None:
        await self.expunge_only(self.side("ours"))


# -- h. ID at RFC 2971's maxima --------------------------------------------------------

ID_CASES = {
    "quoted": b"x ID (" + b" ".join(b'"k%02d" "%s"' % (i, b"v" * 1024) for i in range(30))
    + b")\r\n",
    "literal+": b"x ID (" + b" ".join(b'"k%02d" {1024+}\r\n%s' % (i, b"v" * 1024)
                                      for i in range(30)) + b")\r\n",
    "literal": b"x ID (" + b" ".join(b'"k%02d" {1024}\r\n%s' % (i, b"v" * 1024)
                                     for i in range(30)) + b")\r\n",
    "nil": b"x ID (" + b" ".join(b'"k%02d" NIL' % i for i in range(30)) + b")\r\n",
}


class IdPostLoginTests(PairCase):
    async def maxima(self, side: Side) -> None:
        a = side.new()
        for name, data in ID_CASES.items():
            out = await a.cmd(data[len(b"x "):-2])
            self.assertEqual(untagged(out, rb"^\* ID "), [untagged(out, rb"^\* ID ")[0]], name)
            self.assertTrue(tagged(out).startswith(b"OK"), (name, out[-200:]))

    async def test_maxima_dovecot(self) -> None:
        await self.maxima(self.side("dovecot"))

    async def test_maxima_ours(self) -> None:
        await self.maxima(self.side("ours"))


class IdPreLoginTests(ListeningMixin, unittest.TestCase):
    """Before login: Dovecot's imap-login on a UNIX socket, pydovecot's
    login protocol on 127.0.0.1 (port 0)."""

    def check(self, connect) -> None:
        for name, data in ID_CASES.items():
            s = connect()
            try:
                out = exchange(s, data)
                self.assertEqual(len(untagged(out, rb"^\* ID ")), 1, (name, out[-200:]))
                self.assertTrue(tagged(out).startswith(b"OK"), (name, out[-200:]))
                self.assertTrue(tagged(exchange(s, b"x NOOP\r\n")).startswith(b"OK"), name)
            finally:
                s.close()
        # past the maxima: refused, never a crash
        s = connect()
        try:
            out = exchange(s, b'x ID ("%s" "v")\r\n' % (b"k" * 31))
            self.assertTrue(tagged(out).startswith(b"BAD"), out)
        finally:
            s.close()

    def test_maxima_dovecot(self) -> None:
        login = DovecotLogin()
        self.addCleanup(login.cleanup)
        self.check(login.connect)

    async def test_maxima_ours(self) -> None:
        port = self.listen(IMAPLoginFactory(FakeLoginBackend(), False))

        def connect() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            got = b""
            while b"\r\n" not in got:
                got += s.recv(4096)
            return s

        await threads.deferToThread(self.check, connect)
