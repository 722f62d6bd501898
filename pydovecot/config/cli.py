"""``pydoveconf``: print the configuration pydovecot would run, as doveconf does.

Modes: ``-n`` (settings that differ from pydovecot's defaults, in Dovecot's
``doveconf -n`` format), ``-a`` (every setting), ``-S`` (``key=value`` lines,
sections as ``service/imap-login/inet_listener/imap/port=143``), ``-h
SETTING`` (one value).  ``-c FILE`` names the config (default: the embedded
one, as ``twistd -n pydovecot``), ``-f local=… remote=… protocol=…
local_name=…`` shows the settings a connection matching that filter gets,
``-P`` shows secrets (hidden otherwise).  The output of ``-n -P`` fed back
as a config file loads to the same configuration.

Parses leniently: what a server start would refuse is printed to stderr as
``Fatal`` lines after the output (exit code 89), warnings as ``Warning``.
Trusts the config file it is given (read with the caller's rights).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

from pydovecot.config import DEFAULT_CONFIG_PATH
from pydovecot.config import settings as S
from pydovecot.config.parser import FILE_REFS, Config, ConfigError, parse_config

#: Settings whose value doveconf hides unless -P.
HIDDEN = frozenset({
    "ssl_key", "ssl_alt_key", "ssl_client_key", "ssl_key_password", "ssl_dh",
    "doveadm_password", "doveadm_api_key", "imapc_password", "pop3c_password",
    "submission_relay_password",
})  # fmt: skip
FATAL_EXIT = 89


def pydovecot_default(key: str) -> str:
    """The value pydovecot uses when the file doesn't set ``key``."""
    if key in S.IMPLEMENTED:
        return S.IMPLEMENTED[key][1]
    return S.DOVECOT_DEFAULTS.get(key, "")


def quote(value: str, key: str = "") -> str:
    """A value as a config line would write it, so that parsing gives it back."""
    if value == "":
        return ""
    if key in FILE_REFS and value.startswith("<"):
        return value
    needs = (value[0].isspace() or value[-1].isspace() or value[0] in "\"'<"
             or "#" in value or "{" in value or "}" in value
             or any(w.startswith("$") for w in value.split(" ")))
    if not needs:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _arg(name: str) -> str:
    """A section name as written (unnamed sections have none)."""
    if name.startswith("#"):
        return ""
    if " " in name or "#" in name or name[:1] in "\"'":
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


class Dumper:
    """Turns a Config into doveconf-style lines."""

    def __init__(self, cfg: Config, show_secrets: bool = False) -> None:
        self.cfg = cfg
        self.show_secrets = show_secrets

    def line(self, indent: int, key: str, value: str) -> str:
        pad = "  " * indent
        if key in HIDDEN and value and not self.show_secrets:
            return f"{pad}{key} = # hidden, use -P to show it"
        text = quote(value, key)
        return f"{pad}{key} = {text}" if text else f"{pad}{key} = "

    def block(self, indent: int, head: str, body: list[str]) -> list[str]:
        pad = "  " * indent
        return [f"{pad}{head} {{", *body, f"{pad}}}"]

    def keyvals(self, indent: int, values: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
        return [self.line(indent, k, v) for k, v in sorted(values.items())
                if isinstance(v, str) and k not in skip]

    # -- parts ---------------------------------------------------------------

    def globals(self, values: dict[str, str], all_settings: bool) -> dict[str, list[str]]:
        """key -> lines, for sorting among the sections."""
        out: dict[str, list[str]] = {}
        for key, value in values.items():
            if all_settings or value != pydovecot_default(key):
                out[key] = [self.line(0, key, value)]
        return out

    def namespaces(self) -> list[tuple[str, list[str]]]:
        parts = []
        for name, ns in self.cfg.namespaces.items():
            items = [[line] for line in self.keyvals(1, ns, skip=("name",))]
            for box, values in ns.get("mailboxes", {}).items():
                head = f"mailbox {_arg(box)}".rstrip()
                skip = ("name",) if not box.startswith("#") else ()
                items.append(self.block(1, head, self.keyvals(2, values, skip=skip)))
            items.sort(key=_item_key)  # as doveconf: keys and boxes sorted
            body = [line for item in items for line in item]
            parts.append(("namespace", self.block(0, f"namespace {_arg(name)}".rstrip(), body)))
        return parts

    def dbs(self) -> list[tuple[str, list[str]]]:
        parts = []
        for kind, dbs in (("passdb", self.cfg.passdbs), ("userdb", self.cfg.userdbs)):
            for db in dbs:
                values = {k: v for k, v in db.items() if v}  # doveconf: name inside
                parts.append((kind, self.block(0, kind, self.keyvals(1, values))))
        return parts

    def services(self, built: bool) -> list[tuple[str, list[str]]]:
        parts = []
        if built:
            source = {name: svc.to_dict() for name, svc in self.cfg.services.items()}
        else:
            source = self.cfg.raw_services
        for name, raw in sorted(source.items()):
            items = [[line] for line in self.keyvals(1, raw.get("settings", {}))]
            builtin = S.SERVICE_DEFAULTS.get(name, {})
            for kind in ("inet_listeners", "unix_listeners", "fifo_listeners"):
                for lname, values in raw.get(kind, {}).items():
                    if built:
                        values = _built_listener(kind, values)
                    elif not values and (lname in builtin.get(kind, {})
                                         or name not in S.IMPLEMENTED_SERVICES):
                        continue  # an empty section that changes nothing
                    head = f"{kind[:-1]} {_arg(lname)}".rstrip()
                    items.append(self.block(1, head, self.keyvals(2, values, skip=("name",))))
            items.sort(key=_item_key)
            body = [line for item in items for line in item]
            if body:
                parts.append(("service", self.block(0, f"service {name}", body)))
        return parts

    def free(self, name: str, values: dict[str, str], indent: int = 0) -> list[str]:
        return self.block(indent, name, self.keyvals(indent + 1, values)) if values else []

    def filters(self) -> list[str]:
        out: list[str] = []
        for proto, values in self.cfg.protocol_settings.items():
            body = self.keyvals(1, values)
            body += self.free("plugin", self.cfg.protocol_plugin.get(proto, {}), 1)
            if body:
                out += self.block(0, f"protocol {proto}", body)
        for flt in self.cfg.filters:
            chain = list(flt["match"].items())
            body = self.keyvals(len(chain), flt["settings"])
            body += self.free("plugin", flt["plugin"], len(chain))
            for depth in range(len(chain) - 1, -1, -1):
                kind, arg = chain[depth]
                body = self.block(depth, f"{kind} {arg}", body)
            out += body
        return out

    # -- whole dumps ---------------------------------------------------------

    def dump(self, all_settings: bool, values: dict[str, str] | None = None,
             with_filters: bool = True) -> list[str]:
        """``-n`` (all_settings False) or ``-a`` output, without the header."""
        cfg = self.cfg
        values = dict(cfg.settings if values is None else values)
        if all_settings:
            for key in S.KNOWN_SETTINGS:
                values.setdefault(key, cfg.get(key))
        parts: list[tuple[str, list[str]]] = list(self.globals(values, all_settings).items())
        parts += self.namespaces() + self.dbs() + self.services(built=all_settings)
        if cfg.plugin:
            parts.append(("plugin", self.free("plugin", cfg.plugin)))
        if cfg.dict:
            parts.append(("dict", self.free("dict", cfg.dict)))
        for name, block in cfg.metrics.items():  # one key: they keep the file's order
            parts.append(("metric", self.free(f"metric {name}", block)))
        parts.sort(key=lambda p: p[0])
        lines = [line for _key, part in parts for line in part]
        return lines + (self.filters() if with_filters else [])

    def simple(self, values: dict[str, str]) -> Iterator[str]:
        """``-S``: every setting as ``path=value``."""
        cfg = self.cfg
        for key in sorted(values):
            yield f"{key}={self._shown(key, values[key])}"
        for name, svc in sorted(cfg.services.items()):
            d = svc.to_dict()
            for key, value in sorted(d["settings"].items()):
                yield f"service/{name}/{key}={value}"
            for kind in ("inet_listeners", "unix_listeners", "fifo_listeners"):
                for lname, lvalues in d[kind].items():
                    for key, value in sorted(_built_listener(kind, lvalues).items()):
                        yield f"service/{name}/{kind[:-1]}/{lname}/{key}={value}"
        for name, ns in cfg.namespaces.items():
            for key, value in sorted(ns.items()):
                if isinstance(value, str):
                    yield f"namespace/{name}/{key}={value}"
            for box, bvalues in ns.get("mailboxes", {}).items():
                for key, value in sorted(bvalues.items()):
                    yield f"namespace/{name}/mailbox/{box}/{key}={value}"
        for kind, dbs in (("passdb", cfg.passdbs), ("userdb", cfg.userdbs)):
            for i, db in enumerate(dbs):
                for key, value in sorted(db.items()):
                    yield f"{kind}/{i}/{key}={value}"
        for key, value in sorted(cfg.plugin.items()):
            yield f"plugin/{key}={value}"
        for key, value in sorted(cfg.dict.items()):
            yield f"dict/{key}={value}"

    def _shown(self, key: str, value: str) -> str:
        if key in HIDDEN and value and not self.show_secrets:
            return "# hidden, use -P to show it"
        return value


def _item_key(item: list[str]) -> str:
    """Sort key of a line or a block, as doveconf orders a section's contents."""
    return item[0].strip().rstrip("{").strip().replace('"', "")


def _built_listener(kind: str, values: dict[str, Any]) -> dict[str, str]:
    """A built listener (InetListener/UnixListener as a dict) as setting strings."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if key == "name":
            continue
        if key == "addresses":
            out["address"] = ", ".join(value)
        elif isinstance(value, bool):
            out[key] = "yes" if value else "no"
        elif key == "mode":
            out[key] = f"{value:04o}"
        else:
            out[key] = str(value)
    return out


def effective(cfg: Config, match: dict[str, str]) -> dict[str, str]:
    """The global settings a connection matching ``match`` gets."""
    import fnmatch
    import ipaddress

    def ip_in(value: str, arg: str) -> bool:
        for item in arg.split():
            try:
                if ipaddress.ip_address(value) in ipaddress.ip_network(item.strip("[]"),
                                                                        strict=False):
                    return True
            except ValueError:
                if value == item:
                    return True
        return False

    def matches(kind: str, arg: str) -> bool:
        if kind not in match:
            return False
        value = match[kind]
        if kind == "protocol":
            names = arg.split()
            return any(n == value or (n.startswith("!") and n[1:] != value) for n in names)
        if kind == "local_name":
            return any(fnmatch.fnmatch(value, pat) for pat in arg.split())
        return ip_in(value, arg)

    values = dict(cfg.settings)
    protocol = match.get("protocol")
    if protocol:
        for name, overrides in cfg.protocol_settings.items():
            if name.startswith("!") and name[1:] != protocol:
                values.update(overrides)
        values.update(cfg.protocol_settings.get(protocol, {}))
    chosen = [f for f in cfg.filters if all(matches(k, a) for k, a in f["match"].items())]
    for flt in sorted(chosen, key=lambda f: len(f["match"])):
        values.update(flt["settings"])
    return values


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pydovecot")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pydoveconf", description=(__doc__ or "").split("\n")[0],
                                 add_help=False)
    ap.add_argument("-c", dest="config", default=None, help="config file")
    ap.add_argument("-n", action="store_true", help="non-default settings only")
    ap.add_argument("-a", action="store_true", help="all settings")
    ap.add_argument("-S", action="store_true", help="simple key=value output")
    ap.add_argument("-P", action="store_true", help="show passwords and keys")
    ap.add_argument("-h", dest="setting", default=None, help="print one setting's value")
    ap.add_argument("-f", dest="filters", action="append", default=[],
                    metavar="NAME=VALUE", help="local=IP, remote=IP, protocol=NAME, local_name=")
    ap.add_argument("--help", action="help", help="show this help")
    args = ap.parse_args(argv)
    match: dict[str, str] = {}
    for item in args.filters:
        for part in item.split():
            name, sep, value = part.partition("=")
            if not sep or name not in ("local", "remote", "protocol", "local_name", "lname"):
                print(f"pydoveconf: Fatal: -f {part}: expected local=, remote=, protocol= "
                      "or local_name=", file=sys.stderr)
                return 64
            match["local_name" if name == "lname" else name] = value
    path = args.config or DEFAULT_CONFIG_PATH
    try:
        cfg = parse_config(path, strict=False)
    except ConfigError as e:
        print(f"pydoveconf: Fatal: {e}", file=sys.stderr)
        return FATAL_EXIT
    dumper = Dumper(cfg, show_secrets=args.P)
    values = effective(cfg, match) if match else None
    out = sys.stdout
    if args.setting:
        key = args.setting
        try:
            value = (values or {}).get(key) if values and key in values else cfg.get(key)
        except KeyError:
            print(f"pydoveconf: Fatal: Unknown setting: {key}", file=sys.stderr)
            return FATAL_EXIT
        out.write(value + "\n")
    elif args.S:
        full = dict(values or cfg.settings)
        for key in S.KNOWN_SETTINGS:
            full.setdefault(key, cfg.get(key))
        for line in dumper.simple(full):
            out.write(line + "\n")
    else:
        out.write(f"# pydovecot {_version()}: {os.path.abspath(path)}\n")
        lines = dumper.dump(all_settings=args.a and not args.n, values=values,
                            with_filters=not match)
        for line in lines:
            out.write(line + "\n")
    out.flush()
    for warning in cfg.warnings:
        print(f"pydoveconf: Warning: {warning}", file=sys.stderr)
    for refusal in cfg.refusals:
        print(f"pydoveconf: Fatal: {refusal}", file=sys.stderr)
    return FATAL_EXIT if cfg.refusals else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
