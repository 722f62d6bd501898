"""TLS settings through the real master, checked with ``openssl s_client`` (issue 11).

``local_name NAME { ssl_cert ssl_key }`` by SNI, ``ssl_alt_cert`` (an ECDSA
certificate next to the RSA one), ``ssl_cipher_list``, ``ssl_cipher_suites``,
``ssl_curve_list`` and ``ssl_prefer_server_ciphers = no``; a value OpenSSL
can't apply stops the start with a Fatal naming FILE:LINE.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.certs import self_signed
from tests.harness import IN_CI, Master, User, privileged


def rsa_self_signed(name: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def write_pair(d: str, stem: str, pair: tuple[bytes, bytes]) -> tuple[str, str]:
    cert, key = os.path.join(d, f"{stem}.pem"), os.path.join(d, f"{stem}.key")
    with open(cert, "wb") as f:
        f.write(pair[0])
    with open(key, "wb") as f:
        f.write(pair[1])
    os.chmod(key, 0o600)
    return cert, key


def s_client(port: int, *args: str) -> str:
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief", *args],
        input=b"a LOGOUT\r\n", capture_output=True, timeout=30)
    return (proc.stdout + proc.stderr).decode(errors="replace")


class TLSSettingsTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            if IN_CI:
                self.fail("openssl is required")
            raise SkipTest("no openssl")
        self.master = Master(users=[User("alice", "secret")], ssl=True, **privileged())
        self.addCleanup(self.master.cleanup)
        d = self.master.dir
        rsa_cert, rsa_key = write_pair(d, "rsa", rsa_self_signed("rsa.example"))
        sni_cert, sni_key = write_pair(d, "sni", self_signed("mail.example.com"))
        self.master.extra_config = f"""
ssl_cert = <{rsa_cert}
ssl_key = <{rsa_key}
ssl_alt_cert = <{self.master.cert_path}
ssl_alt_key = <{self.master.key_path}
ssl_cipher_list = ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384
ssl_cipher_suites = TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
ssl_curve_list = P-384:P-256
ssl_prefer_server_ciphers = no
local_name mail.example.com {{
  ssl_cert = <{sni_cert}
  ssl_key = <{sni_key}
}}
"""
        self.master.write_config()
        self.master.start()
        self.port = self.master.ports["imaps"]

    def test_sni_picks_the_local_name_certificate(self) -> None:
        out = s_client(self.port, "-servername", "mail.example.com")
        self.assertIn("CN = mail.example.com", out)
        out = s_client(self.port, "-servername", "other.example.com", "-tls1_2",
                       "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
        self.assertIn("CN = rsa.example", out)

    def test_alt_certificate_and_cipher_list(self) -> None:
        out = s_client(self.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertIn("CN = localhost", out)  # the ECDSA ssl_alt_cert
        out = s_client(self.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
        self.assertIn("CN = rsa.example", out)
        # Not in ssl_cipher_list (Twisted's defaults would take it).
        out = s_client(self.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
        self.assertNotIn("Ciphersuite: ECDHE-RSA-AES128-GCM-SHA256", out)
        self.assertIn("alert", out.lower())

    def test_tls13_suites_client_preference_and_curves(self) -> None:
        out = s_client(self.port, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
        self.assertNotIn("Ciphersuite: TLS_AES_128_GCM_SHA256", out)
        # ssl_prefer_server_ciphers = no: the client's order wins.
        out = s_client(self.port, "-tls1_3", "-ciphersuites",
                       "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384")
        self.assertIn("Ciphersuite: TLS_CHACHA20_POLY1305_SHA256", out)
        out = s_client(self.port, "-tls1_3", "-groups", "X25519")
        self.assertNotIn("Ciphersuite:", out)
        out = s_client(self.port, "-tls1_3", "-groups", "X25519:P-384")
        self.assertIn("secp384r1", out)


class TLSFatalTests(SynchronousTestCase):
    def test_unusable_cipher_list_is_fatal_with_file_and_line(self) -> None:
        master = Master(users=[User("alice", "secret")], ssl=True,
                        extra_config="ssl_cipher_list = NOSUCHCIPHER\n", **privileged())
        self.addCleanup(master.cleanup)
        proc = master.spawn()
        self.assertEqual(proc.wait(60), 89, master.output())
        self.assertRegex(master.output(), r"pydovecot\.conf:\d+: TLS: ssl_cipher_list = "
                                          r"NOSUCHCIPHER: no usable cipher")


class DHAndOptionsTests(SynchronousTestCase):
    """``ssl_dh`` (Debian's /usr/share/dovecot/dh.pem) enables DHE suites;
    ``ssl_options`` takes Dovecot's two options; anything else is Fatal."""

    def test_dhe_with_debian_parameters(self) -> None:
        dh = "/usr/share/dovecot/dh.pem"
        if not os.path.exists(dh) or shutil.which("openssl") is None:
            if IN_CI:
                self.fail("Debian's dh.pem and openssl are required")
            raise SkipTest("no dh.pem")
        rsa_pair = rsa_self_signed("rsa.example")
        master = Master(users=[User("alice", "secret")], ssl=True, **privileged())
        self.addCleanup(master.cleanup)
        cert, key = write_pair(master.dir, "rsa", rsa_pair)
        master.extra_config = (f"ssl_cert = <{cert}\nssl_key = <{key}\nssl_dh = <{dh}\n"
                               "ssl_options = no_compression no_ticket\n"
                               "ssl_cipher_list = DHE-RSA-AES256-GCM-SHA384\n")
        master.write_config()
        master.start()
        out = s_client(master.ports["imaps"], "-tls1_2", "-cipher", "DHE-RSA-AES256-GCM-SHA384")
        self.assertIn("Ciphersuite: DHE-RSA-AES256-GCM-SHA384", out)

    def test_unknown_ssl_option_is_fatal(self) -> None:
        master = Master(users=[User("alice", "secret")], ssl=True,
                        extra_config="ssl_options = no_such_option\n", **privileged())
        self.addCleanup(master.cleanup)
        self.assertEqual(master.spawn().wait(60), 89, master.output())
        self.assertRegex(master.output(), r"pydovecot\.conf:\d+: TLS: ssl_options = "
                                          r"no_such_option: unknown option")
