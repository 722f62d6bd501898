"""EXTERNAL (RFC 4422 appendix A) and ANONYMOUS (RFC 4505).

EXTERNAL logs in as the user named by the client's TLS certificate
(``ssl_cert_username_field``, commonName by default), which the login
process extracted after verifying the certificate against ``ssl_ca``.  It
succeeds only with a valid certificate and an empty authzid or one equal to
that name; the passdb must still know the user (looked up without a
password).  ANONYMOUS logs in as ``auth_anonymous_username`` and only when
auth_mechanisms lists it; the trace string is logged, never trusted.

Trusts the :class:`~authd.sasl.SASLContext` (the login process's word on
the certificate); the client's authzid and trace are untrusted.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from authd import sasl_base as sasl
from pydovecot.log import sanitize

log = Logger()

MAX_TRACE = 255  # RFC 4505: up to 255 characters


@implementer(sasl.ISASLMechanism)
class ExternalMechanism(sasl.ClientFirstMechanism):
    name = "EXTERNAL"

    def respond(self, data: bytes) -> sasl.Step:
        ctx = self.context
        if not ctx.client_cert_user or not ctx.valid_client_cert:
            return sasl.Fail("Client didn't present valid SSL certificate")
        try:
            authzid = data.decode("utf-8")
        except UnicodeDecodeError:
            return sasl.Fail("Invalid input (not UTF-8)")
        if "\0" in authzid:
            return sasl.Fail("Invalid input")
        if authzid and authzid != ctx.client_cert_user:
            return sasl.Fail("Authorization as another user is not allowed")
        return sasl.Verified(ctx.client_cert_user, passdb_lookup=True)


@implementer(sasl.ISASLMechanism)
class AnonymousMechanism(sasl.ClientFirstMechanism):
    name = "ANONYMOUS"

    def respond(self, data: bytes) -> sasl.Step:
        try:
            trace = data.decode("utf-8")
        except UnicodeDecodeError:
            return sasl.Fail("Invalid input (not UTF-8)")
        if len(trace) > MAX_TRACE or "\0" in trace:
            return sasl.Fail("Invalid input")
        user = self.context.setting("auth_anonymous_username", "anonymous") or "anonymous"
        log.info("anonymous login, trace={trace}", trace=sanitize(trace))
        return sasl.Verified(user, passdb_lookup=False)


sasl.register("EXTERNAL", ExternalMechanism, plaintext=False)
sasl.register("ANONYMOUS", AnonymousMechanism, plaintext=False)
