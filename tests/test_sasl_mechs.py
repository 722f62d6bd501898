"""SASL mechanisms beyond PLAIN/LOGIN, and the exchange that drives them.

RFC test vectors (RFC 2195 CRAM-MD5, RFC 5802 SCRAM-SHA-1, RFC 7677
SCRAM-SHA-256), malformed input for each mechanism, channel binding,
EXTERNAL, ANONYMOUS, master users, and OAUTHBEARER/XOAUTH2 against a local
JWKS and against an RFC 7662 introspection server run here on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import time

from joserfc import jwt
from joserfc.jwk import KeySet
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server

from authd import sasl, schemes
from authd.exchange import SASLExchange, available_mechanisms
from authd.interfaces import AuthRequest
from authd.mechanisms.cram_md5 import CramMD5Mechanism, cram_context
from authd.mechanisms.scram import SCRAMMechanism
from authd.oauth import OAuth2Passdb, parse_config
from authd.server import AuthEngine, AuthOutcome
from authd.settings import AuthSettings, DbSettings

# -- a client side of SCRAM (also used by the end-to-end tests) -------------


class SCRAMClient:
    """Client side of SCRAM-SHA-1/256(-PLUS), RFC 5802."""

    def __init__(self, algorithm: str, user: str, password: str, nonce: str | None = None,
                 cb_type: str = "", cb_data: bytes = b"", flag: str | None = None):
        self.algorithm, self.user, self.password = algorithm, user, password
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self.gs2 = (f"p={cb_type},," if cb_type else f"{flag or 'n'},,").encode()
        self.cb_data = cb_data
        self.server_signature = b""

    def first(self) -> bytes:
        self.bare = f"n={self.user},r={self.nonce}".encode()
        return self.gs2 + self.bare

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(a.split(b"=", 1) for a in server_first.split(b","))
        salt, iters = base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
        salted = hashlib.pbkdf2_hmac(self.algorithm, self.password.encode(), salt, iters)
        client_key = hmac.new(salted, b"Client Key", self.algorithm).digest()
        stored = hashlib.new(self.algorithm, client_key).digest()
        without = b"c=" + base64.b64encode(self.gs2 + self.cb_data) + b",r=" + attrs[b"r"]
        message = b",".join((self.bare, server_first, without))
        signature = hmac.new(stored, message, self.algorithm).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", self.algorithm).digest()
        self.server_signature = base64.b64encode(
            hmac.new(server_key, message, self.algorithm).digest())
        return without + b",p=" + base64.b64encode(proof)


def scram_stored(algorithm: str, password: str, salt: bytes, iters: int = 4096) -> str:
    """Dovecot's ``iter,salt,StoredKey,ServerKey`` for a fixed salt."""
    salted = hashlib.pbkdf2_hmac(algorithm, password.encode(), salt, iters)
    client_key = hmac.new(salted, b"Client Key", algorithm).digest()
    stored = hashlib.new(algorithm, client_key).digest()
    server = hmac.new(salted, b"Server Key", algorithm).digest()
    b64 = base64.b64encode
    return f"{iters},{b64(salt).decode()},{b64(stored).decode()},{b64(server).decode()}"


# -- mechanisms alone: RFC vectors ------------------------------------------


class CramMD5Tests(unittest.TestCase):
    CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
    RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"

    def test_rfc2195_plain(self) -> None:
        mech = CramMD5Mechanism(None, challenge=self.CHALLENGE)
        self.assertEqual(mech.step(None), sasl.Continue(self.CHALLENGE))
        self.assertEqual(mech.step(self.RESPONSE),
                         sasl.NeedCredentials("tim", ("PLAIN", "CRAM-MD5")))
        self.assertEqual(mech.credentials("PLAIN", "tanstaaftanstaaf"), sasl.Verified("tim"))

    def test_rfc2195_stored_context(self) -> None:
        mech = CramMD5Mechanism(None, challenge=self.CHALLENGE)
        mech.step(None)
        mech.step(self.RESPONSE)
        stored = cram_context(b"tanstaaftanstaaf").hex()
        self.assertEqual(mech.credentials("CRAM-MD5", stored), sasl.Verified("tim"))
        self.assertTrue(schemes.verify("tanstaaftanstaaf", "{CRAM-MD5}" + stored))

    def test_wrong_password(self) -> None:
        mech = CramMD5Mechanism(None, challenge=self.CHALLENGE)
        mech.step(None)
        mech.step(self.RESPONSE)
        self.assertIsInstance(mech.credentials("PLAIN", "nope"), sasl.Fail)

    def test_malformed(self) -> None:
        for bad in (b"", b"tim", b"tim xyz", b"tim " + b"g" * 32, b" " + b"a" * 32,
                    b"\xff\xfe " + b"a" * 32, b"t\0m " + b"a" * 32):
            mech = CramMD5Mechanism(None, challenge=self.CHALLENGE)
            mech.step(None)
            self.assertIsInstance(mech.step(bad), sasl.Fail, repr(bad))
        self.assertIsInstance(CramMD5Mechanism().step(b"initial"), sasl.Fail)
        mech = CramMD5Mechanism(None, challenge=self.CHALLENGE)
        mech.step(None)
        self.assertIsInstance(mech.credentials("CRAM-MD5", "zz"), sasl.Fail)


class SCRAMVectorTests(unittest.TestCase):
    def run_vector(self, algo, cnonce, snonce, salt_b64, final, proof, verifier):
        mech = SCRAMMechanism(None, algo, nonce=snonce)
        step = mech.step(f"n,,n=user,r={cnonce}".encode())
        scheme = "SCRAM-SHA-1" if algo == "sha1" else "SCRAM-SHA-256"
        self.assertEqual(step, sasl.NeedCredentials("user", (scheme,)))
        step = mech.credentials(scheme, scram_stored(algo, "pencil", base64.b64decode(salt_b64)))
        self.assertEqual(step.challenge, f"r={cnonce}{snonce},s={salt_b64},i=4096".encode())
        step = mech.step(f"{final},p={proof}".encode())
        self.assertEqual(step, sasl.Continue(f"v={verifier}".encode()))
        self.assertEqual(mech.step(b""), sasl.Verified("user"))

    def test_rfc5802_sha1(self) -> None:
        self.run_vector("sha1", "fyko+d2lbbFgONRv9qkxdawL", "3rfcNHYJY1ZVvWVs7j",
                        "QSXCR+Q6sek8bf92",
                        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
                        "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", "rmF9pqV8S7suAoZWja4dJRkFsKQ=")

    def test_rfc7677_sha256(self) -> None:
        self.run_vector("sha256", "rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
                        "W22ZaJ0SNY7soEsUEjb6gQ==",
                        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
                        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")

    def test_wrong_proof(self) -> None:
        mech = SCRAMMechanism(None, "sha256", nonce="srv")
        mech.step(b"n,,n=user,r=abc")
        mech.credentials("SCRAM-SHA-256", scram_stored("sha256", "pencil", b"salt"))
        client = SCRAMClient("sha256", "user", "wrong", nonce="abc")
        client.first()
        step = mech.step(client.final(b"r=abcsrv,s=" + base64.b64encode(b"salt") + b",i=4096"))
        self.assertEqual(step, sasl.Fail("Authentication failed."))

    def test_malformed_first(self) -> None:
        for bad in (b"", b"x", b"n,,", b"n,,r=abc", b"n,,n=user", b"q,,n=user,r=a",
                    b"n,,n=us=er,r=a", b"n,,m=ext,n=user,r=a", b"n,,n=user,r=a,b",
                    b"n,,n=user,r=\x01", b"\xff,,n=user,r=a", b"p=tls-unique,,n=u,r=a",
                    b"n,b=x,n=user,r=a", b"n,a=,n=user,r=a", b"n,,n=\0,r=a"):
            step = SCRAMMechanism(None, "sha1").step(bad)
            self.assertIsInstance(step, sasl.Fail, repr(bad))
            self.assertTrue(step.reason.startswith("Invalid input"), repr(bad))

    def test_malformed_final(self) -> None:
        for bad in (b"", b"c=biws", b"c=biws,r=abcsrv", b"c=!!,r=abcsrv,p=AAAA",
                    b"c=biws,r=other,p=" + base64.b64encode(b"x" * 32),
                    b"c=eSws,r=abcsrv,p=" + base64.b64encode(b"x" * 32),
                    b"c=biws,r=abcsrv,p=AAAA"):
            mech = SCRAMMechanism(None, "sha256", nonce="srv")
            mech.step(b"n,,n=user,r=abc")
            mech.credentials("SCRAM-SHA-256", scram_stored("sha256", "pencil", b"salt"))
            self.assertIsInstance(mech.step(bad), sasl.Fail, repr(bad))

    def test_bad_stored_credentials(self) -> None:
        mech = SCRAMMechanism(None, "sha256")
        mech.step(b"n,,n=user,r=abc")
        step = mech.credentials("SCRAM-SHA-256", "x,y,z")
        self.assertTrue(step.temporary)


class ChannelBindingTests(unittest.TestCase):
    def exchange(self, client: SCRAMClient, context: sasl.SASLContext, plus: bool = True):
        mech = SCRAMMechanism(context, "sha256", plus=plus)
        step = mech.step(client.first())
        if not isinstance(step, sasl.NeedCredentials):
            return step
        step = mech.credentials("SCRAM-SHA-256", scram_stored("sha256", "pencil", b"salt"))
        step = mech.step(client.final(step.challenge))
        if isinstance(step, sasl.Continue):
            self.assertEqual(step.challenge, b"v=" + client.server_signature)
            return mech.step(b"")
        return step

    def test_plus_with_matching_binding(self) -> None:
        for kind in ("tls-unique", "tls-exporter"):
            ctx = sasl.SASLContext(channel_binding_type=kind, channel_binding=b"B" * 12)
            client = SCRAMClient("sha256", "user", "pencil", cb_type=kind, cb_data=b"B" * 12)
            self.assertEqual(self.exchange(client, ctx), sasl.Verified("user"))

    def test_plus_with_other_data(self) -> None:
        ctx = sasl.SASLContext(channel_binding_type="tls-unique", channel_binding=b"B" * 12)
        client = SCRAMClient("sha256", "user", "pencil", cb_type="tls-unique", cb_data=b"MITM")
        self.assertIsInstance(self.exchange(client, ctx), sasl.Fail)

    def test_plus_with_other_type(self) -> None:
        ctx = sasl.SASLContext(channel_binding_type="tls-exporter", channel_binding=b"B" * 12)
        client = SCRAMClient("sha256", "user", "pencil", cb_type="tls-unique", cb_data=b"B" * 12)
        self.assertIsInstance(self.exchange(client, ctx), sasl.Fail)

    def test_plus_requires_binding(self) -> None:
        ctx = sasl.SASLContext(channel_binding_type="tls-unique", channel_binding=b"B" * 12)
        client = SCRAMClient("sha256", "user", "pencil")
        self.assertIsInstance(self.exchange(client, ctx), sasl.Fail)

    def test_downgrade_detected(self) -> None:
        settings = AuthSettings(auth_mechanisms=["scram-sha-256", "scram-sha-256-plus"])
        ctx = sasl.SASLContext(settings=settings, channel_binding_type="tls-unique",
                               channel_binding=b"B" * 12)
        client = SCRAMClient("sha256", "user", "pencil", flag="y")
        self.assertIsInstance(self.exchange(client, ctx, plus=False), sasl.Fail)
        # ... but "y" is fine when we can't bind (no TLS).
        client = SCRAMClient("sha256", "user", "pencil", flag="y")
        ok = self.exchange(client, sasl.SASLContext(settings=settings), plus=False)
        self.assertEqual(ok, sasl.Verified("user"))


# -- whole exchanges against an engine --------------------------------------


class EngineMixin:
    mechanisms = ["plain", "login", "cram-md5", "scram-sha-1", "scram-sha-256",
                  "scram-sha-256-plus", "external", "anonymous"]

    def make_engine(self, users: str, passdbs=None, **settings) -> AuthEngine:
        self.dir = tempfile.mkdtemp(prefix="sasl-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        path = os.path.join(self.dir, "users")
        with open(path, "w") as f:
            f.write(users)
        defaults = dict(
            auth_mechanisms=self.mechanisms, auth_username_format="%Ln", auth_failure_delay=0,
            passdbs=[DbSettings("passwd-file", f"scheme=PLAIN {path}")],
            userdbs=[DbSettings("passwd-file", path)],
        )
        defaults.update(settings)
        return AuthEngine(AuthSettings(**defaults), passdbs=passdbs)

    def request(self) -> AuthRequest:
        return AuthRequest(user="", service="imap", local_ip="127.0.0.1", local_port=143,
                           remote_ip="127.0.0.1", remote_port=4000, session="s1", secured=True)

    @defer.inlineCallbacks
    def sasl(self, engine, mech, messages, context=None, initial=None):
        """Run an exchange: ``messages`` is a list of callables challenge →
        response (or bytes).  Returns (final reply, challenges)."""
        ex = SASLExchange(engine, mech, self.request(), context)
        reply = yield ex.start(initial)
        challenges = []
        for message in messages:
            if reply.status != "continue":
                break
            challenges.append(reply.challenge)
            data = message(reply.challenge) if callable(message) else message
            reply = yield ex.next(data)
        return reply, challenges


SALT = b"0123456789abcdef"
USERS = f"""\
alice:{{PLAIN}}secret:1000:1000::/home/alice::
carol:{{CRAM-MD5}}{cram_context(b"carolpw").hex()}:1000:1000::/home/carol::
scram:{{SCRAM-SHA-256}}{scram_stored("sha256", "pencil", SALT)}:1000:1000::/home/scram::
dave:{{SHA512-CRYPT}}$6$rounds=5000$abcdefgh$x:1000:1000::/home/dave::
admin:{{PLAIN}}masterpw:1000:1000::::
nologin:{{PLAIN}}secret:1000:1000::::nologin reason=Go_away
anonymous::1000:1000::/home/anon::
certuser::1000:1000::/home/certuser::
"""


class ExchangeTests(EngineMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.engine = self.make_engine(USERS)

    @defer.inlineCallbacks
    def test_plain_still_works(self) -> None:
        reply, _ = yield self.sasl(self.engine, "PLAIN", [], initial=b"\0alice\0secret")
        self.assertEqual((reply.status, reply.user), ("ok", "alice"))
        self.assertEqual(reply.fields["home"], "/home/alice")
        reply, _ = yield self.sasl(self.engine, "LOGIN", [b"alice", b"wrong"])
        self.assertEqual((reply.status, reply.reason), ("fail", "Authentication failed."))

    @defer.inlineCallbacks
    def test_cram_md5_plain_and_stored(self) -> None:
        def answer(user, password):
            return lambda ch: user.encode() + b" " + hmac.new(password, ch, "md5").hexdigest(
            ).encode()

        for user, pw in (("alice", b"secret"), ("carol", b"carolpw")):
            reply, challenges = yield self.sasl(self.engine, "CRAM-MD5", [answer(user, pw)])
            self.assertEqual((reply.status, reply.user), ("ok", user))
            self.assertRegex(challenges[0].decode(), r"^<\d+\.\d+@[^>]+>$")
        reply, _ = yield self.sasl(self.engine, "CRAM-MD5", [answer("carol", b"bad")])
        self.assertEqual(reply.status, "fail")
        # A hashed password can't do CRAM-MD5; an unknown user neither.
        for user in ("dave", "nobody"):
            reply, _ = yield self.sasl(self.engine, "CRAM-MD5", [answer(user, b"x")])
            self.assertEqual(reply.status, "fail")
            self.assertFalse(reply.temporary)

    @defer.inlineCallbacks
    def scram(self, algo, mech, user, password, context=None, **client_kw):
        client = SCRAMClient(algo, user, password, **client_kw)
        reply, challenges = yield self.sasl(
            self.engine, mech, [client.final, b""], context=context, initial=client.first())
        if len(challenges) == 2:
            self.assertEqual(challenges[1], b"v=" + client.server_signature)
        return reply

    @defer.inlineCallbacks
    def test_scram_plain_and_stored(self) -> None:
        reply = yield self.scram("sha256", "SCRAM-SHA-256", "alice", "secret")
        self.assertEqual((reply.status, reply.user), ("ok", "alice"))
        reply = yield self.scram("sha1", "SCRAM-SHA-1", "alice", "secret")
        self.assertEqual((reply.status, reply.user), ("ok", "alice"))
        reply = yield self.scram("sha256", "SCRAM-SHA-256", "scram", "pencil")
        self.assertEqual((reply.status, reply.user), ("ok", "scram"))
        reply = yield self.scram("sha256", "SCRAM-SHA-256", "scram", "wrong")
        self.assertEqual(reply.status, "fail")
        # Stored SCRAM-SHA-256 can't serve SCRAM-SHA-1.
        reply = yield self.scram("sha1", "SCRAM-SHA-1", "scram", "pencil")
        self.assertEqual(reply.status, "fail")

    @defer.inlineCallbacks
    def test_scram_plus(self) -> None:
        ctx = sasl.SASLContext(channel_binding_type="tls-exporter", channel_binding=b"K" * 32)
        reply = yield self.scram("sha256", "SCRAM-SHA-256-PLUS", "alice", "secret", ctx,
                                 cb_type="tls-exporter", cb_data=b"K" * 32)
        self.assertEqual((reply.status, reply.user), ("ok", "alice"))
        # No TLS data from the login process: -PLUS is refused at once.
        reply = yield self.scram("sha256", "SCRAM-SHA-256-PLUS", "alice", "secret",
                                 cb_type="tls-exporter", cb_data=b"K" * 32)
        self.assertEqual(reply.status, "fail")
        self.assertTrue(reply.nodelay)

    @defer.inlineCallbacks
    def test_nologin_after_proof(self) -> None:
        reply = yield self.scram("sha256", "SCRAM-SHA-256", "nologin", "secret")
        self.assertEqual((reply.status, reply.reason), ("fail", "Go_away"))

    @defer.inlineCallbacks
    def test_external(self) -> None:
        good = sasl.SASLContext(client_cert_user="certuser", valid_client_cert=True)
        for data in (b"", b"certuser"):
            reply, _ = yield self.sasl(self.engine, "EXTERNAL", [data], context=good)
            self.assertEqual((reply.status, reply.user), ("ok", "certuser"))
        reply, _ = yield self.sasl(self.engine, "EXTERNAL", [b"alice"], context=good)
        self.assertEqual(reply.status, "fail")
        invalid = sasl.SASLContext(client_cert_user="certuser", valid_client_cert=False)
        for ctx in (invalid, None):
            reply, _ = yield self.sasl(self.engine, "EXTERNAL", [b""], context=ctx)
            self.assertEqual(reply.status, "fail")
        unknown = sasl.SASLContext(client_cert_user="stranger", valid_client_cert=True)
        reply, _ = yield self.sasl(self.engine, "EXTERNAL", [b""], context=unknown)
        self.assertEqual(reply.status, "fail")

    @defer.inlineCallbacks
    def test_anonymous(self) -> None:
        reply, _ = yield self.sasl(self.engine, "ANONYMOUS", [b"trace@example.org"])
        self.assertEqual((reply.status, reply.user), ("ok", "anonymous"))
        reply, _ = yield self.sasl(self.engine, "ANONYMOUS", [b"x" * 300])
        self.assertEqual(reply.status, "fail")
        engine = self.make_engine(USERS, auth_mechanisms=["plain"])
        reply, _ = yield self.sasl(engine, "ANONYMOUS", [b""])
        self.assertEqual((reply.status, reply.reason),
                         ("fail", "Unsupported authentication mechanism."))

    @defer.inlineCallbacks
    def test_malformed_never_crashes(self) -> None:
        junk = [b"", b"\0", b"\xff" * 40, b"=" * 5, b",,,,", b"a" * 5000, b"\x01\x01"]
        for mech in self.mechanisms:
            for data in junk:
                reply, _ = yield self.sasl(self.engine, mech, [data, data, data])
                self.assertIn(reply.status, ("fail", "continue", "ok"), (mech, data))
                self.assertFalse(reply.temporary, (mech, data))

    def test_advertisement(self) -> None:
        self.assertEqual(available_mechanisms(self.engine, True),
                         [m.upper() for m in self.mechanisms])
        self.assertNotIn("PLAIN", available_mechanisms(self.engine, False))
        self.assertIn("CRAM-MD5", available_mechanisms(self.engine, False))
        # A passdb that can't supply credentials: no CRAM-MD5/SCRAM.
        engine = self.make_engine(USERS, passdbs=[(NoCredentialsDb(), DbSettings("pam"))])
        names = available_mechanisms(engine, True)
        self.assertNotIn("CRAM-MD5", names)
        self.assertNotIn("SCRAM-SHA-256", names)
        self.assertIn("PLAIN", names)


class NoCredentialsDb:
    driver = "pam"
    supports_credentials = False


class MasterUserTests(EngineMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_separator_calls_authenticate_master(self) -> None:
        engine = self.make_engine(USERS, auth_master_user_separator="*")
        calls = []

        def authenticate_master(request, login_user, master_user, password):
            calls.append((login_user, master_user, password))
            ok = master_user == "admin" and password == "masterpw"
            return defer.succeed(AuthOutcome(ok, user=login_user if ok else "",
                                             fields={"user": login_user}))

        engine.authenticate_master = authenticate_master
        reply, _ = yield self.sasl(engine, "PLAIN", [], initial=b"\0alice*admin\0masterpw")
        self.assertEqual((reply.status, reply.user), ("ok", "alice"))
        reply, _ = yield self.sasl(engine, "LOGIN", [b"alice*admin", b"bad"])
        self.assertEqual(reply.status, "fail")
        self.assertEqual(calls, [("alice", "admin", "masterpw"), ("alice", "admin", "bad")])

    @defer.inlineCallbacks
    def test_no_master_passdb_means_no_master_login(self) -> None:
        """With a separator but no ``master = yes`` passdb, ``alice*admin``
        is refused even with a right password."""
        engine = self.make_engine(USERS, auth_master_user_separator="*")
        reply, _ = yield self.sasl(engine, "PLAIN", [], initial=b"\0alice*admin\0masterpw")
        self.assertEqual(reply.status, "fail")


# -- OAuth2 -----------------------------------------------------------------


def bearer(user: str, token: str) -> bytes:
    return f"n,a={user},\x01host=localhost\x01port=143\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


class OAuthMechanismTests(unittest.TestCase):
    def test_parse(self) -> None:
        mech = sasl.create("OAUTHBEARER")
        self.assertEqual(mech.step(bearer("alice@example.org", "tok.en-1")),
                         sasl.PlainCredentials("alice@example.org", "tok.en-1"))
        mech = sasl.create("XOAUTH2")
        self.assertEqual(mech.step(xoauth2("alice", "t0k")), sasl.PlainCredentials("alice", "t0k"))

    def test_malformed(self) -> None:
        for bad in (b"", b"n,,", b"x,a=u,\x01auth=Bearer t\x01\x01", b"n,a=u,auth=Bearer t",
                    b"n,a=u,\x01auth=Bearer t\x01", b"n,a=u,\x01auth=Basic t\x01\x01",
                    b"n,a=u,\x01auth=Bearer \x01\x01", b"n,a=u=zz,\x01auth=Bearer t\x01\x01",
                    b"n,a=u,\x01auth=Bearer t\x01auth=Bearer u\x01\x01", b"\xff,a=u,"):
            self.assertIsInstance(sasl.create("OAUTHBEARER").step(bad), sasl.Fail, repr(bad))
        for bad in (b"", b"user=\x01auth=Bearer t\x01\x01", b"user=u\x01\x01",
                    b"user=u\x01auth=Bearer t", b"user=u\x01auth=Bearer t\x01x=y\x01\x01"):
            self.assertIsInstance(sasl.create("XOAUTH2").step(bad), sasl.Fail, repr(bad))

    def test_config_parser(self) -> None:
        conf = parse_config('# comment\nintrospection_url = https://idp/x\n'
                            'introspection_mode = post\nusername_attribute = "sub"\n')
        self.assertEqual(conf["introspection_url"], "https://idp/x")
        self.assertEqual(conf["username_attribute"], "sub")
        self.assertEqual(conf["active_attribute"], "")
        self.assertRaises(ValueError, parse_config, "garbage line\n")
        self.assertRaises(ValueError, parse_config, "introspection_mode = carrier-pigeon\n")


class Introspection(resource.Resource):
    """RFC 7662 endpoint: POST token=… → {"active": …, "email": …}."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.tokens = {"good": {"active": True, "email": "alice"},
                       "inactive": {"active": False, "email": "alice"},
                       "bob": {"active": True, "email": "bob"}}
        self.auth_headers: list[bytes | None] = []

    def render_POST(self, request):
        self.auth_headers.append(request.getHeader(b"authorization"))
        token = request.args.get(b"token", [b""])[0].decode()
        if token == "broken":
            request.setResponseCode(500)
            return b"oops"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.tokens.get(token, {"active": False})).encode()


class OAuthExchangeTests(EngineMixin, unittest.TestCase):
    mechanisms = ["oauthbearer", "xoauth2"]

    def setUp(self) -> None:
        self.engine = self.make_engine(USERS)

    def use_passdb(self, db: OAuth2Passdb) -> None:
        self.engine = self.make_engine(USERS, passdbs=[(db, DbSettings("oauth2"))])

    @defer.inlineCallbacks
    def test_introspection(self) -> None:
        endpoint = Introspection()
        port = reactor.listenTCP(0, server.Site(endpoint), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/introspect"
        self.use_passdb(OAuth2Passdb(settings={
            "introspection_url": url, "introspection_mode": "post",
            "client_id": "pydovecot", "client_secret": "s3cret", "timeout_msecs": "5000"}))
        self.assertEqual(available_mechanisms(self.engine, False), ["OAUTHBEARER", "XOAUTH2"])
        reply, _ = yield self.sasl(self.engine, "OAUTHBEARER", [], initial=bearer("alice", "good"))
        self.assertEqual((reply.status, reply.user), ("ok", "alice"))
        self.assertEqual(endpoint.auth_headers[0],
                         b"Basic " + base64.b64encode(b"pydovecot:s3cret"))
        reply, _ = yield self.sasl(self.engine, "XOAUTH2", [], initial=xoauth2("alice", "good"))
        self.assertEqual((reply.status, reply.user), ("ok", "alice"))
        # Inactive and foreign tokens: RFC 7628's error, then failure.
        for token in ("inactive", "bob", "unknown"):
            reply, challenges = yield self.sasl(self.engine, "OAUTHBEARER", [b"\x01"],
                                               initial=bearer("alice", token))
            self.assertEqual(reply.status, "fail")
            self.assertFalse(reply.temporary)
            self.assertEqual(json.loads(challenges[0])["status"], "invalid_token")
        reply, challenges = yield self.sasl(self.engine, "XOAUTH2", [b""],
                                           initial=xoauth2("alice", "inactive"))
        self.assertEqual((reply.status, json.loads(challenges[0])["status"]), ("fail", "401"))
        # Server trouble is temporary.
        reply, _ = yield self.sasl(self.engine, "OAUTHBEARER", [b"\x01"],
                                  initial=bearer("alice", "broken"))
        self.assertEqual((reply.status, reply.temporary), ("fail", True))

    @defer.inlineCallbacks
    def test_local_jwks(self) -> None:
        keys = KeySet.generate_key_set("RSA", 2048, count=1)
        key = keys.keys[0]
        path = os.path.join(self.dir, "jwks.json")
        with open(path, "w") as f:
            json.dump(keys.as_dict(private=False), f)
        self.use_passdb(OAuth2Passdb(settings={
            "local_validation_key_dict": f"file:{path}", "issuers": "https://idp.example",
            "client_id": "mail"}))
        now = int(time.time())

        def token(**claims):
            base = {"iss": "https://idp.example", "aud": "mail", "email": "alice",
                    "exp": now + 300, "nbf": now - 10}
            base.update(claims)
            base = {k: v for k, v in base.items() if v is not None}
            return jwt.encode({"alg": "RS256", "kid": key.kid}, base, keys)

        reply, _ = yield self.sasl(self.engine, "OAUTHBEARER", [], initial=bearer("alice", token()))
        self.assertEqual((reply.status, reply.user), ("ok", "alice"))
        other = KeySet.generate_key_set("RSA", 2048, count=1)
        forged = jwt.encode({"alg": "RS256", "kid": key.kid},
                            {"email": "alice", "exp": now + 300, "iss": "https://idp.example",
                             "aud": "mail"}, other.keys[0])
        for bad in (token(exp=now - 5), token(nbf=now + 600), token(iss="https://evil"),
                    token(aud="other"), token(email="bob"), token(exp=None), forged,
                    "not.a.jwt"):
            reply, challenges = yield self.sasl(self.engine, "OAUTHBEARER", [b"\x01"],
                                               initial=bearer("alice", bad))
            self.assertEqual(reply.status, "fail", bad)
            self.assertFalse(reply.temporary, bad)

    def test_driver_registered(self) -> None:
        from authd import drivers

        path = os.path.join(self.dir, "oauth2.conf.ext")
        with open(path, "w") as f:
            f.write("introspection_url = http://127.0.0.1:1/\nintrospection_mode = post\n")
        db = drivers.create_passdb(DbSettings("oauth2", path))
        self.assertEqual(db.driver, "oauth2")
