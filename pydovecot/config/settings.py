"""The registry of setting names, types and defaults that the config parser knows.

``DOVECOT_DEFAULTS`` is every global setting of Dovecot 2.3.19 with its default,
as printed by ``doveconf -d`` (generated once, not read at run time); its keys
form ``KNOWN_SETTINGS``.  ``IMPLEMENTED`` holds the settings pydovecot acts on,
with their type and pydovecot's default (which differs from Dovecot's only for
user names, paths, log destination and greeting).  Section registries say which
keys are valid inside ``service``, listener, ``passdb``/``userdb``, ``namespace``
and ``mailbox`` sections.  Pure data plus value converters; trusts nothing.
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
    "info_log_path": (STR, ""),
    "debug_log_path": (STR, ""),
    "login_greeting": (STR, "pydovecot ready."),
    "mail_location": (STR, ""),
    "mail_home": (STR, ""),
    "mail_uid": (STR, ""),
    "mail_gid": (STR, ""),
    "first_valid_uid": (UINT, "500"),
    "last_valid_uid": (UINT, "0"),
    "first_valid_gid": (UINT, "1"),
    "last_valid_gid": (UINT, "0"),
    "mail_privileged_group": (STR, ""),
    "disable_plaintext_auth": (BOOL, "yes"),
    "ssl": ("enum", "yes"),
    "ssl_cert": (STR, ""),
    "ssl_key": (STR, ""),
    "ssl_key_password": (STR, ""),
    "ssl_min_protocol": ("enum", "TLSv1.2"),
    "ssl_cipher_list": (
        STR,
        "ALL:!kRSA:!SRP:!kDHd:!DSS:!aNULL:!eNULL:!EXPORT:!DES:!3DES:!MD5:!PSK:!RC4:!ADH:!LOW@STRENGTH",
    ),
    "auth_mechanisms": (LIST, "plain"),
    "auth_username_format": (STR, "%Lu"),
    "auth_failure_delay": (TIME, "2 secs"),
    "auth_verbose": (BOOL, "no"),
    "auth_verbose_passwords": (STR, "no"),
    "auth_debug": (BOOL, "no"),
    "auth_debug_passwords": (BOOL, "no"),
    "auth_default_realm": (STR, ""),
    "auth_realms": (LIST, ""),
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
    # pydovecot-only: Dovecot's login processes have these built in
    # (LOGIN_MAX_INBUF_SIZE, CLIENT_LOGIN_TIMEOUT_MSECS); the last two are new.
    "login_max_inbuf_size": (SIZE, "1k"),
    "login_timeout": (TIME, "3 mins"),
    "login_auth_timeout": (TIME, "30 secs"),
    "login_max_ip_connections": (UINT, "100"),
    "login_log_format_elements": (
        STR,
        "user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{session}>",
    ),
    "login_log_format": (STR, "%$: %s"),
    "mail_log_prefix": (STR, "%s(%u)<%{pid}><%{session}>: "),
    "default_login_user": (STR, "pydovecot-null"),
    "default_internal_user": (STR, "pydovecot"),
    "default_internal_group": (STR, "pydovecot"),
    "default_client_limit": (UINT, "1000"),
    "default_process_limit": (UINT, "100"),
    "default_vsz_limit": (SIZE, "256 M"),
    "default_idle_kill": (TIME, "1 mins"),
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
    "lmtp_save_to_detail_mailbox": (BOOL, "no"),
    "recipient_delimiter": (STR, "+"),
    "lda_mailbox_autocreate": (BOOL, "no"),
    "postmaster_address": (STR, "postmaster@%{if;%d;ne;;%d;%{hostname}}"),
    "hostname": (STR, ""),
    "mail_max_userip_connections": (UINT, "10"),
    "verbose_proctitle": (BOOL, "no"),
    "mail_debug": (BOOL, "no"),
    "mail_fsync": ("enum", "optimized"),
    "maildir_very_dirty_syncs": (BOOL, "no"),
    "mail_plugins": (STR, ""),
    "mail_attachment_dir": (STR, ""),
    # Sieve's outgoing mail (pydovecot.sieve.deliver).
    "sendmail_path": (STR, "/usr/sbin/sendmail"),
    "submission_host": (STR, ""),
    "lda_mailbox_autosubscribe": (BOOL, "no"),
}

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
IMPLEMENTED_SERVICES = ("auth", "imap-login", "imap", "pop3-login", "pop3", "lmtp")

#: Services Dovecot 2.3 knows but pydovecot does not run (configuring them warns).
KNOWN_SERVICES = frozenset(
    {
        "aggregator", "anvil", "auth-worker", "config", "dict-async", "dict", "director",
        "dns-client", "doveadm", "health-check", "imap-hibernate", "imap-urlauth-login",
        "imap-urlauth-worker", "imap-urlauth", "indexer-worker", "indexer", "ipc", "log",
        "old-stats", "replicator", "stats", "submission-login", "submission", "tcpwrap",
        "managesieve-login", "managesieve", "quota-status", "quota-warning",
    }
)  # fmt: skip

#: Protocols pydovecot serves; others known to Dovecot only warn.
IMPLEMENTED_PROTOCOLS = ("imap", "pop3", "lmtp")
KNOWN_PROTOCOLS = frozenset({"submission", "sieve", "lda", "doveadm", "none"})

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
