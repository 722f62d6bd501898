"""SPECIAL-USE mailbox attributes (RFC 6154) and mailbox autocreation.

Two sources, merged:

* the configuration, as Dovecot writes it and the master hands it to the
  mail process (trusted)::

      namespace inbox {
        mailbox Sent { special_use = \\Sent  auto = subscribe }
      }

  ``auto = create`` creates the mailbox when a session starts, ``auto =
  subscribe`` also subscribes it (Dovecot's autocreate).  Only namespaces
  with an empty prefix apply: pydovecot has the one personal namespace.
* ``CREATE name (USE (\\Sent))`` (RFC 6154 CREATE-SPECIAL-USE), kept per
  mailbox in the file :data:`FILENAME` in the root of the user's mail
  (Dovecot keeps these in its index).  One line per mailbox:
  ``<name in UTF-8> TAB <attributes separated by spaces>``, written
  atomically.  The file is the user's (untrusted) data: lines that do not
  parse and attributes that are not special-use are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from pydovecot.storage.interfaces import IMailStorage, MailboxExists, StorageError

log = Logger(namespace="pydovecot.imap")

FILENAME = "pydovecot-special-use"
#: RFC 6154 attributes plus \Important (RFC 8457), canonical spelling.
ATTRIBUTES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash",
              "\\Important")
_CANON = {a.lower(): a for a in ATTRIBUTES}


def canonical(attr: str) -> str | None:
    """``\\sent`` → ``\\Sent``; None if not a special-use attribute."""
    return _CANON.get(attr.lower())


def _canon_name(name: str) -> str:
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX/"):
        return "INBOX" + name[5:]
    return name


@dataclass
class ConfiguredMailbox:
    name: str
    special_use: set[str] = field(default_factory=set)
    auto: str = "no"  # no, create, subscribe


def from_namespaces(namespaces: dict[str, Any] | None) -> dict[str, ConfiguredMailbox]:
    """The ``mailbox`` sections of the personal namespace(s), by name."""
    out: dict[str, ConfiguredMailbox] = {}
    for ns in (namespaces or {}).values():
        if not isinstance(ns, dict):
            continue
        if (ns.get("prefix") or "") not in ("", "/") or ns.get("type", "private") != "private":
            continue
        for key, box in (ns.get("mailboxes") or {}).items():
            if not isinstance(box, dict):
                continue
            name = _canon_name(str(box.get("name") or key).strip('"'))
            if not name:
                continue
            attrs = {c for a in str(box.get("special_use", "")).split() if (c := canonical(a))}
            auto = str(box.get("auto", "no")).strip().lower()
            out[name] = ConfiguredMailbox(name, attrs, auto if auto in ("create", "subscribe") else "no")
    return out


class SpecialUse:
    """The special-use attributes of one user's mailboxes."""

    def __init__(self, configured: dict[str, ConfiguredMailbox], root: str | None):
        self.configured = configured
        self.path = os.path.join(root, FILENAME) if root else None
        self._memory: dict[str, set[str]] = {}  # when the storage has no root

    # -- the per-user file --------------------------------------------

    def _load(self) -> dict[str, set[str]]:
        if self.path is None:
            return {k: set(v) for k, v in self._memory.items()}
        out: dict[str, set[str]] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    name, sep, attrs = line.rstrip("\n").partition("\t")
                    if not sep or not name:
                        continue
                    found = {c for a in attrs.split() if (c := canonical(a))}
                    if found:
                        out[name] = found
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("Cannot read {path}: {err}", path=self.path, err=e)
        return out

    def _save(self, data: dict[str, set[str]]) -> None:
        if self.path is None:
            self._memory = {k: set(v) for k, v in data.items()}
            return
        body = "".join(
            f"{name}\t{' '.join(sorted(attrs))}\n" for name, attrs in sorted(data.items()) if attrs
        )
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StorageError(f"Cannot save special-use attributes: {e.strerror}") from e

    # -- queries and changes ------------------------------------------

    def all(self) -> dict[str, set[str]]:
        """Every mailbox name with special-use attributes → its attributes."""
        out = {name: set(box.special_use) for name, box in self.configured.items() if box.special_use}
        for name, attrs in self._load().items():
            out.setdefault(name, set()).update(attrs)
        return out

    def attributes(self, name: str) -> set[str]:
        return self.all().get(_canon_name(name), set())

    def set(self, name: str, attrs: Iterable[str]) -> None:
        """Record (or, with no attributes, forget) a mailbox's attributes."""
        data = self._load()
        name = _canon_name(name)
        attrs = set(attrs)
        if attrs:
            data[name] = attrs
        elif name in data:
            del data[name]
        else:
            return
        self._save(data)

    def autocreate(self, storage: IMailStorage) -> None:
        """Create (and subscribe) the ``auto = create/subscribe`` mailboxes."""
        wanted = [b for b in self.configured.values() if b.auto in ("create", "subscribe")]
        if not wanted:
            return
        try:
            existing = {i.name for i in storage.list_mailboxes() if "\\Noselect" not in i.attributes}
            subscribed = set(storage.subscriptions())
        except (StorageError, OSError):
            log.failure("Listing mailboxes for autocreate failed")
            return
        for box in wanted:
            try:
                if box.name not in existing:
                    try:
                        storage.create(box.name)
                    except MailboxExists:
                        pass
                if box.auto == "subscribe" and box.name not in subscribed:
                    storage.subscribe(box.name)
            except (StorageError, OSError) as e:
                log.warn("Autocreating {name} failed: {err}", name=box.name, err=e)
