"""AMP commands spoken on authd's UNIX sockets.

This module is the contract between authd and its clients; it holds no logic.

Sockets (under base_dir) and who may call what:

- ``auth-login`` (login processes, the null user): :class:`MechList`,
  :class:`AuthStart`, :class:`AuthContinue`, :class:`AuthCancel`.  A login
  process never learns a password hash or userdb field; on success it gets a
  one-time cookie bound to its own pid (authd reads it with SO_PEERCRED) and
  to the connection's addresses.
- ``auth-master`` (master, root only): :class:`RedeemCookie`,
  :class:`UserLookup`, :class:`PassdbLookup`, :class:`FlushCache`,
  :class:`UserIterate`.
- ``auth-userdb`` (lmtp): :class:`UserLookup` only.

Userdb fields travel as one JSON object (``fields``), keys as Dovecot names
them: ``uid``, ``gid``, ``home``, ``mail``, ``system_groups_user`` … plus
``user`` (the canonical user name after auth_username_format).
"""

from __future__ import annotations

from twisted.protocols import amp

#: The reply of AuthStart/AuthContinue.
AUTH_REPLY = [
    # "continue": send ``challenge`` to the client and wait for its answer.
    # "ok": authenticated; ``user`` and ``cookie`` are set.
    # "fail": ``reason`` is safe to show; ``temporary`` says backend trouble
    #         (answer NO [UNAVAILABLE]) rather than a wrong password.
    (b"status", amp.Unicode()),
    (b"challenge", amp.String(optional=True)),
    (b"user", amp.Unicode(optional=True)),
    (b"cookie", amp.String(optional=True)),
    (b"reason", amp.Unicode(optional=True)),
    (b"temporary", amp.Boolean(optional=True)),
]


class TooManyExchanges(Exception):
    """AuthStart refused: this auth-login connection already has the
    maximum number of SASL exchanges in flight (AuthSettings
    ``login_max_exchanges``); declared on AuthStart as ``LIMIT``."""


class MechList(amp.Command):
    """List the SASL mechanisms to advertise.

    ``secured`` is true on a TLS (or trusted-network) connection; without it
    plaintext mechanisms are left out when disable_plaintext_auth is on.
    """

    arguments = [(b"secured", amp.Boolean())]
    response = [(b"mechanisms", amp.ListOf(amp.Unicode()))]


class AuthStart(amp.Command):
    """Begin one SASL exchange, identified by ``id`` within this connection."""

    arguments = [
        (b"id", amp.Integer()),
        (b"mechanism", amp.Unicode()),
        (b"service", amp.Unicode()),  # "imap", "pop3", "smtp", …
        (b"initial", amp.String(optional=True)),  # SASL-IR, already decoded
        (b"secured", amp.Boolean()),  # TLS or trusted network
        (b"local_ip", amp.Unicode()),
        (b"local_port", amp.Integer()),
        (b"remote_ip", amp.Unicode()),
        (b"remote_port", amp.Integer()),
        (b"session", amp.Unicode()),  # session id for logs
        # TLS channel binding (SCRAM-*-PLUS): "tls-unique" or "tls-exporter"
        # and its data, computed by the login process from the TLS session.
        (b"channel_binding_type", amp.Unicode(optional=True)),
        (b"channel_binding", amp.String(optional=True)),
        # EXTERNAL: the client certificate's user name
        # (ssl_cert_username_field) and whether it verified against ssl_ca.
        (b"client_cert_user", amp.Unicode(optional=True)),
        (b"valid_client_cert", amp.Boolean(optional=True)),
    ]
    response = AUTH_REPLY
    errors = {TooManyExchanges: b"LIMIT"}


class AuthContinue(amp.Command):
    """The client's answer (already base64-decoded) to the last challenge."""

    arguments = [(b"id", amp.Integer()), (b"response", amp.String())]
    response = AUTH_REPLY


class AuthCancel(amp.Command):
    """The client aborted (``*``) or disconnected; forget exchange ``id``."""

    arguments = [(b"id", amp.Integer())]
    response: list = []


class RedeemCookie(amp.Command):
    """Master: turn a login cookie into the user's userdb fields, once.

    ``login_pid`` is the pid of the login process the client fd came from,
    and the addresses are the connection's as that process reported them;
    authd refuses the cookie unless it was issued for the same ones.
    """

    arguments = [
        (b"cookie", amp.String()),
        (b"login_pid", amp.Integer()),
        (b"local_ip", amp.Unicode()),
        (b"remote_ip", amp.Unicode()),
    ]
    response = [(b"user", amp.Unicode()), (b"fields", amp.Unicode())]
    errors = {KeyError: b"BAD_COOKIE"}


class UserLookup(amp.Command):
    """Look a user up in the userdb (for delivery); no password involved.

    ``user`` is the name as given (``alice@example.org``); authd applies
    auth_username_format itself.  ``temporary`` means the backend failed.
    """

    arguments = [(b"user", amp.Unicode()), (b"service", amp.Unicode())]
    response = [
        (b"found", amp.Boolean()),
        (b"temporary", amp.Boolean(optional=True)),
        (b"user", amp.Unicode(optional=True)),
        (b"fields", amp.Unicode(optional=True)),
    ]


class FlushCache(amp.Command):
    """Master/admin: drop auth cache entries of ``users`` (names as given,
    auth_username_format is applied); an empty list flushes everything.
    ``count`` is the number of entries removed."""

    arguments = [(b"users", amp.ListOf(amp.Unicode()))]
    response = [(b"count", amp.Integer())]


class UserIterate(amp.Command):
    """Master/admin (``pydoveadm -A``): the user names the userdbs can list
    (those with an iterate: passwd-file with a fixed path, SQL's
    iterate_query), from ``offset`` on, a page of at most 60,000 bytes;
    ``next`` is the offset of the next page, 0 after the last.  A
    backend failure is ``ITERATE_FAILED``."""

    arguments = [(b"offset", amp.Integer())]
    response = [(b"users", amp.ListOf(amp.Unicode())), (b"next", amp.Integer())]
    errors = {RuntimeError: b"ITERATE_FAILED"}


class PassdbLookup(amp.Command):
    """Master/admin (``pydoveadm auth lookup``): look a user up in the
    passdbs without a password, by the passdb rules; ``fields`` are the
    passdb's extra fields (JSON), never a password hash.  ``temporary``
    means a backend failed, or no passdb can look users up (PAM)."""

    arguments = [(b"user", amp.Unicode()), (b"service", amp.Unicode())]
    response = [
        (b"found", amp.Boolean()),
        (b"temporary", amp.Boolean(optional=True)),
        (b"user", amp.Unicode(optional=True)),
        (b"fields", amp.Unicode(optional=True)),
        (b"reason", amp.Unicode(optional=True)),
    ]
