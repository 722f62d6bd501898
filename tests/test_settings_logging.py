"""Logging settings (issue 11): info_log_path, debug_log_path, log_timestamp,
login_log_format(_elements) through the real master; log_path = syslog with
syslog_facility against a recording stand-in for Python's syslog module
(this machine has no /dev/log to read back from)."""

from __future__ import annotations

import os
import re
import syslog

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from pydovecot.config.parser import ConfigError, parse_config
from pydovecot.log import MasterLog
from tests.harness import LineClient, Master, User, privileged


class LevelFilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.master = Master(users=[User("alice", "secret")], **privileged())
        self.addCleanup(self.master.cleanup)
        d = self.master.dir
        self.info, self.debug = os.path.join(d, "info.log"), os.path.join(d, "debug.log")
        self.master.extra_config = f"""
info_log_path = {self.info}
debug_log_path = {self.debug}
log_timestamp = "%Y-%m-%dT%H:%M:%S "
auth_debug = yes
verbose_ssl = yes
login_log_format_elements = user=<%u> rip=%r rport=%b %c mpid=%e session=<%{{session}}>
login_log_format = %s [%$]
"""
        self.master.write_config()
        self.master.start()

    def read(self, path: str) -> str:
        with open(path, errors="replace") as f:
            return f.read()

    def test_levels_go_to_their_files_with_the_timestamp(self) -> None:
        c = LineClient(self.master.ports["imap"], timeout=20, greeting=True)
        self.addCleanup(c.close)
        self.assertTrue(c.tagged(b"LOGIN alice secret")[-1].startswith(b"t1 OK"))
        self.master.wait_for(lambda: "[Login]" in self.read(self.info), 20, "the Login line")
        info = self.read(self.info)
        line = next(x for x in info.splitlines() if "[Login]" in x)
        # login_log_format "%s [%$]" over the custom elements; %c empty
        # (not TLS, not from a trusted network... loopback counts as secured).
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d imap-login: Info: "
                               r"user=<alice>, rip=127\.0\.0\.1, rport=\d+, secured, "
                               r"mpid=\d+, session=<[^>]+> \[Login\]$")
        self.assertNotIn(": Warning: ", info)
        main = self.master.log()
        self.assertIn("config: Warning: ", main)  # verbose_ssl is warned
        self.assertNotIn(": Info: ", main)
        self.assertNotIn(": Debug: ", info)
        self.master.wait_for(lambda: ": Debug: " in self.read(self.debug), 20, "debug lines")
        self.assertNotIn(": Info: ", self.read(self.debug))


class FakeSyslog:
    """The parts of Python's syslog module MasterLog uses, recording."""

    def __init__(self) -> None:
        self.opened: tuple | None = None
        self.lines: list[tuple[int, str]] = []
        for name in dir(syslog):
            if name.startswith("LOG_"):
                setattr(self, name, getattr(syslog, name))

    def openlog(self, ident, option, facility) -> None:
        self.opened = (ident, option, facility)

    def syslog(self, priority, message) -> None:
        self.lines.append((priority, message))

    def closelog(self) -> None:
        pass


class SyslogTests(SynchronousTestCase):
    def config(self, text: str):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        path = os.path.join(d, "dovecot.conf")
        with open(path, "w") as f:
            f.write(text)
        return parse_config(path)

    def test_syslog_with_facility_and_priorities(self) -> None:
        fake = FakeSyslog()
        sink = MasterLog(self.config("log_path = syslog\nsyslog_facility = local3\n"), fake)
        self.assertEqual(fake.opened[2], syslog.LOG_LOCAL3)
        sink({"log_level": LogLevel.info, "log_format": "Login: user=<{u}>", "u": "alice",
              "log_prefix": "imap-login", "log_time": 0})
        sink({"log_level": LogLevel.error, "log_format": "broken", "log_prefix": "imap(bob)",
              "log_time": 0})
        self.assertEqual(fake.lines, [(syslog.LOG_INFO, "imap-login: Login: user=<alice>"),
                                      (syslog.LOG_ERR, "imap(bob): Error: broken")])

    def test_info_to_a_file_errors_to_syslog(self) -> None:
        fake = FakeSyslog()
        d = os.path.abspath(self.mktemp())
        info = os.path.join(d, "info.log")
        sink = MasterLog(self.config(f"log_path = syslog\ninfo_log_path = {info}\n"), fake)
        self.assertEqual(fake.opened[2], syslog.LOG_MAIL)  # Dovecot's default facility
        sink({"log_level": LogLevel.info, "log_format": "hello", "log_prefix": "master",
              "log_time": 0})
        sink({"log_level": LogLevel.warn, "log_format": "careful", "log_prefix": "master",
              "log_time": 0})
        sink.close()
        with open(info) as f:
            self.assertTrue(re.fullmatch(r"\w{3} \d\d \d\d:\d\d:\d\d master: Info: hello\n",
                                         f.read()))
        self.assertEqual(fake.lines, [(syslog.LOG_WARNING, "master: Warning: careful")])

    def test_unknown_facility_is_refused(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            self.config("syslog_facility = nosuch\n")
        self.assertIn("dovecot.conf:1: syslog_facility = nosuch: unknown facility",
                      str(cm.exception))
