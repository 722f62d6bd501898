"""The ``pydovecot`` twistd plugin: ``twistd -n pydovecot [-c FILE]``.

Builds the master service from the config file (or the embedded default).
A bad config stops the start with FILE:LINE and a message.
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


@implementer(IServiceMaker, IPlugin)
class PydovecotServiceMaker:
    tapname = "pydovecot"
    description = "IMAP, POP3 and LMTP server with Dovecot's process architecture"
    options = Options

    def makeService(self, options):
        from pydovecot.config import ConfigError
        from pydovecot.master.service import MasterService

        try:
            return MasterService(options["config"])
        except ConfigError as e:
            raise SystemExit(f"pydovecot: Fatal: {e}") from None


serviceMaker = PydovecotServiceMaker()
