"""Wire pieces of the storage RPC: values, errors, bodies.

* :class:`Value` is an AMP argument for structured values (search
  programs, flag lists, MailboxStatus, fetch_data dicts …): a tagged JSON
  encoding that keeps bytes, tuples, sets, datetimes and the interface's
  dataclasses, split over several box keys (``name``, ``name.1`` …) so that
  no single AMP value exceeds :data:`CHUNK` bytes however big the value.
* :data:`ERRORS` maps every :class:`StorageError` subclass to a declared
  AMP error code; the description carries the message, the IMAP response
  code (kept even when set on the instance, ``EXPUNGEISSUED``) and the
  constructor argument a subclass needs (``AttributeTooLarge.max_size``).
  :func:`install_errors` gives a command the decoders that rebuild them.

Trusts nothing it decodes: a tag it does not know is an error, the
dataclasses it rebuilds are a fixed list, and the decoded size is bounded
by what the box carried.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import json
from typing import Any

from twisted.protocols import amp

from pydovecot.storage import UnsupportedLocation
from pydovecot.storage.interfaces import (
    AttributeTooLarge,
    MailboxExists,
    MailboxInfo,
    MailboxNameError,
    MailboxNotFound,
    MailboxStatus,
    MailTooLarge,
    MessageInfo,
    OverQuota,
    QuotaResource,
    StorageError,
    SyncResult,
    TooManyAttributes,
)
from pydovecot.storage.search import SearchProgram

#: The most bytes one AMP value carries here (AMP's own cap is 65,535).
CHUNK = 60000

_CLASSES = {cls.__name__: cls for cls in (MailboxInfo, MailboxStatus, MessageInfo, SyncResult,
                                           QuotaResource)}


class AccessDenied(StorageError):
    """The owner's process refused the access (NO [NOPERM])."""

    code = "NOPERM"


class StorageUnavailable(StorageError):
    """The storage process cannot be reached (NO [UNAVAILABLE])."""

    code = "UNAVAILABLE"


def _enc(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, bytes | bytearray):
        return {"$b": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, tuple):
        return {"$t": [_enc(x) for x in v]}
    if isinstance(v, set | frozenset):
        return {"$s": [_enc(x) for x in sorted(v, key=repr)]}
    if isinstance(v, datetime.datetime):
        return {"$d": v.isoformat()}
    if isinstance(v, SearchProgram):
        return {"$p": _enc(v.to_json())}
    if dataclasses.is_dataclass(v):
        for cname, cls in _CLASSES.items():
            if isinstance(v, cls):
                return {"$c": cname, "f": {f.name: _enc(getattr(v, f.name))
                                           for f in dataclasses.fields(cls)}}
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: _enc(x) for k, x in v.items()}
        return {"$m": [[_enc(k), _enc(x)] for k, x in v.items()]}
    raise TypeError(f"cannot send a {type(v).__name__} over the storage RPC")


def _dec(v: Any) -> Any:
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "$b" in v:
        return base64.b64decode(v["$b"])
    if "$t" in v:
        return tuple(_dec(x) for x in v["$t"])
    if "$s" in v:
        return {_dec(x) for x in v["$s"]}
    if "$d" in v:
        return datetime.datetime.fromisoformat(v["$d"])
    if "$c" in v:
        return _CLASSES[v["$c"]](**{k: _dec(x) for k, x in v["f"].items()})
    if "$p" in v:
        return SearchProgram.from_json(_dec(v["$p"]))
    if "$m" in v:
        return {_dec(k): _dec(x) for k, x in v["$m"]}
    if any(k.startswith("$") for k in v):
        raise ValueError("unknown tag in a storage RPC value")
    return {k: _dec(x) for k, x in v.items()}


def encode(value: Any) -> bytes:
    return json.dumps(_enc(value), separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> Any:
    return _dec(json.loads(data.decode("utf-8")))


class Value(amp.Argument):
    """A structured value, split over ``name``, ``name.1`` … (each at most
    :data:`CHUNK` bytes)."""

    def toBox(self, name, strings, objects, proto):
        key = amp._wireNameToPythonIdentifier(name)
        if self.optional and objects.get(key) is None:
            objects.pop(key, None)
            return
        data = encode(objects.pop(key))
        strings[name] = data[:CHUNK]
        for i, start in enumerate(range(CHUNK, len(data), CHUNK), 1):
            strings[b"%s.%d" % (name, i)] = data[start:start + CHUNK]

    def fromBox(self, name, strings, objects, proto):
        key = amp._wireNameToPythonIdentifier(name)
        first = strings.get(name)
        if first is None:
            if not self.optional:
                raise KeyError(name)
            objects[key] = None
            return
        parts, i = [first], 1
        while (more := strings.get(b"%s.%d" % (name, i))) is not None:
            parts.append(more)
            i += 1
        objects[key] = decode(b"".join(parts))


# -- errors -----------------------------------------------------------------

#: StorageError subclasses → declared AMP error codes (subclasses before
#: their bases: AMP picks the first class that matches).
ERRORS: dict[type[Exception], bytes] = {
    OverQuota: b"OVERQUOTA",
    MailTooLarge: b"LIMIT",
    MailboxNotFound: b"NONEXISTENT",
    MailboxExists: b"ALREADYEXISTS",
    MailboxNameError: b"CANNOT",
    AttributeTooLarge: b"METADATA-MAXSIZE",
    TooManyAttributes: b"METADATA-TOOMANY",
    UnsupportedLocation: b"UNSUPPORTED-LOCATION",
    AccessDenied: b"NOPERM",
    StorageUnavailable: b"UNAVAILABLE",
    StorageError: b"STORAGE",
}


def wire_failure(exc: StorageError) -> StorageError:
    """A copy of ``exc`` whose ``str()`` is the wire description (message,
    code, constructor argument), for AMP to send."""
    out = copy.copy(exc)
    extra = getattr(exc, "max_size", None)
    if isinstance(exc, OverQuota):
        extra = exc.tempfail
    msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    out.args = (json.dumps({"m": msg, "c": exc.code, "x": extra}),)
    return out


def _decoder(cls: type[StorageError]):
    def build(description: Any) -> StorageError:
        if isinstance(description, bytes):
            description = description.decode("utf-8", "replace")
        try:
            d = json.loads(description)
            msg, code, extra = str(d["m"]), str(d["c"]), d.get("x")
        except (ValueError, KeyError, TypeError):
            msg, code, extra = str(description), cls.code, None
        if cls is AttributeTooLarge:
            exc: StorageError = AttributeTooLarge(int(extra or 0))
        else:
            exc = cls(msg)
            if isinstance(exc, OverQuota):
                exc.tempfail = bool(extra)
        if exc.code != code:
            exc.code = code
        return exc

    return build


def install_errors(command: type[amp.Command]) -> type[amp.Command]:
    """Give ``command`` the decoders that rebuild the storage errors."""
    for cls, code in ERRORS.items():
        command.reverseErrors[code] = _decoder(cls)  # type: ignore[index]
    return command


__all__ = ["Value", "ERRORS", "CHUNK", "AccessDenied", "StorageUnavailable", "encode", "decode",
           "wire_failure", "install_errors"]
