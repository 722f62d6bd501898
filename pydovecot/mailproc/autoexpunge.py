"""What a mail process does as a session starts: ``mailbox { autoexpunge }`` and the log prefix.

``namespace { mailbox NAME { autoexpunge = 30d, autoexpunge_max_mails = N } }``
as Dovecot's lib-storage runs it (mail-autoexpunge.c): in UID order, a
message is expunged while it is one of the excess over ``autoexpunge_max_mails``
or was saved (SAVEDATE; the INTERNALDATE when the storage has none) longer
than ``autoexpunge`` ago; the first message that is neither ends the walk.
It runs through the storage interface (every call a Deferred, so other
users' sessions keep being served), at most once per user per
:data:`INTERVAL` seconds in this process, in the background of the session
that triggered it; a mailbox that does not exist is skipped; failures are
logged once, never shown to the client.

The session's ``mail_log_prefix`` (Dovecot's ``%s(%u)<%{pid}><%{session}>: ``)
is put into its settings here too, for :meth:`SessionContext.log_prefix`,
and with ``verbose_proctitle = yes`` the process title names its sessions
(``pydovecot/mail alice [alice 192.0.2.1]``, as Dovecot's ``imap [alice
192.0.2.1]``), refreshed every second while it changes.

Trusts: the config and the session context (from the master).
"""

from __future__ import annotations

import datetime
import time

import setproctitle
from twisted.internet import defer, reactor, task
from twisted.logger import Logger

from pydovecot.config import settings as S
from pydovecot.log import sanitize

log = Logger()

#: Seconds between two autoexpunge runs for one user in one process.
INTERVAL = 600.0

_last_run: dict[str, float] = {}


def rules(config) -> list[tuple[str, float, int]]:
    """(mailbox name, autoexpunge seconds, autoexpunge_max_mails) of every
    configured mailbox with either set."""
    found = []
    for ns in (getattr(config, "namespaces", None) or {}).values():
        prefix = ns.get("prefix", "") or ""
        for name, box in (ns.get("mailboxes") or {}).items():
            box_name = box.get("name") or name
            seconds = S.parse_time(box["autoexpunge"]) if box.get("autoexpunge", "0") not in (
                "", "0") else 0.0
            max_mails = int(box.get("autoexpunge_max_mails") or 0)
            if seconds or max_mails:
                found.append((prefix + box_name, seconds, max_mails))
    return found


def session_starting(process, storage, ctx, service: str) -> defer.Deferred | None:
    """Called by the mail process (``process``: its config and its
    sessions) for each new session, before the protocol object reads its
    context: sets ``mail_log_prefix``, keeps the verbose process title and
    starts the user's autoexpunge (a Deferred that never fails; None if not
    due)."""
    config = process.config
    ctx.settings["mail_log_prefix"] = config.get("mail_log_prefix", protocol=service)
    if config.get_bool("verbose_proctitle"):
        ProcTitle.watch(process)
    todo = rules(config)
    if not todo:
        return None
    now = time.monotonic()
    if now - _last_run.get(ctx.user, -INTERVAL) < INTERVAL:
        return None
    _last_run[ctx.user] = now
    prefix = ctx.log_prefix(service)
    d = run(storage, todo)
    d.addErrback(lambda f: log.error("autoexpunge failed: {e}", e=sanitize(f.getErrorMessage()),
                                     log_prefix=prefix))
    return d


@defer.inlineCallbacks
def run(storage, todo: list[tuple[str, float, int]], now: datetime.datetime | None = None):
    """Autoexpunge each (mailbox, seconds, max_mails); Deferred[dict name -> count]."""
    now = now or datetime.datetime.now(datetime.UTC)
    existing = {info.name for info in (yield storage.list_mailboxes())}
    done: dict[str, int] = {}
    for name, seconds, max_mails in todo:
        if name not in existing:
            continue
        box = yield storage.open(name)
        try:
            yield box.sync()
            doomed = pick(box.messages, seconds, max_mails, now)
            if doomed:
                yield box.store(doomed, ["\\Deleted"], "+")
                removed = yield box.expunge(doomed)
                done[name] = len(removed)
        finally:
            box.close()
    return done


def pick(messages, seconds: float, max_mails: int, now: datetime.datetime) -> list[int]:
    """The UIDs Dovecot's walk would expunge (messages in UID order)."""
    excess = max(0, len(messages) - max_mails) if max_mails else 0
    cutoff = now - datetime.timedelta(seconds=seconds) if seconds else None
    doomed = []
    for info in messages:
        saved = info.savedate or info.internaldate
        if saved is not None and saved.tzinfo is None:
            saved = saved.replace(tzinfo=datetime.UTC)
        if excess > 0:
            excess -= 1
        elif cutoff is None or saved is None or saved >= cutoff:
            break
        doomed.append(info.uid)
    return doomed


class ProcTitle:
    """``verbose_proctitle`` for a mail process: its sessions' users and IPs."""

    INTERVAL = 1.0
    MAX_SHOWN = 3
    _instance: ProcTitle | None = None

    def __init__(self, process) -> None:
        self.process = process
        self.setproctitle = setproctitle.setproctitle
        self.base = setproctitle.getproctitle().split(" [", 1)[0]
        self.shown = ""
        self.loop = task.LoopingCall(self.refresh)
        self.loop.start(self.INTERVAL, now=False)

    @classmethod
    def watch(cls, process) -> None:
        if cls._instance is None:
            cls._instance = cls(process)
        reactor.callLater(0, cls._instance.refresh)  # once the session is adopted

    def refresh(self) -> None:
        contexts = [p.ctx for p in list(self.process.sessions) if getattr(p, "ctx", None)]
        parts = [f"{sanitize(c.user, 64)} {c.remote_ip}".strip()
                 for c in contexts[:self.MAX_SHOWN]]
        if len(contexts) > self.MAX_SHOWN:
            parts.append(f"+{len(contexts) - self.MAX_SHOWN}")
        title = f"{self.base} [{', '.join(parts) if parts else 'idling'}]"
        if title != self.shown:
            self.shown = title
            self.setproctitle(title)
