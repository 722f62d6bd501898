"""Sieve lexer, parser and validator: RFC 5228 syntax, errors with line and
column, and the bounds on size and nesting."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pydovecot.sieve.errors import SieveSyntaxError
from pydovecot.sieve.lexer import tokenize
from pydovecot.sieve.parser import MAX_NESTING, parse
from pydovecot.sieve.validate import DEFAULT_EXTENSIONS, compile_script


def compiled(text: str, extensions=DEFAULT_EXTENSIONS) -> dict:
    return compile_script(parse(text), extensions)


class LexerTests(SynchronousTestCase):
    def test_tokens(self) -> None:
        toks = tokenize('if size :over 100K { discard; } # c\n/* x\n y */ "a\\"b\\\\c"')
        kinds = [(t.kind, t.value) for t in toks]
        self.assertEqual(kinds[:4], [("id", "if"), ("id", "size"), ("tag", "over"),
                                     ("num", 100 * 1024)])
        self.assertEqual(kinds[-2], ("str", 'a"b\\c'))
        self.assertEqual((toks[-2].line, toks[-2].col), (3, 7))

    def test_quantifiers_and_overflow(self) -> None:
        self.assertEqual(tokenize("1M 2G 3k")[1].value, 2 << 30)
        with self.assertRaises(SieveSyntaxError) as e:
            tokenize("99999999999999999999999G")
        self.assertIn("too large", str(e.exception))

    def test_multiline(self) -> None:
        toks = tokenize('vacation text: # c\r\nline 1\r\n..dot\r\n.\r\n;')
        self.assertEqual(toks[1].value, "line 1\r\n.dot\r\n")
        self.assertEqual(toks[2].value, ";")

    def test_errors_have_line_and_column(self) -> None:
        for text, line, col, what in (
            ('keep;\n  "open', 2, 3, "unterminated string"),
            ("keep;\n/* never closed", 2, 1, "unterminated comment"),
            ("keep;\n\n   : x", 3, 4, "tag name"),
            ("vacation text:\nno end\n", 1, 10, "multi-line"),
            ("keep; @", 1, 7, "unexpected character"),
        ):
            with self.assertRaises(SieveSyntaxError) as e:
                tokenize(text)
            self.assertEqual((e.exception.line, e.exception.col), (line, col), text)
            self.assertIn(what, str(e.exception))
            self.assertTrue(str(e.exception).startswith(f"line {line}, column {col}: error:"))


class ParserTests(SynchronousTestCase):
    def test_structure(self) -> None:
        nodes = parse('require ["fileinto"];\nif anyof (not exists "x", true) '
                      '{ fileinto "A"; } else { keep; }')
        self.assertEqual([n.name for n in nodes], ["require", "if", "else"])
        self.assertEqual(nodes[1].tests[0].name, "anyof")
        self.assertEqual([t.name for t in nodes[1].tests[0].tests], ["not", "true"])
        self.assertEqual(nodes[1].block[0].args, [("str", "A")])

    def test_syntax_errors(self) -> None:
        for text, line, col, what in (
            ("keep", 1, 5, "expected ';'"),
            ("if true { keep;", 1, 16, "expected '}'"),
            ('fileinto ["a" "b"];', 1, 15, "expected ',' or ']'"),
            ("if anyof(true; false) {}", 1, 14, "expected ',' or ')'"),
            ("keep;\n}", 2, 1, "unexpected '}'"),
            ("if (true) keep;", 1, 11, "expected ';' or '{'"),
        ):
            with self.assertRaises(SieveSyntaxError) as e:
                parse(text)
            self.assertEqual((e.exception.line, e.exception.col), (line, col), text)
            self.assertIn(what, e.exception.message)

    def test_nesting_is_capped_not_recursion(self) -> None:
        deep_blocks = "if true {" * 100_000 + "}" * 100_000
        with self.assertRaises(SieveSyntaxError) as e:
            parse(deep_blocks, max_size=10 << 20)
        self.assertIn("too many nested blocks", str(e.exception))
        deep_tests = "if " + "not " * 100_000 + "true {}"
        with self.assertRaises(SieveSyntaxError) as e:
            parse(deep_tests, max_size=10 << 20)
        self.assertIn("too many nested tests", str(e.exception))
        deep_lists = "if " + "anyof(" * 50_000 + "true" + ")" * 50_000 + " {}"
        with self.assertRaises(SieveSyntaxError):
            parse(deep_lists, max_size=10 << 20)
        ok = "if true {" * MAX_NESTING + "}" * MAX_NESTING
        self.assertEqual(len(parse(ok)), 1)

    def test_size_limits(self) -> None:
        with self.assertRaises(SieveSyntaxError) as e:
            parse("keep;" + " " * 100, max_size=50)
        self.assertIn("too large", str(e.exception))
        with self.assertRaises(SieveSyntaxError) as e:
            parse("fileinto [" + ",".join(['"a"'] * 5000) + "];")
        self.assertIn("list is too long", str(e.exception))
        with self.assertRaises(SieveSyntaxError) as e:
            parse(b"keep; # \xff\n")
        self.assertIn("UTF-8", str(e.exception))


class ValidatorTests(SynchronousTestCase):
    def test_errors(self) -> None:
        for text, line, what in (
            ("frop;", 1, "unknown command 'frop'"),
            ('fileinto "x";', 1, "requires the 'fileinto' extension"),
            ('keep;\nrequire "fileinto";', 2, "require commands can only be placed"),
            ('require "nonsense";', 1, "unknown Sieve capability"),
            ('require "editheader";', 1, "unknown Sieve capability"),  # off by default
            ("else { keep; }", 1, "must follow an if"),
            ('if header :frob "a" "b" {}', 1, "unknown tagged argument ':frob'"),
            ('if header :is :contains "a" "b" {}', 1, "only one of"),
            ('if header "a" {}', 1, "positional argument"),
            ("if size 10 {}", 1, "requires :over or :under"),
            ('if header :regex "a" "b" {}', 1, "requires the 'regex' extension"),
            ('if header :comparator "i;ascii-numeric" "a" "b" {}', 1,
             "comparator-i;ascii-numeric"),
            ('require "relational"; if header :value "xx" "a" "b" {}', 1,
             "invalid relational match"),
            ('if envelope "from" "x" {}', 1, "'envelope' extension"),
            ('require "envelope"; if envelope "bogus" "x" {}', 1, "unknown envelope part"),
            ('require "variables"; set "1bad" "x";', 1, "invalid variable name"),
            ("keep { }", 1, "does not take a block"),
            ("if true;", 1, "requires a block"),
            ('stop "x";', 1, "positional argument"),
        ):
            with self.assertRaises(SieveSyntaxError, msg=text) as e:
                compiled(text)
            self.assertEqual(e.exception.line, line, text)
            self.assertIn(what, e.exception.message, text)

    def test_extensions_setting(self) -> None:
        compiled('require "editheader"; addheader "X-A" "b";',
                 DEFAULT_EXTENSIONS | {"editheader"})
        with self.assertRaises(SieveSyntaxError):
            compiled('require "fileinto";', DEFAULT_EXTENSIONS - {"fileinto"})

    def test_encoded_character(self) -> None:
        c = compiled('require ["encoded-character", "fileinto"];\n'
                     'fileinto "${hex: 49 4e}${unicode:0042 4f}X${hex:zz}${unicode:110000}";')
        self.assertEqual(c["commands"][0]["p"][0], "INBOX${hex:zz}${unicode:110000}")
        c = compiled('require "fileinto"; fileinto "${hex:41}";')
        self.assertEqual(c["commands"][0]["p"][0], "${hex:41}")  # not required: literal
