"""Dovecot's password schemes: parse ``{SCHEME}data``, verify, generate.

Names, encodings and output match Dovecot's (what ``doveadm pw`` writes),
so password databases move between Dovecot and pydovecot unchanged.
Stored hashes come from the admin's databases and are trusted to be the
admin's, but not to be well-formed: malformed data raises
:class:`SchemeError`, never a traceback from a library.  Comparisons are
constant-time.  ``pw_main`` is a small ``doveadm pw``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import argon2
import bcrypt
from passlib.hash import bsdi_crypt, des_crypt, md5_crypt, sha256_crypt, sha512_crypt

#: Dovecot's default_pass_scheme.
DEFAULT_SCHEME = "CRYPT"

#: Scheme used by ``pydovecot-pw`` when -s is not given (doveadm pw's default).
PW_DEFAULT_SCHEME = "CRYPT"


class SchemeError(ValueError):
    """The stored password is malformed, or its scheme can't be used."""


class UnknownSchemeError(SchemeError):
    """No such password scheme."""


def _b(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


# -- encodings ---------------------------------------------------------------

ENCODINGS = {"B64": "b64", "BASE64": "b64", "HEX": "hex"}


def _encode(raw: bytes, encoding: str) -> str:
    if encoding == "hex":
        return raw.hex()
    return base64.b64encode(raw).decode("ascii")


def _try_decode(data: str, encoding: str) -> bytes | None:
    text = "".join(data.split())
    try:
        if encoding == "hex":
            return bytes.fromhex(text)
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None


def decode(data: str, encoding: str) -> bytes:
    """Decode ``hex`` or ``b64`` data; SchemeError if malformed."""
    raw = _try_decode(data, encoding)
    if raw is None:
        raise SchemeError("invalid password encoding")
    return raw


def _decode(data: str, encoding: str, ok: Callable[[bytes], bool]) -> bytes:
    """Decode with the expected encoding, falling back to the other one when
    the result doesn't fit (as Dovecot does: some lengths are ambiguous)."""
    other = "b64" if encoding == "hex" else "hex"
    for enc in (encoding, other):
        raw = _try_decode(data, enc)
        if raw is not None and ok(raw):
            return raw
    raise SchemeError("invalid password encoding or length")


# -- scheme implementations -------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    """One password scheme.

    ``verify(password, data, encoding)`` and ``generate(password, encoding,
    rounds)`` work on the data after ``{SCHEME}``; ``encoding`` is the
    ``.HEX``/``.B64`` suffix or None for the scheme's default.
    """

    name: str
    verify: Callable[[bytes, str, str | None], bool]
    generate: Callable[[bytes, str | None, int | None], str]
    slow: bool = False  # expensive: verify it in a thread


def _digest_scheme(
    name: str, algo: str, salted: bool, default_enc: str, salt_len: int = 4
) -> Scheme:
    size = hashlib.new(algo).digest_size

    def verify(password: bytes, data: str, encoding: str | None) -> bool:
        if salted:
            raw = _decode(data, encoding or default_enc, lambda r: len(r) > size)
            digest, salt = raw[:size], raw[size:]
        else:
            raw = _decode(data, encoding or default_enc, lambda r: len(r) == size)
            digest, salt = raw, b""
        return hmac.compare_digest(hashlib.new(algo, password + salt).digest(), digest)

    def generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
        salt = os.urandom(salt_len) if salted else b""
        return _encode(hashlib.new(algo, password + salt).digest() + salt, encoding or default_enc)

    return Scheme(name, verify, generate)


def _plain_verify(password: bytes, data: str, encoding: str | None) -> bool:
    stored = _b(data) if encoding is None else _try_decode(data, encoding)
    if stored is None:
        raise SchemeError("invalid password encoding")
    return hmac.compare_digest(password, stored)


def _plain_generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
    return password.decode("utf-8") if encoding is None else _encode(password, encoding)


_PASSLIB_CRYPT = {"$1$": md5_crypt, "$5$": sha256_crypt, "$6$": sha512_crypt}


def _bcrypt_verify(password: bytes, data: str) -> bool:
    try:
        # crypt_blowfish (what Dovecot uses) only looks at the first 72 bytes.
        return bcrypt.checkpw(password[:72], data.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise SchemeError(f"invalid bcrypt hash: {e}") from None


def _argon2_verify(password: bytes, data: str) -> bool:
    try:
        return argon2.PasswordHasher().verify(data, password)
    except argon2.exceptions.VerifyMismatchError:
        return False
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError) as e:
        raise SchemeError(f"invalid argon2 hash: {e}") from None


def _system_crypt_verify(password: bytes, data: str) -> bool:
    """Formats passlib doesn't do (yescrypt $y$, …): the C library's crypt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # noqa: PLC0415  (deprecated, gone in 3.13)
        except ImportError:
            raise SchemeError("unsupported crypt format") from None
    try:
        result = crypt.crypt(password.decode("utf-8", "surrogateescape"), data)
    except (OSError, ValueError) as e:
        raise SchemeError(f"crypt() failed: {e}") from None
    if not result or result.startswith("*"):
        raise SchemeError("unsupported crypt format")
    return hmac.compare_digest(result.encode(), data.encode())


def crypt_verify(password: bytes, data: str) -> bool:
    """Verify any system crypt(3) format, as Dovecot's CRYPT scheme does."""
    text = password.decode("utf-8", "surrogateescape")
    try:
        for prefix, handler in _PASSLIB_CRYPT.items():
            if data.startswith(prefix):
                return handler.verify(text, data)
        if data.startswith(("$2a$", "$2b$", "$2y$")):
            return _bcrypt_verify(password, data)
        if data.startswith("$argon2"):
            return _argon2_verify(password, data)
        if len(data) == 13 and not data.startswith("$"):
            return des_crypt.verify(text, data)
        if len(data) == 20 and data.startswith("_"):
            return bsdi_crypt.verify(text, data)
    except (ValueError, TypeError) as e:
        raise SchemeError(f"invalid crypt hash: {e}") from None
    return _system_crypt_verify(password, data)


def _crypt_scheme(name: str, prefix: str, handler, salt_size: int) -> Scheme:
    def generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
        hasher = (
            handler.using(salt_size=salt_size, rounds=rounds or 5000)
            if prefix != "$1$"
            else handler
        )
        return hasher.hash(password.decode("utf-8", "surrogateescape"))

    # Dovecot's SHA512-CRYPT etc. just call crypt(): any format verifies.
    return Scheme(name, _any_crypt_verify, generate, slow=True)


def _blf_generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
    hashed = bcrypt.hashpw(password[:72], bcrypt.gensalt(rounds or 5))
    return "$2y$" + hashed.decode("ascii")[4:]  # Dovecot writes $2y$


def _any_crypt_verify(password: bytes, data: str, encoding: str | None) -> bool:
    return crypt_verify(password, data)


# Dovecot 2.3 (libsodium) defaults: ARGON2I t=4 m=32 MiB, ARGON2ID t=3 m=64 MiB.
_ARGON2_DEFAULTS = {argon2.Type.I: (4, 32 * 1024), argon2.Type.ID: (3, 64 * 1024)}


def _argon2_generate(kind: argon2.Type) -> Callable[[bytes, str | None, int | None], str]:
    def generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
        ops, memory = _ARGON2_DEFAULTS[kind]
        hasher = argon2.PasswordHasher(
            time_cost=rounds or ops,
            memory_cost=memory,
            parallelism=1,
            hash_len=32,
            salt_len=16,
            type=kind,
        )
        return hasher.hash(password)

    return generate


def _md5_verify(password: bytes, data: str, encoding: str | None) -> bool:
    """Dovecot's ``{MD5}``: MD5-CRYPT, or a hex PLAIN-MD5 digest."""
    if data.startswith("$1$"):
        return crypt_verify(password, data)
    raw = _try_decode(data, "hex")
    if raw is None or len(raw) != 16:
        raise SchemeError("invalid MD5 password")
    return hmac.compare_digest(hashlib.md5(password).digest(), raw)


def _md5_crypt_generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
    return md5_crypt.hash(password.decode("utf-8", "surrogateescape"))


def _pbkdf2_verify(password: bytes, data: str, encoding: str | None) -> bool:
    """Dovecot's ``{PBKDF2}$1$salt$rounds$hexdigest`` (PBKDF2-HMAC-SHA1)."""
    parts = data.split("$")
    if len(parts) != 5 or parts[1] != "1" or not parts[3].isdigit():
        raise SchemeError("invalid PBKDF2 password")
    rounds = int(parts[3])
    raw = _try_decode(parts[4], "hex")
    if raw is None or not raw or rounds < 1:
        raise SchemeError("invalid PBKDF2 password")
    key = hashlib.pbkdf2_hmac("sha1", password, parts[2].encode(), rounds, len(raw))
    return hmac.compare_digest(key, raw)


def _pbkdf2_generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
    salt = base64.b64encode(os.urandom(12)).decode().replace("+", ".").replace("/", ".")[:16]
    rounds = rounds or 5000
    key = hashlib.pbkdf2_hmac("sha1", password, salt.encode(), rounds, 20)
    return f"$1${salt}${rounds}${key.hex()}"


def _scram_scheme(name: str, algo: str) -> Scheme:
    """``{SCRAM-SHA-256}iter,salt,storedkey,serverkey`` (all base64)."""

    def keys(password: bytes, salt: bytes, iters: int) -> tuple[bytes, bytes]:
        salted = hashlib.pbkdf2_hmac(algo, password, salt, iters)
        client_key = hmac.new(salted, b"Client Key", algo).digest()
        server_key = hmac.new(salted, b"Server Key", algo).digest()
        return hashlib.new(algo, client_key).digest(), server_key

    def verify(password: bytes, data: str, encoding: str | None) -> bool:
        parts = data.split(",")
        if len(parts) != 4 or not parts[0].isdigit():
            raise SchemeError(f"invalid {name} password")
        salt, stored = _try_decode(parts[1], "b64"), _try_decode(parts[2], "b64")
        if salt is None or stored is None or int(parts[0]) < 1:
            raise SchemeError(f"invalid {name} password")
        return hmac.compare_digest(keys(password, salt, int(parts[0]))[0], stored)

    def generate(password: bytes, encoding: str | None, rounds: int | None) -> str:
        iters, salt = rounds or 4096, os.urandom(16)
        stored, server = keys(password, salt, iters)
        b64 = base64.b64encode
        return f"{iters},{b64(salt).decode()},{b64(stored).decode()},{b64(server).decode()}"

    return Scheme(name, verify, generate, slow=True)


def _build() -> dict[str, Scheme]:
    schemes = [
        Scheme("PLAIN", _plain_verify, _plain_generate),
        Scheme("CLEARTEXT", _plain_verify, _plain_generate),
        Scheme("CRYPT", _any_crypt_verify, _blf_generate, slow=True),  # 2.3 writes $2y$
        Scheme("MD5", _md5_verify, _md5_crypt_generate, slow=True),
        _crypt_scheme("MD5-CRYPT", "$1$", md5_crypt, 8),
        _crypt_scheme("SHA256-CRYPT", "$5$", sha256_crypt, 16),
        _crypt_scheme("SHA512-CRYPT", "$6$", sha512_crypt, 16),
        Scheme("BLF-CRYPT", _any_crypt_verify, _blf_generate, slow=True),
        Scheme("ARGON2I", _any_crypt_verify, _argon2_generate(argon2.Type.I), slow=True),
        Scheme("ARGON2ID", _any_crypt_verify, _argon2_generate(argon2.Type.ID), slow=True),
        _digest_scheme("SHA", "sha1", False, "b64"),
        _digest_scheme("SHA1", "sha1", False, "b64"),
        _digest_scheme("SHA256", "sha256", False, "b64"),
        _digest_scheme("SHA512", "sha512", False, "b64"),
        _digest_scheme("SSHA", "sha1", True, "b64"),
        _digest_scheme("SSHA256", "sha256", True, "b64"),
        _digest_scheme("SSHA512", "sha512", True, "b64"),
        _digest_scheme("SMD5", "md5", True, "b64"),
        _digest_scheme("PLAIN-MD5", "md5", False, "hex"),
        _digest_scheme("LDAP-MD5", "md5", False, "b64"),
        Scheme("PBKDF2", _pbkdf2_verify, _pbkdf2_generate, slow=True),
        _scram_scheme("SCRAM-SHA-1", "sha1"),
        _scram_scheme("SCRAM-SHA-256", "sha256"),
    ]
    return {s.name: s for s in schemes}


SCHEMES: dict[str, Scheme] = _build()


def register(scheme: Scheme) -> None:
    """Add (or replace) a password scheme."""
    SCHEMES[scheme.name.upper()] = scheme


def known_schemes() -> list[str]:
    return sorted(SCHEMES)


# -- public API --------------------------------------------------------------


def split_scheme(stored: str, default_scheme: str = DEFAULT_SCHEME) -> tuple[str, str | None, str]:
    """``{SHA256.HEX}abc`` → ``("SHA256", "hex", "abc")``; no prefix → default."""
    scheme, data = default_scheme, stored
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            scheme, data = stored[1:end], stored[end + 1 :]
    name, _, suffix = scheme.upper().partition(".")
    encoding = None
    if suffix:
        if suffix not in ENCODINGS:
            raise UnknownSchemeError(f"unknown scheme {scheme}")
        encoding = ENCODINGS[suffix]
    return name, encoding, data


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name.upper()]
    except KeyError:
        raise UnknownSchemeError(f"unknown scheme {name}") from None


def is_slow(stored: str, default_scheme: str = DEFAULT_SCHEME) -> bool:
    """True if verifying ``stored`` is expensive enough for a thread."""
    try:
        return get_scheme(split_scheme(stored, default_scheme)[0]).slow
    except SchemeError:
        return False


def verify(password: str | bytes, stored: str, default_scheme: str = DEFAULT_SCHEME) -> bool:
    """Does ``password`` match the stored ``{SCHEME}data``?

    Raises :class:`SchemeError` if the stored password can't be checked."""
    name, encoding, data = split_scheme(stored, default_scheme)
    return get_scheme(name).verify(_b(password), data, encoding)


def generate(password: str | bytes, scheme: str = "SHA512-CRYPT", rounds: int | None = None) -> str:
    """Hash ``password``; returns ``{SCHEME}data`` as doveadm pw prints it."""
    name, encoding, _ = split_scheme("{" + scheme + "}")
    data = get_scheme(name).generate(_b(password), encoding, rounds)
    return "{" + scheme.upper() + "}" + data


def pw_main(argv: list[str] | None = None) -> int:
    """``pydovecot-pw [-s SCHEME] [-p PASSWORD] [-r ROUNDS] [-t HASH] [-l]``."""
    parser = argparse.ArgumentParser(prog="pydovecot-pw", description="Generate password hashes")
    parser.add_argument("-s", dest="scheme", default=PW_DEFAULT_SCHEME)
    parser.add_argument("-p", dest="password")
    parser.add_argument("-r", dest="rounds", type=int)
    parser.add_argument("-t", dest="test", metavar="HASH", help="verify HASH against the password")
    parser.add_argument("-u", dest="user", help="user name (accepted for doveadm compatibility)")
    parser.add_argument("-l", dest="list", action="store_true", help="list known schemes")
    args = parser.parse_args(argv)
    if args.list:
        print(" ".join(known_schemes()))
        return 0
    password = args.password
    if password is None:
        password = getpass.getpass("Enter new password: ")
        if getpass.getpass("Retype new password: ") != password:
            print("Passwords don't match!", file=sys.stderr)
            return 1
    try:
        if args.test:
            if not verify(password, args.test, args.scheme):
                print(
                    "Fatal: reverse password verification check failed: Password mismatch",
                    file=sys.stderr,
                )
                return 1
            print(f"{args.test} (verified)")
            return 0
        print(generate(password, args.scheme, args.rounds))
    except SchemeError as e:
        print(f"Fatal: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(pw_main())
