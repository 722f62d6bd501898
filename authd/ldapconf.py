"""Parser for Dovecot 2.3's ``dovecot-ldap.conf.ext``.

The file is the one Dovecot reads, unchanged: ``key = value`` lines, ``#``
comments (outside quotes), values optionally in double or single quotes, a
trailing ``\\`` continues a line.  Every key Dovecot 2.3 knows is accepted;
an unknown key, a bad value, or a setting this implementation cannot honour
(``sasl_bind = yes``, ``ldap_version = 2``) is a :class:`LdapConfigError`
naming ``file:line``.

pydovecot extensions (Dovecot has no such keys; it takes these from
``ldap.conf``): ``timeout`` — seconds a lookup may take, including
connecting (default 10); ``threads`` — size of the driver's thread pool
(default 4).  Dovecot's ``blocking``, ``debug_level``, ``ldaprc_path`` and
``userdb_warning_disable`` are accepted and ignored (lookups always run in
threads).

The file is trusted (it comes from root's config); nothing here touches
user input.  Attribute maps (``pass_attrs``/``user_attrs``/``iterate_attrs``)
are parsed the way Dovecot 2.3 does: ``ldapAttr=field``, ``ldapAttr`` alone,
``ldapAttr=field=template`` (only when ldapAttr exists) and
``=field=template`` (always), templates using ``%{ldap:attr}``,
``%{ldap:attr:default}`` and ``%{ldap_multi:attr}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydovecot.config.parser import strip_comment

#: Dovecot 2.3's defaults (db-ldap.c).
DEFAULT_PASS_ATTRS = "uid=user,userPassword=password"
DEFAULT_USER_ATTRS = "homeDirectory=home,uidNumber=uid,gidNumber=gid"
DEFAULT_FILTER = "(&(objectClass=posixAccount)(uid=%u))"
DEFAULT_ITERATE_ATTRS = "uid=user"
DEFAULT_ITERATE_FILTER = "(objectClass=posixAccount)"

SCOPES = ("base", "onelevel", "subtree")
DEREFS = ("never", "searching", "finding", "always")
REQUIRE_CERT = ("never", "allow", "try", "demand", "hard")

_LDAP_VAR = re.compile(r"%\{(ldap|ldap_multi):([^}:]+)(?::([^}]*))?\}")

_STRINGS = {
    "hosts",
    "uris",
    "dn",
    "dnpass",
    "auth_bind_userdn",
    "sasl_mech",
    "sasl_realm",
    "sasl_authz_id",
    "tls_ca_cert_file",
    "tls_ca_cert_dir",
    "tls_cert_file",
    "tls_key_file",
    "tls_cipher_suite",
    "tls_require_cert",
    "deref",
    "scope",
    "base",
    "ldap_version",
    "debug_level",
    "ldaprc_path",
    "user_attrs",
    "user_filter",
    "pass_attrs",
    "pass_filter",
    "iterate_attrs",
    "iterate_filter",
    "default_pass_scheme",
    "timeout",
    "threads",
}
_BOOLS = {"auth_bind", "tls", "sasl_bind", "blocking", "userdb_warning_disable"}
KNOWN_KEYS = frozenset(_STRINGS | _BOOLS)


class LdapConfigError(ValueError):
    """A problem in the file; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class AttrMap:
    """One item of ``pass_attrs``/``user_attrs``.

    ``ldap_attr`` is empty for ``=field=template`` items; ``field`` is empty
    for ``ldapAttr=`` (fetched only for use in templates); ``template`` is
    None when the field takes the attribute's value as is."""

    ldap_attr: str
    field: str
    template: str | None = None

    def template_attrs(self) -> list[str]:
        """LDAP attributes a template refers to with ``%{ldap:…}``."""
        if self.template is None:
            return []
        return [m.group(2) for m in _LDAP_VAR.finditer(self.template)]


def parse_attrs(text: str) -> list[AttrMap]:
    """Parse a comma separated attribute map (Dovecot 2.3 syntax)."""
    result: list[AttrMap] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        attr, sep, rest = item.partition("=")
        attr = attr.strip()
        if not sep:
            result.append(AttrMap(attr, attr))
            continue
        name, sep, template = rest.partition("=")
        name = name.strip()
        if not attr and not name:
            raise ValueError(f"invalid attribute map item {item!r}")
        result.append(AttrMap(attr, name, template if sep else None))
    return result


def ldap_template_values(template: str, attrs: dict[str, list[str]]) -> dict[str, str]:
    """Values for the ``%{ldap:…}`` keys of one template, from an entry's
    attributes (lower-case names → values).  The keys are the exact text
    inside the braces, so the ordinary expander finds them."""
    values: dict[str, str] = {}
    for m in _LDAP_VAR.finditer(template):
        kind, name, default = m.group(1), m.group(2), m.group(3)
        found = attrs.get(name.lower()) or []
        if kind == "ldap_multi":
            value = ",".join(found)
        else:
            value = found[0] if found else ""
        if not found and default is not None:
            value = default
        key = m.group(0)[2:-1]
        values[key] = value
    return values


@dataclass
class LdapConfig:
    """The parsed file, with Dovecot's defaults filled in."""

    path: str = ""
    uris: list[str] = field(default_factory=list)
    dn: str = ""
    dnpass: str = field(default="", repr=False)
    auth_bind: bool = False
    auth_bind_userdn: str = ""
    base: str = ""
    scope: str = "subtree"
    deref: str = "never"
    ldap_version: int = 3
    pass_filter: str = DEFAULT_FILTER
    user_filter: str = DEFAULT_FILTER
    iterate_filter: str = DEFAULT_ITERATE_FILTER
    pass_attrs: list[AttrMap] = field(default_factory=lambda: parse_attrs(DEFAULT_PASS_ATTRS))
    user_attrs: list[AttrMap] = field(default_factory=lambda: parse_attrs(DEFAULT_USER_ATTRS))
    iterate_attrs: list[AttrMap] = field(default_factory=lambda: parse_attrs(DEFAULT_ITERATE_ATTRS))
    default_pass_scheme: str = "CRYPT"
    tls: bool = False
    tls_ca_cert_file: str = ""
    tls_ca_cert_dir: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_cipher_suite: str = ""
    tls_require_cert: str = "demand"
    timeout: float = 10.0
    threads: int = 4


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] == '"':
            inner = re.sub(r"\\(.)", r"\1", inner)
        return inner
    return value


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with comments cut and ``\\``-continuations joined."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending:
            start = number
            if line.startswith("#"):
                continue
        line = strip_comment(line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line = pending + line
        pending = ""
        if line.strip():
            out.append((start, line.strip()))
    if pending.strip():
        out.append((start, pending.strip()))
    return out


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "y", "true", "1"):
        return True
    if lowered in ("no", "n", "false", "0", ""):
        return False
    raise ValueError(f"invalid boolean {value!r} (use yes or no)")


def _hosts_to_uris(hosts: str) -> list[str]:
    """Legacy ``hosts = h1 h2:3890`` → ``ldap://`` URIs."""
    return [f"ldap://{host}" for host in hosts.split()]


def parse_text(text: str, path: str = "<string>") -> LdapConfig:
    """Parse the file's text; raises :class:`LdapConfigError`."""
    cfg = LdapConfig(path=path)
    raw: dict[str, tuple[int, str]] = {}
    for number, line in _logical_lines(text):
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise LdapConfigError(f"{path}:{number}: expected 'key = value', got {line!r}")
        if key not in KNOWN_KEYS:
            raise LdapConfigError(f"{path}:{number}: unknown setting '{key}'")
        raw[key] = (number, _unquote(value.strip()))

    def apply(key: str, number: int, value: str) -> None:
        if key in _BOOLS:
            flag = _bool(value)
            if key == "sasl_bind" and flag:
                raise ValueError("sasl_bind = yes is not supported")
            if key in ("auth_bind", "tls"):
                setattr(cfg, key, flag)
        elif key == "uris":
            cfg.uris = value.split()
            for uri in cfg.uris:
                if not re.match(r"^ldaps?://[^/]*/?$", uri, re.IGNORECASE):
                    raise ValueError(f"unsupported URI {uri!r} (use ldap:// or ldaps://)")
        elif key == "hosts":
            if "uris" not in raw:
                cfg.uris = _hosts_to_uris(value)
        elif key == "scope":
            if value.lower() not in SCOPES:
                raise ValueError(f"invalid scope {value!r} (use {', '.join(SCOPES)})")
            cfg.scope = value.lower()
        elif key == "deref":
            if value.lower() not in DEREFS:
                raise ValueError(f"invalid deref {value!r} (use {', '.join(DEREFS)})")
            cfg.deref = value.lower()
        elif key == "tls_require_cert":
            if value.lower() not in REQUIRE_CERT:
                raise ValueError(
                    f"invalid tls_require_cert {value!r} (use {', '.join(REQUIRE_CERT)})"
                )
            cfg.tls_require_cert = value.lower()
        elif key == "ldap_version":
            if value not in ("3",):
                raise ValueError(f"ldap_version {value!r} is not supported (only 3)")
            cfg.ldap_version = 3
        elif key in ("pass_attrs", "user_attrs", "iterate_attrs"):
            setattr(cfg, key, parse_attrs(value))
        elif key == "timeout":
            seconds = float(value)
            if not 0 < seconds <= 3600:
                raise ValueError(f"timeout {value!r} out of range")
            cfg.timeout = seconds
        elif key == "threads":
            count = int(value)
            if not 1 <= count <= 256:
                raise ValueError(f"threads {value!r} out of range (1-256)")
            cfg.threads = count
        elif key == "default_pass_scheme":
            cfg.default_pass_scheme = value.upper()
        elif key in ("debug_level", "ldaprc_path", "sasl_mech", "sasl_realm", "sasl_authz_id"):
            pass
        else:
            setattr(cfg, key, value)

    for key, (number, value) in raw.items():
        try:
            apply(key, number, value)
        except ValueError as e:
            raise LdapConfigError(f"{path}:{number}: {key}: {e}") from None
    if not cfg.uris:
        raise LdapConfigError(f"{path}: neither uris nor hosts is set")
    if not cfg.base and not (cfg.auth_bind and cfg.auth_bind_userdn):
        raise LdapConfigError(f"{path}: base is not set")
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        raise LdapConfigError(f"{path}: tls_cert_file and tls_key_file go together")
    return cfg


def load(path: str) -> LdapConfig:
    """Read and parse ``path``; LdapConfigError on any problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise LdapConfigError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise LdapConfigError(f"{path}: not UTF-8: {e}") from None
    return parse_text(text, path)
