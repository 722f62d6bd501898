"""The post-login CAPABILITY list and the limits it advertises.

Reads trusted configuration only (SessionContext.settings from the master).
Advertises exactly what the engine implements: each name is a command of
:mod:`pydovecot.imap.commands` or a feature of :mod:`pydovecot.imap.features`
(tests/test_imap_registry.py checks it); this module keeps their order and
the settings that change the list.
``imap_capability`` replaces the list, or extends it when it starts with ``+``
(as in Dovecot).
"""

from __future__ import annotations

import re
from typing import Any

BASE = (
    "IMAP4rev1", "LITERAL+", "IMAP4rev2", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT",
    "UIDPLUS", "CHILDREN", "MOVE",
    "CONDSTORE", "QRESYNC", "NOTIFY",  # features, commands/notify.py
    "URLAUTH", "URLAUTH=BINARY", "URL-PARTIAL",  # commands/urlauth.py
    "ESEARCH", "SEARCHRES", "WITHIN", "SORT", "SORT=DISPLAY", "ESORT",  # commands/search.py
    "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT", "CONTEXT=SEARCH", "CONTEXT=SORT",
    "UTF8=ACCEPT", "MULTIAPPEND", "CATENATE", "BINARY",  # features, commands/append.py, fetch.py
    "LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE", "CREATE-SPECIAL-USE",  # commands/list.py, mailbox.py
    "STATUS=SIZE", "SAVEDATE", "PREVIEW",  # commands/status.py, fetch.py
    "COMPRESS=DEFLATE",  # commands/compress.py
)
DEFAULT_APPEND_LIMIT = 64 * 1024 * 1024
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: Any, default: int) -> int:
    """``64M``, ``65536`` or an int → bytes; ``default`` if unset/invalid."""
    if value is None or value == "":
        return default
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([bkmg]?)b?\s*", str(value), re.I)
    if not m:
        return default
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_seconds(value: Any, default: float) -> float:
    """``120``, ``2 mins``, ``30s`` → seconds."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*(\d+)\s*(s|secs?|m|mins?|h|hours?)?\s*", str(value), re.I)
    if not m:
        return default
    unit = (m.group(2) or "s")[0].lower()
    return float(int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[unit])


def append_limit(settings: dict[str, Any]) -> int:
    return parse_size(settings.get("imap_append_limit", settings.get("quota_max_mail_size")),
                      DEFAULT_APPEND_LIMIT)


def capability_string(settings: dict[str, Any]) -> str:
    """The space-separated capability list for this session."""
    override = str(settings.get("imap_capability") or "").strip()
    caps = list(BASE) + [f"APPENDLIMIT={append_limit(settings)}"]
    if str(settings.get("imap_metadata") or "").strip().lower() in ("yes", "y", "true", "1"):
        caps.append("METADATA")  # commands/metadata.py (RFC 5464, server entries too)
    if "imap_quota" in str(settings.get("mail_plugins") or "").replace(",", " ").split():
        caps += ["QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"]  # commands/quota.py
    if str(settings.get("imap_literal_minus") or "").strip().lower() in ("yes", "y", "true", "1"):
        caps[caps.index("LITERAL+")] = "LITERAL-"  # RFC 7888; IMAP4rev2 implies it anyway
    if override.startswith("+"):
        caps += [c for c in override[1:].split() if c not in caps]
    elif override:
        caps = override.split()
    return " ".join(caps)
