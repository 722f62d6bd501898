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


class TLSSettingError(ValueError):
    """A TLS setting that can't be applied; str() starts with its name."""


def check_server_tls(config) -> None:
    """Build the server contexts once, in the master at start: a TLS setting
    that can't be applied raises ConfigError naming FILE:LINE (the login
    processes would otherwise fail one by one)."""
    from pydovecot.config.parser import ConfigError

    try:
        server_context_factory(config)
    except (TLSSettingError, SSL.Error, crypto.Error, ValueError, OSError) as e:
        text = str(e) or repr(e)
        key = text.split(" ", 1)[0].rstrip(":")
        if key not in getattr(config, "origins", {}):
            key = "ssl_cert"
        where = config.origins.get(key, config.path)
        raise ConfigError(f"{where}: TLS: {text}") from None


def server_context_factory(config) -> twisted_ssl.CertificateOptions | None:
    """CertificateOptions for the configured certificate, or None when
    ``ssl = no`` or no certificate is configured.  Also applies
    ``ssl_alt_cert``/``ssl_alt_key`` (a second certificate, e.g. ECDSA next
    to RSA), ``ssl_cipher_list``, ``ssl_cipher_suites`` (TLS 1.3),
    ``ssl_curve_list`` and ``ssl_prefer_server_ciphers`` when set, and
    serves ``local_name NAME { ssl_cert ssl_key }`` by SNI.  Raises
    :class:`TLSSettingError` (or OpenSSL's error) for what can't be applied."""
    if config.get("ssl") == "no" or not config.get("ssl_cert") or not config.get("ssl_key"):
        return None
    unknown = set(config.get_list("ssl_options")) - SSL_OPTIONS
    if unknown:
        raise TLSSettingError(f"ssl_options = {config.get('ssl_options')}: unknown option "
                              f"{sorted(unknown)[0]}")
    tuning = _tuning(config)
    main = _identity(config.read_value("ssl_cert"), config.read_value("ssl_key"),
                     config.get("ssl_key_password"))
    alt = None
    if config.get("ssl_alt_cert") or config.get("ssl_alt_key"):
        if not (config.get("ssl_alt_cert") and config.get("ssl_alt_key")):
            raise TLSSettingError("ssl_alt_cert and ssl_alt_key must be set together")
        alt = _identity(config.read_value("ssl_alt_cert"), config.read_value("ssl_alt_key"),
                        config.get("ssl_key_password"))
    sni = {}
    for name, values in local_names(config).items():
        if "ssl_cert" not in values or "ssl_key" not in values:
            raise TLSSettingError(f"local_name {name}: needs both ssl_cert and ssl_key")
        ident = _identity(_file_value(config, values["ssl_cert"]),
                          _file_value(config, values["ssl_key"]),
                          values.get("ssl_key_password", config.get("ssl_key_password")))
        sni_alt = None
        if values.get("ssl_alt_cert") and values.get("ssl_alt_key"):
            sni_alt = _identity(_file_value(config, values["ssl_alt_cert"]),
                                _file_value(config, values["ssl_alt_key"]),
                                config.get("ssl_key_password"))
        sni[name.lower()] = _options(config, ident, sni_alt, tuning, {})
    options = _options(config, main, alt, tuning, sni)
    options.getContext()  # apply everything now: a bad value fails the start
    for other in sni.values():
        other.getContext()
    return options


def local_names(config) -> dict[str, dict[str, str]]:
    """``local_name NAME { }`` blocks with TLS settings: name -> settings."""
    found: dict[str, dict[str, str]] = {}
    for entry in getattr(config, "filters", []):
        match = entry.get("match", {})
        if set(match) == {"local_name"}:
            values = {k: v for k, v in entry.get("settings", {}).items() if k.startswith("ssl_")}
            if values:
                for name in match["local_name"].split():
                    found.setdefault(name, {}).update(values)
    return found


def _file_value(config, value: str) -> str:
    """A ``<file`` value from a filter block (read before any chroot)."""
    import os

    if not value.startswith("<"):
        return value
    path = os.path.join(getattr(config, "cwd", "") or "", value[1:].strip())
    with open(path, encoding="utf-8") as f:
        return f.read(64 * 1024)


#: ``ssl_options`` Dovecot 2.3 knows; Twisted's contexts already do both.
SSL_OPTIONS = frozenset({"no_compression", "no_ticket"})


def _dh_parameters(config, value: str):
    """``ssl_dh = </path``: DHE parameters (Twisted loads them into each
    context, which server_context_factory builds before any chroot)."""
    import os

    from twisted.python.filepath import FilePath

    path = value[1:].strip() if value.startswith("<") else value
    path = os.path.join(getattr(config, "cwd", "") or "", path)
    if not os.path.isfile(path):
        raise TLSSettingError(f"ssl_dh = {value}: no such file")
    try:
        SSL.Context(SSL.TLS_SERVER_METHOD).load_tmp_dh(path.encode())
    except SSL.Error:
        raise TLSSettingError(f"ssl_dh = {value}: not DH parameters in PEM") from None
    return twisted_ssl.DiffieHellmanParameters.fromFile(FilePath(path))


def _identity(cert: str, key: str, password: str | None) -> tuple:
    certs = _load_chain(cert.encode())
    pkey = crypto.load_privatekey(crypto.FILETYPE_PEM, key.encode(),
                                  passphrase=(password or "").encode() or None)
    return certs, pkey


def _tuning(config) -> dict:
    explicit = set(getattr(config, "explicit", ()))
    tuning: dict = {}
    for key in ("ssl_cipher_list", "ssl_cipher_suites", "ssl_curve_list"):
        if key in explicit and config.get(key):
            tuning[key] = config.get(key)
    if "ssl_prefer_server_ciphers" in explicit:
        tuning["ssl_prefer_server_ciphers"] = _get_bool(config, "ssl_prefer_server_ciphers")
    return tuning


def _options(config, ident: tuple, alt: tuple | None, tuning: dict,
             sni: dict) -> twisted_ssl.CertificateOptions:
    certs, key = ident
    minimum = MIN_PROTOCOLS.get(config.get("ssl_min_protocol"), twisted_ssl.TLSVersion.TLSv1_2)
    options = dict(privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
                   raiseMinimumTo=minimum)
    dh = config.get("ssl_dh")
    if dh:
        options["dhParameters"] = _dh_parameters(config, dh)
    crls: list = []
    if _get_bool(config, "ssl_verify_client_cert") and config.get("ssl_ca"):
        ca_pem = config.read_value("ssl_ca").encode()
        crls = _load_crls(ca_pem) if _get_bool(config, "ssl_require_crl") else []
        options.update(verify=True, caCerts=_load_chain(ca_pem),
                       requireCertificate=_get_bool(config, "auth_ssl_require_client_cert"))
    return _ServerOptions(crls, alt, tuning, sni, **options)


def _get_bool(config, key: str) -> bool:
    try:
        return bool(config.get(key)) and config.get_bool(key)
    except (KeyError, ValueError):
        return False


def _load_crls(pem: bytes) -> list:
    from cryptography import x509

    marker = b"-----BEGIN X509 CRL-----"
    return [x509.load_pem_x509_crl(marker + part) for part in pem.split(marker)[1:]]


class _ServerOptions(twisted_ssl.CertificateOptions):
    """CertificateOptions plus CRLs, an alternative certificate, the cipher,
    suite and curve settings, server preference, and SNI contexts."""

    def __init__(self, crls: list, alt: tuple | None, tuning: dict, sni: dict, **kwargs):
        super().__init__(**kwargs)
        self._crls = crls
        self._alt = alt
        self._tuning = tuning
        self._sni = sni
        if tuning.get("ssl_prefer_server_ciphers") is False:
            # Twisted prefers the server's order; "no" is the client's.
            self._options &= ~SSL.OP_CIPHER_SERVER_PREFERENCE

    def _makeContext(self):
        context = super()._makeContext()
        if self._crls:
            store = context.get_cert_store()
            for crl in self._crls:
                store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
        if self._alt is not None:
            certs, key = self._alt
            context.use_certificate(certs[0])
            context.use_privatekey(key)
            context.check_privatekey()
            for extra in certs[1:]:
                context.add_extra_chain_cert(extra)
        t = self._tuning
        if "ssl_cipher_list" in t:
            try:
                context.set_cipher_list(t["ssl_cipher_list"].encode())
            except SSL.Error:
                raise TLSSettingError(
                    f"ssl_cipher_list = {t['ssl_cipher_list']}: no usable cipher") from None
        if "ssl_cipher_suites" in t:
            try:
                context.set_tls13_ciphersuites(t["ssl_cipher_suites"].encode())
            except SSL.Error:
                raise TLSSettingError(
                    f"ssl_cipher_suites = {t['ssl_cipher_suites']}: no usable suite") from None
        if "ssl_curve_list" in t:
            from OpenSSL._util import lib

            if lib.SSL_CTX_set1_curves_list(context._context, t["ssl_curve_list"].encode()) != 1:
                raise TLSSettingError(
                    f"ssl_curve_list = {t['ssl_curve_list']}: unknown curve")
        if "ssl_prefer_server_ciphers" in t:
            if t["ssl_prefer_server_ciphers"]:
                context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
        if self._sni:
            context.set_tlsext_servername_callback(self._servername)
        return context

    def _servername(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        other = self._sni.get(name.decode("ascii", "replace").lower().rstrip("."))
        if other is not None:
            connection.set_context(other.getContext())


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
