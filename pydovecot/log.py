"""Dovecot-shaped logging for every pydovecot process.

Children write one line per event to stderr: ``PREFIX: Level: message``,
where PREFIX is the process role (``auth``, ``imap-login``) or the event's
own ``log_prefix`` (``imap(alice)<pid><session>``).  The master reads those
lines from each child's stderr and writes them, time-stamped, to log_path.

Use :class:`twisted.logger.Logger` as usual; pass ``log_prefix=`` to name a
session.  Nothing here ever sees a password: callers must not log one.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

LEVEL_NAMES = {
    LogLevel.debug: "Debug",
    LogLevel.info: "Info",
    LogLevel.warn: "Warning",
    LogLevel.error: "Error",
    LogLevel.critical: "Fatal",
}


#: Dovecot's str_sanitize() limit for client values in log lines.
SANITIZE_MAX = 256
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def sanitize(value: object, max_len: int = SANITIZE_MAX) -> str:
    """A client-supplied value made safe for one log line, as Dovecot's
    ``str_sanitize``: control characters become ``?``, and a value over
    ``max_len`` characters is cut and ends in ``...``.  Pass the result
    as a format argument, or use :func:`sanitize_fmt` inside the format."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    text = _UNSAFE.sub("?", str(value))
    if len(text) > max_len:
        text = text[: max_len - 3] + "..."
    return text


def sanitize_fmt(value: object, max_len: int = SANITIZE_MAX) -> str:
    """:func:`sanitize`, with braces doubled for use inside a format string."""
    return sanitize(value, max_len).replace("{", "{{").replace("}", "}}")


def format_line(event: dict, default_prefix: str) -> str | None:
    """One Dovecot-shaped line (no time stamp, no newline) for an event."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    if not text:
        return None
    prefix = event.get("log_prefix") or default_prefix
    level = LEVEL_NAMES.get(event.get("log_level"), "Info")
    # One event, one line: continuation lines are indented like Dovecot's.
    text = text.rstrip("\n").replace("\n", "\n\t")
    return f"{prefix}: {level}: {text}"


@implementer(ILogObserver)
class DovecotLineObserver:
    """Write events as ``prefix: Level: message`` lines to a stream."""

    def __init__(self, stream: IO[str], prefix: str, timestamps: bool = False):
        self.stream = stream
        self.prefix = prefix
        self.timestamps = timestamps

    def __call__(self, event: dict) -> None:
        line = format_line(event, self.prefix)
        if line is None:
            return
        if self.timestamps:
            stamp = time.strftime("%b %d %H:%M:%S", time.localtime(event.get("log_time")))
            line = f"{stamp} {line}"
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


_SYSLOG_PRIORITIES = {"Debug": "LOG_DEBUG", "Info": "LOG_INFO", "Warning": "LOG_WARNING",
                      "Error": "LOG_ERR", "Fatal": "LOG_CRIT"}


@implementer(ILogObserver)
class MasterLog:
    """The master's log sinks, as Dovecot routes them: ``log_path`` (a file,
    ``syslog`` or ``/dev/stderr``) gets everything unless ``info_log_path``
    takes the Info lines and ``debug_log_path`` (default: the info sink) the
    Debug ones.  File lines start with ``log_timestamp`` (strftime); syslog
    lines go through Python's syslog module under ``syslog_facility``, with
    no time stamp and no ``Info:`` word (the priority says it), as Dovecot's."""

    def __init__(self, config, syslog_module=None):
        self.timestamp = config.get("log_timestamp") or ""
        self.files: dict[str, IO[str]] = {}
        self._syslog = syslog_module
        log_path = config.path_setting("log_path") if config.get("log_path") else ""
        info = config.get("info_log_path") and config.path_setting("info_log_path") or log_path
        debug = config.get("debug_log_path") and config.path_setting("debug_log_path") or info
        self.sinks = {"Debug": debug, "Info": info}
        self.default = log_path
        for path in {log_path, info, debug}:
            if path == "syslog":
                self._open_syslog(config.get("syslog_facility") or "mail")
            elif path and path != "/dev/stderr":
                self._open(path)

    def _open_syslog(self, facility: str) -> None:
        if self._syslog is None:
            import syslog

            self._syslog = syslog
        self._syslog.openlog("pydovecot", self._syslog.LOG_NDELAY,
                             getattr(self._syslog, f"LOG_{facility.upper()}"))

    def _open(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.files[path] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    @property
    def active(self) -> bool:
        """Something besides the terminal gets lines."""
        return bool(self.files) or self._syslog is not None

    def __call__(self, event: dict) -> None:
        line = format_line(event, "master")
        if line is None:
            return
        level = LEVEL_NAMES.get(event.get("log_level"), "Info")
        sink = self.sinks.get(level, self.default)
        if not sink:
            return
        if sink == "syslog":
            prefix, _, rest = line.partition(": ")
            if rest.startswith("Info: "):
                rest = rest[len("Info: "):]
            priority = getattr(self._syslog, _SYSLOG_PRIORITIES.get(level, "LOG_INFO"))
            for part in f"{prefix}: {rest}".split("\n"):
                self._syslog.syslog(priority, part)
            return
        if sink == "/dev/stderr":
            return  # the console observer writes every line there already
        stamp = time.strftime(self.timestamp, time.localtime(event.get("log_time")))
        stream = self.files.get(sink)
        if stream is None:
            return
        try:
            stream.write(stamp + line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        for stream in self.files.values():
            stream.close()
        self.files = {}
        if self._syslog is not None:
            self._syslog.closelog()

    def reopen(self) -> list[str]:
        """Reopen the files (SIGUSR1, logrotate); the paths that failed."""
        failed = []
        for path, old in list(self.files.items()):
            try:
                self.files[path] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            except OSError:
                failed.append(path)
                continue
            old.close()
        return failed


#: Twisted's own chatter about factories and ports, which Dovecot's logs
#: don't have; kept at debug level.
NOISE = re.compile(
    r"^(Starting|Stopping) factory|connection (established|lost) \(HOST:|"
    r"^\(\w+ Port .* Closed\)$|^Main loop terminated\.$|starting on '|^\w+(?: \(TLS\))? starting on \d+$"
)


#: Session log prefixes whose events are dropped (a mail process's own
#: rehearsal sessions).
SILENCED: set[str] = set()


def silence_prefix(prefix: str) -> None:
    """Drop events whose ``log_prefix`` starts with ``prefix``."""
    SILENCED.add(prefix)


@implementer(ILogFilterPredicate)
class QuietTwisted:
    """Drop Twisted's info-level chatter unless debugging, and silenced
    session prefixes always."""

    def __call__(self, event: dict):
        prefix = event.get("log_prefix") or ""
        if prefix and any(prefix.startswith(s) for s in SILENCED):
            return PredicateResult.no
        if event.get("log_level") == LogLevel.info and NOISE.search(formatEvent(event) or ""):
            return PredicateResult.no
        return PredicateResult.maybe


def start_child_logging(prefix: str, debug: bool = False) -> None:
    """Route this process's twisted.logger events to stderr as lines the
    master collects.  Call once, early, in every child process."""
    level = LogLevel.debug if debug else LogLevel.info
    observer = FilteringLogObserver(
        DovecotLineObserver(sys.stderr, prefix),
        [LogLevelFilterPredicate(defaultLogLevel=level), *([] if debug else [QuietTwisted()])],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
