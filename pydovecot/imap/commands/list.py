"""LIST-EXTENDED, LIST-STATUS, SPECIAL-USE, STATUS items and CREATE (USE).

LIST and LSUB:

* ``LIST [(selection options)] reference (pattern | (patterns)) [RETURN
  (return options)]`` (RFC 5258): selection ``SUBSCRIBED``, ``REMOTE``
  (no remote mailboxes here, so it changes nothing), ``RECURSIVEMATCH``
  (listed parents of subscribed mailboxes get ``CHILDINFO``; a parent that
  is not subscribed is listed only for children the pattern does not list,
  as Dovecot), ``SPECIAL-USE`` (RFC 6154);
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
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from pydovecot.imap import features
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.commands.status import status_items as parse_status_items
from pydovecot.imap.commands.status import status_values
from pydovecot.imap.errors import CommandError
from pydovecot.imap.parser import (
    Atom,
    Token,
    as_bytes,
)
from pydovecot.imap.syntax import list_pattern
from pydovecot.storage.deferred import Answer
from pydovecot.storage.interfaces import (
    MailboxInfo,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client


LIST_SYNC = 100
LIST_STATUS_SYNC = 10
_SELECTION = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}


def _list_entries(
    client: Client, infos: list[MailboxInfo], reference: str, pattern: str
) -> list[tuple[str, set[str]]]:
    if pattern.upper().startswith("INBOX") and not reference:
        pattern = "INBOX" + pattern[5:]
    full = reference + pattern
    if reference.upper() == "INBOX" or reference.upper().startswith("INBOX/"):
        full = "INBOX" + full[5:]
    regex = list_pattern(full)
    names = {i.name: set(i.attributes) for i in infos}
    virtual: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            if parent not in names:
                virtual[parent] = {"\\Noselect", "\\HasChildren"}
    out = [(name, attrs) for name, attrs in names.items() if regex.match(name)]
    matched_parents = {n.rsplit("/", k)[0] for n, _a in out for k in range(1, n.count("/") + 1)}
    for name, attrs in virtual.items():
        # A missing parent is shown only where no child of it matched.
        if regex.match(name) and name not in matched_parents:
            out.append((name, attrs))
    return out


async def list_command(client: Client, tag: bytes, args: list[Token], lsub: bool = False) -> bytes:
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
                raise CommandError(b"BAD Invalid LIST selection option")
            selection.add(opt.upper_str())
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            raise CommandError(b"BAD RECURSIVEMATCH needs another selection option")
    if not lsub and len(args) == 4 and isinstance(args[2], Atom) and args[2].upper() == b"RETURN":
        extended = True
        opts = _options(args[3], _RETURN, "return")
        args = args[:2]
        k = 0
        while k < len(opts):
            opt = opts[k]
            if not isinstance(opt, Atom) or opt.upper_str() not in _RETURN:
                raise CommandError(b"BAD Invalid LIST return option")
            if opt.upper_str() == "STATUS":
                if k + 1 >= len(opts) or not isinstance(opts[k + 1], list):
                    raise CommandError(b"BAD Missing STATUS items")
                status_items = parse_status_items(client, opts[k + 1])
                k += 1
            returns.add(opt.upper_str())
            k += 1
    if len(args) != 2 or isinstance(args[0], list):
        raise CommandError(b"BAD Invalid arguments")
    if isinstance(args[1], list):
        if lsub or not args[1] or any(isinstance(p, list) for p in args[1]):
            raise CommandError(b"BAD Invalid mailbox patterns")
        extended = True
        raw_patterns = [as_bytes(p) for p in args[1]]
    else:
        raw_patterns = [as_bytes(args[1])]
    raw_ref = as_bytes(args[0])
    if raw_patterns == [b""] and not lsub:
        client.send(b'* LIST (\\Noselect) "/" ""\r\n')
        return done
    try:
        reference = client.decode_pattern(raw_ref)
        patterns = [client.decode_pattern(p) for p in raw_patterns if p]
    except ValueError:
        return done
    if lsub:
        await _lsub(client, reference, patterns)
        return done
    await _list(client, reference, patterns, selection, returns, status_items,
                extended or client.rev2)
    return done


async def _lsub(client: Client, reference: str, patterns: list[str]) -> None:
    existing = {i.name for i in await client.storage.list_mailboxes()
                if "\\Noselect" not in i.attributes}
    infos = [MailboxInfo(n, set() if n in existing else {"\\Noselect"})
             for n in await client.storage.subscriptions()]
    for name, attrs in _match(client, infos, reference, patterns):
        attr = " ".join(sorted(a for a in attrs if a == "\\Noselect")).encode()
        client.send(b'* LSUB (%s) "/" %s\r\n' % (attr, client.encode_mailbox(name)))


def _match(client: Client, infos: list[MailboxInfo], reference: str,
           patterns: list[str]) -> list[tuple[str, set[str]]]:
    """Entries matching any pattern, in storage order, each once."""
    seen: dict[str, set[str]] = {}
    for pattern in patterns:
        for name, attrs in _list_entries(client, infos, reference, pattern):
            seen.setdefault(name, set(attrs))
    order = {i.name: k for k, i in enumerate(infos)}
    return sorted(seen.items(), key=lambda e: (order.get(e[0], len(order)), e[0]))


async def _list(client: Client, reference: str, patterns: list[str], selection: set[str],
                returns: set[str], status_items: list[str], extended: bool) -> None:
    """Send the LIST lines: at once for a few mailboxes, else a mailbox
    per cooperator step."""
    infos = await client.storage.list_mailboxes()
    real = {i.name: i.attributes for i in infos if "\\Noselect" not in i.attributes}
    want_subs = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns
    subs = set(await client.storage.subscriptions()) if want_subs or extended else set()
    if "SUBSCRIBED" in selection:
        candidates = [
            MailboxInfo(n, set(real[n]) if n in real else {"\\NonExistent"})
            for n in sorted(subs, key=lambda n: (n != "INBOX", n))
        ]
    else:
        candidates = infos
    matched = _match(client, candidates, reference, patterns)
    if "SUBSCRIBED" in selection:  # no unsubscribed parents without RECURSIVEMATCH
        matched = [(n, a) for n, a in matched if n in subs]
    childinfo: set[str] = set()
    if "RECURSIVEMATCH" in selection and "SUBSCRIBED" in selection:
        listed = {n for n, _a in matched}
        unlisted: dict[str, bool] = {}  # parent → has a subscribed child not listed
        for n in sorted(subs):
            for p in _parents(n):
                unlisted[p] = unlisted.get(p, False) or n not in listed
        parents = [MailboxInfo(p, set(real.get(p, {"\\NonExistent"}))) for p in unlisted]
        # RFC 5258 4: a parent that is not selected itself is listed (with
        # CHILDINFO) only for subscribed children the patterns do not list
        # (as Dovecot); a listed subscribed parent gets CHILDINFO too
        for name, attrs in _match(client, parents, reference, patterns):
            if name in listed:
                childinfo.add(name)
            elif unlisted[name]:
                childinfo.add(name)
                matched.append((name, attrs))
                listed.add(name)
    steps = _list_lines(client, matched, real, selection, want_subs, subs,
                             childinfo, status_items, extended)
    small = len(matched) <= (LIST_STATUS_SYNC if status_items else LIST_SYNC)
    await client.run_steps(steps, len(matched) + 1 if small else 0)


def _list_lines(client: Client, matched: list[tuple[str, set[str]]], real: dict,
                selection: set[str], want_subs: bool, subs: set[str], childinfo: set[str],
                status_items: list[str], extended: bool) -> Generator[Any, None, None]:
    for name, attrs in matched:
        if client.closed:
            return
        if client.output_blocked:
            yield client.drained()
        attrs = set(attrs)
        special: set[str] = set()
        if client.special_use is not None:
            answer = Answer(defer.Deferred.fromCoroutine(
                client.special_use.attributes(name, exists=name in real)))
            if answer.pending:
                yield answer.wait
            special = answer.get()
        if "\\NonExistent" in attrs or ("\\Noselect" in attrs and name not in real):
            attrs.discard("\\Noselect")
            attrs.add("\\NonExistent" if extended else "\\Noselect")
        if name in real:
            attrs |= special
        if "SPECIAL-USE" in selection and not attrs & special:
            continue
        if want_subs and name in subs:
            attrs.add("\\Subscribed")
        if name.upper() == "INBOX" and extended:
            attrs.discard("\\Noinferiors")
        line = b'* LIST (%s) "/" %s' % (
            " ".join(_order(attrs)).encode(), client.encode_mailbox(name))
        if name in childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        client.send(line + b"\r\n")
        if status_items and name in real:
            answer = Answer(client.storage.status(name))
            if answer.pending:
                yield answer.wait
            _list_status(client, name, answer, status_items)
        yield None


def _list_status(client: Client, name: str, answer: Answer, items: list[str]) -> None:
    try:
        status = answer.get()
    except Exception:  # a mailbox that vanished meanwhile: no STATUS (RFC 5819)
        return
    client.send(b"* STATUS %s (%s)\r\n" % (
        client.encode_mailbox(name), status_values(client, status, items)))


def _options(tok: Token, allowed: set[str], what: str) -> list[Token]:
    if not isinstance(tok, list):
        raise CommandError(b"BAD Invalid %s options" % what.encode())
    return tok


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:k]) for k in range(1, len(parts))]


def _order(attrs: set[str]) -> list[str]:
    """Attributes in a stable order: the RFC 3501/5258 ones, then special-use."""
    first = ["\\NonExistent", "\\Noselect", "\\Noinferiors", "\\Subscribed", "\\Remote",
             "\\HasChildren", "\\HasNoChildren", "\\Marked", "\\Unmarked"]
    head = [a for a in first if a in attrs]
    return head + sorted(attrs - set(head))


async def cmd_list(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    return await list_command(client, tag, args, lsub=False)


async def cmd_lsub(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    return await list_command(client, tag, args, lsub=True)


add_command("LIST", cmd_list, Flag.NONE)
add_command("LSUB", cmd_lsub, Flag.NONE)
features.provide(__name__, "CHILDREN", "LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE")
