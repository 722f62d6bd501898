"""The storage interface: everything protocol code may do to mail.

IMAP, POP3 and delivery go through these interfaces only; they never open a
mail file or a directory themselves.  The implementation (Maildir, in
``pydovecot.storage.maildir``) runs inside a mail process that already has
the user's uid/gid, so it trusts its caller but not the mailbox names it is
given: every name is validated (see :class:`MailboxNameError`).

Mailbox names here are always Unicode in IMAP form with ``/`` as the
hierarchy separator (``INBOX``, ``Archive/2024``); the protocol layer does
the modified-UTF-7 conversion for IMAP4rev1 clients.

What protocol code keeps per mailbox or per user (special-use set by
CREATE, URLAUTH keys, METADATA entries) is a mailbox attribute
(:meth:`IMailStorage.get_attribute` …), keyed by RFC 5464 entry names as
Dovecot keys them; ``tests/test_storage_interfaces.py`` checks that every
member protocol code uses is declared here and that every implementation,
the test fakes included, passes ``verifyObject``.

Every method of :class:`IMailStorage` and :class:`IMailbox` is
asynchronous: it returns a :class:`~twisted.internet.defer.Deferred` that
fires with the documented value (below, "returns X" means "returns a
Deferred firing with X"), and errors travel as failed Deferreds carrying
the :class:`StorageError` subclasses below.  So a storage in another
process, on another host or in a database can sit behind the same
interface; the local Maildir storage answers with already-fired Deferreds
(:func:`pydovecot.storage.deferred.answers`).  Protocol code awaits every
answer and never drops one.  Message bodies cross as file objects
(:meth:`IMailbox.message_file` gives an open binary file,
:meth:`IMailStorage.append` reads one), never as one bytes value.
``tests/remote_storage.py`` puts any implementation behind a proxy that
answers as a storage in another process would (a reactor turn or two
later, values copied), and ``tests/test_imap_remote_storage.py`` runs the
protocol flows over it.

Kept synchronous, because they are the caller's local bookkeeping and a
remote storage answers them from its local proxy: the attributes (a
mailbox view's ``messages``, ``recent``, ``uidnext``, ``highestmodseq`` …
are the session's local view, refreshed only inside :meth:`IMailbox.sync`
and by the answers of the view's own ``store``/``expunge``),
:meth:`IMailbox.close` (ends the local view; a remote storage releases
its side in the background) and the listener registrations
(``add_listener`` … ``remove_tree_listener``; a listener is called with no
promise about which reactor turn, and must itself only schedule work).

Several sessions of one user share one :class:`IMailStorage` and one
:class:`IMailbox` view per session; changes made by one are reported to
the others via :meth:`IMailbox.sync` and the storage's change listeners.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


class StorageError(Exception):
    """A storage operation failed; ``code`` is an IMAP response code."""

    code = "SERVERBUG"


class MailboxNameError(StorageError):
    """The name is invalid or escapes the user's storage (NO [CANNOT])."""

    code = "CANNOT"


class MailboxNotFound(StorageError):
    """No such mailbox (NO [NONEXISTENT])."""

    code = "NONEXISTENT"


class MailboxExists(StorageError):
    """The mailbox already exists (NO [ALREADYEXISTS])."""

    code = "ALREADYEXISTS"


class AttributeTooLarge(StorageError):
    """A mailbox attribute value is above the limit (RFC 5464:
    ``NO [METADATA MAXSIZE n]``); ``max_size`` is the limit in octets."""

    def __init__(self, max_size: int):
        super().__init__(f"Metadata value is too large (the limit is {max_size} octets)")
        self.max_size = max_size
        self.code = f"METADATA MAXSIZE {max_size}"


class TooManyAttributes(StorageError):
    """A new mailbox attribute would exceed the number of entries allowed
    (RFC 5464: ``NO [METADATA TOOMANY]``)."""

    code = "METADATA TOOMANY"

    def __init__(self, message: str = "Too many metadata entries"):
        super().__init__(message)


class OverQuota(StorageError):
    """The message does not fit the user's quota (``NO [OVERQUOTA]``); the
    text is ``quota_exceeded_message`` (Dovecot's default: "Quota exceeded
    (mailbox for user is full)")."""

    code = "OVERQUOTA"
    #: ``quota_full_tempfail = yes``: delivery answers 452 4.2.2, not 552 5.2.2
    tempfail = False


class MailTooLarge(StorageError):
    """Above ``quota_max_mail_size`` (``NO [LIMIT]``)."""

    code = "LIMIT"


@dataclass
class QuotaResource:
    """One resource of a quota root: ``STORAGE`` (bytes) or ``MESSAGE``
    (count); ``limit`` 0 = unlimited."""

    name: str
    usage: int
    limit: int


#: System flags, spelled as IMAP spells them.  Keywords are any other atom.
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


@dataclass
class MailboxInfo:
    """One LIST entry."""

    name: str
    attributes: set[str] = field(default_factory=set)  # \HasChildren, \Noselect, \Sent…


@dataclass
class MailboxStatus:
    """What STATUS reports."""

    messages: int
    recent: int
    uidnext: int
    uidvalidity: int
    unseen: int
    size: int = 0
    deleted: int = 0
    highestmodseq: int = 0
    #: RFC 9208 DELETED-STORAGE: RFC822.SIZE octets of the \\Deleted messages
    deleted_size: int = 0


@dataclass
class MessageInfo:
    """One message as a mailbox view knows it.  ``flags`` never holds \\Recent."""

    uid: int
    flags: set[str]
    size: int  # RFC822.SIZE: bytes with CRLF line ends
    internaldate: datetime.datetime  # timezone-aware
    modseq: int = 1  # CONDSTORE: the modseq of the last change to this message
    savedate: datetime.datetime | None = None  # SAVEDATE (RFC 8514): when it was saved here


@dataclass
class SyncResult:
    """What changed in a mailbox since the view's last sync.

    The view's message list is already updated when this is returned:
    ``expunged`` are UIDs gone from it, ``added`` UIDs appended at its end,
    ``flags_changed`` UIDs still present whose flags differ.
    """

    expunged: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    flags_changed: list[int] = field(default_factory=list)


class IMailbox(Interface):
    """One session's view of one selected mailbox.

    The view keeps a stable message list (``messages``, in UID order) that
    changes only inside :meth:`sync`, so the protocol layer decides when
    sequence numbers move (IMAP forbids EXPUNGE during some commands).
    """

    name = Attribute("str: the mailbox name")
    readonly = Attribute("bool: opened by EXAMINE")
    uidvalidity = Attribute("int: the mailbox UIDVALIDITY")
    uidnext = Attribute("int: the UID the next message will get")
    messages = Attribute("list[MessageInfo]: the view, UID ascending")
    recent = Attribute("set[int]: UIDs that are \\Recent in this session")
    keywords = Attribute("list[str]: keywords defined in this mailbox (for FLAGS)")

    highestmodseq = Attribute(
        "int: CONDSTORE HIGHESTMODSEQ as this view has reported it (not past an "
        "expunge it still holds back), persistent across restarts")
    seen_modseq = Attribute(
        "int: the mailbox modseq this view has synced up to; never below "
        "highestmodseq, which stays lower while an expunge is held back")
    deleted = Attribute(
        "bool: the mailbox no longer exists on disk (deleted or renamed away by "
        "another session or process); the session ends with BYE, as Dovecot's does")

    def sync(allow_expunge: bool = True) -> Deferred[SyncResult]:
        """Re-read the mailbox (new deliveries, other sessions' changes).

        With ``allow_expunge`` false (during FETCH, STORE, SEARCH, where IMAP
        forbids EXPUNGE responses) messages that are gone stay in the view,
        still readable if their file can be found, and are reported by a later
        ``sync(True)``.  A storage may also defer every other change to such a
        later sync (the test fake does).
        """

    def vanished_since(modseq: int) -> Deferred[list[int]]:
        """QRESYNC: UIDs expunged with a modseq above ``modseq`` (may over-report
        when the expunge log was trimmed, as RFC 7162 allows)."""

    def store_unchanged_since(uids: Iterable[int], flags: Iterable[str], mode: str,
                              unchangedsince: int) -> Deferred[tuple[list[int], list[int]]]:
        """CONDSTORE STORE (UNCHANGEDSINCE n): ``(changed, failed)`` where
        ``failed`` are UIDs whose modseq is above ``unchangedsince``."""

    def message_file(uid: int) -> Deferred[BinaryIO]:
        """Open a message's bytes (as stored, LF or CRLF) for reading; the
        caller closes the file.

        A message expunged elsewhere but still in the view stays readable
        while its file exists; otherwise StorageError with code
        ``EXPUNGEISSUED``."""

    def store(uids: Iterable[int], flags: Iterable[str], mode: str) -> Deferred[list[int]]:
        """Change flags: ``mode`` is ``"+"``, ``"-"`` or ``"="``.

        Returns the UIDs whose flags really changed.  The view's
        ``MessageInfo.flags`` are updated at once; other sessions see the
        change at their next sync.  Raises StorageError if readonly.
        """

    def expunge(uids: Iterable[int] | None = None) -> Deferred[list[int]]:
        """Remove \\Deleted messages (only those in ``uids`` if given).

        Returns the UIDs removed; they are gone from ``messages`` too.
        """

    def close() -> None:
        """End this view; listeners are removed.  Synchronous (local
        bookkeeping): it returns nothing and cannot fail."""

    # -- search, sort and parsed data (lib-storage's mail_search / mail_get_special)
    # (pydovecot.storage.search.SearchProgram; see that module for the keys)

    def search(program: object, uids: Sequence[int] | None = None) -> object:
        """Deferred[list[int]]: the UIDs of the view's messages (of those in
        ``uids`` if given) that match the SearchProgram, ascending.  The
        program holds no sequence numbers (the protocol resolved them);
        StorageError (failed Deferred) for a key the storage cannot run."""

    def sort(criteria: Sequence[tuple[str, bool]], program: object) -> object:
        """Deferred[list[int]]: the matching UIDs ordered by RFC 5256 /
        RFC 5957 criteria, given as ``(name, reverse)`` (``ARRIVAL``, ``CC``,
        ``DATE``, ``FROM``, ``SIZE``, ``SUBJECT``, ``TO``, ``DISPLAYFROM``,
        ``DISPLAYTO``); exact ties keep mailbox order."""

    def fetch_data(uid: int, items: Sequence[str]) -> object:
        """Deferred[dict[str, object]]: parsed data of one message, from the
        index when it has it (kept there once computed): ``envelope``,
        ``bodystructure``, ``body`` (IMAP bytes), ``header:<name>`` (list of
        the field's raw unfolded values, latin-1 text), ``preview`` (str),
        ``sentdate`` (Date: as UTC seconds, or None), ``threading`` (dict:
        subject, reply, message_id, references, date).  StorageError
        (``EXPUNGEISSUED``) when the message is gone."""


class IMailStorage(Interface):
    """One user's mail: the mailbox tree and its messages."""

    user = Attribute("str: the user's name")

    def configure(settings: dict) -> Deferred[None]:
        """Apply the user's settings to this storage: ``mail_cache_*``
        limits and the ``mail_attribute_*`` bounds (unknown keys ignored)."""

    def list_mailboxes() -> Deferred[list[MailboxInfo]]:
        """Every mailbox, INBOX first, with \\HasChildren/\\HasNoChildren."""

    def create(name: str) -> Deferred[None]:
        """Create a mailbox (and missing parents).  MailboxExists if present."""

    def delete(name: str) -> Deferred[None]:
        """Delete a mailbox and its messages.  INBOX cannot be deleted."""

    def rename(old: str, new: str) -> Deferred[None]:
        """Rename a mailbox and its children.  Renaming INBOX moves its
        messages to ``new`` and leaves INBOX empty (RFC 3501)."""

    def subscriptions() -> Deferred[list[str]]:
        """Subscribed names, as in Dovecot's ``subscriptions`` file."""

    def subscribe(name: str) -> Deferred[None]:
        """Add a name to the subscriptions (need not exist)."""

    def unsubscribe(name: str) -> Deferred[None]:
        """Remove a name from the subscriptions."""

    def status(name: str) -> Deferred[MailboxStatus]:
        """Counts for STATUS without selecting.

        ``recent`` counts the messages no session has claimed \\Recent for
        yet, as Dovecot does: messages another session took \\Recent for
        (by selecting the mailbox) are not recent for anyone else.  A
        session asking about its own selected mailbox adds its view's
        ``recent`` (Dovecot answers from the selected mailbox then).
        """

    def open(name: str, readonly: bool = False) -> Deferred[IMailbox]:
        """Open a view of a mailbox (SELECT/EXAMINE).  The first view to
        see a new message takes its \\Recent."""

    def append(
        name: str,
        message: BinaryIO,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> Deferred[tuple[int, int]]:
        """Save a message: tmp/, fsync, rename into new/ or cur/.

        ``message`` (a binary file) is read from its current position to
        its end before the answer fires; the caller keeps and closes it.  Returns
        ``(uidvalidity, uid)`` once the message is durable.
        """

    def copy(
        source: IMailbox, uids: Sequence[int], dest: str
    ) -> Deferred[tuple[int, list[tuple[int, int]]]]:
        """Copy messages (hard links where possible) keeping their flags.

        Returns ``(dest uidvalidity, [(source uid, dest uid), …])``.
        """

    def move(
        source: IMailbox, uids: Sequence[int], dest: str
    ) -> Deferred[tuple[int, list[tuple[int, int]]]]:
        """The copy half of IMAP MOVE (the caller then expunges the source):
        as :meth:`copy`, but a move inside one quota root is not checked
        against the quota (its usage does not grow), as in Dovecot."""

    def add_listener(name: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` when mailbox ``name`` changes through this
        storage (append, store, expunge, delivery) — for IDLE."""

    def remove_listener(name: str, callback: Callable[[], None]) -> None:
        """Undo :meth:`add_listener`."""

    def add_tree_listener(callback: Callable[[str, str, str | None], None]) -> None:
        """Call ``callback(kind, name, new_name)`` after a successful create,
        delete, rename (``new_name`` set), subscribe or unsubscribe through
        this storage — for NOTIFY's MailboxName/SubscriptionChange events."""

    def remove_tree_listener(callback: Callable[[str, str, str | None], None]) -> None:
        """Undo :meth:`add_tree_listener`."""

    # -- mailbox attributes (RFC 5464 METADATA, RFC 6154 special-use) -------

    def get_attribute(mailbox: str, key: str) -> Deferred[bytes | None]:
        """The value of an attribute, or None.

        ``mailbox`` ``""`` means the server; ``key`` is an RFC 5464 entry
        name with its scope (``/private/comment``, ``/shared/comment``,
        ``/private/specialuse``, ``/private/vendor/vendor.dovecot/…``),
        compared case-insensitively.  Entries under
        ``/private/vendor/vendor.dovecot/pvt/`` (and ``/shared/…/pvt/``) are
        internal: protocol code uses them (URLAUTH keys) but METADATA must
        neither show nor change them, as in Dovecot.  MailboxNotFound for a
        missing mailbox; StorageError (``CANNOT``) for a bad entry name.
        """

    def set_attribute(mailbox: str, key: str, value: bytes | None) -> Deferred[None]:
        """Set (or, with None, delete) an attribute, durably.

        AttributeTooLarge above the value limit, TooManyAttributes when a
        new entry would exceed the per-mailbox entry limit.  Attributes
        follow their mailbox through RENAME and go with it on DELETE.
        """

    def set_attributes(mailbox: str, changes: dict[str, bytes | None]) -> Deferred[None]:
        """Apply several :meth:`set_attribute` changes at once: all of them
        durably, or (on any error) none (SETMETADATA)."""

    def attribute_keys(mailbox: str, prefix: str = "") -> Deferred[list[str]]:
        """Every entry name of a mailbox (or, for ``""``, the server) that
        starts with ``prefix`` (``""`` = all, ``/private`` or ``/shared``, or
        any deeper entry), sorted, with its scope (``/private/comment``)."""

    # -- quota (Dovecot's quota plugin; RFC 9208) ---------------------------
    # A storage with no quota configured answers [] / MailboxNotFound-free
    # no-ops.  Usage is kept current by append/copy/expunge/delete; saving
    # over the limit fails with OverQuota (MailTooLarge above
    # quota_max_mail_size).

    def quota_roots(mailbox: str) -> Deferred[list[str]]:
        """Names of the quota roots that apply to ``mailbox`` (GETQUOTAROOT),
        [] when quota is off; a mailbox that does not exist (yet) has the
        roots it would have, as Dovecot answers."""

    def get_quota(root: str, mailbox: str = "") -> Deferred[list[QuotaResource]]:
        """The root's resources, STORAGE then MESSAGE, with their limits as
        for saving into ``mailbox`` ("" = the default rule; 0 = unlimited,
        which IMAP leaves out and doveadm shows as ``-``).  StorageError
        (``NONEXISTENT``) for an unknown root."""

    def check_quota(mailbox: str, size: int, count: int = 1) -> Deferred[None]:
        """Fires when ``count`` messages of ``size`` octets would fit in
        ``mailbox`` now, as a delivery (quota_grace applies); OverQuota /
        MailTooLarge otherwise (LMTP's RCPT check, quota-status)."""

    def recalc_quota() -> Deferred[list[QuotaResource]]:
        """Count the usage again from the mail (``doveadm quota recalc``);
        returns the resources of every root, root after root."""
