"""The ``pydovecot`` twistd plugin: ``twistd -n pydovecot [-c FILE]``.

Builds the master service from the config file (or the embedded default).
A bad config stops the start with one line, ``pydovecot: Fatal: FILE:LINE:
message``, and exit code 89.

``--listen-fd NAME=FD`` (repeatable; pydovecot's own, Dovecot has none) hands
the master an already listening TCP socket for ``inet_listener NAME``: the
master serves it instead of binding, as long as it is bound to the address
and port the config names (otherwise the master binds as usual).  The test
suite binds port 0 and passes the socket, so no port is ever chosen, closed
and then lost to another process before the master binds it.
"""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "Config file in Dovecot's syntax (default: the embedded one)"],
    ]

    def __init__(self):
        super().__init__()
        self["listen-fd"] = {}

    def opt_listen_fd(self, value: str) -> None:
        """NAME=FD: serve inet_listener NAME on the inherited listening
        socket FD (bound where the config says) instead of binding it;
        repeatable.  Lets a supervisor (or the test suite) bind port 0 and
        hand the socket over, so nothing can take the port in between."""
        name, sep, fd = value.partition("=")
        if not sep or not name or not fd.isdigit():
            raise usage.UsageError(f"--listen-fd {value}: expected NAME=FD")
        self["listen-fd"][name] = int(fd)


@implementer(IServiceMaker, IPlugin)
class PydovecotServiceMaker:
    tapname = "pydovecot"
    description = "IMAP, POP3 and LMTP server with Dovecot's process architecture"
    options = Options

    def makeService(self, options):
        from pydovecot.config import ConfigError
        from pydovecot.master.service import MasterService

        try:
            return MasterService(options["config"], options["listen-fd"])
        except ConfigError as e:
            import sys

            print(f"pydovecot: Fatal: {e}", file=sys.stderr)
            raise SystemExit(89) from None


serviceMaker = PydovecotServiceMaker()
