"""The master brokers storage channels between mail processes of
different uids; this module holds both halves of the broker.

* :func:`open_storage` runs in the master (responder of
  :class:`~pydovecot.master.protocol.OpenStorage` on a mail process's
  channel).  The requesting user must be one of the asking process's uid
  (looked up in the userdb, like the owner); the owner's process is
  started or picked from the pool exactly as for a login; the master
  makes a socketpair, hands one end to the owner's process
  (:class:`~pydovecot.master.protocol.ServeStorage`) and answers the other.
* :func:`serve` runs in the owner's mail process: a
  :class:`~pydovecot.storage.rpc.server.StorageServer` on its end, with
  the access hook built from the owner's userdb fields.
* :func:`remote_storage` runs in the requesting mail process: an
  :class:`~pydovecot.storage.rpc.client.RPCStorage` that connects (through
  the master) on first use; the mail process uses it for a user whose
  ``mail`` location is ``rpc:OWNER``.

Trusts: in the master, nothing the asking process says beyond the names
(both checked against the userdb and the process's uid); in a mail
process, the master.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import Logger

from pydovecot.storage.rpc.access import rule_from_fields
from pydovecot.storage.rpc.client import ClientProtocol, RPCStorage, adopt
from pydovecot.storage.rpc.commands import Hello
from pydovecot.storage.rpc.server import StorageServer

log = Logger()

#: Seconds the master keeps its copy of an answered fd (Twisted sends it
#: when it writes the answer; the receiver has it long before).
CLOSE_AFTER = 30.0


def _close_later(fd: int) -> None:
    def close() -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    reactor.callLater(CLOSE_AFTER, close)


@defer.inlineCallbacks
def _userdb(master: Any, user: str):
    from authd.protocol import UserLookup

    found = yield master.auth.call(UserLookup, user=user, service="storage-rpc")
    if not found["found"]:
        raise KeyError(user)
    return found["user"], json.loads(found["fields"])


def _declared(d: defer.Deferred, what: str) -> defer.Deferred:
    """Only the command's declared errors leave the master: anything else
    is logged here once and answered as RuntimeError (UNAVAILABLE), since
    an undeclared error would close the child's channel."""
    from pydovecot.master.protocol import StorageRefused

    def failed(f: Any) -> Any:
        if f.check(KeyError, RuntimeError, StorageRefused):
            return f
        log.error("storage-rpc: {what}: {e}", what=what, e=f.getErrorMessage(),
                  log_prefix="master")
        raise RuntimeError("the storage is not available")

    return d.addErrback(failed)


def open_storage(master: Any, pid: int, requester: str, owner: str, host: str | None = None,
                 port: int | None = None, tls_name: str | None = None) -> defer.Deferred:
    """The master's half (see the module docstring): ``{"fd", "user"}``."""
    return _declared(_open_storage(master, pid, requester, owner, host, port, tls_name),
                     "brokering a channel")


def relay_storage(master: Any, requester: str, owner: str) -> defer.Deferred:
    """The master's half for the storage-rpc service (a TCP/TLS peer that
    proved ``storage_rpc_secret``; its ``requester`` is a remote user)."""
    return _declared(_relay_storage(master, requester, owner), "relaying a channel")


@defer.inlineCallbacks
def _open_storage(master: Any, pid: int, requester: str, owner: str, host: str | None,
                  port: int | None, tls_name: str | None):
    from pydovecot.log import sanitize
    from pydovecot.master.protocol import StorageRefused

    asking = master.pool.by_pid.get(pid)
    if asking is None or asking.key is None:
        raise StorageRefused("the asking mail process serves no uid")
    req_name, req_fields = yield _userdb(master, requester)
    if tuple(master.mail_ids(req_name, req_fields)) != tuple(asking.key):
        log.warn("storage-rpc: mail process {pid} asked for {owner}'s storage on behalf of "
                 "{user}, who is not one of its users (refused)", pid=pid,
                 owner=sanitize(owner), user=sanitize(requester), log_prefix="master")
        raise StorageRefused("the requesting user is not served by this process")
    if host:
        answer = yield _dial(master, req_name, owner, host, port or 0, tls_name or host)
    else:
        answer = yield _channel_to(master, req_name, owner)
    log.info("storage-rpc: {req} (pid {pid}) → {owner}'s storage", req=sanitize(req_name),
             pid=pid, owner=sanitize(answer["user"]), log_prefix="master")
    return answer


@defer.inlineCallbacks
def _relay_storage(master: Any, requester: str, owner: str):
    from pydovecot.log import sanitize

    answer = yield _channel_to(master, requester, owner, relayed=True)
    log.info("storage-rpc: remote {req} → {owner}'s storage", req=sanitize(requester),
             owner=sanitize(answer["user"]), log_prefix="master")
    return answer


@defer.inlineCallbacks
def _dial(master: Any, requester: str, owner: str, host: str, port: int, tls_name: str):
    """A channel to a storage on another instance, through our storage-rpc
    service (which alone holds ``storage_rpc_secret``)."""
    from pydovecot.master.protocol import DialStorage

    supervised = (getattr(master, "supervised", {}) or {}).get("storage-rpc") or []
    child = supervised[0].child if supervised else None
    if child is None or child.channel is None or child.lost:
        raise RuntimeError("no storage-rpc service runs (it needs an inet_listener)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        answer = yield child.channel.callRemote(DialStorage, fd=ours.fileno(), host=host,
                                                port=port, tls_name=tls_name,
                                                requester=requester, owner=owner)
    finally:
        ours.close()
    fd = os.dup(theirs.fileno())
    theirs.close()
    _close_later(fd)
    return {"fd": fd, "user": answer["user"]}


@defer.inlineCallbacks
def _channel_to(master: Any, requester: str, owner: str, relayed: bool = False):
    from pydovecot.master.protocol import ServeStorage

    name, fields = yield _userdb(master, owner)
    uid, gid = master.mail_ids(name, fields)
    fields_json = master.prepare_home(name, fields, uid, gid)
    process = yield master.pool.process_for(uid, gid, name)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        yield process.call(ServeStorage, fd=ours.fileno(), user=name, requester=requester,
                           fields=fields_json, relayed=relayed)
    finally:
        ours.close()
    fd = os.dup(theirs.fileno())
    theirs.close()
    _close_later(fd)
    return {"fd": fd, "user": name}


def serve(storage: Any, fd: int, requester: str, fields: dict, relayed: bool = False
          ) -> StorageServer:
    """The owner's half: serve ``storage`` to ``requester`` on ``fd``
    (``relayed``: through the storage-rpc service, so no fds)."""
    server = StorageServer(storage, requester, authorize=rule_from_fields(fields),
                           pass_fds=not relayed)
    adopt(socket.socket(fileno=fd), server)
    return server


def parse_location(rest: str) -> tuple[str, dict[str, str]]:
    """``bob:HOST=192.0.2.7:PORT=24242:NAME=mail.example.org`` (after
    ``rpc:``) → ("bob", {"host": …, "port": …, "tls_name": …})."""
    owner, *params = rest.split(":")
    where: dict[str, str] = {}
    for param in params:
        key, _, value = param.partition("=")
        key = {"HOST": "host", "PORT": "port", "NAME": "tls_name"}.get(key.upper(), "")
        if not key or not value:
            raise ValueError(f"unknown rpc: location parameter {param[:40]!r}")
        where[key] = value
    if not owner or ("host" in where) != ("port" in where):
        raise ValueError("rpc: location needs an owner, and HOST= with PORT=")
    return owner, where


def remote_storage(channel: Any, requester: str, location: str) -> RPCStorage:
    """The requesting half: the storage a ``rpc:OWNER[:HOST=h:PORT=p[:NAME=n]]``
    location names (``location`` without ``rpc:``), connected on first use."""
    from pydovecot.master.protocol import OpenStorage

    owner, where = parse_location(location)
    extra: dict[str, Any] = dict(where)
    if "port" in extra:
        extra["port"] = int(extra["port"])
    storage = RPCStorage(None, owner)
    storage.pass_fds = "host" not in where  # a relay cannot pass descriptors on

    @defer.inlineCallbacks
    def connect():
        answer = yield channel.callRemote(OpenStorage, requester=requester, owner=owner,
                                          **extra)
        proto = ClientProtocol()
        adopt(socket.socket(fileno=answer["fd"]), proto)
        storage.attach(proto)
        yield proto.callRemote(Hello, requester=requester, owner=answer["user"])
        storage.user = answer["user"]

    storage.connect_with(connect)
    return storage


__all__ = ["open_storage", "relay_storage", "serve", "remote_storage", "parse_location"]
