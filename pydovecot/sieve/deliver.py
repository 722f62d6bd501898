"""Delivery through Sieve, as Pigeonhole's LMTP/LDA plugin does it.

Finds the user's scripts where Pigeonhole looks (``sieve_before*``, the
personal script — ``sieve = file:~/sieve;active=~/.dovecot.sieve`` — or
``sieve_default``, then ``sieve_after*``), compiles them (cached, see
:mod:`binary`), runs them cooperatively (the reactor gets its turn every
few milliseconds) and carries the actions out: stores with flags and
``:create``, redirects, vacation replies and rejections through
``sendmail_path`` (or SMTP to ``submission_host``), with Pigeonhole's
envelope senders and loop checks.  A script that fails to compile or run
gives an implicit keep, an error in the log and one in the user's
``~/.dovecot.sieve.log``.  Response tracking (vacation, duplicate,
redirect) is kept in the user's home, ``~/.pydovecot.lda-dupes``.

Runs as the user, in the user's mail process.  Trusts the config and the
master's envelope; not the scripts, the message or its headers.
"""

from __future__ import annotations

import copy
import email.header
import email.utils
import hashlib
import io
import json
import os
import smtplib
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer, error, protocol, reactor, task, threads
from twisted.logger import Logger

from pydovecot.config.settings import parse_size, parse_time
from pydovecot.log import sanitize
from pydovecot.sieve.binary import compile_file
from pydovecot.sieve.errors import ProtocolReject, SieveError, SieveSyntaxError
from pydovecot.sieve.interp import Context, Envelope, Interpreter, Limits, Result
from pydovecot.sieve.message import Message, parse_addresses
from pydovecot.sieve.parser import DEFAULT_MAX_SCRIPT_SIZE
from pydovecot.sieve.validate import ALL_EXTENSIONS, DEFAULT_EXTENSIONS
from pydovecot.storage.interfaces import MailboxExists, StorageError

log = Logger()

SLICE = 0.01  # seconds of script running before the reactor gets its turn
SENDMAIL_TIMEOUT = 60.0
MAX_DUPES = 10000
PARSE_IN_SLICES = 256 * 1024  # bigger messages are MIME-parsed a chunk per slice
USER_LOG_MAX = 10 * 1024
SYSTEM_LOCALPARTS = ("mailer-daemon", "listserv", "majordomo")
LIST_HEADERS = ("list-id", "list-owner", "list-subscribe", "list-post", "list-unsubscribe",
                "list-help", "list-archive")
X_SIEVE = "pydovecot Sieve"


def sieve_enabled(config) -> bool:
    """``mail_plugins`` of ``protocol lmtp`` names ``sieve``."""
    try:
        plugins = config.get("mail_plugins", protocol="lmtp")
    except (KeyError, TypeError):
        return False
    return "sieve" in (plugins or "").replace(",", " ").split()


def plugin_settings(config, fields: dict) -> dict[str, str]:
    """``plugin {}`` (global, then ``protocol lmtp``), then userdb fields
    (a userdb ``sieve=…`` overrides the plugin setting, as in Dovecot)."""
    out = dict(getattr(config, "plugin", None) or {})
    out.update((getattr(config, "protocol_plugin", None) or {}).get("lmtp", {}))
    for key, value in fields.items():
        if isinstance(key, str) and key.startswith("sieve") and isinstance(value, str):
            out[key] = value
    return out


def parse_extensions(spec: str, base: frozenset[str] = DEFAULT_EXTENSIONS) -> frozenset[str]:
    """``sieve_extensions``: ``+ext``/``-ext`` change the defaults; bare
    names replace them."""
    words = spec.split()
    if not words:
        return base
    if all(w[0] in "+-" for w in words):
        out = set(base)
        for w in words:
            name = w[1:]
            if name in ALL_EXTENSIONS:
                (out.add if w[0] == "+" else out.discard)(name)
        return frozenset(out)
    return frozenset(w.lstrip("+") for w in words if w.lstrip("+") in ALL_EXTENSIONS)


@dataclass
class Script:
    path: str
    name: str
    personal: bool = False
    log_path: str = ""  # the user's sieve log (personal script only)


@dataclass
class Outcome:
    uid: int = 0
    mailbox: str = ""
    stored: list[str] = field(default_factory=list)


class SieveDelivery:
    """One message for one recipient, filtered and delivered."""

    def __init__(self, config, storage, user: str, fields: dict, sender: str, recipient: str,
                 session: str = "", msgid: str = "", prefix: str = "",
                 send: Callable | None = None):
        self.config = config
        self.storage = storage
        self._mailboxes: set[str] = set()  # for mailboxexists: load_mailboxes()
        self.user = user
        self.fields = fields
        self.home = fields.get("home", "") or ""
        self.sender = sender
        self.recipient = recipient or user
        self.orig_recipient = self.recipient
        #: where the implicit keep stores (the +detail mailbox with
        #: lmtp_save_to_detail_mailbox, as Dovecot's default mailbox)
        self.default_mailbox = "INBOX"
        #: ereject refuses at the protocol level (LMTP) rather than by mail
        self.protocol_reject = False
        self.session = session
        self.msgid = msgid
        self.prefix = prefix or f"lmtp({sanitize(user)})"
        self.settings = plugin_settings(config, fields)
        self.extensions = parse_extensions(self.settings.get("sieve_extensions", ""))
        self.global_extensions = parse_extensions(
            self.settings.get("sieve_global_extensions", ""), self.extensions) | self.extensions
        self.max_size = self._size("sieve_max_script_size", DEFAULT_MAX_SCRIPT_SIZE)
        self.send = send or self.sendmail
        self._dupes: dict | None = None

    # -- settings ----------------------------------------------------------

    def _cfg(self, key: str, default: str = "") -> str:
        try:
            value = self.config.get(key)
        except (KeyError, TypeError):
            return default
        return value if value not in (None, "") else default

    def _size(self, key: str, default: int) -> int:
        value = self.settings.get(key, "")
        try:
            return parse_size(value) if value else default
        except ValueError:
            return default

    def _int(self, key: str, default: int) -> int:
        value = self.settings.get(key, "")
        try:
            return int(value) if value else default
        except ValueError:
            return default

    def _time(self, key: str, default: float) -> float:
        value = self.settings.get(key, "")
        try:
            return parse_time(value) if value else default
        except ValueError:
            return default

    def _path(self, value: str) -> str:
        value = value.strip()
        if value.startswith("~"):
            value = self.home + value[1:]
        return value.replace("%u", self.user).replace("%n", self.user.split("@")[0]).replace(
            "%d", self.user.partition("@")[2]).replace("%h", self.home)

    def _location(self, value: str) -> tuple[str, dict[str, str]]:
        """``[file:]path[;key=value…]`` -> (path, options)."""
        value = value.strip()
        if value.startswith("file:"):
            value = value[5:]
        path, *opts = value.split(";")
        options = {}
        for opt in opts:
            k, _, v = opt.partition("=")
            options[k.strip()] = self._path(v)
        return self._path(path), options

    # -- which scripts -----------------------------------------------------

    def scripts(self) -> tuple[list[Script], list[Script], Script | None]:
        """(before, after, personal-or-default) as Pigeonhole finds them."""
        before = self._sequence("sieve_before")
        after = self._sequence("sieve_after")
        personal = None
        location = self.settings.get("sieve", "file:~/sieve;active=~/.dovecot.sieve")
        path, options = self._location(location)
        active = options.get("active")
        if active is None and path and not os.path.isdir(path):
            active = path
        if active and os.path.isfile(active):
            user_log_path = self.settings.get("sieve_user_log")
            personal = Script(active, _script_name(active), True,
                              self._path(user_log_path) if user_log_path else active + ".log")
        elif self.settings.get("sieve_default"):
            dpath, _ = self._location(self.settings["sieve_default"])
            if os.path.isfile(dpath):
                personal = Script(dpath, _script_name(dpath), False)
        return before, after, personal

    def _sequence(self, base: str) -> list[Script]:
        out: list[Script] = []
        keys = [base] + [f"{base}{n}" for n in range(2, 100)]
        for key in keys:
            value = self.settings.get(key)
            if not value:
                if key != base:
                    break
                continue
            path, _ = self._location(value)
            if os.path.isdir(path):
                for name in sorted(os.listdir(path)):
                    if name.endswith(".sieve"):
                        out.append(Script(os.path.join(path, name), name[:-6]))
            elif os.path.isfile(path):
                out.append(Script(path, _script_name(path)))
            else:
                log.warning("sieve: {key} script {path} does not exist", key=key,
                            path=sanitize(path), log_prefix=self.prefix)
        return out

    # -- running -----------------------------------------------------------

    @defer.inlineCallbacks
    def run(self, raw: bytes):
        """Filter and deliver ``raw``; fires with an :class:`Outcome`."""
        before, after, personal = self.scripts()
        sequence = before + ([personal] if personal else []) + after
        message = Message(raw)
        if not self.msgid:
            self.msgid = (message.raw_values("message-id") or [""])[0][:256]
        if sequence:  # for mailboxexists (RFC 5490): the interpreter is synchronous
            yield self.load_mailboxes()
        ctx = self.context(message)
        interp = Interpreter(message, ctx)
        if sequence and len(raw) > PARSE_IN_SLICES:
            yield self.cooperate(message.parse_steps())
        failed = False
        for script in sequence:
            is_global = script is not personal
            extensions = self.global_extensions if is_global else self.extensions
            try:
                compiled = compile_file(script.path, extensions, self.max_size)
            except (SieveSyntaxError, OSError, RecursionError, ValueError) as e:
                self.script_failed(script, e, compile_error=True)
                failed = True
                break
            saved = _snapshot(interp.result)
            interp.flags = []
            try:
                yield self.cooperate(interp.run(compiled))
            except (SieveError, RecursionError, ValueError, LookupError, TypeError,
                    KeyError, IndexError) as e:
                interp.result = saved
                interp.result.implicit_keep = True
                self.script_failed(script, e)
                failed = True
                break
            if not interp.result.implicit_keep:
                break  # Pigeonhole runs the next script only while keep holds
        result = interp.result
        if failed:
            result.implicit_keep = True
        outcome = yield self.commit(message, result)
        return outcome

    def context(self, message: Message) -> Context:
        limits = Limits(
            max_actions=self._int("sieve_max_actions", 32),
            max_redirects=self._int("sieve_max_redirects", 4),
            max_cpu_time=self._time("sieve_max_cpu_time", 30.0),
            max_variable_size=self._size("sieve_variables_max_variable_size", 4096),
            max_scope_size=self._int("sieve_variables_max_scope_size", 255))
        s = self.settings
        settings = {
            "extensions": self.extensions,
            "vacation_default_period": self._time("sieve_vacation_default_period", 7 * 86400),
            "vacation_min_period": self._time("sieve_vacation_min_period", 86400),
            "vacation_max_period": self._time("sieve_vacation_max_period", 0),
            "duplicate_default_period": self._time("sieve_duplicate_default_period",
                                                   14 * 86400),
            "duplicate_max_period": self._time("sieve_duplicate_max_period", 7 * 86400),
        }
        for name in ("spamtest", "virustest"):
            settings[f"{name}_status_header"] = s.get(f"sieve_{name}_status_header", "")
            settings[f"{name}_status_type"] = s.get(f"sieve_{name}_status_type", "score")
            try:
                settings[f"{name}_max_value"] = float(s.get(f"sieve_{name}_max_value", "0"))
            except ValueError:
                settings[f"{name}_max_value"] = 0.0
            try:
                settings[f"{name}_max_header_len"] = float(
                    s.get(f"sieve_{name}_max_header", "0") or 0)
            except ValueError:
                settings[f"{name}_max_header_len"] = 0.0
            for n in range(11):
                text = s.get(f"sieve_{name}_text_value{n}")
                if text is not None:
                    settings[f"{name}_text_value{n}"] = text
        hostname = self._cfg("hostname") or socket.gethostname()
        environment = {
            "domain": self.recipient.rpartition("@")[2] or hostname, "host": hostname,
            "location": "MDA", "name": "pydovecot Sieve", "phase": "during",
            "version": "1.0", "remote-host": "", "remote-ip": "",
        }
        return Context(
            envelope=Envelope(self.sender, self.recipient, self.recipient),
            limits=limits,
            delimiter=self._cfg("recipient_delimiter", "+"),
            mailbox_exists=self.mailbox_exists,
            duplicate_seen=lambda ident, handle: self.seen("duplicate", ident, handle),
            include=self.include,
            environment=environment,
            settings=settings,
        )

    def include(self, name: str, is_global: bool) -> dict | None:
        if "/" in name or name.startswith(".") or not name:
            raise SieveError(f"invalid script name '{name}'")
        if is_global:
            location = self.settings.get("sieve_global") or self.settings.get(
                "sieve_global_dir", "")
            directory, _ = self._location(location) if location else ("", {})
            extensions = self.global_extensions
        else:
            location = self.settings.get("sieve", "file:~/sieve;active=~/.dovecot.sieve")
            directory, options = self._location(location)
            if not os.path.isdir(directory):
                directory = self._path(self.settings.get("sieve_dir", "~/sieve"))
            extensions = self.extensions
        if not directory:
            return None
        path = os.path.join(directory, name + ".sieve")
        if not os.path.isfile(path):
            return None
        return compile_file(path, extensions, self.max_size)

    def cooperate(self, steps) -> defer.Deferred:
        """Run the executor's generator in slices of ``SLICE`` seconds."""
        d = defer.Deferred()

        def slice_():
            deadline = time.monotonic() + SLICE
            try:
                for _ in steps:
                    if time.monotonic() >= deadline:
                        reactor.callLater(0, slice_)
                        return
            except BaseException as e:  # noqa: BLE001  (handed to the caller)
                d.errback(e)
                return
            d.callback(None)

        slice_()
        return d

    def script_failed(self, script: Script, e: BaseException, compile_error: bool = False
                      ) -> None:
        what = "compile" if compile_error else "execute"
        reason = str(e) if isinstance(e, (SieveError, OSError)) else type(e).__name__
        if isinstance(e, OSError):
            reason = f"{e.strerror}: {e.filename}" if e.filename else str(e)
        log.error("sieve: failed to {what} script {path}: {reason}; "
                  "implicit keep will be performed", what=what, path=sanitize(script.path),
                  reason=sanitize(reason), log_prefix=self.prefix)
        if script.log_path:
            suffix = "validation failed." if compile_error else "execution failed."
            user_log(script.log_path, [f"{script.name}: {reason}.", f"{script.name}: error: "
                                                                     f"{suffix}"])

    # -- carrying the actions out -------------------------------------------

    @defer.inlineCallbacks
    def load_mailboxes(self):
        """Read the mailbox list once, before the scripts run (they test
        ``mailboxexists`` synchronously); the list is refreshed as this
        delivery creates mailboxes."""
        try:
            infos = yield self.storage.list_mailboxes()
        except (StorageError, OSError):
            infos = []
        self._mailboxes = {i.name for i in infos if "\\Noselect" not in i.attributes
                           and "\\NonExistent" not in i.attributes}

    def mailbox_exists(self, name: str) -> bool:
        """Whether ``name`` existed when the delivery began (or was made by it)."""
        if name.upper() == "INBOX":
            return True
        return name in self._mailboxes

    @defer.inlineCallbacks
    def mailbox_answers(self, name: str):
        """Whether the storage knows ``name`` (STATUS answers)."""
        try:
            yield self.storage.status(name)
        except (StorageError, OSError):
            return False
        return True

    @defer.inlineCallbacks
    def commit(self, message: Message, result: Result):
        outcome = Outcome()
        data = message.as_bytes()
        keep_failed = False
        msgid = sanitize(self.msgid or "<none>")
        for action in list(result.actions):
            try:
                if action.kind == "store":
                    uid = yield self.store(action.target, data, action.flags, action.create)
                    outcome.stored.append(action.target)
                    if not outcome.mailbox:
                        outcome.uid, outcome.mailbox = uid, action.target
                    log.info("sieve: msgid={msgid}: stored mail into mailbox '{box}'",
                             msgid=msgid, box=sanitize(action.target), log_prefix=self.prefix)
                elif action.kind == "redirect":
                    yield self.redirect(message, action.target)
                elif action.kind == "vacation":
                    yield self.vacation(message, action.params)
                elif action.kind == "ereject" and self.protocol_reject:
                    reason = " ".join(action.target.split())[:200] or "Rejected"
                    log.info("sieve: msgid={msgid}: rejected at the protocol level (ereject)",
                             msgid=msgid, log_prefix=self.prefix)
                    raise ProtocolReject(sanitize(reason, 200))
                elif action.kind in ("reject", "ereject"):
                    yield self.reject(message, action.target)
                elif action.kind == "discard":
                    log.info("sieve: msgid={msgid}: marked message to be discarded if not "
                             "explicitly delivered (discard action)", msgid=msgid,
                             log_prefix=self.prefix)
            except (StorageError, OSError, SieveError, error.ProcessTerminated,
                    smtplib.SMTPException) as e:
                log.error("sieve: msgid={msgid}: {kind} action failed: {e}", msgid=msgid,
                          kind=action.kind, e=sanitize(str(e)), log_prefix=self.prefix)
                if action.kind in ("store", "redirect"):
                    keep_failed = True
        for ident, handle, seconds in result.duplicates:
            self.mark("duplicate", ident, handle, seconds)
        keep_box = self.default_mailbox
        if (result.implicit_keep or keep_failed) and keep_box not in outcome.stored:
            flags = result.keep_flags if result.implicit_keep else []
            uid = None
            if keep_box != "INBOX":
                try:  # the +detail mailbox; INBOX when it can't be used
                    uid = yield self.store(keep_box, data, flags, False)
                except (StorageError, OSError):
                    keep_box = "INBOX"
            if uid is None and keep_box not in outcome.stored:
                keep_box = "INBOX"
                uid = yield self.store(keep_box, data, flags, False)  # a failure fails delivery
            if uid is not None:
                outcome.stored.append(keep_box)
                outcome.uid, outcome.mailbox = uid, keep_box
                log.info("sieve: msgid={msgid}: stored mail into mailbox '{box}'", msgid=msgid,
                         box=sanitize(keep_box), log_prefix=self.prefix)
        self.save_dupes()
        return outcome

    @defer.inlineCallbacks
    def store(self, box: str, data: bytes, flags: list[str], create: bool):
        """Save into ``box`` (creating it if asked); fires with the UID."""
        if box.upper() == "INBOX":
            box = "INBOX"
        exists = box == "INBOX" or (yield self.mailbox_answers(box))
        if not exists:
            autocreate = self._cfg("lda_mailbox_autocreate", "no") == "yes"
            if not (create or autocreate):
                raise StorageError(f"Mailbox doesn't exist: {box}")
            try:
                yield self.storage.create(box)
            except MailboxExists:
                pass
            self._mailboxes.add(box)
            if self._cfg("lda_mailbox_autosubscribe", "no") == "yes":
                yield self.storage.subscribe(box)
        _validity, uid = yield self.storage.append(box, io.BytesIO(data), flags)
        return uid

    def user_email(self) -> str:
        return self.settings.get("sieve_user_email") or (
            self.recipient if "@" in self.recipient else self.user)

    @defer.inlineCallbacks
    def redirect(self, message: Message, to: str):
        mine = self.user_email().lower()
        if any(mine in v.lower() for v in message.values("x-sieve-redirected-from")):
            log.info("sieve: msgid={msgid}: not forwarding message to <{to}>: the "
                     "`x-sieve-redirected-from' header indicates a mail loop",
                     msgid=sanitize(self.msgid), to=sanitize(to), log_prefix=self.prefix)
            return
        ident = f"{self.msgid}\0{to.lower()}"
        if self.msgid and self.seen("redirect", ident, ""):
            log.info("sieve: msgid={msgid}: discarded duplicate forward to <{to}>",
                     msgid=sanitize(self.msgid), to=sanitize(to), log_prefix=self.prefix)
            return
        headers = [h for n, h in enumerate(message.headers)
                   if not (n == 0 and h[0].lower() == "return-path")]
        head = (f"X-Sieve: {X_SIEVE}\r\n"
                f"X-Sieve-Redirected-From: {_header_safe(self.user_email())}\r\n") + "".join(
            f"{k}:{v}\r\n" for k, v in headers)
        data = head.encode("utf-8", "surrogateescape") + b"\r\n" + message.body
        yield self.send(self.redirect_sender(), [to], data)
        self.mark("redirect", ident, "", self._time("sieve_redirect_duplicate_period",
                                                    12 * 3600))
        log.info("sieve: msgid={msgid}: forwarded to <{to}>", msgid=sanitize(self.msgid),
                 to=sanitize(to), log_prefix=self.prefix)

    def redirect_sender(self) -> str:
        if not self.sender:
            return ""
        how = self.settings.get("sieve_redirect_envelope_from", "sender").strip()
        if how in ("", "sender"):
            return self.sender
        if how in ("recipient", "orig_recipient"):
            return self.recipient
        if how == "user_email":
            return self.user_email()
        if how == "postmaster":
            return self.postmaster()
        if how.startswith("<") and how.endswith(">"):
            return how[1:-1]
        return self.sender

    def postmaster(self) -> str:
        value = self._cfg("postmaster_address", "")
        if not value or "%" in value:
            domain = self.recipient.rpartition("@")[2] or (
                self._cfg("hostname") or socket.gethostname())
            return f"postmaster@{domain}"
        return value

    @defer.inlineCallbacks
    def vacation(self, message: Message, params: dict):
        sender = self.sender
        msgid = sanitize(self.msgid)

        def skip(why: str):
            log.info("sieve: msgid={msgid}: discarded vacation reply to <{to}>: {why}",
                     msgid=msgid, to=sanitize(sender), why=why, log_prefix=self.prefix)

        if not sender:
            return skip("the envelope sender is null")
        local = sender.rpartition("@")[0].lower()
        if local in SYSTEM_LOCALPARTS or local.endswith("-request") or local.startswith(
                "owner-"):
            return skip("the sender is a system address")
        if any(message.values(h) for h in LIST_HEADERS):
            return skip("the message is from a mailing list")
        auto = [v.strip().lower() for v in message.values("auto-submitted")]
        if any(v and not v.startswith("no") for v in auto):
            return skip("the message is auto-submitted")
        if any(v.strip().lower() in ("bulk", "list", "junk")
               for v in message.values("precedence")):
            return skip("the message has a bulk precedence")
        mine = {a.lower() for a in [self.recipient, self.user_email()] + params["addresses"]
                if a}
        if self.settings.get("sieve_vacation_use_original_recipient", "no") == "yes" and \
                self.orig_recipient:
            mine.add(self.orig_recipient.lower())
        if sender.lower() in mine:
            return skip("the sender is the recipient")
        if self.settings.get("sieve_vacation_dont_check_recipient", "no") != "yes":
            found = {a.lower() for a in parse_addresses(
                [v for h in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
                 for v in message.values(h)])}
            if not found & mine:
                return skip("the recipient is not in the message's To/Cc")
        handle = params["handle"]
        if self.seen("vacation", sender.lower(), handle):
            return skip("already responded to this sender")
        data = self.vacation_message(message, params)
        from_sender = ""
        if self.settings.get("sieve_vacation_send_from_recipient", "no") == "yes":
            from_sender = self.recipient
        yield self.send(from_sender, [sender], data)
        self.mark("vacation", sender.lower(), handle, params["period"])
        log.info("sieve: msgid={msgid}: sent vacation response to <{to}>", msgid=msgid,
                 to=sanitize(sender), log_prefix=self.prefix)

    def vacation_message(self, message: Message, params: dict) -> bytes:
        subject = params["subject"]
        if subject is None:
            original = (message.values("subject") or [""])[0]
            template = self.settings.get("sieve_vacation_default_subject_template", "")
            if template and original:
                subject = template.replace("%{subject}", original).replace("%$", original)
            else:
                subject = self.settings.get("sieve_vacation_default_subject") or (
                    f"Auto: {original}" if original else "Automated reply")
        subject = subject[:self._int("sieve_vacation_max_subject_codepoints", 256)]
        sender = params["from"] or self.recipient
        orig_id = (message.raw_values("message-id") or [""])[0]
        refs = " ".join(message.raw_values("references") + ([orig_id] if orig_id else []))
        domain = sender.rpartition("@")[2] or "localhost"
        lines = [
            f"From: {_header_safe(sender if '<' in sender else '<' + sender + '>')}",
            f"To: <{_header_safe(self.sender)}>",
            f"Subject: {_encode_header(subject)}",
            "Auto-Submitted: auto-replied (vacation)",
            "Precedence: bulk",
            "X-Auto-Response-Suppress: All",
            f"X-Sieve: {X_SIEVE}",
            f"Message-ID: <{uuid.uuid4().hex}.sieve@{domain}>",
            f"Date: {email.utils.formatdate(localtime=True)}",
        ]
        if orig_id:
            lines.append(f"In-Reply-To: {_header_safe(orig_id)}")
            lines.append(f"References: {_header_safe(refs)}")
        lines.append("MIME-Version: 1.0")
        reason = params["reason"].replace("\r\n", "\n").replace("\n", "\r\n")
        if params["mime"]:
            return ("\r\n".join(lines) + "\r\n" + reason).encode("utf-8")
        lines += ["Content-Type: text/plain; charset=utf-8",
                  "Content-Transfer-Encoding: 8bit"]
        return ("\r\n".join(lines) + "\r\n\r\n" + reason + ("" if reason.endswith("\r\n")
                                                              else "\r\n")).encode("utf-8")

    @defer.inlineCallbacks
    def reject(self, message: Message, reason: str):
        if not self.sender:
            log.info("sieve: msgid={msgid}: not sending reject message to null sender",
                     msgid=sanitize(self.msgid), log_prefix=self.prefix)
            return
        boundary = f"{uuid.uuid4().hex}/{self._cfg('hostname') or socket.gethostname()}"
        orig_id = (message.raw_values("message-id") or [""])[0]
        hostname = self._cfg("hostname") or socket.gethostname()
        headers = "".join(f"{k}:{v}\r\n" for k, v in message.headers)
        reason = reason.replace("\r\n", "\n").replace("\n", "\r\n")
        text = (
            f"From: Postmaster <{self.postmaster()}>\r\n"
            f"To: <{_header_safe(self.sender)}>\r\n"
            f"Message-ID: <{uuid.uuid4().hex}.sieve@{hostname}>\r\n"
            "Subject: Automatically rejected mail\r\n"
            "Auto-Submitted: auto-replied (rejected)\r\n"
            "Precedence: bulk\r\n"
            f"X-Sieve: {X_SIEVE}\r\n"
            f"Date: {email.utils.formatdate(localtime=True)}\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=disposition-notification;\r\n"
            f"\tboundary=\"{boundary}\"\r\n\r\n"
            "This is a MIME-encapsulated message\r\n\r\n"
            f"--{boundary}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Disposition: inline\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"Your message to <{_header_safe(self.recipient)}> was automatically rejected:\r\n"
            f"{reason}\r\n"
            f"--{boundary}\r\n"
            "Content-Type: message/disposition-notification\r\n\r\n"
            f"Reporting-UA: {hostname}; pydovecot Mail Delivery Agent\r\n"
            f"Final-Recipient: rfc822; {_header_safe(self.recipient)}\r\n"
            + (f"Original-Message-ID: {orig_id}\r\n" if orig_id else "")
            + "Disposition: automatic-action/MDN-sent-automatically; deleted\r\n\r\n"
            f"--{boundary}\r\n"
            "Content-Type: message/rfc822\r\n\r\n"
        ).encode("utf-8", "replace")
        data = text + headers.encode("utf-8", "surrogateescape") + b"\r\n" + \
            f"--{boundary}--\r\n".encode()
        yield self.send("", [self.sender], data)
        log.info("sieve: msgid={msgid}: rejected message from <{sender}> (reject)",
                 msgid=sanitize(self.msgid), sender=sanitize(self.sender),
                 log_prefix=self.prefix)

    # -- outgoing mail -------------------------------------------------------

    def sendmail(self, sender: str, recipients: list[str], data: bytes) -> defer.Deferred:
        """Through ``submission_host`` (SMTP) if set, else ``sendmail_path``
        as Dovecot runs it: ``sendmail -i -f SENDER -- RCPT…``."""
        host = self._cfg("submission_host", "")
        if host:
            return threads.deferToThread(_smtp_send, host, sender, recipients, data)
        argv = self._cfg("sendmail_path", "/usr/sbin/sendmail").split()
        argv += ["-i", "-f", sender or "<>", "--", *recipients]
        return _spawn(argv, data)

    # -- response tracking -----------------------------------------------------

    def _dupes_path(self) -> str:
        return os.path.join(self.home, ".pydovecot.lda-dupes") if self.home else ""

    def dupes(self) -> dict:
        if self._dupes is None:
            self._dupes = {}
            path = self._dupes_path()
            if path:
                try:
                    with open(path, "rb") as f:
                        doc = json.loads(f.read(4 << 20))
                    if isinstance(doc, dict):
                        now = time.time()
                        self._dupes = {k: v for k, v in doc.items()
                                       if isinstance(v, (int, float)) and v > now}
                except (OSError, ValueError, RecursionError):
                    pass
            self._dirty = False
        return self._dupes

    @staticmethod
    def _key(kind: str, ident: str, handle: str) -> str:
        return kind + ":" + hashlib.sha256(f"{ident}\0{handle}".encode(
            "utf-8", "surrogateescape")).hexdigest()[:40]

    def seen(self, kind: str, ident: str, handle: str) -> bool:
        expiry = self.dupes().get(self._key(kind, ident, handle))
        return expiry is not None and expiry > time.time()

    def mark(self, kind: str, ident: str, handle: str, seconds: float) -> None:
        dupes = self.dupes()
        dupes[self._key(kind, ident, handle)] = time.time() + max(seconds, 1)
        if len(dupes) > MAX_DUPES:
            for key in sorted(dupes, key=dupes.get)[:len(dupes) - MAX_DUPES]:
                del dupes[key]
        self._dirty = True

    def save_dupes(self) -> None:
        path = self._dupes_path()
        if not path or self._dupes is None or not getattr(self, "_dirty", False):
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self._dupes, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            log.error("sieve: cannot save {path}: {e}", path=sanitize(path), e=sanitize(e),
                      log_prefix=self.prefix)


def _snapshot(result: Result) -> Result:
    """A copy to go back to when a script fails half-way."""
    return copy.deepcopy(result)


def _script_name(path: str) -> str:
    base = os.path.basename(os.path.realpath(path))
    return base[:-6] if base.endswith(".sieve") else base


def user_log(path: str, lines: list[str]) -> None:
    """Append to the user's sieve log as Pigeonhole does (rotated at 10 KiB)."""
    try:
        try:
            if os.path.getsize(path) > USER_LOG_MAX:
                os.replace(path, path + ".0")
        except OSError:
            pass
        new = not os.path.exists(path)
        with open(path, "a", encoding="utf-8", errors="replace") as f:
            if new:
                f.write(f"sieve: info: started log at {email.utils.formatdate(localtime=True)}"
                        ".\n")
            for line in lines:
                f.write(sanitize(line) + "\n")
    except OSError as e:
        log.error("sieve: cannot write {path}: {e}", path=sanitize(path), e=sanitize(e))


def _header_safe(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def _encode_header(value: str) -> str:
    value = _header_safe(value)
    if value.isascii():
        return value
    return email.header.Header(value, "utf-8").encode()


class _Feed(protocol.ProcessProtocol):
    def __init__(self, data: bytes, done: defer.Deferred):
        self.data = data
        self.done = done
        self.output = b""

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if len(self.output) < 4096:
            self.output += data[:4096]

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if self.done.called:
            return
        if reason.check(error.ProcessDone):
            self.done.callback(None)
        else:
            self.done.errback(SieveError(
                f"sendmail failed: {reason.value} {self.output[:200]!r}"))


def _spawn(argv: list[str], data: bytes) -> defer.Deferred:
    done: defer.Deferred = defer.Deferred()
    proto = _Feed(data, done)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    transport = reactor.spawnProcess(proto, argv[0], argv, env=env)

    def too_slow():
        if not done.called:
            try:
                transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            done.errback(SieveError("sendmail timed out"))

    def reap():
        # The mail process runs without Twisted's SIGCHLD handler, so a
        # child that exits after closing its output is reaped here.
        if done.called:
            return
        pid = transport.pid
        if pid is None:
            return
        transport.reapProcess()
        if not done.called and transport.pid is not None and not os.path.exists(
                f"/proc/{pid}"):
            done.callback(None)  # reaped elsewhere: its status is lost

    timer = reactor.callLater(SENDMAIL_TIMEOUT, too_slow)
    poller = task.LoopingCall(reap)
    poller.start(0.01, now=False)

    def finished(result):
        if timer.active():
            timer.cancel()
        if poller.running:
            poller.stop()
        return result

    done.addBoth(finished)
    return done


def _smtp_send(host: str, sender: str, recipients: list[str], data: bytes) -> None:
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "25")
    with smtplib.SMTP(name or host, int(port or 25), timeout=SENDMAIL_TIMEOUT) as smtp:
        smtp.sendmail(sender, recipients, data)

