"""The quota-status process: an unprivileged child of the master.

It inherits the ``service quota-status`` inet listeners, answers Postfix's
policy requests (:mod:`pydovecot.quotastatus.policy`) and asks the master
(``QuotaCheckRequest``), which looks the recipient up in authd's userdb and
asks the user's own mail process: this process never reads mail, and runs
chrooted as ``default_internal_user``.  Trusts the master's answers only.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401  (before the chroot)

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp

from pydovecot import privileges
from pydovecot.channel import (
    MASTER_FD,
    ChannelAMP,
    adopt_channel,
    adopt_listener,
    run_child,
    stop_process,
)
from pydovecot.config import load_config
from pydovecot.master.protocol import QuotaCheckRequest
from pydovecot.quotastatus.policy import NoSuchUser, PolicyFactory

log = Logger()


def strip_detail(address: str, delimiters: str) -> str:
    """``alice+list@example.org`` → ``alice@example.org``."""
    local, at, domain = address.partition("@")
    for delim in delimiters:
        if delim and delim in local:
            local = local.split(delim, 1)[0]
            break
    return f"{local}{at}{domain}"


def master_checker(master: amp.AMP, delimiters: str):
    def check(recipient: str, size: int) -> defer.Deferred:
        d = master.callRemote(QuotaCheckRequest, user=strip_detail(recipient, delimiters),
                              size=size)

        def answered(result: dict) -> str:
            reply = result["reply"]
            if not reply:
                return ""
            _code, _enh, rest = (reply.split(" ", 2) + ["", ""])[:3]
            return rest.split("> ", 1)[1] if rest.startswith("<") and "> " in rest else rest

        def failed(failure):
            if failure.check(KeyError):
                raise NoSuchUser(recipient)
            return failure

        return d.addCallbacks(answered, failed)

    return check


def start(args) -> defer.Deferred:
    config = load_config(args.config)
    master = ChannelAMP(on_lost=lambda _: stop_process("master went away"))
    adopt_channel(MASTER_FD, master)
    settings = {k: v for k, v in (getattr(config, "plugin", None) or {}).items()
                if k.startswith("quota_status")}
    factory = PolicyFactory(settings, master_checker(master, config.get("recipient_delimiter")))
    for spec in args.listener:
        name, fd, ssl = spec.rsplit(":", 2)
        if ssl == "1":
            log.error("inet_listener {name}: ssl is not supported here; not served", name=name)
            continue
        adopt_listener(int(fd), factory)
    if privileges.is_root():
        uid, gid = privileges.lookup_user(config.get("default_internal_user"))
        privileges.enter_chroot(args.chroot)
        privileges.drop_to(uid, gid)
        privileges.set_no_new_privs()
    return defer.succeed(None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pydovecot-quota-status")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--listener", action="append", default=[])
    parser.add_argument("--chroot", required=True)
    args = parser.parse_args(argv)
    run_child("quota-status", lambda: start(args))


if __name__ == "__main__":
    main()
