"""Dovecot 2.3 %-variable expansion: ``%u``, ``%Ln``, ``%{domain}``, ``%2.1u``, ``%{md5:user}``.

Syntax after ``%``: ``[-][0][offset.]width`` then modifiers (L lower, U upper,
R reverse, M md5 hex, H 32-bit hash, N md5-based hash, X decimal->hex, E escape,
D domain->LDAP dn, T trim right) then a one-letter variable or ``%{long_name}``.
Templates come from the trusted config file; values may come from users (user
names, addresses) and are never re-expanded.  Unknown variables raise ValueError.
:func:`expand_path` is the form for templates that name a path (mail_home,
mail_location): a substituted value can never add a directory level or climb
one (``/``, ``..``, NUL and control characters are refused).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Mapping

#: One-letter variables and the long names they stand for.
SHORT_NAMES: dict[str, str] = {
    "u": "user",
    "n": "username",
    "d": "domain",
    "h": "home",
    "s": "service",
    "l": "lip",
    "r": "rip",
    "p": "pid",
    "i": "uid",
    "a": "lport",
    "b": "rport",
    "m": "mech",
    "c": "secured",
    "k": "ssl_security",
    "e": "mail_pid",
}

_LONG_TO_SHORT = {v: k for k, v in SHORT_NAMES.items()}

_HASHES = {"md4", "md5", "sha1", "sha224", "sha256", "sha384", "sha512"}


def _elf_hash(text: str) -> int:
    """Dovecot's str_hash (the classic PJW/ELF string hash), 32 bits."""
    h = 0
    for byte in text.encode("utf-8"):
        h = ((h << 4) + byte) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
            h ^= g
    return h


class _Ctx:
    """Offset/width state of one %-expansion; hash modifiers consume it."""

    def __init__(self, offset: int, width: int, zero_pad: bool) -> None:
        self.offset = offset
        self.width = width
        self.zero_pad = zero_pad


def _hash_hex(value: int, ctx: _Ctx) -> str:
    if ctx.width:
        value %= ctx.width
        ctx.width = 0
    out = format(value & 0xFFFFFFFF, "x").rjust(max(ctx.offset, 0), "0")
    ctx.offset = 0
    return out


def _m_hash(s: str, ctx: _Ctx) -> str:
    return _hash_hex(_elf_hash(s), ctx)


def _m_newhash(s: str, ctx: _Ctx) -> str:
    value = int.from_bytes(hashlib.md5(s.encode("utf-8")).digest()[:8], "big")
    return _hash_hex(value, ctx)


def _m_hex(s: str, ctx: _Ctx) -> str:
    return format(int(s), "x") if s.strip().isdigit() else "0"


def _m_escape(s: str, ctx: _Ctx) -> str:
    return "".join("\\" + c if c in "\"'\\" else c for c in s)


def _m_trim(s: str, ctx: _Ctx) -> str:
    return s.rstrip()


MODIFIERS: dict[str, Callable[[str, _Ctx], str]] = {
    "L": lambda s, ctx: s.lower(),
    "U": lambda s, ctx: s.upper(),
    "E": _m_escape,
    "X": _m_hex,
    "R": lambda s, ctx: s[::-1],
    "H": _m_hash,
    "N": _m_newhash,
    "M": lambda s, ctx: hashlib.md5(s.encode("utf-8")).hexdigest(),
    "D": lambda s, ctx: s.replace(".", ",dc="),
    "T": _m_trim,
}


def derived(name: str, values: Mapping[str, str]) -> str | None:
    """Values Dovecot derives when the caller did not give them."""
    user = values.get("user", values.get("u"))
    if name == "username" and user is not None:
        return user.split("@", 1)[0]
    if name == "domain" and user is not None:
        return user.split("@", 1)[1] if "@" in user else ""
    if name == "pid":
        return str(os.getpid())
    if name == "uid":
        return str(os.geteuid())
    if name == "gid":
        return str(os.getegid())
    if name == "hostname":
        return socket.gethostname()
    return None


def _lookup(name: str, values: Mapping[str, str]) -> str | None:
    """Value of a variable by letter or long name; None if it has none."""
    if name in values:
        return values[name]
    long = SHORT_NAMES.get(name, name) if len(name) == 1 else name
    if long in values:
        return values[long]
    short = _LONG_TO_SHORT.get(long)
    if short is not None and short in values:
        return values[short]
    return derived(long, values)


def _long_var(key: str, values: Mapping[str, str], template: str) -> str:
    """Value of ``%{key}``: a variable, ``env:NAME`` or ``<hash>:variable``."""
    value = _lookup(key, values)
    if value is not None:
        return value
    func, sep, arg = key.partition(":")
    if sep:
        if func == "env":
            return os.environ.get(arg, "")
        hname, _, _opts = func.partition(";")
        if hname in _HASHES:
            inner = _long_var(arg, values, template)
            return hashlib.new(hname, inner.encode("utf-8")).hexdigest()
    raise ValueError(f"unknown variable %{{{key}}} in {template!r}")


class UnsafePathValue(ValueError):
    """A value substituted into a path template would change the path's
    shape (``/``, ``..``, NUL or a control character in it)."""


def check_path_value(name: str, value: str) -> str:
    """``value`` unchanged if it is safe as part of one path component."""
    if "/" in value or ".." in value or value == "." or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise UnsafePathValue(f"%{{{name}}} value is not allowed in a path")
    return value


def expand_path(template: str, values: Mapping[str, str],
                trusted: tuple[str, ...] = ("home", "h")) -> str:
    """:func:`expand` for a path template: every substituted value except
    the ``trusted`` ones (the home, already checked) is refused with
    :class:`UnsafePathValue` when it holds ``/``, ``..``, NUL or control
    characters, so ``%n``, ``%d`` and ``%u`` stay inside their component."""
    return expand(template, values, check=lambda name, value: (
        value if name in trusted else check_path_value(name, value)))


def fixed_prefix(template: str) -> str:
    """The directory a path template always lies under: the template up to
    its first variable, cut back to the last ``/`` (``/var/vmail/%d/%n`` →
    ``/var/vmail``; ``/srv/u%n`` → ``/srv``)."""
    head = template.split("%", 1)[0]
    if "%" not in template:
        return os.path.normpath(template) if head else ""
    head = head.rsplit("/", 1)[0] if "/" in head else ""
    return os.path.normpath(head) if head else ""


def expand(template: str, values: Mapping[str, str],
           check: Callable[[str, str], str] | None = None) -> str:
    """Expand Dovecot %-variables in template using values.

    values maps long names (``user``, ``home``, ``service``, ``lip``, ``rip``,
    ``session``, …) or single letters (``i`` for imap_logout_format's input
    bytes) to strings; ``%n``/``%d`` are derived from ``user`` when not given,
    and ``%p``/``%{uid}``/``%{gid}``/``%{hostname}`` from the process.
    Raises ValueError naming the variable when it is unknown or has no value.
    ``check(name, value)`` sees every substituted variable value (before
    modifiers) and may refuse it by raising.
    """
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c != "%":
            j = template.find("%", i)
            j = n if j < 0 else j
            out.append(template[i:j])
            i = j
            continue
        start = i
        i += 1
        sign = 1
        offset = width = 0
        zero_pad = False
        if i < n and template[i] == "-":
            sign, i = -1, i + 1
        if i < n and template[i] == "0":
            zero_pad, i = True, i + 1
        while i < n and template[i].isdigit():
            width, i = width * 10 + int(template[i]), i + 1
        if i < n and template[i] == ".":
            offset, width, sign, zero_pad = sign * width, 0, 1, False
            i += 1
            if i < n and template[i] == "0":
                zero_pad, i = True, i + 1
            if i < n and template[i] == "-":
                sign, i = -1, i + 1
            while i < n and template[i].isdigit():
                width, i = width * 10 + int(template[i]), i + 1
        width *= sign
        mods: list[Callable[[str, _Ctx], str]] = []
        while i < n and template[i] in MODIFIERS and len(mods) < 10:
            mods.append(MODIFIERS[template[i]])
            i += 1
        if i >= n:
            raise ValueError(f"incomplete variable {template[start:]!r} at end of {template!r}")
        key = template[i]
        if key == "{":
            depth, j = 1, i + 1
            while j < n and depth:
                depth += {"{": 1, "}": -1}.get(template[j], 0)
                j += 1
            if depth:
                raise ValueError(f"missing '}}' in {template!r}")
            name = template[i + 1 : j - 1]
            value = _long_var(name, values, template)
            if check is not None and not name.startswith("env:"):
                value = check(name, value)
            i = j
        elif key == "%":
            value = "%"
            i += 1
        else:
            found = _lookup(key, values)
            if found is None:
                if key in SHORT_NAMES:
                    raise ValueError(
                        f"variable %{key} ({SHORT_NAMES[key]}) has no value in {template!r}"
                    )
                raise ValueError(f"unknown variable %{key} in {template!r}")
            value = found if check is None else check(SHORT_NAMES.get(key, key), found)
            i += 1
        out.append(_apply(value, mods, _Ctx(offset, width, zero_pad)))
    return "".join(out)


def _apply(value: str, mods: list[Callable[[str, _Ctx], str]], ctx: _Ctx) -> str:
    """Run the modifiers, then apply offset/width the way Dovecot does."""
    for mod in mods:
        value = mod(value, ctx)
    if ctx.offset < 0:
        if len(value) > -ctx.offset:
            value = value[len(value) + ctx.offset :]
    elif ctx.offset > 0:
        value = value[ctx.offset :]
    if ctx.width == 0:
        return value
    if ctx.zero_pad:
        return value.rjust(ctx.width, "0")
    if ctx.width < 0:
        return value[: max(len(value) + ctx.width, 0)]
    return value[: ctx.width]


def username_format(fmt: str, user: str) -> str:
    """Apply an auth_username_format such as ``%Lu`` or ``%Ln`` to a login name."""
    return expand(fmt, {"user": user})
