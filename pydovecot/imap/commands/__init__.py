"""The IMAP commands of the mail process, one module per command or family,
each registering its commands in :mod:`~pydovecot.imap.commands.registry`
(name, handler, flags), as Dovecot's imap-commands.c table.

Importing this package imports every command module eagerly: a mail
process imports everything before it drops privileges (see
:mod:`pydovecot.mailproc.rehearsal`), and the registry must be complete
before the first client connects.  ``python -m pydovecot.imap.commands``
prints the table.
"""

from __future__ import annotations

from pydovecot.imap.commands import (  # noqa: F401  (each registers its commands)
    append,
    base,
    compress,
    copy,
    enable,
    expunge,
    fetch,
    id,
    idle,
    list,
    mailbox,
    metadata,
    namespace,
    notify,
    quota,
    registry,
    search,
    select,
    status,
    store,
    urlauth,
)

MODULES = (append, base, compress, copy, enable, expunge, fetch, id, idle, list, mailbox,
           metadata, namespace, notify, quota, search, select, status, store, urlauth)


def load() -> list[registry.Command]:
    """The complete table (the modules registered on import)."""
    return registry.table()
