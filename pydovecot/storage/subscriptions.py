"""Dovecot's ``subscriptions`` file in the Maildir root.

Dovecot 2.3 writes ``V\\t2\\n\\n`` and then one storage name per line with
TAB as the hierarchy separator (names in modified UTF-7 unless UTF-8
storage names are used).  The old format is one name per line with the
namespace separator (``.`` for Maildir++).  Both are read; the new one is
written.  Trusts the file's syntax only; undecodable names are skipped.
"""

from __future__ import annotations

import os

from pydovecot.storage.names import SEP, mutf7_decode, mutf7_encode
from pydovecot.storage.uidlist import Dotlock, write_atomic

FILENAME = "subscriptions"


def parse(data: bytes, utf8: bool = False) -> list[str]:
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[0].startswith("V\t"):
        try:
            body = lines[lines.index("", 1) + 1 :]
        except ValueError:
            body = []
        split = "\t"
    else:
        body, split = lines, "."
    names: list[str] = []
    for line in body:
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split(split)
        try:
            if not utf8:
                parts = [mutf7_decode(p) for p in parts]
        except ValueError:
            continue
        name = SEP.join(parts)
        if name.upper() == "INBOX":
            name = "INBOX"
        if name not in names:
            names.append(name)
    return names


def serialize(names: list[str], utf8: bool = False) -> bytes:
    lines = []
    for name in names:
        parts = name.split(SEP)
        if not utf8:
            parts = [mutf7_encode(p) for p in parts]
        lines.append("\t".join(parts) + "\n")
    return ("V\t2\n\n" + "".join(lines)).encode("utf-8")


class Subscriptions:
    def __init__(self, root: str, utf8: bool = False):
        self.path = os.path.join(root, FILENAME)
        self.utf8 = utf8

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                return parse(f.read(), self.utf8)
        except FileNotFoundError:
            return []

    def change(self, name: str, add: bool) -> None:
        with Dotlock(self.path):
            names = self.read()
            if add and name not in names:
                names.append(name)
            elif not add and name in names:
                names.remove(name)
            else:
                return
            write_atomic(self.path, serialize(names, self.utf8))
