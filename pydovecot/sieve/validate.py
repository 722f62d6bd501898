"""Checking a parsed script against the Sieve commands, tests and the
extensions it requires; the result is the compiled form the executor runs.

Each command and test has a signature (tags with their value types,
positional arguments, test and block use, the extension that provides it);
errors name the line and column.  The compiled form is plain data (dicts,
lists, strings, ints) so that it can be cached as JSON.  Trusts nothing in
the script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydovecot.sieve.errors import SieveSyntaxError
from pydovecot.sieve.parser import Node

#: Every extension this implementation has.
ALL_EXTENSIONS = frozenset({
    "fileinto", "reject", "ereject", "envelope", "encoded-character", "imap4flags", "copy",
    "body", "variables", "vacation", "vacation-seconds", "relational",
    "comparator-i;ascii-numeric", "comparator-i;octet", "comparator-i;ascii-casemap",
    "subaddress", "date", "index", "regex", "include", "mailbox", "duplicate", "editheader",
    "mime", "foreverypart", "extracttext", "environment", "spamtest", "spamtestplus",
    "virustest", "ihave",
})
#: Off unless sieve_extensions adds them (as in Pigeonhole).
NOT_DEFAULT = frozenset({"editheader", "spamtest", "spamtestplus", "virustest",
                         "vacation-seconds"})
DEFAULT_EXTENSIONS = ALL_EXTENSIONS - NOT_DEFAULT
IMPLICIT = frozenset({"comparator-i;octet", "comparator-i;ascii-casemap"})

MATCH_TAGS = {"is": None, "contains": None, "matches": None, "regex": None,
              "count": "str", "value": "str"}
MATCH_EXT = {"regex": "regex", "count": "relational", "value": "relational"}
ADDRESS_PARTS = {"all": None, "localpart": None, "domain": None, "user": None, "detail": None}
ADDRESS_EXT = {"user": "subaddress", "detail": "subaddress"}
COMPARATORS = {"i;octet": None, "i;ascii-casemap": None,
               "i;ascii-numeric": "comparator-i;ascii-numeric"}
RELATIONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
MAX_LOOP_DEPTH = 4  # nested foreverypart loops (Pigeonhole's limit)
VARIABLE_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


@dataclass
class Spec:
    kind: str  # "cmd" or "test"
    ext: str | None = None
    pos: tuple = ()  # "str", "strlist", "num"; a trailing "?" makes it optional
    tags: dict = field(default_factory=dict)  # tag -> (group, value type or None, ext)
    tests: object = 0  # 0, 1 or "list"
    block: bool = False
    match: bool = False  # takes comparator and match-type tags
    address: bool = False  # takes address-part tags
    index: bool = False  # takes :index/:last (RFC 5260)
    mime: bool = False  # takes :mime/:anychild (RFC 5703)


def _t(group, vtype=None, ext=None):
    return (group, vtype, ext)


SPECS: dict[str, Spec] = {
    # RFC 5228 control and actions.
    "require": Spec("cmd", pos=("strlist",)),
    "if": Spec("cmd", tests=1, block=True),
    "elsif": Spec("cmd", tests=1, block=True),
    "else": Spec("cmd", block=True),
    "stop": Spec("cmd"),
    "keep": Spec("cmd", tags={"flags": _t("flags", "strlist", "imap4flags")}),
    "discard": Spec("cmd"),
    "redirect": Spec("cmd", pos=("str",), tags={"copy": _t("copy", None, "copy")}),
    "fileinto": Spec("cmd", "fileinto", pos=("str",), tags={
        "copy": _t("copy", None, "copy"), "flags": _t("flags", "strlist", "imap4flags"),
        "create": _t("create", None, "mailbox")}),
    "reject": Spec("cmd", "reject", pos=("str",)),
    "ereject": Spec("cmd", "ereject", pos=("str",)),
    "vacation": Spec("cmd", "vacation", pos=("str",), tags={
        "days": _t("period", "num"), "seconds": _t("period", "num", "vacation-seconds"),
        "subject": _t("subject", "str"), "from": _t("from", "str"),
        "addresses": _t("addresses", "strlist"), "mime": _t("mime", None),
        "handle": _t("handle", "str")}),
    "setflag": Spec("cmd", "imap4flags", pos=("strlist", "strlist?")),
    "addflag": Spec("cmd", "imap4flags", pos=("strlist", "strlist?")),
    "removeflag": Spec("cmd", "imap4flags", pos=("strlist", "strlist?")),
    "set": Spec("cmd", "variables", pos=("str", "str"), tags={
        m: _t(m, None) for m in ("lower", "upper", "lowerfirst", "upperfirst",
                                 "quotewildcard", "quoteregex", "length", "encodeurl")}),
    "include": Spec("cmd", "include", pos=("str",), tags={
        "personal": _t("location"), "global": _t("location"), "once": _t("once"),
        "optional": _t("optional")}),
    "return": Spec("cmd", "include"),
    "global": Spec("cmd", "include", pos=("strlist",)),
    "addheader": Spec("cmd", "editheader", pos=("str", "str"), tags={"last": _t("last")}),
    "deleteheader": Spec("cmd", "editheader", pos=("str", "strlist?"), match=True,
                         index=True),
    "foreverypart": Spec("cmd", "foreverypart", block=True, tags={"name": _t("name", "str")}),
    "break": Spec("cmd", "foreverypart", tags={"name": _t("name", "str")}),
    "extracttext": Spec("cmd", "extracttext", pos=("str",), tags={
        "first": _t("first", "num"), **{m: _t(m) for m in (
            "lower", "upper", "lowerfirst", "upperfirst", "quotewildcard", "length")}}),
    # RFC 5228 tests.
    "true": Spec("test"),
    "false": Spec("test"),
    "not": Spec("test", tests=1),
    "anyof": Spec("test", tests="list"),
    "allof": Spec("test", tests="list"),
    "exists": Spec("test", pos=("strlist",), mime=True),
    "size": Spec("test", pos=("num",), tags={"over": _t("size"), "under": _t("size")}),
    "header": Spec("test", pos=("strlist", "strlist"), match=True, index=True, mime=True),
    "address": Spec("test", pos=("strlist", "strlist"), match=True, address=True,
                    index=True, mime=True),
    "envelope": Spec("test", "envelope", pos=("strlist", "strlist"), match=True,
                     address=True),
    "body": Spec("test", "body", pos=("strlist",), match=True, tags={
        "raw": _t("transform"), "content": _t("transform", "strlist"),
        "text": _t("transform")}),
    "string": Spec("test", "variables", pos=("strlist", "strlist"), match=True),
    "hasflag": Spec("test", "imap4flags", pos=("strlist", "strlist?"), match=True),
    "date": Spec("test", "date", pos=("str", "str", "strlist"), match=True, index=True,
                 tags={"zone": _t("zone", "str"), "originalzone": _t("zone")}),
    "currentdate": Spec("test", "date", pos=("str", "strlist"), match=True,
                        tags={"zone": _t("zone", "str")}),
    "mailboxexists": Spec("test", "mailbox", pos=("strlist",)),
    "duplicate": Spec("test", "duplicate", tags={
        "handle": _t("handle", "str"), "header": _t("what", "str"),
        "uniqueid": _t("what", "str"), "seconds": _t("seconds", "num"),
        "last": _t("last")}),
    "environment": Spec("test", "environment", pos=("str", "strlist"), match=True),
    "spamtest": Spec("test", None, pos=("strlist",), match=True,
                     tags={"percent": _t("percent", None, "spamtestplus")}),
    "virustest": Spec("test", "virustest", pos=("strlist",), match=True),
    "ihave": Spec("test", "ihave", pos=("strlist",)),
}

HEADER_MIME_TAGS = {"type": _t("mimepart"), "subtype": _t("mimepart"),
                    "contenttype": _t("mimepart"), "param": _t("mimepart", "strlist")}

ENCODED = re.compile(r"\$\{(hex|unicode):([^}]*)\}", re.IGNORECASE)


def compile_script(nodes: list[Node], extensions: frozenset[str] = DEFAULT_EXTENSIONS
                   ) -> dict:
    """Validate ``nodes``; the compiled form: {"require": [...], "commands": [...]}."""
    v = _Validator(extensions)
    commands = v.block(nodes, top=True)
    return {"require": sorted(v.required), "commands": commands}


class _Validator:
    def __init__(self, extensions: frozenset[str]):
        self.available = extensions | IMPLICIT
        self.required: set[str] = set()
        self.loops = 0

    def err(self, node: Node, message: str) -> SieveSyntaxError:
        return SieveSyntaxError(message, node.line, node.col)

    def need(self, node: Node, ext: str | None, what: str) -> None:
        if ext and ext not in self.required and not (
                ext == "spamtest" and "spamtestplus" in self.required):
            raise self.err(node, f"{what} requires the '{ext}' extension "
                                 f"(missing require \"{ext}\")")

    def block(self, nodes: list[Node], top: bool = False) -> list[dict]:
        out: list[dict] = []
        preamble = top
        previous = ""
        for node in nodes:
            if node.name == "require":
                if not preamble:
                    raise self.err(node, "require commands can only be placed at top level "
                                         "at the beginning of the file")
                self.require(node)
                previous = "require"
                continue
            preamble = False
            if node.name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise self.err(node, f"{node.name} command must follow an if or elsif "
                                     "command")
            out.append(self.command(node))
            previous = node.name
        return out

    def require(self, node: Node) -> None:
        args = node.args
        if len(args) != 1 or args[0][0] not in ("str", "list") or node.tests or node.block:
            raise self.err(node, "require takes a string list of extension names")
        names = [args[0][1]] if args[0][0] == "str" else args[0][1]
        for name in names:
            if name not in self.available:
                raise self.err(node, f"require: unknown Sieve capability '{name}'")
            self.required.add(name)
            if name == "spamtestplus":
                self.required.add("spamtest")
            if name == "vacation-seconds":
                self.required.add("vacation")

    def command(self, node: Node) -> dict:
        spec = SPECS.get(node.name)
        if spec is None or spec.kind != "cmd":
            what = "test" if spec else "command"
            raise self.err(node, f"unknown {what} '{node.name}' (used as a command)"
                           if spec else f"unknown command '{node.name}'")
        self.need(node, spec.ext, f"command '{node.name}'")
        out = self.signature(node, spec)
        if spec.block:
            if node.block is None:
                raise self.err(node, f"{node.name} command requires a block")
            if node.name == "foreverypart":
                if self.loops >= MAX_LOOP_DEPTH:
                    raise self.err(node, "too many nested foreverypart loops "
                                         f"(max {MAX_LOOP_DEPTH})")
                self.loops += 1
            try:
                out["b"] = self.block(node.block)
            finally:
                if node.name == "foreverypart":
                    self.loops -= 1
        elif node.block is not None:
            raise self.err(node, f"{node.name} command does not take a block")
        self.check_command(node, out)
        return out

    def test(self, node: Node) -> dict:
        spec = SPECS.get(node.name)
        if spec is None or spec.kind != "test":
            raise self.err(node, f"unknown test '{node.name}'")
        ext = spec.ext or ("spamtest" if node.name == "spamtest" else None)
        self.need(node, ext, f"test '{node.name}'")
        out = self.signature(node, spec)
        self.check_test(node, out)
        return out

    def signature(self, node: Node, spec: Spec) -> dict:
        tags_spec = dict(spec.tags)
        if spec.match:
            for tag, vtype in MATCH_TAGS.items():
                tags_spec[tag] = _t("match", vtype, MATCH_EXT.get(tag))
            tags_spec["comparator"] = _t("comparator", "str")
        if spec.address:
            for tag in ADDRESS_PARTS:
                tags_spec[tag] = _t("addresspart", None, ADDRESS_EXT.get(tag))
        if spec.index:
            tags_spec["index"] = _t("index", "num", "index")
            tags_spec.setdefault("last", _t("last", None, "index"))
        if spec.mime:
            tags_spec["mime"] = _t("mime", None, "mime")
            tags_spec["anychild"] = _t("anychild", None, "mime")
            if node.name in ("header", "address"):
                for tag, t in HEADER_MIME_TAGS.items():
                    tags_spec[tag] = (t[0], t[1], "mime")
        tags: dict = {}
        groups: dict = {}
        pos: list = []
        args = node.args
        i = 0
        while i < len(args):
            kind, value = args[i]
            if kind == "tag":
                if pos:
                    raise self.err(node, f"tagged argument ':{value}' after positional "
                                         f"arguments of '{node.name}'")
                t = tags_spec.get(value)
                if t is None:
                    raise self.err(node, f"unknown tagged argument ':{value}' for "
                                         f"'{node.name}'")
                group, vtype, ext = t
                self.need(node, ext, f":{value}")
                if group in groups:
                    raise self.err(node, f"'{node.name}' takes only one of :{groups[group]} "
                                         f"and :{value}")
                groups[group] = value
                if vtype is None:
                    tags[value] = True
                else:
                    i += 1
                    if i >= len(args):
                        raise self.err(node, f":{value} requires an argument")
                    tags[value] = self.value(node, args[i], vtype, f":{value}")
            else:
                pos.append(args[i])
            i += 1
        wanted = spec.pos
        required = [p for p in wanted if not p.endswith("?")]
        if not len(required) <= len(pos) <= len(wanted):
            raise self.err(node, f"'{node.name}' takes {len(required)}"
                                 f"{'' if len(required) == len(wanted) else '-' + str(len(wanted))}"
                                 f" positional argument(s), got {len(pos)}")
        values = [self.value(node, a, w.rstrip("?"), f"'{node.name}' argument {n + 1}")
                  for n, (a, w) in enumerate(zip(pos, wanted, strict=False))]
        out: dict = {"n": node.name, "l": node.line, "t": tags, "p": values}
        if spec.tests == 1:
            if len(node.tests) != 1:
                raise self.err(node, f"'{node.name}' requires one test")
            out["x"] = [self.test(node.tests[0])]
        elif spec.tests == "list":
            if not node.tests:
                raise self.err(node, f"'{node.name}' requires a list of tests")
            out["x"] = [self.test(t) for t in node.tests]
        elif node.tests:
            raise self.err(node, f"'{node.name}' does not take tests")
        if spec.match:
            self.check_match(node, tags)
        return out

    def value(self, node: Node, arg: tuple, vtype: str, what: str):
        kind, value = arg
        if vtype == "num":
            if kind != "num":
                raise self.err(node, f"{what} must be a number")
            return value
        if kind == "num" or kind == "tag":
            raise self.err(node, f"{what} must be a string{' list' if vtype == 'strlist' else ''}")
        if vtype == "str":
            if kind != "str":
                raise self.err(node, f"{what} must be a single string")
            return self.literal(value)
        return [self.literal(v) for v in ([value] if kind == "str" else value)]

    def literal(self, s: str) -> str:
        if "encoded-character" in self.required and "${" in s:
            return ENCODED.sub(_decode_encoded, s)
        return s

    def check_match(self, node: Node, tags: dict) -> None:
        comparator = tags.get("comparator")
        if comparator is not None:
            if comparator not in COMPARATORS:
                raise self.err(node, f"unknown comparator '{comparator}'")
            self.need(node, COMPARATORS[comparator], f"comparator '{comparator}'")
        for rel in ("count", "value"):
            if rel in tags and tags[rel].lower() not in RELATIONS:
                raise self.err(node, f"invalid relational match '{tags[rel]}'")
        if "regex" in tags and comparator == "i;ascii-numeric":
            raise self.err(node, "regex match type cannot be used with i;ascii-numeric")

    def check_command(self, node: Node, out: dict) -> None:
        if node.name == "set":
            name = out["p"][0]
            lname = name.lower()
            if lname.startswith("global.") and "include" in self.required:
                name = name[7:]
            if not VARIABLE_NAME.match(name) or "." in name:
                raise self.err(node, f"invalid variable name '{name}'")
        if node.name == "global":
            for name in out["p"][0]:
                if not VARIABLE_NAME.match(name):
                    raise self.err(node, f"invalid variable name '{name}'")
        if node.name in ("setflag", "addflag", "removeflag") and len(out["p"]) == 2:
            self.need(node, "variables", f"'{node.name}' with a variable name")
            out["p"] = [out["p"][1], out["p"][0]]  # flags first, variable second

    def check_test(self, node: Node, out: dict) -> None:
        if node.name == "size" and "over" not in out["t"] and "under" not in out["t"]:
            raise self.err(node, "size test requires :over or :under")
        if node.name == "hasflag" and len(out["p"]) == 2:
            out["p"] = [out["p"][1], out["p"][0]]  # keys first, variables second
        if node.name in ("header", "address", "exists"):
            for name in out["p"][0]:
                if not name or any(ord(c) <= 32 or c == ":" or ord(c) >= 127 for c in name):
                    if "${" not in name:
                        raise self.err(node, f"invalid header name '{name}'")
        if node.name == "envelope":
            for part in out["p"][0]:
                if part.lower() not in ("from", "to", "auth") and "${" not in part:
                    raise self.err(node, f"unknown envelope part '{part}'")
        if node.name == "date" or node.name == "currentdate":
            part = out["p"][1 if node.name == "date" else 0]
            if part.lower() not in DATE_PARTS and "${" not in part:
                raise self.err(node, f"unknown date part '{part}'")


DATE_PARTS = frozenset({"year", "month", "day", "date", "julian", "hour", "minute", "second",
                        "time", "iso8601", "std11", "zone", "weekday"})


def _decode_encoded(m: re.Match) -> str:
    """RFC 5228 2.4.2.4: ${hex:..} and ${unicode:..}; malformed ones stay."""
    kind, body = m.group(1).lower(), m.group(2)
    words = body.split()
    try:
        if kind == "hex":
            if not words or any(len(w) > 2 for w in words):
                raise ValueError
            return bytes(int(w, 16) for w in words).decode("utf-8", "replace")
        if not words:
            raise ValueError
        out = []
        for w in words:
            cp = int(w, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise ValueError
            out.append(chr(cp))
        return "".join(out)
    except ValueError:
        return m.group(0)
