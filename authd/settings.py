"""authd's settings, decoupled from the config file.

:class:`AuthSettings` holds every setting authd reads; :func:`from_config`
builds it from a ``pydovecot.config`` Config.  Tests build AuthSettings
directly.  Also: %-variable expansion and ``key=value`` field lists as the
auth databases use them.  Settings are trusted (they come from root's config).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydovecot.config import variables

#: Dovecot's one-letter variables and the long names they stand for.
SHORT_VARS = {
    "u": "user",
    "n": "username",
    "d": "domain",
    "s": "service",
    "h": "home",
    "l": "lip",
    "r": "rip",
    "a": "lport",
    "b": "rport",
    "m": "mech",
    "c": "secured",
    "p": "pid",
}

DEFAULT_USERNAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@"


def expand(template: str, values: dict[str, str]) -> str:
    """Expand %-variables (``values`` keyed by long names: ``user`` …).

    The config package's expander, with Dovecot's auth behaviour on top: a
    variable the request has no value for expands to nothing.
    """
    if "%" not in template:
        return template
    known = {k: str(v) for k, v in values.items() if v is not None}
    for name in SHORT_VARS.values():
        if name not in known and variables.derived(name, known) is None:
            known[name] = ""
    return variables.expand(template, known)


def parse_fields(text: str) -> dict[str, str]:
    """Parse ``key=value key2 key3=v`` (space separated); a bare key maps to ''."""
    fields: dict[str, str] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key:
            fields[key] = value
    return fields


def expand_fields(fields: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    """Expand %-variables in every value of a field dict."""
    return {k: expand(v, values) for k, v in fields.items()}


@dataclass
class DbSettings:
    """One ``passdb { }`` or ``userdb { }`` section."""

    driver: str
    args: str = ""
    default_fields: str = ""
    override_fields: str = ""
    options: dict[str, str] = field(default_factory=dict)  # any other keys


@dataclass
class ListenerSettings:
    """One unix_listener of the auth service (standalone runs)."""

    path: str
    mode: int = 0o600
    user: str = ""
    group: str = ""


def default_listeners() -> dict[str, ListenerSettings]:
    return {name: ListenerSettings(name) for name in ("auth-login", "auth-master", "auth-userdb")}


@dataclass
class AuthSettings:
    """Everything authd needs to know."""

    base_dir: str = "run"
    auth_mechanisms: list[str] = field(default_factory=lambda: ["plain"])
    disable_plaintext_auth: bool = True
    auth_username_format: str = "%Lu"
    auth_username_chars: str = DEFAULT_USERNAME_CHARS
    auth_username_translation: str = ""
    auth_default_realm: str = ""
    auth_failure_delay: float = 2.0
    auth_verbose: bool = False
    auth_verbose_passwords: str = "no"  # no | plain | sha1, optional ":N" truncation
    auth_debug: bool = False
    passdbs: list[DbSettings] = field(default_factory=list)
    userdbs: list[DbSettings] = field(default_factory=list)
    mail_uid: str = ""
    mail_gid: str = ""
    cookie_lifetime: float = 60.0
    # SASL mechanisms (authd.exchange, authd.mechanisms).
    auth_master_user_separator: str = ""  # e.g. "*": "alice*admin"
    auth_anonymous_username: str = "anonymous"
    # Auth cache (authd.cache) and penalty (authd.penalty).
    auth_cache_size: int = 0  # bytes; 0 = no cache
    auth_cache_ttl: float = 3600.0
    auth_cache_negative_ttl: float = 3600.0
    login_trusted_networks: list[str] = field(default_factory=list)
    listeners: dict[str, ListenerSettings] = field(default_factory=default_listeners)
    #: The auth service's ``user`` (default_internal_user): authd drops to
    #: it when started as root.  "" or "root": keep root.
    user: str = ""
    #: SASL exchanges one auth-login connection may have in flight (a login
    #: process has at most one per client: default_client_limit).
    login_max_exchanges: int = 1000

    def socket_path(self, name: str) -> str:
        """Where a listener's socket lives (relative paths are under base_dir)."""
        listener = self.listeners.get(name) or ListenerSettings(name)
        return os.path.join(self.base_dir, listener.path)


def _db(section: dict[str, Any]) -> DbSettings:
    known = {"driver", "args", "default_fields", "override_fields"}
    return DbSettings(
        driver=str(section.get("driver", "")),
        args=str(section.get("args", "") or ""),
        default_fields=str(section.get("default_fields", "") or ""),
        override_fields=str(section.get("override_fields", "") or ""),
        options={k: str(v) for k, v in section.items() if k not in known},
    )


def _listeners_from_config(cfg: Any) -> dict[str, ListenerSettings]:
    """The auth service's unix_listeners (``cfg.services['auth']``)."""
    listeners = default_listeners()
    services = getattr(cfg, "services", None) or {}
    auth = services.get("auth") if isinstance(services, dict) else None
    for name, item in (getattr(auth, "unix_listeners", None) or {}).items():
        listeners[name] = ListenerSettings(
            path=item.path, mode=item.mode, user=item.user or "", group=item.group or ""
        )
    return listeners


#: Drivers whose ``args`` end in a file path, and the options before it.
FILE_ARG_DRIVERS = {
    "passwd-file": {"scheme", "username_format"},
    "ldap": set(),
    "sql": set(),
    "oauth2": set(),
}


def split_args(args: str, known: set[str]) -> tuple[dict[str, str], str]:
    """Split leading ``key=value`` options (only ``known`` keys) from the rest,
    as passwd-file's ``args = scheme=X username_format=%n /path``."""
    options: dict[str, str] = {}
    words = args.split()
    while words:
        key, sep, value = words[0].partition("=")
        if not sep or key not in known:
            break
        options[key] = value
        words.pop(0)
    return options, " ".join(words)


def _absolute_file_args(db: DbSettings, config_dir: str) -> DbSettings:
    """Relative file paths in ``args`` (passwd-file, and the ldap, sql and
    oauth2 ``.conf.ext`` files) are relative to the config file's directory."""
    if db.driver not in FILE_ARG_DRIVERS or not config_dir or not db.args:
        return db
    options, path = split_args(db.args, FILE_ARG_DRIVERS[db.driver])
    if path and not os.path.isabs(path):
        path = os.path.join(config_dir, path)
        db.args = " ".join([*(f"{k}={v}" for k, v in options.items()), path])
    return db


def from_config(cfg: Any) -> AuthSettings:
    """Build AuthSettings from a ``pydovecot.config`` Config."""

    def get(key: str, default: str = "") -> str:
        try:
            value = cfg.get(key)
        except KeyError:
            return default
        return default if value in (None, "") else str(value)

    def typed(getter: str, key: str, default: Any) -> Any:
        if not get(key):
            return default
        return getattr(cfg, getter)(key)

    config_dir = os.path.dirname(os.path.abspath(cfg.path)) if getattr(cfg, "path", "") else ""
    return AuthSettings(
        base_dir=str(cfg.path_setting("base_dir")),
        auth_mechanisms=[m.lower() for m in typed("get_list", "auth_mechanisms", ["plain"])],
        disable_plaintext_auth=typed("get_bool", "disable_plaintext_auth", True),
        auth_username_format=get("auth_username_format", "%Lu"),
        auth_username_chars=get("auth_username_chars", DEFAULT_USERNAME_CHARS),
        auth_username_translation=get("auth_username_translation"),
        auth_default_realm=get("auth_default_realm"),
        auth_failure_delay=float(typed("get_time", "auth_failure_delay", 2.0)),
        auth_verbose=typed("get_bool", "auth_verbose", False),
        auth_verbose_passwords=get("auth_verbose_passwords", "no"),
        auth_debug=typed("get_bool", "auth_debug", False),
        passdbs=[_absolute_file_args(_db(s), config_dir) for s in cfg.passdbs],
        userdbs=[_absolute_file_args(_db(s), config_dir) for s in cfg.userdbs],
        mail_uid=get("mail_uid"),
        auth_master_user_separator=get("auth_master_user_separator"),
        auth_anonymous_username=get("auth_anonymous_username", "anonymous"),
        mail_gid=get("mail_gid"),
        auth_cache_size=int(typed("get_size", "auth_cache_size", 0)),
        auth_cache_ttl=float(typed("get_time", "auth_cache_ttl", 3600.0)),
        auth_cache_negative_ttl=float(typed("get_time", "auth_cache_negative_ttl", 3600.0)),
        login_trusted_networks=typed("get_list", "login_trusted_networks", []),
        listeners=_listeners_from_config(cfg),
        user=_service_user(cfg),
        login_max_exchanges=max(1, int(typed("get_int", "default_client_limit", 1000))),
    )


def _service_user(cfg: Any) -> str:
    """``service auth { user }``, default ``$default_internal_user``."""
    services = getattr(cfg, "services", None) or {}
    auth = services.get("auth") if isinstance(services, dict) else None
    user = (getattr(auth, "settings", None) or {}).get("user", "") if auth is not None else ""
    if not user or user.startswith("$"):
        try:
            user = str(cfg.get("default_internal_user") or "")
        except KeyError:
            user = ""
    return user
