"""The registry of setting names, types, defaults and how pydovecot treats them.

``DOVECOT_DEFAULTS`` is every global setting of Dovecot 2.3.19 with its default,
as printed by ``doveconf -d`` (generated once, not read at run time), plus
Pigeonhole's managesieve ones; its keys form ``KNOWN_SETTINGS``.  Each known
setting is in exactly one of ``IMPLEMENTED`` (type and pydovecot's default;
something reads it), ``REFUSED`` (only Dovecot's default is accepted; why) or
``WARNED`` (cosmetic; why).  Section registries say which keys are valid
inside ``service``, listener, ``passdb``/``userdb``, ``namespace`` and
``mailbox`` sections and how each is treated, likewise ``mail_plugins``
names and ``plugin {}`` keys.  Pure data plus value converters; trusts nothing.
"""

from __future__ import annotations

import re

# Value types of settings.
STR = "str"
BOOL = "bool"
UINT = "uint"
SIZE = "size"
TIME = "time"
LIST = "list"
PORT = "port"
OCTAL = "octal"

#: Setting types whose allowed values are a fixed set.
ENUMS: dict[str, frozenset[str]] = {
    "ssl": frozenset({"yes", "no", "required"}),
    "lmtp_hdr_delivery_address": frozenset({"final", "original", "none"}),
    "ssl_min_protocol": frozenset(
        {"ANY", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "LATEST"}
    ),
    "mail_fsync": frozenset({"optimized", "always", "never"}),
}

#: Settings pydovecot implements: name -> (type, pydovecot default).
IMPLEMENTED: dict[str, tuple[str, str]] = {
    "protocols": (LIST, "imap pop3 lmtp"),
    "listen": (LIST, "*, ::"),
    "base_dir": (STR, "/run/pydovecot"),
    "state_dir": (STR, "/var/lib/pydovecot"),
    "log_path": (STR, ""),
    # pydovecot.log.MasterLog, as Dovecot routes them.
    "info_log_path": (STR, ""),
    "debug_log_path": (STR, ""),
    "syslog_facility": (STR, "mail"),
    "log_timestamp": (STR, "%b %d %H:%M:%S "),
    "login_greeting": (STR, "pydovecot ready."),
    "mail_location": (STR, ""),
    "imap_metadata": (BOOL, "no"),
    "mail_attribute_dict": (STR, ""),
    "mail_home": (STR, ""),
    "mail_uid": (STR, ""),
    "mail_gid": (STR, ""),
    "first_valid_uid": (UINT, "500"),
    "last_valid_uid": (UINT, "0"),
    "first_valid_gid": (UINT, "1"),
    "last_valid_gid": (UINT, "0"),
    "disable_plaintext_auth": (BOOL, "yes"),
    "ssl": ("enum", "yes"),
    "ssl_cert": (STR, ""),
    "ssl_key": (STR, ""),
    "ssl_key_password": (STR, ""),
    "ssl_min_protocol": ("enum", "TLSv1.2"),
    # pydovecot.tls applies these to every server context (Fatal if it can't).
    "ssl_cipher_list": (STR, "ALL:!kRSA:!SRP:!kDHd:!DSS:!aNULL:!eNULL:!EXPORT:!DES:!3DES:!MD5:"
                             "!PSK:!RC4:!ADH:!LOW@STRENGTH"),
    "ssl_cipher_suites": (STR, ""),
    "ssl_curve_list": (STR, ""),
    "ssl_prefer_server_ciphers": (BOOL, "no"),
    "ssl_alt_cert": (STR, ""),
    "ssl_alt_key": (STR, ""),
    "ssl_dh": (STR, ""),  # DHE parameters, loaded by pydovecot.tls
    "ssl_options": (LIST, ""),  # no_compression, no_ticket: always on (Twisted)
    "auth_mechanisms": (LIST, "plain"),
    "auth_username_format": (STR, "%Lu"),
    "auth_failure_delay": (TIME, "2 secs"),
    "auth_verbose": (BOOL, "no"),
    "auth_verbose_passwords": (STR, "no"),
    "auth_debug": (BOOL, "no"),
    "auth_default_realm": (STR, ""),
    "auth_master_user_separator": (STR, ""),
    "auth_anonymous_username": (STR, "anonymous"),
    "auth_username_chars": (
        STR, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@"),
    "auth_username_translation": (STR, ""),
    "auth_cache_size": (SIZE, "0"),
    "auth_cache_ttl": (TIME, "1 hours"),
    "auth_cache_negative_ttl": (TIME, "1 hours"),
    "auth_ssl_require_client_cert": (BOOL, "no"),
    "ssl_ca": (STR, ""),
    "ssl_verify_client_cert": (BOOL, "no"),
    "ssl_require_crl": (BOOL, "yes"),
    "ssl_cert_username_field": (STR, "commonName"),
    "login_trusted_networks": (LIST, ""),
    # The login processes' Info lines (pydovecot.login.process), as Dovecot's.
    "login_log_format_elements": (
        STR, "user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{session}>"),
    "login_log_format": (STR, "%$: %s"),
    # A mail-process session's log prefix (pydovecot.session.SessionContext).
    "mail_log_prefix": (STR, "%s(%u)<%{pid}><%{session}>: "),
    # Login process titles with their client counts (pydovecot.login.process).
    "verbose_proctitle": (BOOL, "no"),
    # The PROXY protocol on ``inet_listener { haproxy = yes }`` (login.haproxy).
    "haproxy_trusted_networks": (LIST, ""),
    "haproxy_timeout": (TIME, "3 secs"),
    # pydovecot-only: Dovecot's login processes have these built in
    # (LOGIN_MAX_INBUF_SIZE, CLIENT_LOGIN_TIMEOUT_MSECS); the last two are new.
    "login_max_inbuf_size": (SIZE, "1k"),
    "login_timeout": (TIME, "3 mins"),
    "login_auth_timeout": (TIME, "30 secs"),
    "login_max_ip_connections": (UINT, "100"),
    "default_login_user": (STR, "pydovecot-null"),
    "default_internal_user": (STR, "pydovecot"),
    "default_client_limit": (UINT, "1000"),
    "default_process_limit": (UINT, "100"),
    "default_vsz_limit": (SIZE, "256 M"),
    "default_idle_kill": (TIME, "1 mins"),  # mail processes, when set (master.mailpool)
    "imap_capability": (STR, ""),
    "imap_idle_notify_interval": (TIME, "2 mins"),
    # pydovecot-only: Dovecot's fixed autologout timers (imap 30 min, pop3 10 min).
    "imap_autologout": (TIME, "30 mins"),
    "pop3_autologout": (TIME, "10 mins"),
    "imap_max_line_length": (SIZE, "64 k"),
    "imap_literal_minus": (BOOL, "no"),  # LITERAL- instead of LITERAL+ (imap.parser)
    "imap_logout_format": (
        STR,
        "in=%i out=%o deleted=%{deleted} expunged=%{expunged} trashed=%{trashed} "
        "hdr_count=%{fetch_hdr_count} hdr_bytes=%{fetch_hdr_bytes} "
        "body_count=%{fetch_body_count} body_bytes=%{fetch_body_bytes}",
    ),
    "pop3_uidl_format": (STR, "%08Xu%08Xv"),
    "pop3_logout_format": (STR, "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s"),
    "recipient_delimiter": (STR, "+"),
    "hostname": (STR, ""),
    "mail_max_userip_connections": (UINT, "10"),
    "mail_plugins": (STR, ""),  # checked by the parser (see MAIL_PLUGINS)
    # quota (pydovecot/storage/quota.py; RCPT check: pydovecot/lmtp)
    "quota_full_tempfail": (BOOL, "no"),
    "mail_cache_max_size": (SIZE, "1G"),
    # mbox storage (pydovecot/storage/mbox.py)
    "mbox_lock_timeout": (TIME, "5 mins"),
    "mbox_dotlock_change_timeout": (TIME, "2 mins"),
    "mbox_read_locks": (LIST, "fcntl"),
    "mbox_write_locks": (LIST, "fcntl dotlock"),
    "mail_cache_max_headers_count": (UINT, "32"),
    "mail_cache_max_header_name_length": (UINT, "100"),
    "imap_urlauth_host": (STR, ""),
    "imap_urlauth_port": (UINT, "143"),
    # Sieve's outgoing mail (pydovecot.sieve.deliver).
    "sendmail_path": (STR, "/usr/sbin/sendmail"),
    "submission_host": (STR, ""),
    # Submission (pydovecot.submission, pydovecot.login.submission).
    "submission_relay_host": (STR, ""), "submission_relay_port": (UINT, "25"),
    "submission_relay_ssl": (STR, "no"), "submission_relay_trusted": (BOOL, "no"),
    "submission_relay_user": (STR, ""), "submission_relay_password": (STR, ""),
    "submission_relay_connect_timeout": (TIME, "30 secs"),
    "submission_relay_command_timeout": (TIME, "5 mins"),
    "submission_relay_ssl_verify": (BOOL, "yes"),
    "submission_max_mail_size": (SIZE, "0"), "submission_max_recipients": (UINT, "0"),
    "submission_logout_format": (STR, "in=%i out=%o"),
    "lda_mailbox_autosubscribe": (BOOL, "no"),
    # LMTP and LDA (pydovecot.lmtp.protocol, pydovecot.mailproc.delivery, pydovecot.lda).
    "lda_mailbox_autocreate": (BOOL, "no"),
    "lda_original_recipient_header": (STR, ""),
    "postmaster_address": (STR, "postmaster@%{if;%d;ne;;%d;%{hostname}}"),
    "lmtp_save_to_detail_mailbox": (BOOL, "no"),
    "lmtp_hdr_delivery_address": ("enum", "final"),
    "lmtp_add_received_header": (BOOL, "yes"),
    "lmtp_user_concurrency_limit": (UINT, "0"),
    "lmtp_rcpt_check_quota": (BOOL, "no"),
    # ManageSieve (pydovecot.managesieve, pydovecot.login.managesieve).
    "managesieve_implementation_string": (STR, "Dovecot (Debian) Pigeonhole"),
    "managesieve_logout_format": (STR, "bytes=%i/%o"),
    "managesieve_max_line_length": (SIZE, "64 k"),
    "managesieve_notify_capability": (STR, ""),
    "managesieve_sieve_capability": (STR, ""),
    # pydovecot-only: the storage RPC over TCP/TLS (pydovecot.storage.rpc.tcp)
    "storage_rpc_secret": (STR, ""),
    # outgoing TLS of the storage-rpc service (Dovecot's names)
    "ssl_client_ca_file": (STR, ""),
    "ssl_client_cert": (STR, ""),
    "ssl_client_key": (STR, ""),
}

#: Settings honoured inside ``local_name NAME { }`` (SNI, pydovecot.tls).
LOCAL_NAME_SETTINGS = frozenset({"ssl_cert", "ssl_key", "ssl_key_password", "ssl_alt_cert",
                                 "ssl_alt_key"})

#: syslog_facility values (Dovecot's; pydovecot.log opens syslog with them).
SYSLOG_FACILITIES = frozenset({"auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr",
                               "mail", "news", "syslog", "user", "uucp",
                               *(f"local{i}" for i in range(8))})

#: Settings valid inside ``service NAME { }``, with their types.
SERVICE_SETTINGS: dict[str, str] = {
    "chroot": STR,
    "client_limit": UINT,
    "drop_priv_before_exec": BOOL,
    "executable": STR,
    "extra_groups": STR,
    "group": STR,
    "idle_kill": TIME,
    "privileged_group": STR,
    "process_limit": UINT,
    "process_min_avail": UINT,
    "protocol": STR,
    "service_count": UINT,
    "type": STR,
    "user": STR,
    "vsz_limit": SIZE,
}

#: Settings valid inside ``unix_listener`` / ``fifo_listener`` sections.
UNIX_LISTENER_SETTINGS: dict[str, str] = {"path": STR, "mode": OCTAL, "user": STR, "group": STR}

#: Settings valid inside ``inet_listener`` sections.
INET_LISTENER_SETTINGS: dict[str, str] = {
    "address": STR,
    "port": PORT,
    "ssl": BOOL,
    "haproxy": BOOL,
    "reuse_port": BOOL,
}

#: Keys valid inside ``passdb { }``.
PASSDB_SETTINGS = frozenset(
    {
        "name", "driver", "args", "default_fields", "override_fields", "mechanisms",
        "username_filter", "skip", "result_success", "result_failure",
        "result_internalfail", "deny", "pass", "master", "auth_verbose",
    }
)  # fmt: skip

#: Keys valid inside ``userdb { }``.
USERDB_SETTINGS = frozenset(
    {
        "name", "driver", "args", "default_fields", "override_fields", "skip",
        "result_success", "result_failure", "result_internalfail", "auth_verbose",
    }
)  # fmt: skip

#: Keys valid inside ``namespace NAME { }``.
NAMESPACE_SETTINGS = frozenset(
    {
        "name", "type", "separator", "prefix", "location", "inbox", "hidden", "list",
        "subscriptions", "ignore_on_failure", "disabled", "alias_for", "order",
    }
)  # fmt: skip

#: Keys valid inside ``namespace { mailbox NAME { } }``.
MAILBOX_SETTINGS = frozenset(
    {
        "name", "auto", "special_use", "driver", "comment", "autoexpunge",
        "autoexpunge_max_mails",
    }
)  # fmt: skip

#: Services pydovecot runs.
IMPLEMENTED_SERVICES = ("auth", "imap-login", "imap", "pop3-login", "pop3", "lmtp", "stats",
                        "health-check", "managesieve-login", "quota-status",
                        "storage-rpc", "submission-login", "submission")

#: Services Dovecot 2.3 knows but pydovecot does not run (configuring them warns).
KNOWN_SERVICES = frozenset(
    {
        "aggregator", "anvil", "auth-worker", "config", "dict-async", "dict", "director",
        "dns-client", "doveadm", "health-check", "imap-hibernate", "imap-urlauth-login",
        "imap-urlauth-worker", "imap-urlauth", "indexer-worker", "indexer", "ipc", "log",
        "old-stats", "replicator", "stats", "submission-login", "submission", "tcpwrap",
        "managesieve", "quota-status", "quota-warning",
    }
)  # fmt: skip

#: Protocols pydovecot serves; others known to Dovecot only warn.
IMPLEMENTED_PROTOCOLS = ("imap", "pop3", "lmtp", "sieve", "submission")
KNOWN_PROTOCOLS = frozenset({"lda", "doveadm", "none"})

#: Built-in services: settings, and listeners as name -> settings.  Values starting
#: with ``$`` are resolved against the global settings after loading.  Unlike
#: Dovecot, login and mail processes serve many clients each (service_count 0,
#: client_limit 0 = default_client_limit), and mail processes get no listeners:
#: the master hands them connections.
SERVICE_DEFAULTS: dict[str, dict[str, dict[str, dict[str, str]] | dict[str, str]]] = {
    "auth": {
        "settings": {
            "executable": "auth", "process_limit": "1", "client_limit": "0",
            "service_count": "0", "user": "$default_internal_user",
        },
        "unix_listeners": {
            "auth-login": {"mode": "0600", "user": "$default_login_user"},
            "auth-master": {"mode": "0600"},
            "auth-userdb": {"mode": "0600", "user": "$default_internal_user"},
            "auth-client": {"mode": "0600"},
        },
    },
    "imap-login": {
        "settings": {
            "executable": "imap-login", "chroot": "login", "protocol": "imap",
            "type": "login", "service_count": "0", "client_limit": "0",
            "process_limit": "0", "user": "$default_login_user",
        },
        "inet_listeners": {
            "imap": {"port": "143", "ssl": "no"},
            "imaps": {"port": "993", "ssl": "yes"},
        },
    },
    "pop3-login": {
        "settings": {
            "executable": "pop3-login", "chroot": "login", "protocol": "pop3",
            "type": "login", "service_count": "0", "client_limit": "0",
            "process_limit": "0", "user": "$default_login_user",
        },
        "inet_listeners": {
            "pop3": {"port": "110", "ssl": "no"},
            "pop3s": {"port": "995", "ssl": "yes"},
        },
    },
    "managesieve-login": {
        "settings": {
            "executable": "managesieve-login", "chroot": "login", "protocol": "sieve",
            "type": "login", "service_count": "0", "client_limit": "0",
            "process_limit": "0", "user": "$default_login_user",
        },
        "inet_listeners": {"sieve": {"port": "4190", "ssl": "no"}},
    },
    "submission-login": {
        "settings": {
            "executable": "submission-login", "chroot": "login", "protocol": "submission",
            "type": "login", "service_count": "0", "client_limit": "0",
            "process_limit": "0", "user": "$default_login_user",
        },
        "inet_listeners": {
            "submission": {"port": "587", "ssl": "no"},
            "submissions": {"port": "465", "ssl": "yes"},
        },
    },
    "submission": {
        "settings": {
            "executable": "submission", "protocol": "submission", "service_count": "0",
            "client_limit": "0", "process_limit": "1024",
        },
    },
    "imap": {
        "settings": {
            "executable": "imap", "protocol": "imap", "service_count": "0",
            "client_limit": "0", "process_limit": "1024",
        },
    },
    "pop3": {
        "settings": {
            "executable": "pop3", "protocol": "pop3", "service_count": "0",
            "client_limit": "0", "process_limit": "1024",
        },
    },
    # Runs only with an inet_listener http (OpenMetrics on /metrics);
    # Dovecot's stats-reader/stats-writer sockets are not served.
    "stats": {
        "settings": {
            "executable": "stats", "process_limit": "1", "client_limit": "0",
            "service_count": "0", "user": "$default_internal_user",
        },
    },
    # Dovecot's health-check.sh (PING -> PONG), served by the stats process.
    "health-check": {
        "settings": {
            "executable": "script -p health-check.sh", "process_limit": "1",
            "user": "$default_internal_user",
        },
    },
    # Postfix's policy delegation (pydovecot/quotastatus), with an inet_listener.
    "quota-status": {
        "settings": {
            "executable": "quota-status -p postfix", "client_limit": "1",
            "process_limit": "1", "user": "$default_internal_user",
        },
    },
    # pydovecot-only: the storage RPC over TCP/TLS; runs only with an
    # inet_listener (pydovecot.storage.rpc.tcp).
    "storage-rpc": {
        "settings": {
            "executable": "storage-rpc", "process_limit": "1", "client_limit": "0",
            "service_count": "0", "user": "$default_internal_user",
        },
    },
    "lmtp": {
        "settings": {
            "executable": "lmtp", "protocol": "lmtp", "service_count": "0",
            "client_limit": "0", "process_limit": "0",
        },
        "unix_listeners": {"lmtp": {"mode": "0666"}},
    },
}  # fmt: skip

_BOOLS = {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False,
          "y": True, "n": False}  # fmt: skip

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:([kKmMgGtT])(?:i?[bB])?|[bB]|bytes?)?\s*$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_TIME_UNITS: dict[str, float] = {}
for _names, _secs in (
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    (("", "s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 604800.0),
):
    for _n in _names:
        _TIME_UNITS[_n] = _secs


def parse_bool(value: str) -> bool:
    """yes/no/true/false/1/0 (any case) -> bool; ValueError otherwise."""
    try:
        return _BOOLS[value.strip().lower()]
    except KeyError:
        raise ValueError(f"invalid boolean {value!r} (use yes or no)") from None


def parse_uint(value: str) -> int:
    """A non-negative decimal integer; ValueError otherwise."""
    v = value.strip()
    if not v.isdigit() or not v.isascii():
        raise ValueError(f"invalid number {value!r}")
    return int(v)


def parse_size(value: str) -> int:
    """A size in bytes: "10M", "1 G", "64k", "512", "256 M", "5 B"."""
    m = _SIZE_RE.match(value)
    if m is None:
        raise ValueError(f"invalid size {value!r} (use e.g. 64k, 10M, 1 G)")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]


def parse_time(value: str) -> float:
    """A duration in seconds: "2 secs", "500 ms", "1 min", "1h", "30" (seconds)."""
    m = _TIME_RE.match(value)
    unit = m.group(2).lower() if m else ""
    if m is None or (unit not in _TIME_UNITS and m.group(2) not in _TIME_UNITS):
        raise ValueError(f"invalid time interval {value!r} (use e.g. 500 ms, 2 secs, 1 min)")
    return float(m.group(1)) * _TIME_UNITS.get(m.group(2), _TIME_UNITS.get(unit, 1.0))


def parse_port(value: str) -> int:
    """A TCP port 0-65535 (0 = listener off)."""
    v = value.strip()
    if not v.isdigit() or not v.isascii() or int(v) > 65535:
        raise ValueError(f"invalid port {value!r} (must be 0-65535)")
    return int(v)


def parse_octal(value: str) -> int:
    """A file mode in octal, e.g. 0600."""
    v = value.strip()
    if not v or any(c not in "01234567" for c in v) or int(v, 8) > 0o7777:
        raise ValueError(f"invalid file mode {value!r} (use octal, e.g. 0600)")
    return int(v, 8)


def split_list(value: str) -> list[str]:
    """Split a list value on whitespace and commas, dropping empty items."""
    return [item for item in re.split(r"[\s,]+", value) if item]


def check_value(name: str, kind: str, value: str) -> None:
    """Raise ValueError if value is not valid for a setting of that type."""
    if kind == BOOL:
        parse_bool(value)
    elif kind == UINT:
        parse_uint(value)
    elif kind == SIZE:
        parse_size(value)
    elif kind == TIME:
        parse_time(value)
    elif kind == PORT:
        parse_port(value)
    elif kind == OCTAL:
        parse_octal(value)
    elif kind == "enum" and value not in ENUMS[name]:
        allowed = ", ".join(sorted(ENUMS[name]))
        raise ValueError(f"invalid value {value!r} for {name} (allowed: {allowed})")


# Generated from `doveconf -d` of Dovecot 2.3.19.1 (Debian 12): name -> default.
DOVECOT_DEFAULTS: dict[str, str] = {
    "auth_anonymous_username": "anonymous",
    "auth_cache_negative_ttl": "1 hours",
    "auth_cache_size": "0",
    "auth_cache_ttl": "1 hours",
    "auth_cache_verify_password_with_worker": "no",
    "auth_debug": "no",
    "auth_debug_passwords": "no",
    "auth_default_realm": "",
    "auth_failure_delay": "2 secs",
    "auth_gssapi_hostname": "",
    "auth_krb5_keytab": "",
    "auth_master_user_separator": "",
    "auth_mechanisms": "plain",
    "auth_policy_check_after_auth": "yes",
    "auth_policy_check_before_auth": "yes",
    "auth_policy_hash_mech": "sha256",
    "auth_policy_hash_nonce": "",
    "auth_policy_hash_truncate": "12",
    "auth_policy_log_only": "no",
    "auth_policy_reject_on_fail": "no",
    "auth_policy_report_after_auth": "yes",
    "auth_policy_request_attributes": "login=%{requested_username} pwhash=%{hashed_password} remote=%{rip} device_id=%{client_id} protocol=%s session_id=%{session}",
    "auth_policy_server_api_header": "",
    "auth_policy_server_timeout_msecs": "2000",
    "auth_policy_server_url": "",
    "auth_proxy_self": "",
    "auth_realms": "",
    "auth_socket_path": "auth-userdb",
    "auth_ssl_require_client_cert": "no",
    "auth_ssl_username_from_cert": "no",
    "auth_stats": "no",
    "auth_use_winbind": "no",
    "auth_username_chars": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@",
    "auth_username_format": "%Lu",
    "auth_username_translation": "",
    "auth_verbose": "no",
    "auth_verbose_passwords": "no",
    "auth_winbind_helper_path": "/usr/bin/ntlm_auth",
    "auth_worker_max_count": "30",
    "base_dir": "/run/dovecot",
    "config_cache_size": "1 M",
    "debug_log_path": "",
    "default_client_limit": "1000",
    "default_idle_kill": "1 mins",
    "default_internal_group": "dovecot",
    "default_internal_user": "dovecot",
    "default_login_user": "dovenull",
    "default_process_limit": "100",
    "default_vsz_limit": "256 M",
    "deliver_log_format": "msgid=%m: %$",
    "dict_db_config": "",
    "director_flush_socket": "",
    "director_mail_servers": "",
    "director_max_parallel_kicks": "100",
    "director_max_parallel_moves": "100",
    "director_output_buffer_size": "10 M",
    "director_ping_idle_timeout": "30 secs",
    "director_ping_max_timeout": "1 mins",
    "director_servers": "",
    "director_user_expire": "15 mins",
    "director_user_kick_delay": "2 secs",
    "director_username_hash": "%Lu",
    "disable_plaintext_auth": "yes",
    "dotlock_use_excl": "yes",
    "doveadm_allowed_commands": "",
    "doveadm_api_key": "",
    "doveadm_http_rawlog_dir": "",
    "doveadm_password": "",
    "doveadm_port": "0",
    "doveadm_socket_path": "doveadm-server",
    "doveadm_ssl": "no",
    "doveadm_username": "doveadm",
    "doveadm_worker_count": "0",
    "dsync_alt_char": "_",
    "dsync_commit_msgs_interval": "100",
    "dsync_features": "",
    "dsync_hashed_headers": "Date Message-ID",
    "dsync_remote_cmd": "ssh -l%{login} %{host} doveadm dsync-server -u%u -U",
    "first_valid_gid": "1",
    "first_valid_uid": "500",
    "haproxy_timeout": "3 secs",
    "haproxy_trusted_networks": "",
    "hostname": "",
    "imap_capability": "",
    "imap_client_workarounds": "",
    "imap_fetch_failure": "disconnect-immediately",
    "imap_hibernate_timeout": "0",
    "imap_id_log": "",
    "imap_id_retain": "no",
    "imap_id_send": "name *",
    "imap_idle_notify_interval": "2 mins",
    "imap_literal_minus": "no",
    "imap_logout_format": "in=%i out=%o deleted=%{deleted} expunged=%{expunged} trashed=%{trashed} hdr_count=%{fetch_hdr_count} hdr_bytes=%{fetch_hdr_bytes} body_count=%{fetch_body_count} body_bytes=%{fetch_body_bytes}",
    "imap_max_line_length": "64 k",
    "imap_metadata": "no",
    "imap_urlauth_host": "",
    "imap_urlauth_logout_format": "in=%i out=%o",
    "imap_urlauth_port": "143",
    "imapc_cmd_timeout": "5 mins",
    "imapc_connection_retry_count": "1",
    "imapc_connection_retry_interval": "1 secs",
    "imapc_features": "",
    "imapc_host": "",
    "imapc_list_prefix": "",
    "imapc_master_user": "",
    "imapc_max_idle_time": "29 mins",
    "imapc_max_line_length": "0",
    "imapc_password": "",
    "imapc_port": "143",
    "imapc_rawlog_dir": "",
    "imapc_sasl_mechanisms": "",
    "imapc_ssl": "no",
    "imapc_ssl_verify": "yes",
    "imapc_user": "",
    "import_environment": "TZ CORE_OUTOFMEM CORE_ERROR LISTEN_PID LISTEN_FDS NOTIFY_SOCKET",
    "info_log_path": "",
    "instance_name": "dovecot",
    "last_valid_gid": "0",
    "last_valid_uid": "0",
    "lda_mailbox_autocreate": "no",
    "lda_mailbox_autosubscribe": "no",
    "lda_original_recipient_header": "",
    "libexec_dir": "/usr/lib/dovecot",
    "listen": "*, ::",
    "lmtp_add_received_header": "yes",
    "lmtp_client_workarounds": "",
    "lmtp_hdr_delivery_address": "final",
    "lmtp_proxy": "no",
    "lmtp_proxy_rawlog_dir": "",
    "lmtp_rawlog_dir": "",
    "lmtp_rcpt_check_quota": "no",
    "lmtp_save_to_detail_mailbox": "no",
    "lmtp_user_concurrency_limit": "0",
    "lmtp_verbose_replies": "no",
    "lock_method": "fcntl",
    "log_core_filter": "",
    "log_debug": "",
    "log_path": "syslog",
    "log_timestamp": "%b %d %H:%M:%S ",
    "login_access_sockets": "",
    "login_greeting": "Dovecot (Debian) ready.",
    "login_log_format": "%$: %s",
    "login_log_format_elements": "user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{session}>",
    "login_plugin_dir": "/usr/lib/dovecot/modules/login",
    "login_plugins": "",
    "login_proxy_max_disconnect_delay": "0",
    "login_proxy_max_reconnects": "3",
    "login_proxy_notify_path": "proxy-notify",
    "login_proxy_rawlog_dir": "",
    "login_proxy_timeout": "30 secs",
    "login_source_ips": "",
    "login_trusted_networks": "",
    "mail_access_groups": "",
    "mail_always_cache_fields": "",
    "mail_attachment_detection_options": "",
    "mail_attachment_dir": "",
    "mail_attachment_fs": "sis posix",
    "mail_attachment_hash": "%{sha1}",
    "mail_attachment_min_size": "128 k",
    "mail_attribute_dict": "",
    "mail_cache_fields": "flags",
    "mail_cache_max_header_name_length": "100",
    "mail_cache_max_headers_count": "32",
    "mail_cache_max_size": "1G",
    "mail_chroot": "",
    "mail_debug": "no",
    "mail_fsync": "optimized",
    "mail_full_filesystem_access": "no",
    "mail_gid": "",
    "mail_home": "",
    "mail_location": "",
    "mail_log_prefix": "%s(%u)<%{pid}><%{session}>: ",
    "mail_max_keyword_length": "50",
    "mail_max_lock_timeout": "0",
    "mail_max_userip_connections": "10",
    "mail_never_cache_fields": "imap.envelope",
    "mail_nfs_index": "no",
    "mail_nfs_storage": "no",
    "mail_plugin_dir": "/usr/lib/dovecot/modules",
    "mail_plugins": "",
    "mail_prefetch_count": "0",
    "mail_privileged_group": "",
    "mail_save_crlf": "no",
    "mail_server_admin": "",
    "mail_server_comment": "",
    "mail_shared_explicit_inbox": "no",
    "mail_sort_max_read_count": "0",
    "mail_temp_dir": "/tmp",
    "mail_temp_scan_interval": "1 weeks",
    "mail_uid": "",
    "mail_vsize_bg_after_count": "0",
    "mailbox_idle_check_interval": "30 secs",
    "mailbox_list_index": "yes",
    "mailbox_list_index_include_inbox": "no",
    "mailbox_list_index_very_dirty_syncs": "no",
    "maildir_broken_filename_sizes": "no",
    "maildir_copy_with_hardlinks": "yes",
    "maildir_empty_new": "no",
    "maildir_stat_dirs": "no",
    "maildir_very_dirty_syncs": "no",
    "master_user_separator": "",
    "mbox_dirty_syncs": "yes",
    "mbox_dotlock_change_timeout": "2 mins",
    "mbox_lazy_writes": "yes",
    "mbox_lock_timeout": "5 mins",
    "mbox_md5": "apop3d",
    "mbox_min_index_size": "0",
    "mbox_read_locks": "fcntl",
    "mbox_very_dirty_syncs": "no",
    "mbox_write_locks": "fcntl dotlock",
    "mdbox_preallocate_space": "no",
    "mdbox_rotate_interval": "0",
    "mdbox_rotate_size": "10 M",
    "mmap_disable": "no",
    "old_stats_carbon_interval": "30 secs",
    "old_stats_carbon_name": "",
    "old_stats_carbon_server": "",
    "old_stats_command_min_time": "1 mins",
    "old_stats_domain_min_time": "12 hours",
    "old_stats_ip_min_time": "12 hours",
    "old_stats_memory_limit": "16 M",
    "old_stats_session_min_time": "15 mins",
    "old_stats_user_min_time": "1 hours",
    "pop3_client_workarounds": "",
    "pop3_delete_type": "default",
    "pop3_deleted_flag": "",
    "pop3_enable_last": "no",
    "pop3_fast_size_lookups": "no",
    "pop3_lock_session": "no",
    "pop3_logout_format": "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s",
    "pop3_no_flag_updates": "no",
    "pop3_reuse_xuidl": "no",
    "pop3_save_uidl": "no",
    "pop3_uidl_duplicates": "allow",
    "pop3_uidl_format": "%08Xu%08Xv",
    "pop3c_features": "",
    "pop3c_host": "",
    "pop3c_master_user": "",
    "pop3c_password": "",
    "pop3c_port": "110",
    "pop3c_quick_received_date": "no",
    "pop3c_rawlog_dir": "",
    "pop3c_ssl": "no",
    "pop3c_ssl_verify": "yes",
    "pop3c_user": "%u",
    "postmaster_address": "postmaster@%{if;%d;ne;;%d;%{hostname}}",
    "process_shutdown_filter": "",
    "protocols": "",
    "quota_full_tempfail": "no",
    "rawlog_dir": "",
    "recipient_delimiter": "+",
    "rejection_reason": "Your message to <%t> was automatically rejected:%n%r",
    "rejection_subject": "Rejected: %s",
    "replication_dsync_parameters": "-d -N -l 30 -U",
    "replication_full_sync_interval": "1 days",
    "replication_max_conns": "10",
    "replicator_host": "replicator",
    "replicator_port": "0",
    "sendmail_path": "/usr/sbin/sendmail",
    "shutdown_clients": "yes",
    "ssl": "yes",
    "ssl_alt_cert": "",
    "ssl_alt_key": "",
    "ssl_ca": "",
    "ssl_cert": "",
    "ssl_cert_username_field": "commonName",
    "ssl_cipher_list": "ALL:!kRSA:!SRP:!kDHd:!DSS:!aNULL:!eNULL:!EXPORT:!DES:!3DES:!MD5:!PSK:!RC4:!ADH:!LOW@STRENGTH",
    "ssl_cipher_suites": "",
    "ssl_client_ca_dir": "",
    "ssl_client_ca_file": "",
    "ssl_client_cert": "",
    "ssl_client_key": "",
    "ssl_client_require_valid_cert": "yes",
    "ssl_crypto_device": "",
    "ssl_curve_list": "",
    "ssl_dh": "",
    "ssl_key": "",
    "ssl_key_password": "",
    "ssl_min_protocol": "TLSv1.2",
    "ssl_options": "",
    "ssl_prefer_server_ciphers": "no",
    "ssl_require_crl": "yes",
    "ssl_verify_client_cert": "no",
    "state_dir": "/var/lib/dovecot",
    "stats_http_rawlog_dir": "",
    "stats_writer_socket_path": "stats-writer",
    "submission_client_workarounds": "",
    "submission_host": "",
    "submission_logout_format": "in=%i out=%o",
    "submission_max_mail_size": "0",
    "submission_max_recipients": "0",
    "submission_relay_command_timeout": "5 mins",
    "submission_relay_connect_timeout": "30 secs",
    "submission_relay_host": "",
    "submission_relay_master_user": "",
    "submission_relay_max_idle_time": "29 mins",
    "submission_relay_password": "",
    "submission_relay_port": "25",
    "submission_relay_rawlog_dir": "",
    "submission_relay_ssl": "no",
    "submission_relay_ssl_verify": "yes",
    "submission_relay_trusted": "no",
    "submission_relay_user": "",
    "submission_ssl": "no",
    "submission_timeout": "30 secs",
    "syslog_facility": "mail",
    "valid_chroot_dirs": "",
    "verbose_proctitle": "no",
    "verbose_ssl": "no",
    "version_ignore": "no",
}

#: Every global setting name Dovecot 2.3 knows.
KNOWN_SETTINGS: frozenset[str] = frozenset(DOVECOT_DEFAULTS) | frozenset(IMPLEMENTED)

# -- classification: every setting is implemented, refused or warned ---------
#
# A setting in REFUSED may only keep Dovecot's default: any other value stops
# the start with ``FILE:LINE: … why`` (it would change security, delivery or
# data semantics and pydovecot cannot honour it).  A setting in WARNED is
# cosmetic (logging, tuning, protocols pydovecot does not serve): another
# value is accepted with one warning naming FILE:LINE.  Groups by prefix
# keep the table short; the explicit entries say why in a few words.

_NOT_SERVED = "a service pydovecot does not run"

#: name -> why pydovecot refuses a non-default value.
REFUSED: dict[str, str] = {
    "lmtp_proxy": "lmtp proxying is not supported",
    # the backend's check_quota is there (pydovecot/lmtp/process.py); lmtp's
    # RCPT TO calls it once the protocol side reads this setting
    "mail_fsync": "pydovecot's fsync policy is fixed (as 'optimized')",
    "mail_attachment_dir": "single-instance attachment storage is not supported",
    "mail_attachment_fs": "single-instance attachment storage is not supported",
    "mail_attachment_hash": "single-instance attachment storage is not supported",
    "mail_attachment_min_size": "single-instance attachment storage is not supported",
    "imap_fetch_failure": "pydovecot's FETCH failure handling is fixed",
    "mail_chroot": "chrooting mail processes is not supported",
    "valid_chroot_dirs": "chrooting mail processes is not supported",
    "mail_full_filesystem_access": "full filesystem access is not supported",
    "mail_access_groups": "extra mail access groups are not supported",
    "mail_nfs_index": "NFS-safe locking is not implemented",
    "mail_nfs_storage": "NFS-safe locking is not implemented",
    "mail_save_crlf": "Maildir messages are always saved with LF line endings",
    "maildir_broken_filename_sizes": "pydovecot always trusts Maildir S= sizes",
    "master_user_separator": "use auth_master_user_separator",
    "auth_socket_path": "lmtp's userdb socket is fixed",
    "auth_ssl_username_from_cert": "use ssl_cert_username_field with a passdb",
    "auth_proxy_self": "login proxying is not supported",
    "auth_use_winbind": "winbind is not supported",
    "auth_winbind_helper_path": "winbind is not supported",
    "auth_gssapi_hostname": "GSSAPI is not supported",
    "auth_krb5_keytab": "GSSAPI is not supported",
    "login_access_sockets": "login access checks (tcpwrap) are not supported",
    "login_plugins": "login plugins are not supported",
    "pop3_delete_type": "POP3 DELE always expunges",
    "pop3_deleted_flag": "POP3 DELE always expunges",
    "pop3_lock_session": "POP3 sessions are not locked",
    "pop3_no_flag_updates": "POP3 RETR always sets \\\\Seen",
    "pop3_reuse_xuidl": "POP3 UIDLs come from pop3_uidl_format only",
    "pop3_save_uidl": "POP3 UIDLs come from pop3_uidl_format only",
}
#: name -> why pydovecot only warns about a non-default value.
WARNED: dict[str, str] = {
    "log_core_filter": "not supported",
    "log_debug": "not supported",
    "deliver_log_format": "delivery lines use pydovecot's own format",
    "verbose_ssl": "not supported",
    "mail_debug": "not supported",
    "auth_debug_passwords": "pydovecot never logs passwords",
    "auth_realms": "DIGEST-MD5 realms are not offered",
    "auth_stats": "not supported",
    "auth_cache_verify_password_with_worker": "tuning only",
    "auth_worker_max_count": "tuning only",
    "mail_privileged_group": ("not applied: Dovecot enables it only while dotlocking "
                              "/var/mail (a permanent group would open every spool to every "
                              "user); mbox in a spool directory the user can't write locks "
                              "with fcntl only"),
    "default_internal_group": "processes run with default_internal_user's primary group",
    "rejection_reason": "pydovecot sends no rejections",
    "rejection_subject": "pydovecot sends no rejections",
    "instance_name": "cosmetic",
    "import_environment": "children get pydovecot's own environment",
    "shutdown_clients": "clients are always disconnected at shutdown",
    "version_ignore": "cosmetic",
    "config_cache_size": "tuning only",
    "libexec_dir": "pydovecot runs no Dovecot binaries",
    "mail_plugin_dir": "pydovecot loads no Dovecot modules",
    "login_plugin_dir": "pydovecot loads no Dovecot modules",
    "dict_db_config": _NOT_SERVED,
    "dotlock_use_excl": "tuning only",
    "lock_method": "pydovecot's index uses its own locking",
    "mmap_disable": "tuning only",
    "mail_max_lock_timeout": "tuning only",
    "mail_prefetch_count": "tuning only",
    "mail_sort_max_read_count": "tuning only",
    "mail_temp_dir": "tuning only",
    "mail_temp_scan_interval": "tuning only",
    "mail_vsize_bg_after_count": "tuning only",
    "mail_cache_fields": "pydovecot's index caches its own fields",
    "mail_always_cache_fields": "pydovecot's index caches its own fields",
    "mail_never_cache_fields": "pydovecot's index caches its own fields",
    "mail_max_keyword_length": "keyword length is bounded by pydovecot's own limit",
    "mail_attachment_detection_options": "$HasAttachment keywords are not set",
    "mail_server_admin": "IMAP METADATA is not supported",
    "mail_server_comment": "IMAP METADATA is not supported",
    "mail_shared_explicit_inbox": "shared namespaces are not supported",
    "mailbox_idle_check_interval": "IDLE uses inotify and pydovecot's own checks",
    "mailbox_list_index": "tuning only",
    "mailbox_list_index_include_inbox": "tuning only",
    "mailbox_list_index_very_dirty_syncs": "tuning only",
    "maildir_copy_with_hardlinks": "tuning only",
    "maildir_empty_new": "tuning only",
    "maildir_stat_dirs": "tuning only",
    "maildir_very_dirty_syncs": "pydovecot always checks the Maildir",
    "imap_client_workarounds": "no client workarounds are applied",
    "pop3_client_workarounds": "no client workarounds are applied",
    "lmtp_client_workarounds": "no client workarounds are applied",
    "imap_hibernate_timeout": "IMAP sessions are cheap; there is no hibernation",
    "imap_id_log": "not supported",
    "imap_id_retain": "not supported",
    "imap_id_send": "the ID reply is fixed",
    "imap_urlauth_logout_format": "cosmetic",
    "pop3_enable_last": "the POP3 LAST command is not offered",
    "pop3_fast_size_lookups": "tuning only",
    "pop3_uidl_duplicates": "tuning only",
    "lmtp_verbose_replies": "cosmetic",
    "login_source_ips": "login proxying is not supported",
    "ssl_crypto_device": "not supported",
    "process_shutdown_filter": "not supported",
    "stats_writer_socket_path": _NOT_SERVED,
    "managesieve_client_workarounds": "no ManageSieve client workarounds are needed",
    "managesieve_max_compile_errors": "the Sieve compiler reports the first error only",
}

#: Prefixes of whole groups: (prefix, refused?, why).
_GROUPS: tuple[tuple[str, bool, str], ...] = (
    ("auth_policy_", True, "auth policy servers are not supported"),
    ("director_", True, "the director is not supported"),
    ("doveadm_", False, _NOT_SERVED + " (doveadm)"),
    ("dsync_", False, _NOT_SERVED + " (dsync)"),
    ("replication_", False, _NOT_SERVED + " (replicator)"),
    ("replicator_", False, _NOT_SERVED + " (replicator)"),
    ("old_stats_", False, _NOT_SERVED + " (old-stats)"),
    ("stats_", False, _NOT_SERVED + " (stats)"),
    ("submission_", False, _NOT_SERVED + " (submission)"),
    ("imapc_", False, "imapc storage is refused through mail_location"),
    ("pop3c_", False, "pop3c storage is refused through mail_location"),
    ("mbox_", False, "mbox tuning: pydovecot always re-reads a changed mbox and writes at once"),
    ("mdbox_", False, "mdbox storage is refused through mail_location"),
    ("ssl_client_", False, "pydovecot makes no outgoing TLS connections"),
    ("login_proxy_", False, "login proxying is not supported"),
    ("lmtp_proxy_", False, "lmtp proxying is not supported"),
    ("rawlog_", False, "raw logs are not written"),
)


def _classify_rest() -> None:
    for name in KNOWN_SETTINGS:
        if name in IMPLEMENTED or name in REFUSED or name in WARNED:
            continue
        for prefix, refused, why in _GROUPS:
            if name.startswith(prefix):
                (REFUSED if refused else WARNED)[name] = why
                break
        else:
            if name.endswith("_rawlog_dir") or name == "rawlog_dir":
                WARNED[name] = "raw logs are not written"


#: Pigeonhole's settings (valid in Debian's trees).  The ones in IMPLEMENTED
#: are read by pydovecot.managesieve; the rest are warned (see WARNED).
PIGEONHOLE_DEFAULTS: dict[str, str] = {
    "managesieve_client_workarounds": "",
    "managesieve_implementation_string": "Dovecot (Debian) Pigeonhole",
    "managesieve_logout_format": "bytes=%i/%o",
    "managesieve_max_compile_errors": "5",
    "managesieve_max_line_length": "64 k",
    "managesieve_notify_capability": "",
    "managesieve_sieve_capability": "",
}
DOVECOT_DEFAULTS.update(PIGEONHOLE_DEFAULTS)
KNOWN_SETTINGS = frozenset(DOVECOT_DEFAULTS) | frozenset(IMPLEMENTED)
_classify_rest()


def classify(name: str) -> str:
    """"implemented", "refused", "warned" or "unknown" for a global setting."""
    if name in IMPLEMENTED:
        return "implemented"
    if name in REFUSED:
        return "refused"
    if name in WARNED:
        return "warned"
    return "unknown"


def type_of(name: str) -> str:
    """A setting's value type: IMPLEMENTED's, or inferred from Dovecot's default."""
    if name in IMPLEMENTED:
        return IMPLEMENTED[name][0]
    default = DOVECOT_DEFAULTS.get(name, "")
    if default in ("yes", "no"):
        return BOOL
    if re.fullmatch(r"\d+ (?:secs|mins|hours|days|weeks)", default):
        return TIME
    if re.fullmatch(r"\d+ ?[kMG]", default):
        return SIZE
    return STR


def default_of(name: str) -> str:
    """Dovecot's default for a known setting (pydovecot's for its own ones)."""
    if name in DOVECOT_DEFAULTS:
        return DOVECOT_DEFAULTS[name]
    return IMPLEMENTED[name][1]


#: Settings the config package itself reads (it has no other reader).
CONFIG_READERS = frozenset({
    "protocols", "listen", "base_dir", "default_client_limit", "default_process_limit",
    "default_vsz_limit", "mail_plugins", "mail_location", "mail_attribute_dict",
})  # fmt: skip

# -- sections: keys of service, listener, namespace, mailbox, passdb ---------

#: Service settings pydovecot acts on; the rest are refused or warned.
SERVICE_REFUSED: dict[str, str] = {
    "extra_groups": "extra groups for a service are not supported",
    "privileged_group": "privileged groups for a service are not supported",
    "executable": "pydovecot runs its own programs",
}
SERVICE_WARNED: dict[str, str] = {
    "drop_priv_before_exec": "pydovecot drops privileges itself",
    "type": "service types are fixed",
}
#: ``service_count`` is honoured by the login services (pydovecot.login.process
#: ServiceCount); a mail process serves many sessions of its uid (warned);
#: anywhere else it is refused.
SERVICE_COUNT_SERVICES = frozenset({"imap-login", "pop3-login", "managesieve-login"})
SERVICE_COUNT_WARNED = frozenset({"imap", "pop3"})
_LOGINS = ("imap-login", "pop3-login", "managesieve-login")
#: Process-limit keys and the services whose processes honour them; in any
#: other service they warn (pop3 sessions live in the imap service's mail
#: processes, whose limits are ``service imap``'s).
SERVICE_KEY_HONOURED: dict[str, frozenset[str]] = {
    "process_limit": frozenset({*_LOGINS, "imap"}),
    "client_limit": frozenset({*_LOGINS, "imap"}),
    "process_min_avail": frozenset({*_LOGINS, "imap"}),
    "vsz_limit": frozenset({*_LOGINS, "imap"}),
    "idle_kill": frozenset({"imap"}),
}
#: Listener settings refused / warned (others are honoured).
LISTENER_REFUSED: dict[str, str] = {}
#: Services whose listeners may say ``haproxy = yes`` (pydovecot.login.haproxy).
HAPROXY_SERVICES = frozenset({"imap-login", "pop3-login", "managesieve-login"})
LISTENER_WARNED: dict[str, str] = {"reuse_port": "SO_REUSEPORT is not used"}
#: Namespace keys: honoured only for the one private inbox namespace.
NAMESPACE_IMPLEMENTED = frozenset({"name", "inbox", "type", "prefix", "location", "separator"})
NAMESPACE_WARNED: dict[str, str] = {
    "hidden": "the only namespace is never hidden",
    "list": "the only namespace is always listed",
    "subscriptions": "the only namespace keeps its own subscriptions",
    "ignore_on_failure": "cosmetic for the only namespace",
    "order": "cosmetic for the only namespace",
}
NAMESPACE_REFUSED: dict[str, str] = {"alias_for": "namespace aliases are not supported"}
MAILBOX_IMPLEMENTED = frozenset({"name", "auto", "special_use", "autoexpunge",
                                 "autoexpunge_max_mails"})  # mailproc.autoexpunge
MAILBOX_WARNED: dict[str, str] = {"comment": "cosmetic", "driver": "cosmetic"}
MAILBOX_REFUSED: dict[str, str] = {}
#: passdb/userdb keys pydovecot refuses (authd honours the rest).
DB_REFUSED: dict[str, str] = {"username_filter": "passdb/userdb username_filter is not supported"}

# -- plugins ---------------------------------------------------------------

#: ``mail_plugins`` names pydovecot honours.  ``sieve`` is implemented in
#: pydovecot/sieve (its keys are the sieve* plugin settings).
MAIL_PLUGINS_IMPLEMENTED = frozenset({"sieve", "quota", "imap_quota"})
#: Dovecot plugins pydovecot refuses in mail_plugins: name -> why.
MAIL_PLUGINS_REFUSED: dict[str, str] = {
    "quota_clone": "quota_clone is not supported",
    "acl": "ACLs are not supported yet: rights would not be enforced",
    "imap_acl": "ACLs are not supported yet: rights would not be enforced",
    "zlib": "compressed mail storage is not supported",
    "mail_compress": "compressed mail storage is not supported",
    "mail_crypt": "encrypted mail storage is not supported",
    "trash": "the trash plugin is not supported",
    "lazy_expunge": "lazy expunge is not supported",
    "virtual": "virtual mailboxes are not supported",
    "listescape": "listescape is not supported",
    "pop3_migration": "pop3_migration is not supported",
    "push_notification": "push notifications are not supported",
    "imap_sieve": "IMAPSieve is not supported",
    "imap_filter_sieve": "IMAP FILTER=SIEVE is not supported",
    "mailbox_alias": "mailbox aliases are not supported",
    "snarf": "snarf is not supported",
    "welcome": "the welcome plugin is not supported",
    "fts": "full-text search indexes are not supported (SEARCH reads the mail)",
    "fts_lucene": "full-text search indexes are not supported (SEARCH reads the mail)",
    "fts_solr": "full-text search indexes are not supported (SEARCH reads the mail)",
    "fts_squat": "full-text search indexes are not supported (SEARCH reads the mail)",
    "fts_flatcurve": "full-text search indexes are not supported (SEARCH reads the mail)",
    "replication": "replication is not supported",
}
#: Cosmetic plugins: only warned.
MAIL_PLUGINS_WARNED: dict[str, str] = {
    "notify": "a base plugin with nothing to do alone",
    "mail_log": "mail_log events are not logged yet",
    "stats": "statistics are not collected",
    "old_stats": "statistics are not collected",
    "imap_stats": "statistics are not collected",
    "imap_old_stats": "statistics are not collected",
    "last_login": "last logins are not recorded",
    "imap_zlib": "COMPRESS=DEFLATE is always offered",
    "expire": "obsolete",
    "autocreate": "obsolete: use mailbox { auto = }",
    "notify_status": "not supported",
    "mail_lua": "not supported",
    "imap_lua": "not supported",
}
#: plugin {} keys belong to a plugin by prefix; keys of implemented plugins
#: are implemented (sieve: pydovecot/sieve reads them).
PLUGIN_KEY_OWNERS: tuple[tuple[str, str], ...] = (
    ("sieve", "sieve"), ("imapsieve", "imap_sieve"), ("quota", "quota"), ("acl", "acl"),
    ("mail_log", "mail_log"), ("fts", "fts"), ("zlib", "zlib"), ("mail_crypt", "mail_crypt"),
    ("trash", "trash"), ("lazy_expunge", "lazy_expunge"), ("push_notification",
    "push_notification"), ("last_login", "last_login"), ("expire", "expire"),
    ("mail_replica", "replication"), ("replication", "replication"), ("autocreate",
    "autocreate"), ("autosubscribe", "autocreate"), ("mailbox_alias", "mailbox_alias"),
    ("welcome", "welcome"), ("pop3_migration", "pop3_migration"), ("snarf", "snarf"),
    ("stats", "stats"), ("old_stats", "old_stats"), ("notify_status", "notify_status"),
    ("mail_compress", "mail_compress"), ("virtual", "virtual"), ("listescape", "listescape"),
    ("recipient_delimiter", ""), ("mail_lua", "mail_lua"), ("quota_clone", "quota_clone"),
)  # fmt: skip


def check_quota_key(key: str, value: str) -> str | None:
    """Why a quota plugin setting can't be honoured, or None when it can
    (pydovecot/storage/quota.py parses them again per user)."""
    from pydovecot.storage import quota as Q

    root = re.match(r"quota\d*(?=_|$)", key)
    rest = key[root.end():] if root else key
    try:
        if root and rest == "":
            Q.parse_backend(value)
        elif root and re.fullmatch(r"_rule\d*", rest):
            Q.parse_rule(value)
        elif root and re.fullmatch(r"_warning\d*", rest):
            Q.parse_warning(value)
        elif root and rest == "_grace":
            Q.parse_quantity(value.split()[0] if value.split() else "", 1)
        elif key == "quota_max_mail_size":
            Q.parse_quantity(value, 1)
        elif key not in QUOTA_KEYS:
            return f"{key}: refused: this quota setting is not supported by pydovecot"
    except Q.QuotaSettingError as e:
        return str(e)
    return None


#: quota plugin keys honoured besides quotaN, quotaN_ruleN, quotaN_warningN,
#: quotaN_grace (quota_over_flag*, quota_over_script, quota_set … are refused)
QUOTA_KEYS = frozenset({"quota_exceeded_message", "quota_max_mail_size", "quota_vsizes",
                        "quota_status_success", "quota_status_nouser",
                        "quota_status_overquota", "quota_status_toolarge"})


def check_quota_plugin(plugin: dict[str, str]) -> str | None:
    """Why the quota settings as a whole can't be honoured (Dovecot's
    count backend needs quota_vsizes = yes), or None."""
    from pydovecot.storage import quota as Q

    try:
        Q.parse_settings(plugin)
    except Q.QuotaSettingError as e:
        return str(e)
    return None


#: ``plugin { }`` keys of Pigeonhole's Sieve that pydovecot/sieve and
#: pydovecot/managesieve read (numbered ones by pattern); any other
#: ``sieve_*`` key is warned, and those that would change delivery are
#: refused (:data:`SIEVE_REFUSED`).
SIEVE_KEYS_READ = re.compile(
    r"sieve|sieve_(?:after|before)\d*|sieve_default(?:_name)?|sieve_dir|sieve_global(?:_dir|"
    r"_extensions)?|sieve_extensions|sieve_max_(?:actions|cpu_time|redirects|script_size)|"
    r"sieve_quota_max_(?:scripts|storage)|sieve_redirect_(?:duplicate_period|envelope_from)|"
    r"sieve_duplicate_(?:default|max)_period|sieve_user_(?:email|log)|sieve_vacation_[a-z_]+|"
    r"sieve_variables_max_(?:scope|variable)_size|sieve_(?:spamtest|virustest)_[a-z_]+\d*")
#: Sieve keys that change delivery if ignored: refused at start.
SIEVE_REFUSED: dict[str, str] = {
    "sieve_plugins": "Sieve plugins (extprograms, imapsieve) are not supported",
    "sieve_pipe_bin_dir": "the vnd.dovecot.pipe extension is not supported",
    "sieve_filter_bin_dir": "the vnd.dovecot.filter extension is not supported",
    "sieve_execute_bin_dir": "the vnd.dovecot.execute extension is not supported",
    "sieve_discard": "sieve_discard scripts are not supported",
}


def check_sieve_key(key: str, value: str) -> tuple[str, str] | None:
    """("refused" | "warned", why) for a ``sieve_*`` plugin key pydovecot
    doesn't read; None for one it does (or an empty refused one)."""
    if SIEVE_KEYS_READ.fullmatch(key):
        return None
    if key in SIEVE_REFUSED:
        return None if not value.strip() else ("refused", SIEVE_REFUSED[key])
    return ("warned", "pydovecot's Sieve does not use it")


def plugin_key_owner(key: str) -> str | None:
    """The plugin a ``plugin {}`` key belongs to ("" = core), or None if unknown."""
    for prefix, owner in PLUGIN_KEY_OWNERS:
        if key == prefix or key.startswith(prefix + "_") or (
            key.startswith(prefix) and key[len(prefix):].isdigit()):
            return owner
    return None


#: mail_location formats and options pydovecot honours (storage/__init__.py
#: enforces the same rules for userdb ``mail`` overrides).
LOCATION_FORMATS = frozenset({"maildir", "mbox"})
LOCATION_OPTIONS = {"UTF-8": None, "LAYOUT": frozenset({"maildir++"})}
#: mbox (pydovecot/storage/mbox.py): INBOX= file, INDEX=/CONTROL= dirs, LAYOUT=fs
MBOX_LOCATION_OPTIONS = {"UTF-8": None, "LAYOUT": frozenset({"fs"}), "INBOX": None,
                         "INDEX": None, "CONTROL": None}


#: The attribute dicts pydovecot keeps (pydovecot/storage/attributes.py):
#: Dovecot's file dict in the home, always on (special-use and URLAUTH keys
#: live there too), so an empty value means the same file.
ATTRIBUTE_DICTS = frozenset({"", "file:%h/dovecot-attributes", "file:~/dovecot-attributes"})


def check_attribute_dict(value: str) -> str | None:
    """Why a mail_attribute_dict can't be honoured, or None when it can."""
    if value.strip() in ATTRIBUTE_DICTS:
        return None
    return (f"mail_attribute_dict = {value}: pydovecot keeps mailbox attributes in "
            "file:%h/dovecot-attributes only")


def check_location(value: str) -> str | None:
    """Why a mail_location can't be honoured, or None when it can."""
    if not value:
        return None
    fmt, sep, rest = value.partition(":")
    if not sep:
        return f"mail_location needs a format prefix: {value!r}"
    if fmt not in LOCATION_FORMATS:
        return f"mail storage format {fmt!r} is not supported (only maildir and mbox)"
    options = MBOX_LOCATION_OPTIONS if fmt == "mbox" else LOCATION_OPTIONS
    for opt in rest.split(":")[1:]:
        key, _, arg = opt.partition("=")
        key = key.upper()
        if key not in options:
            return f"mail_location option {key} is not supported for {fmt}"
        allowed = options[key]
        if allowed is not None and arg.lower() not in allowed:
            return f"mail_location {key}={arg} is not supported"
    return None
