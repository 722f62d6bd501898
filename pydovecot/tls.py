"""TLS server contexts from the ssl, ssl_cert and ssl_key settings.

Reads the certificate and key (``ssl_cert = </path``) while the process can
still reach them, i.e. before any chroot.  Trusts the config.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto
from twisted.internet import ssl as twisted_ssl

MIN_PROTOCOLS = {
    "TLSv1": twisted_ssl.TLSVersion.TLSv1_0,
    "TLSv1.1": twisted_ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": twisted_ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": twisted_ssl.TLSVersion.TLSv1_3,
}


def server_context_factory(config) -> twisted_ssl.CertificateOptions | None:
    """CertificateOptions for the configured certificate, or None when
    ``ssl = no`` or no certificate is configured."""
    if config.get("ssl") == "no" or not config.get("ssl_cert") or not config.get("ssl_key"):
        return None
    cert_pem = config.read_value("ssl_cert").encode()
    key_pem = config.read_value("ssl_key").encode()
    password = config.get("ssl_key_password").encode() or None
    certs = _load_chain(cert_pem)
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem, passphrase=password)
    minimum = MIN_PROTOCOLS.get(config.get("ssl_min_protocol"), twisted_ssl.TLSVersion.TLSv1_2)
    return twisted_ssl.CertificateOptions(
        privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
        raiseMinimumTo=minimum,
    )


def _load_chain(pem: bytes) -> list:
    marker = b"-----BEGIN CERTIFICATE-----"
    parts = [marker + part for part in pem.split(marker)[1:]]
    if not parts:
        raise SSL.Error("ssl_cert holds no PEM certificate")
    return [crypto.load_certificate(crypto.FILETYPE_PEM, part) for part in parts]
