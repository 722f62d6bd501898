"""LMTP extensions and settings: CHUNKING bounds, SMTPUTF8, DSN parameters,
XCLIENT, STARTTLS, lmtp_hdr_delivery_address, lmtp_user_concurrency_limit,
lmtp_rcpt_check_quota (fake backend), and the +detail mailbox delivery.
Reply texts are Dovecot 2.3's where Dovecot has the command (as probed
against Debian's lmtp; the plain script is compared live in
tests/test_lmtp_dovecot.py)."""

from __future__ import annotations

import io
import ipaddress
import os
import socket

from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pydovecot.lmtp.interfaces import IDeliveryBackend
from pydovecot.lmtp.protocol import LMTPFactory, LMTPSettings
from pydovecot.mailproc import delivery
from tests.login_fakes import ListeningMixin, client_tls_context, server_tls_context

USERS = {"alice@example.com": "alice", "bob@example.com": "bob", "alice": "alice"}


@implementer(IDeliveryBackend)
class Backend:
    """Answers at once; ``quota`` maps users to over-quota texts."""

    def __init__(self):
        self.delivered: list[tuple[str, bytes, str, str]] = []
        self.quota: dict[str, str] = {}
        self.quota_calls: list[tuple[str, int]] = []
        self.hold: defer.Deferred | None = None

    def lookup(self, address):
        user = USERS.get(address.split("+")[0] if "+" in address else address)
        if user is None and "+" in address:
            local, _, dom = address.partition("@")
            user = USERS.get(local.split("+")[0] + "@" + dom)
        return defer.succeed(None if user is None else {"user": user})

    def deliver(self, user, fields, message_fd, sender, recipient, session="", msgid="",
                orig_recipient=None):
        size = os.fstat(message_fd).st_size
        self.delivered.append((user, os.pread(message_fd, size, 0), sender, recipient))
        return self.hold if self.hold is not None else defer.succeed(None)

    def check_quota(self, user, fields, size):
        self.quota_calls.append((user, size))
        return defer.succeed(self.quota.get(user))


def session(settings: LMTPSettings | None = None, peer: str = "192.0.2.1",
            backend: Backend | None = None):
    backend = backend or Backend()
    verifyObject(IDeliveryBackend, backend)
    factory = LMTPFactory(backend, "mx.example.com", 0, clock=Clock(),
                          settings=settings or LMTPSettings(hostname="mx.example.com",
                                                            max_size=1000))
    proto = factory.buildProtocol(None)
    t = StringTransport(peerAddress=IPv4Address("TCP", peer, 4321))
    proto.makeConnection(t)
    t.clear()
    return proto, t, backend, factory


def send(proto, t, data: bytes) -> list[bytes]:
    t.clear()
    proto.dataReceived(data)
    return t.value().split(b"\r\n")[:-1]


class ChunkingTests(unittest.TestCase):
    def test_bdat_mixing_and_bounds(self):
        proto, t, backend, _ = session()
        send(proto, t, b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\n")
        self.assertEqual(send(proto, t, b"BDAT 4\r\nab\r\n"), [b"250 2.0.0 Added 4 octets"])
        self.assertEqual(send(proto, t, b"DATA\r\n"), [b"503 5.5.0 Bad sequence of commands"])
        # the chunk's octets arrive in pieces; a command inside is data
        self.assertEqual(send(proto, t, b"BDAT 10 LAST\r\nQUIT\r\n"), [])
        r = send(proto, t, b"xyzw")
        self.assertEqual(len(r), 1)
        self.assertRegex(r[0], rb"^250 2.0.0 <alice@example.com> \S+ Saved$")
        self.assertTrue(backend.delivered[0][1].endswith(b"\r\nab\r\nQUIT\r\nxyzw"))
        # too big: the chunk is refused, then every chunk until RSET
        send(proto, t, b"MAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\n")
        self.assertEqual(send(proto, t, b"BDAT 1001\r\n" + b"x" * 1001),
                         [b"552 5.3.4 Message size exceeds administrative limit"])
        self.assertEqual(send(proto, t, b"BDAT 2 LAST\r\nxx"),
                         [b"503 5.5.0 Previous data chunk failed, issue RSET first"])
        self.assertEqual(send(proto, t, b"RSET\r\nNOOP\r\n"), [b"250 2.0.0 OK", b"250 2.0.0 OK"])
        self.assertEqual(len(backend.delivered), 1)
        # a refused BDAT's octets are skipped, not parsed as commands
        self.assertEqual(send(proto, t, b"BDAT 6 FOO\r\nNOOP\r\nNOOP\r\n"),
                         [b"501 5.5.4 Invalid end marker parameter", b"250 2.0.0 OK"])
        self.assertEqual(send(proto, t, b"BDAT\r\n"),
                         [b"501 5.5.4 Invalid chunk size parameter"])


class ParameterTests(unittest.TestCase):
    def test_smtputf8_dsn_size(self):
        proto, t, backend, _ = session()
        lhlo = send(proto, t, b"LHLO x\r\n")
        for cap in (b"250-CHUNKING", b"250-DSN", b"250-SIZE 1000", b"250 SMTPUTF8"):
            self.assertIn(cap, lhlo)
        self.assertNotIn(b"250-STARTTLS", lhlo)
        self.assertFalse(any(b"XCLIENT" in x for x in lhlo))
        self.assertEqual(send(proto, t, "MAIL FROM:<jörg@example.org>\r\n".encode()),
                         [b"553 5.6.7 Non-ASCII address requires SMTPUTF8"])
        self.assertEqual(send(proto, t, b"MAIL FROM:<a@b> SIZE=1001\r\n"),
                         [b"552 5.3.4 Message size exceeds fixed maximum message size"])
        self.assertEqual(send(proto, t, b"MAIL FROM:<a@b> RET=ALL\r\n"),
                         [b"501 5.5.4 Invalid RET parameter"])
        self.assertEqual(send(proto, t, "MAIL FROM:<jörg@example.org> SMTPUTF8 RET=HDRS "
                                        "ENVID=x+2By SIZE=100 BODY=8BITMIME\r\n".encode()),
                         [b"250 2.1.0 OK"])
        self.assertEqual(proto.txn.envid, "x+y")
        self.assertEqual(send(proto, t, b"RCPT TO:<alice@example.com> NOTIFY=NEVER,DELAY\r\n"),
                         [b"501 5.5.4 Invalid NOTIFY parameter"])
        self.assertEqual(send(proto, t, b"RCPT TO:<alice@example.com> ORCPT=bogus\r\n"),
                         [b"501 5.5.4 Invalid ORCPT parameter"])
        self.assertEqual(send(proto, t, b"RCPT TO:<alice@example.com> NOTIFY=SUCCESS,FAILURE "
                                        b"ORCPT=rfc822;Alice+2Bx@example.com\r\n"),
                         [b"250 2.1.5 OK"])
        self.assertEqual(proto.txn.recipients[0].orcpt, "Alice+x@example.com")


class HeaderTests(unittest.TestCase):
    def deliver(self, mode: str, received: bool = True) -> bytes:
        proto, t, backend, _ = session(LMTPSettings(hostname="mx.example.com",
                                                    hdr_delivery_address=mode,
                                                    add_received_header=received))
        send(proto, t, b"LHLO mta\r\nMAIL FROM:<b@x>\r\n"
                       b"RCPT TO:<alice@example.com> ORCPT=rfc822;orig@example.com\r\n"
                       b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        return backend.delivered[0][1]

    def test_delivery_address_modes(self):
        self.assertRegex(self.deliver("final"),
                         rb"^Return-Path: <b@x>\r\nDelivered-To: alice@example.com\r\n"
                         rb"Received: from mta \(\[192.0.2.1\]\)\r\n\tby mx.example.com with "
                         rb"LMTP\r\n\tid \S+\r\n\t\(envelope-from <b@x>\)\r\n\tfor "
                         rb"<alice@example.com>; [^\r]+\r\nSubject: x\r\n")
        self.assertRegex(self.deliver("original"),
                         rb"^Return-Path: <b@x>\r\nDelivered-To: orig@example.com\r\n"
                         rb"Received: [^;]+\tfor <orig@example.com>; ")
        none = self.deliver("none")
        self.assertRegex(none, rb"^Return-Path: <b@x>\r\nReceived: [^;]+\(envelope-from "
                               rb"<b@x>\); ")
        self.assertNotIn(b"Delivered-To", none)
        self.assertEqual(self.deliver("final", received=False),
                         b"Return-Path: <b@x>\r\nDelivered-To: alice@example.com\r\n"
                         b"Subject: x\r\n\r\nhi\r\n")


class XclientTests(unittest.TestCase):
    def settings(self) -> LMTPSettings:
        return LMTPSettings(hostname="mx.example.com", greeting="Dovecot ready.",
                            trusted_networks=[ipaddress.ip_network("192.0.2.0/24")])

    def test_untrusted(self):
        proto, t, _, _ = session(self.settings(), peer="198.51.100.7")
        self.assertEqual(send(proto, t, b"XCLIENT ADDR=10.0.0.1\r\n"),
                         [b"550 5.7.14 You are not from trusted IP"])

    def test_trusted(self):
        proto, t, backend, _ = session(self.settings())
        lhlo = send(proto, t, b"LHLO x\r\n")
        self.assertIn(b"250 XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT", lhlo)
        self.assertEqual(send(proto, t, b"XCLIENT ADDR=bad\r\n"),
                         [b"501 5.5.4 Invalid ADDR parameter"])
        self.assertEqual(send(proto, t, b"XCLIENT ADDR=10.1.2.3 PORT=4444 HELO=foo.example "
                                        b"LOGIN=bob TTL=5 TIMEOUT=100 PROTO=ESMTP\r\n"),
                         [b"220 mx.example.com Dovecot ready."])
        self.assertEqual((proto.remote_ip, proto.remote_port, proto.login), ("10.1.2.3", 4444,
                                                                            "bob"))
        self.assertEqual(proto.idle_timeout, 100.0)
        send(proto, t, b"LHLO y\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@example.com>\r\n"
                       b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        self.assertIn(b"Received: from y ([10.1.2.3])\r\n", backend.delivered[0][1])
        self.assertEqual(send(proto, t, b"XCLIENT ADDR=IPV6:2001:db8::1\r\n"),
                         [b"220 mx.example.com Dovecot ready."])
        self.assertEqual(proto.remote_ip, "2001:db8::1")


class LimitTests(unittest.TestCase):
    def test_user_concurrency_limit(self):
        settings = LMTPSettings(hostname="mx", user_concurrency_limit=1)
        backend = Backend()
        p1, t1, _, factory = session(settings, backend=backend)
        p2 = factory.buildProtocol(None)
        t2 = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.2", 1))
        p2.makeConnection(t2)
        send(p1, t1, b"LHLO x\r\nMAIL FROM:<a@b>\r\n")
        self.assertEqual(send(p1, t1, b"RCPT TO:<alice@example.com>\r\n"), [b"250 2.1.5 OK"])
        self.assertEqual(send(p2, t2, b"LHLO x\r\nMAIL FROM:<a@b>\r\n"
                                      b"RCPT TO:<alice@example.com>\r\n"
                                      b"RCPT TO:<bob@example.com>\r\n")[-2:],
                         [b"451 4.3.0 <alice@example.com> Too many concurrent deliveries "
                          b"for user", b"250 2.1.5 OK"])
        # the first delivery is in flight: still counted; then released
        backend.hold = defer.Deferred()
        send(p1, t1, b"DATA\r\nSubject: x\r\n\r\n.\r\n")
        self.assertEqual(factory.user_deliveries, {"alice": 1, "bob": 1})
        backend.hold.callback(None)
        send(p2, t2, b"RSET\r\n")
        self.assertEqual(factory.user_deliveries, {})
        self.assertEqual(send(p2, t2, b"MAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\n"),
                         [b"250 2.1.0 OK", b"250 2.1.5 OK"])
        p2.connectionLost(None)
        self.assertEqual(factory.user_deliveries, {})

    def test_rcpt_check_quota(self):
        backend = Backend()
        backend.quota["alice"] = "552 5.2.2 <alice@example.com> Quota exceeded (mailbox for " \
                                 "user is full)"
        proto, t, _, _ = session(LMTPSettings(hostname="mx", rcpt_check_quota=True),
                                 backend=backend)
        self.assertEqual(send(proto, t, b"LHLO x\r\nMAIL FROM:<a@b> SIZE=321\r\n"
                                        b"RCPT TO:<alice@example.com>\r\n"
                                        b"RCPT TO:<bob@example.com>\r\n")[-2:],
                         [backend.quota["alice"].encode(), b"250 2.1.5 OK"])
        self.assertEqual(backend.quota_calls, [("alice", 321), ("bob", 321)])
        # off: never asked
        backend2 = Backend()
        proto, t, _, _ = session(LMTPSettings(hostname="mx"), backend=backend2)
        send(proto, t, b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\n")
        self.assertEqual(backend2.quota_calls, [])


class StartTLSTests(ListeningMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_starttls(self):
        backend = Backend()
        settings = LMTPSettings(hostname="mx.example.com", tls_context=server_tls_context())
        port = self.listen(LMTPFactory(backend, "mx", 0, settings=settings))

        def run():
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            f = s.makefile("rb")
            out = [f.readline()]
            s.sendall(b"LHLO x\r\n")
            while True:
                line = f.readline()
                out.append(line)
                if line[3:4] == b" ":
                    break
            s.sendall(b"STARTTLS x\r\nSTARTTLS\r\n")
            out += [f.readline(), f.readline()]
            tls = client_tls_context().wrap_socket(s)
            tf = tls.makefile("rb")
            tls.sendall(b"STARTTLS\r\nLHLO y\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>"
                        b"\r\nDATA\r\n")
            lines = []
            while not lines or not lines[-1].startswith(b"354"):
                lines.append(tf.readline())
            tls.sendall(b"Subject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n")
            lines += [tf.readline(), tf.readline()]
            tls.close()
            return out, lines

        out, lines = yield threads.deferToThread(run)
        self.assertIn(b"250 STARTTLS\r\n", out)
        self.assertEqual(out[-2:], [b"501 5.5.4 Invalid parameters\r\n",
                                    b"220 2.0.0 Begin TLS negotiation now.\r\n"])
        self.assertEqual(lines[0], b"502 5.5.1 TLS is already active.\r\n")
        self.assertFalse(any(b"STARTTLS" in x for x in lines[1:]))
        self.assertRegex(lines[-2], rb"^250 2.0.0 <alice@example.com> \S+ Saved")
        self.assertRegex(backend.delivered[0][1],
                         rb"Received: from y \(\[127.0.0.1\]\)\r\n\t\(using TLSv1.[23] with "
                         rb"cipher \S+ \(\d+/\d+ bits\)\)\r\n\tby mx.example.com with LMTPS\r\n")


class Config:
    def __init__(self, **values):
        self.values = values

    def get(self, key, protocol=None):
        return self.values.get(key, {"recipient_delimiter": "+"}.get(key, ""))


class FakeStorage:
    """Mailboxes by name; ``creatable`` says whether create works."""

    def __init__(self, creatable=True):
        self.boxes = {"INBOX": []}
        self.subscribed: list[str] = []
        self.creatable = creatable

    def status(self, name):
        from pydovecot.storage.interfaces import MailboxNotFound
        if name not in self.boxes:
            raise MailboxNotFound(name)
        return defer.succeed(None)

    def create(self, name):
        from pydovecot.storage.interfaces import StorageError
        if not self.creatable:
            raise StorageError("no")
        self.boxes[name] = []
        return defer.succeed(None)

    def subscribe(self, name):
        self.subscribed.append(name)
        return defer.succeed(None)

    def append(self, name, message, flags=()):
        self.boxes[name].append(message.read())
        return defer.succeed((1, len(self.boxes[name])))


class DetailMailboxTests(unittest.TestCase):
    def run_delivery(self, config, storage, rcpt):
        d = delivery.deliver(config, storage, "alice", {}, io.BytesIO(b"Subject: x\r\n\r\n"),
                             "s", "<m>", "a@b", rcpt, "lmtp(alice)")
        return self.successResultOf(d)

    def test_detail_autocreate_and_fallback(self):
        on = Config(lmtp_save_to_detail_mailbox="yes", lda_mailbox_autocreate="yes",
                    lda_mailbox_autosubscribe="yes")
        storage = FakeStorage()
        self.assertEqual(self.run_delivery(on, storage, "alice+Lists@x")["mailbox"], "Lists")
        self.assertEqual(storage.subscribed, ["Lists"])
        # off: INBOX
        self.assertEqual(self.run_delivery(Config(), storage, "alice+Lists@x")["mailbox"],
                         "INBOX")
        # no autocreate, missing: INBOX; existing: there
        noauto = Config(lmtp_save_to_detail_mailbox="yes")
        self.assertEqual(self.run_delivery(noauto, storage, "alice+Other@x")["mailbox"],
                         "INBOX")
        self.assertEqual(self.run_delivery(noauto, storage, "alice+Lists@x")["mailbox"],
                         "Lists")
        # cannot be created: INBOX
        self.assertEqual(self.run_delivery(on, FakeStorage(creatable=False),
                                           "alice+New@x")["mailbox"], "INBOX")
        # names that would leave the user's tree: INBOX
        for bad in ("alice+../x@x", "alice+/etc@x", "alice+@x"):
            self.assertEqual(self.run_delivery(on, FakeStorage(), bad)["mailbox"], "INBOX")
        self.assertEqual(len(storage.boxes["Lists"]), 2)


class OriginalRecipientTests(unittest.TestCase):
    def test_lda_original_recipient_header(self):
        raw = b"X-Original-To: <orig@example.com>\r\nSubject: x\r\n\r\nbody\r\n"
        self.assertEqual(delivery.original_recipient(
            Config(lda_original_recipient_header="X-Original-To"), raw), "orig@example.com")
        self.assertIsNone(delivery.original_recipient(Config(), raw))
        self.assertIsNone(delivery.original_recipient(
            Config(lda_original_recipient_header="X-Envelope-To"), raw))


class SettingsTests(unittest.TestCase):
    def test_implemented_settings_load(self):
        from pydovecot.config import load_config

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("lmtp_save_to_detail_mailbox = yes\nlda_mailbox_autocreate = yes\n"
                    "lda_mailbox_autosubscribe = yes\nlmtp_hdr_delivery_address = original\n"
                    "lmtp_add_received_header = no\nlmtp_user_concurrency_limit = 3\n"
                    "lda_original_recipient_header = X-Original-To\n"
                    "login_trusted_networks = 10.0.0.0/8\n")
        config = load_config(path)
        s = LMTPSettings.from_config(config, "mx", 0)
        self.assertEqual((s.hdr_delivery_address, s.add_received_header,
                          s.user_concurrency_limit, s.rcpt_check_quota),
                         ("original", False, 3, False))
        self.assertEqual([str(n) for n in s.trusted_networks], ["10.0.0.0/8"])
        self.assertEqual(delivery.detail_mailbox(config, "a+B@x"), "B")
        with open(path, "a") as f:
            f.write("lmtp_hdr_delivery_address = sometimes\n")
        from pydovecot.config import ConfigError
        self.assertRaises(ConfigError, load_config, path)


class PostmasterTests(unittest.TestCase):
    def test_postmaster_address(self):
        """The From of rejection mails (Sieve reject), as Dovecot: the
        setting, its default being postmaster@ the recipient's domain."""
        from pydovecot.config import settings as S

        self.assertIn("postmaster_address", S.IMPLEMENTED)
        self.assertNotIn("postmaster_address", S.WARNED)
        for value, want in (("pm@example.net", "pm@example.net"),
                            (S.DOVECOT_DEFAULTS["postmaster_address"], "postmaster@x.org")):
            sieve = delivery._Sieve(Config(postmaster_address=value), FakeStorage(), "alice", {},
                                    "a@b", "alice@x.org", "s", "<m>", "p")
            self.assertEqual(sieve.postmaster(), want)
