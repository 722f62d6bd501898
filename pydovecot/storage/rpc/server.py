"""The server side of the storage RPC: one local IMailStorage served to
one peer over one AMP connection.

It runs inside the mail process that owns the storage (that uid's
privileges, no other).  The peer is either a mail process of another uid
on a channel the master brokered (the master named the requesting user),
or another pydovecot instance over TCP with TLS that proved itself with
``storage_rpc_secret`` in :class:`~pydovecot.storage.rpc.commands.Hello`.

Trusts: the requesting user it was given (or that the secret vouched
for), nothing the peer sends.  Every command is checked against the
access hook (:mod:`pydovecot.storage.rpc.access`) on each call, so a
revoked right takes effect on the next command; views, open files and
uploads are per connection and go when it goes.
"""

from __future__ import annotations

import hmac
import os
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IUNIXTransport
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from pydovecot.storage.interfaces import MailboxInfo, StorageError, SyncResult
from pydovecot.storage.rpc import commands as C
from pydovecot.storage.rpc.access import Authorize, deny_others
from pydovecot.storage.rpc.wire import CHUNK, AccessDenied, wire_failure

log = Logger()

#: Storage methods → (right, the argument naming the mailbox); a method
#: not listed is the owner's only (configure, subscriptions, quota …).
STORAGE_RIGHTS: dict[str, tuple[str, str | None]] = {
    "list_mailboxes": ("l", None),
    "status": ("r", "name"),
    "create": ("k", "name"),
    "delete": ("x", "name"),
    "rename": ("x", "old"),
    "get_attribute": ("r", "mailbox"),
    "attribute_keys": ("r", "mailbox"),
    "set_attribute": ("w", "mailbox"),
    "set_attributes": ("w", "mailbox"),
}
#: Mailbox methods → right on the view's mailbox (store: per flag).
MAILBOX_RIGHTS: dict[str, str] = {
    "sync": "r", "vanished_since": "r", "search": "r", "sort": "r", "fetch_data": "r",
    "store": "", "store_unchanged_since": "", "expunge": "e",
}
_FLAG_RIGHTS = {"\\seen": "s", "\\deleted": "t"}
#: The view methods that may change the view (the interface: messages move
#: only inside sync and the view's own store/expunge); the others answer
#: ``{"same": True}`` instead of a state, so a FETCH of 10,000 envelopes
#: costs no 10,000 view comparisons.
MUTATING = frozenset({"sync", "store", "store_unchanged_since", "expunge"})
SAME = {"same": True}


def _state(view: Any, snapshot: dict[int, tuple]) -> dict:
    """The view's state for the client; messages as a change list against
    what this connection sent before (``snapshot`` is updated)."""
    current = {}
    upd = []
    for m in view.messages:
        key = (frozenset(m.flags), m.modseq, m.size, m.internaldate, m.savedate)
        current[m.uid] = key
        if snapshot.get(m.uid) != key:
            upd.append((m.uid, sorted(m.flags), m.size, m.internaldate, m.modseq, m.savedate))
    gone = [uid for uid in snapshot if uid and uid not in current]
    snapshot.clear()
    snapshot.update(current)
    # key 0 (no UID is 0): what the view had synced to when this was sent
    snapshot[0] = (view.seen_modseq, view.highestmodseq, len(view.messages))
    out = _state_scalars(view)
    out.update(gone=gone, upd=upd)
    return out


def _delta(view: Any, snapshot: dict[int, tuple], name: str, result: Any) -> dict:
    """:func:`_state`, but a sync that changed nothing (one after every IMAP
    command) compares nothing: no UID moved and the view's modseq did not
    advance (a modseq change without a flag change is not in SyncResult,
    so any advance takes the full comparison)."""
    if (name == "sync" and isinstance(result, SyncResult) and not result.added
            and not result.expunged and not result.flags_changed
            and snapshot.get(0) == (view.seen_modseq, view.highestmodseq, len(view.messages))):
        out = _state_scalars(view)
        out.update(gone=[], upd=[])
        return out
    return _state(view, snapshot)


def _state_scalars(view: Any) -> dict:
    return {"name": view.name, "readonly": view.readonly, "uidvalidity": view.uidvalidity,
            "uidnext": view.uidnext, "recent": set(view.recent), "keywords": list(view.keywords),
            "highestmodseq": view.highestmodseq, "seen_modseq": view.seen_modseq,
            "deleted": view.deleted}


class StorageServer(amp.AMP):
    """Serve ``storage`` (owned by ``owner``) to one peer."""

    def __init__(self, storage: Any, requester: str | None = None,
                 authorize: Authorize = deny_others, secret: bytes | None = None,
                 spool_dir: str | None = None, pass_fds: bool = True):
        super().__init__()
        self.pass_fds = pass_fds
        self.storage = storage
        self.owner = storage.user
        self.requester = requester  # None until Hello proves the peer
        self.authorize = authorize
        self.secret = secret
        self.spool_dir = spool_dir
        self.views: dict[int, tuple[Any, dict]] = {}
        self.handles: dict[int, Any] = {}
        self.uploads: dict[int, Any] = {}
        self._next = 0
        self._listening: dict[str, Callable[[], None]] = {}
        self._tree: Callable[..., None] | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()

    # -- plumbing ----------------------------------------------------------

    def _id(self) -> int:
        self._next += 1
        return self._next

    def _allowed(self, mailbox: str, right: str) -> bool:
        if self.requester is None:
            return False
        if self.requester == self.owner:
            return True
        try:
            return bool(self.authorize(self.requester, self.owner, mailbox, right))
        except Exception:
            log.failure("storage-rpc: the access hook failed (denied)")
            return False

    def _check(self, mailbox: str, right: str) -> None:
        if not self._allowed(mailbox, right):
            if self.requester is None:
                raise AccessDenied("Not authenticated")
            raise AccessDenied("Permission denied")

    def _view(self, view: int) -> tuple[Any, dict]:
        try:
            return self.views[view]
        except KeyError:
            raise StorageError("No such mailbox view") from None

    def _run(self, call: Callable[[], Any]) -> defer.Deferred:
        """Run a storage call; storage errors go out as their declared AMP
        errors, anything else is logged once and sent as SERVERBUG."""
        d = defer.maybeDeferred(call)

        def failed(f: Failure) -> Failure:
            if f.check(StorageError):
                return Failure(wire_failure(f.value))
            log.failure("storage-rpc: unexpected error", f)
            return Failure(wire_failure(StorageError("Internal error")))

        return d.addErrback(failed)

    def connectionLost(self, reason: Any) -> None:
        for name, cb in self._listening.items():
            self.storage.remove_listener(name, cb)
        self._listening.clear()
        if self._tree is not None:
            self.storage.remove_tree_listener(self._tree)
            self._tree = None
        for view, _snap in self.views.values():
            view.close()
        self.views.clear()
        for f in [*self.handles.values(), *self.uploads.values()]:
            f.close()
        self.handles.clear()
        self.uploads.clear()
        super().connectionLost(reason)
        self.lost.callback(None)

    # -- session -----------------------------------------------------------

    @C.Hello.responder
    def hello(self, requester: str, owner: str, secret: bytes | None = None) -> dict:
        if owner != self.owner:
            raise wire_failure(AccessDenied("This process does not serve that user"))
        if self.secret is not None:
            if secret is None or not hmac.compare_digest(secret, self.secret):
                raise wire_failure(AccessDenied("Bad storage_rpc_secret"))
            self.requester = requester
        elif self.requester is None or self.requester != requester:
            raise wire_failure(AccessDenied("Not the user this channel was made for"))
        return {"user": self.owner}

    # -- the storage's special methods -------------------------------------

    @C.Open.responder
    def open(self, name: str, readonly: bool) -> defer.Deferred:
        def call():
            self._check(name, "r")
            d = defer.maybeDeferred(self.storage.open, name, readonly)

            def opened(view):
                vid, snap = self._id(), {}
                self.views[vid] = (view, snap)
                return {"view": vid, "state": _state(view, snap)}

            return d.addCallback(opened)

        return self._run(call)

    @C.CloseView.responder
    def close_view(self, view: int) -> dict:
        entry = self.views.pop(view, None)
        if entry is not None:
            entry[0].close()
        return {}

    @C.Upload.responder
    def upload(self, upload: int, data: bytes) -> defer.Deferred:
        def call():
            if self.requester is None:
                raise AccessDenied("Not authenticated")
            f = self.uploads.get(upload)
            if f is None:
                f = self.uploads[upload] = tempfile.TemporaryFile(dir=self.spool_dir)
            f.write(data)
            return {}

        return self._run(call)

    @C.Append.responder
    def append(self, name: str, flags: Any, fd: int | None = None, offset: int | None = None,
               upload: int | None = None, internaldate: Any = None) -> defer.Deferred:
        holder: list[Any] = []

        def call():
            if fd is not None:
                f = os.fdopen(fd, "rb")
                holder.append(f)
                if not self.pass_fds:
                    raise StorageError("This channel takes no file descriptors")
                self._check(name, "i")
                f.seek(offset or 0)
            else:
                f = self.uploads.pop(upload, None) if upload is not None else None
                if f is None:
                    raise StorageError("No message body was sent")
                holder.append(f)
                self._check(name, "i")
                f.seek(0)
            return self.storage.append(name, f, list(flags or ()), internaldate)

        def done(result):
            for f in holder:
                f.close()
            return result

        return self._run(call).addBoth(done).addCallback(lambda r: {"result": r})

    @C.Copy.responder
    def copy(self, view: int, uids: Any, dest: str) -> defer.Deferred:
        return self._copy(self.storage.copy, view, uids, dest, "r")

    @C.Move.responder
    def move(self, view: int, uids: Any, dest: str) -> defer.Deferred:
        # the source's expunge that follows needs its own right (e)
        return self._copy(self.storage.move, view, uids, dest, "r")

    def _copy(self, method: Any, view: int, uids: Any, dest: str, right: str) -> defer.Deferred:
        def call():
            source, snap = self._view(view)
            self._check(source.name, right)
            self._check(dest, "i")
            d = method(source, list(uids), dest)
            return d.addCallback(lambda r: {"result": r, "state": SAME})

        return self._run(call)

    @C.MessageFile.responder
    def message_file(self, view: int, uid: int, pass_fd: bool) -> defer.Deferred:
        def call():
            box, snap = self._view(view)
            self._check(box.name, "r")
            return defer.maybeDeferred(box.message_file, uid).addCallback(opened, box, snap)

        def opened(f, box, snap):
            try:
                fileno = f.fileno()
            except (AttributeError, OSError, ValueError):
                fileno = None
            pass_fd_here = (pass_fd and self.pass_fds
                            and IUNIXTransport.providedBy(self.transport))
            if fileno is None and pass_fd_here:
                mem = os.fdopen(os.memfd_create("message"), "w+b")
                with f:
                    while data := f.read(CHUNK * 4):
                        mem.write(data)
                mem.flush()
                f, fileno = mem, mem.fileno()
            if fileno is not None:
                size = os.fstat(fileno).st_size
            else:
                size = f.seek(0, os.SEEK_END)
                f.seek(0)
            handle = self._id()
            self.handles[handle] = f
            out = {"handle": handle, "size": size, "state": SAME}
            if pass_fd_here:
                out["fd"] = fileno
            return out

        return self._run(call)

    @C.ReadChunk.responder
    def read_chunk(self, handle: int, offset: int, length: int) -> defer.Deferred:
        def call():
            f = self.handles.get(handle)
            if f is None:
                raise StorageError("No such message handle")
            n = max(0, min(length, CHUNK))
            try:
                data = os.pread(f.fileno(), n, offset)
            except (AttributeError, OSError, ValueError):
                f.seek(offset)
                data = f.read(n)
            return {"data": data}

        return self._run(call)

    @C.Release.responder
    def release(self, handle: int) -> dict:
        f = self.handles.pop(handle, None)
        if f is not None:
            f.close()
        return {}

    # -- notifications -----------------------------------------------------

    @C.Listen.responder
    def listen(self, name: str, on: bool) -> defer.Deferred:
        def call():
            if on:
                self._check(name, "r")
                if name not in self._listening:
                    cb = self._listening[name] = lambda: self._push(C.Changed, name=name)
                    self.storage.add_listener(name, cb)
            else:
                cb = self._listening.pop(name, None)
                if cb is not None:
                    self.storage.remove_listener(name, cb)
            return {}

        return self._run(call)

    @C.ListenTree.responder
    def listen_tree(self, on: bool) -> defer.Deferred:
        def call():
            self._check("", "l")
            if on and self._tree is None:
                def tree(kind: str, name: str, new_name: str | None) -> None:
                    if self._allowed(name, "l"):
                        self._push(C.TreeChanged, kind=kind, name=name, new_name=new_name)

                self._tree = tree
                self.storage.add_tree_listener(tree)
            elif not on and self._tree is not None:
                self.storage.remove_tree_listener(self._tree)
                self._tree = None
            return {}

        return self._run(call)

    def _push(self, command: type[amp.Command], **kwargs: Any) -> None:
        if self.transport is not None and not getattr(self.transport, "disconnected", False):
            self.callRemote(command, **kwargs)


def _storage_responder(name: str, command: type[amp.Command]) -> Callable[..., Any]:
    args = [amp._wireNameToPythonIdentifier(a) for a, _ in command.arguments]
    right, where = STORAGE_RIGHTS.get(name, ("owner", None))
    answers = bool(command.response)

    def responder(self: StorageServer, **kwargs: Any) -> defer.Deferred:
        def call():
            if right == "owner":
                if self.requester is None or self.requester != self.owner:
                    raise AccessDenied("Permission denied")
            else:
                self._check(kwargs.get(where, "") if where else "", right)
                if name == "rename":
                    self._check(kwargs["new"], "k")
            d = defer.maybeDeferred(getattr(self.storage, name), *[kwargs.get(a) for a in args])
            if name == "list_mailboxes" and self.requester != self.owner:
                d.addCallback(lambda boxes: [b for b in boxes if isinstance(b, MailboxInfo)
                                             and self._allowed(b.name, "l")])
            return d.addCallback(lambda r: {"result": r} if answers else {})

        return self._run(call)

    responder.__name__ = name
    return responder


def _mailbox_responder(name: str, command: type[amp.Command]) -> Callable[..., Any]:
    args = [amp._wireNameToPythonIdentifier(a) for a, _ in command.arguments][1:]
    right = MAILBOX_RIGHTS.get(name, "owner")

    def responder(self: StorageServer, view: int, **kwargs: Any) -> defer.Deferred:
        def call():
            box, snap = self._view(view)
            if right == "owner":
                if self.requester != self.owner:
                    raise AccessDenied("Permission denied")
            elif right:
                self._check(box.name, right)
            else:  # store: the right each flag needs
                for flag in kwargs.get("flags") or ():
                    self._check(box.name, _FLAG_RIGHTS.get(str(flag).lower(), "w"))
            d = defer.maybeDeferred(getattr(box, name), *[kwargs.get(a) for a in args])
            if name not in MUTATING:
                return d.addCallback(lambda r: {"result": r, "state": SAME})
            return d.addCallback(lambda r: {"result": r, "state": _delta(box, snap, name, r)})

        return self._run(call)

    responder.__name__ = "mailbox_" + name
    return responder


# The table commands' responders (not through Command.responder, whose
# registry belongs to the next class statement).
for _name, _cmd in C.STORAGE_COMMANDS.items():
    StorageServer._commandDispatch[_cmd.commandName] = (_cmd, _storage_responder(_name, _cmd))
for _name, _cmd in C.MAILBOX_COMMANDS.items():
    StorageServer._commandDispatch[_cmd.commandName] = (_cmd, _mailbox_responder(_name, _cmd))

__all__ = ["StorageServer", "STORAGE_RIGHTS", "MAILBOX_RIGHTS"]
