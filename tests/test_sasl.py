"""Tests for authd.sasl: PLAIN and LOGIN, including malformed input."""

from __future__ import annotations

from twisted.trial import unittest

from authd import sasl
from authd.sasl import Continue, Fail, PlainCredentials


class PlainTests(unittest.TestCase):
    def test_initial_response(self) -> None:
        step = sasl.create("plain").step(b"\0alice\0secret")
        self.assertEqual(step, PlainCredentials("alice", "secret", ""))

    def test_without_initial_response(self) -> None:
        mech = sasl.create("PLAIN")
        self.assertEqual(mech.step(None), Continue(b""))
        self.assertEqual(mech.step(b"alice\0alice\0pw"), PlainCredentials("alice", "pw", "alice"))

    def test_utf8_password(self) -> None:
        step = sasl.create("PLAIN").step("\0bob\0pässwörd".encode())
        self.assertEqual(step, PlainCredentials("bob", "pässwörd"))

    def test_malformed(self) -> None:
        for data in (b"", b"alice", b"\0alice", b"\0alice\0pw\0x", b"\0\0pw", b"\0al\xffice\0pw"):
            step = sasl.create("PLAIN").step(data)
            self.assertIsInstance(step, Fail, data)
            self.assertTrue(step.reason)

    def test_other_authzid_refused(self) -> None:
        self.assertIsInstance(sasl.create("PLAIN").step(b"root\0alice\0pw"), Fail)


class LoginTests(unittest.TestCase):
    def test_exchange(self) -> None:
        mech = sasl.create("LOGIN")
        self.assertEqual(mech.step(None), Continue(b"Username:"))
        self.assertEqual(mech.step(b"alice"), Continue(b"Password:"))
        self.assertEqual(mech.step(b"secret"), PlainCredentials("alice", "secret"))

    def test_initial_response_is_username(self) -> None:
        mech = sasl.create("LOGIN")
        self.assertEqual(mech.step(b"alice"), Continue(b"Password:"))
        self.assertEqual(mech.step(b""), PlainCredentials("alice", ""))

    def test_malformed(self) -> None:
        mech = sasl.create("LOGIN")
        mech.step(None)
        self.assertIsInstance(mech.step(b""), Fail)
        self.assertIsInstance(sasl.create("LOGIN").step(b"a\0b"), Fail)
        mech = sasl.create("LOGIN")
        mech.step(b"alice")
        self.assertIsInstance(mech.step(b"\xff\xfe"), Fail)


class RegistryTests(unittest.TestCase):
    def test_registry(self) -> None:
        self.assertIsNone(sasl.create("NOPE"))
        self.assertTrue(sasl.is_plaintext("plain"))
        self.assertTrue(sasl.is_plaintext("LOGIN"))
        self.assertTrue(sasl.ISASLMechanism.providedBy(sasl.create("PLAIN")))
