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

from pydovecot.config.variables import expand


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
        """``imap(alice)<1234><sessionid>`` as Dovecot writes it, or the
        session's ``mail_log_prefix`` (``%s %u %p %r %l %{session}``…), set
        by pydovecot.mailproc.autoexpunge, without its trailing ": "."""
        template = self.settings.get("mail_log_prefix")
        if template:
            values = {"service": service, "user": self.user, "rip": self.remote_ip,
                      "lip": self.local_ip, "rport": str(self.remote_port),
                      "lport": str(self.local_port), "session": self.session_id,
                      "pid": str(os.getpid())}
            try:
                text = expand(template, values).rstrip()
            except ValueError:
                text = ""
            text = text[:-1] if text.endswith(":") else text
            if text and ": " not in text and "\n" not in text:
                return text
        return f"{service}({self.user})<{os.getpid()}><{self.session_id}>"
