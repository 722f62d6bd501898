"""pydoveadm's pieces without a master: doveadm's query syntax, the
formatters' layout rules, verb lookup and the result documents."""

from __future__ import annotations

import datetime
import io
import os

from twisted.trial.unittest import SynchronousTestCase

from pydovecot.admin import formatters, query
from pydovecot.admin.protocol import (
    EXPAND,
    HIDE_TITLE,
    INLINE_MAX,
    RIGHT,
    AdminError,
    header,
    pack,
    unpack,
)
from pydovecot.admin.verbs import find
from pydovecot.imap.parser import Atom, String


class QueryTests(SynchronousTestCase):
    def test_mailbox_keys_are_taken_out(self) -> None:
        q = query.parse(["mailbox", "INBOX", "mailbox", "Arch*", "subject", "x"])
        self.assertEqual(q.mailboxes, ["INBOX", "Arch*"])
        self.assertTrue(q.wants("inbox"))
        self.assertTrue(q.wants("Archive/2026"))
        self.assertFalse(q.wants("Sent"))
        self.assertTrue(q.search.needs_content)
        self.assertIsNone(query.parse(["mailbox", "INBOX"]).search)

    def test_infix_or_and_parentheses(self) -> None:
        tokens, _, _ = query._tokens(["from", "a", "or", "from", "b", "or", "seen"], 0)
        self.assertEqual(tokens, [Atom(b"OR"), Atom(b"FROM"), String(b"a"), Atom(b"OR"),
                                  Atom(b"FROM"), String(b"b"), Atom(b"SEEN")])
        tokens, _, _ = query._tokens(["(", "seen", "or", "flagged", ")", "not", "deleted"], 0)
        self.assertEqual(tokens, [[Atom(b"OR"), Atom(b"SEEN"), Atom(b"FLAGGED")],
                                  Atom(b"NOT"), Atom(b"DELETED")])

    def test_refusals(self) -> None:
        for args, why in ((["seen", "or", "flagged", "deleted"], "parenthesis"),
                          (["(", "mailbox", "INBOX", ")"], "top level"),
                          (["subject"], "Missing parameter"),
                          (["(", "seen"], "Missing )"),
                          (["seen", ")"], "Unexpected"),
                          (["frobnicate"], "Unknown search key"),
                          ([], "Empty")):
            with self.assertRaises(query.QueryError) as cm:
                query.parse(args)
            self.assertIn(why, str(cm.exception), args)

    def test_dates(self) -> None:
        now = datetime.datetime(2026, 12, 7, 12, 0).timestamp()
        self.assertEqual(query._date("2026-01-05", now), "5-Jan-2026")
        self.assertEqual(query._date("2d", now), "5-Dec-2026")
        self.assertEqual(query._date("1w", now), "30-Nov-2026")
        self.assertEqual(query._date("7-Dec-2026", now), "7-Dec-2026")
        query.parse(["savedsince", "30d", "before", "2030-01-01"])

    def test_mailbox_patterns(self) -> None:
        self.assertTrue(query.match_mailbox("*", "a/b/c"))
        self.assertTrue(query.match_mailbox("a/%", "a/b"))
        self.assertFalse(query.match_mailbox("a/%", "a/b/c"))
        self.assertTrue(query.match_mailbox("INBOX/*", "inbox/x"))
        self.assertFalse(query.match_mailbox("a.b", "aXb"))


class FormatterTests(SynchronousTestCase):
    headers = [header("user", "username", EXPAND), header("n", "#", RIGHT),
               header("hidden", "hidden", HIDE_TITLE)]
    rows = [["alice", "1", "x"], ["bob", "12", "y"]]

    def render(self, name: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        if name == "table":
            formatters.print_table(self.headers, self.rows, out, err, columns=40)
        else:
            formatters.write(name, self.headers, self.rows, out, err)
        return out.getvalue()

    def test_table(self) -> None:
        # widths 8/2/6 (+2 spaces) = 18; (40-18)//2 = 11 more on the EXPAND column
        self.assertEqual(self.render("table"),
                         "username" + " " * 11 + "  # hidden\n"
                         "alice" + " " * 14 + "  1 x     \n"
                         "bob" + " " * 16 + " 12 y     \n")

    def test_flow_tab_json_pager(self) -> None:
        self.assertEqual(self.render("flow"), "username=alice #=1 x\nusername=bob #=12 y\n")
        self.assertEqual(self.render("tab"), "username\t#\thidden\nalice\t1\tx\nbob\t12\ty\n")
        self.assertEqual(self.render("json"), '[{"user":"alice","n":"1","hidden":"x"},'
                                              '{"user":"bob","n":"12","hidden":"y"}]')
        self.assertEqual(self.render("pager"),
                         "username: alice\n#: 1\nx\n\f\nusername: bob\n#: 12\ny\n")

    def test_table_refuses_multi_line_values(self) -> None:
        with self.assertRaises(formatters.FormatterError):
            formatters.print_table([header("text")], [["a\nb"]], io.StringIO(), io.StringIO())

    def test_formatted(self) -> None:
        out = io.StringIO()
        formatters.write("formatted", self.headers, self.rows, out, io.StringIO(),
                         template="%{user}/%{n} ")
        self.assertEqual(out.getvalue(), "alice/1 bob/12 ")


class ProtocolTests(SynchronousTestCase):
    def test_small_results_inline_large_as_fd(self) -> None:
        small = {"rows": [["a"]]}
        self.assertEqual(unpack(pack(small)), small)
        big = {"rows": [["x" * INLINE_MAX]]}
        packed = pack(big)
        self.assertIn("output", packed)
        self.assertEqual(unpack(packed), big)
        with self.assertRaises(OSError):
            os.fstat(packed["output"])  # unpack closed it

    def test_admin_error_survives_amp(self) -> None:
        e = AdminError(68, "Mailbox doesn't exist: x")
        again = AdminError(str(e))  # what AMP rebuilds from the text
        self.assertEqual((again.code, again.message), (68, "Mailbox doesn't exist: x"))

    def test_verbs_by_longest_prefix(self) -> None:
        verb, rest = find(["mailbox", "metadata", "get", "INBOX", "/private/x"])
        self.assertEqual((verb.name, rest), ("mailbox metadata get", ["INBOX", "/private/x"]))
        verb, rest = find(["auth", "test", "alice"])
        self.assertEqual(verb.name, "auth test")
        self.assertEqual(find(["nope"])[0], None)


class UserIterateTests(SynchronousTestCase):
    """authd's UserIterate pages (for -A): under an AMP value each, all names once."""

    def test_pages(self) -> None:
        from twisted.internet import defer

        from authd.server import MasterProtocol

        names = [f"user{i:05d}@example.org" for i in range(5000)] + ["x" * 70000, "last"]

        class Engine:
            def iterate_users(self):
                return defer.succeed(list(names))

        proto = MasterProtocol(Engine())
        got, offset, pages = [], 0, 0
        while True:
            page = self.successResultOf(proto.user_iterate(offset))
            self.assertLess(sum(len(n) + 2 for n in page["users"]), 60000)
            got += page["users"]
            pages += 1
            if not page["next"]:
                break
            self.assertGreater(page["next"], offset)
            offset = page["next"]
        self.assertGreater(pages, 1)
        self.assertEqual(got, names[:5000] + ["last"])  # the over-long name is left out

    def test_passwd_file_iterates(self) -> None:
        import tempfile

        from authd.drivers.passwd_file import PasswdFileDb

        with tempfile.NamedTemporaryFile("w", suffix=".passwd", delete=False) as f:
            f.write("alice:{PLAIN}x:::\nbob:{PLAIN}y:::\n")
        self.addCleanup(os.unlink, f.name)
        self.assertEqual(self.successResultOf(PasswdFileDb(f.name).iterate()), ["alice", "bob"])
        self.assertEqual(self.successResultOf(PasswdFileDb("/etc/%d.passwd").iterate()), [])
