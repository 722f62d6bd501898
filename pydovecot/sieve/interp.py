"""The Sieve executor: runs a compiled script against one message and
collects the actions (RFC 5228 section 2.10 and the extensions' rules).

Running is a generator that yields every few commands and every MIME part
of a foreverypart loop, so the caller can give the reactor back its turn;
it also counts CPU time against ``sieve_max_cpu_time``.  Limits as in
Pigeonhole: ``sieve_max_actions``, ``sieve_max_redirects``, include depth
and count, variable sizes; regular expressions run with a timeout (the
``regex`` module), so no single match can hold the process.  Nothing is
done to the world here: :mod:`pydovecot.sieve.deliver` carries the
actions out.  Trusts the compiled form (made by :mod:`validate`), not the
message or envelope values.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import regex

from pydovecot.sieve.errors import SieveRuntimeError
from pydovecot.sieve.message import (
    Message,
    decode_words,
    decoded_text,
    parse_addresses,
    part_headers,
)
from pydovecot.sieve.validate import ALL_EXTENSIONS

YIELD_EVERY = 32
MAX_INCLUDE_DEPTH = 10  # sieve_include_max_nesting_depth
MAX_INCLUDES = 255  # sieve_include_max_includes
MAX_LOOP_DEPTH = 4  # foreverypart nesting
REGEX_TIMEOUT = 0.1  # one match; the reactor's other sessions wait meanwhile
STEP_LIMIT = 0.2  # seconds one command or test may take before it is an error
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
                                       "\\Draft")}
VARIABLE_REF = re.compile(r"\$\{([A-Za-z0-9_.]{1,128})\}")
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(s: str) -> str:
    return s.translate(ASCII_LOWER)


@dataclass
class Limits:
    max_actions: int = 32
    max_redirects: int = 4
    max_cpu_time: float = 30.0
    max_variable_size: int = 4096
    max_scope_size: int = 255
    max_match_values: int = 4096


@dataclass
class Envelope:
    sender: str = ""
    recipient: str = ""
    orig_recipient: str = ""
    auth: str = ""


@dataclass
class Action:
    kind: str  # store, redirect, discard, reject, ereject, vacation
    target: str = ""
    flags: list[str] = field(default_factory=list)
    copy: bool = False
    create: bool = False
    line: int = 0
    params: dict = field(default_factory=dict)


@dataclass
class Result:
    """What the scripts decided.  ``implicit_keep`` is cleared by any action
    that cancels it; ``keep_flags`` are the imap4flags ones for it."""

    actions: list[Action] = field(default_factory=list)
    implicit_keep: bool = True
    keep_flags: list[str] = field(default_factory=list)
    redirects: int = 0
    duplicates: list[tuple[str, str, int]] = field(default_factory=list)

    def outcome(self) -> list[tuple]:
        """A normalised, comparable summary (tests compare with Pigeonhole)."""
        out = []
        for a in self.actions:
            if a.kind == "store":
                out.append(("store", a.target, tuple(sorted(f.lower() for f in a.flags))))
            elif a.kind in ("redirect", "reject", "ereject"):
                out.append((a.kind, a.target))
            else:
                out.append((a.kind,))
        if self.implicit_keep:
            out.append(("store", "INBOX", tuple(sorted(f.lower() for f in self.keep_flags))))
        return sorted(set(out))


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


class _Break(Exception):
    def __init__(self, name: str | None):
        super().__init__(name)
        self.name = name


@dataclass
class Context:
    """What the executor may ask of the delivery."""

    envelope: Envelope = field(default_factory=Envelope)
    limits: Limits = field(default_factory=Limits)
    delimiter: str = "+"
    mailbox_exists: Callable[[str], bool] = lambda _name: False
    duplicate_seen: Callable[[str, str], bool] = lambda _id, _handle: False
    include: Callable[[str, bool], dict | None] | None = None  # (name, global) -> compiled
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # plugin settings (spamtest, vacation)
    now: datetime.datetime | None = None


class Interpreter:
    """One delivery's run through one or more scripts."""

    def __init__(self, message: Message, ctx: Context, result: Result | None = None):
        self.msg = message
        self.ctx = ctx
        self.result = result or Result()
        self.globals: dict[str, str] = {}
        self.steps = 0
        self.cpu = 0.0
        self.includes = 0
        self.included: set = set()
        self.flags: list[str] = []  # imap4flags internal variable
        self.loop_parts: list = []  # foreverypart stack
        self.line = 0
        self.include_stack: list = []
        self.step_started = time.monotonic()

    # -- driving ------------------------------------------------------------

    def run(self, compiled: dict) -> Iterator[None]:
        """Run one script; a generator that yields now and then."""
        scope = _Scope(compiled, self)
        limit = self.ctx.limits.max_cpu_time
        started = time.process_time()
        try:
            for _ in scope.block(compiled["commands"]):
                self.cpu += time.process_time() - started
                if limit and self.cpu > limit:
                    raise SieveRuntimeError("execution exceeded CPU time limit", self.line)
                yield
                started = time.process_time()
        except (_Stop, _Return):
            pass
        self.result.keep_flags = list(self.flags)

    def run_all(self, compiled: dict) -> Result:
        """Run without yielding (tests, sieve-test style)."""
        for _ in self.run(compiled):
            pass
        return self.result

    def add(self, action: Action) -> None:
        r = self.result
        if action.kind == "store":
            for other in r.actions:
                if other.kind == "store" and other.target == action.target:
                    for f in action.flags:
                        if f.lower() not in {x.lower() for x in other.flags}:
                            other.flags.append(f)
                    if not action.copy:
                        r.implicit_keep = False
                    return
        if action.kind == "redirect":
            for other in r.actions:
                if other.kind == "redirect" and other.target.lower() == action.target.lower():
                    if not action.copy:
                        r.implicit_keep = False
                    return
            if r.redirects >= self.ctx.limits.max_redirects:
                raise SieveRuntimeError("number of redirect actions exceeds policy limit "
                                        f"({self.ctx.limits.max_redirects})", action.line)
            r.redirects += 1
        if action.kind == "discard":
            r.implicit_keep = False
            if not any(a.kind == "discard" for a in r.actions):
                r.actions.append(action)
            return
        delivering = ("store", "redirect")
        for other in r.actions:
            if action.kind in ("reject", "ereject") and (
                    other.kind in delivering + ("vacation", "reject", "ereject")):
                raise SieveRuntimeError(f"{action.kind} action conflicts with earlier "
                                        f"{other.kind} action", action.line)
            if other.kind in ("reject", "ereject") and action.kind in delivering + (
                    "vacation",):
                raise SieveRuntimeError(f"{action.kind} action conflicts with earlier "
                                        f"{other.kind} action", action.line)
            if action.kind == "vacation" and other.kind == "vacation":
                raise SieveRuntimeError("duplicate vacation action not allowed", action.line)
        if len(r.actions) >= self.ctx.limits.max_actions:
            raise SieveRuntimeError("total number of actions exceeds policy limit "
                                    f"({self.ctx.limits.max_actions})", action.line)
        if action.kind in ("store", "redirect", "reject", "ereject") and not action.copy:
            r.implicit_keep = False
        r.actions.append(action)


class _Scope:
    """One script's execution: its requires and local variables."""

    def __init__(self, compiled: dict, interp: Interpreter):
        self.compiled = compiled
        self.it = interp
        self.require = frozenset(compiled.get("require", ()))
        self.variables: dict[str, str] = {}
        self.global_names: set[str] = set()
        self.match_vars: list[str] = []

    # -- commands ----------------------------------------------------------

    def block(self, commands: list[dict]) -> Iterator[None]:
        it = self.it
        taken = True
        for cmd in commands:
            it.steps += 1
            if it.steps % YIELD_EVERY == 0:
                yield
            name = cmd["n"]
            it.line = cmd["l"]
            it.step_started = time.monotonic()
            if name == "if":
                taken = self.test(cmd["x"][0])
                if taken:
                    yield from self.block(cmd["b"])
                continue
            if name == "elsif":
                if not taken:
                    taken = self.test(cmd["x"][0])
                    if taken:
                        yield from self.block(cmd["b"])
                continue
            if name == "else":
                if not taken:
                    taken = True
                    yield from self.block(cmd["b"])
                continue
            if name == "foreverypart":
                yield from self.foreverypart(cmd)
                continue
            if name == "include":
                yield from self.include(cmd)
                continue
            self.command(cmd)

    def command(self, cmd: dict) -> None:
        name, tags, pos, line = cmd["n"], cmd["t"], cmd["p"], cmd["l"]
        it = self.it
        if name == "stop":
            raise _Stop()
        if name == "return":
            raise _Return()
        if name == "break":
            raise _Break(tags.get("name"))
        if name == "keep":
            flags = self.flag_list(tags["flags"]) if "flags" in tags else list(it.flags)
            it.add(Action("store", "INBOX", flags, line=line))
        elif name == "discard":
            it.add(Action("discard", line=line))
        elif name == "fileinto":
            box = self.expand(pos[0])
            if not box or "\x00" in box:
                raise SieveRuntimeError(f"invalid mailbox name '{box}'", line)
            flags = self.flag_list(tags["flags"]) if "flags" in tags else list(it.flags)
            it.add(Action("store", box, flags, copy="copy" in tags, create="create" in tags,
                          line=line))
        elif name == "redirect":
            addr = self.expand(pos[0]).strip()
            parsed = parse_addresses([addr])
            if len(parsed) != 1 or "@" not in parsed[0]:
                raise SieveRuntimeError(f"specified redirect address '{addr}' is invalid", line)
            it.add(Action("redirect", parsed[0], copy="copy" in tags, line=line))
        elif name in ("reject", "ereject"):
            it.add(Action(name, self.expand(pos[0]), line=line))
        elif name == "vacation":
            self.vacation(cmd)
        elif name in ("setflag", "addflag", "removeflag"):
            flags = self.flag_list(pos[0])
            if len(pos) > 1:
                var = self.expand(pos[1][0])
                current = self.flag_list([self.get_var(var)])
            else:
                var, current = None, it.flags
            if name == "setflag":
                new = _dedup(flags)
            elif name == "addflag":
                new = _dedup(current + flags)
            else:
                drop = {f.lower() for f in flags}
                new = [f for f in current if f.lower() not in drop]
            if var is None:
                it.flags = new
            else:
                self.set_var(var, " ".join(new))
        elif name == "set":
            self.set_var(pos[0], self.modify(self.expand(pos[1]), tags))
        elif name == "global":
            for n in pos[0]:
                self.global_names.add(n.lower())
        elif name == "addheader":
            self.addheader(cmd)
        elif name == "deleteheader":
            self.deleteheader(cmd)
        elif name == "extracttext":
            if not it.loop_parts:
                raise SieveRuntimeError("extracttext used outside foreverypart", line)
            part = it.loop_parts[-1]
            text = decoded_text(part) if not part.is_multipart() else ""
            if "first" in tags:
                text = text[:tags["first"]]
            self.set_var(pos[0], self.modify(text, tags))
        else:
            raise SieveRuntimeError(f"command '{name}' is not supported", line)

    def foreverypart(self, cmd: dict) -> Iterator[None]:
        it = self.it
        if len(it.loop_parts) >= MAX_LOOP_DEPTH:
            raise SieveRuntimeError("too many nested foreverypart loops", cmd["l"])
        parent = it.loop_parts[-1] if it.loop_parts else None
        parts = ([p for n, p in enumerate(parent.walk()) if n > 0]
                 if parent is not None else it.msg.parts())
        name = cmd["t"].get("name")
        for part in parts:
            it.loop_parts.append(part)
            try:
                yield
                yield from self.block(cmd["b"])
            except _Break as b:
                if b.name is None or b.name == name:
                    return
                raise
            finally:
                it.loop_parts.pop()

    def include(self, cmd: dict) -> Iterator[None]:
        it = self.it
        tags, line = cmd["t"], cmd["l"]
        name = self.expand(cmd["p"][0])
        is_global = "global" in tags
        key = (name, is_global)
        if "once" in tags and key in it.included:
            return
        if it.ctx.include is None:
            raise SieveRuntimeError("include is not available here", line)
        if len(it.include_stack) >= MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError("include nesting too deep", line)
        it.includes += 1
        if it.includes > MAX_INCLUDES:
            raise SieveRuntimeError("too many included scripts", line)
        compiled = it.ctx.include(name, is_global)
        if compiled is None:
            if "optional" in tags:
                return
            raise SieveRuntimeError(f"included script '{name}' does not exist", line)
        it.included.add(key)
        scope = _Scope(compiled, it)
        it.include_stack.append(key)
        try:
            yield from scope.block(compiled["commands"])
        except _Return:
            pass
        finally:
            it.include_stack.pop()

    def vacation(self, cmd: dict) -> None:
        tags, line = cmd["t"], cmd["l"]
        it = self.it
        settings = it.ctx.settings
        if "seconds" in tags:
            period = tags["seconds"]
        elif "days" in tags:
            period = tags["days"] * 86400
        else:
            period = settings.get("vacation_default_period", 7 * 86400)
        lo = settings.get("vacation_min_period", 86400)
        hi = settings.get("vacation_max_period", 0)
        if period < lo:
            period = lo
        if hi and period > hi:
            period = hi
        reason = self.expand(cmd["p"][0])
        subject = self.expand(tags["subject"]) if "subject" in tags else None
        sender = self.expand(tags["from"]) if "from" in tags else None
        addresses = [self.expand(a) for a in tags.get("addresses", [])]
        mime = "mime" in tags
        handle = self.expand(tags["handle"]) if "handle" in tags else (
            reason + (subject if subject is not None else "<default-subject>")
            + (sender if sender is not None else "<default-from>")
            + ("<MIME>" if mime else "<NO-MIME>"))
        it.add(Action("vacation", line=line, params={
            "period": period, "reason": reason, "subject": subject, "from": sender,
            "addresses": addresses, "mime": mime, "handle": handle}))

    def addheader(self, cmd: dict) -> None:
        name = self.expand(cmd["p"][0])
        value = self.expand(cmd["p"][1])
        if not _valid_field_name(name):
            raise SieveRuntimeError(f"addheader: invalid header field name '{name}'", cmd["l"])
        if name.lower() in PROTECTED_HEADERS:
            return
        if len(value) > 2048:
            raise SieveRuntimeError("addheader: header value is too long", cmd["l"])
        value = value.replace("\r", "").replace("\n", "\r\n ")
        msg = self.it.msg
        entry = [name, " " + value]
        if "last" in cmd["t"]:
            msg.headers.append(entry)
        else:
            msg.headers.insert(0, entry)
        msg.edited = True

    def deleteheader(self, cmd: dict) -> None:
        tags, pos = cmd["t"], cmd["p"]
        name = self.expand(pos[0])
        if name.lower() in PROTECTED_HEADERS:
            return
        msg = self.it.msg
        lname = name.lower()
        indexes = [i for i, (k, _v) in enumerate(msg.headers) if k.lower() == lname]
        if "index" in tags:
            n = tags["index"]
            if n < 1 or n > len(indexes):
                return
            indexes = [indexes[-n] if "last" in tags else indexes[n - 1]]
        doomed = []
        for i in indexes:
            if len(pos) > 1:
                if not self.match(tags, [decode_words(msg.headers[i][1])], pos[1]):
                    continue
            doomed.append(i)
        for i in reversed(doomed):
            del msg.headers[i]
        if doomed:
            msg.edited = True

    # -- tests -------------------------------------------------------------

    def test(self, t: dict) -> bool:
        self.it.steps += 1
        name, tags, pos = t["n"], t["t"], t["p"]
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(t["x"][0])
        if name == "anyof":
            return any(self.test(x) for x in t["x"])
        if name == "allof":
            return all(self.test(x) for x in t["x"])
        if name == "size":
            limit = pos[0]
            return self.it.msg.size > limit if "over" in tags else self.it.msg.size < limit
        if name == "exists":
            headers = self.headers_for(tags)
            present = {k.lower() for k, _v in headers}
            return all(self.expand(h).lower() in present for h in pos[0])
        if name == "header":
            values = self.header_values(tags, [self.expand(h) for h in pos[0]])
            return self.match(tags, values, pos[1])
        if name == "address":
            values = self.address_values(tags, [self.expand(h) for h in pos[0]])
            return self.match(tags, values, pos[1])
        if name == "envelope":
            return self.match(tags, self.envelope_values(tags, pos[0]), pos[1])
        if name == "body":
            return self.body(tags, pos[0])
        if name == "string":
            values = [self.expand(s) for s in pos[0]]
            if "count" in tags:
                values = [v for v in values if v != ""]
            return self.match(tags, values, pos[1])
        if name == "hasflag":
            if len(pos) > 1:
                values = self.flag_list([self.get_var(self.expand(v)) for v in pos[1]])
            else:
                values = list(self.it.flags)
            keys = [k for key in pos[0] for k in self.expand(key).split()]
            return self.match(tags, values, keys, expand=False)
        if name == "date":
            return self.date(tags, pos)
        if name == "currentdate":
            now = self.it.ctx.now or datetime.datetime.now(datetime.UTC)
            now = _in_zone(now, tags.get("zone"))
            return self.match(tags, [_date_part(now, self.expand(pos[0]))], pos[1])
        if name == "mailboxexists":
            return all(self.it.ctx.mailbox_exists(self.expand(b)) for b in pos[0])
        if name == "duplicate":
            return self.duplicate(tags)
        if name == "environment":
            item = self.expand(pos[0]).lower()
            value = self.it.ctx.environment.get(item)
            if value is None:
                return False
            return self.match(tags, [value], pos[1])
        if name in ("spamtest", "virustest"):
            return self.match(tags, [self.spam_value(name, "percent" in tags)], pos[0],
                              numeric=True)
        if name == "ihave":
            available = self.it.ctx.settings.get("extensions", ALL_EXTENSIONS)
            return all(self.expand(e) in available for e in pos[0])
        raise SieveRuntimeError(f"test '{name}' is not supported", t["l"])

    def headers_for(self, tags: dict) -> list:
        parts = self.it.loop_parts
        if "mime" in tags and parts:
            return part_headers(parts[-1])
        return self.it.msg.headers

    def header_sets(self, tags: dict) -> list[list]:
        """The header lists a test looks at (with :anychild, the current part
        and every part below it)."""
        parts = self.it.loop_parts
        if "mime" in tags and "anychild" in tags:
            top = parts[-1] if parts else self.it.msg.tree()
            return [part_headers(p) for p in list(top.walk())[:1000]]
        return [self.headers_for(tags)]

    def header_values(self, tags: dict, names: list[str]) -> list[str]:
        values: list[str] = []
        for headers in self.header_sets(tags):
            for name in names:
                found = self.it.msg.values(name, headers)
                found = _index(found, tags)
                if "mime" in tags and any(k in tags for k in ("type", "subtype", "contenttype",
                                                              "param")):
                    found = [v for f in found for v in _mime_option(f, tags)]
                values.extend(found)
        return values

    def address_values(self, tags: dict, names: list[str]) -> list[str]:
        out: list[str] = []
        for headers in self.header_sets(tags):
            for name in names:
                found = _index(self.it.msg.values(name, headers), tags)
                for addr in parse_addresses(found):
                    part = self.address_part(addr, tags)
                    if part is not None:
                        out.append(part)
        return out

    def envelope_values(self, tags: dict, parts: list[str]) -> list[str]:
        env = self.it.ctx.envelope
        out = []
        for p in parts:
            p = self.expand(p).lower()
            value = {"from": env.sender, "to": env.recipient, "auth": env.auth}.get(p)
            if value is None or (p == "auth" and not value):
                continue
            if value == "":
                out.append("")  # the null reverse-path matches only ""
                continue
            part = self.address_part(value, tags)
            if part is not None:
                out.append(part)
        return out

    def address_part(self, addr: str, tags: dict) -> str | None:
        local, at, domain = addr.rpartition("@")
        if not at:
            local, domain = addr, ""
        if "localpart" in tags:
            return local
        if "domain" in tags:
            return domain
        if "user" in tags or "detail" in tags:
            delims = self.it.ctx.delimiter
            cut = min((i for i in (local.find(d) for d in delims) if i >= 0), default=-1) \
                if delims else -1
            if "user" in tags:
                return local if cut < 0 else local[:cut]
            return None if cut < 0 else local[cut + 1:]
        return addr

    def body(self, tags: dict, keys: list[str]) -> bool:
        if "raw" in tags:
            texts = self.it.msg.body_texts("raw")
        elif "content" in tags:
            texts = self.it.msg.body_texts("content",
                                          tuple(self.expand(t) for t in tags["content"]))
        else:
            texts = self.it.msg.body_texts("text")
        return self.match(tags, texts, keys)

    def date(self, tags: dict, pos: list) -> bool:
        header, part = self.expand(pos[0]), self.expand(pos[1])
        values = _index(self.it.msg.values(header), tags)
        out = []
        for v in values:
            try:
                when = email.utils.parsedate_to_datetime(v.split(";")[-1].strip()
                                                         if header.lower() == "received" else v)
            except (TypeError, ValueError, IndexError):
                continue
            if when is None:
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            if "originalzone" not in tags:
                when = _in_zone(when, tags.get("zone"))
            out.append(_date_part(when, part))
        return self.match(tags, out, pos[2])

    def duplicate(self, tags: dict) -> bool:
        if "uniqueid" in tags:
            ident = self.expand(tags["uniqueid"])
        else:
            header = tags.get("header", "message-id")
            values = self.it.msg.raw_values(self.expand(header))
            if not values:
                return False
            ident = values[0]
        handle = self.expand(tags.get("handle", ""))
        seconds = tags.get("seconds") or self.it.ctx.settings.get(
            "duplicate_default_period", 14 * 86400)
        hi = self.it.ctx.settings.get("duplicate_max_period", 7 * 86400)
        if hi and seconds > hi:
            seconds = hi
        seen = self.it.ctx.duplicate_seen(ident, handle)
        if not seen or "last" in tags:
            self.it.result.duplicates.append((ident, handle, seconds))
        return seen

    def spam_value(self, name: str, percent: bool) -> str:
        """RFC 5235: "0" untested, 1..10 (or 0..100 with :percent)."""
        s = self.it.ctx.settings
        header_spec = s.get(f"{name}_status_header", "")
        if not header_spec:
            return "0"
        hname, _, pattern = header_spec.partition(":")
        values = self.it.msg.values(hname.strip())
        if not values:
            return "0"
        value = values[0]
        pattern = pattern.strip()
        if pattern:
            try:
                m = regex.search(pattern, value, timeout=REGEX_TIMEOUT)
            except (regex.error, TimeoutError):
                return "0"
            if m is None:
                return "0"
            value = m.group(1) if m.groups() else m.group(0)
        kind = s.get(f"{name}_status_type", "score")
        if kind == "text":
            for n in range(0, 11):
                texts = s.get(f"{name}_text_value{n}")
                if texts is not None and value.strip() == texts:
                    return str(n if not percent else n * 10)
            return "0"
        if kind == "strlen":
            score = float(len(value))
        else:
            try:
                score = float(value.strip())
            except ValueError:
                return "0"
        maximum = s.get(f"{name}_max_value", 0.0)
        if kind == "strlen" and not maximum:
            maximum = float(s.get(f"{name}_max_header_len", 10) or 10)
        if not maximum:
            return "0"
        if score < 0:
            score = 0.0
        if score > maximum:
            score = maximum
        if percent:
            return str(round(score / maximum * 100))
        return str(1 + round(score / maximum * 9))

    # -- matching -----------------------------------------------------------

    def match(self, tags: dict, values: list[str], keys: list[str], expand: bool = True,
              numeric: bool = False) -> bool:
        it = self.it
        if len(values) > it.ctx.limits.max_match_values:
            values = values[:it.ctx.limits.max_match_values]
        comparator = tags.get("comparator", "i;ascii-casemap")
        if numeric and "comparator" not in tags:
            comparator = "i;ascii-casemap"
        keys = [self.expand(k) for k in keys] if expand else keys
        if "count" in tags:
            rel = tags["count"].lower()
            count = str(len(values))
            return any(_relate(count, k, rel, comparator) for k in keys)
        if "value" in tags:
            rel = tags["value"].lower()
            return any(_relate(v, k, rel, comparator) for v, k in self.pairs(values, keys))
        if "contains" in tags:
            if comparator == "i;ascii-casemap":
                lk = [ascii_lower(k) for k in keys]
                lower = it.msg.lowered
                return any(k in lower(v) for v, k in self.pairs(values, lk))
            if comparator == "i;ascii-numeric":
                raise SieveRuntimeError("i;ascii-numeric does not support :contains", it.line)
            return any(k in v for v, k in self.pairs(values, keys))
        if "matches" in tags or "regex" in tags:
            for v, k in self.pairs(values, keys):
                groups = self.pattern_match(v, k, comparator, "regex" in tags)
                if groups is not None:
                    if "variables" in self.require:
                        self.match_vars = groups
                    return True
            return False
        # :is
        return any(_equal(v, k, comparator) for v, k in self.pairs(values, keys))

    def pairs(self, values: list[str], keys: list[str]):
        """Every (value, key) pair, checking that this step stays within
        ``STEP_LIMIT`` (a test over thousands of values and keys)."""
        n = 0
        for v in values:
            for k in keys:
                n += 1
                if n & 255 == 0 and time.monotonic() - self.it.step_started > STEP_LIMIT:
                    raise SieveRuntimeError("test takes too long", self.it.line)
                yield v, k

    def pattern_match(self, value: str, key: str, comparator: str, is_regex: bool
                      ) -> list[str] | None:
        flags = regex.DOTALL
        if comparator == "i;ascii-casemap":
            flags |= regex.IGNORECASE
        try:
            if is_regex:
                compiled = _compile(key, flags, True)
                m = compiled.search(value, timeout=REGEX_TIMEOUT)
            else:
                compiled = _compile(key, flags, False)
                m = compiled.fullmatch(value, timeout=REGEX_TIMEOUT)
        except TimeoutError:
            raise SieveRuntimeError("pattern match took too long", self.it.line) from None
        except regex.error as e:
            raise SieveRuntimeError(f"invalid regular expression '{key}': {e}",
                                    self.it.line) from None
        if m is None:
            return None
        groups = [m.group(0)] + [g or "" for g in m.groups()]
        return groups[:10] if is_regex else groups

    # -- variables ----------------------------------------------------------

    def expand(self, s: str) -> str:
        if "variables" not in self.require or "${" not in s:
            return s
        limit = self.it.ctx.limits.max_variable_size

        def sub(m: re.Match) -> str:
            name = m.group(1)
            if name.isdigit():
                n = int(name)
                return self.match_vars[n] if n < len(self.match_vars) else ""
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", name):
                return m.group(0)
            return self.get_var(name)[:limit]

        return VARIABLE_REF.sub(sub, s)

    def get_var(self, name: str) -> str:
        lname = name.lower()
        if lname.startswith("global."):
            return self.it.globals.get(lname[7:], "")
        if lname.startswith("env."):
            return str(self.it.ctx.environment.get(lname[4:], ""))
        if lname in self.global_names:
            return self.it.globals.get(lname, "")
        return self.variables.get(lname, "")

    def set_var(self, name: str, value: str) -> None:
        lname = name.lower()
        value = value[:self.it.ctx.limits.max_variable_size]
        if lname.startswith("global."):
            target, key = self.it.globals, lname[7:]
        elif lname in self.global_names:
            target, key = self.it.globals, lname
        else:
            target, key = self.variables, lname
        if key not in target and len(target) >= self.it.ctx.limits.max_scope_size:
            raise SieveRuntimeError("too many variables", self.it.line)
        target[key] = value

    def modify(self, value: str, tags: dict) -> str:
        """RFC 5229 4.1 modifiers, highest precedence first."""
        if "lower" in tags:
            value = value.lower()
        if "upper" in tags:
            value = value.upper()
        if "lowerfirst" in tags:
            value = value[:1].lower() + value[1:]
        if "upperfirst" in tags:
            value = value[:1].upper() + value[1:]
        if "quotewildcard" in tags:
            value = value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
        if "quoteregex" in tags:
            value = regex.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\1", value)
        if "encodeurl" in tags:
            value = urllib.parse.quote(value, safe="-._~")
        if "length" in tags:
            value = str(len(value))
        return value

    def flag_list(self, items: list[str]) -> list[str]:
        out = []
        for item in items:
            for f in self.expand(item).split():
                out.append(SYSTEM_FLAGS.get(f.lower(), f) if f.startswith("\\") else f)
        return _dedup(out)


PROTECTED_HEADERS = frozenset({"received", "auto-submitted"})
_PATTERNS: dict = {}


def _compile(key: str, flags: int, is_regex: bool):
    cache_key = (key, flags, is_regex)
    compiled = _PATTERNS.get(cache_key)
    if compiled is None:
        source = key if is_regex else _glob_to_regex(key)
        compiled = regex.compile(source, flags)
        if len(_PATTERNS) > 256:
            _PATTERNS.clear()
        _PATTERNS[cache_key] = compiled
    return compiled


def _glob_to_regex(key: str) -> str:
    out, i, n = [], 0, len(key)
    while i < n:
        c = key[i]
        if c == "\\" and i + 1 < n:
            out.append(regex.escape(key[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append("(.*?)")
        elif c == "?":
            out.append("(.)")
        else:
            out.append(regex.escape(c))
        i += 1
    return "".join(out)


def _dedup(flags: list[str]) -> list[str]:
    seen, out = set(), []
    for f in flags:
        if f.lower() not in seen:
            seen.add(f.lower())
            out.append(f)
    return out


def _numeric(s: str) -> float:
    digits = ""
    for c in s:
        if c.isdigit() and c.isascii():
            digits += c
        else:
            break
    return float(int(digits)) if digits else float("inf")


def _equal(v: str, k: str, comparator: str) -> bool:
    if comparator == "i;ascii-casemap":
        return ascii_lower(v) == ascii_lower(k)
    if comparator == "i;ascii-numeric":
        return _numeric(v) == _numeric(k)
    return v == k


def _relate(v: str, k: str, rel: str, comparator: str) -> bool:
    if comparator == "i;ascii-numeric":
        a, b = _numeric(v), _numeric(k)
    elif comparator == "i;ascii-casemap":
        a, b = ascii_lower(v), ascii_lower(k)
    else:
        a, b = v, k
    return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b, "eq": a == b,
            "ne": a != b}[rel]


def _index(values: list[str], tags: dict) -> list[str]:
    if "index" not in tags:
        return values
    n = tags["index"]
    if n < 1 or n > len(values):
        return []
    return [values[-n] if "last" in tags else values[n - 1]]


def _mime_option(value: str, tags: dict) -> list[str]:
    main, _, params = value.partition(";")
    main = main.strip()
    ctype, _, subtype = main.partition("/")
    if "type" in tags:
        return [ctype]
    if "subtype" in tags:
        return [subtype]
    if "contenttype" in tags:
        return [main]
    wanted = {p.lower() for p in tags.get("param", [])}
    out = []
    for p in params.split(";"):
        k, eq, v = p.partition("=")
        if eq and k.strip().lower() in wanted:
            out.append(v.strip().strip('"'))
    return out


def _valid_field_name(name: str) -> bool:
    return bool(name) and all(33 <= ord(c) <= 126 and c != ":" for c in name)


def _in_zone(when: datetime.datetime, zone: str | None) -> datetime.datetime:
    if zone is None:
        return when.astimezone()
    sign = -1 if zone.startswith("-") else 1
    digits = zone.lstrip("+-")
    if len(digits) != 4 or not digits.isdigit():
        return when.astimezone()
    offset = datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return when.astimezone(datetime.timezone(sign * offset))


def _date_part(when: datetime.datetime, part: str) -> str:
    part = part.lower()
    off = when.utcoffset() or datetime.timedelta(0)
    minutes = int(off.total_seconds() // 60)
    zone = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    if part == "year":
        return f"{when.year:04d}"
    if part == "month":
        return f"{when.month:02d}"
    if part == "day":
        return f"{when.day:02d}"
    if part == "date":
        return f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
    if part == "julian":
        mjd = (when.date() - datetime.date(1858, 11, 17)).days
        return str(mjd)
    if part == "hour":
        return f"{when.hour:02d}"
    if part == "minute":
        return f"{when.minute:02d}"
    if part == "second":
        return f"{when.second:02d}"
    if part == "time":
        return f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    if part == "iso8601":
        return when.strftime("%Y-%m-%dT%H:%M:%S") + zone[:3] + ":" + zone[3:]
    if part == "std11":
        return email.utils.format_datetime(when)
    if part == "zone":
        return zone
    if part == "weekday":
        return str((when.weekday() + 1) % 7)
    return ""

