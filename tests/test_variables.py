"""Tests for pydovecot.config.variables: Dovecot 2.3 %-variable expansion."""

from __future__ import annotations

import hashlib
import os

from twisted.trial import unittest

from pydovecot.config.variables import expand, username_format

VALUES = {
    "user": "Alice.Smith@Example.COM",
    "home": "/home/alice",
    "service": "imap",
    "lip": "127.0.0.1",
    "rip": "10.1.2.3",
    "session": "abc123",
}


class ExpandTests(unittest.TestCase):
    def test_short_variables(self) -> None:
        self.assertEqual(expand("%u", VALUES), "Alice.Smith@Example.COM")
        self.assertEqual(expand("%n", VALUES), "Alice.Smith")
        self.assertEqual(expand("%d", VALUES), "Example.COM")
        self.assertEqual(expand("%h/Maildir", VALUES), "/home/alice/Maildir")
        self.assertEqual(expand("%s %l %r", VALUES), "imap 127.0.0.1 10.1.2.3")
        self.assertEqual(expand("%p", {}), str(os.getpid()))
        self.assertEqual(expand("%i", {"uid": "1000"}), "1000")
        self.assertEqual(expand("%i", {}), str(os.geteuid()))
        self.assertEqual(expand("100%%", {}), "100%")
        self.assertEqual(expand("no variables", {}), "no variables")

    def test_long_variables(self) -> None:
        self.assertEqual(
            expand("%{user}|%{username}|%{domain}|%{home}|%{service}", VALUES),
            "Alice.Smith@Example.COM|Alice.Smith|Example.COM|/home/alice|imap",
        )
        self.assertEqual(expand("%{lip}-%{rip}-%{session}", VALUES), "127.0.0.1-10.1.2.3-abc123")
        self.assertEqual(expand("%{pid}", {}), str(os.getpid()))
        self.assertEqual(expand("%{uid}:%{gid}", {"uid": "5", "gid": "6"}), "5:6")
        self.assertEqual(expand("%{deleted} %{expunged}", {"deleted": "1", "expunged": "2"}), "1 2")
        self.assertEqual(expand("%{u}", {"u": "x"}), "x")

    def test_letters_and_long_names_are_interchangeable(self) -> None:
        self.assertEqual(expand("%{user}", {"u": "bob"}), "bob")
        self.assertEqual(expand("%u %n", {"user": "bob@x"}), "bob@x bob")
        # a caller's own letters win (imap_logout_format: %i = bytes in)
        self.assertEqual(expand("in=%i out=%o", {"i": "10", "o": "20"}), "in=10 out=20")

    def test_names_without_at(self) -> None:
        self.assertEqual(expand("%n", {"user": "bob"}), "bob")
        self.assertEqual(expand("%d", {"user": "bob"}), "")
        self.assertEqual(expand("[%{domain}]", {"user": "bob"}), "[]")
        # the first @ splits
        self.assertEqual(expand("%n|%d", {"user": "a@b@c"}), "a|b@c")

    def test_case_modifiers(self) -> None:
        self.assertEqual(expand("%Lu", VALUES), "alice.smith@example.com")
        self.assertEqual(expand("%Ln", VALUES), "alice.smith")
        self.assertEqual(expand("%Ld", VALUES), "example.com")
        self.assertEqual(expand("%Uu", VALUES), "ALICE.SMITH@EXAMPLE.COM")
        self.assertEqual(expand("%L{user}", VALUES), "alice.smith@example.com")
        self.assertEqual(expand("%Ud/%Ln", VALUES), "EXAMPLE.COM/alice.smith")

    def test_other_modifiers(self) -> None:
        v = {"user": "bob@mail.example.org"}
        self.assertEqual(expand("%Ru", v), "gro.elpmaxe.liam@bob")
        self.assertEqual(expand("%Mu", v), hashlib.md5(b"bob@mail.example.org").hexdigest())
        self.assertEqual(expand("%LMu", {"user": "BOB"}), hashlib.md5(b"bob").hexdigest())
        self.assertEqual(expand("%Dd", v), "mail,dc=example,dc=org")
        self.assertEqual(expand("%Tu", {"user": "x  "}), "x")
        self.assertEqual(expand("%Eu", {"user": 'a"b'}), 'a\\"b')
        self.assertEqual(expand("%Xu", {"user": "255"}), "ff")
        self.assertEqual(expand("%08Xu%08Xv", {"u": "255", "v": "16"}), "000000ff00000010")

    def test_hash_modifiers(self) -> None:
        h = expand("%Hu", {"user": "bob"})
        self.assertRegex(h, r"^[0-9a-f]+$")
        self.assertEqual(expand("%Hu", {"user": "bob"}), h)  # stable across calls
        for value in ("a", "bob", "someone@example.com"):
            self.assertLess(int(expand("%256Hu", {"user": value}), 16), 256)
            self.assertLess(int(expand("%16Nu", {"user": value}), 16), 16)
            self.assertEqual(len(expand("%4.256Hu", {"user": value})), 4)  # zero padded
        digest = hashlib.md5(b"bob").digest()
        self.assertEqual(
            expand("%Nu", {"user": "bob"}), format(int.from_bytes(digest[4:8], "big"), "x")
        )

    def test_width_and_offset(self) -> None:
        v = {"user": "abcdef", "uid": "12345"}
        self.assertEqual(expand("%1u", v), "a")
        self.assertEqual(expand("%2u", v), "ab")
        self.assertEqual(expand("%1.1u", v), "b")
        self.assertEqual(expand("%2.1u", v), "c")
        self.assertEqual(expand("%1Ln", {"user": "Bob@x"}), "b")
        self.assertEqual(expand("%-2.2i", v), "45")
        self.assertEqual(expand("%04i", {"uid": "1"}), "0001")
        self.assertEqual(expand("%04i", v), "12345")
        self.assertEqual(expand("%10.2u", v), "")
        self.assertEqual(expand("%-1u", v), "abcde")
        self.assertEqual(
            expand("/var/mail/%1n/%2.1n/%n", {"user": "jdoe"}), "/var/mail/j/o/jdoe"
        )  # 1st and 3rd char

    def test_functions(self) -> None:
        self.patch(os, "environ", {"FOO": "bar"})
        self.assertEqual(expand("%{env:FOO}|%{env:NOPE}", {}), "bar|")
        self.assertEqual(expand("%{sha1:user}", {"user": "bob"}), hashlib.sha1(b"bob").hexdigest())
        self.assertEqual(
            expand("%{md5:username}", {"user": "bob@x"}), hashlib.md5(b"bob").hexdigest()
        )
        self.assertTrue(expand("%{hostname}", {}))

    def test_values_are_not_reexpanded(self) -> None:
        self.assertEqual(expand("%u", {"user": "%d%{home}"}), "%d%{home}")

    def test_errors(self) -> None:
        for template in ("%z", "%{nope}", "%{nope:x}", "abc%", "%L", "%{user", "%h"):
            with self.assertRaises(ValueError) as cm:
                expand(template, {"user": "bob"})
            self.assertIn(repr(template), str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            expand("%h", {"user": "bob"})
        self.assertIn("%h (home) has no value", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            expand("%q", {})
        self.assertIn("unknown variable %q", str(cm.exception))

    def test_username_format(self) -> None:
        self.assertEqual(username_format("%Lu", "Bob@Example.COM"), "bob@example.com")
        self.assertEqual(username_format("%Ln", "Bob@Example.COM"), "bob")
        self.assertEqual(username_format("%Ln", "Bob"), "bob")
        self.assertEqual(username_format("%Lu", "Bob"), "bob")
        self.assertEqual(username_format("%n@%Ld", "Bob@Example.COM"), "Bob@example.com")
        self.assertEqual(username_format("%u", "x"), "x")
