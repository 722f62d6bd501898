"""A self-signed certificate for the embedded default config, made on first start.

As Debian's package does at install time, a first run without a certificate
gets one: ``provide(cfg)`` writes ``STATE_DIR/ssl/pydovecot.pem`` and
``pydovecot.key`` (0600) when missing and points ``ssl_cert``/``ssl_key`` at
them, so the embedded default's imaps/pop3s listeners and STARTTLS work with
no Error line.  Only for a config that names no certificate; the master
calls it for the embedded default only.  Trusts the config; writes only under
its state_dir.
"""

from __future__ import annotations

import datetime
import os
import socket

from pydovecot.config.parser import Config

CERT_NAME = "pydovecot.pem"
KEY_NAME = "pydovecot.key"
DAYS = 3650


def _generate(common_name: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=DAYS))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(common_name), x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def provide(cfg: Config) -> bool:
    """Point a config without a certificate at the state dir's self-signed
    one, making it if missing; True if the config now has one."""
    if cfg.get("ssl") == "no" or cfg.get("ssl_cert") or cfg.get("ssl_key"):
        return False
    directory = os.path.join(cfg.path_setting("state_dir"), "ssl")
    cert_path = os.path.join(directory, CERT_NAME)
    key_path = os.path.join(directory, KEY_NAME)
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        cert_pem, key_pem = _generate(socket.getfqdn() or "localhost")
        for path, data, mode in ((key_path, key_pem, 0o600), (cert_path, cert_pem, 0o644)):
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
    cfg.settings["ssl_cert"] = "<" + cert_path
    cfg.settings["ssl_key"] = "<" + key_path
    cfg.origins.setdefault("ssl_cert", f"{cfg.path}: (self-signed, made on first start)")
    return True
