"""The contract between the LMTP protocol and the lmtp process around it.

The LMTP protocol (``pydovecot.lmtp.protocol``) parses LMTP from the MTA and
spools DATA into an anonymous file; a :class:`IDeliveryBackend` looks
recipients up (authd's auth-userdb) and delivers through the master to the
user's mail process.  The lmtp process has no mail storage access itself.
"""

from __future__ import annotations

from zope.interface import Interface


class TemporaryLookupFailure(Exception):
    """The userdb could not be asked (answer 451 4.3.0)."""


class IDeliveryBackend(Interface):
    def lookup(address: str):
        """Deferred[dict | None]: the recipient's userdb fields (with ``user``
        set to the canonical name), None if unknown (550 5.1.1), or fail with
        TemporaryLookupFailure."""

    def deliver(user: str, fields: dict, message_fd: int, sender: str, recipient: str,
                session: str = "", msgid: str = "", orig_recipient: str | None = None):
        """Deferred[str | None]: store the message read from ``message_fd`` (a
        readable, seekable fd positioned anywhere; read it from offset 0)
        into the user's mailbox (INBOX, or where Sieve or the +detail put
        it); the answer names that mailbox (None: INBOX).  Fires once the
        mail is fsynced.  The caller keeps ownership of the fd.  ``session``
        and ``msgid`` name the delivery in log lines; ``orig_recipient`` is
        the RCPT's ORCPT (Sieve's envelope "to" original).  Fails with
        :class:`~pydovecot.master.protocol.DeliveryFailed` (already logged)
        for this recipient's own failure."""

    def check_quota(user: str, fields: dict, size: int):
        """Deferred[str | None]: None when a message of ``size`` octets fits the
        user's quota now; otherwise the reply text for an over-quota recipient,
        e.g. "552 5.2.2 <rcpt> Quota exceeded (mailbox for user is full)"
        (or "452 4.2.2 …" with quota_full_tempfail = yes), as Dovecot words it."""
