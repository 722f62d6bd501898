"""AMP commands between the master and its children.

Every channel is a socketpair the master makes at spawn time and hands to
the child as fd 3; nothing is reachable through the filesystem.

- login process → master: :class:`HandOff` (a logged-in client's fd).
- lmtp → master: :class:`DeliverRequest` (a message fd for one recipient).
- master → mail process: :class:`Assign`, :class:`NewClient`, :class:`Deliver`.
- mail process → master: :class:`SessionEnded`.

The master trusts none of its unprivileged children: a login process proves
a user only through authd's one-time cookie, and lmtp names a recipient that
the master looks up in the userdb itself.
"""

from __future__ import annotations

from twisted.protocols import amp


class LimitExceeded(Exception):
    """A connection limit (``mail_max_userip_connections``) refused a
    session; the message is the reason, as Dovecot words it."""


class DeliveryFailed(Exception):
    """A delivery failed for this recipient only.

    The message is the LMTP reply without the recipient: code, enhanced
    status code and text (``452 4.2.2 Not enough disk space``); lmtp puts
    ``<recipient>`` after the enhanced code.  The reason was logged where
    the failure happened, once."""

    INTERNAL = "451 4.2.0 Internal error occurred. Refer to server log for more information."
    TEMPORARY = "451 4.3.0 Temporary internal error"
    USERDB = "451 4.3.0 Temporary user lookup failure"

    def __init__(self, reply: str = INTERNAL):
        super().__init__(reply)

    @property
    def reply(self) -> str:
        return str(self.args[0]) if self.args else self.INTERNAL

#: Errors every master → mail process command may answer with; anything
#: else a responder raises is logged there and answered as one of these, so
#: one session's failure never closes the channel the others share.
SESSION_ERRORS = {RuntimeError: b"UNAVAILABLE"}

CONNECTION_ARGS = [
    (b"session", amp.Unicode()),
    (b"local_ip", amp.Unicode()),
    (b"local_port", amp.Integer()),
    (b"remote_ip", amp.Unicode()),
    (b"remote_port", amp.Integer()),
    (b"secured", amp.Boolean()),
]


class HandOff(amp.Command):
    """A login process hands a logged-in client to the master.

    ``fd`` is the client socket (or, for TLS, one end of the relay
    socketpair); ``tag`` is the IMAP tag of the login command; ``pending``
    the bytes the client sent after it.  The reply names the mail process.
    """

    arguments = [
        (b"fd", amp.Descriptor()),
        (b"cookie", amp.String()),
        (b"service", amp.Unicode()),  # "imap" | "pop3"
        (b"tag", amp.String(optional=True)),
        (b"pending", amp.String()),
        (b"mechanism", amp.Unicode()),
        *CONNECTION_ARGS,
    ]
    response = [(b"mpid", amp.Integer()), (b"user", amp.Unicode())]
    errors = {KeyError: b"BAD_COOKIE", RuntimeError: b"UNAVAILABLE", LimitExceeded: b"LIMIT"}


class DeliverRequest(amp.Command):
    """lmtp asks the master to deliver one message to one recipient."""

    arguments = [
        (b"fd", amp.Descriptor()),
        (b"user", amp.Unicode()),
        (b"sender", amp.Unicode()),
        (b"recipient", amp.Unicode()),
        (b"session", amp.Unicode()),
        (b"msgid", amp.Unicode(optional=True)),  # for the log line
        (b"orig_recipient", amp.Unicode(optional=True)),  # RCPT's ORCPT (Sieve, headers)
    ]
    response = [(b"uid", amp.Integer()), (b"mailbox", amp.Unicode())]
    errors = {KeyError: b"NO_SUCH_USER", RuntimeError: b"UNAVAILABLE",
              DeliveryFailed: b"DELIVERY_FAILED"}


class QuotaCheckRequest(amp.Command):
    """lmtp (RCPT TO, ``lmtp_rcpt_check_quota``) or quota-status asks the
    master whether ``size`` octets fit ``user``'s quota now; ``reply`` is ""
    when they do, else the SMTP reply (``552 5.2.2 <user> Quota exceeded …``)."""

    arguments = [(b"user", amp.Unicode()), (b"size", amp.Integer())]
    response = [(b"reply", amp.Unicode())]
    errors = {KeyError: b"NO_SUCH_USER", RuntimeError: b"UNAVAILABLE",
              DeliveryFailed: b"DELIVERY_FAILED"}


class QuotaCheck(amp.Command):
    """The master asks the user's mail process (which owns the storage)
    the same question; the storage answers, as the user."""

    arguments = [(b"user", amp.Unicode()), (b"fields", amp.Unicode()),
                 (b"size", amp.Integer())]
    response = [(b"reply", amp.Unicode())]
    errors = {**SESSION_ERRORS, DeliveryFailed: b"DELIVERY_FAILED"}


class Assign(amp.Command):
    """Make an idle pre-spawned mail process serve one uid/gid for good."""

    arguments = [
        (b"uid", amp.Integer()),
        (b"gid", amp.Integer()),
        (b"groups", amp.ListOf(amp.Integer())),
        (b"label", amp.Unicode()),  # for the process title
    ]
    response: list = []
    errors = SESSION_ERRORS


class NewClient(amp.Command):
    """Give a mail process a logged-in client connection."""

    arguments = [
        (b"fd", amp.Descriptor()),
        (b"service", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"fields", amp.Unicode()),  # userdb fields, JSON
        (b"tag", amp.String(optional=True)),
        (b"pending", amp.String()),
        *CONNECTION_ARGS,
    ]
    response: list = []
    errors = SESSION_ERRORS


class Deliver(amp.Command):
    """Store a message (read from ``fd``) in the user's INBOX."""

    arguments = [
        (b"fd", amp.Descriptor()),
        (b"user", amp.Unicode()),
        (b"fields", amp.Unicode()),
        (b"session", amp.Unicode()),
        (b"msgid", amp.Unicode(optional=True)),  # for the log line
        (b"sender", amp.Unicode(optional=True)),  # the envelope, for Sieve
        (b"recipient", amp.Unicode(optional=True)),
        (b"orig_recipient", amp.Unicode(optional=True)),  # ORCPT, for Sieve's envelope
    ]
    response = [(b"uid", amp.Integer()), (b"mailbox", amp.Unicode())]
    errors = {**SESSION_ERRORS, DeliveryFailed: b"DELIVERY_FAILED"}


class SessionEnded(amp.Command):
    """A mail process tells the master one of its sessions has ended."""

    arguments = [(b"session", amp.Unicode())]
    response: list = []
    requiresAnswer = False


class StorageRefused(Exception):
    """The master will not broker this storage channel (the requesting
    user is not one this mail process serves)."""


class OpenStorage(amp.Command):
    """A mail process asks for a channel to the storage of ``owner`` on
    behalf of ``requester`` (a user it serves): the master starts or
    picks a mail process of the owner's uid (as for a login), gives it one
    end of a socketpair (:class:`ServeStorage`) and answers the other end.
    Nobody's privileges move; the owner's process checks every access."""

    arguments = [(b"requester", amp.Unicode()), (b"owner", amp.Unicode()),
                 # another instance's storage-rpc service (dialled by ours)
                 (b"host", amp.Unicode(optional=True)), (b"port", amp.Integer(optional=True)),
                 (b"tls_name", amp.Unicode(optional=True))]
    response = [(b"fd", amp.Descriptor()), (b"user", amp.Unicode())]
    errors = {KeyError: b"NO_SUCH_USER", RuntimeError: b"UNAVAILABLE",
              StorageRefused: b"REFUSED"}


class ServeStorage(amp.Command):
    """Serve ``user``'s storage (userdb ``fields``, JSON) to ``requester``
    over ``fd`` (pydovecot.storage.rpc)."""

    arguments = [
        (b"fd", amp.Descriptor()),
        (b"user", amp.Unicode()),
        (b"requester", amp.Unicode()),
        (b"fields", amp.Unicode()),
        # the peer is the storage-rpc service relaying a TCP peer: no fds
        (b"relayed", amp.Boolean(optional=True)),
    ]
    response: list = []
    errors = SESSION_ERRORS


class RelayStorage(amp.Command):
    """The storage-rpc service (TCP/TLS, peer proved by
    ``storage_rpc_secret``) asks for a channel to ``owner``'s storage on
    behalf of the remote ``requester``; answered like :class:`OpenStorage`."""

    arguments = [(b"requester", amp.Unicode()), (b"owner", amp.Unicode())]
    response = [(b"fd", amp.Descriptor()), (b"user", amp.Unicode())]
    errors = {KeyError: b"NO_SUCH_USER", RuntimeError: b"UNAVAILABLE"}


class DialStorage(amp.Command):
    """Master → storage-rpc service: connect (TLS, ``storage_rpc_secret``)
    to another instance's storage-rpc service for ``requester`` and relay
    it to ``fd`` (the asking mail process has the other end)."""

    arguments = [
        (b"fd", amp.Descriptor()),
        (b"host", amp.Unicode()),
        (b"port", amp.Integer()),
        (b"tls_name", amp.Unicode()),
        (b"requester", amp.Unicode()),
        (b"owner", amp.Unicode()),
    ]
    response = [(b"user", amp.Unicode())]
    errors = {RuntimeError: b"UNAVAILABLE", StorageRefused: b"REFUSED"}
