"""The shipped configs (embedded default and conf/examples) stay valid."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from authd import ldapconf, sqlconf
from pydovecot.config import load_config

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "conf", "examples")


class ExampleConfigTests(SynchronousTestCase):
    def test_embedded_default_loads_without_warnings(self) -> None:
        config = load_config(None)
        self.assertEqual(config.warnings, [])
        self.assertEqual(config.services["imap-login"].inet_listeners["imap"].port, 10143)

    def test_every_example_loads_without_warnings(self) -> None:
        names = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".conf"))
        self.assertIn("production.conf", names)
        for name in names:
            config = load_config(os.path.join(EXAMPLES, name))
            self.assertEqual(config.warnings, [], name)

    def test_production_example_uses_the_standard_ports(self) -> None:
        config = load_config(os.path.join(EXAMPLES, "production.conf"))
        ports = {name: listener.port
                 for service in ("imap-login", "pop3-login")
                 for name, listener in config.services[service].inet_listeners.items()}
        self.assertEqual(ports, {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995})

    def test_driver_files_parse(self) -> None:
        ldap = ldapconf.load(os.path.join(EXAMPLES, "dovecot-ldap.conf.ext"))
        self.assertTrue(ldap.auth_bind)
        sql = sqlconf.parse_file(os.path.join(EXAMPLES, "dovecot-sql.conf.ext"))
        self.assertIn("FROM users", sql.password_query)
