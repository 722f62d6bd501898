"""authd's entry point: ``python -m authd`` / ``pydovecot-authd``.

Loads the config (trusted: root's), builds the AMP factories and serves
them on listening UNIX sockets inherited from the master (``--socket
NAME=FD``) or, in a standalone run, created under base_dir.  Runs the
reactor until SIGTERM, or, when started by the master, until the master's
channel (fd 3) closes: authd never outlives its master.

Started as root, authd gives root up before it serves anyone: it becomes
the auth service's ``user`` (``default_internal_user``, as Dovecot's auth
does), with no supplementary groups and no_new_privs.  The backends that
need root (PAM, the passwd userdb) then run in a privileged worker
(authd.worker) that authd spawns, while still root, before the drop.
authd does not chroot: Dovecot's auth doesn't by default either, and its
backends need the real filesystem at run time — passwd-file reloads its
files when they change, uid/gid names are resolved through NSS, LDAP and
SQL resolve host names and read CA files, ``%h`` homes are checked.

A config error — unparsable, an unknown driver, a backend module that is
not installed — is one Fatal line and exit status ``os.EX_CONFIG``, which
the master takes as final (no restart loop).
"""

from __future__ import annotations

import argparse
import grp
import os
import sys

from twisted.logger import Logger

from authd import drivers
from authd.server import build_factories
from authd.settings import AuthSettings, from_config
from pydovecot import privileges
from pydovecot.log import start_child_logging

MASTER_FD = 3

log = Logger()

#: Exit status for a config authd cannot run with (sysexits' EX_CONFIG):
#: the master stops instead of restarting authd.
EXIT_CONFIG = os.EX_CONFIG


def _socket_arg(value: str) -> tuple[str, int]:
    name, sep, fd = value.partition("=")
    if not sep or not name or not fd.isdigit():
        raise argparse.ArgumentTypeError("expected NAME=FD")
    return name, int(fd)


def listener_owners(settings: AuthSettings, names) -> dict[str, tuple[int, int]]:
    """(uid, gid) for each standalone socket (-1: keep), resolved before any
    socket exists; KeyError naming the missing user or group."""
    owners = {}
    for name in names:
        listener = settings.listeners.get(name)
        uid = gid = -1
        if listener and privileges.is_root():
            if listener.user:
                uid = privileges.lookup_user(listener.user)[0]
            if listener.group:
                try:
                    gid = grp.getgrnam(listener.group).gr_gid
                except KeyError:
                    raise KeyError(f"group {listener.group!r} does not exist") from None
        owners[name] = (uid, gid)
    return owners


def listen_standalone(reactor, settings: AuthSettings, factories: dict,
                      owners: dict[str, tuple[int, int]] | None = None) -> list:
    """Create the sockets under base_dir (stale files removed), with the
    listeners' modes and owners (from :func:`listener_owners`: a missing
    user is found before the first socket listens, not after)."""
    owners = owners if owners is not None else listener_owners(settings, factories)
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
        if owners[name] != (-1, -1):
            os.chown(path, *owners[name])
        log.info("listening on {path}", path=path)
    return ports


def needs_worker(settings: AuthSettings) -> bool:
    """Whether a configured backend must run as root (PAM, passwd)."""
    return any(db.driver in drivers.ROOT_DRIVERS for db in settings.passdbs + settings.userdbs)


def preload(settings: AuthSettings) -> None:
    """Load what the backends would import lazily, while we still can
    (after the drop nothing new imports: the interpreter may live under a
    0700 home): codecs getaddrinfo and the drivers use, libc's crypt, and
    the LDAP client's submodules."""
    import codecs
    import warnings

    for name in privileges.CHROOT_CODECS:
        codecs.lookup(name)
    import encodings.idna  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # noqa: F401  (authd.schemes' fallback for $y$ and such)
        except ImportError:
            pass
    drivers_used = {db.driver for db in settings.passdbs + settings.userdbs}
    if "ldap" in drivers_used:
        import importlib
        import pkgutil

        import ldap3

        for info in pkgutil.walk_packages(ldap3.__path__, "ldap3."):
            try:
                importlib.import_module(info.name)
            except Exception:  # optional parts (Kerberos, …)
                pass


def drop_privileges(settings: AuthSettings) -> None:
    """Become the auth service's user for good (root only; ``user = root``
    keeps root, as Dovecot allows)."""
    if not privileges.is_root() or settings.user in ("", "root"):
        return
    uid, gid = privileges.lookup_user(settings.user)
    privileges.drop_to(uid, gid, [])
    privileges.set_no_new_privs()
    log.debug("running as {user} (uid {uid})", user=settings.user, uid=uid)


def watch_master(fd: int) -> bool:
    """When started by the master, stop as soon as its channel (``fd``, a
    socketpair) closes: the master died or was killed.  False if ``fd`` is
    not a socket (a standalone run)."""
    import stat

    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
    except OSError:
        return False
    from pydovecot.channel import ChannelAMP, adopt_channel, stop_process

    adopt_channel(fd, ChannelAMP(on_lost=lambda _: stop_process("master went away")))
    return True


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
    except (ConfigError, OSError, ValueError) as e:
        print(f"auth: Fatal: {e}", file=sys.stderr)
        return EXIT_CONFIG
    start_child_logging("auth", debug=settings.auth_debug)
    try:
        from setproctitle import setproctitle

        setproctitle("pydovecot/auth")
    except ImportError:
        pass

    missing = drivers.check_config(settings)
    if missing:
        for line in missing:
            log.critical("{error}", error=line)
        return EXIT_CONFIG

    from twisted.internet import reactor

    from pydovecot.channel import adopt_listener, stop_process

    try:
        factories = build_factories(settings)
    except ValueError as e:  # drivers.MissingModule too
        log.critical("{error}", error=str(e))
        return EXIT_CONFIG
    dropping = privileges.is_root() and settings.user not in ("", "root")
    try:  # every user we need, before the first socket listens
        owners = None if args.socket else listener_owners(settings, factories)
        if dropping:
            privileges.lookup_user(settings.user)
    except KeyError as e:
        log.critical("{error}", error=e.args[0])
        return EXIT_CONFIG
    if args.socket:
        watch_master(MASTER_FD)
        for name, fd in args.socket:
            if name not in factories:
                log.warn("ignoring unknown socket {name}", name=name)
                os.close(fd)
                continue
            # Keeps the master's mode and leaves the socket file in place.
            adopt_listener(fd, factories[name])
    else:
        listen_standalone(reactor, settings, factories, owners)
    if dropping and needs_worker(settings):
        from authd.worker import WorkerClient

        worker = WorkerClient(reactor)
        worker.on_lost = lambda: stop_process("the privileged auth-worker went away")
        worker.spawn()
        drivers.PRIVILEGED_WORKER = worker
        reactor.addSystemEventTrigger("before", "shutdown", worker.stop)
    if dropping:
        preload(settings)
        try:
            drop_privileges(settings)
        except (KeyError, OSError) as e:
            log.critical("cannot drop privileges to {user}: {error}", user=settings.user,
                         error=e.args[0] if isinstance(e, KeyError) else str(e))
            return EXIT_CONFIG
    reactor.run()
    # Shutdown triggers have run (backends closed): skip the interpreter's
    # teardown (~170 ms of CPU for all the modules), so that authd is gone
    # at once when the master is, even on a loaded machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
