"""FETCH and UID FETCH (RFC 3501 6.4.5, RFC 9051 6.4.5) with CONDSTORE's
CHANGEDSINCE and QRESYNC's VANISHED modifiers (RFC 7162).

Small FETCHes are answered at once; big ones run on the global
cooperator, a message (or a chunk of a streamed literal) per step, waiting
while the client does not read (:meth:`Client.drained`).  Item lists are
client input (:func:`pydovecot.imap.fetch.parse_items`); message files
come from the trusted storage view.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

from pydovecot.imap import ext_fetch, features, fetch, mime
from pydovecot.imap.commands.registry import Flag, add_command
from pydovecot.imap.errors import bad
from pydovecot.imap.parser import (
    Atom,
    NumberSet,
    ParseError,
    Token,
    compress,
    parse_sequence_set,
)
from pydovecot.storage.deferred import Answer
from pydovecot.storage.interfaces import (
    IMailbox,
    MessageInfo,
    StorageError,
)

if TYPE_CHECKING:
    from pydovecot.imap.client import Client

from pydovecot.imap.ext_sync import FetchModifiers, parse_modseq

#: FETCHes of at most this many small messages are answered in one go.
FETCH_SYNC = 50
#: A FETCH answered in one go sends at most about this much message text.
FETCH_SYNC_BYTES = 512 * 1024


async def cmd_fetch(client: Client, tag: bytes, args: list[Token], uid: bool = False) -> bytes:
    prepared = prepare_fetch(client, args, uid, lambda: cmd_fetch(client, tag, args, uid))
    if prepared is not None:  # ext_sync: big MIME trees parsed in slices first
        return await prepared
    mbox = client.selected()
    if len(args) < 2:
        raise bad("Missing arguments")
    client.announce_keywords()
    fetch_mods = _fetch_modifiers(client, args[2:], uid)
    items = fetch.parse_items(args[1:2])
    if uid and not any(i.name == "UID" for i in items):
        items.insert(0, fetch.FetchItem("UID"))
    targets = await _fetch_targets(client, args, client.resolve(args[0], uid), items,
                                   fetch_mods, uid)
    set_seen = not mbox.readonly and any(
        i.section is not None and not i.peek for i in items
    )
    changed: set[int] = set()
    if set_seen:
        unseen = [m.uid for _s, m in targets if "\\Seen" not in m.flags]
        if unseen:
            changed = set(await mbox.store(unseen, ["\\Seen"], "+"))
    small = len(targets) <= FETCH_SYNC and (
        fetch.header_only(items)
        or (all(m.size <= fetch.STREAM_OVER for _s, m in targets)
            and sum(m.size for _s, m in targets) <= FETCH_SYNC_BYTES))
    if small:
        missing = await _fetch_range(client, targets, items, changed)
        return _fetch_result(client, missing)
    state = {"missing": 0}
    await task.cooperate(_fetch_steps(client, targets, items, changed, state)).whenDone()
    return _fetch_result(client, state["missing"])


def _fetch_result(client: Client, missing: int) -> bytes:
    """RFC 9051 7.1 / RFC 2180 4.1.3: a FETCH that touched messages another
    session expunged still completes; OK [EXPUNGEISSUED] says some of
    their data could not be served (NIL bodies), as Dovecot answers."""
    if missing:
        return b"OK [EXPUNGEISSUED] Some messages were already expunged."
    return b"OK Fetch completed."


def _render_expunged(client: Client, seq: int, info: MessageInfo, items: list[fetch.FetchItem],
                     changed: set[int], recent: Any) -> list:
    """A message whose file is gone (expunged elsewhere, not yet reported):
    what the view knows (UID, FLAGS, sizes, dates, MODSEQ) and NIL for its
    contents; ENVELOPE and BODYSTRUCTURE of an empty message."""
    return fetch.render_pieces(
        seq, info, items, info.uid in recent, lambda: fetch.EXPUNGED_MESSAGE, client.stats,
        add_flags=info.uid in changed, expunged=True)


#: FETCH items the storage answers from its index (``IMailbox.fetch_data``).
DATA_ITEMS = {"ENVELOPE": "envelope", "BODYSTRUCTURE": "bodystructure", "BODY": "body",
              "PREVIEW": "preview"}


async def _prepare(client: Client, info: MessageInfo, items: list[fetch.FetchItem],
                   stream: bool = False, loaded: mime.ParsedMessage | None = None
                   ) -> tuple[mime.ParsedMessage | None, dict[str, Any]]:
    """What rendering ``info`` needs from the storage, awaited: ENVELOPE,
    BODYSTRUCTURE, BODY and PREVIEW from the storage's index
    (``fetch_data``), and the parsed message only for the items that need
    its text (header only where that is enough; None if none does)."""
    rest = [i for i in items if not fetch.streamable(i)] if stream else items
    msg = loaded if loaded is not None else client.cached_message(info)
    # A message the session has parsed already (a big one FETCH parsed in
    # slices and pinned) renders from that; the others ask the index.
    wanted = [] if msg is not None else sorted(
        {DATA_ITEMS[i.name] for i in rest if i.name in DATA_ITEMS})
    others = [i for i in rest if i.needs_message() and (i.name not in DATA_ITEMS or not wanted)]
    data: dict[str, Any] = {}
    if wanted:
        data = await client.selected().fetch_data(info.uid, wanted)
    if msg is None and others:
        msg = await (client.load_header(info) if fetch.header_only(others) else client.load(info))
    return msg, data


def _render(client: Client, seq: int, info: MessageInfo, items: list[fetch.FetchItem],
            changed: set[int], recent: Any, prepared: tuple[mime.ParsedMessage | None, dict[str, Any]],
            stream: bool = False) -> list:
    msg, data = prepared

    def message() -> mime.ParsedMessage:
        if msg is None:
            raise StorageError("Message was not loaded")
        return msg

    return fetch.render_pieces(
        seq, info, items, info.uid in recent, message, client.stats,
        add_flags=info.uid in changed, stream=stream, data=data,
    )


def _render_steps(client: Client, seq: int, info: MessageInfo, items: list[fetch.FetchItem],
                  changed: set[int], recent: Any, loaded: mime.ParsedMessage,
                  data: dict[str, Any], pieces: list) -> Generator[None, None, None]:
    """Render a big message's response an item per step (each of
    BODYSTRUCTURE, BODY[1], BINARY[1] … may take milliseconds)."""
    head = b"* %d FETCH (" % seq
    tail = b")\r\n"
    unique: list[fetch.FetchItem] = []
    for item in items:
        if item.name != "FLAGS" or all(i.name != "FLAGS" for i in unique):
            unique.append(item)
    add_flags = info.uid in changed and all(i.name != "FLAGS" for i in unique)
    for k, item in enumerate(unique):
        last = k == len(unique) - 1
        part = fetch.render_pieces(
            seq, info, [item], info.uid in recent, lambda: loaded, client.stats,
            add_flags=add_flags and last, stream=True, data=data)
        assert isinstance(part[0], bytes) and isinstance(part[-1], bytes)
        part[0] = part[0][len(head):] if k else part[0]
        if k:
            part[0] = b" " + part[0]
        if not last:
            part[-1] = part[-1][: -len(tail)]
        pieces.extend(p for p in part if not isinstance(p, bytes) or p)
        yield None


def _open(mbox: IMailbox, uid: int) -> Answer:
    """The storage's answer to ``message_file(uid)``, for a generator."""
    return Answer(mbox.message_file(uid))


def _load_steps(client: Client, info: MessageInfo,
                out: list[mime.ParsedMessage]) -> Generator[Any, None, None]:
    """:meth:`Client.load` for a large message, a chunk per cooperator step
    (normalizing 20 MB at once would hold the reactor for ~200 ms)."""
    mbox = client.selected()
    key = (mbox.name, mbox.uidvalidity, info.uid)
    cached = client.cache.get(key)
    if cached is None:
        parts: list[bytes] = []
        answer = _open(mbox, info.uid)
        if answer.pending:
            yield answer.wait
        with answer.get() as f:
            for chunk in fetch.normalized_chunks(f, 4 * fetch.STREAM_CHUNK):
                parts.append(chunk)
                yield None
        cached = mime.ParsedMessage(b"".join(parts))
        del parts
        client.cache.put(key, cached)
    out.append(cached)


async def _fetch_range(client: Client, targets, items: list[fetch.FetchItem],
                       changed: set[int]) -> int:
    recent = client.recent_view()
    missing = 0
    for seq, info in targets:
        try:
            prepared = await _prepare(client, info, items)
            pieces = _render(client, seq, info, items, changed, recent, prepared)
        except ext_fetch.UnknownCTE:
            raise
        except (OSError, StorageError):
            missing += 1
            pieces = _render_expunged(client, seq, info, items, changed, recent)
        for piece in pieces:
            client.send(piece)
    return missing


def _fetch_steps(client: Client, targets, items: list[fetch.FetchItem], changed: set[int],
                 state: dict[str, int]) -> Generator[Any, None, None]:
    """A large FETCH for the cooperator: one message (or one chunk of a
    streamed literal) per step, waiting while the client is not reading
    (and while the storage has not answered)."""
    recent = client.recent_view()
    for seq, info in targets:
        if client.closed:
            return
        if client.output_blocked:
            yield client.drained()
        big = info.size > fetch.STREAM_OVER
        loaded: list[mime.ParsedMessage] = []
        try:
            if big and fetch.needs_body(items):
                yield from _load_steps(client, info, loaded)
                answer = Answer(defer.Deferred.fromCoroutine(
                    _prepare(client, info, items, stream=True, loaded=loaded[0])))
                if answer.pending:
                    yield answer.wait
                _msg, data = answer.get()
                pieces: list = []
                yield from _render_steps(client, seq, info, items, changed, recent,
                                         loaded[0], data, pieces)
            else:
                answer = Answer(defer.Deferred.fromCoroutine(
                    _prepare(client, info, items, stream=big)))
                if answer.pending:
                    yield answer.wait
                pieces = _render(client, seq, info, items, changed, recent, answer.get(),
                                 stream=big)
        except (OSError, StorageError):
            state["missing"] += 1
            pieces = _render_expunged(client, seq, info, items, changed, recent)
        for piece in pieces:
            if isinstance(piece, fetch.StreamedLiteral):
                yield from _stream_literal(client, piece)
            elif len(piece) > client.OUTPUT_CHUNK:
                yield from client.send_paced(piece)
            else:
                client.send(piece)
        client.flush()
        yield None


def _stream_literal(client: Client, lit: fetch.StreamedLiteral) -> Generator[Any, None, None]:
    """Send ``label {n}\\r\\n`` and the literal, read from the message file
    a chunk per step (the file is read twice: size first, then data)."""
    mbox = client.selected()
    key = (mbox.name, mbox.uidvalidity, lit.uid)
    scan = client.scans.get(key)
    if scan is None:
        found: list[fetch.MessageScan] = []
        answer = _open(mbox, lit.uid)
        if answer.pending:
            yield answer.wait
        with answer.get() as f:
            yield from fetch.scan_message(f, found)
        scan = found[0]
        client.scans[key] = scan
        while len(client.scans) > 16:
            client.scans.pop(next(iter(client.scans)))
    start, end = scan.window(lit)
    answer = _open(mbox, lit.uid)
    if answer.pending:
        yield answer.wait
    f = answer.get()  # before the literal's head: a failure here is still clean
    marker = b"~{%d}\r\n" if lit.binary and scan.has_nul else b"{%d}\r\n"
    client.send(lit.label + b" " + marker % (end - start))
    client.stats.body_count += 1
    client.stats.body_bytes += end - start
    pos = 0
    sent = 0
    with f:
        for chunk in fetch.normalized_chunks(f):
            if client.closed:
                return
            lo, hi = max(start - pos, 0), min(end - pos, len(chunk))
            pos += len(chunk)
            if hi > lo:
                if client.output_blocked:
                    yield client.drained()
                piece = chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk
                # BODY[] can't carry NUL: Dovecot's 0x80 (BINARY[] keeps it)
                client.send(piece if lit.binary else fetch.without_nul(piece))
                client.flush()
                sent += hi - lo
            if pos >= end:
                break
            yield None
    if sent != end - start:  # the file changed under us: the literal is broken
        client.log.error("Message UID {uid} changed while it was sent", uid=lit.uid,
                       log_prefix=client.prefix)
        client.disconnect(b"Internal error occurred.", "Message changed while sent")


def _fetch_modifiers(client: Client, args: list[Token], uid: bool) -> FetchModifiers:
    """``(CHANGEDSINCE n [VANISHED])`` after FETCH's item list."""
    mods = FetchModifiers()
    if not args:
        return mods
    if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
        raise ParseError("Invalid FETCH modifiers")
    items = args[0]
    i = 0
    while i < len(items):
        tok = items[i]
        name = tok.upper_str() if isinstance(tok, Atom) else ""
        if name == "CHANGEDSINCE" and i + 1 < len(items) and mods.changedsince is None:
            mods.changedsince = parse_modseq(items[i + 1])
            i += 2
        elif name == "VANISHED" and not mods.vanished:
            if not uid or not client.qresync:
                raise ParseError("VANISHED needs UID FETCH and QRESYNC")
            mods.vanished = True
            i += 1
        else:
            raise ParseError("Unknown FETCH modifier")
    if mods.vanished and mods.changedsince is None:
        raise ParseError("VANISHED needs CHANGEDSINCE")
    return mods


def prepare_fetch(client: Client, args: list[Token], uid: bool,
                  then: Callable[[], object]) -> defer.Deferred | None:
    """Before FETCH renders: parse its big messages in slices (see
    :func:`pydovecot.imap.ext_fetch.prepare_fetch`), then run ``then``
    (FETCH again, which finds them parsed) and let them go.  None when
    there is nothing to prepare; bad arguments give None too (FETCH
    itself answers them)."""
    if client.mailbox is None or len(args) < 2 or client.preparing:
        return None
    try:
        items = fetch.parse_items(args[1:2])
        targets = client.resolve(args[0], uid)
    except Exception:
        return None
    d = _parse_big(client, targets, items)
    if d is None:
        return None
    keys: list[tuple] = []

    def run(got: list[tuple]) -> object:
        keys.extend(got)
        client.preparing = True
        try:  # FETCH again: it sees ``preparing`` before its first await
            return defer.ensureDeferred(then())  # type: ignore[arg-type]
        finally:
            client.preparing = False

    def unpin(result: object) -> object:
        for key in keys:
            client.cache.unpin(key)
        return result

    return d.addCallback(run).addBoth(unpin)


async def _fetch_targets(client: Client, args: list[Token], targets: list[tuple[int, MessageInfo]],
                         items: list[fetch.FetchItem], mods: FetchModifiers,
                         uid: bool) -> list[tuple[int, MessageInfo]]:
    """Apply CHANGEDSINCE/VANISHED and add MODSEQ where CONDSTORE wants it."""
    mbox = client.mailbox
    assert mbox is not None
    names = {i.name for i in items}
    if "MODSEQ" in names or mods.changedsince is not None:
        await client.announce_condstore()
    if client.condstore and "MODSEQ" not in names and (
        "FLAGS" in names or mods.changedsince is not None
        or (not mbox.readonly and any(i.section is not None and not i.peek for i in items))
    ):
        items.append(fetch.FetchItem("MODSEQ"))
    if mods.changedsince is None:
        return targets
    if mods.vanished:
        present = {m.uid for m in mbox.messages}
        requested = NumberSet(parse_sequence_set(args[0]),  # type: ignore[arg-type]
                              mbox.messages[-1].uid if mbox.messages else 0)
        gone = [u for u in await client.vanished_since(mbox, mods.changedsince, None, present)
                if u in requested]
        if gone:
            client.send(b"* VANISHED (EARLIER) %s\r\n" % compress(gone))
    return [(s, m) for s, m in targets if m.modseq > mods.changedsince]


# -- big MIME trees, parsed before FETCH renders them ------------------------------

#: Messages at least this big are parsed (and their BODYSTRUCTURE rendered)
#: in slices through the global Cooperator before a FETCH that needs their
#: structure renders them, so no reactor turn parses a huge tree at once.
PREPARE_OVER = 256 * 1024
#: Bytes of such messages one FETCH holds prepared at most; beyond it the
#: rest is parsed when rendered (bounded by the MIME part limits).
PREPARE_BYTES = 64 * 1024 * 1024


def _parse_big(session: Client, targets: list[tuple[int, MessageInfo]],
                  items: list[Any]) -> defer.Deferred | None:
    """A Deferred that fires once every big target message of this FETCH is
    parsed into the session's message cache (pinned until ``unpin``
    is called with the returned keys); None when nothing needs it."""
    if not fetch.needs_body(items):  # streamed literals need no parse
        return None
    mbox = session.mailbox
    cache = session.cache
    big: list[MessageInfo] = []
    total = 0
    for _seq, info in targets:
        if info.size < PREPARE_OVER:
            continue
        if cache.get((mbox.name, mbox.uidvalidity, info.uid)) is not None:
            continue
        if total + info.size > PREPARE_BYTES:
            break
        total += info.size
        big.append(info)
    if not big:
        return None
    keys: list[tuple] = []

    def work() -> Generator[Any, None, None]:
        for info in big:
            if session.closed or session.mailbox is not mbox:
                return
            parts: list[bytes] = []
            answer = _open(mbox, info.uid)
            if answer.pending:
                yield answer.wait
            try:
                with answer.get() as f:
                    # read and normalized a chunk per step (20 MB at once
                    # would hold the reactor for ~200 ms)
                    for chunk in fetch.normalized_chunks(f, 4 * fetch.STREAM_CHUNK):
                        parts.append(chunk)
                        yield None
            except (OSError, StorageError):
                continue  # FETCH reports it
            msg = mime.ParsedMessage(b"".join(parts))
            del parts
            yield from msg.prepare_steps()
            key = (mbox.name, mbox.uidvalidity, info.uid)
            cache.pin(key, msg)
            keys.append(key)

    return task.cooperate(work()).whenDone().addCallback(lambda _: keys)


add_command("FETCH", cmd_fetch, Flag.SELECTED | Flag.UID | Flag.USES_SEQS | Flag.NO_EXPUNGE)
features.provide(__name__, "BINARY", "SAVEDATE", "PREVIEW")
