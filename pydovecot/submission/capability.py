"""The EHLO reply of submission and submission-login, and the settings they share.

Trusts: the config.  :func:`valid_domain` vets a client's EHLO argument.
"""

from __future__ import annotations

import re
import socket

#: Extensions advertised after the hostname (Dovecot 2.3's order), AUTH and
#: STARTTLS added where they apply.
EXTENSIONS = ("8BITMIME", "BURL imap", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING",
              "SMTPUTF8")  # SMTPUTF8 only when the relay offers it

_DOMAIN = re.compile(rb"^(\[[0-9A-Za-z:.]{1,64}\]|[0-9A-Za-z_]([0-9A-Za-z_.-]{0,253}))$")


def valid_domain(arg: bytes) -> bool:
    """An EHLO/HELO argument: a domain or an address literal."""
    return bool(_DOMAIN.match(arg))


def hostname(config) -> str:
    """``hostname``, else the system's (as Dovecot's)."""
    name = (config.get("hostname") if config is not None else "") or ""
    return name or socket.gethostname()


def max_mail_size(config) -> int:
    """``submission_max_mail_size`` in bytes (0 = unlimited)."""
    if config is None:
        return 0
    try:
        return int(config.get_size("submission_max_mail_size"))
    except (KeyError, ValueError):
        return 0


def ehlo_lines(config, host: str, auth: list[str] | None = None, starttls: bool = False,
               smtputf8: bool = False) -> bytes:
    """The multi-line 250 reply to EHLO (SMTPUTF8 only when the relay has it,
    as Dovecot's)."""
    lines = [host, "8BITMIME"]
    if auth:
        lines.append("AUTH " + " ".join(auth))
    lines += ["BURL imap", "CHUNKING", "ENHANCEDSTATUSCODES"]
    size = max_mail_size(config)
    lines.append(f"SIZE {size}" if size else "SIZE")
    if smtputf8:
        lines.append("SMTPUTF8")
    if starttls:
        lines.append("STARTTLS")
    lines.append("PIPELINING")
    out = [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]
    return ("\r\n".join(out) + "\r\n").encode()
