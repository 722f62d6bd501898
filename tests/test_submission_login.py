"""Tests for pydovecot.login.submission with the fake backend, over 127.0.0.1."""

from __future__ import annotations

import base64
import socket

from twisted.internet import defer, threads
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.login.interfaces import ILoginBackend
from pydovecot.login.submission import SubmissionLoginFactory
from tests.login_fakes import (
    FakeLoginBackend,
    ListeningMixin,
    UntrustedMixin,
    client_tls_context,
    server_tls_context,
)

PLAIN = base64.b64encode(b"\0alice\0secret")


class UntrustedSubmissionFactory(UntrustedMixin, SubmissionLoginFactory):
    pass


def reply(f) -> list[bytes]:
    lines = []
    while True:
        line = f.readline()
        if not line:
            return lines + [b"<eof>"]
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return lines


def converse(port: int, commands: list[bytes], tls_after: bytes | None = None) -> list[list[bytes]]:
    s = socket.create_connection(("127.0.0.1", port), 5)
    f = s.makefile("rb")
    out = [reply(f)]
    try:
        for cmd in commands:
            s.sendall(cmd + b"\r\n")
            out.append(reply(f))
            if cmd == tls_after:
                s = client_tls_context().wrap_socket(s, server_hostname="localhost")
                f = s.makefile("rb")
    finally:
        s.close()
    return out


class SubmissionLoginTests(ListeningMixin, unittest.TestCase):
    def setUp(self):
        self.backend = FakeLoginBackend(server_tls_context())
        verifyObject(ILoginBackend, self.backend)
        factory = UntrustedSubmissionFactory(self.backend, False)
        self.port = self.listen(factory)

    @defer.inlineCallbacks
    def test_plaintext_refused_then_starttls_and_auth(self):
        out = yield threads.deferToThread(converse, self.port, [
            b"AUTH PLAIN " + PLAIN, b"EHLO client.test", b"MAIL FROM:<a@b>",
            b"AUTH PLAIN " + PLAIN, b"STARTTLS", b"EHLO client.test", b"AUTH PLAIN " + PLAIN,
        ], tls_after=b"STARTTLS")
        self.assertTrue(out[0][0].startswith(b"220 "))
        self.assertEqual(out[1], [b"503 5.5.1 Bad sequence of commands: EHLO first"])
        self.assertIn(b"250-STARTTLS", out[2])
        self.assertNotIn(b"250-AUTH PLAIN LOGIN", out[2])  # not before TLS
        self.assertEqual(out[3], [b"530 5.7.0 Authentication required."])
        self.assertTrue(out[4][0].startswith(b"538 5.7.11 "))
        self.assertEqual(out[5], [b"220 2.0.0 Begin TLS negotiation now."])
        self.assertIn(b"250-AUTH PLAIN LOGIN", out[6])
        self.assertNotIn(b"250-STARTTLS", out[6])
        [handoff] = self.backend.handoffs
        self.assertEqual((handoff["user"], handoff["service"], handoff["tag"]),
                         ("alice", "submission", b"client.test"))

    @defer.inlineCallbacks
    def test_bad_input_gets_smtp_errors(self):
        out = yield threads.deferToThread(converse, self.port, [
            b"EHLO", b"EHLO bad domain!", b"FOO", b"\xff\xfe", b"A" * 5000, b"EHLO ok.test",
            b"AUTH", b"AUTH NOPE", b"AUTH PLAIN ###", b"QUIT",
        ])
        codes = [x[-1][:3] for x in out[1:]]
        self.assertEqual(codes, [b"501", b"501", b"500", b"500", b"500", b"250", b"501",
                                 b"504", b"501", b"221"])
