"""Tests for IMAP URLs (RFC 5092), URLAUTH (RFC 4467), extended URLFETCH
(RFC 5524), URL-PARTIAL (RFC 5550) and resolve_url (for CATENATE).

Unit tests for :mod:`pydovecot.imap.imapurl` and the pieces of
:mod:`pydovecot.imap.urlauth`; protocol tests over a StringTransport; and
end-to-end tests with imaplib over 127.0.0.1 against IMAPSession on the
real Maildir storage."""

from __future__ import annotations

import datetime
import imaplib
import io
import os
import stat
import tempfile
import time

from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from pydovecot.imap import imapurl, urlauth
from pydovecot.imap.imapurl import ImapURL, URLError
from pydovecot.imap.session import IMAPSession
from pydovecot.session import SessionContext
from pydovecot.storage import open_storage
from tests.storage_now import now, result_now


def now_resolve(session, url):
    """urlauth.resolve_url, whose storage answers are already in."""
    return result_now(urlauth.resolve_url(session, url))


MSG = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: parts\r\n"
    b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n"
    b"--b1\r\nContent-Type: text/plain\r\n\r\nSi vis pacem, para bellum.\r\n"
    b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAECAwQ=\r\n--b1--\r\n"
)
FULL = (
    "imap://alice@example.com/INBOX;UIDVALIDITY=385759045/;UID=20/;SECTION=1.2/;PARTIAL=0.100"
    ";EXPIRE=2030-01-02T03:04:05Z;URLAUTH=submit+alice:internal:91354a473744909de610943775f92038"
)


class ParseTests(unittest.TestCase):
    def test_full_url(self):
        url = imapurl.parse(FULL)
        self.assertEqual(
            (url.user, url.host, url.port, url.mailbox, url.uidvalidity, url.uid, url.section),
            ("alice", "example.com", None, "INBOX", 385759045, 20, "1.2"),
        )
        self.assertEqual(url.partial, (0, 100))
        self.assertEqual(url.expire, datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))
        self.assertEqual((url.access, url.access_kind, url.access_user), ("submit+alice", "submit", "alice"))
        self.assertEqual((url.mechanism, url.token), ("internal", "91354a473744909de610943775f92038"))
        self.assertEqual(url.rump, FULL[: FULL.index(":internal:")])
        self.assertTrue(url.is_urlauth())
        self.assertFalse(url.is_rump())
        self.assertEqual(imapurl.format_url(url), FULL)

    def test_lower_case_rfc4467_example(self):
        text = "imap://joe@example.com/INBOX/;uid=20/;section=1.2;urlauth=submit+fred"
        url = imapurl.parse(text)
        self.assertTrue(url.is_rump())
        self.assertEqual(url.rump, text)
        self.assertEqual(imapurl.format_url(url),
                         "imap://joe@example.com/INBOX/;UID=20/;SECTION=1.2;URLAUTH=submit+fred")

    def test_percent_encoding(self):
        url = ImapURL(host="h", user="a@b c", mailbox="Café/100% sure", uid=3,
                      section="HEADER.FIELDS (FROM)", partial=(5, None))
        text = imapurl.format_url(url)
        self.assertEqual(
            text,
            "imap://a%40b%20c@h/Caf%C3%A9/100%25%20sure/;UID=3/;SECTION=HEADER.FIELDS%20(FROM)"
            "/;PARTIAL=5",
        )
        back = imapurl.parse(text)
        self.assertEqual((back.user, back.mailbox, back.section, back.partial),
                         (url.user, url.mailbox, url.section, url.partial))

    def test_authority_forms(self):
        url = imapurl.parse("imap://fred;AUTH=*@[::1]:1143/INBOX")
        self.assertEqual((url.user, url.auth_type, url.host, url.port, url.mailbox),
                         ("fred", "*", "[::1]", 1143, "INBOX"))
        self.assertEqual(imapurl.parse("imap://Example.COM").host, "example.com")
        self.assertEqual(imapurl.parse("imap://h/INBOX?SUBJECT%20x").search, "SUBJECT x")

    def test_relative(self):
        base = ImapURL(user="alice", mailbox="Drafts", uidvalidity=7)
        url = imapurl.parse(";UID=20/;SECTION=1.MIME", base)
        self.assertEqual((url.user, url.mailbox, url.uidvalidity, url.uid, url.section),
                         ("alice", "Drafts", 7, 20, "1.MIME"))
        url = imapurl.parse("/INBOX;UIDVALIDITY=3/;UID=2/;PARTIAL=1.2", base)
        self.assertEqual((url.mailbox, url.uidvalidity, url.uid, url.partial), ("INBOX", 3, 2, (1, 2)))
        self.assertRaises(URLError, imapurl.parse, ";UID=1", ImapURL(user="alice"))
        self.assertRaises(URLError, imapurl.parse, ";UID=1")
        self.assertRaises(URLError, imapurl.parse, "/INBOX/;UID=1;URLAUTH=anonymous", base)

    def test_malformed(self):
        bad = [
            "", "http://h/INBOX", "imap://", "imap://h/IN BOX", "imap://h/INBOX/;UID=0",
            "imap://h/INBOX;UID=1", "imap://h/INBOX/;UID=1/", "imap://h/INBOX/;SECTION=1",
            "imap://h/;UID=1", "imap://h/INBOX/;UID=1;URLAUTH=bogus",
            "imap://h/INBOX/;UID=1;URLAUTH=user+", "imap://h/INBOX/;UID=1;URLAUTH=anonymous:internal:12",
            "imap://h/INBOX/;UID=1;URLAUTH=anonymous:in ternal:" + "0" * 32,
            "imap://h/INBOX/;UID=1;EXPIRE=2020-13-01T00:00:00Z;URLAUTH=anonymous",
            "imap://h/INBOX/;UID=1;EXPIRE=2030-01-01T00:00:00Z", "imap://h/IN%ZZ/;UID=1",
            "imap://h/IN%FF/;UID=1", "imap://h/IN%0A/;UID=1", "imap://@h/INBOX",
            "imap://h:99999/INBOX", "imap://h/INBOX/;UID=1/;UID=2", "imap://h/INBOX/;FOO=1",
            "imap://h/INBOX/;UID=1/;PARTIAL=1.0", "imap://h/INBOX/;UID=99999999999",
            "imap://h/INBOX/;UID=1#frag", "imap://a@b@h/INBOX", "imap://h/INBOX/;UID=1\r\n",
            "imap://h/INBOX/;UID=1/;SECTION=1;UIDVALIDITY=5", "x" * 9000,
        ]
        for text in bad:
            with self.subTest(text=text):
                self.assertRaises(URLError, imapurl.parse, text)
        self.assertRaises(URLError, imapurl.parse, b"imap://h/\xff")

    def test_partial(self):
        self.assertEqual(imapurl.apply_partial(b"0123456789", (2, 3)), b"234")
        self.assertEqual(imapurl.apply_partial(b"0123456789", (8, None)), b"89")
        self.assertEqual(imapurl.apply_partial(b"0123", (10, 5)), b"")
        self.assertEqual(imapurl.apply_partial(b"0123", None), b"0123")

    def test_expire_zones(self):
        when = imapurl.parse_datetime("2030-01-02T03:04:05.5+02:00")
        self.assertEqual(imapurl.format_datetime(when), "2030-01-02T01:04:05.5Z")


class PiecesTests(unittest.TestCase):
    def test_keystore_file(self):
        root = tempfile.mkdtemp()
        path = os.path.join(root, "dovecot-attributes")  # the storage's attribute dict
        storage = now(open_storage("alice", "maildir:~/Maildir", root))
        storage.create("Sent")
        storage.create("Box")
        store = now(urlauth.KeyStore(storage.inner))
        self.assertIsNone(store.get("INBOX", 5, create=False))
        key = store.get("INBOX", 5, create=True)
        self.assertEqual(len(key), 32)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        other = now(urlauth.KeyStore(open_storage("alice", "maildir:~/Maildir", root)))  # another process
        self.assertEqual(other.get("INBOX", 5, create=False), key)
        self.assertIsNotNone(other.get("Box", 5, create=True))
        storage.delete("Box")
        storage.create("Box")
        self.assertIsNone(other.get("Box", 6, create=False))  # re-created mailbox
        self.assertNotEqual(store.get("Sent", 1, create=True), key)
        other.reset("INBOX")
        self.assertIsNone(store.get("INBOX", 5, create=False))
        self.assertIsNotNone(store.get("Sent", 1, create=False))
        store.reset()
        self.assertIsNone(store.get("Sent", 1, create=False))
        with open(path, "w") as f:
            f.write("{not json")
        self.assertIsNone(store.get("Sent", 1, create=False))

    def test_token(self):
        key = b"k" * 32
        token = urlauth.make_token(key, "imap://a@h/INBOX/;UID=1;URLAUTH=anonymous")
        self.assertRegex(token, r"^01[0-9a-f]{64}$")
        self.assertTrue(urlauth.verify_token(key, "imap://a@h/INBOX/;UID=1;URLAUTH=anonymous", token))
        self.assertTrue(urlauth.verify_token(key, "imap://a@h/INBOX/;UID=1;URLAUTH=anonymous",
                                             token.upper()))
        self.assertFalse(urlauth.verify_token(key, "imap://a@h/INBOX/;UID=2;URLAUTH=anonymous", token))
        self.assertFalse(urlauth.verify_token(b"x" * 32, "imap://a@h/INBOX/;UID=1;URLAUTH=anonymous",
                                              token))

    def test_access(self):
        def url(access: str) -> ImapURL:
            return imapurl.parse(f"imap://alice@h/INBOX/;UID=1;URLAUTH={access}")

        self.assertIsNone(urlauth.check_access(url("anonymous"), "alice"))
        self.assertIsNone(urlauth.check_access(url("anonymous"), "alice", anonymous=True))
        self.assertIsNone(urlauth.check_access(url("authuser"), "alice"))
        self.assertIsNotNone(urlauth.check_access(url("authuser"), "alice", anonymous=True))
        self.assertIsNone(urlauth.check_access(url("user+alice"), "alice"))
        self.assertIsNotNone(urlauth.check_access(url("user+bob"), "alice"))
        self.assertIsNone(urlauth.check_access(url("submit+alice"), "alice"))
        self.assertIsNotNone(urlauth.check_access(url("submit+bob"), "alice"))

    def test_hostport(self):
        url = imapurl.parse("imap://alice@mail.example.com:993/INBOX/;UID=1;URLAUTH=anonymous")
        self.assertIsNone(urlauth.check_hostport(url, {}))
        self.assertIsNotNone(urlauth.check_hostport(url, {"imap_urlauth_host": "*"}))
        self.assertIsNone(urlauth.check_hostport(url, {"imap_urlauth_host": "*", "imap_urlauth_port": "993"}))
        self.assertIsNone(urlauth.check_hostport(
            url, {"imap_urlauth_host": "Mail.Example.com", "imap_urlauth_port": 993}))
        self.assertIsNotNone(urlauth.check_hostport(
            url, {"imap_urlauth_host": "other.example.com", "imap_urlauth_port": 993}))

    def test_expired(self):
        url = imapurl.parse("imap://a@h/INBOX/;UID=1;EXPIRE=2020-01-01T00:00:00Z;URLAUTH=anonymous")
        self.assertTrue(urlauth.expired(url))
        self.assertFalse(urlauth.expired(url, datetime.datetime(2019, 1, 1, tzinfo=datetime.UTC)))


class Client:
    """One session on a StringTransport over a real Maildir."""

    def __init__(self, storage, user: str = "alice", settings: dict | None = None):
        self.transport = StringTransport()
        self.session = IMAPSession(storage, SessionContext(user, "s1", settings=settings or {}))
        self.session.clock = Clock()  # autologout and IDLE timers
        self.session.slice = 60.0  # pipelined commands all run at once, however slow
        self.session.makeConnection(self.transport)
        self.session.start(None, b"")

    def send(self, data: bytes) -> bytes:
        self.session.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        return out


def quoted(out: bytes, prefix: bytes) -> bytes:
    """The first quoted string of the untagged response ``prefix``."""
    line = next(x for x in out.split(b"\r\n") if x.startswith(prefix))
    return line.split(b'"')[1]


class ProtocolTests(unittest.TestCase):
    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="imap-urlauth-")
        self.storage = open_storage("alice", "maildir:~/Maildir", self.home)
        self.storage.append("INBOX", io.BytesIO(MSG))
        self.c = Client(self.storage)
        self.failures: list[dict] = []

        def observe(event: dict) -> None:
            if event.get("log_failure") is not None:
                self.failures.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def tearDown(self):
        self.assertEqual(self.failures, [])

    def gen(self, rump: bytes, c: Client | None = None) -> bytes:
        out = (c or self.c).send(b'g GENURLAUTH "' + rump + b'" INTERNAL\r\n')
        self.assertTrue(out.endswith(b"g OK GENURLAUTH completed.\r\n"), out)
        return quoted(out, b"* GENURLAUTH ")

    def test_generate_and_fetch(self):
        url = self.gen(b"imap://alice@localhost/INBOX/;UID=1/;SECTION=1;URLAUTH=user+alice")
        self.assertRegex(url, rb";URLAUTH=user\+alice:internal:01[0-9a-f]{64}$")
        out = self.c.send(b'f URLFETCH "' + url + b'"\r\n')
        self.assertEqual(out, b'* URLFETCH "' + url + b'" {26}\r\nSi vis pacem, para bellum.\r\n'
                         b"f OK URLFETCH completed.\r\n")
        path = os.path.join(self.home, "dovecot-attributes")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual([m.name for m in result_now(self.storage.list_mailboxes())], ["INBOX"])

    def test_multiple_urls_and_tampering(self):
        out = self.c.send(b'g GENURLAUTH "imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous" INTERNAL '
                          b'"imap://alice@h/INBOX/;UID=1/;SECTION=HEADER;URLAUTH=authuser" internal\r\n')
        line = out.split(b"\r\n")[0]
        urls = line.split(b'"')[1::2]
        self.assertEqual(len(urls), 2)
        tampered = urls[1].replace(b"SECTION=HEADER", b"SECTION=TEXT")
        out = self.c.send(b'f URLFETCH "%s" "%s" "%s"\r\n' % (urls[0], urls[1], tampered))
        self.assertIn(b'* URLFETCH "%s" {%d}\r\n%s\r\n' % (urls[0], len(MSG), MSG), out)
        self.assertIn(b"Subject: parts\r\nContent-Type", out)
        self.assertIn(b'* URLFETCH "%s" NIL\r\n' % tampered, out)
        self.assertTrue(out.endswith(b"f OK URLFETCH completed.\r\n"))

    def test_extended_urlfetch(self):
        url1 = self.gen(b"imap://alice@h/INBOX/;UID=1/;SECTION=1;URLAUTH=anonymous")
        url2 = self.gen(b"imap://alice@h/INBOX/;UID=1/;SECTION=2/;PARTIAL=1.3;URLAUTH=anonymous")
        out = self.c.send(b'f URLFETCH ("%s" BODYPARTSTRUCTURE BINARY) ("%s" BINARY) ("%s" BODY)'
                          b' ("%s")\r\n' % (url1, url2, url2, url1))
        self.assertIn(b'* URLFETCH "%s" (BODYPARTSTRUCTURE ("text" "plain" ("charset" "us-ascii") '
                      b'NIL NIL "7bit" 26 0 NIL NIL NIL NIL)) (BINARY {26}\r\n'
                      b"Si vis pacem, para bellum.)\r\n" % url1, out)
        self.assertIn(b'* URLFETCH "%s" (BINARY {3}\r\n\x01\x02\x03)\r\n' % url2, out)
        self.assertIn(b'* URLFETCH "%s" (BODY {3}\r\nAEC)\r\n' % url2, out)
        self.assertIn(b'* URLFETCH "%s" (BODY {26}\r\n' % url1, out)
        url0 = self.gen(b"imap://alice@h/INBOX/;UID=1/;SECTION=2/;PARTIAL=0.2;URLAUTH=anonymous")
        out = self.c.send(b'f URLFETCH ("%s" BINARY)\r\n' % url0)
        self.assertIn(b'(BINARY ~{2}\r\n\x00\x01)\r\n', out)
        out = self.c.send(b'f URLFETCH ("%s" BODY BINARY)\r\n' % url0)
        self.assertEqual(out, b"f BAD Error in IMAP command URLFETCH: URL cannot have both BODY "
                         b"and BINARY fetch parameters.\r\n")

    def test_resetkey(self):
        url = self.gen(b"imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous")
        self.assertEqual(self.c.send(b"r RESETKEY INBOX INTERNAL\r\n"),
                         b"r OK [URLMECH INTERNAL] Key removed.\r\n")
        out = self.c.send(b'f URLFETCH "' + url + b'"\r\n')
        self.assertTrue(out.startswith(b'* URLFETCH "' + url + b'" NIL\r\n'))
        url = self.gen(b"imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous")
        self.assertEqual(self.c.send(b"r RESETKEY\r\n"), b"r OK All keys removed.\r\n")
        self.assertIn(b" NIL\r\n", self.c.send(b'f URLFETCH "' + url + b'"\r\n'))
        self.assertEqual(self.c.send(b"r RESETKEY INBOX XSAMPLE\r\n"),
                         b"r NO Unsupported URLAUTH mechanism.\r\n")
        self.assertTrue(self.c.send(b"r RESETKEY Nope\r\n").startswith(b"r NO [NONEXISTENT]"))
        self.assertTrue(self.c.send(b"r RESETKEY (x)\r\n").startswith(b"r BAD "))

    def test_key_survives_sessions_not_mailbox_recreation(self):
        self.storage.create("Work")
        self.storage.append("Work", io.BytesIO(MSG))
        url = self.gen(b"imap://alice@h/Work/;UID=1/;SECTION=1;URLAUTH=anonymous")
        other = Client(self.storage)
        self.assertIn(b"{26}\r\n", other.send(b'f URLFETCH "' + url + b'"\r\n'))
        self.storage.delete("Work")
        self.storage.create("Work")
        self.storage.append("Work", io.BytesIO(MSG))
        self.assertIn(b" NIL\r\n", other.send(b'f URLFETCH "' + url + b'"\r\n'))

    def test_other_users_url(self):
        home = tempfile.mkdtemp(prefix="imap-urlauth-bob-")
        bob_storage = open_storage("bob", "maildir:~/Maildir", home)
        bob_storage.append("INBOX", io.BytesIO(b"Subject: bob's secret\r\n\r\nsecret\r\n"))
        bob = Client(bob_storage, "bob")
        url = self.gen(b"imap://bob@h/INBOX/;UID=1;URLAUTH=anonymous", bob)
        self.assertIn(b"secret", bob.send(b'f URLFETCH "' + url + b'"\r\n'))
        out = self.c.send(b'f URLFETCH "' + url + b'"\r\n')
        self.assertEqual(out, b'* URLFETCH "' + url + b'" NIL\r\n* NO Not permitted to fetch '
                         b"URLAUTH for this user.\r\nf OK URLFETCH completed.\r\n")
        # Alice's own URL with bob's name swapped in is refused before storage too.
        own = self.gen(b"imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous")
        self.assertIn(b" NIL\r\n", self.c.send(b'f URLFETCH "%s"\r\n' % own.replace(b"alice@", b"bob@")))
        # Neither may alice sign URLs for bob, nor fetch user+bob URLs of her own.
        out = self.c.send(b'g GENURLAUTH "imap://bob@h/INBOX/;UID=1;URLAUTH=anonymous" INTERNAL\r\n')
        self.assertTrue(out.startswith(b"g BAD "))
        url = self.gen(b"imap://alice@h/INBOX/;UID=1;URLAUTH=user+bob")
        self.assertIn(b" NIL\r\n", self.c.send(b'f URLFETCH "' + url + b'"\r\n'))

    def test_expired(self):
        out = self.c.send(b'g GENURLAUTH "imap://alice@h/INBOX/;UID=1;EXPIRE=2001-01-01T00:00:00Z;'
                          b'URLAUTH=anonymous" INTERNAL\r\n')
        self.assertEqual(out, b"g BAD Error in IMAP command GENURLAUTH: URLAUTH has already expired\r\n")
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        url = self.gen(b"imap://alice@h/INBOX/;UID=1;EXPIRE=%s;URLAUTH=anonymous"
                       % imapurl.format_datetime(soon).encode())
        self.assertIn(b"{%d}" % len(MSG), self.c.send(b'f URLFETCH "' + url + b'"\r\n'))
        self.patch(urlauth, "expired", lambda url, now=None: True)
        out = self.c.send(b'f URLFETCH "' + url + b'"\r\n')
        self.assertIn(b" NIL\r\n* NO URLAUTH has expired.\r\n", out)

    def test_generate_refusals(self):
        cases = {
            b'"imap://alice@h/INBOX/;UID=9;URLAUTH=anonymous" INTERNAL': b"Invalid URL: No such message",
            b'"imap://alice@h/INBOX/;UID=1/;SECTION=7;URLAUTH=anonymous" INTERNAL': b"No such section",
            b'"imap://alice@h/INBOX;UIDVALIDITY=1/;UID=1;URLAUTH=anonymous" INTERNAL': b"UIDVALIDITY",
            b'"imap://alice@h/Nope/;UID=1;URLAUTH=anonymous" INTERNAL': b"Invalid URL",
            b'"imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous" XSAMPLE': b"Unsupported URLAUTH mechanism",
            b'"imap://alice@h/INBOX/;UID=1" INTERNAL': b"Must be an URLAUTH rump URL",
            b'"imap://h/INBOX/;UID=1;URLAUTH=anonymous" INTERNAL': b"Missing user name",
            b'"imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous:internal:' + b"0" * 32 + b'" INTERNAL':
                b"Must be an URLAUTH rump URL",
            b'"imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous"': b"Invalid arguments",
            b"(x) INTERNAL": b"Invalid URL",
            b'"imap://alice@h/IN%FF/;UID=1;URLAUTH=anonymous" INTERNAL': b"not valid UTF-8",
            b"": b"Invalid arguments",
        }
        for args, why in cases.items():
            with self.subTest(args=args):
                out = self.c.send(b"g GENURLAUTH " + args + b"\r\n")
                self.assertTrue(out.startswith(b"g BAD Error in IMAP command GENURLAUTH: "), out)
                self.assertIn(why, out)
        self.assertIsNone(result_now(self.storage.get_attribute("INBOX", urlauth.KEY_ATTRIBUTE)))

    def test_configured_host(self):
        c = Client(self.storage, settings={"imap_urlauth_host": "mail.example.com"})
        out = c.send(b'g GENURLAUTH "imap://alice@other.example.com/INBOX/;UID=1;URLAUTH=anonymous"'
                     b" INTERNAL\r\n")
        self.assertIn(b"Inappropriate host name", out)
        url = self.gen(b"imap://alice@MAIL.example.com/INBOX/;UID=1;URLAUTH=anonymous", c)
        self.assertIn(b"{%d}" % len(MSG), c.send(b'f URLFETCH "' + url + b'"\r\n'))

    def test_malformed_urlfetch(self):
        for args in [b'"garbage"', b'"imap://alice@h/INBOX/;UID=1"', b"NIL-ish", b'"imap://alice@h/\xc3\xa9"',
                     b'"imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous:internal:' + b"0" * 32 + b'"',
                     b'"imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous:xfoo:' + b"0" * 32 + b'"',
                     b'"imap://alice@h/Nope/;UID=1;URLAUTH=anonymous:internal:' + b"0" * 32 + b'"',
                     b'{5}\r\n12345']:
            with self.subTest(args=args):
                out = self.c.send(b"f URLFETCH " + args + b"\r\n")
                self.assertIn(b" NIL\r\n", out)
                self.assertTrue(out.endswith(b"f OK URLFETCH completed.\r\n"), out)
        for args in [b"", b"NIL", b"()", b"((x))", b'("u" FOO)', b'("u" "BODY")']:
            with self.subTest(args=args):
                out = self.c.send(b"f URLFETCH " + args + b"\r\n")
                self.assertTrue(out.startswith(b"f BAD "), out)


class FakeSession:
    def __init__(self, storage, user: str, mailbox=None, settings=None):
        self.storage = storage
        self.ctx = SessionContext(user, "s", settings=settings or {})
        self.mailbox = mailbox


class ResolveTests(unittest.TestCase):
    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="imap-resolve-")
        self.storage = open_storage("alice", "maildir:~/Maildir", self.home)
        self.storage.append("INBOX", io.BytesIO(MSG))
        self.storage.create("Drafts")
        self.storage.append("Drafts", io.BytesIO(b"Subject: draft\r\n\r\ndraft body\r\n"))

    def test_relative_and_absolute(self):
        drafts = result_now(self.storage.open("Drafts"))
        self.addCleanup(drafts.close)
        s = FakeSession(self.storage, "alice", drafts)
        v = drafts.uidvalidity
        self.assertEqual(now_resolve(s, ";UID=1/;SECTION=TEXT"), b"draft body\r\n")
        self.assertEqual(now_resolve(s, b"/Drafts;UIDVALIDITY=%d/;UID=1/;SECTION=HEADER" % v),
                         b"Subject: draft\r\n\r\n")
        self.assertIsNone(now_resolve(s, f"/Drafts;UIDVALIDITY={v + 1}/;UID=1"))
        self.assertEqual(now_resolve(s, "/INBOX/;UID=1/;SECTION=1/;PARTIAL=3.5"), b"vis p")
        self.assertEqual(now_resolve(s, "imap://alice@h/INBOX/;UID=1/;SECTION=1.MIME"),
                         b"Content-Type: text/plain\r\n\r\n")
        self.assertIsNone(now_resolve(s, "imap://bob@h/INBOX/;UID=1"))
        self.assertIsNone(now_resolve(s, "/INBOX/;UID=2"))
        self.assertIsNone(now_resolve(s, "/INBOX/;UID=1/;SECTION=3"))
        self.assertIsNone(now_resolve(s, "/Nope/;UID=1"))
        self.assertIsNone(now_resolve(s, "/INBOX"))
        self.assertIsNone(now_resolve(s, "not a url"))
        self.assertIsNone(now_resolve(FakeSession(self.storage, "alice"), ";UID=1"))
        configured = FakeSession(self.storage, "alice", drafts, {"imap_urlauth_host": "mail"})
        self.assertIsNone(now_resolve(configured, "imap://alice@h/INBOX/;UID=1"))
        self.assertIsNotNone(now_resolve(configured, "imap://alice@mail/INBOX/;UID=1"))

    def test_urlauth_url(self):
        c = Client(self.storage)
        out = c.send(b'g GENURLAUTH "imap://alice@h/INBOX/;UID=1/;SECTION=1;URLAUTH=user+alice" INTERNAL\r\n')
        url = quoted(out, b"* GENURLAUTH ").decode()
        s = FakeSession(self.storage, "alice")
        self.assertEqual(now_resolve(s, url), b"Si vis pacem, para bellum.")
        self.assertIsNone(now_resolve(s, url[:-1] + ("0" if url[-1] != "0" else "1")))
        self.assertIsNone(now_resolve(FakeSession(self.storage, "bob"), url))


class GreetingSession(IMAPSession):
    """Test wrapper: a login process would have sent the greeting."""

    def connectionMade(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.transport.write(b"* PREAUTH test ready\r\n")
        self.start(None, b"")

    def connectionLost(self, reason=None) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class E2ETests(unittest.TestCase):
    """imaplib over a real socket; each user has a storage of their own."""

    def setUp(self):
        self.storages = {}
        for user in ("alice", "bob"):
            home = tempfile.mkdtemp(prefix=f"imap-urlauth-{user}-")
            self.storages[user] = open_storage(user, "maildir:~/Maildir", home)
        self.storages["alice"].append("INBOX", io.BytesIO(MSG))
        self.storages["bob"].append("INBOX", io.BytesIO(b"Subject: bob only\r\n\r\nbob's secret\r\n"))
        self.sessions: list[GreetingSession] = []
        self.ports = {}
        for user in ("alice", "bob"):
            factory = Factory()

            def build(user: str = user) -> GreetingSession:
                s = GreetingSession(self.storages[user], SessionContext(user, "sess", settings={}))
                self.sessions.append(s)
                return s

            factory.protocol = build
            self.ports[user] = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.failures: list[dict] = []

        def observe(event: dict) -> None:
            if event.get("log_failure") is not None:
                self.failures.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def tearDown(self):
        waits = [defer.maybeDeferred(p.stopListening) for p in self.ports.values()]
        for session in self.sessions:
            if not session.lost.called:
                session.transport.abortConnection()
            waits.append(session.lost)
        d = defer.gatherResults(waits)
        d.addCallback(lambda _: self.assertEqual(self.failures, []))
        return d

    def client(self, user: str) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.ports[user].getHost().port, timeout=10)

    @staticmethod
    def genurlauth(c: imaplib.IMAP4, rump: str) -> tuple[str, str]:
        try:
            typ, dat = c.xatom("GENURLAUTH", f'"{rump}"', "INTERNAL")
        except imaplib.IMAP4.error as e:  # imaplib raises on BAD
            return "BAD", str(e)
        typ, dat = c._untagged_response(typ, dat, "GENURLAUTH")
        return typ, dat[0].decode().strip('"')

    @staticmethod
    def urlfetch(c: imaplib.IMAP4, *args: str) -> tuple[str, list]:
        typ, dat = c.xatom("URLFETCH", *args)
        return c._untagged_response(typ, dat, "URLFETCH")

    @defer.inlineCallbacks
    def test_genurlauth_urlfetch_resetkey(self):
        def run():
            c = self.client("alice")
            r = {"caps": c.capabilities}
            base = "imap://alice@localhost/INBOX/;UID=1"
            r["gen"] = self.genurlauth(c, base + "/;SECTION=1;URLAUTH=submit+alice")
            r["gen_partial"] = self.genurlauth(c, base + "/;SECTION=1/;PARTIAL=3.9;URLAUTH=anonymous")
            url, purl = r["gen"][1], r["gen_partial"][1]
            r["fetch"] = self.urlfetch(c, f'"{url}"', f'"{purl}"')
            r["binary"] = self.urlfetch(c, f'("{url}" BINARY)')
            r["reset"] = c.xatom("RESETKEY", "INBOX")
            r["after"] = self.urlfetch(c, f'"{url}"')
            r["bad"] = self.genurlauth(c, "imap://alice@localhost/INBOX/;UID=1")
            r["garbage"] = self.urlfetch(c, '"imap://alice@localhost/%%%"', '"::"')
            try:
                c.xatom("URLFETCH", "(")
            except imaplib.IMAP4.error as e:
                r["bad_syntax"] = str(e)
            r["noop"] = c.noop()
            c.logout()
            return r

        r = yield threads.deferToThread(run)
        for cap in ("URLAUTH", "URLAUTH=BINARY", "URL-PARTIAL"):
            self.assertIn(cap, r["caps"])
        self.assertEqual(r["gen"][0], "OK")
        self.assertRegex(r["gen"][1], r"^imap://alice@localhost/INBOX/;UID=1/;SECTION=1;"
                         r"URLAUTH=submit\+alice:internal:01[0-9a-f]{64}$")
        typ, dat = r["fetch"]
        self.assertEqual(typ, "OK")
        self.assertEqual(dat[0][1], b"Si vis pacem, para bellum.")
        self.assertEqual(dat[2][1], b"vis pacem")
        self.assertEqual(r["binary"][1][0][1], b"Si vis pacem, para bellum.")
        self.assertIn(b"(BINARY {26}", r["binary"][1][0][0])
        self.assertEqual(r["reset"], ("OK", [b"[URLMECH INTERNAL] Key removed."]))
        self.assertTrue(r["after"][1][0].endswith(b" NIL"), r["after"])
        self.assertEqual(r["bad"][0], "BAD")
        self.assertTrue(all(x.endswith(b" NIL") for x in r["garbage"][1]), r["garbage"])
        self.assertIn("BAD", r["bad_syntax"])
        self.assertEqual(r["noop"][0], "OK")

    @defer.inlineCallbacks
    def test_other_user_and_expiry(self):
        def run():
            r = {}
            bob = self.client("bob")
            _typ, url = self.genurlauth(bob, "imap://bob@localhost/INBOX/;UID=1;URLAUTH=anonymous")
            r["bob_fetch"] = self.urlfetch(bob, f'"{url}"')
            bob.logout()
            alice = self.client("alice")
            r["alice_fetch"] = self.urlfetch(alice, f'"{url}"')
            soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
            _typ, exp = self.genurlauth(
                alice, "imap://alice@localhost/INBOX/;UID=1;EXPIRE="
                f"{imapurl.format_datetime(soon)};URLAUTH=authuser")
            r["before"] = self.urlfetch(alice, f'"{exp}"')
            time.sleep(max(0.0, (soon - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.2)
            r["expired"] = self.urlfetch(alice, f'"{exp}"')
            alice.logout()
            return r

        r = yield threads.deferToThread(run)
        self.assertIn(b"bob's secret", r["bob_fetch"][1][0][1])
        self.assertEqual(r["alice_fetch"][0], "OK")
        self.assertTrue(r["alice_fetch"][1][0].endswith(b" NIL"))
        self.assertNotIn(b"secret", b"".join(x if isinstance(x, bytes) else b"".join(x)
                                              for x in r["alice_fetch"][1]))
        self.assertEqual(r["before"][1][0][1], MSG)
        self.assertTrue(r["expired"][1][0].endswith(b" NIL"))

    @defer.inlineCallbacks
    def test_catenate_urls(self):
        """CATENATE (pydovecot.imap.rev2) resolves URL parts through resolve_url."""

        def run():
            c = self.client("alice")
            _typ, url = self.genurlauth(
                c, "imap://alice@localhost/INBOX/;UID=1/;SECTION=1/;PARTIAL=3.9;URLAUTH=authuser")
            c.logout()
            import socket

            s = socket.create_connection(("127.0.0.1", self.ports["alice"].getHost().port), timeout=10)
            s.sendall(b'a APPEND INBOX CATENATE (URL "/INBOX/;UID=1/;SECTION=HEADER.FIELDS%20(SUBJECT)"'
                      b' TEXT {5+}\r\nbody URL "' + url.encode() + b'")\r\n'
                      b'b APPEND INBOX CATENATE (URL "/INBOX/;UID=9")\r\n'
                      b"c SELECT INBOX\r\nd FETCH 2 BODY.PEEK[]\r\ne LOGOUT\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            return data

        data = yield threads.deferToThread(run)
        self.assertIn(b"a OK [APPENDUID ", data)
        self.assertIn(b'b NO [BADURL "/INBOX/;UID=9"]', data)
        self.assertIn(b"* 2 FETCH (BODY[] {32}\r\nSubject: parts\r\n\r\nbody vis pacem)", data)
