"""Dovecot's quota plugin for the storage: settings, limits, usage.

Reads the ``plugin {}`` quota settings as Dovecot 2.3 spells them
(``quota = count:User quota`` or ``maildir:User quota``, ``quota_rule``,
``quota_rule2`` …, ``quota_grace``, ``quota_warning`` …,
``quota_exceeded_message``, ``quota_max_mail_size``, ``quota_vsizes``,
the second root as ``quota2`` with ``quota2_rule`` …), userdb fields
overriding them.  Keeps the usage of one root:

* ``count``: the storage's own index is the truth (Dovecot keeps the sum
  in the index's vsize header); the storage hands us a scanner that sums
  the mailboxes, so the usage is current after every change by construction;
* ``maildir``: the Maildir++ ``maildirsize`` file in the mail root, in the
  format Dovecot and Courier share (first line the limits ``NS,NC``, then
  ``bytes count`` lines appended by every change), recalculated from the
  directories when it is missing, unparsable, holds other limits, grows
  past 5120 bytes, or says "over quota" with more than one line or older
  than 15 minutes, as Dovecot does.

Runs inside the user's mail process (the storage's caller).  Trusts its
settings (the master's config, userdb fields); treats ``maildirsize`` as
data (a bad file is recalculated, never trusted).
"""

from __future__ import annotations

import fnmatch
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# reactor.spawnProcess imports it on first use; a mail process imports
# everything before its privilege drop
from twisted.internet import process as _process  # noqa: F401
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from pydovecot.storage.interfaces import MailTooLarge, OverQuota

log = Logger()

MAILDIRSIZE = "maildirsize"
MAILDIRSIZE_MAX = 5120
MAILDIRSIZE_STALE_SECS = 15 * 60
DEFAULT_EXCEEDED = "Quota exceeded (mailbox for user is full)"
TOO_LARGE = "Mail size is larger than the maximum size allowed by server configuration"
BACKENDS = ("count", "maildir")
REFUSED_BACKENDS = {
    "dict": "dict quota is not supported (use count: or maildir:)",
    "fs": "filesystem quota is not supported (use count: or maildir:)",
    "dirsize": "dirsize quota is not supported (use count: or maildir:)",
    "imapc": "imapc quota is not supported",
    "last_login": "not a quota backend",
}
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class QuotaSettingError(ValueError):
    """A quota setting can't be honoured (the config check refuses it)."""


def _unpct(value: str) -> str:
    """Dovecot's plugin settings are %-expanded: ``10%%`` means ``10%``."""
    return value.replace("%%", "%")


def parse_quantity(text: str, default_unit: int) -> tuple[int, bool]:
    """``1G`` / ``100M`` / ``512`` (in ``default_unit``) / ``10%`` →
    (value, is_percent)."""
    text = _unpct(text.strip())
    if text.endswith("%"):
        num = text[:-1].strip()
        if not num.isdigit():
            raise QuotaSettingError(f"invalid percentage: {text!r}")
        return int(num), True
    m = re.fullmatch(r"(\d+)\s*([bkmgtBKMGT]?)[bB]?", text)
    if not m:
        raise QuotaSettingError(f"invalid size: {text!r}")
    unit = _UNITS[m.group(2).lower()] if m.group(2) else default_unit
    return int(m.group(1)) * unit, False


@dataclass
class Limit:
    """One resource of a rule: absolute, relative (``+N``/``-N``) or percent."""

    value: int = 0
    relative: bool = False
    percent: bool = False

    def apply(self, base: int) -> int:
        if self.percent:
            return base * self.value // 100
        if self.relative:
            return max(0, base + self.value)
        return self.value


def _limit(text: str, default_unit: int) -> Limit:
    sign = 0
    if text[:1] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    value, pct = parse_quantity(text, default_unit)
    if sign:
        return Limit(value * sign, relative=True)
    return Limit(value, percent=pct)


@dataclass
class Rule:
    """``MAILBOX:storage=N:messages=N`` (or ``MAILBOX:ignore``)."""

    pattern: str
    storage: Limit | None = None
    messages: Limit | None = None
    ignore: bool = False


def parse_rule(text: str) -> Rule:
    """One ``quota_rule`` value."""
    pattern, sep, rest = _unpct(text).partition(":")
    if not sep or not pattern:
        raise QuotaSettingError(f"invalid quota rule {text!r}: MAILBOX:storage=…")
    rule = Rule(pattern)
    for part in rest.split(":"):
        key, eq, value = part.strip().partition("=")
        key = key.lower()
        if key == "ignore" and not eq:
            rule.ignore = True
        elif key == "storage" and eq:
            rule.storage = _limit(value, 1024)  # Dovecot: storage= is in kB
        elif key == "bytes" and eq:
            rule.storage = _limit(value, 1)
        elif key == "messages" and eq:
            rule.messages = _limit(value, 1)
        elif key == "backend":
            raise QuotaSettingError(f"quota rule {text!r}: backend= limits are not supported")
        elif key == "" and not eq:
            continue
        else:
            raise QuotaSettingError(f"quota rule {text!r}: unknown limit {key!r}")
    return rule


@dataclass
class Warning_:
    """``storage=95%% quota-warning 95 %u``: run the command when the
    usage crosses the limit upwards (``-storage=…``: downwards)."""

    resource: str  # "storage" | "messages"
    limit: Limit
    args: list[str]
    down: bool = False

    def threshold(self, limits: tuple[int, int]) -> int:
        base = limits[0] if self.resource == "storage" else limits[1]
        return self.limit.apply(base)


def parse_warning(text: str) -> Warning_:
    spec, _, command = _unpct(text).strip().partition(" ")
    down = spec.startswith("-")
    spec = spec.lstrip("+-")
    key, eq, value = spec.partition("=")
    if not eq or key.lower() not in ("storage", "messages", "bytes"):
        raise QuotaSettingError(f"invalid quota_warning {text!r}: storage=N%% command …")
    resource = "messages" if key.lower() == "messages" else "storage"
    lim = _limit(value, 1024 if key.lower() == "storage" else 1)
    return Warning_(resource, lim, command.split(), down)


@dataclass
class RootConfig:
    """One quota root: ``quota`` (or ``quotaN``) and its rules."""

    name: str
    backend: str
    rules: list[Rule] = field(default_factory=list)
    grace: Limit = field(default_factory=lambda: Limit(10, percent=True))
    warnings: list[Warning_] = field(default_factory=list)
    noenforcing: bool = False
    ignoreunlimited: bool = False
    hidden: bool = False

    def rule_for(self, mailbox: str) -> Rule | None:
        for rule in self.rules:
            if rule.pattern not in ("*", "?") and _match(rule.pattern, mailbox):
                return self._merged(rule.pattern)
        return None

    def default(self) -> Rule:
        """The ``*`` rules merged (``quota_rule = *:storage=…`` and
        ``quota_rule3 = *:messages=…`` make one rule, as in Dovecot)."""
        return self._merged("*")

    def _merged(self, pattern: str) -> Rule:
        out = Rule(pattern)
        for rule in self.rules:
            if rule.pattern == pattern or (pattern == "*" and rule.pattern == "?"):
                out.storage = rule.storage if rule.storage is not None else out.storage
                out.messages = rule.messages if rule.messages is not None else out.messages
                out.ignore = out.ignore or rule.ignore
        return out

    def limits(self, mailbox: str = "") -> tuple[int, int]:
        """(bytes, messages) limits, 0 = unlimited, for saving into ``mailbox``."""
        base = self.default()
        b = base.storage.apply(0) if base.storage else 0
        n = base.messages.apply(0) if base.messages else 0
        rule = self.rule_for(mailbox) if mailbox else None
        if rule is not None:
            if rule.storage is not None:
                b = rule.storage.apply(b)
            if rule.messages is not None:
                n = rule.messages.apply(n)
        return b, n

    def ignored(self, mailbox: str) -> bool:
        rule = self.rule_for(mailbox)
        return bool(rule and rule.ignore)

    def grace_bytes(self, limit: int) -> int:
        return self.grace.apply(limit)


def _match(pattern: str, mailbox: str) -> bool:
    if pattern.upper() == "INBOX":
        return mailbox.upper() == "INBOX"
    return fnmatch.fnmatchcase(mailbox, pattern)


@dataclass
class QuotaConfig:
    roots: list[RootConfig]
    exceeded_message: str = DEFAULT_EXCEEDED
    max_mail_size: int = 0
    vsizes: bool = False
    tempfail: bool = False  # quota_full_tempfail


def _numbered(settings: dict, key: str) -> list[str]:
    """``key``, ``key2``, ``key3`` … as Dovecot reads them (stops at a gap)."""
    out = []
    first = settings.get(key)
    if first:
        out.append(first)
    n = 2
    while True:
        value = settings.get(f"{key}{n}")
        if value is None:
            break
        if value:
            out.append(value)
        n += 1
    return out


def parse_backend(value: str) -> tuple[str, str, list[str]]:
    """``count:User quota:noenforcing`` → (backend, root name, args)."""
    backend, _, rest = value.partition(":")
    backend = backend.strip()
    if backend in REFUSED_BACKENDS:
        raise QuotaSettingError(f"quota = {value}: {REFUSED_BACKENDS[backend]}")
    if backend not in BACKENDS:
        raise QuotaSettingError(f"quota = {value}: unknown quota backend {backend!r}")
    name, *args = rest.split(":") if rest else [""]
    for arg in args:
        if arg.lower() not in ("noenforcing", "ignoreunlimited", "hidden", ""):
            raise QuotaSettingError(f"quota = {value}: backend option {arg!r} is not supported")
    return backend, name or backend, [a.lower() for a in args]


def parse_settings(settings: dict) -> QuotaConfig | None:
    """The quota configuration from the plugin settings (userdb fields
    merged over them), or None when no quota root is configured."""
    roots: list[RootConfig] = []
    n = 1
    while True:
        key = "quota" if n == 1 else f"quota{n}"
        value = settings.get(key)
        if not value:
            break
        backend, name, args = parse_backend(value)
        if backend == "count" and (settings.get("quota_vsizes") or "no").lower() not in (
                "yes", "y", "1", "true"):
            raise QuotaSettingError(f"{key} = {value}: quota count backend requires "
                                    "quota_vsizes=yes")
        root = RootConfig(name, backend, noenforcing="noenforcing" in args,
                          ignoreunlimited="ignoreunlimited" in args, hidden="hidden" in args)
        root.rules = [parse_rule(r) for r in _numbered(settings, f"{key}_rule")]
        grace = settings.get(f"{key}_grace")
        if grace:
            root.grace = _limit(grace.split()[0], 1)
        root.warnings = [parse_warning(w) for w in _numbered(settings, f"{key}_warning")]
        roots.append(root)
        n += 1
    if not roots:
        return None
    cfg = QuotaConfig(roots)
    if settings.get("quota_exceeded_message"):
        cfg.exceeded_message = settings["quota_exceeded_message"]
    if settings.get("quota_max_mail_size"):
        cfg.max_mail_size = parse_quantity(settings["quota_max_mail_size"], 1)[0]
    cfg.vsizes = (settings.get("quota_vsizes") or "no").lower() in ("yes", "y", "1", "true")
    cfg.tempfail = (settings.get("quota_full_tempfail") or "no").lower() in (
        "yes", "y", "1", "true")
    return cfg


#: What a backend asks the storage: (bytes, count) of every mailbox the
#: root counts (``ignored`` tells which mailboxes it skips).
Scanner = Callable[[Callable[[str], bool]], tuple[int, int]]


class Root:
    """A configured root with its usage backend."""

    def __init__(self, config: RootConfig, scan: Scanner, maildir: str):
        self.config = config
        self.name = config.name
        self._scan = scan
        self.path = os.path.join(maildir, MAILDIRSIZE)
        self._last_recalc = 0.0

    # -- usage ---------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        if self.config.backend == "count":
            return self._scan(self.config.ignored)
        return self._maildirsize()

    def update(self, dbytes: int, dcount: int) -> None:
        """A change the storage just made (``count`` needs none)."""
        if self.config.backend != "maildir" or (dbytes == 0 and dcount == 0):
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            self.recalc()
            return
        try:
            os.write(fd, f"{dbytes} {dcount}\n".encode())
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > MAILDIRSIZE_MAX:
            self.recalc()

    def recalc(self) -> tuple[int, int]:
        """Count again from the mail; ``maildir`` rewrites maildirsize."""
        total = self._scan(self.config.ignored)
        if self.config.backend == "maildir":
            self._write(total)
        return total

    # -- maildirsize ---------------------------------------------------

    def limits_line(self) -> str:
        b, n = self.config.limits()
        out = f"{b}S" if b or not n else ""  # Dovecot: 0S rather than an empty line
        if n:
            out += ("," if out else "") + f"{n}C"
        return out

    def _write(self, total: tuple[int, int]) -> None:
        tmp = f"{self.path}.{socket.gethostname()}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{self.limits_line()}\n{total[0]} {total[1]}\n")
        os.rename(tmp, self.path)

    def _maildirsize(self) -> tuple[int, int]:
        parsed = self._read()
        if parsed is None:
            return self.recalc()
        return parsed

    def _read(self) -> tuple[int, int] | None:
        """The totals, or None when Dovecot would recalculate."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAILDIRSIZE_MAX + 1)
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        if len(data) > MAILDIRSIZE_MAX or not data.endswith(b"\n"):
            return None
        lines = data.decode("ascii", "replace").split("\n")[:-1]
        if not lines or lines[0].strip() != self.limits_line():
            return None
        tb = tc = 0
        for line in lines[1:]:
            parts = line.split()
            if len(parts) != 2 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
                return None
            tb += int(parts[0])
            tc += int(parts[1])
        if tb < 0 or tc < 0 or len(lines) < 2:
            return None
        b, n = self.config.limits()
        if (b and tb > b) or (n and tc > n):  # over quota: trust only a fresh summary
            if len(lines) > 2 or mtime < time.time() - MAILDIRSIZE_STALE_SECS:
                return None
        return tb, tc

    # -- checks --------------------------------------------------------

    def check(self, mailbox: str, size: int, count: int, grace: bool = False) -> str | None:
        """None if ``count`` messages of ``size`` bytes fit, else why not
        ("quota" or "too large").  ``grace``: a delivery (LDA/LMTP), which
        quota_grace lets bring the user from under to over the limit."""
        if self.config.noenforcing or self.config.ignored(mailbox):
            return None
        b, n = self.config.limits(mailbox)
        if not b and not n:
            return None
        ub, uc = self.usage()
        if b and ub + size > b:
            if size > b + self.config.grace_bytes(b):
                return "too large"
            if not (grace and count == 1 and ub < b
                    and ub + size <= b + self.config.grace_bytes(b)):
                return "quota"
        if n and uc + count > n:
            return "quota"
        return None


class Quota:
    """Every root of one user's storage (``IMailStorage``'s quota side)."""

    def __init__(self, config: QuotaConfig, scan: Scanner, maildir: str,
                 warn: Callable[[list[str]], None] | None = None):
        self.config = config
        self.roots = [Root(r, scan, maildir) for r in config.roots]
        self.warn = warn
        #: set while a delivery saves (:meth:`delivering`): quota_grace applies
        self.grace = False

    def root(self, name: str) -> Root | None:
        """A visible root by name (hidden ones, and ``ignoreunlimited`` ones
        without limits, do not exist for the user, as in Dovecot)."""
        for r in self.roots_for(""):
            if r.name == name:
                return r
        return None

    def roots_for(self, mailbox: str) -> list[Root]:
        return [r for r in self.roots if not r.config.hidden and not (
            r.config.ignoreunlimited and r.config.limits(mailbox) == (0, 0))]

    def check(self, mailbox: str, size: int, count: int = 1, grace: bool | None = None) -> None:
        """Raise OverQuota / MailTooLarge if the save can't happen."""
        if self.config.max_mail_size and count == 1 and size > self.config.max_mail_size:
            raise MailTooLarge(TOO_LARGE)
        for r in self.roots:
            why = r.check(mailbox, size, count, self.grace if grace is None else grace)
            if why is not None:
                err = OverQuota(self.config.exceeded_message)
                err.tempfail = self.config.tempfail
                raise err

    def changed(self, mailbox: str, dbytes: int, dcount: int) -> None:
        """Account a change and run the warnings it crosses."""
        for r in self.roots:
            if r.config.ignored(mailbox):
                continue
            before = None
            if r.config.warnings and self.warn is not None:
                before = r.usage()
                if r.config.backend == "count":  # already changed on disk
                    before = (before[0] - dbytes, before[1] - dcount)
            r.update(dbytes, dcount)
            if before is not None:
                self._warnings(r, before, r.usage())

    def _warnings(self, r: Root, before: tuple[int, int], after: tuple[int, int]) -> None:
        limits = r.config.limits()
        for w in r.config.warnings:
            idx = 0 if w.resource == "storage" else 1
            threshold = w.threshold(limits)
            if not threshold:
                continue
            if w.down:
                crossed = before[idx] >= threshold > after[idx]
            else:
                crossed = before[idx] < threshold <= after[idx]
            if crossed:
                assert self.warn is not None
                self.warn(w.args)
                return  # Dovecot runs only the first (highest) matching warning


class _WarningExit(ProcessProtocol):
    def __init__(self, path: str):
        self.path = path

    def processEnded(self, reason) -> None:  # noqa: N802 (Twisted's name)
        code = getattr(reason.value, "exitCode", 0)
        if code:
            log.error("quota warning script {path} failed: exit {code}", path=self.path,
                      code=code)


def run_warning(script: str, args: list[str], user: str) -> None:
    """Run ``service quota-warning``'s ``script`` with the warning's
    arguments (``%u`` already expanded), as the process's own uid, i.e.
    the user's: the mail process never runs it with more privileges."""
    from twisted.internet import reactor

    argv = [script, *[a.replace("%u", user).replace("%n", user.split("@")[0])
                      .replace("%d", user.partition("@")[2]) for a in args[1:]]]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "USER": user}
    try:
        reactor.spawnProcess(_WarningExit(script), script, argv, env=env,  # type: ignore[attr-defined]
                             childFDs={0: "w", 1: "r", 2: "r"})
    except OSError as e:
        log.error("quota warning script {path} can't run: {e}", path=script, e=e.strerror)
