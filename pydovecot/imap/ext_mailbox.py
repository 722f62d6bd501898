"""LIST-EXTENDED, LIST-STATUS, SPECIAL-USE, STATUS items and CREATE (USE).

:class:`MailboxExtMixin` is a base of
:class:`~pydovecot.imap.session.IMAPSession` and answers:

* ``LIST [(selection options)] reference (pattern | (patterns)) [RETURN
  (return options)]`` (RFC 5258): selection ``SUBSCRIBED``, ``REMOTE``
  (no remote mailboxes here, so it changes nothing), ``RECURSIVEMATCH``
  (parents of matches get ``CHILDINFO``), ``SPECIAL-USE`` (RFC 6154);
  return ``SUBSCRIBED``, ``CHILDREN``, ``SPECIAL-USE`` and ``STATUS (…)``
  (RFC 5819: a ``* STATUS`` after each selectable mailbox).  Names that do
  not exist are ``\\NonExistent`` in extended and IMAP4rev2 answers and
  ``\\Noselect`` in IMAP4rev1 basic LIST, as Dovecot does.  LSUB is the
  RFC 3501 one.
* ``STATUS`` with ``SIZE`` (RFC 8438), ``DELETED`` (RFC 9051),
  ``APPENDLIMIT`` (RFC 7889), and ``HIGHESTMODSEQ`` when the session
  advertises CONDSTORE.
* ``CREATE name [(USE (attrs))]`` (RFC 6154): attributes are kept by
  :mod:`pydovecot.imap.specialuse`; an unknown one is ``NO [USEATTR]``.

Everything in the arguments is client data; the storage is trusted.
A LIST that answers many mailboxes (or STATUS for more than a few) is
sent one mailbox per step of Twisted's global cooperator, waiting while
the client does not read our output, so it never holds the reactor.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task

from pydovecot.imap.parser import Atom, Token, as_bytes
from pydovecot.imap.specialuse import SpecialUse, canonical
from pydovecot.storage.interfaces import MailboxInfo, MailboxStatus

#: LISTs of more entries (or STATUS for more) run as a cooperator task.
LIST_SYNC = 100
LIST_STATUS_SYNC = 10

_SELECTION = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED",
                "APPENDLIMIT", "HIGHESTMODSEQ")


def _error(response: bytes) -> Exception:
    from pydovecot.imap.session import CommandError

    return CommandError(response)


def _options(tok: Token, allowed: set[str], what: str) -> list[Token]:
    if not isinstance(tok, list):
        raise _error(b"BAD Invalid %s options" % what.encode())
    return tok


class MailboxExtMixin:
    """LIST/STATUS/CREATE for IMAPSession (see the module docstring)."""

    storage: Any
    mailbox: Any
    capabilities: bytes
    append_limit: int
    rev2: bool
    special_use: SpecialUse | None

    # -- STATUS --------------------------------------------------------------

    def status_items(self, tokens: list[Token]) -> list[str]:
        """The STATUS item list → canonical names; BAD for unknown items."""
        if not tokens:
            raise _error(b"BAD Missing status items")
        wanted: list[str] = []
        condstore = b"CONDSTORE" in self.capabilities.upper().split()
        for item in tokens:
            if not isinstance(item, Atom):
                raise _error(b"BAD Invalid status item")
            key = item.upper_str()
            if key not in STATUS_ITEMS or (key == "HIGHESTMODSEQ" and not condstore):
                raise _error(b"BAD Invalid status item %s" % key[:30].encode())
            if key not in wanted:
                wanted.append(key)
        return wanted

    def status_values(self, status: MailboxStatus, wanted: list[str]) -> bytes:
        values: list[bytes] = []
        for key in wanted:
            if key == "APPENDLIMIT":
                values.append(b"APPENDLIMIT %d" % self.append_limit)
            else:
                values.append(b"%s %d" % (key.encode(), getattr(status, key.lower())))
        return b" ".join(values)

    def status_command(self, tag: bytes, args: list[Token]) -> bytes:
        if len(args) != 2 or not isinstance(args[1], list):
            raise _error(b"BAD Invalid arguments")
        name = self.decode_mailbox(args[0])  # type: ignore[attr-defined]
        wanted = self.status_items(args[1])
        hook = getattr(self, "_status_items", None)  # ext_sync: CONDSTORE
        if hook is not None:
            hook(wanted)
        status = self.storage.status(name)
        self._send(b"* STATUS %s (%s)\r\n" % (  # type: ignore[attr-defined]
            self.encode_mailbox(name), self.status_values(status, wanted)))  # type: ignore[attr-defined]
        return b"OK Status completed."

    # -- CREATE ----------------------------------------------------------------

    def create_command(self, tag: bytes, args: list[Token]) -> bytes:
        if not args or len(args) > 2 or isinstance(args[0], list):
            raise _error(b"BAD Invalid arguments")
        use: set[str] = set()
        if len(args) == 2:
            opts = args[1]
            if (not isinstance(opts, list) or len(opts) != 2 or not isinstance(opts[0], Atom)
                    or opts[0].upper() != b"USE" or not isinstance(opts[1], list)):
                raise _error(b"BAD Invalid CREATE parameters")
            for attr in opts[1]:
                if not isinstance(attr, Atom):
                    raise _error(b"BAD Invalid USE attribute")
                canon = canonical(attr.decode("latin-1"))
                if canon is None:
                    raise _error(b"NO [USEATTR] Unsupported special-use attribute %s" % attr[:40])
                use.add(canon)
        name = self.decode_mailbox(args[0]).rstrip("/")  # type: ignore[attr-defined]
        if not name:
            raise _error(b"NO [CANNOT] Invalid mailbox name: empty")
        if name == "INBOX":
            raise _error(b"NO [ALREADYEXISTS] Mailbox already exists")
        self.storage.create(name)
        if self.special_use is not None:
            self.special_use.set(name, use)  # also drops a deleted namesake's
        return b"OK Create completed."

    # -- LIST ------------------------------------------------------------------

    def list_command(self, tag: bytes, args: list[Token],
                     lsub: bool = False) -> bytes | defer.Deferred[bytes]:
        kind = b"LSUB" if lsub else b"LIST"
        done = b"OK %s completed." % kind.capitalize()
        args = list(args)
        selection: set[str] = set()
        returns: set[str] = set()
        status_items: list[str] = []
        extended = False
        if not lsub and args and isinstance(args[0], list):
            extended = True
            for opt in _options(args.pop(0), _SELECTION, "selection"):
                if not isinstance(opt, Atom) or opt.upper_str() not in _SELECTION:
                    raise _error(b"BAD Invalid LIST selection option")
                selection.add(opt.upper_str())
            if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
                raise _error(b"BAD RECURSIVEMATCH needs another selection option")
        if not lsub and len(args) == 4 and isinstance(args[2], Atom) and args[2].upper() == b"RETURN":
            extended = True
            opts = _options(args[3], _RETURN, "return")
            args = args[:2]
            k = 0
            while k < len(opts):
                opt = opts[k]
                if not isinstance(opt, Atom) or opt.upper_str() not in _RETURN:
                    raise _error(b"BAD Invalid LIST return option")
                if opt.upper_str() == "STATUS":
                    if k + 1 >= len(opts) or not isinstance(opts[k + 1], list):
                        raise _error(b"BAD Missing STATUS items")
                    status_items = self.status_items(opts[k + 1])
                    k += 1
                returns.add(opt.upper_str())
                k += 1
        if len(args) != 2 or isinstance(args[0], list):
            raise _error(b"BAD Invalid arguments")
        if isinstance(args[1], list):
            if lsub or not args[1] or any(isinstance(p, list) for p in args[1]):
                raise _error(b"BAD Invalid mailbox patterns")
            extended = True
            raw_patterns = [as_bytes(p) for p in args[1]]
        else:
            raw_patterns = [as_bytes(args[1])]
        raw_ref = as_bytes(args[0])
        if raw_patterns == [b""] and not lsub:
            self._send(b'* LIST (\\Noselect) "/" ""\r\n')  # type: ignore[attr-defined]
            return done
        try:
            reference = self.decode_pattern(raw_ref)  # type: ignore[attr-defined]
            patterns = [self.decode_pattern(p) for p in raw_patterns if p]  # type: ignore[attr-defined]
        except ValueError:
            return done
        if lsub:
            self._lsub(reference, patterns)
            return done
        steps = self._list(reference, patterns, selection, returns, status_items,
                           extended or self.rev2)
        if steps is None:
            return done
        d = task.cooperate(steps).whenDone()
        d.addCallback(lambda _: done)
        return d

    def _lsub(self, reference: str, patterns: list[str]) -> None:
        existing = {i.name for i in self.storage.list_mailboxes() if "\\Noselect" not in i.attributes}
        infos = [MailboxInfo(n, set() if n in existing else {"\\Noselect"})
                 for n in self.storage.subscriptions()]
        for name, attrs in self._match(infos, reference, patterns):
            attr = " ".join(sorted(a for a in attrs if a == "\\Noselect")).encode()
            self._send(b'* LSUB (%s) "/" %s\r\n' % (attr, self.encode_mailbox(name)))  # type: ignore[attr-defined]

    def _match(self, infos: list[MailboxInfo], reference: str,
               patterns: list[str]) -> list[tuple[str, set[str]]]:
        """Entries matching any pattern, in storage order, each once."""
        seen: dict[str, set[str]] = {}
        for pattern in patterns:
            for name, attrs in self._list_entries(infos, reference, pattern):  # type: ignore[attr-defined]
                seen.setdefault(name, set(attrs))
        order = {i.name: k for k, i in enumerate(infos)}
        return sorted(seen.items(), key=lambda e: (order.get(e[0], len(order)), e[0]))

    def _list(self, reference: str, patterns: list[str], selection: set[str],
              returns: set[str], status_items: list[str],
              extended: bool) -> Generator[Any, None, None] | None:
        """Send the LIST lines now, or return the steps that will (for
        many mailboxes)."""
        infos = self.storage.list_mailboxes()
        real = {i.name: i.attributes for i in infos if "\\Noselect" not in i.attributes}
        special = self.special_use.all() if self.special_use is not None else {}
        want_subs = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns
        subs = set(self.storage.subscriptions()) if want_subs or extended else set()
        if "SUBSCRIBED" in selection:
            candidates = [
                MailboxInfo(n, set(real[n]) if n in real else {"\\NonExistent"})
                for n in sorted(subs, key=lambda n: (n != "INBOX", n))
            ]
        else:
            candidates = infos
        matched = self._match(candidates, reference, patterns)
        if "SUBSCRIBED" in selection:  # no unsubscribed parents without RECURSIVEMATCH
            matched = [(n, a) for n, a in matched if n in subs]
        childinfo: set[str] = set()
        if "RECURSIVEMATCH" in selection and "SUBSCRIBED" in selection:
            names = {n for n, _a in matched}
            parents = [MailboxInfo(p, set(real.get(p, {"\\NonExistent"})))
                       for n in subs for p in _parents(n)]
            for name, attrs in self._match(parents, reference, patterns):
                childinfo.add(name)
                if name not in names:
                    matched.append((name, attrs))
                    names.add(name)
        steps = self._list_lines(matched, real, special, selection, want_subs, subs,
                                 childinfo, status_items, extended)
        if len(matched) <= (LIST_STATUS_SYNC if status_items else LIST_SYNC):
            for _ in steps:
                pass
            return None
        return steps

    def _list_lines(self, matched: list[tuple[str, set[str]]], real: dict, special: dict,
                    selection: set[str], want_subs: bool, subs: set[str], childinfo: set[str],
                    status_items: list[str], extended: bool) -> Generator[Any, None, None]:
        session: Any = self
        for name, attrs in matched:
            if session._closed:
                return
            if session.output_blocked:
                yield session.drained()
            attrs = set(attrs)
            if "\\NonExistent" in attrs or ("\\Noselect" in attrs and name not in real):
                attrs.discard("\\Noselect")
                attrs.add("\\NonExistent" if extended else "\\Noselect")
            if name in real:
                attrs |= special.get(name, set())
            if "SPECIAL-USE" in selection and not attrs & set(special.get(name, set())):
                continue
            if want_subs and name in subs:
                attrs.add("\\Subscribed")
            if name.upper() == "INBOX" and extended:
                attrs.discard("\\Noinferiors")
            line = b'* LIST (%s) "/" %s' % (
                " ".join(_order(attrs)).encode(), self.encode_mailbox(name))  # type: ignore[attr-defined]
            if name in childinfo:
                line += b' ("CHILDINFO" ("SUBSCRIBED"))'
            self._send(line + b"\r\n")  # type: ignore[attr-defined]
            if status_items and name in real:
                self._list_status(name, status_items)
            yield None

    def _list_status(self, name: str, items: list[str]) -> None:
        try:
            status = self.storage.status(name)
        except Exception:  # a mailbox that vanished meanwhile: no STATUS (RFC 5819)
            return
        self._send(b"* STATUS %s (%s)\r\n" % (  # type: ignore[attr-defined]
            self.encode_mailbox(name), self.status_values(status, items)))  # type: ignore[attr-defined]


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:k]) for k in range(1, len(parts))]


def _order(attrs: set[str]) -> list[str]:
    """Attributes in a stable order: the RFC 3501/5258 ones, then special-use."""
    first = ["\\NonExistent", "\\Noselect", "\\Noinferiors", "\\Subscribed", "\\Remote",
             "\\HasChildren", "\\HasNoChildren", "\\Marked", "\\Unmarked"]
    head = [a for a in first if a in attrs]
    return head + sorted(attrs - set(head))
