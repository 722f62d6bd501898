"""Tests for pydovecot.config: Dovecot 2.3 syntax, typing, errors, services, round trip."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from pydovecot.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    load_config,
)
from pydovecot.config import settings as S
from pydovecot.config.parser import parse_config


class _Files(unittest.TestCase):
    """Helpers that write config files into a fresh temporary directory."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def load(self, text: str, strict: bool = True) -> Config:
        return parse_config(self.write("dovecot.conf", text), strict=strict)

    def error(self, text: str, name: str = "dovecot.conf") -> str:
        path = self.write(name, text)
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        msg = str(cm.exception)
        self.assertNotIn("\n", msg)
        return msg


class SyntaxTests(_Files):
    def test_defaults(self) -> None:
        cfg = self.load("")
        self.assertEqual(cfg.protocols, ["imap", "pop3", "lmtp"])
        self.assertEqual(cfg.get_list("listen"), ["*", "::"])
        self.assertEqual(cfg.get("login_greeting"), "pydovecot ready.")
        self.assertEqual(cfg.get("default_login_user"), "pydovecot-null")
        self.assertEqual(cfg.get("default_internal_user"), "pydovecot")
        self.assertEqual(cfg.get("log_path"), "")
        self.assertEqual(cfg.get_int("first_valid_uid"), 500)
        self.assertEqual(cfg.get_int("mail_max_userip_connections"), 10)
        self.assertEqual(cfg.get_size("imap_max_line_length"), 65536)
        self.assertEqual(cfg.get_time("auth_failure_delay"), 2.0)
        self.assertTrue(cfg.get_bool("disable_plaintext_auth"))
        self.assertEqual(cfg.get("ssl"), "yes")
        self.assertEqual(cfg.get("auth_username_format"), "%Lu")
        self.assertEqual(cfg.get("pop3_uidl_format"), "%08Xu%08Xv")
        self.assertTrue(cfg.get("imap_logout_format").startswith("in=%i out=%o"))
        # a known but unimplemented setting falls back to Dovecot's default
        self.assertEqual(cfg.get("mail_cache_fields"), "flags")
        self.assertEqual(cfg.warnings, [])
        self.assertRaises(KeyError, cfg.get, "no_such_setting")

    def test_all_implemented_defaults_are_valid(self) -> None:
        for key, (kind, default) in S.IMPLEMENTED.items():
            S.check_value(key, kind, default)
            self.assertIn(key, S.KNOWN_SETTINGS)
        self.assertGreater(len(S.KNOWN_SETTINGS), 300)

    def test_values_quotes_comments_continuation(self) -> None:
        cfg = self.load(
            "# a comment\n"
            "   \n"
            "login_greeting = Hello there   \n"
            "mail_location=maildir:~/Maildir # trailing comment\n"
            'imap_capability = "IMAP4rev1 # not a comment"\n'
            "hostname = 'single quoted'\n"
            'postmaster_address = "a\\"b"\n'
            "mail_attachment_dir =\n"
            "auth_mechanisms = plain \\\n"
            "    login \\\n"
            "    cram-md5\n"
        )
        self.assertEqual(cfg.get("login_greeting"), "Hello there")
        self.assertEqual(cfg.get("mail_location"), "maildir:~/Maildir")
        self.assertEqual(cfg.get("imap_capability"), "IMAP4rev1 # not a comment")
        self.assertEqual(cfg.get("hostname"), "single quoted")
        self.assertEqual(cfg.get("postmaster_address"), 'a"b')
        self.assertEqual(cfg.get("mail_attachment_dir"), "")
        self.assertEqual(cfg.get_list("auth_mechanisms"), ["plain", "login", "cram-md5"])

    def test_ambiguous_hash_warns(self) -> None:
        cfg = self.load("ssl_key_password = abc#def\n")
        self.assertEqual(cfg.get("ssl_key_password"), "abc")
        self.assertIn("dovecot.conf:1: ambiguous '#'", cfg.warnings[0])

    def test_later_value_wins(self) -> None:
        cfg = self.load("hostname = a\nhostname = b\n")
        self.assertEqual(cfg.get("hostname"), "b")
        self.assertTrue(cfg.origins["hostname"].endswith("dovecot.conf:2"))

    def test_dollar_references(self) -> None:
        # Dovecot 2.3's rules (checked against doveconf in test_doveconf):
        # only $KEY in KEY's own value expands, to its value so far or to
        # Dovecot's default; other setting names stay as written.
        cfg = self.load(
            "protocols = $protocols imap\n"
            "auth_mechanisms = $auth_mechanisms login\n"
            "mail_plugins = notify\n"
            "mail_plugins = $mail_plugins mail_log\n"
            "hostname = $default_internal_user\n"
            "imap_capability = $mail_cache_fields more\n"
            'login_greeting = "$not_expanded"\n'
            "protocol imap {\n"
            "  mail_plugins = $mail_plugins imap_zlib\n"
            "  mail_plugins = $mail_plugins stats\n"
            "}\n"
            "protocol lmtp {\n"
            "  mail_plugins = $mail_plugins sieve\n"
            "}\n"
            "recipient_delimiter = x$recipient_delimiter\n"
        )
        self.assertEqual(cfg.get("protocols"), " imap")
        self.assertEqual(cfg.protocols, ["imap"])
        self.assertEqual(cfg.get("auth_mechanisms"), "plain login")
        self.assertEqual(cfg.get("mail_plugins"), "notify mail_log")
        self.assertEqual(cfg.get("hostname"), "$default_internal_user")
        self.assertEqual(cfg.get("imap_capability"), "$mail_cache_fields more")
        self.assertEqual(cfg.get("login_greeting"), "$not_expanded")
        self.assertEqual(cfg.get("recipient_delimiter"), "x$recipient_delimiter")
        self.assertEqual(cfg.get("mail_plugins", "imap"), "notify mail_log imap_zlib stats")
        self.assertEqual(cfg.get("mail_plugins", "lmtp"), "notify mail_log sieve")
        self.assertEqual(cfg.get("mail_plugins", "pop3"), "notify mail_log")

    def test_file_values_are_lazy(self) -> None:
        self.write("ssl/cert.pem", "CERTIFICATE\n")
        self.write("conf.d/10-ssl.conf", "ssl_key = <../ssl/key.pem\n")
        cfg = self.load(
            "ssl_cert = < ssl/cert.pem\n"
            f"ssl_ca = <{self.dir}/ssl/cert.pem\n"
            "!include conf.d/10-ssl.conf\n"
        )
        self.assertEqual(cfg.get("ssl_cert"), "<" + os.path.join(self.dir, "ssl/cert.pem"))
        self.assertEqual(cfg.read_value("ssl_cert"), "CERTIFICATE\n")
        self.assertEqual(cfg.read_value("hostname"), "")
        # relative to the including file's directory, read only when asked
        self.assertEqual(cfg.get("ssl_key"), "<" + os.path.join(self.dir, "ssl/key.pem"))
        with self.assertRaises(ConfigError) as cm:
            cfg.read_value("ssl_key")
        self.assertIn("10-ssl.conf:1: ssl_key: can't read", str(cm.exception))
        self.write("ssl/key.pem", "KEY")
        self.assertEqual(cfg.read_value("ssl_key"), "KEY")

    def test_includes(self) -> None:
        self.write("conf.d/10-mail.conf", "mail_location = maildir:~/Maildir\n")
        self.write("conf.d/20-imap.conf", "protocol imap {\n  imap_capability = X\n}\n")
        self.write("conf.d/30-nested.conf", "!include sub/inner.conf\n")
        self.write("conf.d/sub/inner.conf", "hostname = inner\n")
        self.write("conf.d/README", "this is not config\n")
        self.write("local.conf", "login_greeting = local\n")
        cfg = self.load(
            "!include conf.d/*.conf\n"
            "!include_try local.conf\n"
            "!include_try missing.conf\n"
            "!include_try nodir/*.conf\n"
        )
        self.assertEqual(cfg.get("mail_location"), "maildir:~/Maildir")
        self.assertEqual(cfg.get("imap_capability", "imap"), "X")
        self.assertEqual(cfg.get("hostname"), "inner")
        self.assertEqual(cfg.get("login_greeting"), "local")
        names = [os.path.relpath(p, self.dir) for p in cfg.source_files]
        self.assertEqual(
            names,
            [
                "dovecot.conf",
                "conf.d/10-mail.conf",
                "conf.d/20-imap.conf",
                "conf.d/30-nested.conf",
                "conf.d/sub/inner.conf",
                "local.conf",
            ],
        )
        self.assertEqual(cfg.path, os.path.join(self.dir, "dovecot.conf"))

    def test_section_spanning_include(self) -> None:
        self.write("inner.conf", "  driver = pam\n")
        cfg = self.load("passdb {\n!include inner.conf\n}\n")
        self.assertEqual(cfg.passdbs, [{"driver": "pam", "args": ""}])

    def test_unsupported_settings_warn(self) -> None:
        cfg = self.load(
            "mail_cache_fields = flags date\nprotocol imap {\n  imap_id_send = name\n}\n"
            "mail_cache_fields = flags\nmail_cache_fields = date\n"
        )
        self.assertEqual(cfg.get("mail_cache_fields"), "date")
        self.assertEqual(len(cfg.warnings), 2)  # once per setting
        self.assertRegex(
            cfg.warnings[0],
            r"dovecot\.conf:1: setting 'mail_cache_fields' is not supported by pydovecot; "
            r"ignored \(.*\)$",
        )
        self.assertIn("dovecot.conf:3: setting 'imap_id_send'", cfg.warnings[1])

    def test_protocols(self) -> None:
        cfg = self.load("protocols = imap lmtp\n")
        self.assertEqual(cfg.protocols, ["imap", "lmtp"])
        self.assertEqual(list(cfg.enabled_services()), ["auth", "imap-login", "imap", "lmtp"])
        cfg = self.load("protocols = pop3, doveadm\n")
        self.assertEqual(cfg.protocols, ["pop3"])
        self.assertEqual(list(cfg.enabled_services()), ["auth", "pop3-login", "pop3"])
        self.assertIn("protocol 'doveadm' is not supported", cfg.warnings[0])
        cfg = self.load("protocols = submission\n")
        self.assertEqual(list(cfg.enabled_services()), ["auth", "submission-login"])
        self.assertEqual(self.load("protocols = none\n").protocols, [])
        self.assertEqual(list(self.load("protocols =\n").enabled_services()), ["auth"])
        # disabled protocols' services are still parsed
        self.assertIn("pop3-login", self.load("protocols = imap\n").services)


class TypedGetterTests(_Files):
    def test_bool(self) -> None:
        cfg = self.load(
            "mail_debug = yes\nverbose_proctitle = true\nauth_debug = 1\n"
            "auth_verbose = No\n"
        )
        self.assertTrue(cfg.get_bool("mail_debug"))
        self.assertTrue(cfg.get_bool("verbose_proctitle"))
        self.assertTrue(cfg.get_bool("auth_debug"))
        self.assertFalse(cfg.get_bool("auth_verbose"))
        self.assertFalse(cfg.get_bool("maildir_very_dirty_syncs"))

    def test_sizes(self) -> None:
        for text, expected in [
            ("10M", 10 << 20),
            ("1 G", 1 << 30),
            ("64k", 65536),
            ("64 kB", 65536),
            ("512", 512),
            ("5 B", 5),
            ("2T", 2 << 40),
        ]:
            cfg = self.load(f"default_vsz_limit = {text}\n")
            self.assertEqual(cfg.get_size("default_vsz_limit"), expected, text)

    def test_times(self) -> None:
        for text, expected in [
            ("2 secs", 2.0),
            ("500 ms", 0.5),
            ("1 min", 60.0),
            ("1h", 3600.0),
            ("30", 30.0),
            ("2 mins", 120.0),
            ("1 days", 86400.0),
            ("1 weeks", 604800.0),
        ]:
            cfg = self.load(f"auth_failure_delay = {text}\n")
            self.assertEqual(cfg.get_time("auth_failure_delay"), expected, text)

    def test_lists(self) -> None:
        cfg = self.load("login_trusted_networks = 10.0.0.0/8, 192.168.1.0/24   ::1\n")
        self.assertEqual(
            cfg.get_list("login_trusted_networks"), ["10.0.0.0/8", "192.168.1.0/24", "::1"]
        )
        self.assertEqual(cfg.get_list("auth_realms"), [])

    def test_int(self) -> None:
        cfg = self.load("first_valid_uid = 1000\nlast_valid_uid = 60000\n")
        self.assertEqual(cfg.get_int("first_valid_uid"), 1000)
        self.assertEqual(cfg.get_int("last_valid_uid"), 60000)

    def test_getter_on_bad_unvalidated_value(self) -> None:
        # known but not implemented: still type-checked (as Dovecot does)
        msg = self.error("mail_nfs_index = perhaps\n")
        self.assertIn("dovecot.conf:1: mail_nfs_index: invalid boolean", msg)

    def test_path_setting(self) -> None:
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)
        cfg = self.load(
            "base_dir = state/run\nstate_dir = state\nlog_path = /var/log/x.log\n"
            "info_log_path = syslog\n"
        )
        os.chdir(cwd)
        self.assertEqual(cfg.path_setting("base_dir"), os.path.join(self.dir, "state/run"))
        self.assertEqual(cfg.path_setting("state_dir"), os.path.join(self.dir, "state"))
        self.assertEqual(cfg.path_setting("log_path"), "/var/log/x.log")
        self.assertEqual(cfg.path_setting("info_log_path"), "syslog")
        self.assertEqual(cfg.path_setting("debug_log_path"), "")
        listener = cfg.services["auth"].unix_listeners["auth-login"]
        self.assertEqual(listener.path, os.path.join(self.dir, "state/run/auth-login"))


class SectionTests(_Files):
    def test_passdb_userdb(self) -> None:
        cfg = self.load(
            "passdb {\n"
            "  driver = passwd-file\n"
            "  args = scheme=CRYPT username_format=%u /etc/dovecot/users\n"
            "}\n"
            "passdb masters {\n"
            "  driver = passwd-file\n"
            "  master = yes\n"
            "  result_success = continue\n"
            "  skip = authenticated\n"
            "  deny = no\n"
            "}\n"
            "userdb {\n"
            "  driver = static\n"
            "  args = uid=vmail gid=vmail home=/var/vmail/%d/%n\n"
            "  default_fields = quota_rule=*:storage=1G\n"
            "  override_fields = mail=maildir:~/Maildir\n"
            "}\n"
        )
        self.assertEqual(
            cfg.passdbs,
            [
                {
                    "driver": "passwd-file",
                    "args": "scheme=CRYPT username_format=%u /etc/dovecot/users",
                },
                {
                    "name": "masters",
                    "driver": "passwd-file",
                    "master": "yes",
                    "result_success": "continue",
                    "skip": "authenticated",
                    "deny": "no",
                    "args": "",
                },
            ],
        )
        self.assertEqual(len(cfg.userdbs), 1)
        self.assertEqual(cfg.userdbs[0]["default_fields"], "quota_rule=*:storage=1G")
        self.assertEqual(cfg.userdbs[0]["override_fields"], "mail=maildir:~/Maildir")

    def test_services_defaults(self) -> None:
        cfg = self.load("")
        login = cfg.services["imap-login"]
        self.assertEqual(login.inet_listeners["imap"].port, 143)
        self.assertFalse(login.inet_listeners["imap"].ssl)
        self.assertEqual(login.inet_listeners["imaps"].port, 993)
        self.assertTrue(login.inet_listeners["imaps"].ssl)
        self.assertEqual(login.inet_listeners["imap"].addresses, ["*", "::"])
        self.assertEqual(login.user, "pydovecot-null")
        self.assertEqual(login.protocol, "imap")
        pop = cfg.services["pop3-login"]
        self.assertEqual(pop.inet_listeners["pop3"].port, 110)
        self.assertEqual(pop.inet_listeners["pop3s"].port, 995)
        self.assertTrue(pop.inet_listeners["pop3s"].ssl)
        self.assertEqual(cfg.services["lmtp"].inet_listeners, {})
        self.assertIn("lmtp", cfg.services["lmtp"].unix_listeners)
        self.assertEqual(cfg.services["imap"].inet_listeners, {})
        self.assertEqual(cfg.services["imap"].unix_listeners, {})
        auth = cfg.services["auth"]
        self.assertEqual(
            sorted(auth.unix_listeners), ["auth-client", "auth-login", "auth-master", "auth-userdb"]
        )
        self.assertEqual(auth.unix_listeners["auth-login"].user, "pydovecot-null")
        self.assertEqual(auth.unix_listeners["auth-login"].mode, 0o600)
        self.assertEqual(auth.unix_listeners["auth-userdb"].user, "pydovecot")
        self.assertEqual(auth.unix_listeners["auth-userdb"].mode, 0o600)
        self.assertEqual(auth.unix_listeners["auth-master"].mode, 0o600)
        self.assertEqual(auth.process_limit, 1)
        self.assertEqual(login.process_limit, 100)  # 0 -> default_process_limit
        self.assertEqual(login.client_limit, 1000)
        self.assertEqual(login.vsz_limit, 256 << 20)

    def test_service_override_merges(self) -> None:
        cfg = self.load(
            "listen = 127.0.0.1\n"
            "default_login_user = nobody\n"
            "default_process_limit = 7\n"
            "service imap-login {\n"
            "  inet_listener imap {\n"
            "    port = 10143\n"
            "  }\n"
            "  process_min_avail = 2\n"
            "  vsz_limit = 1G\n"
            "}\n"
            "service imap-login {\n"
            "  inet_listener imaps {\n"
            "    address = 10.0.0.1, ::1\n"
            "    haproxy = no\n"
            "  }\n"
            "  inet_listener extra {\n"
            "    port = 8143\n"
            "  }\n"
            "  client_limit = 50\n"
            "}\n"
            "service lmtp {\n"
            "  inet_listener lmtp {\n"
            "    address = 127.0.0.1\n"
            "    port = 24\n"
            "  }\n"
            "  unix_listener lmtp {\n"
            "    mode = 0660\n"
            "    group = postfix\n"
            "  }\n"
            "}\n"
            "service auth {\n"
            "  unix_listener /var/spool/postfix/private/auth {\n"
            "    mode = 0666\n"
            "    user = $default_internal_user\n"
            "  }\n"
            "}\n"
        )
        login = cfg.services["imap-login"]
        self.assertEqual(login.inet_listeners["imap"].port, 10143)
        self.assertFalse(login.inet_listeners["imap"].ssl)
        self.assertEqual(login.inet_listeners["imap"].addresses, ["127.0.0.1"])
        self.assertEqual(login.inet_listeners["imaps"].port, 993)
        self.assertTrue(login.inet_listeners["imaps"].ssl)
        self.assertFalse(login.inet_listeners["imaps"].haproxy)
        self.assertEqual(login.inet_listeners["imaps"].addresses, ["10.0.0.1", "::1"])
        self.assertEqual(login.inet_listeners["extra"].port, 8143)
        self.assertEqual(login.process_min_avail, 2)
        self.assertEqual(login.process_limit, 7)
        self.assertEqual(login.client_limit, 50)
        self.assertEqual(login.vsz_limit, 1 << 30)
        self.assertEqual(login.user, "nobody")
        lmtp = cfg.services["lmtp"]
        self.assertEqual(lmtp.inet_listeners["lmtp"].port, 24)
        self.assertEqual(lmtp.unix_listeners["lmtp"].mode, 0o660)
        self.assertEqual(lmtp.unix_listeners["lmtp"].group, "postfix")
        postfix = cfg.services["auth"].unix_listeners["/var/spool/postfix/private/auth"]
        self.assertEqual(postfix.path, "/var/spool/postfix/private/auth")
        self.assertEqual(postfix.mode, 0o666)
        self.assertEqual(postfix.user, "pydovecot")
        self.assertIn("auth-login", cfg.services["auth"].unix_listeners)

    def test_port_zero_disables(self) -> None:
        cfg = self.load("service pop3-login {\n  inet_listener pop3 {\n    port = 0\n  }\n}\n")
        self.assertEqual(cfg.services["pop3-login"].inet_listeners["pop3"].port, 0)

    def test_unsupported_service_warns(self) -> None:
        cfg = self.load("service anvil {\n  client_limit = 10\n}\n")
        self.assertNotIn("anvil", cfg.services)
        self.assertIn("service 'anvil' is not supported by pydovecot yet", cfg.warnings[0])

    def test_protocol_filters(self) -> None:
        cfg = self.load(
            "login_greeting = global\n"
            "protocol imap {\n  login_greeting = imap one\n}\n"
            "protocol pop3 lmtp {\n  recipient_delimiter = -\n}\n"
            "protocol !pop3 {\n  hostname = not-pop3\n}\n"
        )
        self.assertEqual(cfg.get("login_greeting"), "global")
        self.assertEqual(cfg.get("login_greeting", protocol="imap"), "imap one")
        self.assertEqual(cfg.get("login_greeting", protocol="pop3"), "global")
        self.assertEqual(cfg.get("recipient_delimiter", protocol="lmtp"), "-")
        self.assertEqual(cfg.get("recipient_delimiter", protocol="pop3"), "-")
        self.assertEqual(cfg.get("recipient_delimiter", protocol="imap"), "+")
        self.assertEqual(cfg.get("hostname", protocol="imap"), "not-pop3")
        self.assertEqual(cfg.get("hostname", protocol="pop3"), "")
        self.assertEqual(cfg.get("hostname"), "")

    def test_listen_per_protocol(self) -> None:
        cfg = self.load("listen = 127.0.0.1\nprotocol pop3 {\n  listen = 127.0.0.2\n}\n")
        self.assertEqual(cfg.services["pop3-login"].inet_listeners["pop3"].addresses, ["127.0.0.2"])
        self.assertEqual(cfg.services["imap-login"].inet_listeners["imap"].addresses, ["127.0.0.1"])

    def test_local_remote_filters_kept_and_refused(self) -> None:
        text = (
            "local 192.168.0.1 {\n"
            "  protocol imap {\n    ssl_cert = </etc/ssl/a.pem\n  }\n"
            "}\n"
            "remote 10.0.0.0/8 {\n  disable_plaintext_auth = no\n}\n"
            "local_name mail.example.com {\n  ssl_cert = </etc/ssl/b.pem\n}\n"
        )
        msg = self.error(text)
        self.assertIn("dovecot.conf:3: ssl_cert inside local 192.168.0.1 { }: pydovecot does "
                      "not apply local/remote/local_name filters yet", msg)
        cfg = parse_config(self.write("dovecot.conf", text), strict=False)
        # local_name { ssl_cert } is served by SNI (pydovecot.tls): not refused
        self.assertEqual(len(cfg.refusals), 2)
        self.assertEqual(len(cfg.filters), 3)
        self.assertEqual(cfg.filters[0]["match"], {"local": "192.168.0.1", "protocol": "imap"})
        self.assertEqual(cfg.filters[0]["settings"], {"ssl_cert": "</etc/ssl/a.pem"})
        self.assertEqual(cfg.filters[1]["settings"], {"disable_plaintext_auth": "no"})
        self.assertEqual(cfg.filters[2]["match"], {"local_name": "mail.example.com"})
        self.assertTrue(cfg.get_bool("disable_plaintext_auth"))  # not applied globally
        # cosmetic settings in a filter only warn; empty filters are fine
        cfg = self.load("remote 10.1.2.3 {\n  mail_debug = yes\n}\nlocal 127.0.0.1 {\n}\n")
        self.assertIn("setting 'mail_debug' is not supported", cfg.warnings[0])

    def test_namespaces_plugin_dict(self) -> None:
        self.write(
            "conf.d/15-mailboxes.conf",
            "namespace inbox {\n  mailbox Trash {\n    special_use = \\Trash\n  }\n}\n",
        )
        cfg = self.load(
            "namespace inbox {\n"
            "  inbox = yes\n"
            "  separator = /\n"
            "  mailbox Sent {\n    special_use = \\Sent\n    auto = subscribe\n  }\n"
            "}\n"
            "!include conf.d/*.conf\n"
            "namespace shared {\n  type = shared\n  prefix = shared/%%u/\n}\n"
            "plugin {\n  acl = vfile\n  anything_goes = yes\n  sieve = ~/.dovecot.sieve\n}\n"
            "dict {\n  quota = file:/var/lib/quota\n}\n"
            "protocol imap {\n  plugin {\n    imap_only = 1\n  }\n}\n",
            strict=False,
        )
        self.assertEqual(len(cfg.refusals), 3, cfg.refusals)  # shared: type, prefix, 2nd ns
        self.assertIn("dovecot.conf:11: namespace type shared", cfg.refusals[0])
        self.assertIn("only one namespace", cfg.refusals[2])
        self.assertIn("'acl' is for the acl plugin, which pydovecot does not load",
                      cfg.warnings[0])
        self.assertIn("'anything_goes' belongs to no plugin", cfg.warnings[1])
        self.assertEqual(len(cfg.warnings), 3)  # sieve is implemented
        inbox = cfg.namespaces["inbox"]
        self.assertEqual(inbox["inbox"], "yes")
        self.assertEqual(inbox["separator"], "/")
        self.assertEqual(inbox["mailboxes"]["Sent"]["special_use"], "\\Sent")
        self.assertEqual(inbox["mailboxes"]["Trash"]["special_use"], "\\Trash")
        self.assertEqual(cfg.namespaces["shared"]["prefix"], "shared/%%u/")
        self.assertEqual(cfg.plugin["acl"], "vfile")
        self.assertEqual(cfg.plugin["anything_goes"], "yes")
        self.assertEqual(cfg.dict, {"quota": "file:/var/lib/quota"})
        self.assertEqual(cfg.protocol_plugin, {"imap": {"imap_only": "1"}})

    def test_section_brace_variants(self) -> None:
        cfg = self.load('passdb "quoted name" {\n driver = pam\n}\nprotocol imap{\n}\n')
        self.assertEqual(cfg.passdbs[0]["name"], "quoted name")


class ErrorTests(_Files):
    def assertError(self, text: str, line: int, fragment: str) -> None:
        msg = self.error(text)
        prefix = f"{os.path.join(self.dir, 'dovecot.conf')}:{line}: "
        self.assertTrue(msg.startswith(prefix), msg)
        self.assertIn(fragment, msg)

    def test_unknown_setting(self) -> None:
        self.assertError("hostname = x\nno_such_thing = 1\n", 2, "unknown setting 'no_such_thing'")

    def test_typed_values_from_files(self) -> None:
        # A number from a file is read and checked at parse time, so a bad
        # or missing file is FILE:LINE, never a ValueError later.
        self.write("port", "1143\n")
        self.write("word", "hello\n")
        cfg = self.load(f"service imap-login {{\n  inet_listener imap {{\n"
                        f"    port = <{self.dir}/port\n  }}\n  process_limit = <port\n}}\n"
                        "mail_max_userip_connections = <port\n")
        self.assertEqual(cfg.services["imap-login"].inet_listeners["imap"].port, 1143)
        self.assertEqual(cfg.services["imap-login"].process_limit, 1143)
        self.assertEqual(cfg.get_int("mail_max_userip_connections"), 1143)
        self.assertError("service imap-login {\n  inet_listener imap {\n"
                         "    port = </nonexistent/port\n  }\n}\n", 3,
                         "port: can't read /nonexistent/port: No such file")
        self.assertError("service imap {\n  process_limit = <word\n}\n", 2,
                         "process_limit: invalid number 'hello'")
        self.assertError("\nmail_max_userip_connections = <nothing\n", 2, "can't read")

    def test_check_files_names_the_unreadable_file(self) -> None:
        cfg = self.load("\nssl_cert = </nonexistent/cert.pem\n")
        with self.assertRaises(ConfigError) as cm:
            cfg.check_files()
        self.assertRegex(str(cm.exception), r"dovecot\.conf:2: ssl_cert: can't read "
                                            r"/nonexistent/cert\.pem")

    def test_service_setting_at_top_level(self) -> None:
        self.assertError("process_limit = 1\n", 1, "valid only inside service")

    def test_unknown_setting_in_sections(self) -> None:
        self.assertError("service imap {\n  port = 1\n}\n", 2, "inside service")
        self.assertError(
            "service imap-login {\n  inet_listener imap {\n    mode = 0600\n  }\n}\n",
            3,
            "inside inet_listener",
        )
        self.assertError("passdb {\n  driver = pam\n  bogus = 1\n}\n", 3, "inside passdb")
        self.assertError("userdb {\n  deny = yes\n}\n", 2, "inside userdb")
        self.assertError("namespace a {\n  bogus = 1\n}\n", 2, "inside namespace")

    def test_missing_equals(self) -> None:
        self.assertError("\nprotocols imap\n", 2, "missing '=' after setting 'protocols'")
        self.assertError("foo bar baz\n", 1, "syntax error")

    def test_unbalanced_braces(self) -> None:
        self.assertError("hostname = a\n}\n", 2, "unexpected '}'")
        self.assertError("\nservice imap {\n  process_limit = 1\n", 2, "never closed")
        self.assertError("passdb{\n}\n", 1, "missing space before '{'")
        self.assertError("passdb { driver = pam }\n", 1, "garbage after '{'")

    def test_unknown_section(self) -> None:
        self.assertError("bogus {\n}\n", 1, "unknown section 'bogus'")
        self.assertError("protocol imap {\n  service imap {\n  }\n}\n", 2, "inside protocol")
        self.assertError("service bogus {\n}\n", 1, "unknown service 'bogus'")
        self.assertError("service {\n}\n", 1, "needs a name")

    def test_bad_values(self) -> None:
        self.assertError("mail_debug = maybe\n", 1, "mail_debug: invalid boolean 'maybe'")
        self.assertError("ssl = sometimes\n", 1, "invalid value 'sometimes' for ssl")
        self.assertError("first_valid_uid = -1\n", 1, "invalid number")
        self.assertError("default_vsz_limit = lots\n", 1, "invalid size")
        self.assertError("auth_failure_delay = 2 fortnights\n", 1, "invalid time")
        self.assertError(
            "service imap-login {\n  inet_listener imap {\n    port = 70000\n  }\n}\n",
            3,
            "invalid port",
        )
        self.assertError(
            "service imap-login {\n  inet_listener imap {\n    port = imap\n  }\n}\n",
            3,
            "invalid port",
        )
        self.assertError(
            "service imap-login {\n  inet_listener imap {\n    ssl = sure\n  }\n}\n", 3, "ssl"
        )
        self.assertError(
            "service auth {\n  unix_listener x {\n    mode = 0999\n  }\n}\n", 3, "invalid file mode"
        )
        self.assertError("protocol imap {\n  mail_debug = 2\n}\n", 2, "invalid boolean")

    def test_missing_driver(self) -> None:
        self.assertError("\npassdb {\n  args = x\n}\n", 2, "passdb { } has no driver")

    def test_unknown_variable(self) -> None:
        self.assertError("hostname = $nope\n", 1, "Unknown variable: $nope")
        self.assertError("plugin {\n  k = $k x\n}\n", 2, "Unknown variable: $k")

    def test_unknown_protocol(self) -> None:
        self.assertError("protocols = imap gopher\n", 1, "unknown protocol 'gopher'")

    def test_include_errors(self) -> None:
        self.assertError("\n!include missing.conf\n", 2, "!include missing.conf: no such file")
        self.assertError("!include nodir/*.conf\n", 1, "no such file")
        self.assertError("!bogus x\n", 1, "unknown directive")

    def test_error_in_included_file_names_that_file(self) -> None:
        inc = self.write("conf.d/10-x.conf", "hostname = a\n\nmail_debug = maybe\n")
        msg = self.error("!include conf.d/*.conf\n")
        self.assertTrue(msg.startswith(f"{inc}:3: "), msg)

    def test_recursive_include(self) -> None:
        self.write("a.conf", "!include dovecot.conf\n")
        msg = self.error("!include a.conf\n")
        self.assertIn("recursive include", msg)

    def test_missing_main_file(self) -> None:
        path = os.path.join(self.dir, "nope.conf")
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        self.assertIn(f"{path}: can't open config file", str(cm.exception))


class RoundTripTests(_Files):
    def test_round_trip(self) -> None:
        self.write("cert.pem", "C")
        cfg = self.load(
            "protocols = imap lmtp\n"
            "ssl_cert = <cert.pem\n"
            "mail_cache_fields = flags\n"
            "passdb {\n  driver = pam\n}\n"
            "userdb {\n  driver = passwd\n}\n"
            "service lmtp {\n  inet_listener lmtp {\n    port = 10024\n  }\n}\n"
            "protocol imap {\n  mail_plugins = notify\n  plugin {\n    a = b\n  }\n}\n"
            "remote 1.2.3.4 {\n  mail_debug = yes\n}\n"
            "namespace inbox {\n  inbox = yes\n  mailbox Drafts {\n    auto = create\n  }\n}\n"
            "plugin {\n  k = v\n}\n"
            "dict {\n  d = e\n}\n"
        )
        d = cfg.to_dict()
        wire = json.loads(json.dumps(d))
        self.assertEqual(wire, d)
        copy = Config.from_dict(wire)
        self.assertEqual(copy.to_dict(), d)
        self.assertEqual(copy, cfg)
        self.assertEqual(copy.read_value("ssl_cert"), "C")
        self.assertEqual(copy.services["lmtp"].inet_listeners["lmtp"].port, 10024)
        self.assertEqual(copy.get("mail_plugins", "imap"), "notify")
        self.assertEqual(list(copy.enabled_services()), ["auth", "imap-login", "imap", "lmtp"])
        self.assertEqual(copy.warnings, cfg.warnings)
        self.assertEqual(copy.source_files, cfg.source_files)
        # the copy is independent of the original
        copy.services["lmtp"].settings["x"] = "y"
        copy.passdbs[0]["args"] = "changed"
        self.assertEqual(cfg.passdbs[0]["args"], "")
        self.assertNotIn("x", cfg.services["lmtp"].settings)


class EmbeddedDefaultTests(unittest.TestCase):
    def test_embedded_default_loads(self) -> None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            raise unittest.SkipTest("embedded pydovecot.conf not written yet")
        cfg = load_config()
        self.assertEqual(cfg.path, DEFAULT_CONFIG_PATH)
        self.assertTrue(cfg.passdbs)
        self.assertTrue(cfg.userdbs)
        self.assertIn("auth", cfg.enabled_services())
        self.assertEqual(Config.from_dict(cfg.to_dict()), cfg)


class GrammarTests(_Files):
    """Dovecot's grammar in full, and the classification at FILE:LINE."""

    def test_unnamed_listeners_are_listeners_of_their_own(self) -> None:
        cfg = self.load(
            "service imap-login {\n  inet_listener {\n    address = 127.0.0.1\n"
            "    port = 11143\n  }\n  inet_listener {\n    port = 0\n  }\n}\n"
            "service director {\n  inet_listener {\n  }\n}\n"
            "service doveadm {\n  inet_listener {\n    port = 12340\n  }\n}\n"
            "service quota-status {\n  inet_listener {\n    port = 12341\n  }\n}\n")
        listeners = cfg.services["imap-login"].inet_listeners
        self.assertEqual(listeners["#1"].port, 11143)
        self.assertEqual(listeners["#1"].addresses, ["127.0.0.1"])
        self.assertEqual(listeners["#2"].port, 0)
        self.assertIn("imap", listeners)  # the built-in ones stay
        # a service pydovecot doesn't run warns only when something is set in it
        self.assertEqual(len(cfg.warnings), 1)
        self.assertIn("dovecot.conf:14: service 'doveadm' is not supported", cfg.warnings[0])
        self.assertEqual(cfg.services["quota-status"].inet_listeners["#1"].port, 12341)

    def test_service_still_needs_a_name(self) -> None:
        self.assertIn("dovecot.conf:1: section 'service' needs a name", self.error("service {\n}\n"))

    def test_file_values_everywhere(self) -> None:
        self.write("args.txt", "scheme=CRYPT /etc/users\n")
        self.write("greeting.txt", "Hello there\n")
        self.write("limit.txt", "7\n")
        cfg = self.load(
            "login_greeting = <greeting.txt\n"
            "passdb {\n  driver = passwd-file\n  args = <args.txt\n}\n"
            "service imap {\n  process_limit = <limit.txt\n}\n"
            "plugin {\n  sieve = <greeting.txt\n}\n")
        self.assertEqual(cfg.get("login_greeting"), "Hello there")
        self.assertEqual(cfg.passdbs[0]["args"], "scheme=CRYPT /etc/users")
        self.assertEqual(cfg.services["imap"].process_limit, 7)
        self.assertEqual(cfg.plugin["sieve"], "Hello there")
        msg = self.error("passdb {\n  driver = static\n  args = <nope.txt\n}\n")
        self.assertIn("dovecot.conf:3: args: can't read", msg)

    def test_include_try_missing_is_fine_include_is_not(self) -> None:
        self.assertEqual(self.load("!include_try nope/*.conf\n").warnings, [])
        self.assertIn("dovecot.conf:1: !include nope.conf: no such file",
                      self.error("!include nope.conf\n"))

    def test_refused_plugins_and_locations_name_the_line(self) -> None:
        self.assertIn("dovecot.conf:2: mail_plugins: quota_clone: refused: quota_clone is not",
                      self.error("\nmail_plugins = $mail_plugins quota_clone\n"))
        self.assertIn("dovecot.conf:2: mail_plugins: imap_acl: refused: ACLs",
                      self.error("protocol imap {\n  mail_plugins = imap_acl\n}\n"))
        self.assertIn("mail_plugins: unknown plugin 'nosuch'", self.error("mail_plugins = nosuch\n"))
        self.assertIn("dovecot.conf:1: mail storage format 'mdbox' is not supported",
                      self.error("mail_location = mdbox:~/mdbox\n"))
        self.assertIn("mail_location option INDEX is not supported",
                      self.error("mail_location = maildir:~/Maildir:INDEX=/var/idx\n"))
        self.assertIn("refused: only login services read the PROXY protocol",
                      self.error("service lmtp {\n  inet_listener lmtp {\n"
                                 "    haproxy = yes\n  }\n}\n"))
        self.assertIn("dovecot.conf:2: service_count = 1 inside service lmtp { }: refused",
                      self.error("service lmtp {\n  service_count = 1\n}\n"))
        # a refused value replaced later is not refused
        cfg = self.load("mail_location = mbox:~/mail\nmail_location = maildir:~/Maildir\n"
                        "mail_plugins = quota_clone\nmail_plugins =\n")
        self.assertEqual(cfg.get("mail_location"), "maildir:~/Maildir")
        # plugins refused in a protocol pydovecot doesn't serve are not used
        cfg = self.load("protocol lda {\n  mail_plugins = quota\n}\n")
        self.assertIn("dovecot.conf:1: settings inside protocol lda { } are not used",
                      cfg.warnings[0])

    def test_warnings_once_per_setting_even_when_included_twice(self) -> None:
        self.write("a.conf", "mail_cache_fields = date\n")
        cfg = self.load("!include a.conf\n!include a.conf\nmail_plugins = mail_log\n"
                        "mail_plugins = mail_log notify\n")
        self.assertEqual(sum("mail_cache_fields" in w for w in cfg.warnings), 1)
        self.assertEqual(sum("'mail_log'" in w for w in cfg.warnings), 1)
        self.assertTrue(cfg.warnings[0].startswith(os.path.join(self.dir, "a.conf") + ":1: "))


class SieveKeyTests(_Files):
    """``plugin { sieve_* }``: the keys pydovecot's Sieve reads are taken,
    the others warned once, and the ones that would change delivery
    (Pigeonhole's extprograms and other plugins) refused."""

    def test_read_keys_pass_quietly(self) -> None:
        cfg = self.load("mail_plugins = $mail_plugins sieve\nplugin {\n"
                        "  sieve = file:~/sieve;active=~/.dovecot.sieve\n"
                        "  sieve_before = /etc/sieve/before.sieve\n  sieve_before2 = /x.sieve\n"
                        "  sieve_max_redirects = 4\n  sieve_vacation_min_period = 1d\n"
                        "  sieve_spamtest_text_value1 = x\n}\n")
        self.assertFalse([w for w in cfg.warnings if "sieve" in w], cfg.warnings)

    def test_unread_key_warned_and_plugins_refused(self) -> None:
        cfg = self.load("plugin {\n  sieve_trace_dir = /tmp/trace\n}\n")
        self.assertTrue([w for w in cfg.warnings if "sieve_trace_dir" in w], cfg.warnings)
        msg = self.error("plugin {\n  sieve_plugins = sieve_extprograms\n}\n")
        self.assertIn("sieve_plugins", msg)
        self.assertIn("dovecot.conf:2", msg)
