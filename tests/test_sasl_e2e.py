"""SASL end to end: a real master, imap-login and authd, driven over sockets.

imaplib's ``authenticate()`` with our own SCRAM client (tests.test_sasl_mechs)
does CRAM-MD5 on a plaintext connection and SCRAM-SHA-256-PLUS over
STARTTLS with TLS 1.2 and ``tls-unique`` taken from Python's ssl module, so
the binding data the login process computed from its side of the TLS
session must match the client's.
"""

from __future__ import annotations

import atexit
import hmac
import imaplib
import os
import ssl

from twisted.trial import unittest

from tests.harness import Master, ensure_system_user
from tests.test_sasl_mechs import SCRAMClient

MECHS = "plain login cram-md5 scram-sha-256 scram-sha-256-plus"


_MASTER: Master | None = None


def shared_master() -> Master:
    """One master for the module (trial has no setUpClass), stopped at exit."""
    global _MASTER
    if _MASTER is None:
        kwargs = {}
        if os.getuid() == 0:  # as test_process does: real users and privileges
            for name in ("pydovecot-null", "pydovecot", "pdvmail"):
                ensure_system_user(name)
            kwargs = dict(login_user="pydovecot-null", internal_user="pydovecot",
                          mail_uid="pdvmail")
        master = Master(ssl=True, extra_config=f"auth_mechanisms = {MECHS}\n", **kwargs)
        with open(os.path.join(master.dir, "users.passwd"), "w") as f:
            f.write("alice:{PLAIN}secret::::::\n")
        atexit.register(master.cleanup)
        master.start()
        _MASTER = master
    return _MASTER


class SASLEndToEnd(unittest.TestCase):
    def setUp(self) -> None:
        self.master = shared_master()

    def connect(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.master.ports["imap"], timeout=15)
        self.addCleanup(self._close, imap)
        return imap

    @staticmethod
    def _close(imap: imaplib.IMAP4) -> None:
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    def starttls(self, imap: imaplib.IMAP4) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # tls-unique is TLS <= 1.2
        imap.starttls(context)

    def scram(self, imap: imaplib.IMAP4, mech: str, client: SCRAMClient):
        steps = iter([lambda _: client.first(), client.final, lambda v: self.check_v(v, client)])
        return imap.authenticate(mech, lambda challenge: next(steps)(challenge))

    def check_v(self, server_final: bytes, client: SCRAMClient) -> bytes:
        self.assertEqual(server_final, b"v=" + client.server_signature)
        return b""

    def test_cram_md5(self) -> None:
        imap = self.connect()
        self.assertIn("AUTH=CRAM-MD5", imap.capabilities)
        typ, _ = imap.login_cram_md5("alice", "secret")
        self.assertEqual(typ, "OK")
        self.assertEqual(imap.select("INBOX")[0], "OK")

    def test_cram_md5_wrong_password(self) -> None:
        imap = self.connect()

        def answer(challenge: bytes) -> bytes:
            return b"alice " + hmac.new(b"wrong", challenge, "md5").hexdigest().encode()

        with self.assertRaises(imaplib.IMAP4.error):
            imap.authenticate("CRAM-MD5", answer)

    def test_plus_only_with_tls(self) -> None:
        imap = self.connect()
        self.assertIn("AUTH=SCRAM-SHA-256", imap.capabilities)
        self.assertNotIn("AUTH=SCRAM-SHA-256-PLUS", imap.capabilities)
        self.starttls(imap)
        self.assertIn("AUTH=SCRAM-SHA-256-PLUS", imap.capabilities)

    def test_scram_sha_256_plus(self) -> None:
        imap = self.connect()
        self.starttls(imap)
        binding = imap.sock.get_channel_binding("tls-unique")
        self.assertTrue(binding)
        client = SCRAMClient("sha256", "alice", "secret", cb_type="tls-unique", cb_data=binding)
        typ, _ = self.scram(imap, "SCRAM-SHA-256-PLUS", client)
        self.assertEqual(typ, "OK")
        self.assertEqual(imap.select("INBOX")[0], "OK")

    def test_scram_sha_256_plus_wrong_binding(self) -> None:
        imap = self.connect()
        self.starttls(imap)
        client = SCRAMClient("sha256", "alice", "secret", cb_type="tls-unique",
                             cb_data=b"\0" * 12)
        with self.assertRaises(imaplib.IMAP4.error):
            self.scram(imap, "SCRAM-SHA-256-PLUS", client)

    def test_scram_sha_256_plain_connection(self) -> None:
        imap = self.connect()
        client = SCRAMClient("sha256", "alice", "secret")
        typ, _ = self.scram(imap, "SCRAM-SHA-256", client)
        self.assertEqual(typ, "OK")
