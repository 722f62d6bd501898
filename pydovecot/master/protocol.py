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
    """A delivery failed for this recipient only (temporary: LMTP 4xx);
    the message is the reason."""

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
    ]
    response = [(b"uid", amp.Integer()), (b"mailbox", amp.Unicode())]
    errors = {KeyError: b"NO_SUCH_USER", RuntimeError: b"UNAVAILABLE"}


class Assign(amp.Command):
    """Make an idle pre-spawned mail process serve one uid/gid for good."""

    arguments = [
        (b"uid", amp.Integer()),
        (b"gid", amp.Integer()),
        (b"groups", amp.ListOf(amp.Integer())),
        (b"label", amp.Unicode()),  # for the process title
    ]
    response: list = []


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


class Deliver(amp.Command):
    """Store a message (read from ``fd``) in the user's INBOX."""

    arguments = [
        (b"fd", amp.Descriptor()),
        (b"user", amp.Unicode()),
        (b"fields", amp.Unicode()),
        (b"session", amp.Unicode()),
    ]
    response = [(b"uid", amp.Integer()), (b"mailbox", amp.Unicode())]


class SessionEnded(amp.Command):
    """A mail process tells the master one of its sessions has ended."""

    arguments = [(b"session", amp.Unicode())]
    response: list = []
    requiresAnswer = False
