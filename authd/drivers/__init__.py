"""Passdb and userdb drivers, by Dovecot driver name.

Drivers are built from trusted settings (root's config).  Each factory
takes the section's ``args`` string and returns an IPassdb / IUserdb.
:func:`check_config` tells, before anything is spawned, which configured
drivers can't work because a Python module (or libpam) is missing.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from authd.interfaces import IPassdb, IUserdb
from authd.settings import DbSettings, split_args  # noqa: F401  (re-exported)

PASSDB_DRIVERS: dict[str, Callable[[str], Any]] = {}
USERDB_DRIVERS: dict[str, Callable[[str], Any]] = {}


def register_passdb(name: str, factory: Callable[[str], Any]) -> None:
    PASSDB_DRIVERS[name] = factory


def register_userdb(name: str, factory: Callable[[str], Any]) -> None:
    USERDB_DRIVERS[name] = factory


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


#: Drivers whose blocking calls need root (pam_unix reads /etc/shadow; the
#: passwd userdb's NSS lookups may too): they run in authd's privileged
#: worker (authd.worker) when authd itself runs unprivileged.
ROOT_DRIVERS = frozenset({"pam", "passwd"})

#: authd's connection to its privileged worker (authd.worker.WorkerClient),
#: set when authd runs unprivileged; None: the drivers run in-process.
PRIVILEGED_WORKER: Any = None

#: The pip extra that brings every optional backend module.
PIP_EXTRA = "pip install 'pydovecot[backends]'"


class MissingModule(ValueError):
    """A configured driver needs a module that is not installed."""


def _importable(module: str, load: bool = True) -> str | None:
    """None if ``module`` imports (or, without ``load``, can be found),
    else why not."""
    try:
        if not load:
            return None if importlib.util.find_spec(module) is not None else "not found"
        importlib.import_module(module)
    except (ImportError, ValueError) as e:
        return str(e) or f"No module named '{module}'"
    return None


def _sql_modules(args: str) -> list[str]:
    """The modules a ``driver = sql`` section needs: SQLAlchemy and the
    DBAPI module of the conf file's ``driver`` (read without SQLAlchemy;
    a bad conf file is reported when the driver is built)."""
    driver = ""
    try:
        with open(args.strip(), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep and key.strip() == "driver":
                    driver = value.split("#", 1)[0].strip()
    except (OSError, ValueError):
        pass
    dbapi = {"pgsql": "psycopg", "mysql": "pymysql", "sqlite": "sqlite3"}.get(driver)
    return ["sqlalchemy", *([dbapi] if dbapi else [])]


def required_modules(db: DbSettings) -> list[str]:
    """Python modules a ``passdb``/``userdb`` section needs (besides ours)."""
    if db.driver == "sql":
        return _sql_modules(db.args)
    return {"ldap": ["ldap3"], "oauth2": ["joserfc"]}.get(db.driver, [])


def check_db(db: DbSettings, kind: str, import_modules: bool = True) -> str | None:
    """One line naming what the section's driver is missing, or None
    (``import_modules=False``: only look the modules up, load nothing)."""
    for module in dict.fromkeys(required_modules(db)):
        if _importable(module, import_modules) is not None:
            return (f"{kind} {db.driver}: Python module '{module}' is not installed "
                    f"({PIP_EXTRA})")
    if db.driver == "pam" and import_modules:  # libpam through ctypes, not python-pam
        try:
            ctypes.CDLL(ctypes.util.find_library("pam") or "libpam.so.0")
        except OSError:
            return f"{kind} pam: libpam is not installed (apt-get install libpam0g)"
    return None


def check_config(config: object, import_modules: bool = True) -> list[str]:
    """Missing-module errors for every passdb/userdb of ``config`` (an
    AuthSettings or a ``pydovecot.config`` Config), one line each; empty
    when everything is there.  The master calls it before spawning authd;
    authd calls it again, importing the modules, and exits with
    ``os.EX_CONFIG``; the master passes ``import_modules=False`` so that it
    loads none of them itself."""
    errors = []
    for kind in ("passdb", "userdb"):
        for section in getattr(config, kind + "s", None) or []:
            db = section if isinstance(section, DbSettings) else DbSettings(
                driver=str(section.get("driver", "")), args=str(section.get("args", "") or ""))
            error = check_db(db, kind, import_modules)
            if error is not None and error not in errors:
                errors.append(error)
    return errors


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
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingModule(f"driver {name}: Python module '{e.name or e}' is not "
                                f"installed ({PIP_EXTRA})") from None


def create_passdb(db: DbSettings) -> IPassdb:
    """Build the passdb for one ``passdb { }`` section (MissingModule, a
    ValueError, if the driver's module is not installed)."""
    error = check_db(db, "passdb")
    if error is not None:
        raise MissingModule(error)
    _ensure(db.driver)
    try:
        factory = PASSDB_DRIVERS[db.driver]
    except KeyError:
        raise ValueError(f"Unknown passdb driver '{db.driver}'") from None
    return IPassdb(factory(db.args))


def create_userdb(db: DbSettings) -> IUserdb:
    """Build the userdb for one ``userdb { }`` section."""
    error = check_db(db, "userdb")
    if error is not None:
        raise MissingModule(error)
    _ensure(db.driver)
    try:
        factory = USERDB_DRIVERS[db.driver]
    except KeyError:
        raise ValueError(f"Unknown userdb driver '{db.driver}'") from None
    return IUserdb(factory(db.args))
