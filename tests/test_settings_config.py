"""How the parser classifies what issue 11 implemented: where each service key
is honoured, warned or refused, and what ``local_name { }`` may hold."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pydovecot.config import settings as S
from pydovecot.config.parser import ConfigError, parse_config


class ClassificationTests(SynchronousTestCase):
    def load(self, text: str, strict: bool = True):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        path = os.path.join(d, "dovecot.conf")
        with open(path, "w") as f:
            f.write(text)
        return parse_config(path, strict=strict)

    def test_implemented_now(self) -> None:
        for name in ("haproxy_trusted_networks", "haproxy_timeout", "login_log_format",
                     "login_log_format_elements", "info_log_path", "debug_log_path",
                     "syslog_facility", "log_timestamp", "mail_log_prefix", "verbose_proctitle",
                     "first_valid_gid", "last_valid_gid", "ssl_cipher_list", "ssl_cipher_suites",
                     "ssl_curve_list", "ssl_prefer_server_ciphers", "ssl_alt_cert", "ssl_alt_key"):
            self.assertEqual(S.classify(name), "implemented", name)
        self.assertNotIn("haproxy", S.LISTENER_REFUSED)
        self.assertIn("autoexpunge", S.MAILBOX_IMPLEMENTED)

    def test_service_keys_by_service(self) -> None:
        cfg = self.load("service imap-login {\n  service_count = 1\n  vsz_limit = 64M\n}\n"
                        "service imap {\n  idle_kill = 1 mins\n  vsz_limit = 1G\n}\n")
        self.assertEqual(cfg.warnings, [])
        self.assertEqual(cfg.services["imap-login"].service_count, 1)
        cfg = self.load("service pop3 {\n  process_limit = 5\n}\nservice imap {\n"
                        "  service_count = 1\n}\nservice pop3-login {\n  idle_kill = 1 mins\n}\n")
        self.assertEqual(len(cfg.warnings), 3, cfg.warnings)
        self.assertIn("dovecot.conf:2: process_limit inside service pop3 { }", cfg.warnings[0])
        self.assertIn("set it in service imap", cfg.warnings[0])
        self.assertIn("dovecot.conf:5: service_count inside service imap { }", cfg.warnings[1])
        with self.assertRaises(ConfigError) as cm:
            self.load("service lmtp {\n  service_count = 1\n}\n")
        self.assertIn("dovecot.conf:2: service_count = 1 inside service lmtp { }: refused",
                      str(cm.exception))

    def test_haproxy_only_on_login_services(self) -> None:
        cfg = self.load("haproxy_trusted_networks = 10.0.0.0/8\nservice pop3-login {\n"
                        "  inet_listener pop3 {\n    haproxy = yes\n  }\n}\n")
        self.assertTrue(cfg.services["pop3-login"].inet_listeners["pop3"].haproxy)
        with self.assertRaises(ConfigError) as cm:
            self.load("service lmtp {\n  inet_listener lmtp {\n    haproxy = yes\n  }\n}\n")
        self.assertIn("dovecot.conf:3:", str(cm.exception))

    def test_local_name_holds_certificates_only(self) -> None:
        cfg = self.load("local_name mail.example.com {\n  ssl_cert = </x.pem\n"
                        "  ssl_key = </x.key\n}\n")
        self.assertEqual(cfg.filters[0]["settings"],
                         {"ssl_cert": "</x.pem", "ssl_key": "</x.key"})
        with self.assertRaises(ConfigError) as cm:
            self.load("local_name mail.example.com {\n  disable_plaintext_auth = no\n}\n")
        self.assertIn("dovecot.conf:2: disable_plaintext_auth inside local_name", str(cm.exception))

    def test_mail_idle_kill(self) -> None:
        from pydovecot.master.mailpool import mail_idle_kill

        self.assertEqual(mail_idle_kill(self.load("")), 0.0)  # Dovecot's 1 min: not applied
        self.assertEqual(mail_idle_kill(self.load("default_idle_kill = 5 mins\n")), 300.0)
        self.assertEqual(mail_idle_kill(self.load(
            "default_idle_kill = 5 mins\nservice imap {\n  idle_kill = 7 secs\n}\n")), 7.0)
