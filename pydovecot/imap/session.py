"""The mail process's entry point to the IMAP engine.

``IMAPSession(storage, ctx)`` is the client core
(:class:`pydovecot.imap.client.Client`); importing this module also loads
the command registry (:mod:`pydovecot.imap.commands`) and the feature
registry (:mod:`pydovecot.imap.features`).  See :mod:`pydovecot.imap` for
how the engine is built.  The flow-control limits are re-exported for the
tests and tools that name them here.
"""

from __future__ import annotations

from pydovecot.imap import commands, features  # noqa: F401  (register every command and feature)
from pydovecot.imap.client import (
    AUTOLOGOUT,
    CACHE_BYTES,
    FLUSH_SIZE,
    MAX_BAD_COMMANDS,
    OUTPUT_BOUND,
    OUTPUT_CHUNK,
    OUTPUT_TIMEOUT,
    QUEUE_LOW,
    QUEUE_MAX,
    SLICE,
    Client,
)
from pydovecot.imap.errors import CommandError
from pydovecot.imap.syntax import decode_mailbox, encode_mailbox

IMAPSession = Client

__all__ = [
    "AUTOLOGOUT", "CACHE_BYTES", "FLUSH_SIZE", "MAX_BAD_COMMANDS", "OUTPUT_BOUND", "OUTPUT_CHUNK",
    "OUTPUT_TIMEOUT", "QUEUE_LOW", "QUEUE_MAX", "SLICE", "CommandError", "IMAPSession",
    "decode_mailbox", "encode_mailbox",
]
