"""SASL mechanisms beyond PLAIN and LOGIN, one module each.

Importing this package registers CRAM-MD5, SCRAM-SHA-1(-PLUS),
SCRAM-SHA-256(-PLUS), EXTERNAL, ANONYMOUS, OAUTHBEARER and XOAUTH2 with
:mod:`authd.sasl`.  Like PLAIN and LOGIN they are small state machines on
untrusted input that fail cleanly (never raise) on anything malformed.
"""

from __future__ import annotations

from authd.mechanisms import cram_md5, external, oauthbearer, scram

__all__ = ["cram_md5", "external", "oauthbearer", "scram"]
