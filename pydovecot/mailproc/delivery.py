"""Saving one delivered message for one user: straight into INBOX, or
through the user's Sieve scripts when ``mail_plugins`` of ``protocol
lmtp`` names ``sieve`` (see :mod:`pydovecot.sieve.deliver`).

Every failure is this recipient's alone: logged once with its reason and
raised (or errbacked) as :class:`DeliveryFailed`.  Runs in the user's mail
process, as the user.  Trusts the master's envelope and userdb fields, not
the message.
"""

from __future__ import annotations

import errno
from typing import BinaryIO

from twisted.internet import defer
from twisted.logger import Logger

from pydovecot.log import sanitize
from pydovecot.master.protocol import DeliveryFailed
from pydovecot.sieve.deliver import SieveDelivery, sieve_enabled
from pydovecot.sieve.message import split_message
from pydovecot.storage.interfaces import IMailStorage, MailTooLarge, OverQuota, StorageError

log = Logger()

#: Read at most this much of a message for Sieve (LMTP's own size limit
#: applies first); a larger one is stored without filtering.
MAX_SIEVE_MESSAGE = 256 << 20


def wants_sieve(config) -> bool:
    return sieve_enabled(config)


def save(storage: IMailStorage, message: BinaryIO, what: str,
         prefix: str) -> defer.Deferred[dict]:
    """Store ``message`` in INBOX as it is (the file stays open until the
    storage has answered; the caller closes it)."""
    return defer.Deferred.fromCoroutine(_save(storage, message, what, prefix))


async def _save(storage: IMailStorage, message: BinaryIO, what: str, prefix: str) -> dict:
    try:
        message.seek(0)
        _validity, uid = await storage.append("INBOX", message)
    except (OSError, StorageError) as e:
        log.error("{what}: {e}", what=what, e=sanitize(_reason(e)), log_prefix=prefix)
        raise _failure(e) from None
    except Exception:
        log.failure("{what}", what=what, log_prefix=prefix)
        raise DeliveryFailed() from None
    return {"uid": uid, "mailbox": "INBOX"}


def deliver_with_sieve(config, storage: IMailStorage, user: str, fields: dict,
                       message: BinaryIO, session: str, msgid: str, sender: str | None,
                       recipient: str | None, prefix: str) -> defer.Deferred | dict:
    """Filter ``message`` through the user's scripts and deliver it; fires
    with the LMTP reply's ``uid``/``mailbox``."""
    what = f"msgid={sanitize(msgid or '<none>')}: save failed to INBOX"
    message.seek(0)
    raw = message.read(MAX_SIEVE_MESSAGE + 1)
    if len(raw) > MAX_SIEVE_MESSAGE:
        log.warning("sieve: message too large to filter; stored in INBOX", log_prefix=prefix)
        return save(storage, message, what, prefix)
    if sender is None:
        sender = _return_path(raw)
    sieve = SieveDelivery(config, storage, user, fields, sender, recipient or "", session,
                          msgid, prefix)

    def done(outcome) -> dict:
        return {"uid": outcome.uid, "mailbox": outcome.mailbox}

    def failed(failure):
        if failure.check(DeliveryFailed):
            return failure
        e = failure.value
        if isinstance(e, (OSError, StorageError)):
            log.error("{what}: {e}", what=what, e=sanitize(_reason(e)), log_prefix=prefix)
            raise _failure(e)
        log.failure("{what}", failure, what=what, log_prefix=prefix)
        raise DeliveryFailed()

    d = defer.maybeDeferred(sieve.run, raw)
    d.addCallbacks(done, failed)
    return d


def _return_path(raw: bytes) -> str:
    """The envelope sender from the ``Return-Path:`` lmtp put first."""
    headers, _body = split_message(raw[:8192])
    if headers and headers[0][0].lower() == "return-path":
        return headers[0][1].strip().strip("<>")
    return ""


def quota_reply(e: Exception) -> str | None:
    """Dovecot's LMTP reply (without ``<rcpt>``) for an over-quota save."""
    if isinstance(e, OverQuota):
        return f"{'452 4.2.2' if e.tempfail else '552 5.2.2'} {e}"
    if isinstance(e, MailTooLarge):
        return f"552 5.2.3 {e}"
    return None


def _failure(e: Exception) -> DeliveryFailed:
    reply = quota_reply(e)
    if reply is not None:  # lmtp puts <rcpt> after the enhanced code
        return DeliveryFailed(reply)
    if getattr(e, "code", "") == "OVERQUOTA" or getattr(e, "errno", None) in (
            errno.ENOSPC, errno.EDQUOT):
        return DeliveryFailed("452 4.2.2 Not enough disk space")
    return DeliveryFailed()


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)
