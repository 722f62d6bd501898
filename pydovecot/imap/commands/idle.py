"""IDLE (RFC 2177): the client's next input must be ``DONE``.

While it waits, the mailbox's storage listener pushes other sessions'
changes (the core's sync) and every ``imap_idle_notify_interval`` a
``* OK Still here`` keepalive is sent, which also counts as activity for
autologout (as in Dovecot) but not while output is still buffered.  The
core hands the next input item to :class:`Idle` (``Client.wait_input``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer, task
from twisted.python.failure import Failure

from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import CommandError, bad, error_line
from pydovecot.imap.parser import RawCommand, ReaderError, Token

if TYPE_CHECKING:
    from pydovecot.imap.client import Client


class Idle:
    """One running IDLE: the Deferred of its tagged reply, the keepalive
    timer and the storage listener."""

    def __init__(self, client: Client):
        self.client = client
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.started = time.monotonic()
        self.timer: task.LoopingCall | None = None
        self.listener: Callable[[], None] | None = None
        self.mailbox: str | None = None
        self.syncing: defer.Deferred[None] | None = None  # a sync in flight
        self.again = False  # a change arrived while it ran

    def start(self) -> None:
        client = self.client
        if client.mailbox is not None:
            self.listener = self.changed
            self.mailbox = client.mailbox.name
            client.storage.add_listener(self.mailbox, self.listener)
        if client.idle_interval > 0:
            self.timer = task.LoopingCall(self.tick)
            self.timer.clock = client.reactor()
            self.timer.start(client.idle_interval, now=False)
        client.wait_input(self)

    def changed(self) -> None:
        """A storage listener (or the timer): sync now, or once more after
        the sync in flight (syncs of one view never overlap)."""
        client = self.client
        if client.waiter is not self or client.closed:
            return
        if self.syncing is not None:
            self.again = True
            return
        d = defer.Deferred.fromCoroutine(self._sync())
        if not d.called:
            self.syncing = d

    async def _sync(self) -> None:
        client = self.client
        try:
            while True:
                self.again = False
                try:
                    await client.sync()
                except Exception:
                    client.log.error("IDLE sync failed: {e}", e=error_line(Failure()),
                                     log_prefix=client.prefix)
                client.flush()
                if not self.again or client.waiter is not self or client.closed:
                    break
        finally:
            self.syncing = None

    def tick(self) -> None:
        client = self.client
        client.touch()  # Dovecot: IDLE's keepalive keeps the session from autologout
        self.changed()
        if not client.output_blocked:  # Dovecot: not while output is still buffered
            client.send(b"* OK Still here\r\n")
            client.flush()

    def stop(self) -> None:
        """End the wait: timers and listener go (the connection closed)."""
        self.started = 0.0
        if self.timer is not None and self.timer.running:
            self.timer.stop()
        self.timer = None
        if self.listener is not None and self.mailbox is not None:
            self.client.storage.remove_listener(self.mailbox, self.listener)
        self.listener = None

    def input(self, item: RawCommand | ReaderError) -> None:
        """The client's next input: ``DONE`` ends IDLE, anything else is BAD."""
        self.stop()
        if isinstance(item, RawCommand):
            line = item.first_line.strip().upper()
            item.close()
            if line == b"DONE" and len(item.segments) == 1:
                self._after_sync(lambda: self.done.callback(b"OK Idle completed."))
                return
        self._after_sync(lambda: self.done.errback(CommandError(b"BAD Expected DONE.")))

    def _after_sync(self, then: Callable[[], None]) -> None:
        """Run ``then`` (the tagged reply) once a sync in flight has sent
        its untagged responses."""
        if self.syncing is None:
            then()
        else:
            self.syncing.addBoth(lambda _: then())


async def cmd_idle(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    if args:
        raise bad("Unexpected arguments")
    if client.mailbox is not None:
        await client.sync()
    client.send(b"+ idling\r\n")
    client.flush()
    idle = Idle(client)
    idle.start()
    return await idle.done


add_command("IDLE", cmd_idle, Flag.NO_SYNC)
