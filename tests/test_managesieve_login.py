"""managesieve-login's pre-auth grammar against a fake backend (no processes).

Greeting and capability listing (settings change it), NOOP, LOGOUT,
unknown and post-login commands, AUTHENTICATE with an initial response,
with a continuation answered as a literal, aborted with ``"*"``,
plaintext refused on an untrusted cleartext connection, and an over-long
command (its literal skipped, never read as commands).
"""

from __future__ import annotations

import base64
import os

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.config.parser import parse_config
from pydovecot.login.interfaces import ILoginBackend
from pydovecot.login.managesieve import ManageSieveLoginFactory
from tests.login_fakes import FakeLoginBackend

PLAIN = base64.b64encode(b"\0alice\0secret")


class LoginTests(unittest.TestCase):
    def connect(self, conf: str = "", peer: str = "127.0.0.1", tls_available: bool = False):
        path = os.path.join(self.mktemp())
        os.makedirs(path)
        with open(os.path.join(path, "c.conf"), "w") as f:
            f.write(f"base_dir = {path}/run\nprotocols = sieve\n{conf}")
        self.backend = FakeLoginBackend()
        self.backend.tls_available = tls_available
        verifyObject(ILoginBackend, self.backend)
        factory = ManageSieveLoginFactory(self.backend, clock=Clock())
        factory.config = parse_config(os.path.join(path, "c.conf"))
        proto = factory.buildProtocol(IPv4Address("TCP", peer, 4321))
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 4321))
        proto.makeConnection(transport)
        return proto, transport

    def test_greeting_and_capability(self):
        proto, t = self.connect("protocol sieve {\n  managesieve_notify_capability = mailto\n"
                                "  managesieve_implementation_string = Test impl\n}\n",
                                tls_available=True)
        lines = t.value().split(b"\r\n")
        self.assertEqual(lines[0], b'"IMPLEMENTATION" "Test impl"')
        self.assertTrue(lines[1].startswith(b'"SIEVE" "fileinto '))
        self.assertEqual(lines[2:7], [b'"NOTIFY" "mailto"', b'"SASL" "PLAIN LOGIN"',
                                      b'"STARTTLS"', b'"VERSION" "1.0"', b'OK "pydovecot ready."'])
        t.clear()
        proto.dataReceived(b"CAPABILITY\r\nNOOP \"abc\"\r\nNOOP\r\n")
        out = t.value()
        self.assertIn(b'OK "Capability completed."\r\n', out)
        self.assertTrue(out.endswith(b'OK (TAG "abc") "Done"\r\nOK "NOOP Completed"\r\n'))

    def test_unknown_and_post_login_commands(self):
        proto, t = self.connect()
        t.clear()
        proto.dataReceived(b"FOO\r\nLISTSCRIPTS\r\nCAPABILITY x\r\n\"str\"\r\n")
        error = b'NO "Error in MANAGESIEVE command received by server."\r\n'
        self.assertEqual(t.value(), error * 2 + b'BYE "Too many invalid MANAGESIEVE commands."'
                         b"\r\n")
        self.assertTrue(t.disconnecting)

    def test_authenticate_initial_response_hands_off(self):
        proto, t = self.connect()
        t.clear()
        proto.dataReceived(b'AUTHENTICATE "PLAIN" "' + PLAIN + b'"\r\nLISTSCRIPTS\r\n')
        self.assertEqual(len(self.backend.handoffs), 1)
        handoff = self.backend.handoffs[0]
        self.assertEqual((handoff["user"], handoff["service"], handoff["tag"]),
                         ("alice", "sieve", None))
        self.assertEqual(handoff["pending"], b"LISTSCRIPTS\r\n")

    def test_continuation_as_literal_and_abort(self):
        proto, t = self.connect()
        t.clear()
        proto.dataReceived(b'AUTHENTICATE "PLAIN"\r\n')
        self.assertEqual(t.value(), b'""\r\n')
        proto.dataReceived(b'"*"\r\n')
        self.assertEqual(t.value(), b'""\r\nNO "Authentication aborted by client."\r\n')
        t.clear()
        proto.dataReceived(b'AUTHENTICATE "PLAIN"\r\n{%d+}\r\n%s\r\n' % (len(PLAIN), PLAIN))
        self.assertEqual(len(self.backend.handoffs), 1)

    def test_plaintext_refused_without_tls(self):
        proto, t = self.connect(peer="10.1.2.3")
        self.assertIn(b'"SASL" ""', t.value())  # PLAIN and LOGIN not advertised
        t.clear()
        proto.dataReceived(b'AUTHENTICATE "PLAIN" "' + PLAIN + b'"\r\n')
        self.assertEqual(t.value(), b'NO (ENCRYPT-NEEDED) "Plaintext authentication '
                         b'disallowed on non-secure (SSL/TLS) connections."\r\n')
        self.assertEqual(self.backend.handoffs, [])

    def test_overlong_command_literal_skipped(self):
        proto, t = self.connect()
        t.clear()
        body = b"NOOP\r\n" * 3000  # would be commands if it were not skipped
        proto.dataReceived(b'AUTHENTICATE "PLAIN" {%d+}\r\n' % len(body) + body + b"\r\n")
        proto.dataReceived(b"NOOP\r\n")
        self.assertEqual(t.value(), b'NO "Error in MANAGESIEVE command AUTHENTICATE: '
                         b'Too long argument."\r\nOK "NOOP Completed"\r\n')

    def test_logout(self):
        proto, t = self.connect()
        t.clear()
        proto.dataReceived(b"LOGOUT\r\n")
        self.assertEqual(t.value(), b'OK "Logout completed."\r\n')
        self.assertTrue(t.disconnecting)
