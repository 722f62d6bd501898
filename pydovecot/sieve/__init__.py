"""Sieve (RFC 5228) mail filtering at delivery, after Pigeonhole.

``lexer`` and ``parser`` turn a script into a syntax tree (line:column
errors, bounded sizes and nesting, no recursion beyond a fixed cap);
``validate`` checks commands and tests against the extensions the script
requires and normalises their arguments; ``binary`` caches that validated
form beside the script (``<script>.pdvbin``); ``interp`` runs it against a
message and envelope and collects actions; ``deliver`` finds a user's
scripts as Pigeonhole does, runs them and carries the actions out.

Trusts: nothing in the script or the message; the config (settings).
"""

from pydovecot.sieve.errors import SieveError, SieveRuntimeError, SieveSyntaxError

__all__ = ["SieveError", "SieveRuntimeError", "SieveSyntaxError"]
