"""SASL for authd: the mechanism state machines (:mod:`authd.sasl_base`,
PLAIN and LOGIN) and every other mechanism (:mod:`authd.mechanisms`,
registered on import).  Import this module, not the two halves."""

from __future__ import annotations

import authd.mechanisms  # noqa: F401  (registers the other mechanisms)
from authd.sasl_base import (
    MECHANISMS,
    NEEDS_CHANNEL_BINDING,
    NEEDS_CREDENTIALS,
    NEEDS_OAUTH2,
    PLAINTEXT,
    ClientFirstMechanism,
    Continue,
    Fail,
    ISASLMechanism,
    LoginMechanism,
    NeedCredentials,
    PlainCredentials,
    PlainMechanism,
    SASLContext,
    Step,
    Verified,
    create,
    is_plaintext,
    register,
)

__all__ = [
    "ClientFirstMechanism",
    "Continue",
    "Fail",
    "ISASLMechanism",
    "LoginMechanism",
    "MECHANISMS",
    "NEEDS_CHANNEL_BINDING",
    "NEEDS_CREDENTIALS",
    "NEEDS_OAUTH2",
    "NeedCredentials",
    "PLAINTEXT",
    "PlainCredentials",
    "PlainMechanism",
    "SASLContext",
    "Step",
    "Verified",
    "create",
    "is_plaintext",
    "register",
]
