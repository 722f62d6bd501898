"""What a post-login session knows about its connection and its user.

Built by the mail process from what the master hands it (userdb fields from
authd and the connection's addresses); read by the IMAP and POP3 session
code for replies and logs.  Trusted: it comes from the master, never from
the client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SessionContext:
    user: str  # canonical user name (after auth_username_format)
    session_id: str  # Dovecot-style base64 session id, shared with login logs
    remote_ip: str = ""
    remote_port: int = 0
    local_ip: str = ""
    local_port: int = 0
    secured: bool = False  # TLS (via the login relay) or trusted network
    fields: dict[str, Any] = field(default_factory=dict)  # userdb fields
    settings: dict[str, Any] = field(default_factory=dict)  # config settings
    #: ``namespace { mailbox { } }`` sections (Config.namespaces): SPECIAL-USE, autocreate
    namespaces: dict[str, Any] = field(default_factory=dict)

    def log_prefix(self, service: str) -> str:
        """``imap(alice)<1234><sessionid>`` as Dovecot writes it."""
        return f"{service}({self.user})<{os.getpid()}><{self.session_id}>"
