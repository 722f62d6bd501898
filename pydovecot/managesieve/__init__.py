"""ManageSieve (RFC 5804): the authenticated protocol, in the user's mail process.

``grammar`` frames commands (bounded lines and literals) and splits their
arguments; ``capability`` builds the capability listing that the login
process (pre-auth) and the session (post-auth) send; ``session`` is the
post-login protocol engine and ``commands`` its command table.  Scripts are
kept by :mod:`pydovecot.sieve.storage` and compiled by pydovecot.sieve.

Trusts: the master's session context and the config; nothing the client sends.
"""
