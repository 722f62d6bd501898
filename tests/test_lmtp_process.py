"""LMTP through the real master: STARTTLS with the ``ssl`` settings and
XCLIENT from ``login_trusted_networks`` in the lmtp process, down to the
stored message's Received: header."""

from __future__ import annotations

import glob
import os
import socket

from twisted.trial import unittest

from tests.harness import Master, User, privileged
from tests.login_fakes import client_tls_context


def lines_until_final(f) -> list[bytes]:
    out = []
    while True:
        line = f.readline()
        if not line:
            return out
        out.append(line.rstrip(b"\r\n"))
        if line[3:4] == b" ":
            return out


class LMTPProcessTests(unittest.TestCase):
    timeout = 180

    def test_starttls_and_xclient(self):
        master = Master(users=[User("alice", "secret")], ssl=True,
                        extra_config="login_trusted_networks = 127.0.0.0/8\n"
                                     "hostname = mx.example.com\n", **privileged())
        self.addCleanup(master.cleanup)
        master.start()
        s = socket.create_connection(("127.0.0.1", master.ports["lmtp"]), timeout=20)
        self.addCleanup(s.close)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"LHLO mta\r\n")
        caps = lines_until_final(f)
        self.assertIn(b"250-STARTTLS", caps)
        self.assertIn(b"250 XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT", caps)
        s.sendall(b"XCLIENT ADDR=192.0.2.7 PORT=2525\r\n")
        self.assertTrue(f.readline().startswith(b"220 mx.example.com "))
        s.sendall(b"STARTTLS\r\n")
        self.assertEqual(f.readline(), b"220 2.0.0 Begin TLS negotiation now.\r\n")
        tls = client_tls_context().wrap_socket(s)
        tf = tls.makefile("rb")
        tls.sendall(b"LHLO relay.example.org\r\n")
        caps = lines_until_final(tf)
        self.assertNotIn(b"250-STARTTLS", caps)
        tls.sendall(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice>\r\nDATA\r\n")
        self.assertEqual([lines_until_final(tf)[-1][:3] for _ in range(3)],
                         [b"250", b"250", b"354"])
        tls.sendall(b"Subject: tls\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        self.assertRegex(tf.readline(), rb"^250 2.0.0 <alice> \S+ Saved")
        [path] = glob.glob(os.path.join(master.dir, "home", "alice", "Maildir", "new", "*"))
        with open(path, "rb") as fh:
            data = fh.read()
        # (Maildir keeps LF line ends, as Dovecot's)
        self.assertRegex(data, rb"^Return-Path: <bob@example.org>\nDelivered-To: alice\n"
                               rb"Received: from relay.example.org \(\[192.0.2.7\]\)\n"
                               rb"\t\(using TLSv1.[23] with cipher \S+ \(\d+/\d+ bits\)\)\n"
                               rb"\tby mx.example.com with LMTPS\n")
        tls.close()
