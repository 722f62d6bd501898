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
* ``CREATE name (USE (\\Sent))`` (RFC 6154 CREATE-SPECIAL-USE), kept as
  the mailbox attribute ``/private/specialuse`` by the storage (as Dovecot
  does).  The value is the user's (untrusted) data: attributes that are
  not special-use are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from pydovecot.storage.interfaces import IMailStorage, MailboxExists, StorageError

log = Logger(namespace="pydovecot.imap")

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


#: The mailbox attribute RFC 6154 attributes are kept in (as Dovecot's
#: ``/private/specialuse``): space-separated, e.g. ``\\Sent``.
ATTRIBUTE = "/private/specialuse"


class SpecialUse:
    """The special-use attributes of one user's mailboxes: configured ones
    and those CREATE (USE) stored as the mailbox attribute :data:`ATTRIBUTE`."""

    def __init__(self, configured: dict[str, ConfiguredMailbox], storage: IMailStorage):
        self.configured = configured
        self.storage = storage

    async def _stored(self, name: str) -> set[str]:
        try:
            raw = await self.storage.get_attribute(name, ATTRIBUTE)
        except (StorageError, OSError):
            return set()
        if not raw:
            return set()
        return {c for a in raw.decode("utf-8", "replace").split() if (c := canonical(a))}

    # -- queries and changes ------------------------------------------

    async def all(self) -> dict[str, set[str]]:
        """Every mailbox name with special-use attributes → its attributes."""
        out = {name: set(box.special_use) for name, box in self.configured.items() if box.special_use}
        try:
            infos = await self.storage.list_mailboxes()
        except (StorageError, OSError):
            return out
        for info in infos:
            if "\\Noselect" in info.attributes:
                continue
            found = await self._stored(info.name)
            if found:
                out.setdefault(info.name, set()).update(found)
        return out

    async def attributes(self, name: str, exists: bool = True) -> set[str]:
        """One mailbox's attributes: configured, and stored if it ``exists``
        (one storage lookup, so LIST can ask a mailbox per step)."""
        name = _canon_name(name)
        box = self.configured.get(name)
        out = set(box.special_use) if box is not None else set()
        if exists:
            out |= await self._stored(name)
        return out

    async def set(self, name: str, attrs: Iterable[str]) -> None:
        """Record (or, with no attributes, forget) a mailbox's attributes."""
        value = " ".join(sorted(set(attrs))).encode()
        await self.storage.set_attribute(_canon_name(name), ATTRIBUTE, value or None)

    async def autocreate(self, storage: IMailStorage) -> None:
        """Create (and subscribe) the ``auto = create/subscribe`` mailboxes."""
        wanted = [b for b in self.configured.values() if b.auto in ("create", "subscribe")]
        if not wanted:
            return
        try:
            existing = {i.name for i in await storage.list_mailboxes()
                        if "\\Noselect" not in i.attributes}
            subscribed = set(await storage.subscriptions())
        except (StorageError, OSError):
            log.failure("Listing mailboxes for autocreate failed")
            return
        for box in wanted:
            try:
                if box.name not in existing:
                    try:
                        await storage.create(box.name)
                    except MailboxExists:
                        pass
                if box.auto == "subscribe" and box.name not in subscribed:
                    await storage.subscribe(box.name)
            except (StorageError, OSError) as e:
                log.warn("Autocreating {name} failed: {err}", name=box.name, err=e)
