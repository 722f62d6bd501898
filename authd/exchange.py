"""Drive one SASL exchange against authd's engine, independent of transport.

:class:`SASLExchange` runs a mechanism (authd.sasl, authd.mechanisms) step
by step: it sends challenges back, verifies plaintext credentials through
the engine's passdb chain (or its master-user chain), fetches stored
credentials for CRAM-MD5/SCRAM via each passdb's ``lookup_credentials``,
and after a successful proof runs the same post-passdb checks as a plain
login (nologin, allow_nets, the userdb chain).  It knows nothing of AMP,
cookies or failure delays: auth-login (authd.server.LoginProtocol) adds the
cookie and the delay, the Dovecot auth-client protocol adds its own framing.

Trust: the client's SASL data is untrusted and goes only to mechanisms,
which fail cleanly on bad input; a crash in a mechanism or a backend ends
the exchange with a temporary failure and a logged traceback, never an
exception to the caller.  The :class:`~authd.sasl.SASLContext` (channel
binding, client certificate) is trusted: the caller got it from the login
process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from authd import sasl, schemes
from authd.interfaces import AuthRequest, PassdbResult, PassdbStatus
from pydovecot.log import sanitize
from pydovecot.stats import events

if TYPE_CHECKING:
    from authd.server import AuthEngine

log = Logger()

AUTH_FAILED = "Authentication failed."
TEMP_FAILED = "Temporary authentication failure."
UNSUPPORTED = "Unsupported authentication mechanism."


@dataclass
class AuthOutcome:
    """The end of one authentication attempt."""

    ok: bool
    user: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    reason: str = AUTH_FAILED
    temporary: bool = False
    nodelay: bool = False


@dataclass
class Reply:
    """The answer to one step: ``continue`` (send ``challenge``), ``ok`` or
    ``fail`` (``reason`` may be shown; ``temporary`` means backend trouble)."""

    status: str
    challenge: bytes = b""
    user: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    temporary: bool = False
    nodelay: bool = False
    outcome: AuthOutcome | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _is_master(db_settings: Any) -> bool:
    options = getattr(db_settings, "options", None) or {}
    return str(options.get("master", "")).lower() in ("yes", "y", "true", "1")


def credential_passdbs(engine: AuthEngine) -> list[tuple[Any, Any]]:
    """The (non-master) passdbs that can hand out stored credentials."""
    return [
        (db, dbs)
        for db, dbs in engine.passdbs
        if not _is_master(dbs) and getattr(db, "supports_credentials", True)
    ]


def available_mechanisms(engine: AuthEngine, secured: bool) -> list[str]:
    """auth_mechanisms that can work with this engine's passdbs.

    CRAM-MD5 and SCRAM need a passdb that can supply credentials; OAUTHBEARER
    and XOAUTH2 need an oauth2 passdb.  -PLUS mechanisms are listed: the
    login process leaves them out on connections without TLS."""
    names = []
    has_credentials = bool(credential_passdbs(engine))
    has_oauth2 = any(getattr(db, "driver", "") == "oauth2" for db, _ in engine.passdbs)
    for name in engine.mechanisms(secured):
        if name in sasl.NEEDS_CREDENTIALS and not has_credentials:
            continue
        if name in sasl.NEEDS_OAUTH2 and not has_oauth2:
            continue
        names.append(name)
    return names


class SASLExchange:
    """One SASL exchange: :meth:`start`, then :meth:`next` while it says
    ``continue``.  Each returns a Deferred firing with a :class:`Reply`;
    it never errbacks."""

    def __init__(
        self,
        engine: AuthEngine,
        mechanism_name: str,
        request: AuthRequest,
        context: sasl.SASLContext | None = None,
    ):
        self.engine = engine
        self.name = mechanism_name.upper()
        self.request = request
        request.mech = self.name
        self.context = context if context is not None else sasl.SASLContext()
        if self.context.settings is None:
            self.context.settings = engine.settings
        self.context.service = self.context.service or request.service
        self.context.secured = self.context.secured or request.secured
        self.mech: sasl.ISASLMechanism | None = None
        self.busy = False
        self.finished = False
        self._passdb_result: PassdbResult | None = None
        self._failing: Reply | None = None  # a failure the mechanism is still telling
        self.started = time.monotonic()

    # -- public ------------------------------------------------------------

    def start(self, initial: bytes | None = None) -> defer.Deferred:
        """Begin (``initial``: the SASL-IR, or None)."""
        if self.mech is not None or self.finished:
            return defer.succeed(self._end(Reply("fail", reason="Exchange already started")))
        reason = self._refuse()
        if reason:
            return defer.succeed(self._end(Reply("fail", reason=reason, nodelay=True)))
        self.mech = sasl.create(self.name, self.context)
        if self.mech is None:
            return defer.succeed(self._end(Reply("fail", reason=UNSUPPORTED, nodelay=True)))
        return self._advance(initial)

    def next(self, data: bytes) -> defer.Deferred:
        """The client's answer to the last challenge."""
        if self.mech is None or self.finished or self.busy:
            return defer.succeed(Reply("fail", reason="Unexpected SASL response", nodelay=True))
        return self._advance(data)

    def cancel(self) -> None:
        """Forget the exchange (the client aborted)."""
        self.finished = True

    # -- driving -------------------------------------------------------------

    def _refuse(self) -> str:
        if self.name not in available_mechanisms(self.engine, self.request.secured):
            return UNSUPPORTED
        if self.name in sasl.NEEDS_CHANNEL_BINDING and not self.context.channel_binding:
            return "Channel binding is only available on TLS connections."
        return ""

    def _advance(self, data: bytes | None) -> defer.Deferred:
        self.busy = True
        d = self._run(data)
        d.addErrback(self._crashed)
        d.addCallback(self._settle)
        return d

    def _settle(self, reply: Reply) -> Reply:
        self.busy = False
        return reply if reply.status == "continue" else self._end(reply)

    def _end(self, reply: Reply) -> Reply:
        self.finished = True
        if reply.status == "fail" and not reply.reason:
            reply.reason = AUTH_FAILED
        self._emit(reply)
        return reply

    def _emit(self, reply: Reply) -> None:
        """Dovecot's ``auth_request_finished`` event: ``success=yes`` only
        on success (Dovecot 2.3 sets no success field on a failure)."""
        request = self.request
        events.emit("auth_request_finished", duration=events.since(self.started),
                    success="yes" if reply.ok else None, mechanism=self.name,
                    service=request.service, user=(reply.user if reply.ok else None)
                    or request.user or request.original_user or None,
                    session=request.session or None, local_ip=request.local_ip or None,
                    remote_ip=request.remote_ip or None)

    def _crashed(self, failure: Failure) -> Reply:
        log.failure("{who}: authentication crashed", failure, who=self._who())
        return Reply("fail", reason=TEMP_FAILED, temporary=True)

    def _who(self) -> str:
        return self.request.log_id(self.name.lower())

    @defer.inlineCallbacks
    def _run(self, data: bytes | None):
        if self._failing is not None:  # the client acknowledged the error
            return self._failing
        assert self.mech is not None
        step = self.mech.step(data)
        while True:
            if isinstance(step, sasl.Continue):
                return Reply("continue", challenge=step.challenge)
            if isinstance(step, sasl.Fail):
                if self.engine.settings.auth_verbose:
                    log.info("{who}: {reason}", who=self._who(), reason=sanitize(step.reason))
                return self._mech_failed(step.reason, step.temporary)
            if isinstance(step, sasl.PlainCredentials):
                outcome = yield self._plain(step)
                return self._outcome(outcome)
            if isinstance(step, sasl.NeedCredentials):
                step = yield self._credentials(step)
                continue
            if isinstance(step, sasl.Verified):
                outcome = yield self._verified(step)
                return self._outcome(outcome)
            raise TypeError(f"unknown SASL step {step!r}")

    def _mech_failed(self, reason: str, temporary: bool) -> Reply:
        """A refusal; mechanisms with an error dialogue (OAUTHBEARER) get to
        send it first."""
        reply = Reply("fail", reason=reason or AUTH_FAILED, temporary=temporary)
        failed = getattr(self.mech, "failed", None)
        if failed is not None and self._failing is None:
            step = failed(reply.reason, temporary)
            if isinstance(step, sasl.Continue):
                self._failing = reply
                return Reply("continue", challenge=step.challenge)
        return reply

    def _outcome(self, outcome: AuthOutcome) -> Reply:
        if outcome.ok:
            return Reply("ok", user=outcome.user, fields=outcome.fields, outcome=outcome)
        reply = self._mech_failed(outcome.reason, outcome.temporary)
        reply.nodelay = outcome.nodelay
        reply.outcome = outcome
        return reply

    # -- plaintext credentials ---------------------------------------------

    def _plain(self, step: sasl.PlainCredentials) -> defer.Deferred:
        separator = getattr(self.engine.settings, "auth_master_user_separator", "")
        if separator and separator in step.authcid:
            login_user, _, master_user = step.authcid.partition(separator)
            return self._master(login_user, master_user, step.password)
        return self.engine.authenticate(self.request, step.authcid, step.password)

    def _master(self, login_user: str, master_user: str, password: str) -> defer.Deferred:
        """``login_user*master_user`` with the master's password."""
        method = getattr(self.engine, "authenticate_master", None)
        if method is None or not login_user or not master_user:
            log.info("{who}: master user login refused (no master passdb)", who=self._who())
            return defer.succeed(AuthOutcome(False))
        return defer.maybeDeferred(method, self.request, login_user, master_user, password)

    # -- stored credentials --------------------------------------------------

    def _set_user(self, authcid: str) -> bool:
        user = self.engine.normalize_user(authcid)
        if user is None:
            if self.engine.settings.auth_verbose:
                log.info("{who}: Invalid username", who=self._who())
            return False
        self.request.original_user = authcid
        self.request.user = user
        return True

    @defer.inlineCallbacks
    def _lookup(self, wanted: tuple[str, ...]):
        """Ask the engine's passdb chain for the user's password in each of
        ``wanted`` in turn: (PassdbResult, scheme) of the first it has, or
        (PassdbResult, None).  With ``wanted`` empty, any passdb that knows
        the user will do (EXTERNAL)."""
        result = PassdbResult(PassdbStatus.USER_UNKNOWN)
        for scheme in wanted or ("PLAIN",):
            result = yield self.engine.lookup_credentials(self.request, scheme)
            if result.ok or (not wanted and result.status is PassdbStatus.SCHEME_NOT_AVAILABLE):
                return result, scheme
            if result.status is not PassdbStatus.SCHEME_NOT_AVAILABLE:
                break
        if self.engine.settings.auth_verbose and result.status is not PassdbStatus.INTERNAL_FAILURE:
            log.info("{who}: no usable credentials ({status})", who=self._who(),
                     status=result.status.value)
        return result, None

    @defer.inlineCallbacks
    def _credentials(self, step: sasl.NeedCredentials):
        if not self._set_user(step.authcid):
            return sasl.Fail(AUTH_FAILED)
        result, scheme = yield self._lookup(tuple(s.upper() for s in step.schemes))
        if scheme is None:
            if result.status is PassdbStatus.INTERNAL_FAILURE:
                return sasl.Fail(TEMP_FAILED, temporary=True)
            return sasl.Fail(AUTH_FAILED)
        self._passdb_result = result
        try:
            name, encoding, data = schemes.split_scheme(result.credentials or "", scheme)
            if encoding is not None and name in ("PLAIN", "CLEARTEXT"):
                data = schemes.decode(data, encoding).decode("utf-8")
        except (schemes.SchemeError, UnicodeDecodeError) as e:
            log.error("{who}: invalid credentials in passdb: {e}", who=self._who(), e=e)
            return sasl.Fail(TEMP_FAILED, temporary=True)
        credentials = getattr(self.mech, "credentials", None)
        if credentials is None:
            raise TypeError(f"{self.name} asked for credentials but takes none")
        return credentials(name, data)

    # -- a proven identity ----------------------------------------------------

    @defer.inlineCallbacks
    def _verified(self, step: sasl.Verified):
        if step.authzid and step.authzid != step.authcid:
            log.info("{who}: authorization as another user refused", who=self._who())
            return AuthOutcome(False)
        result = self._passdb_result
        if result is None:
            if not step.passdb_lookup:
                self.request.original_user = step.authcid
                self.request.user = step.authcid
                result = PassdbResult(PassdbStatus.OK)
            else:
                if not self._set_user(step.authcid):
                    return AuthOutcome(False)
                result, scheme = yield self._lookup(())
                if scheme is None:
                    temporary = result.status is PassdbStatus.INTERNAL_FAILURE
                    return AuthOutcome(False, reason=TEMP_FAILED if temporary else AUTH_FAILED,
                                       temporary=temporary)
                # The passdb knows the user; which password scheme it keeps
                # does not matter when the identity is proven otherwise.
                result = PassdbResult(PassdbStatus.OK, extra=result.extra)
        outcome = yield self.complete(result)
        return outcome


    def complete(self, result: PassdbResult) -> defer.Deferred:
        """After the passdb said yes: the engine's nologin, allow_nets and
        userdb steps, as for a plaintext login."""
        d = self.engine._after_passdb(result, self.request)
        reset = getattr(self.engine, "_penalty_reset", None)
        if reset is not None:
            d.addCallback(reset, self.request)
        return d
