"""The ManageSieve capability listing (RFC 5804 section 1.7), as Pigeonhole orders it.

Before login (the login process): IMPLEMENTATION, SIEVE, NOTIFY, SASL,
STARTTLS, VERSION.  After login (the session): IMPLEMENTATION, SIEVE,
MAXREDIRECTS, NOTIFY, VERSION.  ``managesieve_implementation_string``,
``managesieve_sieve_capability`` and ``managesieve_notify_capability``
override what the interpreter would report.  NOTIFY is left out while the
interpreter has no notify method (no enotify) unless configured.  Pure
data from the config and the extension list; trusts its callers.
"""

from __future__ import annotations

from pydovecot.managesieve.grammar import quote
from pydovecot.sieve.validate import ALL_EXTENSIONS, DEFAULT_EXTENSIONS, IMPLICIT

#: Pigeonhole's order of its extensions in the SIEVE capability.
PIGEONHOLE_ORDER = (
    "fileinto reject envelope encoded-character vacation vacation-seconds subaddress "
    "comparator-i;ascii-numeric relational regex imap4flags copy include variables body "
    "enotify environment mailbox date index ihave duplicate mime foreverypart extracttext "
    "editheader spamtest spamtestplus virustest ereject"
).split()
VERSION = "1.0"


def extensions_from(settings: dict) -> frozenset[str]:
    """``sieve_extensions`` (``+ext``/``-ext`` or a replacement list)."""
    words = (settings.get("sieve_extensions") or "").split()
    if not words:
        return DEFAULT_EXTENSIONS
    if all(w[0] in "+-" for w in words):
        out = set(DEFAULT_EXTENSIONS)
        for w in words:
            if w[1:] in ALL_EXTENSIONS:
                (out.add if w[0] == "+" else out.discard)(w[1:])
        return frozenset(out)
    return frozenset(w.lstrip("+") for w in words if w.lstrip("+") in ALL_EXTENSIONS)


def sieve_capability(extensions: frozenset[str]) -> str:
    """The SIEVE capability string: extensions in Pigeonhole's order."""
    shown = [e for e in extensions if e not in IMPLICIT]
    rank = {name: i for i, name in enumerate(PIGEONHOLE_ORDER)}
    shown.sort(key=lambda e: (rank.get(e, len(rank)), e))
    return " ".join(shown)


def plugin_settings(config, fields: dict | None = None) -> dict[str, str]:
    """``plugin {}``, then ``protocol sieve { plugin {} }``, then userdb
    ``sieve*`` fields (as Pigeonhole reads them for ManageSieve)."""
    out = dict(getattr(config, "plugin", None) or {})
    out.update((getattr(config, "protocol_plugin", None) or {}).get("sieve", {}))
    for key, value in (fields or {}).items():
        if isinstance(key, str) and key.startswith("sieve") and isinstance(value, str):
            out[key] = value
    return out


def setting(config, key: str) -> str:
    """A managesieve_* setting as ``protocol sieve`` sees it."""
    try:
        return config.get(key, protocol="sieve") or ""
    except (KeyError, TypeError):
        return ""


def capability_lines(config, extensions: frozenset[str], *, sasl: list[str] | None = None,
                     starttls: bool = False, max_redirects: int | None = None) -> bytes:
    """The listing (without the final OK); ``sasl`` None: after login."""
    impl = setting(config, "managesieve_implementation_string")
    sieve = setting(config, "managesieve_sieve_capability") or sieve_capability(extensions)
    notify = setting(config, "managesieve_notify_capability")
    lines = [b'"IMPLEMENTATION" ' + quote(impl), b'"SIEVE" ' + quote(sieve)]
    if sasl is None and max_redirects:
        lines.append(b'"MAXREDIRECTS" ' + quote(str(max_redirects)))
    if notify:
        lines.append(b'"NOTIFY" ' + quote(notify))
    if sasl is not None:
        lines.append(b'"SASL" ' + quote(" ".join(sasl)))
        if starttls:
            lines.append(b'"STARTTLS"')
    lines.append(b'"VERSION" ' + quote(VERSION))
    return b"".join(line + b"\r\n" for line in lines)
