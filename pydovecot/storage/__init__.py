"""Mail storage: :func:`open_storage` turns a Dovecot ``mail_location``
into an :class:`~pydovecot.storage.interfaces.IMailStorage`.

Trusts its caller (the mail process, with userdb fields already expanded);
rejects locations and options it does not support with a clear error
rather than guessing.
"""

from __future__ import annotations

import os

from pydovecot.storage.interfaces import IMailStorage, StorageError


class UnsupportedLocation(StorageError):
    """The mail_location names a format or option we do not support."""


def parse_location(location: str, home: str) -> tuple[str, dict[str, str]]:
    """``maildir:~/Maildir:UTF-8`` → (absolute root, {"UTF-8": ""})."""
    fmt, sep, rest = location.partition(":")
    if not sep:
        raise UnsupportedLocation(f"mail_location needs a format prefix: {location!r}")
    if fmt not in ("maildir", "mbox"):
        raise UnsupportedLocation(
            f"mail storage format {fmt!r} is not supported (only maildir and mbox)")
    path, *opts = rest.split(":")
    if path == "~" or path.startswith("~/"):
        if not home:
            raise UnsupportedLocation("mail_location uses ~ but the user has no home")
        path = os.path.join(home, path[2:]) if path != "~" else home
    if not path or not os.path.isabs(path):
        raise UnsupportedLocation(f"mail_location path must be absolute: {path!r}")
    options: dict[str, str] = {}
    for opt in opts:
        key, _, value = opt.partition("=")
        options[key.upper()] = value
    return os.path.normpath(path), options


def _expand_home(path: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        if not home:
            raise UnsupportedLocation("mail_location uses ~ but the user has no home")
        path = os.path.join(home, path[2:]) if path != "~" else home
    if not path or not os.path.isabs(path):
        raise UnsupportedLocation(f"mail_location path must be absolute: {path!r}")
    return os.path.normpath(path)


def _open_mbox(user: str, root: str, options: dict[str, str], home: str) -> IMailStorage:
    """``mbox:~/mail:INBOX=/var/mail/%u[:INDEX=…][:CONTROL=…][:LAYOUT=fs][:UTF-8]``."""
    from pydovecot.storage.mbox import MboxStorage

    inbox = index = control = None
    utf8 = False
    for key, value in options.items():
        if key == "UTF-8":
            utf8 = True
        elif key == "LAYOUT" and value.lower() != "fs":
            raise UnsupportedLocation(f"mail_location LAYOUT={value} is not supported for mbox (only fs)")
        elif key == "INBOX":
            inbox = _expand_home(value, home)
        elif key == "INDEX":
            index = None if value.upper() == "MEMORY" else _expand_home(value, home)
        elif key == "CONTROL":
            control = _expand_home(value, home)
        elif key != "LAYOUT":
            raise UnsupportedLocation(f"mail_location option {key}= is not supported for mbox")
    return MboxStorage(user, root, inbox=inbox, index=index, control=control, utf8=utf8, home=home or None)


def open_storage(user: str, location: str, home: str) -> IMailStorage:
    """Open (creating if needed) the user's Maildir++ or mbox storage."""
    from pydovecot.storage.maildir import MaildirStorage

    root, options = parse_location(location, home)
    if location.partition(":")[0] == "mbox":
        return _open_mbox(user, root, options, home)
    utf8 = False
    for key, value in options.items():
        if key == "UTF-8":
            utf8 = True
        elif key == "LAYOUT" and value.lower() != "maildir++":
            raise UnsupportedLocation(f"mail_location LAYOUT={value} is not supported (only maildir++)")
        elif key == "LAYOUT":
            pass
        elif key in ("INBOX", "INDEX", "CONTROL", "VOLATILEDIR"):
            raise UnsupportedLocation(f"mail_location option {key}= is not supported yet")
        else:
            raise UnsupportedLocation(f"unknown mail_location option {key!r}")
    return MaildirStorage(user, root, utf8=utf8, home=home or None)


__all__ = ["open_storage", "parse_location", "UnsupportedLocation"]
