"""Postfix's policy delegation protocol, as Dovecot's ``quota-status -p
postfix`` answers it.

A request is ``name=value`` lines ended by an empty line; the answer is
``action=…`` and an empty line.  For ``request=smtpd_access_policy`` with a
``recipient`` the checker says whether ``size`` octets fit that user's
quota; the action is ``quota_status_success`` (default ``OK``),
``quota_status_nouser`` (default ``REJECT Unknown user``) or
``quota_status_overquota`` (default ``554 5.2.2 %M``, ``%M`` the quota
message), ``DEFER_IF_PERMIT`` when the check could not be made, and
``DUNNO`` for any other request.  Trusts nothing from the client: lines
and requests are bounded, values only looked up, never logged raw.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from pydovecot.log import sanitize

log = Logger()

MAX_LINE = 2048
MAX_ATTRIBUTES = 100
DEFAULTS = {
    "quota_status_success": "OK",
    "quota_status_nouser": "REJECT Unknown user",
    "quota_status_overquota": "554 5.2.2 %M",
    "quota_status_toolarge": "",
}
TEMPFAIL = "DEFER_IF_PERMIT Internal error occurred. Refer to server log for more information."


class NoSuchUser(Exception):
    """The recipient is no user of ours."""


#: (recipient, size) → Deferred[str]: "" when it fits, else the quota
#: message (Dovecot's ``%M``: "Quota exceeded (mailbox for user is full)");
#: fails with NoSuchUser, or anything else for "could not check".
Checker = Callable[[str, int], defer.Deferred]


def action(settings: dict[str, str], outcome: str | None, too_large: bool = False,
           message: str = "") -> str:
    """The ``action=`` value for an outcome: "ok", "nouser", "over"."""
    def get(key: str) -> str:
        value = settings.get(key)
        return DEFAULTS[key] if value is None else value.strip().strip('"')

    if outcome == "ok":
        return get("quota_status_success")
    if outcome == "nouser":
        return get("quota_status_nouser")
    if outcome == "over":
        text = (too_large and get("quota_status_toolarge")) or get("quota_status_overquota")
        return text.replace("%M", message).replace("%{error}", message)
    return TEMPFAIL


class PolicyProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, settings: dict[str, str], check: Checker):
        self.settings = settings
        self.check = check
        self.attrs: dict[str, str] = {}
        self.busy = False
        self.queue: list[dict[str, str]] = []

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 (Twisted's name)
        log.warn("quota-status: request line too long; disconnecting")
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if text:
            if len(self.attrs) >= MAX_ATTRIBUTES or len(self.queue) > 10:
                log.warn("quota-status: request too large; disconnecting")
                self.transport.loseConnection()
                return
            name, _, value = text.partition("=")
            self.attrs[name.strip().lower()] = value
            return
        request, self.attrs = self.attrs, {}
        self.queue.append(request)
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if not self.queue or self.transport is None:
            self.busy = False
            return
        self.busy = True
        request = self.queue.pop(0)
        d = defer.maybeDeferred(self._answer, request)
        d.addErrback(lambda f: (log.failure("quota-status: request failed", f), TEMPFAIL)[1])
        d.addCallback(self._send)

    def _send(self, act: str) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(b"action=" + act.encode("utf-8", "replace") + b"\n\n")
        self._next()

    def _answer(self, request: dict[str, str]) -> defer.Deferred | str:
        if request.get("request") != "smtpd_access_policy" or not request.get("recipient"):
            return "DUNNO"
        recipient = request["recipient"].strip().strip("<>")
        size = request.get("size", "0").strip()
        nbytes = int(size) if size.isdigit() and len(size) < 16 else 0
        d = self.check(recipient, nbytes)

        def fits(message: str) -> str:
            if not message:
                return action(self.settings, "ok")
            return action(self.settings, "over", message=message)

        def failed(failure) -> str:
            if failure.check(NoSuchUser):
                return action(self.settings, "nouser")
            log.error("quota-status: checking {rcpt} failed: {e}", rcpt=sanitize(recipient),
                      e=sanitize(failure.getErrorMessage()))
            return TEMPFAIL

        return d.addCallbacks(fits, failed)


class PolicyFactory(Factory):
    def __init__(self, settings: dict[str, str], check: Checker):
        self.settings = settings
        self.check = check

    def buildProtocol(self, addr):  # noqa: N802
        p = PolicyProtocol(self.settings, self.check)
        p.factory = self
        return p
