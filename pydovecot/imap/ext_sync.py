"""CONDSTORE, QRESYNC (RFC 7162) and NOTIFY (RFC 5465) for IMAPSession.

A mixin: :class:`SyncMixin` is one of IMAPSession's bases, and the shared
command handlers in :mod:`pydovecot.imap.session` call into it at a few
points (``_sync``, SELECT, FETCH, STORE, EXPUNGE, ENABLE, STATUS).  It also
owns the unsolicited-response logic: EXISTS, EXPUNGE (or VANISHED once
QRESYNC is enabled) and FETCH FLAGS (with MODSEQ once CONDSTORE is
enabled), and never an expunge while FETCH, STORE or SEARCH runs.

Trusts the storage view (:class:`~pydovecot.storage.interfaces.IMailbox`)
for UIDs and modseqs; every modifier and parameter comes from the client
and is validated here (``BAD`` on malformed input).  Optional parts of the
storage contract (``sync(allow_expunge)``, ``vanished_since``,
``store_unchanged_since``, ``highestmodseq``) are feature-checked, so a
storage without them still gets correct, if less precise, answers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet import defer

from pydovecot.imap import ext_fetch, fetch, notify
from pydovecot.imap.parser import Atom, NumberSet, ParseError, Token, compress, parse_sequence_set
from pydovecot.storage.interfaces import IMailbox, MessageInfo, SyncResult

if TYPE_CHECKING:
    from pydovecot.imap.session import IMAPSession

MAX_MODSEQ = 2**63 - 1


def parse_modseq(tok: Token, zero: bool = False) -> int:
    """A mod-sequence-value (1 .. 2^63-1; 0 only where ``zero``)."""
    if not isinstance(tok, Atom) or not tok.isdigit() or len(tok) > 19:
        raise ParseError("Invalid modseq")
    value = int(tok)
    if value > MAX_MODSEQ or (value == 0 and not zero):
        raise ParseError("Invalid modseq")
    return value


def uid_set(tok: Token) -> NumberSet:
    """A known-uids / sequence set without ``*``."""
    if not isinstance(tok, Atom):
        raise ParseError("Invalid UID set")
    ranges = parse_sequence_set(tok)
    if any(a < 0 or b < 0 for a, b in ranges):
        raise ParseError("Invalid UID set")
    return NumberSet(ranges, 0)


@dataclass
class QresyncParams:
    """SELECT … (QRESYNC (uidvalidity modseq [known-uids [seq-match]]))."""

    uidvalidity: int
    modseq: int
    known: NumberSet | None = None


@dataclass
class SelectParams:
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass
class FetchModifiers:
    changedsince: int | None = None
    vanished: bool = False


def _supports_deferred_expunge(mbox: IMailbox) -> bool:
    try:
        return "allow_expunge" in inspect.signature(mbox.sync).parameters
    except (TypeError, ValueError):
        return False


class SyncMixin:
    """CONDSTORE/QRESYNC/NOTIFY state and the unsolicited responses."""

    condstore: bool = False
    qresync: bool = False
    _preparing: bool = False  # FETCH runs again after prepare_fetch
    notifier: notify.Notifier | None = None

    # -- ENABLE ------------------------------------------------------------

    def _enable_ext(self: IMAPSession, args: list[Token]) -> bytes:
        """ENABLE: returns `` CONDSTORE QRESYNC`` for what this call newly enabled."""
        out = b""
        for tok in args:
            name = tok.upper_str() if isinstance(tok, Atom) else ""
            if name == "CONDSTORE" and not self.condstore:
                self._enable_condstore(announce=False)
                out += b" CONDSTORE"
            elif name == "QRESYNC" and not self.qresync:
                self.qresync = True
                self._enable_condstore(announce=False)
                out += b" QRESYNC"
        return out

    def _enable_condstore(self: IMAPSession, announce: bool = True) -> None:
        """Turn CONDSTORE on; a CONDSTORE-enabling command in the selected
        state also reports HIGHESTMODSEQ (RFC 7162 §3.1)."""
        if self.condstore:
            return
        self.condstore = True
        if announce and self.mailbox is not None:
            self._send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % self._highestmodseq(self.mailbox))

    def _highestmodseq(self: IMAPSession, mbox: IMailbox) -> int:
        value = getattr(mbox, "highestmodseq", None)
        if isinstance(value, int) and value > 0:
            return value
        seen = getattr(mbox, "seen_modseq", None)
        if isinstance(seen, int) and seen > 0:
            return seen
        try:
            status = self.storage.status(mbox.name).highestmodseq
        except Exception:
            status = 0
        return max([status, 1, *(m.modseq for m in mbox.messages)])

    # -- unsolicited responses ----------------------------------------------

    def _sync_changes(self: IMAPSession, allow_expunge: bool = True) -> None:
        """Report other sessions' and deliveries' changes to the selected
        mailbox.  Without ``allow_expunge`` (FETCH, STORE, SEARCH) the view
        keeps expunged messages so sequence numbers do not move; they are
        reported at the next command that allows it."""
        mbox = self.mailbox
        if mbox is None:
            return
        old_uids = [m.uid for m in mbox.messages]
        if allow_expunge:
            result: SyncResult = mbox.sync()
        elif _supports_deferred_expunge(mbox):
            result = mbox.sync(allow_expunge=False)
        else:
            return  # this storage can only sync with expunges: wait
        if getattr(mbox, "deleted", False):
            self._mailbox_gone()
            return
        self._report_expunges(old_uids, result.expunged)
        if result.added or len(mbox.messages) != len(old_uids) - len(result.expunged):
            self._send(b"* %d EXISTS\r\n" % len(mbox.messages))
        if result.added and not self.rev2:  # RECENT goes with new messages, as in Dovecot
            self._send(b"* %d RECENT\r\n" % len(mbox.recent))
        if result.flags_changed:
            changed = set(result.flags_changed)
            for seq, info in enumerate(mbox.messages, 1):
                if info.uid in changed:
                    self._send(b"* %d FETCH (UID %d FLAGS %s%s)\r\n" % (
                        seq, info.uid, fetch.format_flags(info.flags, info.uid in self.recent_view()),
                        self._modseq_part(info)))
        if self.notifier is not None:
            if allow_expunge:
                self.notifier.selected_dirty = False
            self.notifier.flush_pending()

    def _mailbox_gone(self: IMAPSession) -> None:
        """The selected mailbox was deleted or renamed away under this
        session: Dovecot's BYE, then the connection closes (nothing more,
        not even the tagged reply of the running command, is sent)."""
        self.log.info("Selected mailbox was deleted, disconnecting", log_prefix=self.prefix)
        self._send(b"* BYE Selected mailbox was deleted, have to disconnect.\r\n")
        self._flush()
        self._stop_idle()
        self._closed = True
        if self.transport is not None:
            self.transport.loseConnection()

    def _modseq_part(self, info: MessageInfo) -> bytes:
        """`` MODSEQ (n)`` for FETCH responses once CONDSTORE is enabled."""
        return b" MODSEQ (%d)" % info.modseq if self.condstore else b""

    def _vanished(self: IMAPSession, expunged: list[int]) -> bool:
        """Under QRESYNC, expunges are ``* VANISHED uids`` (RFC 7162 §3.2.10)."""
        if not self.qresync:
            return False
        if expunged:
            self._send(b"* VANISHED %s\r\n" % compress(sorted(expunged)))
        return True

    # -- SELECT / EXAMINE ------------------------------------------------------

    def _select_params(self: IMAPSession, args: list[Token]) -> tuple[list[Token], SelectParams]:
        """Split ``mailbox (CONDSTORE)`` / ``(QRESYNC (…))`` off SELECT's args."""
        params = SelectParams()
        if len(args) != 2 or not isinstance(args[1], list):
            return args, params
        items = args[1]
        i = 0
        while i < len(items):
            tok = items[i]
            name = tok.upper_str() if isinstance(tok, Atom) else ""
            if name == "CONDSTORE":
                params.condstore = True
                i += 1
            elif name == "QRESYNC" and i + 1 < len(items) and isinstance(items[i + 1], list):
                if not self.qresync:
                    raise ParseError("QRESYNC not enabled")
                params.qresync = self._parse_qresync(items[i + 1])
                i += 2
            else:
                raise ParseError("Unknown SELECT parameter")
        return args[:1], params

    @staticmethod
    def _parse_qresync(items: list[Token]) -> QresyncParams:
        if not 2 <= len(items) <= 4:
            raise ParseError("Invalid QRESYNC parameters")
        validity = items[0]
        if not isinstance(validity, Atom) or not validity.isdigit() or int(validity) == 0 \
                or int(validity) > 0xFFFFFFFF:
            raise ParseError("Invalid QRESYNC uidvalidity")
        params = QresyncParams(int(validity), parse_modseq(items[1]))
        if len(items) >= 3:
            params.known = uid_set(items[2])
        if len(items) == 4:
            match = items[3]
            if not isinstance(match, list) or len(match) != 2:
                raise ParseError("Invalid QRESYNC sequence match data")
            uid_set(match[0])
            uid_set(match[1])
        return params

    def _select_done(self: IMAPSession, mbox: IMailbox, params: SelectParams) -> None:
        """After SELECT's standard responses: HIGHESTMODSEQ and, for
        QRESYNC, VANISHED (EARLIER) and the flags changed since."""
        if params.condstore or params.qresync is not None:
            self.condstore = True
        if self.condstore:
            self._send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % self._highestmodseq(mbox))
        q = params.qresync
        if q is not None and q.uidvalidity == mbox.uidvalidity:
            present = {m.uid for m in mbox.messages}
            vanished = self._vanished_since(mbox, q.modseq, q.known, present)
            if vanished:
                self._send(b"* VANISHED (EARLIER) %s\r\n" % compress(vanished))
            for seq, info in enumerate(mbox.messages, 1):
                if info.modseq > q.modseq:
                    self._send(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (
                        seq, info.uid, fetch.format_flags(info.flags, info.uid in self.recent_view()),
                        info.modseq))
        if self.notifier is not None:
            self.notifier.selected(mbox.name)

    def _vanished_since(self, mbox: IMailbox, modseq: int, known: NumberSet | None,
                        present: set[int]) -> list[int]:
        """UIDs expunged since ``modseq`` (limited to ``known``).  RFC 7162
        lets a server over-report, so without an expunge log every absent
        UID below UIDNEXT is listed."""
        if known is not None:
            return [u for u in known if u not in present and u < mbox.uidnext]
        getter = getattr(mbox, "vanished_since", None)
        if getter is not None:
            try:
                return sorted(set(getter(modseq)) - present)
            except NotImplementedError:
                pass
        return [u for u in range(1, mbox.uidnext) if u not in present]

    # -- FETCH ---------------------------------------------------------------

    def _fetch_modifiers(self: IMAPSession, args: list[Token], uid: bool) -> FetchModifiers:
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
                if not uid or not self.qresync:
                    raise ParseError("VANISHED needs UID FETCH and QRESYNC")
                mods.vanished = True
                i += 1
            else:
                raise ParseError("Unknown FETCH modifier")
        if mods.vanished and mods.changedsince is None:
            raise ParseError("VANISHED needs CHANGEDSINCE")
        return mods

    def prepare_fetch(self: IMAPSession, args: list[Token], uid: bool,
                      then: Callable[[], object]) -> defer.Deferred | None:
        """Before FETCH renders: parse its big messages in slices (see
        :func:`pydovecot.imap.ext_fetch.prepare_fetch`), then run ``then``
        (FETCH again, which finds them parsed) and let them go.  None when
        there is nothing to prepare; bad arguments give None too (FETCH
        itself answers them)."""
        if self.mailbox is None or len(args) < 2 or self._preparing:
            return None
        try:
            items = fetch.parse_items(args[1:2])
            targets = self._resolve(args[0], uid)
        except Exception:
            return None
        d = ext_fetch.prepare_fetch(self, targets, items)
        if d is None:
            return None
        keys: list[tuple] = []

        def run(got: list[tuple]) -> object:
            keys.extend(got)
            self._preparing = True
            try:
                return then()
            finally:
                self._preparing = False

        def unpin(result: object) -> object:
            for key in keys:
                self.cache.unpin(key)
            return result

        return d.addCallback(run).addBoth(unpin)

    def _fetch_targets(self: IMAPSession, args: list[Token], targets: list[tuple[int, MessageInfo]],
                       items: list[fetch.FetchItem], mods: FetchModifiers,
                       uid: bool) -> list[tuple[int, MessageInfo]]:
        """Apply CHANGEDSINCE/VANISHED and add MODSEQ where CONDSTORE wants it."""
        mbox = self.mailbox
        assert mbox is not None
        names = {i.name for i in items}
        if "MODSEQ" in names or mods.changedsince is not None:
            self._enable_condstore()
        if self.condstore and "MODSEQ" not in names and (
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
            gone = [u for u in self._vanished_since(mbox, mods.changedsince, None, present)
                    if u in requested]
            if gone:
                self._send(b"* VANISHED (EARLIER) %s\r\n" % compress(gone))
        return [(s, m) for s, m in targets if m.modseq > mods.changedsince]

    # -- STORE ---------------------------------------------------------------

    def _store_modifiers(self: IMAPSession, args: list[Token]) -> tuple[list[Token], int | None]:
        """``STORE set (UNCHANGEDSINCE n) …`` → (args without it, n)."""
        if len(args) < 2 or not isinstance(args[1], list):
            return args, None
        mods = args[1]
        if len(mods) != 2 or not isinstance(mods[0], Atom) or mods[0].upper_str() != "UNCHANGEDSINCE":
            raise ParseError("Unknown STORE modifier")
        value = parse_modseq(mods[1], zero=True)
        self._enable_condstore()
        return [args[0], *args[2:]], value

    def _store_flags(self: IMAPSession, mbox: IMailbox, targets: list[tuple[int, MessageInfo]],
                     flags: list[str], mode: str, unchanged: int | None) -> set[int]:
        """Store, conditionally if ``unchanged`` is set; the UIDs that failed."""
        uids = [m.uid for _s, m in targets]
        if unchanged is None:
            mbox.store(uids, flags, mode)
            return set()
        conditional = getattr(mbox, "store_unchanged_since", None)
        if conditional is not None:
            try:
                _changed, failed = conditional(uids, flags, mode, unchanged)
                return set(failed)
            except NotImplementedError:
                pass
        # One reactor turn: nothing can change the modseqs between check and store.
        failed_set = {m.uid for _s, m in targets if m.modseq > unchanged}
        mbox.store([u for u in uids if u not in failed_set], flags, mode)
        return failed_set

    def _store_response(self: IMAPSession, seq: int, info: MessageInfo, uid: bool,
                        silent: bool, unchanged: int | None, before: int) -> None:
        """The untagged FETCH for one stored message; under UNCHANGEDSINCE a
        .SILENT store still reports a changed MODSEQ (RFC 7162 §3.1.3)."""
        mbox = self.mailbox
        assert mbox is not None
        uid_part = b"UID %d " % info.uid if uid else b""
        if not silent:
            self._send(b"* %d FETCH (%sFLAGS %s%s)\r\n" % (
                seq, uid_part, fetch.format_flags(info.flags, info.uid in self.recent_view()),
                self._modseq_part(info)))
        elif unchanged is not None and info.modseq != before:
            self._send(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, uid_part, info.modseq))

    @staticmethod
    def _store_result(targets: list[tuple[int, MessageInfo]], failed: set[int], uid: bool) -> bytes:
        if not failed:
            return b"OK Store completed."
        ids = [m.uid if uid else s for s, m in targets if m.uid in failed]
        return b"OK [MODIFIED %s] Conditional STORE failed." % compress(sorted(ids))

    # -- EXPUNGE -------------------------------------------------------------

    def _expunge_result(self: IMAPSession, response: bytes) -> bytes:
        """Under QRESYNC the tagged OK of EXPUNGE carries HIGHESTMODSEQ."""
        if self.qresync and self.mailbox is not None:
            return b"OK [HIGHESTMODSEQ %d] %s" % (
                self._highestmodseq(self.mailbox), response.removeprefix(b"OK "))
        return response

    # -- STATUS / NOTIFY -----------------------------------------------------------

    def _status_items(self: IMAPSession, wanted: list[str]) -> None:
        if "HIGHESTMODSEQ" in wanted:
            self._enable_condstore()

    def cmd_notify(self: IMAPSession, tag: bytes, args: list[Token]) -> bytes:
        try:
            spec = notify.parse(args, self.decode_mailbox)
        except notify.BadEvent:
            from pydovecot.imap.session import CommandError

            raise CommandError(b"NO [BADEVENT (" + notify.SUPPORTED_EVENTS + b")] "
                               b"Unsupported event") from None
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None
        if spec is None:
            return b"OK NOTIFY completed."
        self.notifier = notify.Notifier(self, spec)
        self.notifier.start()
        return b"OK NOTIFY completed."

    # -- helpers for notify.Notifier ----------------------------------------------

    def _status_line(self: IMAPSession, name: str, items: list[str]) -> bytes | None:
        try:
            status = self.storage.status(name)
        except Exception:
            return None
        if self.condstore and "HIGHESTMODSEQ" not in items:
            items = [*items, "HIGHESTMODSEQ"]
        values = b" ".join(b"%s %d" % (k.encode(), getattr(status, k.lower())) for k in items)
        return b"* STATUS %s (%s)\r\n" % (self.encode_mailbox(name), values)

    def _notify_idle_point(self: IMAPSession) -> bool:
        """True when no command runs, so unsolicited data may be sent now."""
        if self._closed or self._logged_out:
            return False
        return not self._busy or self._idle is not None

    def _notify_selected_changed(self: IMAPSession) -> None:
        """A watched change to the selected mailbox, pushed between commands."""
        if self.mailbox is None or not self._notify_idle_point():
            return
        self._sync_changes(True)
        self._flush()


__all__ = ["SyncMixin", "parse_modseq", "QresyncParams", "SelectParams", "FetchModifiers"]
