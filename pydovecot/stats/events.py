"""Emitting events: ``events.emit(name, duration=seconds, **fields)``.

Every child process has one :data:`EMITTER`, attached to its AMP channel
to the master when the channel is adopted (pydovecot.channel does it for
fd 3).  ``emit`` only queues: events are batched, bounded
(:data:`MAX_QUEUED`; beyond it they are dropped and the drop is counted
and reported), and sent at the next reactor turn as one
:class:`~pydovecot.stats.protocol.StatsEvents` call per
:data:`~pydovecot.stats.protocol.MAX_BATCH` bytes, with at most
:data:`MAX_IN_FLIGHT` calls unanswered (a 1 s timer retries after that).
When the master answers that no stats process runs, the emitter turns
itself off, so a server without ``metric`` blocks pays one call.

Names and fields are Dovecot's (``imap_command_finished`` with
``cmd_name``, ``tagged_reply_state``; ``auth_request_finished`` with
``success``, ``mechanism``, ``service``).  Values are str or int; others
are turned into str.  Never pass a password or a message body.

Hook points for the protocol code (one line each; ``start =
time.monotonic()`` where the operation begins; field names as Dovecot
2.3.19 sets them, checked against Debian's):

- IMAP command answered (pydovecot/imap/client.py: ``start`` taken in
  ``_step`` before ``_execute``; emitted in ``_finish_async`` before
  ``self.tagged``, and where a ReaderError/unknown command gets its BAD): ``emit("imap_command_finished",
  duration=since(start), cmd_name="SELECT" ("UID FETCH" for UID commands,
  "unknown" for an unknown one), tagged_reply_state="OK"|"NO"|"BAD",
  tagged_reply="OK Select completed.", cmd_tag=…, user=…, session=…)``
- POP3 command answered (pydovecot/pop3/session.py ``_command``):
  ``emit("pop3_command_finished", duration=…, cmd_name="RETR", …)``
- delivery done (pydovecot/mailproc/main.py ``deliver``, at its result):
  ``emit("mail_delivery_finished", duration=…, user=…, message_id=…,
  message_subject=…, message_from=…, message_size=…, error=… (failure
  only))``
- LMTP transaction done (pydovecot/lmtp/protocol.py, after the last
  recipient's reply for DATA, ``_deliver_all``'s result):
  ``emit("smtp_server_transaction_finished", duration=…, mail_from=…,
  transaction_id=…, status_code="250", enhanced_code="2.0.0", error=…
  (failure only))``

Trusts: its caller.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable

from twisted.internet import reactor
from twisted.logger import Logger
from zope.interface import implementer

from pydovecot.stats.interfaces import IEventEmitter
from pydovecot.stats.protocol import MAX_BATCH, StatsEvents

log = Logger()

#: Events a process keeps while waiting to send them.
MAX_QUEUED = 2000
#: Unanswered StatsEvents calls at once.
MAX_IN_FLIGHT = 2
#: Fields per event, and the length of a field's name and value.
MAX_FIELDS = 32
MAX_KEY = 64
MAX_VALUE = 256
#: Seconds before a flush that found the channel busy is tried again.
RETRY = 1.0


def encode(name: str, duration_us: int, fields: dict) -> bytes:
    """One event as the batch line the stats process parses."""
    clean: dict[str, str | int] = {}
    for key, value in list(fields.items())[:MAX_FIELDS]:
        if value is None:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif not isinstance(value, int):
            value = str(value)[:MAX_VALUE]
        clean[str(key)[:MAX_KEY]] = value
    return json.dumps([str(name)[:MAX_KEY], int(duration_us), clean],
                      separators=(",", ":")).encode()


@implementer(IEventEmitter)
class Emitter:
    """The process's event queue and its sender."""

    def __init__(self, clock=None):
        self.clock = clock if clock is not None else reactor
        self.queue: deque[bytes] = deque()
        self.dropped = 0
        self.channel = None
        #: Instead of a channel: a callable taking each encoded event (tests,
        #: or a process that counts its own events).
        self.sink: Callable[[bytes], None] | None = None
        self.enabled = True
        self.in_flight = 0
        self._scheduled = None

    def attach(self, channel) -> None:
        """Send over ``channel`` (an AMP protocol to the master)."""
        self.channel = channel
        self.enabled = True

    def emit(self, name: str, duration: float | None = None, **fields) -> None:
        if not self.enabled or (self.channel is None and self.sink is None):
            return
        line = encode(name, round((duration or 0.0) * 1e6), fields)
        if self.sink is not None:
            self.sink(line)
            return
        if len(self.queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        self.queue.append(line)
        if self.in_flight < MAX_IN_FLIGHT:  # else an answer flushes
            self._schedule(0)

    def _schedule(self, delay: float) -> None:
        call = self._scheduled
        if call is not None and call.active():
            if delay < call.getTime() - self.clock.seconds():
                call.reset(delay)
            return
        self._scheduled = self.clock.callLater(delay, self.flush)

    def flush(self) -> None:
        """Send what is queued, as far as the in-flight bound allows."""
        self._scheduled = None
        channel = self.channel
        if channel is None or getattr(channel, "transport", None) is None:
            self.queue.clear()
            return
        while (self.queue or self.dropped) and self.in_flight < MAX_IN_FLIGHT:
            batch, size = [], 0
            while self.queue and size + len(self.queue[0]) + 1 <= MAX_BATCH:
                line = self.queue.popleft()
                batch.append(line)
                size += len(line) + 1
            dropped, self.dropped = self.dropped, 0
            self.in_flight += 1
            d = channel.callRemote(StatsEvents, batch=b"\n".join(batch), dropped=dropped)
            d.addCallbacks(self._sent, self._failed, errbackArgs=(len(batch),))
        if self.queue:
            self._schedule(RETRY)

    def _sent(self, answer: dict) -> None:
        self.in_flight -= 1
        if not answer.get("wanted", True):
            self.enabled = False
            self.queue.clear()
        elif self.queue or self.dropped:
            self._schedule(0)

    def _failed(self, failure, lost: int) -> None:
        self.in_flight -= 1
        from twisted.internet.error import ConnectionDone, ConnectionLost

        if failure.check(ConnectionDone, ConnectionLost):
            self.channel = None
            self.queue.clear()
            return
        self.dropped += lost  # the batch is lost; say so next time
        log.debug("stats batch refused: {e}", e=failure.getErrorMessage())


EMITTER = Emitter()


def emit(name: str, duration: float | None = None, **fields) -> None:
    """Queue one event (``duration`` in seconds) for the stats process."""
    EMITTER.emit(name, duration, **fields)


def attach(channel) -> None:
    """Send this process's events over ``channel`` (its master channel)."""
    EMITTER.attach(channel)


def since(start: float) -> float:
    """Seconds since ``start`` (a ``time.monotonic()`` value)."""
    return time.monotonic() - start
