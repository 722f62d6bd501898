"""Dovecot's PAM passdb: ``passdb { driver = pam  args = … }``.

Args as in Dovecot 2.3: ``[session=yes] [setcred=yes] [failure_show_msg=yes]
[max_requests=N] [cache_key=TEMPLATE] [SERVICE]``.  The PAM service name
defaults to ``dovecot``; it may hold %-variables (``%s`` gives one PAM
service per protocol: ``/etc/pam.d/imap``, ``/etc/pam.d/pop3``), and
Dovecot 1's ``*`` means ``%s``.

When authd runs unprivileged, conversations go to its privileged worker
(authd.worker), which runs them the same way as root.  Each conversation (pam_start, pam_authenticate, pam_acct_mgmt, optionally
pam_setcred and pam_open_session/pam_close_session, pam_end) runs on a
worker thread of a dedicated :class:`~twisted.python.threadpool.ThreadPool`,
never on the reactor: pam_unix takes ~50 ms and sleeps up to 2 s after a
failure.  libpam is called through ctypes (which drops the GIL during the
calls) so that PAM_RHOST, PAM_TTY and the conversation are ours; python-pam's
``authenticate`` sets neither RHOST nor lets us read the modules' messages.

Results: PAM_SUCCESS → OK; PAM_USER_UNKNOWN → unknown user; PAM_AUTH_ERR →
password mismatch; PAM_ACCT_EXPIRED and PAM_NEW_AUTHTOK_REQD → password
mismatch with reason "Password expired" (Dovecot's PASS_EXPIRED, a refusal,
not backend trouble); anything else → internal (temporary) failure carrying
pam_strerror's text.  ``max_requests`` restarts Dovecot's auth worker
processes to contain leaky PAM modules; threads cannot be restarted that
way, so it is accepted and ignored.

Trust: the PAM configuration and modules are the admin's (trusted, and they
run in this process with its privileges).  The user name and password come
from clients: they are passed to PAM as data only, refused if they hold a NUL.
Messages PAM modules print are shown to the client only with
``failure_show_msg=yes``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from authd import drivers
from authd.drivers.workers import WORKER_THREADS, stop_worker_pool, worker_pool  # noqa: F401
from authd.interfaces import AuthRequest, IPassdb, PassdbResult, PassdbStatus
from authd.settings import expand, split_args

log = Logger()

# Linux-PAM's constants (security/_pam_types.h).
PAM_SUCCESS = 0
PAM_SERVICE_ERR = 3
PAM_SYSTEM_ERR = 4
PAM_BUF_ERR = 5
PAM_PERM_DENIED = 6
PAM_AUTH_ERR = 7
PAM_USER_UNKNOWN = 10
PAM_MAXTRIES = 11
PAM_NEW_AUTHTOK_REQD = 12
PAM_ACCT_EXPIRED = 13
PAM_CONV_ERR = 19

PAM_SERVICE = 1
PAM_USER = 2
PAM_TTY = 3
PAM_RHOST = 4

PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4

PAM_ESTABLISH_CRED = 0x2
PAM_DELETE_CRED = 0x4



class _PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(_PamMessage)),
    ctypes.POINTER(ctypes.POINTER(_PamResponse)),
    ctypes.c_void_p,
)


class _PamConv(ctypes.Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


_lib_lock = threading.Lock()
_libs: tuple[Any, Any] | None = None


def _load_libs() -> tuple[Any, Any]:
    """(libpam, libc) with prototypes set, loaded once."""
    global _libs
    with _lib_lock:
        if _libs is not None:
            return _libs
        name = ctypes.util.find_library("pam") or "libpam.so.0"
        pam = ctypes.CDLL(name)
        libc = ctypes.CDLL(None)
        handle_p = ctypes.POINTER(ctypes.c_void_p)
        pam.pam_start.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.POINTER(_PamConv),
            handle_p,
        ]
        pam.pam_start.restype = ctypes.c_int
        for fn in ("pam_authenticate", "pam_acct_mgmt", "pam_setcred", "pam_open_session",
                   "pam_close_session", "pam_end"):
            getattr(pam, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
            getattr(pam, fn).restype = ctypes.c_int
        pam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        pam.pam_set_item.restype = ctypes.c_int
        pam.pam_get_item.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
        ]
        pam.pam_get_item.restype = ctypes.c_int
        pam.pam_strerror.argtypes = [ctypes.c_void_p, ctypes.c_int]
        pam.pam_strerror.restype = ctypes.c_char_p
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        libc.calloc.restype = ctypes.c_void_p
        libc.strdup.argtypes = [ctypes.c_char_p]
        libc.strdup.restype = ctypes.c_void_p
        _libs = (pam, libc)
        return _libs


@dataclass
class PamOutcome:
    """What one PAM conversation ended with."""

    code: int
    error: str = ""  # pam_strerror text of ``code``
    user: str = ""  # PAM_USER afterwards (a module may have changed it)
    messages: list[str] = field(default_factory=list)  # PAM_ERROR_MSG / TEXT_INFO


def pam_conversation(
    service: str,
    user: str,
    password: str,
    remote_ip: str = "",
    session: bool = False,
    setcred: bool = False,
) -> PamOutcome:
    """Run one blocking PAM authentication as Dovecot's passdb-pam does.

    Call it on a worker thread only.  Raises ValueError for a NUL in any
    argument."""
    b_service, b_user, b_password = (s.encode("utf-8", "surrogateescape")
                                     for s in (service, user, password))
    if b"\0" in b_service + b_user + b_password + remote_ip.encode():
        raise ValueError("NUL in PAM argument")
    pam, libc = _load_libs()
    messages: list[str] = []

    def conv(n: int, msgs: Any, resp_p: Any, _appdata: Any) -> int:
        # Responses are malloc()ed: PAM frees them.
        array = libc.calloc(n, ctypes.sizeof(_PamResponse))
        if not array:
            return PAM_BUF_ERR
        responses = ctypes.cast(array, ctypes.POINTER(_PamResponse))
        for i in range(n):
            style = msgs[i].contents.msg_style
            text = (msgs[i].contents.msg or b"").decode("utf-8", "replace")
            if style == PAM_PROMPT_ECHO_OFF:
                responses[i].resp = libc.strdup(b_password)
            elif style == PAM_PROMPT_ECHO_ON:
                responses[i].resp = libc.strdup(b_user)
            elif style in (PAM_ERROR_MSG, PAM_TEXT_INFO):
                messages.append(text)
            else:
                return PAM_CONV_ERR  # PAM frees nothing on error; tiny leak accepted
        resp_p[0] = responses
        return PAM_SUCCESS

    callback = _CONV_FUNC(conv)  # referenced until pam_end
    conv_struct = _PamConv(callback, None)
    handle = ctypes.c_void_p()
    code = pam.pam_start(b_service, b_user, ctypes.byref(conv_struct), ctypes.byref(handle))
    if code != PAM_SUCCESS:
        return PamOutcome(code, f"pam_start({service}) failed: {pam.pam_strerror(None, code)!r}")
    try:
        if remote_ip:
            pam.pam_set_item(handle, PAM_RHOST, ctypes.c_char_p(remote_ip.encode()))
        pam.pam_set_item(handle, PAM_TTY, ctypes.c_char_p(b"dovecot"))
        code = pam.pam_authenticate(handle, 0)
        if code == PAM_SUCCESS:
            code = pam.pam_acct_mgmt(handle, 0)
        if code == PAM_SUCCESS and setcred:
            code = pam.pam_setcred(handle, PAM_ESTABLISH_CRED)
        if code == PAM_SUCCESS and session:
            code = pam.pam_open_session(handle, 0)
            if code == PAM_SUCCESS:
                code = pam.pam_close_session(handle, 0)
        if setcred and code == PAM_SUCCESS:
            pam.pam_setcred(handle, PAM_DELETE_CRED)
        final_user = user
        item = ctypes.c_void_p()
        if code == PAM_SUCCESS and pam.pam_get_item(handle, PAM_USER, ctypes.byref(item)) == 0:
            if item.value:
                final_user = ctypes.string_at(item.value).decode("utf-8", "surrogateescape")
        error = (pam.pam_strerror(handle, code) or b"").decode("utf-8", "replace")
        return PamOutcome(code, error, final_user, messages)
    finally:
        pam.pam_end(handle, code)
        del callback


def _yes(value: str) -> bool:
    return value.lower() in ("yes", "y", "true", "1")


@implementer(IPassdb)
class PamPassdb:
    """``driver = pam``: verify plaintext passwords with PAM."""

    driver = "pam"
    #: PAM cannot hand out stored credentials (no CRAM-MD5, SCRAM).
    supports_credentials = False
    #: PAM cannot look a user up without the password.
    needs_password = True

    def __init__(self, args: str, reactor: Any = None, pool: ThreadPool | None = None,
                 conversation: Any = None):
        known = {"session", "setcred", "failure_show_msg", "max_requests", "cache_key"}
        options, rest = split_args(args, known)
        words = rest.split()
        if len(words) > 1:
            raise ValueError(f"pam: unknown arguments: {' '.join(words[:-1])}")
        service = words[0] if words else "dovecot"
        self.service_template = "%s" if service == "*" else service
        self.session = _yes(options.get("session", "no"))
        self.setcred = _yes(options.get("setcred", "no"))
        self.failure_show_msg = _yes(options.get("failure_show_msg", "no"))
        max_requests = options.get("max_requests", "0")
        if not max_requests.isdigit():
            raise ValueError(f"pam: invalid max_requests={max_requests}")
        self.max_requests = int(max_requests)  # accepted, ignored (see module doc)
        # Dovecot's default: the user, plus the service when it varies.
        self.cache_key = options.get("cache_key") or (
            "%u\t%s" if "%" in self.service_template else "%u"
        )
        self._reactor = reactor
        self._pool = pool
        self._conversation = conversation or pam_conversation

    def _run(self, fn: Any, *args: Any) -> defer.Deferred:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        pool = self._pool or worker_pool(reactor)
        return threads.deferToThreadPool(reactor, pool, fn, *args)

    def service_name(self, request: AuthRequest) -> str:
        return expand(self.service_template, request.variables()) or "dovecot"

    def verify_plain(self, user: str, password: str, request: AuthRequest) -> defer.Deferred:
        service = self.service_name(request)
        worker = drivers.PRIVILEGED_WORKER
        args = (service, user, password, request.remote_ip, self.session, self.setcred)
        if worker is not None and self._conversation is pam_conversation:
            d = worker.pam(*args)  # authd is unprivileged: the root worker asks PAM
        else:
            d = self._run(self._conversation, *args)
        d.addCallbacks(self._result, self._crashed, callbackArgs=(user, service),
                       errbackArgs=(service,))
        return d

    def _result(self, outcome: PamOutcome, user: str, service: str) -> PassdbResult:
        extra: dict[str, str] = {}
        if outcome.user and outcome.user != user:
            extra["user"] = outcome.user  # a module changed PAM_USER
        code = outcome.code
        if code == PAM_SUCCESS:
            return PassdbResult(PassdbStatus.OK, extra)
        shown = outcome.messages[-1] if outcome.messages else ""
        if self.failure_show_msg and shown:
            extra["reason"] = shown
        detail = f"pam_authenticate({service}) failed: {outcome.error or code}"
        if code == PAM_USER_UNKNOWN:
            return PassdbResult(PassdbStatus.USER_UNKNOWN, extra, error=detail)
        if code == PAM_AUTH_ERR:
            return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, extra, error=detail)
        if code in (PAM_ACCT_EXPIRED, PAM_NEW_AUTHTOK_REQD):
            extra.setdefault("reason", "Password expired")
            return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, extra, error=detail)
        return PassdbResult(PassdbStatus.INTERNAL_FAILURE, extra, error=detail)

    @staticmethod
    def _crashed(failure: Any, service: str) -> PassdbResult:
        if failure.check(ValueError):
            return PassdbResult(PassdbStatus.PASSWORD_MISMATCH, error=str(failure.value))
        log.failure("pam({service}): conversation crashed", failure, service=service)
        return PassdbResult(
            PassdbStatus.INTERNAL_FAILURE, error=f"PAM conversation failed: {failure.value}"
        )

    def lookup_credentials(self, user: str, scheme: str, request: AuthRequest) -> defer.Deferred:
        return defer.succeed(
            PassdbResult(
                PassdbStatus.SCHEME_NOT_AVAILABLE,
                error="pam: no credential lookups (only plaintext verification)",
            )
        )


def _register() -> None:
    if "passwd-file" not in drivers.PASSDB_DRIVERS:
        drivers._load()  # imported before the built-in drivers: load them first
    from authd.drivers.passwd import PasswdUserdb

    drivers.register_passdb("pam", PamPassdb)
    drivers.register_userdb("passwd", PasswdUserdb)


_register()
