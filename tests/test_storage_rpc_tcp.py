"""The storage RPC over TCP with TLS between two pydovecot instances on
loopback (issue 9, "Storage RPC").

Instance B runs ``service storage-rpc { inet_listener storage-rpc { port } }``
with ``storage_rpc_secret = <file`` and TLS; bob (B's user) has
``shared_with=alice``.  alice, a user of instance A, opens bob's INBOX on B
with the RPC client (here in the test process, as A's side), reads the
message B's LMTP delivered, and cannot flag it; a wrong secret is refused.
Both masters are real (privileged when root), listeners pre-bound.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet import defer, threads
from twisted.trial import unittest

from pydovecot.storage.interfaces import StorageError
from pydovecot.storage.rpc import tcp
from pydovecot.storage.rpc.wire import AccessDenied
from tests.harness import LineClient, Master, User, listening_socket, privileged

MESSAGE = (b"From: dave@example.org\r\nTo: bob@example.org\r\nSubject: over tcp\r\n\r\n"
           b"Served by instance B.\r\n")
SECRET = "k8Yv0dLr2q-shared-between-instances"


class TwoInstances(unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.b = Master(users=[User("bob", "pb", extra="userdb_shared_with=alice")], ssl=True,
                        **privileged())
        self.addCleanup(self.b.cleanup)
        self.port = self._storage_rpc(self.b)
        # alice of A: her mail location is bob's storage on B
        self.a = Master(users=[User("alice", "pa", extra=(
            f"userdb_mail=rpc:bob:HOST=127.0.0.1:PORT={self.port}:NAME=localhost"))],
            ssl=True, **privileged())
        self.addCleanup(self.a.cleanup)
        self._storage_rpc(self.a, f"ssl_client_ca_file = {self.b.cert_path}\n")
        return threads.deferToThread(lambda: (self.a.start(), self.b.start()))

    def _storage_rpc(self, master: Master, extra: str = "") -> int:
        sock = master.sockets["storage-rpc"] = listening_socket()
        port = sock.getsockname()[1]
        secret = os.path.join(master.dir, "storage-rpc.secret")
        with open(secret, "w") as f:
            f.write(SECRET + "\n")
        os.chmod(secret, 0o600)
        master.extra_config = (f"storage_rpc_secret = <{secret}\n{extra}"
                               "service storage-rpc {\n  inet_listener storage-rpc {\n"
                               f"    port = {port}\n  }}\n}}\n")
        master.write_config()
        return port

    @defer.inlineCallbacks
    def test_alice_of_a_reads_bobs_inbox_on_b(self):
        def deliver():
            with smtplib.LMTP("127.0.0.1", self.b.ports["lmtp"]) as lmtp:
                lmtp.sendmail("dave@example.org", ["bob"], MESSAGE)

        yield threads.deferToThread(deliver)
        with open(self.b.cert_path, "rb") as f:
            trust = f.read()
        bad = tcp.connect("127.0.0.1", self.port, b"wrong", "alice", "bob", trust,
                          tls_name="localhost")
        e = yield self.assertFailure(bad, AccessDenied)
        self.assertEqual(e.code, "NOPERM")
        storage = yield tcp.connect("127.0.0.1", self.port, SECRET.encode(), "alice", "bob",
                                    trust, tls_name="localhost")
        self.addCleanup(storage.disconnect)
        self.assertFalse(storage.unix)
        self.assertEqual(storage.user, "bob")
        box = yield storage.open("INBOX")
        self.assertEqual(len(box.messages), 1)
        f = yield box.message_file(box.messages[0].uid)
        self.assertIn(b"Served by instance B.", f.read())
        f.close()
        e = yield self.assertFailure(box.store([box.messages[0].uid], ["\\Flagged"], "+"),
                                     StorageError)
        self.assertEqual(e.code, "NOPERM")
        status = yield storage.status("INBOX")
        self.assertEqual(status.messages, 1)
        box.close()
        log = self.b.log()
        self.assertIn("storage-rpc: remote alice", log)
        self.assertIn("wrong secret", log)

    @defer.inlineCallbacks
    def test_through_a_mail_process_of_instance_a(self):
        """alice logs in to A over IMAP; her mail process asks A's master,
        A's storage-rpc service dials B's (TLS, the secret), B's master
        gives it a channel to bob's process: SELECT and FETCH work, STORE
        \\Flagged is NO [NOPERM]."""
        def deliver():
            with smtplib.LMTP("127.0.0.1", self.b.ports["lmtp"]) as lmtp:
                lmtp.sendmail("dave@example.org", ["bob"], MESSAGE)

        yield threads.deferToThread(deliver)

        def imap():
            client = LineClient(self.a.ports["imap"], timeout=30)
            try:
                client.line()
                out = [client.tagged(b"LOGIN alice pa")[-1]]
                out.append(b"".join(client.tagged(b"SELECT INBOX")))
                out.append(b"".join(client.tagged(b"FETCH 1 (BODY.PEEK[])")))
                out.append(client.tagged(b"STORE 1 +FLAGS (\\Flagged)")[-1])
                return out
            finally:
                client.close()

        login, select, fetch, store = yield threads.deferToThread(imap)
        self.assertIn(b" OK ", login)
        self.assertIn(b"* 1 EXISTS", select)
        self.assertIn(b"Served by instance B.", fetch)
        self.assertIn(b"NO [NOPERM]", store)
        self.assertIn("storage-rpc: remote alice", self.b.log())
        self.assertIn("storage-rpc: alice", self.a.log())


class ClientCertificates(unittest.TestCase):
    """No shared secret: instance B verifies client certificates
    (``ssl_verify_client_cert = yes``, ``ssl_ca``); a peer with the
    trusted certificate gets in, one without is refused."""

    timeout = 120

    def setUp(self):
        from tests.certs import self_signed

        self.b = Master(users=[User("bob", "pb", extra="userdb_shared_with=alice")], ssl=True,
                        **privileged())
        self.addCleanup(self.b.cleanup)
        cert, key = self_signed("instance-a")
        self.client_pem = cert + key
        ca = os.path.join(self.b.dir, "peers.pem")
        with open(ca, "wb") as f:
            f.write(cert)
        sock = self.b.sockets["storage-rpc"] = listening_socket()
        self.port = sock.getsockname()[1]
        self.b.extra_config = (f"ssl_verify_client_cert = yes\nssl_ca = <{ca}\n"
                               "service storage-rpc {\n  inet_listener storage-rpc {\n"
                               f"    port = {self.port}\n  }}\n}}\n")
        self.b.write_config()
        return threads.deferToThread(self.b.start)

    @defer.inlineCallbacks
    def test_certificate_instead_of_secret(self):
        with open(self.b.cert_path, "rb") as f:
            trust = f.read()
        bad = tcp.connect("127.0.0.1", self.port, b"", "alice", "bob", trust,
                          tls_name="localhost")
        yield self.assertFailure(bad, AccessDenied)
        storage = yield tcp.connect("127.0.0.1", self.port, b"", "alice", "bob", trust,
                                    tls_name="localhost", client_pem=self.client_pem)
        self.addCleanup(storage.disconnect)
        status = yield storage.status("INBOX")
        self.assertEqual(status.messages, 0)
        self.assertIn("peer instance-a proved by its client certificate", self.b.log())
