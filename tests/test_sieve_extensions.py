"""Sieve extensions, each against its RFC's rules and examples, through
the validator and executor (no delivery)."""

from __future__ import annotations

import datetime
import time

from twisted.trial.unittest import SynchronousTestCase

from pydovecot.sieve.errors import SieveRuntimeError, SieveSyntaxError
from pydovecot.sieve.interp import Context, Envelope, Interpreter, Limits
from pydovecot.sieve.message import Message
from pydovecot.sieve.parser import parse
from pydovecot.sieve.validate import ALL_EXTENSIONS, compile_script

MSG = (b"Return-Path: <bob@example.org>\r\n"
       b"Received: from a by b; Tue, 01 Dec 2026 10:00:05 +0000\r\n"
       b"Received: from c by d; Tue, 01 Dec 2026 09:00:00 +0000\r\n"
       b"From: Bob <bob@example.org>\r\n"
       b"To: Alice <alice+work@example.com>, carol@example.net\r\n"
       b"Cc: dave@example.com\r\n"
       b"Subject: =?utf-8?q?Caf=C3=A9?= [list] meeting at 10\r\n"
       b"Date: Tue, 01 Dec 2026 11:30:00 +0100\r\n"
       b"Message-ID: <m1@example.org>\r\n"
       b"X-Spam-Score: 7.5\r\n"
       b"X-Priority: 10\r\n"
       b"MIME-Version: 1.0\r\n"
       b'Content-Type: multipart/mixed; boundary="b"\r\n'
       b"\r\n"
       b"preamble\r\n--b\r\n"
       b"Content-Type: text/plain; charset=iso-8859-1\r\n"
       b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
       b"Gr=FC=DFe, the secret word is plugh.\r\n"
       b"--b\r\n"
       b'Content-Type: application/pdf; name="x.pdf"\r\n'
       b"Content-Transfer-Encoding: base64\r\n\r\n"
       b"c2VjcmV0IHBkZg==\r\n"
       b"--b--\r\n")


def run(script: str, message: bytes = MSG, ctx: Context | None = None, **kw):
    ctx = ctx or Context(envelope=Envelope("bob@example.org", "alice+work@example.com"), **kw)
    ctx.settings.setdefault("extensions", ALL_EXTENSIONS)
    compiled = compile_script(parse(script), ALL_EXTENSIONS)
    return Interpreter(Message(message), ctx).run_all(compiled)


def outcome(script: str, **kw) -> list:
    return run(script, **kw).outcome()


INBOX = ("store", "INBOX", ())


class CoreTests(SynchronousTestCase):
    def test_implicit_keep_rules(self) -> None:  # RFC 5228 2.10.2
        self.assertEqual(outcome(""), [INBOX])
        self.assertEqual(outcome("discard;"), [("discard",)])
        self.assertEqual(outcome("discard; keep;"), [("discard",), INBOX])
        self.assertEqual(outcome('require "fileinto"; fileinto "A"; fileinto "A";'),
                         [("store", "A", ())])
        self.assertEqual(outcome('require "fileinto"; fileinto "INBOX"; keep;'), [INBOX])

    def test_header_address_exists_size(self) -> None:
        self.assertEqual(outcome('if header :contains "subject" "café" { discard; }'),
                         [("discard",)])  # RFC 2047 decoded
        self.assertEqual(outcome('if header :is "subject" "café" { discard; }'), [INBOX])
        self.assertEqual(outcome('if address :is :all "to" "carol@example.net" '
                                 '{ discard; }'), [("discard",)])
        self.assertEqual(outcome('if address :localpart :is "from" "BOB" { discard; }'),
                         [("discard",)])  # i;ascii-casemap by default
        self.assertEqual(outcome('if address :comparator "i;octet" :localpart :is "from" '
                                 '"BOB" { discard; }'), [INBOX])
        self.assertEqual(outcome('if exists ["from", "x-priority"] { discard; }'),
                         [("discard",)])
        self.assertEqual(outcome('if exists ["from", "x-nope"] { discard; }'), [INBOX])
        self.assertEqual(outcome('if size :over 100 { discard; }'), [("discard",)])
        self.assertEqual(outcome('if size :under 100 { discard; }'), [INBOX])
        self.assertEqual(outcome('if header :matches "subject" "caf? *" { discard; }'),
                         [("discard",)])
        self.assertEqual(outcome('if header :matches "subject" "\\\\*" { discard; }'),
                         [INBOX])

    def test_stop_and_elsif(self) -> None:
        self.assertEqual(outcome('if false { discard; } elsif true { stop; } discard;'),
                         [INBOX])

    def test_redirect_limits(self) -> None:  # sieve_max_redirects
        script = "".join(f'redirect "r{n}@example.net";' for n in range(5))
        with self.assertRaises(SieveRuntimeError) as e:
            run(script)
        self.assertIn("redirect actions exceeds", str(e.exception))
        self.assertEqual(len(outcome(script.rsplit("redirect", 1)[0] + 'redirect "r0@example.net";')), 4)
        with self.assertRaises(SieveRuntimeError):
            run('redirect "not an address";')

    def test_max_actions(self) -> None:
        script = 'require "fileinto";' + "".join(f'fileinto "F{n}";' for n in range(5))
        with self.assertRaises(SieveRuntimeError) as e:
            run(script, limits=Limits(max_actions=3))
        self.assertIn("total number of actions", str(e.exception))


class ExtensionTests(SynchronousTestCase):
    def test_reject_ereject(self) -> None:  # RFC 5429
        self.assertEqual(outcome('require "reject"; reject "no";'), [("reject", "no")])
        self.assertEqual(outcome('require "ereject"; ereject "no";'), [("ereject", "no")])
        with self.assertRaises(SieveRuntimeError):
            run('require ["reject", "fileinto"]; fileinto "A"; reject "no";')
        with self.assertRaises(SieveRuntimeError):
            run('require ["reject", "vacation"]; reject "no"; vacation "x";')

    def test_envelope(self) -> None:  # RFC 5228 5.4
        self.assertEqual(outcome('require "envelope"; if envelope :domain "to" "example.com"'
                                 ' { discard; }'), [("discard",)])
        ctx = Context(envelope=Envelope("", "alice@example.com"))
        self.assertEqual(run('require "envelope"; if envelope :is "from" "" { discard; }',
                             ctx=ctx).outcome(), [("discard",)])

    def test_imap4flags(self) -> None:  # RFC 5232
        self.assertEqual(outcome('require "imap4flags"; setflag "\\\\seen $A"; addflag "$B";'
                                 'removeflag "$A";'), [("store", "INBOX", ("$b", "\\seen"))])
        self.assertEqual(outcome('require ["imap4flags", "fileinto"]; addflag "$A";'
                                 'fileinto :flags "\\\\Flagged" "X"; fileinto "Y";'),
                         [("store", "X", ("\\flagged",)), ("store", "Y", ("$a",))])
        self.assertEqual(outcome('require ["imap4flags", "variables", "relational", '
                                 '"comparator-i;ascii-numeric"]; set "v" "";'
                                 'addflag "v" ["a b", "c"]; if hasflag :count "eq" '
                                 ':comparator "i;ascii-numeric" "v" "3" { discard; }'),
                         [("discard",)])
        self.assertEqual(outcome('require "imap4flags"; addflag "$X"; '
                                 'if hasflag :is "$x" { discard; }'), [("discard",)])

    def test_copy(self) -> None:  # RFC 3894
        self.assertEqual(outcome('require ["copy", "fileinto"]; fileinto :copy "A";'
                                 'redirect :copy "x@example.net";'),
                         [("redirect", "x@example.net"), ("store", "A", ()), INBOX])

    def test_body(self) -> None:  # RFC 5173
        req = 'require "body"; '
        self.assertEqual(outcome(req + 'if body :contains "grüße" { discard; }'),
                         [("discard",)])  # :text decodes text parts
        self.assertEqual(outcome(req + 'if body :contains "secret pdf" { discard; }'), [INBOX])
        self.assertEqual(outcome(req + 'if body :content "application/pdf" :contains '
                                 '"secret pdf" { discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if body :raw :contains "c2VjcmV0IHBkZg==" '
                                 '{ discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if body :content "multipart" :contains "preamble" '
                                 '{ discard; }'), [("discard",)])

    def test_variables(self) -> None:  # RFC 5229
        req = ('require ["variables", "fileinto", "regex", "relational", '
               '"comparator-i;ascii-numeric"]; ')
        self.assertEqual(outcome(req + 'if header :matches "subject" "* [*] *" '
                                 '{ fileinto "${2}-${1}"; }'),
                         [("store", "list-Café", ())])
        self.assertEqual(outcome(req + 'set :upper :lowerfirst "a" "hello"; '
                                 'set :length "b" "${a}"; fileinto "${a}${b}${undefined}";'),
                         [("store", "hELLO5", ())])  # 4.1 precedence
        self.assertEqual(outcome(req + 'set "a" "x*y"; set :quotewildcard "b" "${a}";'
                                 'if string :matches "x*y" "${b}" { fileinto "q"; }'),
                         [("store", "q", ())])
        self.assertEqual(outcome(req + 'if header :regex "subject" "at ([0-9]+)$" '
                                 '{ fileinto "h${1}"; }'), [("store", "h10", ())])
        self.assertEqual(outcome(req + 'if string :count "eq" :comparator "i;ascii-numeric"'
                                 ' ["a", "", "b"] "2" { discard; }'), [("discard",)])
        c = compile_script(parse('fileinto "${x}";'.join(["require \"fileinto\";", ""])),
                           ALL_EXTENSIONS)
        self.assertEqual(c["commands"][0]["p"][0], "${x}")  # no variables: literal
        with self.assertRaises(SieveRuntimeError):
            run(req + "".join(f'set "v{n}" "x";' for n in range(300)))

    def test_vacation(self) -> None:  # RFC 5230 / RFC 6131
        r = run('require "vacation"; vacation :days 3 :subject "S" :from "me@example.com" '
                ':addresses ["a@example.com"] :handle "h" "reason";')
        a = r.actions[0]
        self.assertEqual((a.kind, a.params["period"], a.params["subject"], a.params["from"],
                          a.params["addresses"], a.params["handle"]),
                         ("vacation", 3 * 86400, "S", "me@example.com", ["a@example.com"], "h"))
        self.assertTrue(r.implicit_keep)
        r = run('require "vacation-seconds"; vacation :seconds 5 "x";')
        self.assertEqual(r.actions[0].params["period"], 86400)  # sieve_vacation_min_period
        ctx = Context(envelope=Envelope("b@example.org", "a@example.com"))
        ctx.settings["vacation_min_period"] = 0
        r = run('require "vacation-seconds"; vacation :seconds 5 "x";', ctx=ctx)
        self.assertEqual(r.actions[0].params["period"], 5)
        self.assertEqual(run('require "vacation"; vacation "x";').actions[0].params["handle"],
                         "x<default-subject><default-from><NO-MIME>")  # as Pigeonhole
        with self.assertRaises(SieveSyntaxError):
            run('require "vacation"; vacation :seconds 5 "x";')

    def test_relational_and_numeric(self) -> None:  # RFC 5231, RFC 4790
        req = 'require ["relational", "comparator-i;ascii-numeric"]; '
        self.assertEqual(outcome(req + 'if header :value "gt" :comparator "i;ascii-numeric"'
                                 ' "x-priority" "9" { discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if header :value "gt" "x-priority" "9" '
                                 '{ discard; }'), [INBOX])  # "10" < "9" as strings
        self.assertEqual(outcome(req + 'if address :count "eq" :comparator "i;ascii-numeric"'
                                 ' ["to", "cc"] "3" { discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if header :value "eq" :comparator "i;ascii-numeric"'
                                 ' "subject" "x" { discard; }'), [("discard",)])  # inf=inf
        self.assertEqual(outcome(req + 'if header :count "ne" :comparator "i;ascii-numeric"'
                                 ' "received" "2" { discard; }'), [INBOX])

    def test_subaddress(self) -> None:  # RFC 5233
        req = 'require ["subaddress", "envelope"]; '
        self.assertEqual(outcome(req + 'if envelope :detail "to" "work" { discard; }'),
                         [("discard",)])
        self.assertEqual(outcome(req + 'if envelope :user "to" "alice" { discard; }'),
                         [("discard",)])
        self.assertEqual(outcome(req + 'if address :detail "from" "" { discard; }'), [INBOX])
        self.assertEqual(outcome(req + 'if address :user "cc" "dave" { discard; }'),
                         [("discard",)])

    def test_date_index(self) -> None:  # RFC 5260
        req = 'require ["date", "index", "relational"]; '
        self.assertEqual(outcome(req + 'if date :originalzone "date" "hour" "11" '
                                 '{ discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if date :zone "+0000" "date" "time" "10:30:00" '
                                 '{ discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if date :zone "-0500" "date" "iso8601" '
                                 '"2026-12-01T05:30:00-05:00" { discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if date :originalzone "date" "weekday" "2" '
                                 '{ discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if date :index 2 :zone "+0000" "received" "hour" "09"'
                                 ' { discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if date :index 1 :last :zone "+0000" "received" '
                                 '"hour" "09" { discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if header :index 2 :contains "received" "from a" '
                                 '{ discard; }'), [INBOX])
        ctx = Context(envelope=Envelope("b@x", "a@y"),
                      now=datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC))
        self.assertEqual(run(req + 'if currentdate :zone "+0200" "date" "2030-06-01" '
                             '{ discard; }', ctx=ctx).outcome(), [("discard",)])
        self.assertEqual(run(req + 'if currentdate :value "ge" "julian" "60000" '
                             '{ discard; }', ctx=ctx).outcome(), [("discard",)])

    def test_regex(self) -> None:  # draft-ietf-sieve-regex
        req = 'require ["regex", "variables", "fileinto"]; '
        self.assertEqual(outcome(req + 'if address :regex :domain "from" "^exa.+\\\\.org$" '
                                 '{ discard; }'), [("discard",)])
        with self.assertRaises(SieveRuntimeError):
            run(req + 'if header :regex "subject" "(" { discard; }')
        with self.assertRaises(SieveSyntaxError):
            run('require ["regex", "comparator-i;ascii-numeric"]; if header :regex '
                ':comparator "i;ascii-numeric" "a" "b" {}')

    def test_include(self) -> None:  # RFC 6609
        scripts = {
            ("sub", False): 'require ["include", "variables", "fileinto"]; global "box"; '
                            'fileinto "${box}"; return; discard;',
            ("g", True): 'require ["include", "variables"]; set "global.box" "Second";',
            ("loop", False): 'require "include"; include "loop";',
        }
        compiled = {k: compile_script(parse(v), ALL_EXTENSIONS) for k, v in scripts.items()}
        ctx = Context(envelope=Envelope("b@x", "a@y"),
                      include=lambda name, is_global: compiled.get((name, is_global)))
        req = 'require ["include", "variables"]; global "box"; set "box" "First"; '
        self.assertEqual(run(req + 'include "sub"; include :global "g"; include "sub"; '
                             'include :once "sub";', ctx=ctx).outcome(),
                         [("store", "First", ()), ("store", "Second", ())])
        with self.assertRaises(SieveRuntimeError):
            run(req + 'include "missing";', ctx=ctx)
        self.assertEqual(run(req + 'include :optional "missing";', ctx=ctx).outcome(),
                         [INBOX])
        with self.assertRaises(SieveRuntimeError) as e:
            run(req + 'include "loop";', ctx=ctx)
        self.assertIn("nesting", str(e.exception))

    def test_mailbox(self) -> None:  # RFC 5490
        ctx = Context(envelope=Envelope("b@x", "a@y"), mailbox_exists=lambda n: n == "Work")
        r = run('require ["mailbox", "fileinto"]; if mailboxexists "Work" '
                '{ fileinto :create "New"; } if mailboxexists ["Work", "Nope"] { discard; }',
                ctx=ctx)
        self.assertEqual(r.outcome(), [("store", "New", ())])
        self.assertTrue(r.actions[0].create)

    def test_duplicate(self) -> None:  # RFC 7352
        seen = set()
        ctx = Context(envelope=Envelope("b@x", "a@y"),
                      duplicate_seen=lambda ident, handle: (ident, handle) in seen)
        r = run('require "duplicate"; if duplicate { discard; }', ctx=ctx)
        self.assertEqual(r.outcome(), [INBOX])
        self.assertEqual(r.duplicates[0][:2], ("<m1@example.org>", ""))
        seen.add(("<m1@example.org>", ""))
        r = run('require "duplicate"; if duplicate { discard; }', ctx=ctx)
        self.assertEqual(r.outcome(), [("discard",)])
        r = run('require "duplicate"; if duplicate :header "subject" :handle "h" '
                '{ discard; }', ctx=ctx)
        self.assertEqual(r.outcome(), [INBOX])

    def test_editheader(self) -> None:  # RFC 5293
        script = ('require ["editheader", "variables", "index"]; addheader "X-A" "one"; '
                  'addheader :last "X-A" "two"; deleteheader :index 1 "x-a"; '
                  'deleteheader "received"; deleteheader :contains "to" "carol";'
                  'if header :is "x-a" "two" { addheader "X-Seen" "yes"; }')
        message = Message(MSG)
        ctx = Context(envelope=Envelope("b@x", "a@y"))
        Interpreter(message, ctx).run_all(compile_script(parse(script), ALL_EXTENSIONS))
        data = message.as_bytes()
        self.assertTrue(data.startswith(b"X-Seen: yes\r\nReturn-Path:"))
        self.assertIn(b"X-A: two\r\n", data)
        self.assertNotIn(b"X-A: one", data)
        self.assertEqual(data.count(b"Received:"), 2)  # protected
        self.assertNotIn(b"To: Alice", data)
        self.assertTrue(data.endswith(b"--b--\r\n"))

    def test_mime_foreverypart(self) -> None:  # RFC 5703
        req = 'require ["mime", "foreverypart", "variables", "fileinto", "extracttext"]; '
        self.assertEqual(outcome(req + 'foreverypart { if header :mime :subtype '
                                 '"content-type" "pdf" { fileinto "PDF"; break; } }'),
                         [("store", "PDF", ())])
        self.assertEqual(outcome(req + 'if header :mime :anychild :param "name" '
                                 '"content-type" "x.pdf" { discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'if header :mime :type "content-type" "multipart" '
                                 '{ discard; }'), [("discard",)])
        self.assertEqual(outcome(req + 'foreverypart { if header :mime :contenttype '
                                 '"content-type" "text/plain" { extracttext :first 5 "t"; '
                                 'fileinto "${t}"; } }'), [("store", "Grüße", ())])

    def test_environment(self) -> None:  # RFC 5183
        ctx = Context(envelope=Envelope("b@x", "a@y"), environment={"location": "MDA"})
        self.assertEqual(run('require "environment"; if environment :is "location" "MDA" '
                             '{ discard; } if environment "nope" "" { keep; }',
                             ctx=ctx).outcome(), [("discard",)])

    def test_spamtest_virustest(self) -> None:  # RFC 5235
        ctx = Context(envelope=Envelope("b@x", "a@y"))
        ctx.settings.update({"spamtest_status_header": "X-Spam-Score: ([0-9.]+)",
                             "spamtest_max_value": 10.0,
                             "virustest_status_header": "X-Priority",
                             "virustest_status_type": "text",
                             "virustest_text_value5": "10"})
        req = 'require ["spamtestplus", "virustest", "relational", ' \
              '"comparator-i;ascii-numeric"]; '
        self.assertEqual(run(req + 'if spamtest :value "eq" :comparator "i;ascii-numeric" '
                             '"8" { discard; }', ctx=ctx).outcome(), [("discard",)])
        self.assertEqual(run(req + 'if spamtest :percent :value "eq" :comparator '
                             '"i;ascii-numeric" "75" { discard; }', ctx=ctx).outcome(),
                         [("discard",)])
        self.assertEqual(run(req + 'if virustest :value "eq" :comparator "i;ascii-numeric" '
                             '"5" { discard; }', ctx=ctx).outcome(), [("discard",)])
        self.assertEqual(run(req + 'if spamtest "0" { discard; }',
                             message=b"Subject: x\r\n\r\n").outcome(), [("discard",)])

    def test_ihave(self) -> None:  # RFC 5463
        ctx = Context(envelope=Envelope("b@x", "a@y"))
        ctx.settings["extensions"] = frozenset({"fileinto", "ihave"})
        self.assertEqual(run('require "ihave"; if ihave "fileinto" { discard; } '
                             'if ihave "editheader" { keep; }', ctx=ctx).outcome(),
                         [("discard",)])


class HostileTests(SynchronousTestCase):
    def test_cpu_limit_and_yields(self) -> None:
        parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\n%s\r\n" % (b"x" * 2000)
                         for n in range(800))
        big = MSG.replace(b"--b--\r\n", parts + b"--b--\r\n")
        script = ('require ["foreverypart", "body"]; foreverypart { '
                  'if body :raw :contains "nothing" { keep; } }')
        compiled = compile_script(parse(script), ALL_EXTENSIONS)
        ctx = Context(envelope=Envelope("b@x", "a@y"), limits=Limits(max_cpu_time=0.5))
        steps = Interpreter(Message(big), ctx).run(compiled)
        yields = 0
        with self.assertRaises(SieveRuntimeError) as e:
            for _ in steps:
                yields += 1
        self.assertIn("CPU time limit", str(e.exception))
        self.assertGreater(yields, 10)

    def test_one_test_over_huge_lists_is_bounded(self) -> None:
        message = b"".join(b"X-A: value %d\r\n" % n for n in range(4000)) + b"\r\nx\r\n"
        keys = ", ".join(f'"key {n}"' for n in range(4000))
        started = time.monotonic()
        with self.assertRaises(SieveRuntimeError) as e:
            run(f'if header :contains "x-a" [{keys}] {{ discard; }}', message=message)
        self.assertIn("takes too long", str(e.exception))
        self.assertLess(time.monotonic() - started, 5)

    def test_catastrophic_regex_times_out(self) -> None:
        message = b"Subject: " + b"a" * 40 + b"!\r\n\r\n"
        with self.assertRaises(SieveRuntimeError) as e:
            run('require "regex"; if header :regex "subject" "^(a|aa)+$" { discard; }',
                message=message)
        self.assertIn("took too long", str(e.exception))

    def test_loop_nesting_is_a_compile_error(self) -> None:
        with self.assertRaises(SieveSyntaxError) as e:
            run('require "foreverypart"; ' + "foreverypart { " * 5 + "keep;" + " }" * 5)
        self.assertIn("nested foreverypart", str(e.exception))
