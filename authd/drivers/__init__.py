"""Passdb and userdb drivers, by Dovecot driver name.

Drivers are built from trusted settings (root's config).  Each factory
takes the section's ``args`` string and returns an IPassdb / IUserdb.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from authd.interfaces import IPassdb, IUserdb
from authd.settings import DbSettings

PASSDB_DRIVERS: dict[str, Callable[[str], Any]] = {}
USERDB_DRIVERS: dict[str, Callable[[str], Any]] = {}


def register_passdb(name: str, factory: Callable[[str], Any]) -> None:
    PASSDB_DRIVERS[name] = factory


def register_userdb(name: str, factory: Callable[[str], Any]) -> None:
    USERDB_DRIVERS[name] = factory


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


#: Drivers whose module is imported only when a config names them, so
#: authd does not carry ldap3, SQLAlchemy, libpam or joserfc it won't use.
#: Each module registers its drivers when imported.
LAZY_DRIVERS = {
    "ldap": "authd.drivers.ldap",
    "sql": "authd.drivers.sql",
    "pam": "authd.drivers.pam",
    "passwd": "authd.drivers.pam",
    "oauth2": "authd.oauth",
}


def _load() -> None:
    """Register the built-in drivers (cheap; always present)."""
    from authd.drivers import passwd_file, static

    register_passdb("passwd-file", passwd_file.PasswdFileDb)
    register_userdb("passwd-file", passwd_file.PasswdFileDb)
    register_passdb("static", static.StaticPassdb)
    register_userdb("static", static.StaticUserdb)


def _ensure(name: str) -> None:
    if "passwd-file" not in PASSDB_DRIVERS:
        _load()
    module = LAZY_DRIVERS.get(name)
    if module is not None and name not in PASSDB_DRIVERS and name not in USERDB_DRIVERS:
        importlib.import_module(module)


def create_passdb(db: DbSettings) -> IPassdb:
    """Build the passdb for one ``passdb { }`` section."""
    _ensure(db.driver)
    try:
        factory = PASSDB_DRIVERS[db.driver]
    except KeyError:
        raise ValueError(f"Unknown passdb driver '{db.driver}'") from None
    return IPassdb(factory(db.args))


def create_userdb(db: DbSettings) -> IUserdb:
    """Build the userdb for one ``userdb { }`` section."""
    _ensure(db.driver)
    try:
        factory = USERDB_DRIVERS[db.driver]
    except KeyError:
        raise ValueError(f"Unknown userdb driver '{db.driver}'") from None
    return IUserdb(factory(db.args))
