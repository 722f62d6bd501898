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
    if fmt != "maildir":
        raise UnsupportedLocation(f"mail storage format {fmt!r} is not supported (only maildir)")
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


def open_storage(user: str, location: str, home: str) -> IMailStorage:
    """Open (creating if needed) the user's Maildir++ storage."""
    from pydovecot.storage.maildir import MaildirStorage

    root, options = parse_location(location, home)
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
