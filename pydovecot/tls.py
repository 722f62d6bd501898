"""TLS server contexts from the ssl, ssl_cert and ssl_key settings.

Reads the certificate and key (``ssl_cert = </path``) while the process can
still reach them, i.e. before any chroot.  Trusts the config.

Client certificates: with ``ssl_verify_client_cert = yes`` and ``ssl_ca``
set, clients are asked for a certificate and one that doesn't verify
against ``ssl_ca`` fails the handshake (``auth_ssl_require_client_cert``
makes one mandatory).  CRLs found in ``ssl_ca`` are checked for the whole
chain when ``ssl_require_crl = yes``.  :func:`client_cert_user` reads the
user name (``ssl_cert_username_field``) for SASL EXTERNAL.
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
    options = dict(privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
                   raiseMinimumTo=minimum)
    if _get_bool(config, "ssl_verify_client_cert") and config.get("ssl_ca"):
        ca_pem = config.read_value("ssl_ca").encode()
        crls = _load_crls(ca_pem) if _get_bool(config, "ssl_require_crl") else []
        return _ClientCertOptions(
            crls, verify=True, caCerts=_load_chain(ca_pem),
            requireCertificate=_get_bool(config, "auth_ssl_require_client_cert"), **options)
    return twisted_ssl.CertificateOptions(**options)


def _get_bool(config, key: str) -> bool:
    try:
        return bool(config.get(key)) and config.get_bool(key)
    except (KeyError, ValueError):
        return False


def _load_crls(pem: bytes) -> list:
    from cryptography import x509

    marker = b"-----BEGIN X509 CRL-----"
    return [x509.load_pem_x509_crl(marker + part) for part in pem.split(marker)[1:]]


class _ClientCertOptions(twisted_ssl.CertificateOptions):
    """CertificateOptions that also load CRLs into the verify store."""

    def __init__(self, crls: list, **kwargs):
        super().__init__(**kwargs)
        self._crls = crls

    def _makeContext(self):
        context = super()._makeContext()
        if self._crls:
            store = context.get_cert_store()
            for crl in self._crls:
                store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
        return context


def tls_connection(transport) -> SSL.Connection | None:
    """The OpenSSL connection under a login protocol's transport: the TLS
    layer itself (implicit TLS) or the one startTLS put under the protocol."""
    for candidate in (transport, getattr(transport, "protocol", None)):
        get_handle = getattr(candidate, "getHandle", None)
        if get_handle is None:
            continue
        try:
            handle = get_handle()
        except Exception:
            continue
        if isinstance(handle, SSL.Connection):
            return handle
    return None


def channel_binding(conn: SSL.Connection) -> tuple[str, bytes] | None:
    """(type, data) for SCRAM-*-PLUS: ``tls-exporter`` (RFC 9266) on TLS 1.3,
    ``tls-unique`` (RFC 5929) before it; None if not available.

    tls-unique is the first Finished message of the handshake: the client's,
    since these contexts resume no sessions (no tickets, no session cache)."""
    try:
        version = conn.get_protocol_version_name()
        if version == "TLSv1.3":
            return "tls-exporter", conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        finished = conn.get_peer_finished()
    except SSL.Error:
        return None
    return ("tls-unique", finished) if finished else None


def client_cert_user(conn: SSL.Connection, field: str = "commonName") -> tuple[str, bool]:
    """(user name from the client certificate's subject ``field``, whether
    the certificate verified against ssl_ca); ("", False) without one."""
    cert = conn.get_peer_certificate()
    if cert is None:
        return "", False
    try:
        value = getattr(cert.get_subject(), field or "commonName", None)
    except (AttributeError, SSL.Error):
        value = None
    valid = conn.get_verified_chain() is not None
    return (value or ""), valid


def _load_chain(pem: bytes) -> list:
    marker = b"-----BEGIN CERTIFICATE-----"
    parts = [marker + part for part in pem.split(marker)[1:]]
    if not parts:
        raise SSL.Error("ssl_cert holds no PEM certificate")
    return [crypto.load_certificate(crypto.FILETYPE_PEM, part) for part in parts]
