"""IMAP4rev2 (RFC 9051) session behaviour: ENABLE, UTF-8 names, APPEND.

:class:`Rev2Mixin` is a base of :class:`~pydovecot.imap.session.IMAPSession`:

* ``ENABLE`` (RFC 5161) switches on ``IMAP4rev2`` (no ``RECENT`` responses
  or ``\\Recent`` flags, SEARCH answered as ESEARCH by ``ext_search``,
  mailbox names in UTF-8) and ``UTF8=ACCEPT`` (RFC 6855: UTF-8 names and
  quoted strings).  The session's ``cmd_enable`` joins what
  :meth:`Rev2Mixin._enable_rev2` and the other mixins' hooks (``ext_sync``:
  CONDSTORE, QRESYNC) enabled into one ``* ENABLED`` line; a name is
  reported only when that call enabled it.
* Mailbox names: :meth:`decode_mailbox` / :meth:`encode_mailbox` speak
  modified UTF-7 to IMAP4rev1 clients and UTF-8 after ENABLE, and refuse
  malformed names with ``NO [CANNOT]`` and the reason.
* ``APPEND`` with MULTIAPPEND (RFC 3502, all or nothing), CATENATE
  (RFC 4469; ``URL`` parts go to ``pydovecot.imap.urlauth.resolve_url`` when
  that module exists, else ``NO [BADURL]``), BINARY literal8 (RFC 3516) and
  the ``UTF8 (~{n})`` data item (RFC 6855).

Trusts the session's storage and settings; every token is client data.
"""

from __future__ import annotations

import datetime
import re
import tempfile
from typing import Any, BinaryIO

from twisted.logger import Logger
from twisted.python.failure import Failure

from pydovecot.imap import mime, mutf7
from pydovecot.imap.parser import (
    Atom,
    Literal,
    LiteralString,
    String,
    Token,
    as_bytes,
    as_file,
    compress,
)
from pydovecot.imap.specialuse import SpecialUse, from_namespaces
from pydovecot.storage.interfaces import MailboxNotFound, StorageError

log = Logger(namespace="pydovecot.imap")

_ATOM_SAFE = re.compile(rb"^[!#$&'*+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$")
#: What ENABLE can switch on without a hook.
_BUILTIN = {"IMAP4REV2": "IMAP4rev2", "UTF8=ACCEPT": "UTF8=ACCEPT"}
CATENATE_SPOOL = 1024 * 1024


def _core() -> Any:
    """The session module (imported late: it imports this one)."""
    from pydovecot.imap import session

    return session


def _error(response: bytes) -> Exception:
    return _core().CommandError(response)


def is_yes(value: object) -> bool:
    return str(value or "").strip().lower() in ("yes", "y", "true", "1")


def quote_utf8(value: bytes) -> bytes:
    """An astring allowing UTF-8 in quoted strings (RFC 6855)."""
    if _ATOM_SAFE.match(value) and value.upper() != b"NIL":
        return value
    if len(value) > 1024 or any(c in value for c in (0, 10, 13)):
        return b"{%d}\r\n" % len(value) + value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def check_name(name: str) -> str:
    """Protocol-level name checks (the storage checks the rest)."""
    for ch in name:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            raise _error(b"NO [CANNOT] Invalid mailbox name: contains control characters")
        if 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            raise _error(b"NO [CANNOT] Invalid mailbox name: contains invalid characters")
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX/"):
        return "INBOX" + name[5:]
    return name


class _Message:
    """One message of an APPEND: flags, date and where its bytes come from."""

    def __init__(self, flags: list[str], when: datetime.datetime | None):
        self.flags = flags
        self.when = when
        self.data: Token | None = None
        self.parts: list[tuple[str, Token]] = []  # CATENATE: ("TEXT", tok) / ("URL", tok)


class Rev2Mixin:
    """IMAP4rev2 / UTF8=ACCEPT / ENABLE / APPEND for IMAPSession."""

    storage: Any
    ctx: Any
    reader: Any
    mailbox: Any
    capabilities: bytes
    append_limit: int

    rev2 = False  # ENABLE IMAP4rev2
    imap4rev2 = False  # the same, under the name ext_search looks for
    utf8 = False  # ENABLE UTF8=ACCEPT (implied by IMAP4rev2)
    special_use: SpecialUse | None = None

    def init_extensions(self) -> None:
        """Called at the end of IMAPSession.__init__."""
        settings = self.ctx.settings or {}
        self.reader.literal_minus = is_yes(settings.get("imap_literal_minus"))
        namespaces = getattr(self.ctx, "namespaces", None) or settings.get("namespaces")
        self.special_use = SpecialUse(from_namespaces(namespaces), getattr(self.storage, "root", None))
        try:
            self.special_use.autocreate(self.storage)
        except Exception:
            from pydovecot.imap.session import _error_line

            log.error("Autocreating mailboxes failed: {e}", e=_error_line(Failure()),
                      log_prefix=getattr(self, "prefix", ""))

    # -- names -----------------------------------------------------------

    def decode_mailbox(self, tok: Token) -> str:
        """A mailbox argument → its name; NO [CANNOT] if malformed."""
        if isinstance(tok, list):
            raise _error(b"BAD Invalid mailbox name")
        raw = as_bytes(tok)
        if self.utf8:
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _error(b"NO [CANNOT] Invalid mailbox name: not valid UTF-8") from None
        else:
            try:
                name = mutf7.decode(raw)
            except ValueError:
                raise _error(b"NO [CANNOT] Invalid mailbox name: not modified UTF-7") from None
        return check_name(name)

    def encode_mailbox(self, name: str) -> bytes:
        if self.utf8:
            return quote_utf8(name.encode("utf-8"))
        return _core().astring(mutf7.encode(name))

    def decode_pattern(self, raw: bytes) -> str:
        """A LIST reference or pattern; ValueError if it cannot match anything."""
        if self.utf8:
            return raw.decode("utf-8")
        return mutf7.decode(raw)

    def recent_view(self) -> set[int]:
        """The selected mailbox's \\Recent UIDs as this client may see them."""
        if self.rev2 or self.mailbox is None:
            return set()
        return self.mailbox.recent

    # -- ENABLE ------------------------------------------------------------

    def _enable_rev2(self, args: list[Token]) -> bytes:
        """ENABLE IMAP4rev2 / UTF8=ACCEPT: `` IMAP4rev2 UTF8=ACCEPT`` for what
        this call newly enabled (the session's ``* ENABLED`` line)."""
        offered = {c.upper() for c in self.capabilities.decode("latin-1").split()}
        out = b""
        for arg in args:
            name = arg.upper_str() if isinstance(arg, Atom) else ""
            if name not in offered:
                continue
            if name == "IMAP4REV2" and not self.rev2:
                self.rev2 = self.imap4rev2 = self.utf8 = True
                out += b" IMAP4rev2"
            elif name == "UTF8=ACCEPT" and not self.utf8:
                self.utf8 = True
                out += b" UTF8=ACCEPT"
        return out

    # -- APPEND ----------------------------------------------------------------

    def append_command(self, tag: bytes, args: list[Token]) -> bytes:
        if len(args) < 2:
            raise _error(b"BAD Missing arguments")
        name = self.decode_mailbox(args[0])
        messages = self._parse_append(args[1:])
        try:
            self.storage.status(name)
        except MailboxNotFound:
            raise _error(b"NO [TRYCREATE] Mailbox doesn't exist: " + self.encode_mailbox(name)) from None
        files: list[BinaryIO] = []
        try:
            for msg in messages:
                files.append(self._message_file(msg))
            uids: list[int] = []
            validity = 0
            try:
                for msg, f in zip(messages, files, strict=True):
                    validity, uid = self.storage.append(name, f, msg.flags, msg.when)
                    uids.append(uid)
            except BaseException:
                self._undo_append(name, uids)
                raise
        finally:
            for f in files:
                f.close()
        return b"OK [APPENDUID %d %s] Append completed." % (validity, compress(uids))

    def _parse_append(self, rest: list[Token]) -> list[_Message]:
        core = _core()
        out: list[_Message] = []
        i = 0
        while i < len(rest):
            flags: list[str] = []
            when = None
            if isinstance(rest[i], list):
                flags = core.parse_flags(rest[i])
                i += 1
            if (i + 1 < len(rest) and isinstance(rest[i], String)
                    and not isinstance(rest[i], LiteralString)):
                when = core.parse_datetime(bytes(rest[i]))  # type: ignore[arg-type]
                i += 1
            if i >= len(rest):
                raise _error(b"BAD Missing message")
            msg = _Message(flags, when)
            tok = rest[i]
            if isinstance(tok, Atom) and tok.upper() in (b"CATENATE", b"UTF8"):
                if i + 1 >= len(rest) or not isinstance(rest[i + 1], list) or not rest[i + 1]:
                    raise _error(b"BAD Invalid %s arguments" % tok.upper())
                inner = rest[i + 1]
                if tok.upper() == b"UTF8":
                    if not self.utf8:
                        raise _error(b"BAD UTF8 APPEND needs ENABLE UTF8=ACCEPT")
                    if len(inner) != 1 or not isinstance(inner[0], String | Literal):
                        raise _error(b"BAD Invalid UTF8 arguments")
                    msg.data = inner[0]
                else:
                    msg.parts = self._parse_catenate(inner)
                i += 2
            elif isinstance(tok, String | Literal) and not isinstance(tok, Atom):
                msg.data = tok
                i += 1
            else:
                raise _error(b"BAD Invalid arguments")
            out.append(msg)
        if not out:
            raise _error(b"BAD Missing message")
        return out

    @staticmethod
    def _parse_catenate(tokens: list[Token]) -> list[tuple[str, Token]]:
        parts: list[tuple[str, Token]] = []
        if len(tokens) % 2:
            raise _error(b"BAD Invalid CATENATE arguments")
        for kind, value in zip(tokens[::2], tokens[1::2], strict=True):
            if not isinstance(kind, Atom) or kind.upper() not in (b"TEXT", b"URL"):
                raise _error(b"BAD Invalid CATENATE part")
            if isinstance(value, list) or (kind.upper() == b"URL" and isinstance(value, Literal)):
                raise _error(b"BAD Invalid CATENATE part")
            parts.append((kind.upper().decode(), value))
        return parts

    def _message_file(self, msg: _Message) -> BinaryIO:
        """The message's bytes as a file; NO for empty, too big, bad URL."""
        if msg.data is not None:
            size = msg.data.size if isinstance(msg.data, Literal) else len(msg.data)  # type: ignore[arg-type]
            self._check_size(size)
            return as_file(msg.data)
        out: BinaryIO = tempfile.SpooledTemporaryFile(max_size=CATENATE_SPOOL)  # type: ignore[assignment]
        try:
            total = 0
            for kind, value in msg.parts:
                data = self._resolve_url(as_bytes(value)) if kind == "URL" else None
                if data is None:
                    src = as_file(value)
                    while chunk := src.read(65536):
                        total += len(chunk)
                        if total > self.append_limit:
                            raise _error(b"NO [TOOBIG] Mail is larger than the APPENDLIMIT.")
                        out.write(chunk)
                else:
                    total += len(data)
                    if total > self.append_limit:
                        raise _error(b"NO [TOOBIG] Mail is larger than the APPENDLIMIT.")
                    out.write(data)
            self._check_size(total)
            out.seek(0)
            return out
        except BaseException:
            out.close()
            raise

    def _check_size(self, size: int) -> None:
        if size == 0:
            raise _error(b"NO Can't save a zero byte message.")
        if size > self.append_limit:
            raise _error(b"NO [TOOBIG] Mail is larger than the APPENDLIMIT.")

    def _resolve_url(self, url: bytes) -> bytes:
        """A CATENATE URL part's bytes, via the URLAUTH module if present."""
        try:
            from pydovecot.imap import urlauth  # type: ignore[attr-defined]
        except ImportError:
            urlauth = None
        resolve = getattr(urlauth, "resolve_url", None)
        shown = mime.imap_string(url)
        if resolve is None:
            raise _error(b"NO [BADURL %s] URL parts are not supported." % shown)
        try:
            data = resolve(self, url)
        except StorageError:
            raise _error(b"NO [BADURL %s] Cannot fetch the URL." % shown) from None
        if data is None:
            raise _error(b"NO [BADURL %s] Cannot fetch the URL." % shown)
        if hasattr(data, "read"):
            data = data.read()
        return bytes(data)

    def _undo_append(self, name: str, uids: list[int]) -> None:
        """MULTIAPPEND is all or nothing: expunge what was saved."""
        if not uids:
            return
        try:
            view = self.storage.open(name)
            try:
                view.store(uids, ["\\Deleted"], "+")
                view.expunge(uids)
            finally:
                view.close()
        except Exception:
            from pydovecot.imap.session import _error_line

            log.error("Undoing a failed MULTIAPPEND failed: {e}", e=_error_line(Failure()),
                      log_prefix=getattr(self, "prefix", ""))
