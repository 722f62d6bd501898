"""Dovecot's ``dovecot-keywords`` file: ``<index> <keyword>`` lines.

Index 0..25 is the letter ``a``..``z`` after the standard flags in a
Maildir file name's ``:2,`` info.  Trusts the file's syntax only: bad
lines are ignored.  Updates are written atomically under a dotlock.
"""

from __future__ import annotations

import os

from pydovecot.storage.uidlist import Dotlock, write_atomic

FILENAME = "dovecot-keywords"
MAX_KEYWORDS = 26


def letter(index: int) -> str:
    return chr(ord("a") + index)


def index_of(ch: str) -> int:
    return ord(ch) - ord("a")


class Keywords:
    """One mailbox's keyword table."""

    def __init__(self, mailbox_path: str):
        self.path = os.path.join(mailbox_path, FILENAME)
        self.names: list[str | None] = []
        self._stamp: tuple[int, int, int] | None = None

    def load(self) -> None:
        """Re-read the file if it changed on disk."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.names, self._stamp = [], None
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        names: list[str | None] = [None] * MAX_KEYWORDS
        with open(self.path, "rb") as f:
            for raw in f.read().decode("utf-8", "replace").splitlines():
                idx, _, kw = raw.partition(" ")
                if idx.isdigit() and int(idx) < MAX_KEYWORDS and kw:
                    names[int(idx)] = kw
        while names and names[-1] is None:
            names.pop()
        self.names, self._stamp = names, stamp

    def defined(self) -> list[str]:
        return [n for n in self.names if n]

    def name_for(self, ch: str) -> str | None:
        i = index_of(ch)
        return self.names[i] if 0 <= i < len(self.names) else None

    def letters_for(self, keywords: set[str], allocate: bool = True) -> tuple[str, set[str]]:
        """Letters for ``keywords``; allocates new indexes (under the lock)
        when ``allocate``.  Returns (letters, keywords that did not fit)."""
        self.load()
        lower = {n.lower(): i for i, n in enumerate(self.names) if n}
        missing = [k for k in sorted(keywords) if k.lower() not in lower]
        if missing and allocate:
            with Dotlock(self.path):
                self._stamp = None
                self.load()
                lower = {n.lower(): i for i, n in enumerate(self.names) if n}
                changed = False
                for kw in missing:
                    if kw.lower() in lower:
                        continue
                    try:
                        i = self.names.index(None)
                    except ValueError:
                        if len(self.names) >= MAX_KEYWORDS:
                            break
                        self.names.append(None)
                        i = len(self.names) - 1
                    self.names[i] = kw
                    lower[kw.lower()] = i
                    changed = True
                if changed:
                    data = "".join(f"{i} {n}\n" for i, n in enumerate(self.names) if n)
                    write_atomic(self.path, data.encode("utf-8"))
                    self._stamp = None
                    self.load()
        letters = "".join(sorted(letter(lower[k.lower()]) for k in keywords if k.lower() in lower))
        dropped = {k for k in keywords if k.lower() not in lower}
        return letters, dropped
