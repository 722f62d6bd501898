"""pydovecot's configuration: one file in Dovecot 2.3 syntax, parsed and typed.

``load_config(path)`` returns a :class:`Config`; ``load_config()`` loads the
embedded default ``pydovecot.conf`` beside this file.  The config file is
trusted (the master reads it as root); children get ``cfg.to_dict()`` from the
master and rebuild it with ``Config.from_dict``.
"""

from __future__ import annotations

import os

from pydovecot.config.parser import (
    Config,
    ConfigError,
    InetListener,
    ServiceConfig,
    UnixListener,
    parse_config,
)
from pydovecot.config.variables import expand, username_format

#: The embedded default config (unprivileged ports, state in ./state).
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pydovecot.conf")


def load_config(path: str | None = None) -> Config:
    """Load and check a config file (None: the embedded default); raise ConfigError."""
    return parse_config(DEFAULT_CONFIG_PATH if path is None else path)


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "InetListener",
    "ServiceConfig",
    "UnixListener",
    "expand",
    "load_config",
    "username_format",
]
