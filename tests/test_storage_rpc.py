"""The storage RPC in one process (issue 9, "Storage RPC"): a real AMP
client and server over a UNIX socketpair (and over TCP, for the chunked
body path).

* The scripted IMAP flows of tests/test_imap_remote_storage.py run on the
  Maildir storage directly and on the same storage behind the RPC: the
  outputs are byte-identical (UIDVALIDITY values aside).
* Storage errors cross as declared AMP errors and come out as tagged NO
  with the same response codes.
* A 20 MB message goes as a file descriptor both ways (APPEND from a file,
  message_file), and over TCP in chunks, with the process's memory staying
  far below the message size.
* The access hook: a requester who is not the owner gets NO [NOPERM] unless
  the owner's ``shared_with`` grants the right.
"""

from __future__ import annotations

import io
import os
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.storage.interfaces import (
    AttributeTooLarge,
    IMailbox,
    IMailStorage,
    MailboxExists,
    MailboxNotFound,
    StorageError,
)
from pydovecot.storage.maildir import MaildirStorage
from pydovecot.storage.rpc.access import rule_from_fields
from pydovecot.storage.rpc.client import ClientProtocol, RPCStorage, hello, local_pair
from pydovecot.storage.rpc.server import StorageServer
from pydovecot.storage.rpc.wire import AccessDenied, decode, encode
from tests import test_imap_remote_storage as flows
from tests.test_imap_remote_storage import WHEN, Session
from tests.test_imap_session import MSG1, MSG2


def _maildir(test: unittest.TestCase, user: str = "alice") -> MaildirStorage:
    root = os.path.abspath(test.mktemp())
    return MaildirStorage(user, os.path.join(root, "Maildir"), home=root)


class Pairs:
    """RPC pairs made during a test, disconnected at its end."""

    def __init__(self, test: unittest.TestCase):
        self.clients: list[RPCStorage] = []
        test.addCleanup(self.close)

    def wrap(self, storage, **kw) -> RPCStorage:
        client = local_pair(storage, **kw)
        self.clients.append(client)
        return client

    def close(self) -> defer.Deferred:
        return defer.gatherResults([c.disconnect() for c in self.clients])


class FlowsOverRPC(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_same_answers_as_local_storage(self):
        local = yield flows.RemoteStorageFlows.run_flows(self, lambda s: s)
        pairs = Pairs(self)
        remote = yield flows.RemoteStorageFlows.run_flows(self, pairs.wrap)
        self.assertEqual([s for s, _ in remote], [s for s, _ in local])
        for (step, mine), (_s, theirs) in zip(remote, local, strict=True):
            self.assertEqual(mine, theirs, step)
        out = dict(local)
        self.assertIn(b"* 1 FETCH (UID 2 FLAGS (\\Answered", out["IDLE push"])
        self.assertIn(b"* STATUS Other (MESSAGES 1", out["NOTIFY push"])

    @defer.inlineCallbacks
    def test_extensions_same_answers(self):
        local = yield flows.RemoteStorageFlows.run_extensions(self, lambda s: s)
        pairs = Pairs(self)
        remote = yield flows.RemoteStorageFlows.run_extensions(self, pairs.wrap)
        for (step, mine), (_s, theirs) in zip(remote, local, strict=True):
            self.assertEqual(mine, theirs, step)

    @defer.inlineCallbacks
    def test_errors_are_tagged_no_with_codes(self):
        pairs = Pairs(self)
        storage = pairs.wrap(_maildir(self))
        a = Session(storage, "a")
        self.addCleanup(a.close)
        out = yield a.command(b"a1 SELECT Nope")
        self.assertIn(b"a1 NO [NONEXISTENT]", out)
        out = yield a.command(b"a2 CREATE X")
        out = yield a.command(b"a3 CREATE X")
        self.assertIn(b"a3 NO [ALREADYEXISTS]", out)
        out = yield a.command(b"a4 DELETE INBOX")
        self.assertIn(b"a4 NO ", out)
        out = yield a.command(b"a5 NOOP")
        self.assertIn(b"a5 OK", out)
        # the classes and codes themselves
        yield self.assertFailure(storage.status("Nope"), MailboxNotFound)
        yield self.assertFailure(storage.create("X"), MailboxExists)
        storage.server.storage.configure({"mail_attribute_max_value_size": 10})
        e = yield self.assertFailure(storage.set_attribute("", "/private/comment", b"x" * 50),
                                     AttributeTooLarge)
        self.assertEqual(e.max_size, 10)
        self.assertEqual(e.code, "METADATA MAXSIZE 10")
        box = yield storage.open("INBOX")
        e = yield self.assertFailure(box.message_file(99), StorageError)
        self.assertEqual(e.code, "EXPUNGEISSUED")
        box.close()

    def test_verify_object(self):
        pairs = Pairs(self)
        storage = pairs.wrap(_maildir(self))
        self.assertTrue(verifyObject(IMailStorage, storage))

        @defer.inlineCallbacks
        def check():
            box = yield storage.open("INBOX")
            self.assertTrue(verifyObject(IMailbox, box))
            box.close()

        return check()

    def test_values_round_trip(self):
        import datetime

        from pydovecot.storage.interfaces import MailboxStatus
        v = {"a": (1, b"\x00\xff", None), "s": {"x"}, "d": datetime.datetime(2024, 1, 1,
             tzinfo=datetime.UTC), "st": MailboxStatus(1, 0, 2, 3, 1), "$k": 1, 5: [True]}
        self.assertEqual(decode(encode(v)), v)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class BigBodies(unittest.TestCase):
    timeout = 240
    SIZE = 20 * 1024 * 1024

    def _big_file(self):
        f = tempfile.TemporaryFile()
        f.write(b"Subject: big\r\n\r\n")
        line = b"z" * 998 + b"\r\n"
        self.lines = 2
        while f.tell() < self.SIZE:
            f.write(line)
            self.lines += 1
        f.seek(0)
        return f

    @defer.inlineCallbacks
    def _round_trip(self, storage: RPCStorage):
        big = self._big_file()
        self.addCleanup(big.close)
        size = os.fstat(big.fileno()).st_size
        before = _rss_kib()
        validity, uid = yield storage.append("INBOX", big, [], WHEN)
        self.assertEqual(big.tell(), size)  # read to its end, as the interface says
        box = yield storage.open("INBOX")
        self.assertEqual(box.messages[-1].uid, uid)
        f = yield box.message_file(uid)
        got = 0
        while data := f.read(1 << 16):
            got += len(data)
        f.close()
        self.assertEqual(got, size - self.lines)  # stored with LF line ends
        self.assertEqual(box.messages[-1].size, size)
        box.close()
        grown = _rss_kib() - before
        self.assertLess(grown, 10 * 1024, "the body must not be held in memory")
        return grown

    @defer.inlineCallbacks
    def test_fd_passing(self):
        pairs = Pairs(self)
        storage = pairs.wrap(_maildir(self))
        self.assertTrue(storage.unix)
        yield self._round_trip(storage)

    @defer.inlineCallbacks
    def test_chunks_over_tcp(self):
        local = _maildir(self)
        factory = Factory.forProtocol(lambda: StorageServer(local, secret=b"s3cret"))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        proto = ClientProtocol()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                              proto)
        self.addCleanup(lambda: (proto.transport.loseConnection(), proto.lost)[1])
        storage = yield hello(proto, "alice", "alice", b"s3cret")
        self.assertFalse(storage.unix)
        yield self._round_trip(storage)


class Access(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_owner_rule(self):
        pairs = Pairs(self)
        owner = _maildir(self, "bob")
        yield owner.append("INBOX", io.BytesIO(MSG1), [], WHEN)
        yield owner.append("INBOX", io.BytesIO(MSG2), [], WHEN)
        yield owner.create("Private")
        # nobody granted: alice is refused everything
        denied = pairs.wrap(owner, requester="alice")
        yield self.assertFailure(denied.open("INBOX"), AccessDenied)
        e = yield self.assertFailure(denied.status("INBOX"), AccessDenied)
        self.assertEqual(e.code, "NOPERM")
        # shared_with=alice:lrs — read and \Seen, no other flags, no expunge
        rule = rule_from_fields({"shared_with": "alice:lrs carol"})
        shared = pairs.wrap(owner, requester="alice", authorize=rule)
        box = yield shared.open("INBOX")
        self.assertEqual(len(box.messages), 2)
        f = yield box.message_file(1)
        self.assertEqual(f.read().replace(b"\r\n", b"\n"), MSG1.replace(b"\r\n", b"\n"))
        f.close()
        changed = yield box.store([1], ["\\Seen"], "+")
        self.assertEqual(changed, [1])
        yield self.assertFailure(box.store([1], ["\\Flagged"], "+"), AccessDenied)
        yield self.assertFailure(box.expunge(), AccessDenied)
        yield self.assertFailure(shared.append("INBOX", io.BytesIO(MSG1)), AccessDenied)
        yield self.assertFailure(shared.subscriptions(), AccessDenied)
        boxes = yield shared.list_mailboxes()
        self.assertEqual({b.name for b in boxes}, {"INBOX", "Private"})
        box.close()
        # the IMAP view of it: NO [NOPERM] as a tagged answer
        s = Session(shared, "s")
        self.addCleanup(s.close)
        out = yield s.command(b"s1 CREATE Mine")
        self.assertIn(b"s1 NO [NOPERM]", out)
        out = yield s.command(b"s2 EXAMINE INBOX")
        self.assertIn(b"s2 OK", out)

    @defer.inlineCallbacks
    def test_revoked_right_takes_effect_on_the_next_command(self):
        pairs = Pairs(self)
        owner = _maildir(self, "bob")
        yield owner.append("INBOX", io.BytesIO(MSG1), [], WHEN)
        grants = {"alice": "lr"}
        shared = pairs.wrap(owner, requester="alice",
                            authorize=lambda req, own, box, right: right in grants.get(req, ""))
        box = yield shared.open("INBOX")
        yield box.fetch_data(1, ["envelope"])
        del grants["alice"]
        yield self.assertFailure(box.fetch_data(1, ["envelope"]), AccessDenied)
        yield self.assertFailure(box.message_file(1), AccessDenied)
        yield self.assertFailure(box.sync(), AccessDenied)
        box.close()


class ConnectionLoss(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_lost_storage_is_tagged_no_unavailable(self):
        """The storage process goes: the session gets NO [UNAVAILABLE] and
        goes on; the server side closed its views."""
        pairs = Pairs(self)
        storage = pairs.wrap(_maildir(self))
        a = Session(storage, "a")
        self.addCleanup(a.close)
        out = yield a.command(b"a1 SELECT INBOX")
        self.assertIn(b"a1 OK", out)
        self.assertEqual(len(storage.server.views), 1)
        storage.server.transport.loseConnection()
        yield storage.proto.lost
        out = yield a.command(b"a2 CREATE Other")
        self.assertIn(b"a2 NO [UNAVAILABLE]", out)
        out = yield a.command(b"a3 NOOP")
        self.assertIn(b"a3 ", out)
        self.assertEqual(storage.server.views, {})


class BrokerChecks(unittest.TestCase):
    """The master's half of the broker with a stand-in master: it speaks
    only for users of the asking process's uid."""

    def _master(self):
        import json
        from types import SimpleNamespace

        users = {"alice": {"uid": "2001", "gid": "2001"}, "bob": {"uid": "2002", "gid": "2002"}}

        def call(command, user, service):
            if user not in users:
                return defer.succeed({"found": False})
            return defer.succeed({"found": True, "user": user,
                                  "fields": json.dumps(users[user])})

        asking = SimpleNamespace(key=(2001, 2001))
        return SimpleNamespace(
            pool=SimpleNamespace(by_pid={77: asking}),
            auth=SimpleNamespace(call=call),
            mail_ids=lambda user, fields: (int(fields["uid"]), int(fields["gid"])))

    @defer.inlineCallbacks
    def test_requester_must_be_of_the_asking_uid(self):
        from pydovecot.master.protocol import StorageRefused
        from pydovecot.storage.rpc.broker import open_storage

        master = self._master()
        yield self.assertFailure(open_storage(master, 77, "bob", "alice"), StorageRefused)
        yield self.assertFailure(open_storage(master, 78, "alice", "bob"), StorageRefused)
        yield self.assertFailure(open_storage(master, 77, "alice", "nobody"), KeyError)
        self.flushLoggedErrors()

    def test_locations(self):
        from pydovecot.storage.rpc.broker import parse_location

        self.assertEqual(parse_location("bob"), ("bob", {}))
        self.assertEqual(parse_location("bob:HOST=192.0.2.7:PORT=24242:NAME=mx.example.org"),
                         ("bob", {"host": "192.0.2.7", "port": "24242",
                                  "tls_name": "mx.example.org"}))
        for bad in ("", "bob:HOST=x", "bob:FOO=1", "bob:PORT="):
            self.assertRaises(ValueError, parse_location, bad)
