"""The storage RPC's AMP commands, one per interface method.

:data:`STORAGE_METHODS` and :data:`MAILBOX_METHODS` are the tables: an
interface method name → its AMP arguments (explicit types, in the
interface's parameter order) and the type of its answer.  Commands are
built from the tables (``Status``, ``Create``, ``MailboxSync`` …), every
one declaring the storage errors of :mod:`pydovecot.storage.rpc.wire`.
A method added to the interface is mapped by adding one line to a table
(the client and server are generic over them); the methods whose values
are not plain (``open``, ``append``, ``copy``, ``message_file``) and the
session commands (hello, bodies, views, notifications) are written out
below.

Trusts nothing: AMP checks the types; the server checks the rights.
"""

from __future__ import annotations

from twisted.protocols import amp

from pydovecot.storage.rpc.wire import ERRORS, Value, install_errors

Args = list[tuple[bytes, amp.Argument]]

#: IMailStorage methods → (arguments, answer type); None: no answer value.
STORAGE_METHODS: dict[str, tuple[Args, amp.Argument | None]] = {
    "configure": ([(b"settings", Value())], None),
    "list_mailboxes": ([], Value()),
    "create": ([(b"name", amp.Unicode())], None),
    "delete": ([(b"name", amp.Unicode())], None),
    "rename": ([(b"old", amp.Unicode()), (b"new", amp.Unicode())], None),
    "subscriptions": ([], Value()),
    "subscribe": ([(b"name", amp.Unicode())], None),
    "unsubscribe": ([(b"name", amp.Unicode())], None),
    "status": ([(b"name", amp.Unicode())], Value()),
    "get_attribute": ([(b"mailbox", amp.Unicode()), (b"key", amp.Unicode())], Value()),
    "set_attribute": ([(b"mailbox", amp.Unicode()), (b"key", amp.Unicode()),
                       (b"value", Value(optional=True))], None),
    "set_attributes": ([(b"mailbox", amp.Unicode()), (b"changes", Value())], None),
    "attribute_keys": ([(b"mailbox", amp.Unicode()), (b"prefix", amp.Unicode())], Value()),
    "quota_roots": ([(b"mailbox", amp.Unicode())], Value()),
    "get_quota": ([(b"root", amp.Unicode()), (b"mailbox", amp.Unicode())], Value()),
    "check_quota": ([(b"mailbox", amp.Unicode()), (b"size", amp.Integer()),
                     (b"count", amp.Integer())], None),
    "recalc_quota": ([], Value()),
}

#: IMailbox methods → (arguments, answer type); every one also takes the
#: view's id and answers the view's new state.
MAILBOX_METHODS: dict[str, tuple[Args, amp.Argument | None]] = {
    "sync": ([(b"allow_expunge", amp.Boolean())], Value()),
    "vanished_since": ([(b"modseq", amp.Integer())], Value()),
    "store_unchanged_since": ([(b"uids", Value()), (b"flags", Value()), (b"mode", amp.Unicode()),
                               (b"unchangedsince", amp.Integer())], Value()),
    "store": ([(b"uids", Value()), (b"flags", Value()), (b"mode", amp.Unicode())], Value()),
    "expunge": ([(b"uids", Value(optional=True))], Value()),
    "search": ([(b"program", Value()), (b"uids", Value(optional=True))], Value()),
    "sort": ([(b"criteria", Value()), (b"program", Value())], Value()),
    "fetch_data": ([(b"uid", amp.Integer()), (b"items", Value())], Value()),
}

#: The methods written out by hand (not in the tables).
SPECIAL = frozenset({"open", "append", "copy", "move", "message_file"})


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def _command(name: str, arguments: Args, response: Args, doc: str) -> type[amp.Command]:
    cmd = type(name, (amp.Command,), {
        "__doc__": doc, "arguments": arguments, "response": response, "errors": dict(ERRORS),
        "__module__": __name__})
    return install_errors(cmd)


#: method name → Command, for the tables above.
STORAGE_COMMANDS: dict[str, type[amp.Command]] = {
    name: _command(_camel(name), args,
                   [(b"result", answer)] if answer is not None else [],
                   f"IMailStorage.{name}")
    for name, (args, answer) in STORAGE_METHODS.items()}

MAILBOX_COMMANDS: dict[str, type[amp.Command]] = {
    name: _command("Mailbox" + _camel(name), [(b"view", amp.Integer()), *args],
                   [(b"result", answer or Value(optional=True)), (b"state", Value())],
                   f"IMailbox.{name}")
    for name, (args, answer) in MAILBOX_METHODS.items()}


class Hello(amp.Command):
    """The first command of a connection: who asks, whose storage.  Over a
    channel the master brokered, the owner's process already knows both
    (from the master) and only checks they match; over TCP ``secret``
    proves the peer instance (``storage_rpc_secret``)."""

    arguments = [(b"requester", amp.Unicode()), (b"owner", amp.Unicode()),
                 (b"secret", amp.String(optional=True))]
    response = [(b"user", amp.Unicode())]
    errors = dict(ERRORS)


class Open(amp.Command):
    """IMailStorage.open: a view id and its first state."""

    arguments = [(b"name", amp.Unicode()), (b"readonly", amp.Boolean())]
    response = [(b"view", amp.Integer()), (b"state", Value())]
    errors = dict(ERRORS)


class CloseView(amp.Command):
    """IMailbox.close (the client does not wait for it)."""

    arguments = [(b"view", amp.Integer())]
    response: Args = []
    errors = dict(ERRORS)


class Upload(amp.Command):
    """One chunk (≤ 60,000 bytes) of a body sent to the server (TCP: no fd
    passing); ``upload`` is the client's id for it."""

    arguments = [(b"upload", amp.Integer()), (b"data", amp.String())]
    response: Args = []
    errors = dict(ERRORS)


class Append(amp.Command):
    """IMailStorage.append: the body is ``fd`` (read from ``offset``; UNIX
    sockets) or the chunks sent as ``upload``."""

    arguments = [(b"name", amp.Unicode()), (b"fd", amp.Descriptor(optional=True)),
                 (b"offset", amp.Integer(optional=True)), (b"upload", amp.Integer(optional=True)),
                 (b"flags", Value()), (b"internaldate", Value(optional=True))]
    response = [(b"result", Value())]
    errors = dict(ERRORS)


class Copy(amp.Command):
    """IMailStorage.copy from one of this connection's views."""

    arguments = [(b"view", amp.Integer()), (b"uids", Value()), (b"dest", amp.Unicode())]
    response = [(b"result", Value()), (b"state", Value())]
    errors = dict(ERRORS)


class Move(amp.Command):
    """IMailStorage.move (MOVE's copy half) from one of this connection's views."""

    arguments = [(b"view", amp.Integer()), (b"uids", Value()), (b"dest", amp.Unicode())]
    response = [(b"result", Value()), (b"state", Value())]
    errors = dict(ERRORS)


class MessageFile(amp.Command):
    """IMailbox.message_file: an fd (UNIX sockets) or a handle to read in
    chunks; the client releases ``handle`` once it has the body."""

    arguments = [(b"view", amp.Integer()), (b"uid", amp.Integer()),
                 (b"pass_fd", amp.Boolean())]
    response = [(b"handle", amp.Integer()), (b"size", amp.Integer()),
                (b"fd", amp.Descriptor(optional=True)), (b"state", Value())]
    errors = dict(ERRORS)


class ReadChunk(amp.Command):
    """Up to 60,000 bytes of an open handle at ``offset`` (empty at EOF)."""

    arguments = [(b"handle", amp.Integer()), (b"offset", amp.Integer()),
                 (b"length", amp.Integer())]
    response = [(b"data", amp.String())]
    errors = dict(ERRORS)


class Release(amp.Command):
    """The client is done with a handle (the server closes its file)."""

    arguments = [(b"handle", amp.Integer())]
    response: Args = []
    requiresAnswer = False


class Listen(amp.Command):
    """Start (``on``) or stop server-pushed :class:`Changed` for a mailbox."""

    arguments = [(b"name", amp.Unicode()), (b"on", amp.Boolean())]
    response: Args = []
    errors = dict(ERRORS)


class ListenTree(amp.Command):
    """Start (``on``) or stop server-pushed :class:`TreeChanged`."""

    arguments = [(b"on", amp.Boolean())]
    response: Args = []
    errors = dict(ERRORS)


class Changed(amp.Command):
    """Server → client: mailbox ``name`` changed (IDLE)."""

    arguments = [(b"name", amp.Unicode())]
    response: Args = []
    requiresAnswer = False


class TreeChanged(amp.Command):
    """Server → client: a create/delete/rename/subscribe event (NOTIFY)."""

    arguments = [(b"kind", amp.Unicode()), (b"name", amp.Unicode()),
                 (b"new_name", amp.Unicode(optional=True))]
    response: Args = []
    requiresAnswer = False


for _cmd in (Hello, Open, CloseView, Upload, Append, Copy, MessageFile, ReadChunk, Listen,
             ListenTree):
    install_errors(_cmd)

__all__ = ["STORAGE_METHODS", "MAILBOX_METHODS", "STORAGE_COMMANDS", "MAILBOX_COMMANDS",
           "SPECIAL", "Hello", "Open", "CloseView", "Upload", "Append", "Copy", "MessageFile",
           "ReadChunk", "Release", "Listen", "ListenTree", "Changed", "TreeChanged"]
