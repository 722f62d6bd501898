"""Passdb and userdb chains with Dovecot 2.3's result rules.

Each ``passdb { }`` section may carry:

- ``result_success`` (default ``return-ok``), ``result_failure`` (default
  ``continue``; user unknown and password mismatch), ``result_internalfail``
  (default ``continue``): one of ``return`` (stop; the end result is this
  passdb's, unless an earlier one already succeeded), ``return-ok``,
  ``return-fail``, ``continue``, ``continue-ok``, ``continue-fail``.  After
  a success that continues, later passdbs only look the user up (the
  password is not checked again; a driver that needs the password — PAM —
  gets it again).  At the end the result is OK if the last rule that set
  one said ok (``return-ok``/``continue-ok``), else a temporary failure if
  any passdb failed internally, else a failure if the last such rule said
  fail, else the last passdb's own result.
- ``skip = never | authenticated | unauthenticated``: skip the passdb when
  an earlier one did (not) set success.
- ``deny = yes``: a deny list; finding the user there refuses the login at
  once (no rules apply), an internal failure is a temporary failure at once,
  "unknown user" goes on by the rules.
- ``master = yes``: a master passdb, used only for ``login_user*master_user``
  logins (:meth:`PassdbChain.verify_master`): it verifies the master user's
  password; on success the request becomes the login user's.  With
  ``result_success = return-ok`` (the default) that is the end of the passdb
  lookup; with ``continue`` (or its old alias ``pass = yes``) the normal
  passdbs then look the login user up without a password check, so the
  login user must exist there and may be refused (``nologin``, deny lists).
- extra fields of a passdb that failed are dropped; those of successful
  ones accumulate, later ones winning.

``userdb { }`` sections take the same ``result_*`` (defaults return-ok /
continue / continue) and ``skip = never | found | notfound``; fields of
found users accumulate over continuing userdbs.  The end is the fields if
some userdb set success, else an :class:`AuthBackendError` if any failed
internally, else None (unknown).

Results may come from :class:`~authd.cache.AuthCache`; see there.

Trust: settings are root's (bad values raise ValueError at startup);
results are the backends'; user names and passwords from clients are only
handed to backends.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger

from authd.cache import DEFAULT_CACHE_KEY, AuthCache
from authd.interfaces import (
    AuthBackendError,
    AuthRequest,
    IPassdb,
    IUserdb,
    PassdbResult,
    PassdbStatus,
)
from authd.settings import AuthSettings, DbSettings, expand, expand_fields, parse_fields
from pydovecot.log import sanitize

log = Logger()


class Rule(enum.Enum):
    RETURN = "return"
    RETURN_OK = "return-ok"
    RETURN_FAIL = "return-fail"
    CONTINUE = "continue"
    CONTINUE_OK = "continue-ok"
    CONTINUE_FAIL = "continue-fail"

    @property
    def continues(self) -> bool:
        return self.value.startswith("continue")


def _bool(value: str, what: str) -> bool:
    v = value.strip().lower()
    if v in ("yes", "y", "true", "1"):
        return True
    if v in ("", "no", "n", "false", "0"):
        return False
    raise ValueError(f"{what}: invalid boolean '{value}'")


def _rule(options: dict[str, str], key: str, default: Rule, what: str) -> Rule:
    value = options.get(key, "").strip().lower()
    if not value:
        return default
    try:
        return Rule(value)
    except ValueError:
        names = ", ".join(r.value for r in Rule)
        raise ValueError(f"{what}: {key} = {value}: must be one of {names}") from None


def merge_fields(db: DbSettings, result: dict[str, str], values: dict[str, str],
                 base: dict[str, str] | None = None) -> dict[str, str]:
    """default_fields < ``base`` (earlier results) < result < override_fields."""
    merged = expand_fields(parse_fields(db.default_fields), values)
    merged.update(base or {})
    merged.update(result)
    merged.update(expand_fields(parse_fields(db.override_fields), values))
    return merged


@dataclass
class PassdbEntry:
    """One passdb section with its parsed chain settings."""

    db: IPassdb
    settings: DbSettings
    index: int
    result_success: Rule = Rule.RETURN_OK
    result_failure: Rule = Rule.CONTINUE
    result_internalfail: Rule = Rule.CONTINUE
    skip: str = "never"
    deny: bool = False
    master: bool = False
    cache_key: str = DEFAULT_CACHE_KEY

    @classmethod
    def build(cls, db: IPassdb, settings: DbSettings, index: int) -> PassdbEntry:
        opts = {k.lower(): str(v) for k, v in settings.options.items()}
        what = f"passdb {settings.driver}"
        success = _rule(opts, "result_success", Rule.RETURN_OK, what)
        if _bool(opts.get("pass", ""), what + ": pass"):
            if success is not Rule.RETURN_OK:
                raise ValueError(f"{what}: pass = yes and result_success can't be combined")
            success = Rule.CONTINUE
        skip = opts.get("skip", "never").strip().lower() or "never"
        if skip not in ("never", "authenticated", "unauthenticated"):
            raise ValueError(f"{what}: skip = {skip}: must be never, authenticated "
                             "or unauthenticated")
        return cls(
            db, settings, index,
            result_success=success,
            result_failure=_rule(opts, "result_failure", Rule.CONTINUE, what),
            result_internalfail=_rule(opts, "result_internalfail", Rule.CONTINUE, what),
            skip=skip,
            deny=_bool(opts.get("deny", ""), what + ": deny"),
            master=_bool(opts.get("master", ""), what + ": master"),
            cache_key=getattr(db, "cache_key", None) or opts.get("cache_key")
            or DEFAULT_CACHE_KEY,
        )

    def skipped(self, passdb_success: bool | None) -> bool:
        if self.skip == "authenticated":
            return bool(passdb_success)
        if self.skip == "unauthenticated":
            return not passdb_success
        return False


@dataclass
class UserdbEntry:
    """One userdb section with its parsed chain settings."""

    db: IUserdb
    settings: DbSettings
    index: int
    result_success: Rule = Rule.RETURN_OK
    result_failure: Rule = Rule.CONTINUE
    result_internalfail: Rule = Rule.CONTINUE
    skip: str = "never"
    cache_key: str = DEFAULT_CACHE_KEY

    @classmethod
    def build(cls, db: IUserdb, settings: DbSettings, index: int) -> UserdbEntry:
        opts = {k.lower(): str(v) for k, v in settings.options.items()}
        what = f"userdb {settings.driver}"
        skip = opts.get("skip", "never").strip().lower() or "never"
        if skip not in ("never", "found", "notfound"):
            raise ValueError(f"{what}: skip = {skip}: must be never, found or notfound")
        return cls(
            db, settings, index,
            result_success=_rule(opts, "result_success", Rule.RETURN_OK, what),
            result_failure=_rule(opts, "result_failure", Rule.CONTINUE, what),
            result_internalfail=_rule(opts, "result_internalfail", Rule.CONTINUE, what),
            skip=skip,
            cache_key=getattr(db, "cache_key", None) or opts.get("cache_key")
            or DEFAULT_CACHE_KEY,
        )

    def skipped(self, userdb_success: bool) -> bool:
        if self.skip == "found":
            return userdb_success
        if self.skip == "notfound":
            return not userdb_success
        return False


@dataclass
class _PassdbState:
    success: bool | None = None  # Dovecot's passdb_success; None: never set
    seen_internal: bool = False
    skip_password_check: bool = False
    lookup_only: bool = False  # a user lookup (no password at all): PAM can't
    extra: dict[str, str] = field(default_factory=dict)
    credentials: str | None = None
    login_user: str | None = None  # pending master login: the user to become
    master_user: str = ""


def _cache_key(template: str, prefix: str, request: AuthRequest) -> str:
    return f"{prefix}\t{expand(template, request.variables())}"


class PassdbChain:
    """The passdb sections of one authd, run by Dovecot's rules."""

    def __init__(
        self,
        passdbs: list[tuple[IPassdb, DbSettings]],
        settings: AuthSettings,
        cache: AuthCache | None = None,
        given_password: Callable[[str], str] = lambda password: "",
    ):
        entries = [PassdbEntry.build(db, s, i) for i, (db, s) in enumerate(passdbs)]
        self.normal = [e for e in entries if not e.master]
        self.masters = [e for e in entries if e.master]
        self.settings = settings
        self.cache = cache
        self.given_password = given_password

    # -- entry points ------------------------------------------------------

    def verify_plain(self, request: AuthRequest, password: str) -> defer.Deferred:
        """Verify ``password`` for ``request.user``; fires with a PassdbResult
        (INTERNAL_FAILURE means temporary, with ``error`` set)."""
        return self._run(request, self.normal, _PassdbState(), password=password)

    def lookup_credentials(self, request: AuthRequest, scheme: str) -> defer.Deferred:
        """Fetch stored credentials in ``scheme``, by the same rules."""
        return self._run(request, self.normal, _PassdbState(), scheme=scheme)

    def lookup_user(self, request: AuthRequest) -> defer.Deferred:
        """Does ``request.user`` exist?  A passdb lookup without a password
        check, by the same rules (static userdb's user verification); fires
        with a PassdbResult: OK, USER_UNKNOWN, SCHEME_NOT_AVAILABLE (no
        passdb can look users up: PAM) or INTERNAL_FAILURE."""
        state = _PassdbState(skip_password_check=True, lookup_only=True)
        return self._run(request, self.normal, state)

    def verify_master(self, request: AuthRequest, login_user: str, master_user: str,
                      password: str) -> defer.Deferred:
        """``login_user*master_user``: ``password`` is the master user's.
        On OK ``request.user`` is the login user and the result's extra has
        ``master_user``."""
        if not self.masters:
            log.info("{who}: no master passdbs: master login refused",
                     who=request.log_id("auth"))
            return defer.succeed(PassdbResult(PassdbStatus.PASSWORD_MISMATCH))
        request.user = master_user
        state = _PassdbState(login_user=login_user, master_user=master_user)
        return self._run(request, self.masters, state, password=password)

    # -- the loop ----------------------------------------------------------

    def _next(self, entries: list[PassdbEntry], start: int, state: _PassdbState) -> int:
        i = start
        while i < len(entries) and entries[i].skipped(state.success):
            i += 1
        return i

    @defer.inlineCallbacks
    def _call(self, entry: PassdbEntry, request: AuthRequest, state: _PassdbState,
              password: str | None, scheme: str | None):
        db = entry.db
        key = None
        use_cache = self.cache is not None and self.cache.enabled and scheme is None
        if use_cache and not state.skip_password_check:
            key = _cache_key(entry.cache_key, str(entry.index), request)
            cached = self.cache.passdb_get(key, password or "")
            if cached is not None:
                if self.settings.auth_debug:
                    log.debug("{who}: cache hit: {status}", who=request.log_id(db.driver),
                              status=cached.status.value)
                return cached
        try:
            if state.lookup_only and getattr(db, "needs_password", False):
                result = PassdbResult(PassdbStatus.SCHEME_NOT_AVAILABLE,
                                      error=f"{db.driver} can't look users up")
            elif scheme is not None:
                result = yield defer.maybeDeferred(
                    db.lookup_credentials, request.user, scheme, request)
            elif state.skip_password_check and not getattr(db, "needs_password", False):
                # A user lookup only: any stored password will do.
                result = yield defer.maybeDeferred(
                    db.lookup_credentials, request.user, "PLAIN", request)
                if result.status is PassdbStatus.SCHEME_NOT_AVAILABLE:
                    result = PassdbResult(PassdbStatus.OK, result.extra)
                result.credentials = None
            else:
                result = yield defer.maybeDeferred(
                    db.verify_plain, request.user, password or "", request)
        except Exception as e:  # a driver bug must not leak out
            log.failure("{who}: passdb failed", who=request.log_id(db.driver))
            result = PassdbResult(PassdbStatus.INTERNAL_FAILURE, error=f"passdb crashed: {e}")
        if not isinstance(result, PassdbResult):
            result = PassdbResult(PassdbStatus.INTERNAL_FAILURE,
                                  error=f"passdb returned {type(result).__name__}")
        if key is not None:
            self.cache.passdb_put(key, request.user, password or "", result)
        return result

    def _log(self, entry: PassdbEntry, request: AuthRequest, result: PassdbResult,
             password: str | None) -> None:
        who = request.log_id(entry.db.driver)
        status = result.status
        if status is PassdbStatus.INTERNAL_FAILURE:
            log.error("{who}: {error}", who=who, error=result.error or status.value)
        elif not self.settings.auth_verbose:
            return
        elif status is PassdbStatus.USER_UNKNOWN:
            log.info("{who}: unknown user", who=who)
        elif status is PassdbStatus.PASSWORD_MISMATCH:
            detail = f" ({result.error})" if result.error else ""
            given = self.given_password(password) if password is not None else ""
            log.info("{who}: Password mismatch{detail}{given}", who=who, detail=detail,
                     given=given)

    @defer.inlineCallbacks
    def _run(self, request: AuthRequest, entries: list[PassdbEntry], state: _PassdbState,
             password: str | None = None, scheme: str | None = None):
        i = self._next(entries, 0, state)
        if i >= len(entries):
            return PassdbResult(PassdbStatus.USER_UNKNOWN, error="no passdbs")
        failed_extra: dict[str, str] = {}
        while True:
            entry = entries[i]
            result: PassdbResult = yield self._call(entry, request, state, password, scheme)
            status = result.status
            if entry.deny and status is not PassdbStatus.USER_UNKNOWN:
                if status is PassdbStatus.INTERNAL_FAILURE:
                    self._log(entry, request, result, password)
                    return PassdbResult(status, error=result.error)
                log.info("{who}: User found from deny passdb",
                         who=request.log_id(entry.db.driver))
                return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, error="user is denied")
            self._log(entry, request, result, password)
            if status is PassdbStatus.OK:
                rule = entry.result_success
            elif status is PassdbStatus.INTERNAL_FAILURE:
                rule = entry.result_internalfail
            else:
                rule = entry.result_failure
            if rule in (Rule.RETURN_OK, Rule.CONTINUE_OK):
                state.success = True
            elif rule in (Rule.RETURN_FAIL, Rule.CONTINUE_FAIL):
                state.success = False
            if rule.continues and status is PassdbStatus.OK:
                state.skip_password_check = True
            if status is PassdbStatus.OK:
                state.extra = merge_fields(entry.settings, result.extra, request.variables(),
                                           state.extra)
                if result.credentials is not None:
                    state.credentials = result.credentials
                failed_extra = {}
            else:
                failed_extra = {k: v for k, v in result.extra.items() if k == "reason"}
            if state.login_user is not None and status is PassdbStatus.OK:
                log.info("{who}: Master user logging in as {login}",
                         who=request.log_id(entry.db.driver), login=sanitize(state.login_user))
                request.user = state.login_user
                request.original_user = state.login_user
                state.login_user = None
                state.extra.pop("user", None)  # the master's own name change
                entries, i = self.normal, self._next(self.normal, 0, state)
            else:
                i = self._next(entries, i + 1, state)
            if rule.continues and i < len(entries):
                if status is PassdbStatus.INTERNAL_FAILURE:
                    state.seen_internal = True
                continue
            break
        if state.login_user is not None:
            # No master passdb accepted the master user.
            status = (PassdbStatus.INTERNAL_FAILURE
                      if state.seen_internal or status is PassdbStatus.INTERNAL_FAILURE
                      else PassdbStatus.PASSWORD_MISMATCH)
            return PassdbResult(status, error=result.error)
        if state.success is True:
            extra = dict(state.extra)
            if state.master_user:
                extra["master_user"] = state.master_user
            return PassdbResult(PassdbStatus.OK, extra, credentials=state.credentials)
        if state.seen_internal:
            return PassdbResult(PassdbStatus.INTERNAL_FAILURE, error=result.error
                                or "an earlier passdb failed internally")
        if status is PassdbStatus.OK:
            if state.success is False:  # return-fail / continue-fail had the last word
                return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, error="refused by result rule")
            # ``return``/``continue`` after a success: the result as it is.
            return PassdbResult(PassdbStatus.OK, dict(state.extra),
                                credentials=state.credentials)
        return PassdbResult(status, failed_extra, error=result.error)


class UserdbChain:
    """The userdb sections of one authd, run by Dovecot's rules."""

    def __init__(
        self,
        userdbs: list[tuple[IUserdb, DbSettings]],
        settings: AuthSettings,
        cache: AuthCache | None = None,
    ):
        self.entries = [UserdbEntry.build(db, s, i) for i, (db, s) in enumerate(userdbs)]
        self.settings = settings
        self.cache = cache

    @defer.inlineCallbacks
    def _call(self, entry: UserdbEntry, request: AuthRequest):
        """(found fields or None, error or None)."""
        db = entry.db
        who = request.log_id(db.driver)
        key = None
        if self.cache is not None and self.cache.enabled:
            key = _cache_key(entry.cache_key, str(entry.index), request)
            hit, fields = self.cache.userdb_get(key)
            if hit:
                return fields, None
        try:
            fields = yield defer.maybeDeferred(db.lookup, request.user, request)
        except AuthBackendError as e:
            log.error("{who}: {error}", who=who, error=str(e))
            return None, str(e) or "userdb failed"
        except Exception as e:
            log.failure("{who}: userdb failed", who=who)
            return None, f"userdb crashed: {e}"
        if fields is None and self.settings.auth_verbose:
            log.info("{who}: unknown user (userdb)", who=who)
        if key is not None:
            self.cache.userdb_put(key, request.user, fields)
        return fields, None

    @defer.inlineCallbacks
    def lookup(self, request: AuthRequest, prefetched: dict[str, str]):
        """Fire with the merged fields (``prefetched`` — the passdb's
        ``userdb_*`` — first), None if unknown; AuthBackendError if a userdb
        failed and none succeeded."""
        success = False
        seen_internal = False
        reply = dict(prefetched)
        error: str | None = None
        i = 0
        while i < len(self.entries) and self.entries[i].skipped(success):
            i += 1
        if i >= len(self.entries):
            return None
        while True:
            entry = self.entries[i]
            fields, error = yield self._call(entry, request)
            if error is not None:
                rule = entry.result_internalfail
            elif fields is not None:
                rule = entry.result_success
            else:
                rule = entry.result_failure
            if rule in (Rule.RETURN_OK, Rule.CONTINUE_OK):
                success = True
            elif rule in (Rule.RETURN_FAIL, Rule.CONTINUE_FAIL):
                success = False
            if fields is not None:
                values = dict(request.variables(), home=fields.get("home", "")
                              or reply.get("home", ""))
                reply = merge_fields(entry.settings, fields, values, reply)
            if rule is Rule.RETURN and fields is not None:
                return reply
            i += 1
            while i < len(self.entries) and self.entries[i].skipped(success):
                i += 1
            if rule.continues and i < len(self.entries):
                if error is not None:
                    seen_internal = True
                continue
            break
        if success:
            return reply
        if seen_internal or error is not None:
            raise AuthBackendError(error or "an earlier userdb failed")
        return None
