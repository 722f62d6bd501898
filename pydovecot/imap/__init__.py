"""The IMAP engine of the mail process, shaped like Dovecot's src/imap.

The login process (:mod:`pydovecot.login.imap`) speaks the pre-auth
grammar and hands an authenticated connection to a per-user mail process,
which builds ``IMAPSession(storage, ctx)`` (:mod:`pydovecot.imap.session`)
for it.  The user and settings come trusted from the master
(:class:`~pydovecot.session.SessionContext`); every byte from the client is
untrusted.  Four parts, each knowing only the ones below it:

**Client core** (:mod:`~pydovecot.imap.client`, Dovecot's imap-client.c
and imap-sync.c): one :class:`~pydovecot.imap.client.Client` per
connection.  It owns the connection, the command queue, output and flow
control, and the selected mailbox's view and its sync (EXISTS, EXPUNGE or
VANISHED, FETCH FLAGS with MODSEQ, after every command its flags allow).
It knows no command.  Commands use its public surface only: ``send``,
``flush``, ``tagged``, ``send_paced``/``drained``/``output_blocked``,
``selected``/``select``/``resolve``, ``load``/``load_header`` (awaitable),
``sync`` (awaitable), ``run_steps``, ``recent_view``,
``highestmodseq``/``vanished_since`` (awaitable),
``enable_condstore``/``announce_condstore``/``modseq_part``,
``decode_mailbox``/``encode_mailbox``, ``wait_input`` (IDLE), ``logout``,
``start_compression``, and plain attributes (``storage``, ``mailbox``,
``ctx``, ``cache``, ``condstore``, ``qresync``, ``rev2``, ``utf8``,
``notifier`` …).  Nothing outside the core touches its underscore state.

**Command registry** (:mod:`~pydovecot.imap.commands`, Dovecot's
imap-commands.c): one module per command or family (``store.py``,
``fetch.py``, ``search.py`` with SORT/THREAD/ESEARCH, ``select.py``,
``list.py``, ``status.py``, ``append.py``, ``copy.py`` with MOVE,
``expunge.py``, ``idle.py``, ``enable.py``, ``id.py``, ``namespace.py``,
``notify.py``, ``urlauth.py``, ``compress.py``, ``mailbox.py``,
``base.py``), each registering name, handler and flags in the one table
of :mod:`~pydovecot.imap.commands.registry`: SELECTED (state), UID (has a
UID form), USES_SEQS, BREAKS_SEQS, NO_EXPUNGE (the sync after it keeps
sequence numbers unless run as UID), NO_SYNC.  The core looks a command up
there and nowhere else.  A handler is ``handler(client, tag, args, uid)``
and returns the tagged response, a Deferred of it, or a coroutine (the
core wraps it with ``Deferred.fromCoroutine``), so a storage that answers
with Deferreds needs no change of the core; it raises
:class:`~pydovecot.imap.errors.CommandError` to refuse (``BAD``/``NO``),
and a ParseError or StorageError becomes a tagged ``BAD``/``NO`` too,
never a traceback.  ``python -m pydovecot.imap.commands`` prints the table.

**Feature registry** (:mod:`~pydovecot.imap.features`, Dovecot's
imap_feature_register): the ENABLE-able features (CONDSTORE, QRESYNC,
IMAP4rev2, UTF8=ACCEPT) with their enable callbacks, and every other
advertised capability registered by the command module implementing it.
:mod:`~pydovecot.imap.capability` keeps the advertised order and the
settings that change it; a test checks that every advertised capability
maps to a registered command or feature.

**Leaf modules** the commands share, none importing the core: the one IMAP
tokenizer (:mod:`~pydovecot.imap.parser`, also used by the login process),
errors (:mod:`~pydovecot.imap.errors`), syntax helpers
(:mod:`~pydovecot.imap.syntax`: astrings, mailbox names, date-times,
flags), message parsing and rendering (``mime``, ``fetch``, ``ext_fetch``),
search/sort/thread (``search``, ``sort``, ``thread``, ``ext_search``,
``context``), CONDSTORE/QRESYNC syntax (``ext_sync``), ``notify``,
``urlauth``/``imapurl``, ``specialuse``, ``compress``, ``mutf7``.

**Storage interface**: everything about mail goes through
:class:`~pydovecot.storage.interfaces.IMailStorage` and ``IMailbox``; the
engine never opens a mail file itself.  Every storage method answers with
a Deferred (values, or StorageError failures that become tagged ``NO``),
so the storage may live in another process, on another host or in a
database: handlers that reach storage are ``async def`` and await each
answer; the cooperator loops of FETCH, LIST and SEARCH wait on a pending
answer as they wait on ``drained()`` (:class:`~pydovecot.storage.deferred.Answer`),
and go on in the same step when it is already in (the local Maildir
answers at once).  The core awaits the after-command sync before it sends
the tagged reply or starts the next command, and never runs two syncs of
a view at once (a sync IDLE or NOTIFY began holds back the queue).
Message bodies come as file objects.  A selected mailbox is a view whose
attributes (``messages``, ``recent`` …) are the session's local copy and
whose sequence numbers change only in the core's ``sync``.  SEARCH, SORT
and THREAD hand the storage a program
(:class:`~pydovecot.storage.search.SearchProgram`, JSON-able, sequence
numbers already turned into UIDs) and await its answer
(``IMailbox.search``/``sort``); envelope, body structure, header fields,
preview and threading data come from ``IMailbox.fetch_data``, which a
storage answers from its index, as Dovecot's lib-storage does.  ``tests/test_imap_remote_storage.py`` runs the commands over a
storage that answers only reactor turns later.

**Flow control** (see ARCHITECTURE.md, "Facts": many sessions share one
reactor): the core registers a push producer on its transport and stops
producing above :data:`~pydovecot.imap.client.OUTPUT_BOUND`; no new command
starts while the client does not read, and long commands (FETCH, LIST,
SEARCH, SORT, THREAD) run on Twisted's global cooperator, a message or a
chunk per step, waiting on ``drained()``.  Queued commands run for at most
:data:`~pydovecot.imap.client.SLICE` seconds per reactor turn; at most
:data:`~pydovecot.imap.client.QUEUE_MAX` parsed commands wait before the
socket (and the COMPRESS inflater) stops being read.  Twenty BAD commands
in a row, ``imap_autologout`` of inactivity, or five minutes without
reading our output end the session, as in Dovecot.

No module of the engine imports another in a cycle (tests/test_import_graph.py).
"""
