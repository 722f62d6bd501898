"""authd's entry point: ``python -m authd`` / ``pydovecot-authd``.

Loads the config (trusted: root's), builds the AMP factories and serves
them on listening UNIX sockets inherited from the master (``--socket
NAME=FD``) or, in a standalone run, created under base_dir.  Runs the
reactor until SIGTERM.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import sys

from twisted.logger import Logger

from authd.server import build_factories
from authd.settings import AuthSettings, from_config
from pydovecot.log import start_child_logging

log = Logger()


def _socket_arg(value: str) -> tuple[str, int]:
    name, sep, fd = value.partition("=")
    if not sep or not name or not fd.isdigit():
        raise argparse.ArgumentTypeError("expected NAME=FD")
    return name, int(fd)


def listen_standalone(reactor, settings: AuthSettings, factories: dict) -> list:
    """Create the sockets under base_dir (stale files removed), with the
    listeners' modes and owners."""
    ports = []
    for name, factory in factories.items():
        listener = settings.listeners.get(name)
        path = settings.socket_path(name)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        mode = listener.mode if listener else 0o600
        ports.append(reactor.listenUNIX(path, factory, mode=mode))
        os.chmod(path, mode)
        if listener and (listener.user or listener.group) and os.getuid() == 0:
            uid = pwd.getpwnam(listener.user).pw_uid if listener.user else -1
            gid = grp.getgrnam(listener.group).gr_gid if listener.group else -1
            os.chown(path, uid, gid)
        log.info("listening on {path}", path=path)
    return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pydovecot-authd")
    parser.add_argument("-c", dest="config", default=None, help="config file (default: embedded)")
    parser.add_argument(
        "--socket",
        action="append",
        type=_socket_arg,
        default=[],
        metavar="NAME=FD",
        help="listening UNIX socket inherited from the master (repeatable)",
    )
    args = parser.parse_args(argv)

    from pydovecot.config import ConfigError, load_config

    try:
        settings = from_config(load_config(args.config))
    except (ConfigError, OSError) as e:
        print(f"Fatal: {e}", file=sys.stderr)
        return 89
    start_child_logging("auth", debug=settings.auth_debug)
    try:
        from setproctitle import setproctitle

        setproctitle("pydovecot/auth")
    except ImportError:
        pass

    from twisted.internet import reactor

    from pydovecot.channel import adopt_listener

    try:
        factories = build_factories(settings)
    except ValueError as e:
        log.critical("{error}", error=str(e))
        return 89
    if args.socket:
        for name, fd in args.socket:
            if name not in factories:
                log.warn("ignoring unknown socket {name}", name=name)
                os.close(fd)
                continue
            # Keeps the master's mode and leaves the socket file in place.
            adopt_listener(fd, factories[name])
    else:
        listen_standalone(reactor, settings, factories)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
