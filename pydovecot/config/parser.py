"""Read one Dovecot 2.3 config file (with its includes) into a typed ``Config``.

Syntax as Dovecot's config-parser: ``key = value``, quotes, ``#`` comments,
``\\`` continuation, ``key = <file`` (certificates stay references, every
other value is read at load time, so a missing file is ``FILE:LINE``),
``$key`` in KEY's own value (its value so far, else Dovecot's default; other
``$names`` of settings stay literal, unknown ones are errors, as in 2.3),
``!include`` / ``!include_try`` with globs, ``name [arg] { … }`` sections
(listeners, mailboxes and namespaces may be unnamed) and
``protocol``/``local``/``remote``/``local_name`` filters.  Each setting is
classified (settings.py): a value pydovecot can't honour is refused as
``FILE:LINE: … refused: why`` (judged on the final value), a cosmetic one is
warned once.  Errors raise :class:`ConfigError`; ``strict=False`` (pydoveconf)
records refusals instead.  The config file and the files it includes are
trusted (root-owned, read by the master); ``Config.from_dict`` trusts its
input, which comes from the master.  Nothing here opens sockets or changes
privileges.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from pydovecot.config import settings as S


class ConfigError(Exception):
    """A config file problem; str() is one line, ``FILE:LINE: message``."""


@dataclass
class InetListener:
    """A TCP listener of a service; port 0 means off."""

    name: str
    addresses: list[str]
    port: int
    ssl: bool = False
    haproxy: bool = False
    reuse_port: bool = False


@dataclass
class UnixListener:
    """A UNIX socket (or FIFO) listener; path is absolute."""

    name: str
    path: str
    mode: int = 0o600
    user: str = ""
    group: str = ""


@dataclass
class ServiceConfig:
    """One ``service NAME { }``: built-in defaults merged with the file's sections."""

    name: str
    settings: dict[str, str] = field(default_factory=dict)
    inet_listeners: dict[str, InetListener] = field(default_factory=dict)
    unix_listeners: dict[str, UnixListener] = field(default_factory=dict)
    fifo_listeners: dict[str, UnixListener] = field(default_factory=dict)
    default_process_limit: int = 100
    default_client_limit: int = 1000
    default_vsz_limit: int = 256 << 20

    def get(self, key: str) -> str:
        """A service setting as a string ("" when unset)."""
        return self.settings.get(key, "")

    def _uint(self, key: str) -> int:
        value = self.get(key)
        return S.parse_uint(value) if value else 0

    @property
    def process_limit(self) -> int:
        """Max processes; 0 in the file means default_process_limit."""
        return self._uint("process_limit") or self.default_process_limit

    @property
    def client_limit(self) -> int:
        """Max clients per process; 0 in the file means default_client_limit."""
        return self._uint("client_limit") or self.default_client_limit

    @property
    def process_min_avail(self) -> int:
        return self._uint("process_min_avail")

    @property
    def service_count(self) -> int:
        """Clients a process serves before it exits; 0 = unlimited."""
        return self._uint("service_count")

    @property
    def vsz_limit(self) -> int:
        """Address-space limit in bytes (default_vsz_limit when unset)."""
        value = self.get("vsz_limit")
        return S.parse_size(value) if value else self.default_vsz_limit

    @property
    def idle_kill(self) -> float:
        value = self.get("idle_kill")
        return S.parse_time(value) if value else 0.0

    @property
    def user(self) -> str:
        return self.get("user")

    @property
    def group(self) -> str:
        return self.get("group")

    @property
    def chroot(self) -> str:
        return self.get("chroot")

    @property
    def protocol(self) -> str:
        return self.get("protocol")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceConfig:
        d = dict(d)
        d["inet_listeners"] = {k: InetListener(**v) for k, v in d["inet_listeners"].items()}
        for kind in ("unix_listeners", "fifo_listeners"):
            d[kind] = {k: UnixListener(**v) for k, v in d[kind].items()}
        return cls(**d)


_MAIL_SERVICES = {"imap": ("imap-login", "imap"), "pop3": ("pop3-login", "pop3"), "lmtp": ("lmtp",),
                  "sieve": ("managesieve-login",), "submission": ("submission-login",)}

_FILTERS = ("protocol", "local", "remote", "local_name")
_SECTIONS_IN: dict[str, frozenset[str]] = {
    "": frozenset(
        {"service", "protocol", "local", "remote", "local_name", "passdb", "userdb",
         "namespace", "plugin", "dict", "metric", "event_exporter"}
    ),
    "service": frozenset({"inet_listener", "unix_listener", "fifo_listener"}),
    "protocol": frozenset({"plugin", "local", "remote"}),
    "local": frozenset({"protocol", "plugin"}),
    "remote": frozenset({"protocol", "plugin"}),
    "local_name": frozenset({"protocol", "plugin"}),
    "namespace": frozenset({"mailbox"}),
}  # fmt: skip
_FREE_FORM = frozenset({"plugin", "dict", "metric", "event_exporter"})
#: Sections that need a name (Dovecot allows unnamed listeners, mailboxes
#: and namespaces: Debian's 10-director.conf has ``inet_listener { }``).
_NEED_NAME = frozenset({"service", "protocol", "local", "remote", "local_name", "metric",
                        "event_exporter"})
#: Settings whose ``<file`` stays a reference (their readers call
#: Config.read_value, so key material is not copied into every snapshot).
FILE_REFS = frozenset({"ssl_cert", "ssl_key", "ssl_ca", "ssl_alt_cert", "ssl_alt_key",
                        "ssl_dh", "ssl_client_cert", "ssl_client_key"})
#: The bound on a ``key = <file`` value read at load time.
MAX_FILE_VALUE = 64 * 1024


class Config:
    """A loaded configuration: global settings, filters, auth dbs, services."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        self.cwd = os.getcwd()
        self.settings: dict[str, str] = {k: d for k, (_t, d) in S.IMPLEMENTED.items()}
        self.protocol_settings: dict[str, dict[str, str]] = {}
        self.protocol_plugin: dict[str, dict[str, str]] = {}
        self.filters: list[dict[str, Any]] = []
        self.passdbs: list[dict[str, str]] = []
        self.userdbs: list[dict[str, str]] = []
        self.services: dict[str, ServiceConfig] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.plugin: dict[str, str] = {}
        self.dict: dict[str, str] = {}
        #: ``metric NAME { filter, group_by, … }`` blocks, in file order
        #: (checked at load by pydovecot.stats.metrics.parse_metric).
        self.metrics: dict[str, dict[str, str]] = {}
        self.warnings: list[str] = []
        #: Fatal problems found by a lenient parse (pydoveconf); a server
        #: start raises the first one instead.
        self.refusals: list[str] = []
        #: The services' sections as the file wrote them (for pydoveconf -n).
        self.raw_services: dict[str, dict[str, Any]] = {}
        #: Settings the file set at top level (the rest are defaults).
        self.explicit: list[str] = []
        self.source_files: list[str] = []
        self.origins: dict[str, str] = {}

    # -- typed access ---------------------------------------------------------

    def get(self, key: str, protocol: str | None = None) -> str:
        """A global setting, or protocol's override of it; KeyError if unknown."""
        if protocol:
            own = self.protocol_settings.get(protocol)
            if own is not None and key in own:
                return own[key]
            for name, values in self.protocol_settings.items():
                if name.startswith("!") and name[1:] != protocol and key in values:
                    return values[key]
        if key in self.settings:
            return self.settings[key]
        if key in S.DOVECOT_DEFAULTS:
            return S.DOVECOT_DEFAULTS[key]
        raise KeyError(f"unknown setting {key!r}")

    def _typed(self, key: str, protocol: str | None, conv: Any) -> Any:
        value = self.get(key, protocol)
        try:
            return conv(value)
        except ValueError as e:
            raise ConfigError(f"{self.origins.get(key, self.path)}: {key}: {e}") from None

    def get_bool(self, key: str, protocol: str | None = None) -> bool:
        return self._typed(key, protocol, S.parse_bool)

    def get_int(self, key: str, protocol: str | None = None) -> int:
        return self._typed(key, protocol, S.parse_uint)

    def get_size(self, key: str, protocol: str | None = None) -> int:
        """Size in bytes ("10M", "1 G", "64k")."""
        return self._typed(key, protocol, S.parse_size)

    def get_time(self, key: str, protocol: str | None = None) -> float:
        """Duration in seconds ("2 secs", "500 ms", "1 min")."""
        return self._typed(key, protocol, S.parse_time)

    def get_list(self, key: str, protocol: str | None = None) -> list[str]:
        """The value split on whitespace and commas."""
        return S.split_list(self.get(key, protocol))

    def read_value(self, key: str, protocol: str | None = None) -> str:
        """The value, or for ``key = <path`` the content of that file."""
        value = self.get(key, protocol)
        if not value.startswith("<"):
            return value
        path = value[1:]
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except OSError as e:
            where = self.origins.get(key, self.path)
            raise ConfigError(f"{where}: {key}: can't read {path}: {e.strerror}") from None

    def check_files(self) -> None:
        """Raise ConfigError (FILE:LINE) for any ``key = <file`` that cannot be read."""
        scopes = [(None, self.settings)]
        scopes += [(name, values) for name, values in self.protocol_settings.items()
                   if not name.startswith("!")]
        for protocol, values in scopes:
            for key, value in values.items():
                if isinstance(value, str) and value.startswith("<"):
                    self.read_value(key, protocol)

    def path_setting(self, key: str, protocol: str | None = None) -> str:
        """A path setting made absolute against the working directory at load time."""
        value = self.get(key, protocol)
        if not value or value == "syslog":
            return value
        return os.path.normpath(os.path.join(self.cwd, value))

    @property
    def protocols(self) -> list[str]:
        """The enabled protocols pydovecot serves (imap, pop3, lmtp)."""
        return [p for p in self.get_list("protocols") if p in S.IMPLEMENTED_PROTOCOLS]

    def enabled_services(self) -> dict[str, ServiceConfig]:
        """Services to run: auth, plus login and mail services of enabled protocols."""
        names = ["auth"]
        for proto in self.protocols:
            names.extend(_MAIL_SERVICES[proto])
        return {n: self.services[n] for n in names if n in self.services}

    # -- serialisation ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; ``Config.from_dict(cfg.to_dict())`` is an exact copy."""
        return {
            "path": self.path,
            "cwd": self.cwd,
            "settings": dict(self.settings),
            "protocol_settings": {k: dict(v) for k, v in self.protocol_settings.items()},
            "protocol_plugin": {k: dict(v) for k, v in self.protocol_plugin.items()},
            "filters": _copy(self.filters),
            "passdbs": [dict(d) for d in self.passdbs],
            "userdbs": [dict(d) for d in self.userdbs],
            "services": {k: v.to_dict() for k, v in self.services.items()},
            "namespaces": _copy(self.namespaces),
            "plugin": dict(self.plugin),
            "dict": dict(self.dict),
            "metrics": _copy(self.metrics),
            "warnings": list(self.warnings),
            "refusals": list(self.refusals),
            "raw_services": _copy(self.raw_services),
            "explicit": list(self.explicit),
            "source_files": list(self.source_files),
            "origins": dict(self.origins),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild a Config made by :meth:`to_dict` (in a child process)."""
        cfg = cls(d["path"])
        for key, value in d.items():
            if key == "services":
                cfg.services = {k: ServiceConfig.from_dict(v) for k, v in value.items()}
            else:
                setattr(cfg, key, _copy(value))
        return cfg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _copy(value: Any) -> Any:
    """Deep copy of plain JSON-like data."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@dataclass
class _Section:
    kind: str
    arg: str
    where: str
    data: dict[str, Any]
    plugin: dict[str, str] = field(default_factory=dict)


def _unescape(text: str) -> str:
    """Dovecot's str_unescape: a backslash keeps the next character literally."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def comment_start(line: str) -> int | None:
    """Where a ``#`` comment starts outside quotes (Dovecot's rule, also for
    its ``.conf.ext`` driver files), or None."""
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in "'\"":
            i += 1
            while i < n and line[i] != c:
                i += 2 if line[i] == "\\" else 1
            if i >= n:
                break
        elif c == "#":
            return i
        i += 1
    return None


def strip_comment(line: str) -> str:
    """``line`` without its ``#`` comment (see :func:`comment_start`)."""
    i = comment_start(line)
    return line if i is None else line[:i]


def _strip_comment(line: str) -> tuple[str, bool]:
    """Cut a ``#`` comment outside quotes; say if the ``#`` had no space before it."""
    i = comment_start(line)
    if i is None:
        return line, False
    return line[:i], i > 0 and not line[i - 1].isspace()


class _Parser:
    def __init__(self, path: str, strict: bool = True) -> None:
        self.cfg = Config(path)
        self.strict = strict
        self.stack: list[_Section] = []
        self.include_chain: list[str] = []
        self.raw_services = self.cfg.raw_services
        self.ns_counter = 0
        self.warned: set[str] = set()
        self.ns_where: dict[str, str] = {}
        self.metric_where: dict[str, str] = {}
        #: Refused values by scope, until a later line replaces them.
        self.pending: dict[tuple, tuple[str, str]] = {}

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}")

    def scope(self, key: str) -> tuple:
        """Where a value lives: the open sections and the key."""
        return (*((s.kind, s.arg) for s in self.stack), key)

    def refuse_value(self, where: str, key: str, message: str) -> None:
        """Refuse a value unless a later line of the same scope replaces it."""
        self.pending[self.scope(key)] = (where, message)

    def refuse(self, where: str, message: str) -> None:
        """A setting pydovecot can't honour: raise (server) or record (pydoveconf)."""
        text = f"{where}: {message}"
        if self.strict:
            raise ConfigError(text)
        if text not in self.cfg.refusals:
            self.cfg.refusals.append(text)

    def warn(self, where: str, message: str, once: str | None = None) -> None:
        """One warning naming FILE:LINE; ``once`` de-duplicates by a key."""
        key = once or f"{where}: {message}"
        if key in self.warned:
            return
        self.warned.add(key)
        self.cfg.warnings.append(f"{where}: {message}")

    # -- reading files -------------------------------------------------------

    def parse_file(self, path: str, where: str | None = None) -> None:
        real = os.path.realpath(path)
        if real in self.include_chain:
            raise self.fail(where or path, f"recursive include of {path}")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            if where is None:
                raise ConfigError(f"{path}: can't open config file: {e.strerror}") from None
            raise self.fail(where, f"can't open include file {path}: {e.strerror}") from None
        self.cfg.source_files.append(os.path.abspath(path))
        self.include_chain.append(real)
        pending: list[str] = []
        first = 0
        lineno = 0
        for lineno, raw in enumerate(text.splitlines(), 1):
            line, ambiguous = _strip_comment(raw.strip())
            line = line.rstrip()
            if not pending:
                first = lineno
            if ambiguous:
                self.cfg.warnings.append(
                    f"{path}:{lineno}: ambiguous '#' character in line, treating it as "
                    "comment (add a space before it to remove this warning)"
                )
            if line.endswith("\\"):
                part = line[:-1].rstrip()
                if part:
                    pending.append(part + " ")
                continue
            if pending:
                line = "".join(pending) + line
                pending = []
            if line:
                self.parse_line(path, f"{path}:{first}", line)
        if pending:
            self.parse_line(path, f"{path}:{first}", "".join(pending).rstrip())
        self.include_chain.pop()

    def include(self, path: str, where: str, pattern: str, must_exist: bool) -> None:
        if len(pattern) >= 2 and pattern[0] == pattern[-1] and pattern[0] in "'\"":
            pattern = _unescape(pattern[1:-1])
        if not pattern:
            raise self.fail(where, "!include needs a path")
        full = os.path.join(os.path.dirname(path), pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            if must_exist:
                raise self.fail(where, f"!include {pattern}: no such file ({full})")
            return
        for match in matches:
            self.parse_file(match, where)

    # -- one logical line ------------------------------------------------------

    def parse_line(self, path: str, where: str, line: str) -> None:
        i = 0
        while i < len(line) and not line[i].isspace() and line[i] != "=":
            i += 1
        key, rest = line[:i], line[i:].lstrip()
        if key in ("!include", "!include_try"):
            self.include(path, where, rest, key == "!include")
            return
        if key.startswith("!"):
            raise self.fail(where, f"unknown directive {key}")
        if rest.startswith("="):
            if not key:
                raise self.fail(where, "missing setting name before '='")
            self.set_value(path, where, key, rest[1:].lstrip())
            return
        if key == "}" and not rest:
            if not self.stack:
                raise self.fail(where, "unexpected '}' (no section is open)")
            self.close_section(self.stack.pop())
            return
        if key == "{":
            raise self.fail(where, "section type missing before '{'")
        if key.endswith("{"):
            raise self.fail(where, f"missing space before '{{' in {line!r}")
        # section_type [name] {
        arg = ""
        if rest.startswith('"'):
            end = rest.find('"', 1)
            if end < 0:
                raise self.fail(where, "unterminated quoted section name")
            arg, rest = _unescape(rest[1:end]), rest[end + 1 :].lstrip()
        elif rest and not rest.startswith("{"):
            parts = rest.split(None, 1)
            if parts[0].endswith("{") and len(parts) == 1 and len(parts[0]) > 1:
                parts = [parts[0][:-1], "{"]
            arg, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            # "protocol imap pop3 {": a section argument may be several words
            while rest and not rest.startswith("{") and self._multiword(key):
                more = rest.split(None, 1)
                arg, rest = f"{arg} {more[0]}", (more[1] if len(more) > 1 else "")
        if not rest.startswith("{"):
            if key in S.KNOWN_SETTINGS or key in S.SERVICE_SETTINGS or not rest:
                raise self.fail(where, f"missing '=' after setting {key!r}")
            raise self.fail(
                where, f"syntax error in {line!r}: expecting 'key = value' or 'section {{'"
            )
        if rest != "{":
            raise self.fail(where, f"garbage after '{{': {rest[1:].strip()!r}")
        self.open_section(where, key, arg)

    @staticmethod
    def _multiword(kind: str) -> bool:
        return kind in ("protocol", "local", "remote")

    # -- values --------------------------------------------------------------

    def expand_ref(self, where: str, key: str, value: str) -> str:
        """Dovecot 2.3's ``$name`` words in an unquoted value: ``$key`` (the
        setting being set, in a global or filter scope) is its value so far,
        or Dovecot's default when not yet set; ``$`` + another setting name
        stays as written, as does ``$ENV:…``; any other ``$name`` is an error."""
        scoped = not self.stack or self.stack[-1].kind in _FILTERS
        words = value.split(" ")
        for i, word in enumerate(words):
            if not word.startswith("$") or word.startswith("$ENV:"):
                continue
            name = word[1:]
            if scoped and name == key:
                words[i] = self.value_so_far(key)
            elif name not in S.KNOWN_SETTINGS:
                raise self.fail(where, f"Unknown variable: ${name} (in value of {key})")
        return " ".join(words)

    def value_so_far(self, key: str) -> str:
        """What ``key`` is at this point: innermost open filter first."""
        for section in reversed(self.stack):
            if key in section.data:
                return section.data[key]
            if section.kind == "protocol" and len([s for s in self.stack
                                                   if s.kind in _FILTERS]) == 1:
                for name in section.arg.split():
                    earlier = self.cfg.protocol_settings.get(name, {})
                    if key in earlier:
                        return earlier[key]
        if key in self.cfg.explicit:
            return self.cfg.settings[key]
        return S.default_of(key)

    def set_value(self, path: str, where: str, key: str, raw: str) -> None:
        self.pending.pop(self.scope(key), None)
        section = self.stack[-1] if self.stack else None
        kind = section.kind if section else ""
        is_file = raw.startswith("<")
        if is_file:
            target = raw[1:].strip()
            if not target:
                raise self.fail(where, f"{key}: '<' needs a file name")
            value = "<" + os.path.normpath(os.path.join(os.path.dirname(path), target))
            if kind not in ("", *_FILTERS) or key not in FILE_REFS:
                # Read now, so a missing file or a bad value is FILE:LINE;
                # readers of anything but certificates get the content.
                value = self.read_file_value(where, key, value[1:])
                is_file = False
        elif len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            value = _unescape(raw[1:-1])
        elif "$" in raw:
            value = self.expand_ref(where, key, raw)
        else:
            value = raw
        if kind in _FREE_FORM:
            if kind == "plugin":
                self.check_plugin_key(where, key, value)
            section.data[key] = value  # type: ignore[union-attr]
            return
        if kind in ("", *_FILTERS):
            self.set_global(where, key, value, is_file, section)
            return
        allowed: dict[str, str] | frozenset[str]
        allowed = {
            "service": S.SERVICE_SETTINGS,
            "inet_listener": S.INET_LISTENER_SETTINGS,
            "unix_listener": S.UNIX_LISTENER_SETTINGS,
            "fifo_listener": S.UNIX_LISTENER_SETTINGS,
            "passdb": S.PASSDB_SETTINGS,
            "userdb": S.USERDB_SETTINGS,
            "namespace": S.NAMESPACE_SETTINGS,
            "mailbox": S.MAILBOX_SETTINGS,
        }[kind]
        if key not in allowed:
            raise self.fail(where, f"unknown setting {key!r} inside {kind} {{ }}")
        if isinstance(allowed, dict):
            self.check(where, key, allowed[key], value)
        self.classify_section_key(where, section, key, value)  # type: ignore[arg-type]
        section.data[key] = value  # type: ignore[union-attr]

    def read_file_value(self, where: str, key: str, path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read(MAX_FILE_VALUE + 1)
        except OSError as e:
            raise self.fail(where, f"{key}: can't read {path}: {e.strerror}") from None
        if len(text) > MAX_FILE_VALUE:
            raise self.fail(where, f"{key}: {path} is larger than {MAX_FILE_VALUE} bytes")
        return text.rstrip("\r\n")

    def check(self, where: str, key: str, kind: str, value: str) -> None:
        try:
            S.check_value(key, kind, value)
        except ValueError as e:
            raise self.fail(where, f"{key}: {e}") from None

    # -- classification ------------------------------------------------------

    def served_scope(self, section: _Section | None) -> bool:
        """Whether settings here can apply to a protocol pydovecot serves."""
        for s in self.stack:
            if s.kind == "protocol":
                names = s.arg.split()
                if all(not n.startswith("!") and n not in S.IMPLEMENTED_PROTOCOLS
                       for n in names):
                    return False
        return True

    def set_global(
        self, where: str, key: str, value: str, is_file: bool, section: _Section | None
    ) -> None:
        if key not in S.KNOWN_SETTINGS:
            if key in S.SERVICE_SETTINGS or key in S.INET_LISTENER_SETTINGS:
                raise self.fail(where, f"unknown setting {key!r} (valid only inside service {{ }})")
            raise self.fail(where, f"unknown setting {key!r}")
        if not is_file:
            self.check(where, key, S.type_of(key), value)
        if self.served_scope(section):
            self.classify_global(where, key, value, section)
        else:
            proto = next(s for s in self.stack if s.kind == "protocol")
            self.warn(proto.where, f"settings inside protocol {proto.arg} {{ }} are not used: "
                                   "pydovecot does not serve it", once=f"unserved {proto.where}")
        if section is None:
            self.cfg.settings[key] = value
            self.cfg.origins[key] = where
            if key not in self.cfg.explicit:
                self.cfg.explicit.append(key)
        else:
            section.data[key] = value

    def classify_global(self, where: str, key: str, value: str, section: _Section | None) -> None:
        """Refuse or warn for a setting pydovecot doesn't honour."""
        outer = [s for s in self.stack if s.kind in ("local", "remote", "local_name")]
        if (len(outer) == 1 and outer[0].kind == "local_name" and self.stack[-1] is outer[0]
                and key in S.LOCAL_NAME_SETTINGS):
            return  # kept in cfg.filters: pydovecot.tls serves it by SNI
        if outer and key not in S.WARNED:
            s = outer[-1]
            self.refuse(where, f"{key} inside {s.kind} {s.arg} {{ }}: pydovecot does not apply "
                               "local/remote/local_name filters yet")
            return
        kind = S.classify(key)
        if kind == "implemented":
            if key == "mail_plugins":
                self.check_mail_plugins(where, value)
            elif key in ("mail_location", "mail_attribute_dict"):
                check = S.check_location if key == "mail_location" else S.check_attribute_dict
                why = check(value)
                if why:
                    self.refuse_value(where, key, why)
            elif key == "syslog_facility" and value not in S.SYSLOG_FACILITIES:
                self.refuse_value(where, key, f"syslog_facility = {value}: unknown facility")
            return
        if value.strip() == S.default_of(key).strip():
            return
        if kind == "refused":
            self.refuse_value(where, key, f"{key} = {value}: refused: {S.REFUSED[key]}")
        else:
            why = S.WARNED[key]
            self.warn(where, f"setting '{key}' is not supported by pydovecot; ignored"
                             + (f" ({why})" if why else ""), once=f"setting {key}")

    def check_mail_plugins(self, where: str, value: str) -> None:
        for name in S.split_list(value):
            if name in S.MAIL_PLUGINS_IMPLEMENTED:
                continue
            if name in S.MAIL_PLUGINS_REFUSED:
                self.refuse_value(where, "mail_plugins",
                                  f"mail_plugins: {name}: refused: {S.MAIL_PLUGINS_REFUSED[name]}")
            elif name in S.MAIL_PLUGINS_WARNED:
                self.warn(where, f"mail_plugins: plugin '{name}' is not supported by pydovecot; "
                                 f"ignored ({S.MAIL_PLUGINS_WARNED[name]})", once=f"plugin {name}")
            else:
                self.refuse_value(where, "mail_plugins", f"mail_plugins: unknown plugin '{name}'")

    def check_plugin_key(self, where: str, key: str, value: str) -> None:
        owner = S.plugin_key_owner(key)
        if owner == "quota":
            why = S.check_quota_key(key, value)
            if why:
                self.refuse_value(where, key, why)
            return
        if owner == "sieve":
            verdict = S.check_sieve_key(key, value)
            if verdict is not None:
                kind, why = verdict
                if kind == "refused":
                    self.refuse_value(where, key, f"{key} = {value}: refused: {why}")
                else:
                    self.warn(where, f"plugin setting '{key}' is not supported by pydovecot; "
                                     f"ignored ({why})", once=f"plugin {key}")
            return
        if owner in S.MAIL_PLUGINS_IMPLEMENTED or owner == "":
            return
        if owner is None:
            self.warn(where, f"plugin setting '{key}' belongs to no plugin pydovecot or "
                             "Dovecot knows; ignored", once=f"plugin key {key}")
        else:
            self.warn(where, f"plugin setting '{key}' is for the {owner} plugin, which "
                             "pydovecot does not load; ignored", once=f"plugin key {key}")

    def classify_section_key(self, where: str, section: _Section, key: str, value: str) -> None:
        kind = section.kind
        tables: tuple[dict[str, str], dict[str, str], dict[str, str]]
        defaults: dict[str, str] = {}
        if kind == "service":
            if section.arg == "quota-warning":
                if key == "executable" and value.split()[:1] != ["script"]:
                    self.refuse_value(where, key, "service quota-warning: only "
                                      "'executable = script PATH …' is supported")
                elif key == "user":
                    self.warn(where, "service quota-warning: user ignored: the script runs "
                                     "in the user's mail process, as the mail user",
                              once="quota-warning user")
                return  # run by the user's mail process, as the user
            if section.arg not in S.IMPLEMENTED_SERVICES:
                self.warn(section.where, f"service '{section.arg}' is not supported by "
                                         "pydovecot yet; ignored", once=f"service {section.arg}")
                return
            tables = (S.SERVICE_REFUSED, S.SERVICE_WARNED, {})
            if section.arg == "health-check" and key == "executable":
                if not (value.split()[-1:] == ["health-check.sh"]
                        or value.endswith("/health-check.sh")):
                    self.warn(where, "service health-check: only Dovecot's health-check.sh "
                                     "(PING -> PONG) is served; executable ignored")
                return
            builtin = S.SERVICE_DEFAULTS.get(section.arg, {}).get("settings", {})
            defaults = {k: v for k, v in builtin.items() if isinstance(v, str)}
            honoured = S.SERVICE_KEY_HONOURED.get(key)
            if (honoured is not None and section.arg not in honoured
                    and value != defaults.get(key, "")):
                why = ("pop3 sessions run in the imap service's mail processes: set it in "
                       "service imap" if section.arg == "pop3" else "not applied to this service")
                self.warn(where, f"{key} inside service {section.arg} {{ }} is not supported by "
                                 f"pydovecot; ignored ({why})", once=f"{section.arg} {key}")
                return
            if key == "service_count" and value != defaults.get(key, "0"):
                if section.arg in S.SERVICE_COUNT_WARNED:
                    self.warn(where, f"service_count inside service {section.arg} {{ }} is not "
                                     "supported by pydovecot; ignored (one mail process serves "
                                     "many sessions of its uid)", once=f"service_count {section.arg}")
                elif section.arg not in S.SERVICE_COUNT_SERVICES:
                    self.refuse_value(where, key, f"service_count = {value} inside service "
                                      f"{section.arg} {{ }}: refused: only login services "
                                      "honour it")
                return
        elif kind.endswith("_listener"):
            parent = self.stack[-2]
            if parent.arg == "quota-warning":
                return  # no socket: the mail process runs the script itself
            if parent.arg not in S.IMPLEMENTED_SERVICES:
                self.warn(parent.where, f"service '{parent.arg}' is not supported by "
                                        "pydovecot yet; ignored", once=f"service {parent.arg}")
                return
            tables = (S.LISTENER_REFUSED, S.LISTENER_WARNED, {})
            defaults = {"haproxy": "no", "reuse_port": "no"}
            if (key == "haproxy" and parent.arg not in S.HAPROXY_SERVICES
                    and value != "no"):
                self.refuse_value(where, key, f"haproxy = {value} inside service {parent.arg}: "
                                  "refused: only login services read the PROXY protocol")
                return
        elif kind == "namespace":
            tables = (S.NAMESPACE_REFUSED, S.NAMESPACE_WARNED, {})
            if key == "type" and value != "private":
                self.refuse_value(where, key, f"namespace type {value}: only private namespaces are "
                                   "supported yet")
            elif key == "prefix" and value:
                self.refuse_value(where, key, "namespace prefix: only an empty prefix is supported yet")
            elif key == "location" and value:
                self.refuse_value(where, key, "namespace location: a namespace's own location is not "
                                   "supported yet (use mail_location)")
            elif key == "separator" and value not in ("", "/", "."):
                self.refuse_value(where, key, f"namespace separator {value!r} is not supported")
            defaults = {"hidden": "no", "list": "yes", "subscriptions": "yes",
                        "ignore_on_failure": "no", "order": "0"}
        elif kind == "mailbox":
            tables = (S.MAILBOX_REFUSED, S.MAILBOX_WARNED, {})
            defaults = {"autoexpunge": "0", "autoexpunge_max_mails": "0"}
        elif kind in ("passdb", "userdb"):
            tables = (S.DB_REFUSED, {}, {})
        else:
            return
        refused, warned, _ = tables
        if value == defaults.get(key, ""):
            return
        if key in refused:
            self.refuse_value(where, key,
                              f"{key} = {value} inside {kind} {{ }}: refused: {refused[key]}")
        elif key in warned:
            self.warn(where, f"{key} inside {kind} {{ }} is not supported by pydovecot; "
                             f"ignored ({warned[key]})", once=f"{kind} {key}")

    # -- sections ------------------------------------------------------------

    def open_section(self, where: str, kind: str, arg: str) -> None:
        parent = self.stack[-1] if self.stack else None
        pkind = parent.kind if parent else ""
        if kind not in _SECTIONS_IN.get(pkind, frozenset()):
            inside = f" inside {pkind} {{ }}" if pkind else ""
            raise self.fail(where, f"unknown section '{kind}'{inside}")
        if kind in _NEED_NAME and not arg:
            raise self.fail(where, f"section '{kind}' needs a name: {kind} NAME {{")
        section = _Section(kind, arg, where, {})
        if kind.endswith("_listener") and not arg:
            # Dovecot's unnamed listener: a listener of its own, named by
            # its place among the service's unnamed ones.
            others = self.raw_services[parent.arg][kind + "s"]  # type: ignore[union-attr]
            arg = f"#{sum(name.startswith('#') for name in others) + 1}"
            section.arg = arg
        if kind == "service":
            if arg not in S.IMPLEMENTED_SERVICES and arg not in S.KNOWN_SERVICES:
                raise self.fail(where, f"unknown service '{arg}'")
            raw = self.raw_services.setdefault(
                arg,
                {"settings": {}, "inet_listeners": {}, "unix_listeners": {}, "fifo_listeners": {}},
            )
            section.data = raw["settings"]
        elif kind.endswith("_listener"):
            raw = self.raw_services[parent.arg]  # type: ignore[union-attr]
            section.data = raw[kind + "s"].setdefault(arg, {})
            if parent.arg == "stats" and kind != "inet_listener":  # type: ignore[union-attr]
                self.warn(where, f"{kind} {arg} in service stats is not served by pydovecot "
                                 "(only inet_listener http, for /metrics); ignored",
                          once=f"stats {kind} {arg}")
        if kind in ("local", "remote"):
            self.check_network(where, kind, arg)
        if kind in _FILTERS and (kind != "protocol" or any(s.kind in _FILTERS
                                                            for s in self.stack)):
            # Blocks with the same filter share one entry (as Dovecot's
            # filter parsers), kept in the order they first appear.
            match = {s.kind: s.arg for s in self.stack if s.kind in _FILTERS}
            match[kind] = arg
            entry = next((f for f in self.cfg.filters if f["match"] == match), None)
            if entry is None:
                entry = {"match": match, "settings": {}, "plugin": {}, "origin": where}
                self.cfg.filters.append(entry)
            section.data, section.plugin = entry["settings"], entry["plugin"]
        elif kind == "namespace":
            name = arg
            if not name:
                name = f"#{self.ns_counter}"
                self.ns_counter += 1
            section.data = self.cfg.namespaces.setdefault(name, {"name": name})
            self.ns_where.setdefault(name, where)
        elif kind == "mailbox":
            boxes = parent.data.setdefault("mailboxes", {})  # type: ignore[union-attr]
            if not arg:
                unnamed = sum(name.startswith("#") for name in boxes) + 1
                section.data = boxes.setdefault(f"#{unnamed}", {"name": ""})
            else:
                section.data = boxes.setdefault(arg, {"name": arg})
        elif kind == "plugin":
            section.data = parent.plugin if parent is not None else self.cfg.plugin
        elif kind == "dict":
            section.data = self.cfg.dict
        elif kind == "metric":
            if arg in self.cfg.metrics:
                raise self.fail(where, f"metric {arg} {{ }} is defined twice")
            section.data = self.cfg.metrics.setdefault(arg, {})
            self.metric_where[arg] = where
        elif kind == "event_exporter":
            self.warn(where, f"{kind} {arg} {{ }} is not supported by pydovecot yet; ignored")
        elif kind in ("passdb", "userdb") and arg:
            section.data["name"] = arg
        self.stack.append(section)

    def check_network(self, where: str, kind: str, arg: str) -> None:
        """``local``/``remote`` take IPs, CIDR networks or host names."""
        import ipaddress

        for item in arg.split():
            try:
                ipaddress.ip_network(item.strip("[]"), strict=False)
            except ValueError:
                if not all(c.isalnum() or c in ".-_*" for c in item):
                    raise self.fail(where, f"{kind} {item}: not an IP, network or host name") from None

    def close_section(self, section: _Section) -> None:
        kind = section.kind
        if kind in ("passdb", "userdb"):
            if not section.data.get("driver"):
                raise self.fail(section.where, f"{kind} {{ }} has no driver")
            section.data.setdefault("args", "")
            (self.cfg.passdbs if kind == "passdb" else self.cfg.userdbs).append(section.data)
        elif kind in _FILTERS:
            outer = [s for s in self.stack if s.kind in _FILTERS]
            if kind == "protocol" and not outer:
                for name in section.arg.split():
                    if section.data:
                        self.cfg.protocol_settings.setdefault(name, {}).update(section.data)
                    if section.plugin:
                        self.cfg.protocol_plugin.setdefault(name, {}).update(section.plugin)

    # -- after the last line -------------------------------------------------

    def finish(self) -> Config:
        if self.stack:
            s = self.stack[-1]
            name = f"{s.kind} {s.arg}".strip()
            raise self.fail(s.where, f"section '{name} {{' is never closed (missing '}}')")
        cfg = self.cfg
        for proto in S.split_list(cfg.settings["protocols"]):
            if proto in S.IMPLEMENTED_PROTOCOLS:
                continue
            where = cfg.origins.get("protocols", cfg.path)
            if proto not in S.KNOWN_PROTOCOLS:
                raise self.fail(where, f"protocols: unknown protocol '{proto}'")
            if proto != "none":
                self.warn(where, f"protocol '{proto}' is not supported by pydovecot yet; ignored")
        cfg.filters = [f for f in cfg.filters if f["settings"] or f["plugin"]]
        for where, message in self.pending.values():
            self.refuse(where, message)
        active = [name for name, ns in cfg.namespaces.items()
                  if not S.parse_bool(ns.get("disabled", "no") or "no")]
        if len(active) > 1:
            where = self.ns_where.get(active[1], cfg.path)
            self.refuse(where, f"namespace {active[1].lstrip('#')}: only one namespace (the "
                               "private INBOX one) is supported yet")
        if any(k.startswith("quota") for k in cfg.plugin):
            why = S.check_quota_plugin(cfg.plugin)
            if why:
                self.refuse(cfg.path, f"plugin {{ }}: {why}")
            location = cfg.settings.get("mail_location", "")
            if location.startswith("mbox:") and "quota" in S.split_list(
                    cfg.settings.get("mail_plugins", "")):
                self.refuse(cfg.origins.get("mail_location", cfg.path),
                            "mail_location = mbox: with the quota plugin: pydovecot counts "
                            "quota on Maildir only yet (usage would not be enforced)")
        for name in S.IMPLEMENTED_SERVICES:
            cfg.services[name] = self.build_service(name)
        self.check_metrics()
        return cfg

    def check_metrics(self) -> None:
        """Each ``metric { }`` block's filter and group_by must parse."""
        from pydovecot.stats.metrics import FilterError, parse_metric

        for name, values in self.cfg.metrics.items():
            try:
                parse_metric(name, values)
            except FilterError as e:
                self.refuse(self.metric_where.get(name, self.cfg.path), str(e))

    def resolve(self, value: str, scope: dict[str, str]) -> str:
        """Resolve a built-in default's leading $name against the final settings."""
        if not value.startswith("$"):
            return value
        name, sep, rest = value[1:].partition(" ")
        base = scope.get(name)
        if base is None:
            base = self.cfg.get(name)
        return base + sep + rest

    def build_service(self, name: str) -> ServiceConfig:
        cfg = self.cfg
        defaults: dict[str, Any] = S.SERVICE_DEFAULTS.get(name, {})
        raw = self.raw_services.get(name, {})
        settings = {k: self.resolve(v, {}) for k, v in defaults.get("settings", {}).items()}
        settings.update({k: self.resolve(v, {}) for k, v in raw.get("settings", {}).items()})
        svc = ServiceConfig(
            name,
            settings,
            default_process_limit=cfg.get_int("default_process_limit"),
            default_client_limit=cfg.get_int("default_client_limit"),
            default_vsz_limit=cfg.get_size("default_vsz_limit"),
        )
        protocol = settings.get("protocol") or None
        base_dir = cfg.path_setting("base_dir")
        for kind in ("inet_listeners", "unix_listeners", "fifo_listeners"):
            merged: dict[str, dict[str, str]] = {
                k: {kk: self.resolve(vv, {}) for kk, vv in v.items()}
                for k, v in defaults.get(kind, {}).items()
            }
            for lname, values in raw.get(kind, {}).items():
                merged.setdefault(lname, {}).update(
                    {k: self.resolve(v, {}) for k, v in values.items()})
            for lname, values in merged.items():
                if kind == "inet_listeners":
                    address = values.get("address", "")
                    addresses = (
                        S.split_list(address) if address else cfg.get_list("listen", protocol)
                    )
                    svc.inet_listeners[lname] = InetListener(
                        lname,
                        addresses,
                        S.parse_port(values.get("port", "0")),
                        S.parse_bool(values.get("ssl", "no")),
                        S.parse_bool(values.get("haproxy", "no")),
                        S.parse_bool(values.get("reuse_port", "no")),
                    )
                else:
                    path = os.path.join(base_dir, values.get("path") or lname)
                    listener = UnixListener(
                        lname,
                        os.path.normpath(path),
                        S.parse_octal(values.get("mode", "0600")),
                        values.get("user", ""),
                        values.get("group", ""),
                    )
                    getattr(svc, kind)[lname] = listener
        return svc


#: The master hands its children the config it runs as a snapshot file
#: with this suffix (``Config.to_dict`` as JSON), not the config file: after
#: a SIGHUP whose new file was refused, a child started later must still get
#: the config the master kept, as Dovecot's config process serves it.
SNAPSHOT_SUFFIX = ".snapshot.json"


def write_snapshot(cfg: Config, path: str) -> None:
    """Write ``cfg`` to ``path`` atomically, readable by root only."""
    import json

    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        json.dump(cfg.to_dict(), f)
    os.replace(tmp, path)


def parse_config(path: str, strict: bool = True) -> Config:
    """Parse the config file at path; raise ConfigError on any problem.

    ``strict=False`` (pydoveconf) still raises for syntax errors but only
    records in ``Config.refusals`` what a server start would refuse."""
    path = os.path.abspath(path)
    if path.endswith(SNAPSHOT_SUFFIX):
        import json

        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return Config.from_dict(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: can't load the master's config snapshot: {e}") from None
    parser = _Parser(path, strict)
    parser.parse_file(path)
    return parser.finish()
