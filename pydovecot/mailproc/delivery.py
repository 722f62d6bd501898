"""Saving one delivered message for one user: straight into INBOX (or the
recipient's ``+detail`` mailbox with ``lmtp_save_to_detail_mailbox = yes``,
created with ``lda_mailbox_autocreate``, subscribed with
``lda_mailbox_autosubscribe``, INBOX when it cannot be), or through the
user's Sieve scripts when ``mail_plugins`` of ``protocol lmtp`` names
``sieve`` (see :mod:`pydovecot.sieve.deliver`).  Used by the mail process
(LMTP) and by ``pydovecot-lda`` (storage opened directly).

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
from pydovecot.sieve.errors import ProtocolReject
from pydovecot.sieve.interp import Envelope
from pydovecot.sieve.message import Message, split_message
from pydovecot.storage.interfaces import (
    IMailStorage,
    MailboxExists,
    MailTooLarge,
    OverQuota,
    StorageError,
)

log = Logger()

#: Read at most this much of a message for Sieve (LMTP's own size limit
#: applies first); a larger one is stored without filtering.
MAX_SIEVE_MESSAGE = 256 << 20


class _Sieve(SieveDelivery):
    """Sieve delivery with the original recipient in the envelope (and in
    vacation's addresses)."""

    def context(self, message):
        ctx = super().context(message)
        ctx.envelope = Envelope(self.sender, self.recipient, self.orig_recipient or
                                self.recipient)
        return ctx


def send_rejection(config, storage: IMailStorage, user: str, fields: dict, raw: bytes,
                   sender: str, recipient: str, reason: str, prefix: str) -> defer.Deferred:
    """Mail ``sender`` that the message to ``recipient`` was rejected with
    ``reason`` (dovecot-lda without -e; the same MDN as Sieve's reject,
    from postmaster_address).  Nothing for the null sender."""
    sieve = _Sieve(config, storage, user, fields, sender, recipient, "", "", prefix)
    return defer.maybeDeferred(sieve.reject, Message(raw), reason)


def original_recipient(config, raw: bytes) -> str | None:
    """The address in ``lda_original_recipient_header`` (e.g. X-Original-To),
    when that setting names a header the message has."""
    name = _setting(config, "lda_original_recipient_header", "").strip().lower()
    if not name:
        return None
    headers, _body = split_message(raw[:65536])
    for key, value in headers:
        if key.lower() == name:
            return value.strip().strip("<>") or None
    return None


def wants_sieve(config, protocol: str = "lmtp") -> bool:
    """Sieve runs for this delivery: ``mail_plugins`` (of ``protocol
    lmtp``, or of ``protocol lda`` for pydovecot-lda) names ``sieve``."""
    if protocol == "lmtp":
        return sieve_enabled(config)
    try:
        plugins = config.get("mail_plugins", protocol=protocol)
    except (KeyError, TypeError):
        return False
    return "sieve" in (plugins or "").replace(",", " ").split()


def _setting(config, key: str, default: str = "") -> str:
    try:
        return config.get(key, protocol="lmtp") if config is not None else default
    except KeyError:
        return default


def detail_mailbox(config, recipient: str | None) -> str | None:
    """The ``+detail`` of ``recipient`` when lmtp_save_to_detail_mailbox
    is on (``alice+Lists@x`` → ``Lists``), else None."""
    if not recipient or _setting(config, "lmtp_save_to_detail_mailbox", "no") != "yes":
        return None
    local = recipient.rpartition("@")[0] if "@" in recipient else recipient
    for delim in _setting(config, "recipient_delimiter", "+"):
        if delim in local:
            detail = local.split(delim, 1)[1]
            # Stays a name inside the user's storage (no hierarchy escapes).
            if detail and not detail.startswith((".", "/", "~")) and "\0" not in detail \
                    and ".." not in detail:
                return detail
            return None
    return None


def deliver(config, storage: IMailStorage, user: str, fields: dict, message: BinaryIO,
            session: str, msgid: str, sender: str | None, recipient: str | None,
            prefix: str, mailbox: str | None = None, protocol: str = "lmtp",
            orig_recipient: str | None = None) -> defer.Deferred:
    """Deliver one message for one recipient: Sieve when enabled, else into
    ``mailbox`` (``-m``), the ``+detail`` mailbox, or INBOX."""
    detail = detail_mailbox(config, recipient) if protocol == "lmtp" else None
    if wants_sieve(config, protocol):
        return defer.maybeDeferred(deliver_with_sieve, config, storage, user, fields, message,
                                   session, msgid, sender, recipient, prefix,
                                   orig_recipient, default_mailbox=mailbox or detail,
                                   protocol_reject=protocol == "lmtp")
    box = mailbox or detail or "INBOX"
    what = f"msgid={sanitize(msgid or '<none>')}: save failed to {sanitize(box)}"
    return save(storage, message, what, prefix, box, config)


def save(storage: IMailStorage, message: BinaryIO, what: str,
         prefix: str, mailbox: str = "INBOX", config=None) -> defer.Deferred[dict]:
    """Store ``message`` in ``mailbox`` (INBOX when it is missing and cannot
    be created) as it is (the file stays open until the storage has
    answered; the caller closes it)."""
    return defer.Deferred.fromCoroutine(_save(storage, message, what, prefix, mailbox, config))


async def _ensure(storage: IMailStorage, box: str, config) -> bool:
    """Whether ``box`` exists now (created per lda_mailbox_autocreate)."""
    try:
        await defer.maybeDeferred(storage.status, box)
        return True
    except (StorageError, OSError):
        pass
    if _setting(config, "lda_mailbox_autocreate", "no") != "yes":
        return False
    try:
        await defer.maybeDeferred(storage.create, box)
    except MailboxExists:
        pass
    except (StorageError, OSError):
        return False
    if _setting(config, "lda_mailbox_autosubscribe", "no") == "yes":
        try:
            await defer.maybeDeferred(storage.subscribe, box)
        except (StorageError, OSError):
            pass
    return True


async def _save(storage: IMailStorage, message: BinaryIO, what: str, prefix: str,
                mailbox: str = "INBOX", config=None) -> dict:
    box = "INBOX" if mailbox.upper() == "INBOX" else mailbox
    try:
        if box != "INBOX" and not await _ensure(storage, box, config):
            log.info("{msgid}: save failed to open mailbox {box}: Mailbox doesn't exist: "
                     "{box}", msgid=what.split(": save failed", 1)[0], box=sanitize(box),
                     log_prefix=prefix)
            box = "INBOX"
        message.seek(0)
        _validity, uid = await storage.append(box, message)
    except (OSError, StorageError) as e:
        log.error("{what}: {e}", what=what, e=sanitize(_reason(e)), log_prefix=prefix)
        raise _failure(e) from None
    except Exception:
        log.failure("{what}", what=what, log_prefix=prefix)
        raise DeliveryFailed() from None
    return {"uid": uid, "mailbox": box}


def deliver_with_sieve(config, storage: IMailStorage, user: str, fields: dict,
                       message: BinaryIO, session: str, msgid: str, sender: str | None,
                       recipient: str | None, prefix: str,
                       orig_recipient: str | None = None, default_mailbox: str | None = None,
                       protocol_reject: bool = False) -> defer.Deferred | dict:
    """Filter ``message`` through the user's scripts and deliver it; fires
    with the LMTP reply's ``uid``/``mailbox``.  The implicit keep goes to
    ``default_mailbox`` (``-m``, the +detail mailbox; INBOX when unusable),
    and with ``protocol_reject`` an ``ereject`` is this recipient's
    ``550 5.7.1`` reply (LMTP) instead of a rejection mail."""
    what = f"msgid={sanitize(msgid or '<none>')}: save failed to INBOX"
    message.seek(0)
    raw = message.read(MAX_SIEVE_MESSAGE + 1)
    if len(raw) > MAX_SIEVE_MESSAGE:
        log.warning("sieve: message too large to filter; stored in INBOX", log_prefix=prefix)
        return save(storage, message, what, prefix)
    if sender is None:
        sender = _return_path(raw)
    sieve = _Sieve(config, storage, user, fields, sender, recipient or "", session, msgid,
                   prefix)
    sieve.orig_recipient = orig_recipient or original_recipient(config, raw) or \
        sieve.recipient
    sieve.default_mailbox = default_mailbox or "INBOX"
    sieve.protocol_reject = protocol_reject

    def done(outcome) -> dict:
        return {"uid": outcome.uid, "mailbox": outcome.mailbox}

    def failed(failure):
        if failure.check(DeliveryFailed):
            return failure
        if failure.check(ProtocolReject):  # ereject: this recipient's 550 (RFC 5429 2.1)
            raise DeliveryFailed(f"550 5.7.1 {failure.value.reason}")
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
