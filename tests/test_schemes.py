"""Tests for authd.schemes: doveadm-generated vectors and round trips."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from twisted.trial import unittest

from authd import schemes

# Produced by Dovecot 2.3.19 `doveadm pw -s SCHEME -p secret` (Debian 12).
DOVEADM_VECTORS = [
    "{CRYPT}$2y$05$V7yJXvnAF3B0ysILaj0z8OwayXgvacdTeCFw.oqIw1WIvG8egUJO.",
    "{MD5-CRYPT}$1$e2dE2HsC$LLSvqCoGP0U8HEfPQ0dto/",
    "{MD5}$1$dD6uMI33$5358tdf7xX6KnA8bMIEL1/",
    "{SHA256-CRYPT}$5$KqkNCK9afKV/8OeV$iD.0swZVMwafMVsu.NXD4GxbiHElDITbmE36Agr50FB",
    "{SHA512-CRYPT}$6$mO9ysc/ppbfWkKI0$yToYfgaucKCcmYuGgSl6MX82mIMLFT.26oYN8Y2fzAhKCb3dbYtdzE8mi2ORK704E.sgnZyl.Gz/txLRPWzUH/",
    "{BLF-CRYPT}$2y$05$VGyHNgLhe.akdtFugjDr6u6wT94.LB1IMTaTuKE/2fieV.tErgNcu",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$vwI6+Z1ZxHnSz+3O24CnjQ$dn8D3Xb8eok92biSupbVWKq4hXdmShji6f5TIVeauNU",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$xptyu8CjTMEJoFHzHV6iJw$Ps1Z8thw27PzoarGCk+SGADNGX4k9j6rGJeCmXJUwP0",
    "{SSHA}bh0MhHZI9OUBBoQP4GBuYVeiUalkwaQd",
    "{SSHA256}NbVwtuguxwaZvSPAFNggz731q4I8RMq5ETPg2cLOewnYX5aa",
    "{SSHA512}3/ZRAgpVWmxk5+N4WbC+g3O9w+F8jKc/BW+blgygsSyrEZigqGXiHbyAQCKL0GeGV4tT25QKRQJzkr459ge5L8rEvpw=",
    "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=",
    "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
    "{SHA512}vSsar3708Jvp9Szi2NWZZ02Bqp1qRCFpbcTZPdBhnWgs5WtNZKnvCXdhztmeD2cmW192CF5bDufKRpayrW/isg==",
    "{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69",
    "{LDAP-MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==",
    "{SMD5}2Qm/kwu0K1VMOj5vM/je9C8Sq/Y=",
    "{SHA256.HEX}2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
    "{SHA256.B64}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
    "{SSHA.HEX}6480e9995c35fe941319087940b0a009e019bdcb6092b1c2",
    "{PLAIN-MD5.B64}Xr4ilOzQ4PCOq3aQ0qbuaQ==",
    "{PBKDF2}$1$7sph9.WILJxidLe2$5000$ec25b875b734d5440937fde138a49cd372275223",
    "{SCRAM-SHA-1}4096,yKvlmkCKFFsJ8C/0KtNboA==,aiY/9ov51NhUPmL10MbhHLmKPfE=,nz0MnJ+ZLXr8mDAiNvlt1QGZBy4=",
    "{SCRAM-SHA-256}4096,wjqOZL1nEyr6B2Q1sp6/2w==,VhmnsjxicC+jV/TpX62DWn0Rpjt3Yp01LCcc72kHRDE=,+iKb1oXnkjcDFYR0tJXZCcgtnqSNqwtnT79U9R/l6ao=",
    "{PLAIN}secret",
    "{CLEARTEXT}secret",
    "{PLAIN.B64}c2VjcmV0",
]

# doveadm pw -s SHA512-CRYPT -r 10000 -p 'pässwörd:x'
ROUNDS_VECTOR = (
    "{SHA512-CRYPT}$6$rounds=10000$RT625oBu4AWl9iuk$jugEIPRJfR43afk9O3gvvE6rZtUjyr43"
    "r2wxELT.2FO/7p5u9naS50ymUnvRqaBzHYjhFxiqTp/Vdgv6rquQj1"
)


class DoveadmVectorTests(unittest.TestCase):
    def test_vectors_verify(self) -> None:
        for stored in DOVEADM_VECTORS:
            self.assertTrue(schemes.verify("secret", stored), stored)
            self.assertFalse(schemes.verify("Secret", stored), stored)
            self.assertFalse(schemes.verify("", stored), stored)

    def test_unicode_and_rounds(self) -> None:
        self.assertTrue(schemes.verify("pässwörd:x", ROUNDS_VECTOR))
        self.assertFalse(schemes.verify("pässwörd:y", ROUNDS_VECTOR))

    def test_deterministic_schemes_match_doveadm(self) -> None:
        for scheme in (
            "SHA",
            "SHA256",
            "SHA512",
            "PLAIN-MD5",
            "LDAP-MD5",
            "SHA256.HEX",
            "PLAIN.B64",
        ):
            expected = next(v for v in DOVEADM_VECTORS if v.startswith("{" + scheme + "}"))
            self.assertEqual(schemes.generate("secret", scheme), expected)


class RoundTripTests(unittest.TestCase):
    def test_every_scheme(self) -> None:
        for name in schemes.known_schemes():
            stored = schemes.generate("correct horse", name)
            self.assertTrue(stored.startswith("{" + name + "}"), stored)
            self.assertTrue(schemes.verify("correct horse", stored), name)
            self.assertFalse(schemes.verify("correct horsE", stored), name)

    def test_encoding_suffixes(self) -> None:
        for name in ("SSHA256.HEX", "SHA512.B64", "SMD5.HEX", "PLAIN.HEX"):
            stored = schemes.generate("pw", name)
            self.assertTrue(schemes.verify("pw", stored), name)

    def test_dovecot_formats(self) -> None:
        self.assertTrue(schemes.generate("x", "BLF-CRYPT").startswith("{BLF-CRYPT}$2y$05$"))
        self.assertTrue(schemes.generate("x", "SHA512-CRYPT").startswith("{SHA512-CRYPT}$6$"))
        self.assertIn("$rounds=6000$", schemes.generate("x", "SHA256-CRYPT", rounds=6000))
        self.assertTrue(
            schemes.generate("x", "ARGON2ID").startswith(
                "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"
            )
        )

    def test_bcrypt_long_password_truncated_like_crypt_blowfish(self) -> None:
        stored = schemes.generate("a" * 100, "BLF-CRYPT")
        self.assertTrue(schemes.verify("a" * 72, stored))


class ParsingTests(unittest.TestCase):
    def test_split(self) -> None:
        self.assertEqual(schemes.split_scheme("{sha256.hex}ab"), ("SHA256", "hex", "ab"))
        self.assertEqual(schemes.split_scheme("$1$x"), ("CRYPT", None, "$1$x"))
        self.assertEqual(schemes.split_scheme("abc", "PLAIN"), ("PLAIN", None, "abc"))

    def test_default_scheme_is_crypt(self) -> None:
        stored = DOVEADM_VECTORS[3].split("}", 1)[1]  # bare $5$…
        self.assertTrue(schemes.verify("secret", stored))
        self.assertTrue(schemes.verify("secret", "secret", default_scheme="PLAIN"))

    def test_malformed(self) -> None:
        for stored in (
            "{NOPE}x",
            "{SHA256.ROT13}x",
            "{SSHA}!!",
            "{SHA}YWJj",
            "{PBKDF2}$1$x",
            "{BLF-CRYPT}$2y$05$short",
            "{ARGON2ID}$argon2id$garbage",
            "{SCRAM-SHA-1}1,2",
        ):
            self.assertRaises(schemes.SchemeError, schemes.verify, "secret", stored)

    def test_is_slow(self) -> None:
        self.assertTrue(schemes.is_slow("{BLF-CRYPT}$2y$"))
        self.assertTrue(schemes.is_slow("$6$abc"))
        self.assertFalse(schemes.is_slow("{SHA}x"))


class PwMainTests(unittest.TestCase):
    def run_pw(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with redirect_stdout(out):
            code = schemes.pw_main(list(argv))
        return code, out.getvalue().strip()

    def test_generate(self) -> None:
        code, out = self.run_pw("-s", "SSHA512", "-p", "secret")
        self.assertEqual(code, 0)
        self.assertTrue(schemes.verify("secret", out))

    def test_test_mode(self) -> None:
        code, out = self.run_pw("-t", DOVEADM_VECTORS[0], "-p", "secret")
        self.assertEqual((code, out), (0, DOVEADM_VECTORS[0] + " (verified)"))
        code, _ = self.run_pw("-t", DOVEADM_VECTORS[0], "-p", "wrong")
        self.assertEqual(code, 1)
