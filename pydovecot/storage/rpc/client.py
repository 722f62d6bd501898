"""The client side of the storage RPC: IMailStorage and IMailbox over AMP.

:class:`RPCStorage` and :class:`RPCMailbox` implement the interfaces by
sending the commands of :mod:`pydovecot.storage.rpc.commands`; their
methods are built from the interfaces' method lists and the command
tables (a method the tables do not map is missing, and verifyObject says
so).  A view's attributes (``messages``, ``recent``, ``keywords``,
``highestmodseq`` …) are the session's local copy, refreshed from the
state every view answer carries (the server sends what changed), so they
move only when a call of that view answers — inside ``sync``, ``store``,
``expunge`` as the interface says.  Bodies: over a UNIX socket a message
file arrives as a file descriptor and an appended message leaves as one
(a memfd when the caller's file has none); over TCP both go in chunks of
at most 60,000 bytes, spooled to an anonymous temporary file, never held
whole in memory.  Listeners are local; the server pushes ``Changed`` and
``TreeChanged`` once this side listens.

Trusts the server's answers as far as their types (AMP checks them);
a failure the server did not declare becomes a StorageError, a lost
connection ``UNAVAILABLE``.
"""

from __future__ import annotations

import inspect
import io
import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IUNIXTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.interface import Method

from pydovecot.storage.interfaces import IMailbox, IMailStorage, MessageInfo, StorageError
from pydovecot.storage.rpc import commands as C
from pydovecot.storage.rpc.wire import CHUNK, StorageUnavailable

log = Logger()

#: Interface members that stay synchronous (the local bookkeeping).
SYNCHRONOUS = frozenset({"close", "add_listener", "remove_listener", "add_tree_listener",
                         "remove_tree_listener"})


def _storage_error(f: Failure) -> Failure:
    if f.check(StorageError):
        return f
    if f.check(error.ConnectionDone, error.ConnectionLost, amp.ProtocolSwitched):
        return Failure(StorageUnavailable("The storage connection was lost"))
    log.failure("storage-rpc: unexpected answer", f)
    return Failure(StorageError("Internal error"))


def _plain(value: Any) -> Any:
    """An iterable argument (generator, range, dict view) as a list."""
    if value is None or isinstance(value, str | bytes | list | tuple | dict | set | frozenset
                                   | int | float | bool):
        return value
    if hasattr(value, "__iter__"):
        return list(value)
    return value


class ClientProtocol(amp.AMP):
    """The client's end of the connection: receives the pushes."""

    storage: RPCStorage | None = None

    def __init__(self) -> None:
        super().__init__()
        self.lost: defer.Deferred[None] = defer.Deferred()

    @C.Changed.responder
    def changed(self, name: str) -> dict:
        if self.storage is not None:
            self.storage._changed(name)
        return {}

    @C.TreeChanged.responder
    def tree_changed(self, kind: str, name: str, new_name: str | None = None) -> dict:
        if self.storage is not None:
            self.storage._tree_changed(kind, name, new_name)
        return {}

    def connectionLost(self, reason: Any) -> None:
        if self.storage is not None:
            self.storage.connected = False
        super().connectionLost(reason)
        self.lost.callback(None)


class _Base:
    proto: ClientProtocol | None
    owner_storage: RPCStorage

    def _call(self, command: type[amp.Command], **kwargs: Any) -> defer.Deferred:
        storage = self.owner_storage
        if storage.proto is None:
            return storage._ready().addCallback(lambda _: self._call(command, **kwargs))
        if not storage.connected:
            return defer.fail(StorageUnavailable("The storage connection was lost"))
        try:
            d = storage.proto.callRemote(command, **kwargs)
        except Exception:
            return defer.fail(_storage_error(Failure()))
        return d.addErrback(_storage_error)

    @property
    def unix(self) -> bool:
        """File descriptors can pass: a UNIX socket straight to the server
        (not a relay to another host)."""
        storage = self.owner_storage
        return (storage.pass_fds and storage.proto is not None
                and IUNIXTransport.providedBy(storage.proto.transport))


def _signature(desc: Method) -> inspect.Signature:
    info = desc.getSignatureInfo()
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name in info["positional"]:
        default = info["optional"].get(name, inspect.Parameter.empty)
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=default))
    return inspect.Signature(params)


def _method(name: str, desc: Method, command: type[amp.Command], view: bool) -> Callable:
    sig = _signature(desc)
    wire = [(a, amp._wireNameToPythonIdentifier(a)) for a, _ in command.arguments]
    if view:
        wire = wire[1:]
    answers = any(a == b"result" for a, _ in command.response)

    def method(self: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = {key: _plain(bound.arguments[key]) for _a, key in wire}
        if view:
            values["view"] = self.view_id
        d = self._call(command, **values)
        if view:
            d.addCallback(lambda r: (self._apply(r["state"]), r.get("result"))[1])
        else:
            d.addCallback(lambda r: r.get("result") if answers else None)
        return d

    method.__name__ = name
    method.__doc__ = desc.getDoc()
    method.__signature__ = sig  # type: ignore[attr-defined]
    return method


class RPCMailbox(_Base):
    """A view of a mailbox in the storage process (see the module doc)."""

    def __init__(self, storage: RPCStorage, view_id: int, state: dict):
        self.storage = self.owner_storage = storage
        self.proto = storage.proto
        self.view_id = view_id
        self.messages: list[MessageInfo] = []
        self.closed = False
        self._apply(state)

    def _apply(self, state: dict) -> None:
        if state.get("same"):
            return  # a method that does not change the view
        self.name = state["name"]
        self.readonly = state["readonly"]
        self.uidvalidity = state["uidvalidity"]
        self.uidnext = state["uidnext"]
        self.recent = set(state["recent"])
        self.keywords = list(state["keywords"])
        self.highestmodseq = state["highestmodseq"]
        self.seen_modseq = state["seen_modseq"]
        self.deleted = state["deleted"]
        gone, upd = set(state["gone"]), state["upd"]
        if not gone and not upd:
            return
        mine = {m.uid: m for m in self.messages if m.uid not in gone}
        for uid, flags, size, internaldate, modseq, savedate in upd:
            local = mine.get(uid)
            if local is None:
                mine[uid] = MessageInfo(uid, set(flags), size, internaldate, modseq, savedate)
            else:  # in place: callers may hold the MessageInfo
                local.flags, local.size, local.modseq = set(flags), size, modseq
                local.internaldate, local.savedate = internaldate, savedate
        self.messages = [mine[uid] for uid in sorted(mine)]

    def message_file(self, uid: int) -> defer.Deferred:
        return self._message_file(uid)

    @defer.inlineCallbacks
    def _message_file(self, uid: int):
        r = yield self._call(C.MessageFile, view=self.view_id, uid=uid, pass_fd=self.unix)
        self._apply(r["state"])
        fd, handle, size = r.get("fd"), r["handle"], r["size"]
        if fd is not None:
            self.proto.callRemote(C.Release, handle=handle)
            f = os.fdopen(fd, "rb")
            f.seek(0)
            return f
        spool = tempfile.TemporaryFile(dir=self.storage.spool_dir)
        try:
            offset = 0
            while offset < size:
                chunk = yield self._call(C.ReadChunk, handle=handle, offset=offset, length=CHUNK)
                data = chunk["data"]
                if not data:
                    break
                spool.write(data)
                offset += len(data)
        except BaseException:
            spool.close()
            raise
        finally:
            if self.storage.connected:
                self.proto.callRemote(C.Release, handle=handle)
        spool.seek(0)
        return spool

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.storage.connected:
            self.storage._background(self._call(C.CloseView, view=self.view_id))


class RPCStorage(_Base):
    """IMailStorage of ``user`` served by another process or host."""

    def __init__(self, proto: ClientProtocol | None, user: str, spool_dir: str | None = None):
        self.owner_storage = self
        self.proto: ClientProtocol | None = None
        self.connected = False
        if proto is not None:
            self.attach(proto)
        self.user = user
        self.spool_dir = spool_dir
        #: False when the UNIX socket leads to a relay (storage-rpc
        #: service), not to the server itself: bodies go in chunks then.
        self.pass_fds = True
        self._connect: Callable[[], defer.Deferred] | None = None
        self._connecting: defer.Deferred | None = None
        self._waiting: list[defer.Deferred] = []
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._tree: list[Callable[[str, str, str | None], None]] = []
        self._uploads = 0
        self._pending: set[defer.Deferred] = set()

    def attach(self, proto: ClientProtocol) -> None:
        """Use ``proto`` (connected) from now on."""
        self.proto = proto
        proto.storage = self
        self.connected = True

    def connect_with(self, connect: Callable[[], defer.Deferred]) -> None:
        """Connect lazily: ``connect()`` runs at the first call (and calls
        :meth:`attach`); calls made meanwhile wait for it."""
        self._connect = connect

    def _ready(self) -> defer.Deferred:
        if self.proto is not None and self._connecting is None:
            return defer.succeed(None)
        if self._connect is None:
            return defer.fail(StorageUnavailable("The storage is not connected"))
        waiter: defer.Deferred = defer.Deferred()
        self._waiting.append(waiter)
        if self._connecting is None:
            self._connecting = defer.maybeDeferred(self._connect)
            self._connecting.addBoth(self._connected)
        return waiter

    def _connected(self, result: Any) -> None:
        self._connecting = None
        waiting, self._waiting = self._waiting, []
        if isinstance(result, Failure):
            log.warn("storage-rpc: cannot reach the storage of {user}: {e}", user=self.user,
                     e=result.getErrorMessage())
            self.proto = None  # the next call tries again
            failure = Failure(StorageUnavailable("The storage is not reachable"))
            for w in waiting:
                w.errback(failure)
            return
        for w in waiting:
            w.callback(None)

    def _background(self, d: defer.Deferred) -> None:
        """Keep a call nobody waits for (listener registration, close) and
        log its failure, unless the connection is simply gone."""
        self._pending.add(d)

        def done(result: Any) -> None:
            self._pending.discard(d)
            if isinstance(result, Failure) and not result.check(StorageUnavailable):
                log.warn("storage-rpc: {e}", e=result.getErrorMessage())

        d.addBoth(done)

    # -- special methods ---------------------------------------------------

    def open(self, name: str, readonly: bool = False) -> defer.Deferred:
        d = self._call(C.Open, name=name, readonly=readonly)
        return d.addCallback(lambda r: RPCMailbox(self, r["view"], r["state"]))

    def copy(self, source: Any, uids: Any, dest: str) -> defer.Deferred:
        return self._copy(C.Copy, source, uids, dest)

    def move(self, source: Any, uids: Any, dest: str) -> defer.Deferred:
        return self._copy(C.Move, source, uids, dest)

    def _copy(self, command: type, source: Any, uids: Any, dest: str) -> defer.Deferred:
        if not isinstance(source, RPCMailbox) or source.proto is not self.proto:
            return defer.fail(StorageError("Can't copy from a foreign mailbox"))
        d = self._call(command, view=source.view_id, uids=list(uids), dest=dest)
        return d.addCallback(lambda r: (source._apply(r["state"]), r["result"])[1])

    def append(self, name: str, message: Any, flags: Any = (), internaldate: Any = None
               ) -> defer.Deferred:
        return self._append(name, message, list(flags), internaldate)

    @defer.inlineCallbacks
    def _append(self, name: str, message: Any, flags: list, internaldate: Any):
        yield self._ready()
        args = {"name": name, "flags": flags, "internaldate": internaldate}
        if self.unix:
            try:
                fd = message.fileno()
                offset = message.tell()
                os.lseek(fd, offset, os.SEEK_SET)
                own = None
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                own = os.fdopen(os.memfd_create("append"), "w+b")
                while data := message.read(CHUNK * 4):
                    own.write(data)
                own.flush()
                fd, offset = own.fileno(), 0
            try:
                r = yield self._call(C.Append, fd=fd, offset=offset, **args)
            finally:
                if own is not None:
                    own.close()
                else:
                    message.seek(0, os.SEEK_END)
            return r["result"]
        self._uploads += 1
        upload = self._uploads
        sent = False
        while data := message.read(CHUNK):
            yield self._call(C.Upload, upload=upload, data=data)
            sent = True
        if not sent:
            yield self._call(C.Upload, upload=upload, data=b"")
        r = yield self._call(C.Append, upload=upload, **args)
        return r["result"]

    # -- listeners (local; the server pushes) -------------------------------

    def add_listener(self, name: str, callback: Callable[[], None]) -> None:
        callbacks = self._listeners.setdefault(name, [])
        callbacks.append(callback)
        if len(callbacks) == 1 and self._usable:
            self._background(self._call(C.Listen, name=name, on=True))

    def remove_listener(self, name: str, callback: Callable[[], None]) -> None:
        callbacks = self._listeners.get(name, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks and self._listeners.pop(name, None) is not None and self._usable:
            self._background(self._call(C.Listen, name=name, on=False))

    def add_tree_listener(self, callback: Callable[[str, str, str | None], None]) -> None:
        self._tree.append(callback)
        if len(self._tree) == 1 and self._usable:
            self._background(self._call(C.ListenTree, on=True))

    def remove_tree_listener(self, callback: Callable[[str, str, str | None], None]) -> None:
        if callback in self._tree:
            self._tree.remove(callback)
            if not self._tree and self._usable:
                self._background(self._call(C.ListenTree, on=False))

    @property
    def _usable(self) -> bool:
        return self.connected or (self.proto is None and self._connect is not None)

    def _changed(self, name: str) -> None:
        for cb in list(self._listeners.get(name, ())):
            cb()

    def _tree_changed(self, kind: str, name: str, new_name: str | None) -> None:
        for cb in list(self._tree):
            cb(kind, name, new_name)

    def disconnect(self) -> defer.Deferred:
        """Close the connection (views and listeners end with it); fires
        once it is closed (and, for :func:`local_pair`, the server's end)."""
        if self.proto is None:
            return defer.succeed(None)
        waits = [self.proto.lost]
        if self.proto.transport is not None and self.connected:
            self.proto.transport.loseConnection()
        server = getattr(self, "server", None)
        if server is not None:
            waits.append(server.lost)
        return defer.gatherResults(waits).addCallback(lambda _: None)


def _build(cls: type, iface: Any, commands: dict, view: bool) -> type:
    for name in iface.names(all=True):
        desc = iface[name]
        if (isinstance(desc, Method) and name not in SYNCHRONOUS and name not in C.SPECIAL
                and name in commands and name not in cls.__dict__):
            setattr(cls, name, _method(name, desc, commands[name], view))
    return cls


implementer(IMailbox)(_build(RPCMailbox, IMailbox, C.MAILBOX_COMMANDS, True))
implementer(IMailStorage)(_build(RPCStorage, IMailStorage, C.STORAGE_COMMANDS, False))


# -- connecting ----------------------------------------------------------------

def adopt(sock: socket.socket, protocol: amp.AMP) -> Any:
    """Adopt a connected AF_UNIX socket as ``protocol``'s transport (the
    socket object is closed here; the reactor keeps its duplicate)."""
    from twisted.internet import reactor

    transport = reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX,
                                              Factory.forProtocol(lambda: protocol))
    sock.close()
    return transport


@defer.inlineCallbacks
def connect_channel(sock: socket.socket, requester: str, owner: str,
                    spool_dir: str | None = None):
    """Deferred[RPCStorage]: the client on a channel the master brokered."""
    proto = ClientProtocol()
    adopt(sock, proto)
    storage = RPCStorage(proto, owner, spool_dir)
    yield storage._call(C.Hello, requester=requester, owner=owner)
    return storage


@defer.inlineCallbacks
def hello(proto: ClientProtocol, requester: str, owner: str, secret: bytes | None = None,
          spool_dir: str | None = None):
    """Deferred[RPCStorage] on an already connected ``proto`` (TCP/TLS)."""
    storage = RPCStorage(proto, owner, spool_dir)
    r = yield storage._call(C.Hello, requester=requester, owner=owner, secret=secret)
    storage.user = r["user"]
    return storage


def local_pair(storage: Any, requester: str | None = None, **server_kw: Any) -> RPCStorage:
    """A client and a :class:`~pydovecot.storage.rpc.server.StorageServer`
    in this process over a UNIX socketpair (tests, and a process serving
    itself); ``requester`` defaults to the owner."""
    from pydovecot.storage.rpc.server import StorageServer

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = StorageServer(storage, requester or storage.user, **server_kw)
    adopt(a, server)
    proto = ClientProtocol()
    adopt(b, proto)
    client = RPCStorage(proto, storage.user)
    client.server = server  # type: ignore[attr-defined]
    return client


__all__ = ["RPCStorage", "RPCMailbox", "ClientProtocol", "connect_channel", "hello",
           "local_pair", "adopt"]
