"""The mail process's side of pydoveadm's mailbox verbs.

The master sends :class:`~pydovecot.admin.protocol.AdminRequest` for one
user; this module runs the verb on that user's storage (opened as for a
session, with this process's uid) and answers with a result document in
a memfd (see :mod:`pydovecot.admin.protocol`).  Verbs: ``mailbox
list/create/delete/rename/subscribe/unsubscribe/status``, ``mailbox
metadata get/set/unset/list``, ``fetch``, ``search``, ``expunge``,
``flags add/remove/replace``, ``copy``, ``move``, ``save``,
``force-resync``, ``index`` and ``kick`` (end named sessions).

Every storage and mailbox call goes through :func:`defer.maybeDeferred`,
so this works whether the storage answers at once or with Deferreds.
Loops over messages yield to the reactor every :data:`STEP` messages, so
the other users this process serves are not stalled.

Trusts: the master (user, userdb fields, the verb's arguments, which the
admin gave).  Mailbox names and query values are still validated by the
storage and the query parser; errors become doveadm's exit codes.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import Logger

from pydovecot.admin import query as Q
from pydovecot.admin.protocol import (
    EX_DATAERR,
    EX_NOTFOUND,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    HIDE_TITLE,
    RIGHT,
    AdminError,
    header,
    pack,
    result,
)
from pydovecot.imap import mime, mutf7
from pydovecot.imap.ext_fetch import make_preview
from pydovecot.imap.search import resolve
from pydovecot.log import sanitize
from pydovecot.storage.interfaces import (
    MailboxExists,
    MailboxNameError,
    MailboxNotFound,
    StorageError,
)

log = Logger()

#: Messages handled between two yields to the reactor.
STEP = 100
#: Seconds a result fd stays open here after it was sent (the master has
#: read it long before; Twisted sends an fd when it writes the answer).
CLOSE_AFTER = 60.0

Verb = Callable[[Any, dict, Any], Awaitable[dict]]
VERBS: dict[str, Verb] = {}


def verb(name: str):
    def register(func: Verb) -> Verb:
        VERBS[name] = func
        return func

    return register


async def call(obj: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``obj.method(...)``, synchronous or returning a Deferred."""
    return await defer.maybeDeferred(getattr(obj, method), *args, **kwargs)


async def pause() -> None:
    """Let the reactor serve the other sessions of this process."""
    await task.deferLater(reactor, 0, lambda: None)


def close_later(fd: int) -> None:
    def close():
        try:
            os.close(fd)
        except OSError:
            pass

    reactor.callLater(CLOSE_AFTER, close)


def handle(process: Any, verb: str, user: str, fields: str, args: str,
           input: int | None = None) -> defer.Deferred:  # noqa: A002
    """The AdminRequest responder: run ``verb``, answer ``{"output": fd}``.
    Storage errors become :class:`AdminError` with doveadm's exit code;
    anything else is logged once and answered as an internal error."""
    return defer.ensureDeferred(_handle(process, verb, user, fields, args, input))


async def _handle(process: Any, verb: str, user: str, fields: str, args: str,
                  input_fd: int | None) -> dict:
    prefix = f"mail({sanitize(user)})<{os.getpid()}>"
    try:
        func = VERBS.get(verb)
        if func is None:
            raise AdminError(EX_USAGE, f"Unknown command: {sanitize(verb)}")
        params = json.loads(args)
        if input_fd is not None:
            params["_input"] = input_fd
        if verb == "kick":
            out = await func(process, params, user)
        else:
            try:
                storage = process.storage_for(user, json.loads(fields))
            except (OSError, StorageError, ValueError) as e:
                raise AdminError(EX_TEMPFAIL, f"Couldn't open the mail storage: {e}") from None
            out = await func(storage, params, user)
    except AdminError:
        raise
    except MailboxNotFound as e:
        raise AdminError(EX_NOTFOUND, str(e)) from None
    except MailboxExists as e:
        raise AdminError(EX_DATAERR, str(e)) from None
    except (MailboxNameError, Q.QueryError) as e:
        raise AdminError(EX_USAGE, str(e)) from None
    except StorageError as e:
        raise AdminError(EX_TEMPFAIL, str(e)) from None
    except Exception:
        log.failure("admin {verb}: unexpected error", verb=sanitize(verb), log_prefix=prefix)
        raise AdminError(EX_SOFTWARE, "Internal error occurred. Refer to server log "
                                      "for more information.") from None
    finally:
        if input_fd is not None:
            try:
                os.close(input_fd)
            except OSError:
                pass
    answer = pack(out)
    if "output" in answer:
        close_later(answer["output"])
    return answer


# -- helpers ---------------------------------------------------------------


def _opts(params: dict) -> dict:
    return params.get("options") or {}


def _argv(params: dict) -> list[str]:
    return list(params.get("argv") or [])


async def _names(storage: Any, selectable: bool = True) -> list[str]:
    infos = await call(storage, "list_mailboxes")
    names = []
    for info in infos:
        attrs = {a.lower() for a in info.attributes}
        if selectable and ({"\\noselect", "\\nonexistent"} & attrs):
            continue
        names.append(info.name)
    return names


def mailbox_guid(storage: Any, name: str) -> str:
    """The mailbox GUID: ``""`` for now, as IMailStorage declares none
    (doveadm's ``guid``/``mailbox-guid`` columns stay empty)."""
    return ""


FLAG_ORDER = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def format_flags(flags: set[str], recent: bool, keywords: list[str] | None = None) -> str:
    """Flags as Dovecot writes them: system flags in its order, \\Recent,
    then keywords in the mailbox's keyword order (``IMailbox.keywords``)."""
    lower = {f.lower(): f for f in flags}
    out = [f for f in FLAG_ORDER if f.lower() in lower]
    if recent:
        out.append("\\Recent")
    rank = {k.lower(): i for i, k in enumerate(keywords or [])}
    out += sorted((f for f in flags if not f.startswith("\\")),
                  key=lambda f: (rank.get(f.lower(), len(rank)), f.lower()))
    return " ".join(out)


def _localtime(when: datetime.datetime | None) -> str:
    if when is None:
        return ""
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _unixtime(when: datetime.datetime | None) -> str:
    return "" if when is None else str(int(when.timestamp()))


def close_view(view: Any) -> None:
    """Close a mailbox view; a failure is logged (the verb's work is done)."""
    defer.maybeDeferred(view.close).addErrback(
        lambda f: log.failure("closing a mailbox view", f))


async def _open(storage: Any, name: str, readonly: bool):
    return await call(storage, "open", name, readonly=readonly)


async def read_message(view: Any, uid: int) -> bytes:
    """A message's bytes as stored."""
    f = await call(view, "message_file", uid)
    with f:
        return f.read()


async def matching(storage: Any, query: Q.Query, readonly: bool):
    """Yield ``(name, view, [(seq, info)])`` for every mailbox the query
    names, with its matching messages; each view is closed after use."""
    for name in await _names(storage):
        if not query.wants(name, mailbox_guid(storage, name) if query.guids else ""):
            continue
        view = await _open(storage, name, readonly)
        try:
            msgs = list(view.messages)
            if query.search is None:
                hits = list(enumerate(msgs, 1))
            else:
                # the storage evaluates the program (sliced, from its index)
                found = set(await call(view, "search", resolve(query.search.program, msgs)))
                hits = [(seq, info) for seq, info in enumerate(msgs, 1) if info.uid in found]
            yield name, view, hits
        finally:
            # no await here: a consumer that stops early closes this
            # generator with GeneratorExit, which must not yield
            close_view(view)


def _query(params: dict, first: int = 0) -> Q.Query:
    return Q.parse(_argv(params)[first:])


# -- mailbox verbs ---------------------------------------------------------


@verb("mailbox list")
async def mailbox_list(storage: Any, params: dict, user: str) -> dict:
    opts = _opts(params)
    patterns = _argv(params)
    if opts.get("s"):
        names = list(await call(storage, "subscriptions"))
    else:
        names = await _names(storage, selectable=False)
    if patterns:
        names = [n for n in names if Q.mailbox_patterns_match(patterns, n)]
    if opts.get("7"):
        names = [mutf7.encode(n).decode("ascii") for n in names]
    return result([header("mailbox", "mailbox", HIDE_TITLE)], [[n] for n in names])


@verb("mailbox create")
async def mailbox_create(storage: Any, params: dict, user: str) -> dict:
    names = _argv(params)
    if not names:
        raise AdminError(EX_USAGE, "mailbox create: Missing mailbox name")
    errors, code = [], 0
    for name in names:
        try:
            await call(storage, "create", name)
        except MailboxExists:
            errors.append(f"Can't create mailbox {name}: Mailbox already exists")
            code = EX_DATAERR
            continue
        if _opts(params).get("s"):
            await call(storage, "subscribe", name)
    return result(errors=errors, exit=code)


@verb("mailbox delete")
async def mailbox_delete(storage: Any, params: dict, user: str) -> dict:
    opts = _opts(params)
    names = _argv(params)
    if not names:
        raise AdminError(EX_USAGE, "mailbox delete: Missing mailbox name")
    errors, code = [], 0
    if opts.get("r"):
        existing = await _names(storage, selectable=False)
        expanded = []
        for name in names:
            children = [n for n in existing if n.startswith(name + "/")]
            expanded += sorted(children, key=lambda n: -n.count("/")) + [name]
        names = expanded
    for name in names:
        try:
            if opts.get("e"):
                status = await call(storage, "status", name)
                if status.messages:
                    errors.append(f"Can't delete mailbox {name}: Mailbox isn't empty")
                    code = EX_DATAERR
                    continue
            await call(storage, "delete", name)
        except MailboxNotFound:
            errors.append(f"Can't delete mailbox {name}: Mailbox doesn't exist: {name}")
            code = EX_NOTFOUND
            continue
        except StorageError as e:
            errors.append(f"Can't delete mailbox {name}: {e}")
            code = EX_TEMPFAIL
            continue
        if opts.get("s"):
            await call(storage, "unsubscribe", name)
    return result(errors=errors, exit=code)


@verb("mailbox rename")
async def mailbox_rename(storage: Any, params: dict, user: str) -> dict:
    argv = _argv(params)
    if len(argv) != 2:
        raise AdminError(EX_USAGE, "mailbox rename: Give old and new name")
    old, new = argv
    try:
        await call(storage, "rename", old, new)
    except MailboxNotFound:
        return result(errors=[f"Can't rename mailbox {old} to {new}: "
                              f"Mailbox doesn't exist: {old}"], exit=EX_NOTFOUND)
    except MailboxExists:
        return result(errors=[f"Can't rename mailbox {old} to {new}: "
                              "Target mailbox already exists"], exit=EX_DATAERR)
    if _opts(params).get("s"):
        await call(storage, "unsubscribe", old)
        await call(storage, "subscribe", new)
    return result()


@verb("mailbox subscribe")
async def mailbox_subscribe(storage: Any, params: dict, user: str) -> dict:
    for name in _argv(params):
        await call(storage, "subscribe", name)
    return result()


@verb("mailbox unsubscribe")
async def mailbox_unsubscribe(storage: Any, params: dict, user: str) -> dict:
    for name in _argv(params):
        await call(storage, "unsubscribe", name)
    return result()


STATUS_ALL = ("messages", "recent", "uidnext", "uidvalidity", "unseen", "highestmodseq",
              "vsize", "guid", "firstsaved")


@verb("mailbox status")
async def mailbox_status(storage: Any, params: dict, user: str) -> dict:
    argv = _argv(params)
    if len(argv) < 2:
        raise AdminError(EX_USAGE, "mailbox status: Missing status fields or mailbox")
    fields: list[str] = []
    for word in argv[0].split():
        if word == "all":
            fields += [f for f in STATUS_ALL if f not in fields]
        elif word in STATUS_ALL:
            fields.append(word)
        else:
            raise AdminError(EX_USAGE, f"Unknown status field: {word}")
    fields = [f for f in STATUS_ALL if f in fields]  # doveadm prints them in its order
    total = bool(_opts(params).get("t"))
    names = [n for n in await _names(storage) if Q.mailbox_patterns_match(argv[1:], n)]
    rows, sums = [], dict.fromkeys(fields, 0)
    for n, name in enumerate(names, 1):
        if n % STEP == 0:
            await pause()
        st = await call(storage, "status", name)
        values = {"messages": st.messages, "recent": st.recent, "uidnext": st.uidnext,
                  "uidvalidity": st.uidvalidity, "unseen": st.unseen,
                  "highestmodseq": st.highestmodseq, "vsize": st.size,
                  "guid": mailbox_guid(storage, name)}
        if "firstsaved" in fields:
            view = await _open(storage, name, True)
            try:
                saved = [m.savedate or m.internaldate for m in view.messages]
            finally:
                await call(view, "close")
            values["firstsaved"] = str(int(min(saved).timestamp())) if saved else "never"
        rows.append([name] + [str(values[f]) for f in fields])
        for f in fields:
            if f in ("messages", "recent", "unseen", "vsize"):
                sums[f] += int(values[f])
    if total:
        fields = [f for f in fields if f in ("messages", "recent", "unseen", "vsize")]
        return result([header(f) for f in fields], [[str(sums[f]) for f in fields]])
    return result([header("mailbox", "mailbox", HIDE_TITLE)] + [header(f) for f in fields], rows)


# -- METADATA ---------------------------------------------------------------


def _meta_target(params: dict, argv: list[str]) -> tuple[str, list[str]]:
    """(mailbox, rest): ``-s`` means the server (mailbox "")."""
    if _opts(params).get("s"):
        return "", argv
    if not argv:
        raise AdminError(EX_USAGE, "mailbox metadata: Missing mailbox name")
    return argv[0], argv[1:]


def _meta_key(key: str) -> str:
    if not (key.startswith("/private/") or key.startswith("/shared/")):
        raise AdminError(EX_USAGE, f"Invalid metadata key '{key}': "
                         "Must begin with /private or /shared")
    return key


@verb("mailbox metadata get")
async def metadata_get(storage: Any, params: dict, user: str) -> dict:
    mailbox, rest = _meta_target(params, _argv(params))
    if len(rest) != 1:
        raise AdminError(EX_USAGE, "mailbox metadata get: Give the key")
    value = await call(storage, "get_attribute", mailbox, _meta_key(rest[0]))
    # doveadm prints an empty value for a missing entry
    rows = [[(value or b"").decode("utf-8", "replace")]]
    return result([header("value", "value", HIDE_TITLE)], rows)


@verb("mailbox metadata set")
async def metadata_set(storage: Any, params: dict, user: str) -> dict:
    mailbox, rest = _meta_target(params, _argv(params))
    if len(rest) != 2:
        raise AdminError(EX_USAGE, "mailbox metadata set: Give the key and the value")
    await call(storage, "set_attributes", mailbox, {_meta_key(rest[0]): rest[1].encode()})
    return result()


@verb("mailbox metadata unset")
async def metadata_unset(storage: Any, params: dict, user: str) -> dict:
    mailbox, rest = _meta_target(params, _argv(params))
    if len(rest) != 1:
        raise AdminError(EX_USAGE, "mailbox metadata unset: Give the key")
    await call(storage, "set_attributes", mailbox, {_meta_key(rest[0]): None})
    return result()


@verb("mailbox metadata list")
async def metadata_list(storage: Any, params: dict, user: str) -> dict:
    mailbox, rest = _meta_target(params, _argv(params))
    prefix = rest[0] if rest else ""
    keys = await call(storage, "attribute_keys", mailbox, prefix)
    if not _opts(params).get("p"):
        # doveadm prints the keys without their /private/ or /shared/ scope
        keys = [k.split("/", 2)[2] if k.count("/") >= 2 else k for k in keys]
    return result([header("key", "key", HIDE_TITLE)], [[k] for k in keys])


# -- messages ----------------------------------------------------------------

FETCH_FIELDS = ("user", "mailbox", "mailbox-guid", "seq", "uid", "guid", "flags", "modseq",
                "hdr", "body", "text", "text.utf8", "size.physical", "size.virtual",
                "date.received", "date.sent", "date.saved", "date.received.unixtime",
                "date.sent.unixtime", "date.saved.unixtime", "imap.envelope",
                "imap.bodystructure", "imap.body", "pop3.uidl", "body.snippet")
STREAMED = {"hdr", "body", "text", "text.utf8"}
CONTENT = {"hdr", "body", "text", "text.utf8", "size.physical", "date.sent", "body.snippet",
           "date.sent.unixtime", "imap.envelope", "imap.bodystructure", "imap.body"}
#: The most a fetch result may hold (a bound on this process's memory).
MAX_FETCH_RESULT = 128 << 20


def _fetch_fields(spec: str) -> list[str]:
    fields = spec.split()
    for f in fields:
        if f not in FETCH_FIELDS and not f.startswith("hdr."):
            raise AdminError(EX_USAGE, f"Unknown fetch field: {f}")
    if not fields:
        raise AdminError(EX_USAGE, "fetch: Missing fields")
    return fields


def _sent_date(msg: mime.ParsedMessage) -> datetime.datetime | None:
    raw = mime.header_value(msg.root.fields, "Date")
    if raw is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(raw.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None


def _fetch_value(field: str, ctx: dict) -> str:
    info, name, view = ctx["info"], ctx["mailbox"], ctx["view"]
    if field == "user":
        return ctx["user"]
    if field == "mailbox":
        return name
    if field == "mailbox-guid":
        return ctx["guid"]
    if field == "seq":
        return str(ctx["seq"])
    if field == "uid":
        return str(info.uid)
    if field in ("guid", "pop3.uidl"):
        return ""
    if field == "flags":
        return format_flags(info.flags, info.uid in view.recent, list(view.keywords))
    if field == "modseq":
        return str(info.modseq)
    if field == "size.virtual":
        return str(info.size)
    if field == "date.received":
        return _localtime(info.internaldate)
    if field == "date.received.unixtime":
        return _unixtime(info.internaldate)
    if field == "date.saved":
        return _localtime(info.savedate or info.internaldate)
    if field == "date.saved.unixtime":
        return _unixtime(info.savedate or info.internaldate)
    raw: bytes = ctx["raw"]()
    if field == "size.physical":
        return str(len(raw))
    msg = ctx["parsed"]()
    root = msg.root
    stored_head_end = _header_end(raw)
    if field == "hdr":
        return raw[:stored_head_end].decode("utf-8", "replace")
    if field == "body":
        return raw[stored_head_end:].decode("utf-8", "replace")
    if field in ("text", "text.utf8"):
        return raw.decode("utf-8", "replace")
    if field.startswith("hdr."):
        # Dovecot: every occurrence, one a line, folding kept (decoded and
        # unfolded for .utf8)
        wanted = field[4:].removesuffix(".utf8").lower().encode("latin-1", "replace")
        values = [mime.decode_header_value(f.value) if field.endswith(".utf8")
                  else _raw_value(f.raw)
                  for f in root.fields if f.name.lower() == wanted]
        return "\n".join(values)
    if field == "body.snippet":
        return make_preview(msg)
    if field in ("date.sent", "date.sent.unixtime"):
        when = _sent_date(msg) or datetime.datetime.fromtimestamp(0, datetime.UTC)
        if field.endswith("unixtime"):
            return _unixtime(when)
        # Dovecot: the moment in local time, then the sender's offset
        offset = when.strftime("%z") or "+0000"
        return f"{_localtime(when)} ({offset})"
    # Dovecot prints these without the outer parentheses
    if field == "imap.envelope":
        return _unparen(mime.envelope(root)).decode("utf-8", "replace")
    if field == "imap.bodystructure":
        return _unparen(mime.bodystructure(root, True)).decode("utf-8", "replace")
    if field == "imap.body":
        return _unparen(mime.bodystructure(root, False)).decode("utf-8", "replace")
    raise AdminError(EX_USAGE, f"Unknown fetch field: {field}")


def _raw_value(raw: bytes) -> str:
    """A field's value as stored: after the colon and its blank, line
    ends as LF, folding kept."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    value = value.lstrip(b" \t").rstrip(b"\r\n").replace(b"\r\n", b"\n")
    return value.decode("utf-8", "replace")


def _unparen(value: bytes) -> bytes:
    return value[1:-1] if value.startswith(b"(") and value.endswith(b")") else value


def _header_end(raw: bytes) -> int:
    """Where the body starts in the stored bytes (after the blank line)."""
    found = [(pos + len(sep)) for sep in (b"\r\n\r\n", b"\n\n")
             if (pos := raw.find(sep)) >= 0]
    return min(found) if found else len(raw)


@verb("fetch")
async def fetch(storage: Any, params: dict, user: str) -> dict:
    argv = _argv(params)
    if len(argv) < 2:
        raise AdminError(EX_USAGE, "fetch: Missing fields or search query")
    fields = _fetch_fields(argv[0])
    query = Q.parse(argv[1:])
    rows: list[list[str]] = []
    total = 0
    content = any(f in CONTENT or f.startswith("hdr.") for f in fields)
    async for name, view, hits in matching(storage, query, readonly=True):
        guid = mailbox_guid(storage, name)
        for n, (seq, info) in enumerate(hits, 1):
            cache: dict[str, Any] = {}
            if content:
                try:
                    cache["raw"] = await read_message(view, info.uid)
                except (OSError, StorageError):
                    continue  # expunged meanwhile

            def raw(cache=cache) -> bytes:
                return cache["raw"]

            def parsed(cache=cache, raw=raw) -> mime.ParsedMessage:
                if "parsed" not in cache:
                    cache["parsed"] = mime.ParsedMessage(mime.normalize_crlf(raw()))
                return cache["parsed"]

            ctx = {"info": info, "mailbox": name, "view": view, "guid": guid, "seq": seq,
                   "user": user, "raw": raw, "parsed": parsed}
            try:
                row = [_fetch_value(f, ctx) for f in fields]
            except (OSError, StorageError):
                continue  # expunged meanwhile
            total += sum(len(v) for v in row)
            if total > MAX_FETCH_RESULT:
                raise AdminError(EX_TEMPFAIL, "fetch: result too large; narrow the query")
            rows.append(row)
            if n % STEP == 0:
                await pause()
    headers = []
    for f in fields:
        h = header(f)
        if f in STREAMED:
            h["stream"] = True
        headers.append(h)
    return result(headers, rows)


@verb("search")
async def search(storage: Any, params: dict, user: str) -> dict:
    query = _query(params)
    rows = []
    async for name, _view, hits in matching(storage, query, readonly=True):
        guid = mailbox_guid(storage, name)
        rows += [[guid, str(info.uid)] for _seq, info in hits]
    return result([header("mailbox-guid", "mailbox-guid", HIDE_TITLE),
                   header("uid", "uid", HIDE_TITLE)], rows)


async def _store(view: Any, uids: list[int], flags: list[str], mode: str) -> None:
    for start in range(0, len(uids), STEP):
        await call(view, "store", uids[start:start + STEP], flags, mode)
        if len(uids) > STEP:
            await pause()


@verb("expunge")
async def expunge(storage: Any, params: dict, user: str) -> dict:
    query = _query(params)
    if not query.mailboxes and not query.guids:
        raise AdminError(EX_USAGE, "To avoid accidents, search query must contain MAILBOX "
                                   "in all search branches")
    emptied = []
    async for name, view, hits in matching(storage, query, readonly=False):
        uids = [info.uid for _seq, info in hits]
        if uids:
            await _store(view, uids, ["\\Deleted"], "+")
            await call(view, "expunge", uids)
        if _opts(params).get("d") and not view.messages:
            emptied.append(name)
    for name in emptied:
        if name.upper() != "INBOX":
            await call(storage, "delete", name)
    return result()


async def _flags(storage: Any, params: dict, mode: str) -> dict:
    argv = _argv(params)
    if len(argv) < 2:
        raise AdminError(EX_USAGE, "flags: Missing flags or search query")
    flags = argv[0].split()
    if any(f.lower() == "\\recent" for f in flags):
        raise AdminError(EX_USAGE, "\\Recent flag can't be changed")
    query = Q.parse(argv[1:])
    async for _name, view, hits in matching(storage, query, readonly=False):
        uids = [info.uid for _seq, info in hits]
        if uids:
            await _store(view, uids, flags, mode)
    return result()


@verb("flags add")
async def flags_add(storage: Any, params: dict, user: str) -> dict:
    return await _flags(storage, params, "+")


@verb("flags remove")
async def flags_remove(storage: Any, params: dict, user: str) -> dict:
    return await _flags(storage, params, "-")


@verb("flags replace")
async def flags_replace(storage: Any, params: dict, user: str) -> dict:
    return await _flags(storage, params, "=")


async def _copy(storage: Any, params: dict, move: bool) -> dict:
    argv = _argv(params)
    if len(argv) < 2:
        raise AdminError(EX_USAGE, f"{'move' if move else 'copy'}: Missing destination "
                                   "or search query")
    dest = argv[0]
    if argv[1:2] and argv[1].lower() == "user":
        raise AdminError(EX_USAGE, "copy/move from another user is not supported")
    status = await call(storage, "status", dest)  # MailboxNotFound → 68
    del status
    query = Q.parse(argv[1:])
    async for name, view, hits in matching(storage, query, readonly=not move):
        if name == dest:
            continue
        uids = [info.uid for _seq, info in hits]
        for start in range(0, len(uids), STEP):
            chunk = uids[start:start + STEP]
            await call(storage, "copy", view, chunk, dest)
            if move:
                await call(view, "store", chunk, ["\\Deleted"], "+")
                await call(view, "expunge", chunk)
            if len(uids) > STEP:
                await pause()
    return result()


@verb("copy")
async def copy(storage: Any, params: dict, user: str) -> dict:
    return await _copy(storage, params, move=False)


@verb("move")
async def move(storage: Any, params: dict, user: str) -> dict:
    return await _copy(storage, params, move=True)


@verb("save")
async def save(storage: Any, params: dict, user: str) -> dict:
    fd = params.get("_input")
    if fd is None:
        raise AdminError(EX_USAGE, "save: no message given")
    mailbox = _opts(params).get("m") or "INBOX"
    with os.fdopen(os.dup(fd), "rb") as message:
        message.seek(0)
        await call(storage, "append", mailbox, message)
    return result()


@verb("force-resync")
async def force_resync(storage: Any, params: dict, user: str) -> dict:
    patterns = _argv(params)
    if not patterns:
        raise AdminError(EX_USAGE, "force-resync: Missing mailbox mask")
    for name in await _names(storage):
        if Q.mailbox_patterns_match(patterns, name):
            view = await _open(storage, name, True)
            try:
                await call(view, "sync", True)
            finally:
                await call(view, "close")
    return result()


@verb("index")
async def index(storage: Any, params: dict, user: str) -> dict:
    """Bring each mailbox's index up to date: a view's open and sync
    rescan the Maildir and record every message (what doveadm index does
    for the message list; no full-text index here)."""
    patterns = _argv(params)
    if not patterns:
        raise AdminError(EX_USAGE, "index: Missing mailbox mask")
    for name in await _names(storage):
        if Q.mailbox_patterns_match(patterns, name):
            view = await _open(storage, name, True)
            try:
                await call(view, "sync", True)
            finally:
                await call(view, "close")
            await pause()
    return result()


# -- sessions ------------------------------------------------------------------


@verb("kick")
async def kick(process: Any, params: dict, user: str) -> dict:
    """End this user's sessions whose ids the master named (all of the
    user's sessions here for an empty list), as Dovecot's SIGTERM does:
    ``* BYE Server shutting down.``"""
    wanted = set(params.get("sessions") or [])
    kicked = []
    for proto in list(process.sessions):
        ctx = getattr(proto, "ctx", None)
        if ctx is None or ctx.user != user or (wanted and ctx.session_id not in wanted):
            continue
        kicked.append(ctx.session_id)
        disconnect = getattr(proto, "disconnect", None)  # IMAP: BYE, logged
        transport = getattr(proto, "transport", None)
        if disconnect is not None:
            disconnect(b"Server shutting down.", "Server shutting down.")
        elif transport is not None:
            transport.loseConnection()
        if transport is not None and hasattr(transport, "abortConnection"):
            # a client that does not read would keep the connection open
            reactor.callLater(KICK_GRACE, _abort_if_open, transport)
    return result(rows=[[s] for s in kicked], headers=[header("session")])


#: Seconds a kicked connection may take to close before it is aborted.
KICK_GRACE = 5.0


def _abort_if_open(transport: Any) -> None:
    if getattr(transport, "connected", False) and not getattr(transport, "disconnected", True):
        transport.abortConnection()


# -- quota (doveadm quota get / recalc) -----------------------------------


def _quota_rows(roots: list[tuple[str, list]]) -> dict:
    """doveadm's table: root, type, value (STORAGE in KiB, rounded up as
    Dovecot does), limit (``-`` when unlimited), percent."""
    rows = []
    for root, resources in roots:
        for r in resources:
            kib = r.name == "STORAGE"
            value = (r.usage + 1023) // 1024 if kib else r.usage
            limit = r.limit // 1024 if kib else r.limit
            percent = value * 100 // limit if limit else 0
            rows.append([root, r.name, str(value), str(limit) if limit else "-", str(percent)])
    return result([header("root", "Quota name"), header("type", "Type"),
                   header("value", "Value", RIGHT), header("limit", "Limit", RIGHT),
                   header("percent", "%", RIGHT)], rows)


@verb("quota get")
async def quota_get(storage: Any, params: dict, user: str) -> dict:
    roots = await call(storage, "quota_roots", "INBOX")
    return _quota_rows([(root, await call(storage, "get_quota", root)) for root in roots])


@verb("quota recalc")
async def quota_recalc(storage: Any, params: dict, user: str) -> dict:
    await call(storage, "recalc_quota")
    return result()
