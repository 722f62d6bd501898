"""Scripted imapclient sessions shaped like Thunderbird, Apple Mail and K-9.

Against the real master (tests.test_mbsync.start_master: as root with real
privilege drop), each scenario issues the commands those clients send at
start-up and on common actions: CAPABILITY, ID, ENABLE, LIST (with
LIST-EXTENDED / SPECIAL-USE / LIST-STATUS return options when advertised),
SELECT, ``FETCH 1:* (UID FLAGS)``, ``UID FETCH`` of header fields, IDLE woken
by another session's APPEND, APPEND to Sent, MOVE to Trash, UID EXPUNGE,
COMPRESS=DEFLATE (K-9) over a raw socket.
Every optional step runs only when ``capabilities()`` advertises it at that
moment, so the scenarios follow the server as extensions are added, and an
advertised extension that does not work fails here.  Trusts only what the
client library parses.
"""

from __future__ import annotations

import re
import socket
import threading
import zlib
from collections.abc import Callable

import imapclient
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench.generate import MailGenerator
from tests.test_mbsync import start_master

THUNDERBIRD_HEADERS = (b"From To Cc Bcc Subject Date Message-ID Priority X-Priority "
                       b"References Newsgroups In-Reply-To Content-Type Reply-To")


class ClientScenarioTests(SynchronousTestCase):
    """One master for each test; see the module docstring."""

    def setUp(self) -> None:
        self.master = start_master(self)
        self.gen = MailGenerator(3, attachment_scale=0.02)
        self.inbox = [self.gen.message() for _ in range(40)]
        client = self.connect()
        for msg in self.inbox:
            client.append("INBOX", msg.data, sorted(msg.flags), msg.date)
        client.logout()

    def connect(self) -> imapclient.IMAPClient:
        client = imapclient.IMAPClient("127.0.0.1", port=self.master.ports["imap"], ssl=False,
                                       timeout=30)
        client.login("alice", "secret")
        return client

    def raw(self, client: imapclient.IMAPClient, command: str, *args: str) -> list[bytes]:
        """A command imapclient has no method for; its untagged lines."""
        imap = client._imap
        typ, data = imap._simple_command(command, *args)
        self.assertEqual(typ, "OK", data)
        lines = []
        for name in list(imap.untagged_responses):
            lines += [(name.encode() + b" " + d) if isinstance(d, bytes) else d
                      for d in imap.untagged_responses.pop(name)]
        return lines

    def enable_like_client(self, client: imapclient.IMAPClient, wanted: list[str]) -> set[str]:
        caps = client.capabilities()
        if b"ENABLE" not in caps:
            return set()
        offer = [w for w in wanted if w.encode() in caps]
        if not offer:
            return set()
        enabled = {c.decode() if isinstance(c, bytes) else c for c in client.enable(*offer)}
        self.assertEqual(enabled, set(offer))
        return enabled

    def test_thunderbird_start_up_and_idle(self) -> None:
        client = self.connect()
        caps = client.capabilities()
        self.assertIn(b"IMAP4REV1", caps)
        if b"ID" in caps:
            server_id = client.id_({"name": "Thunderbird", "version": "115.6.0"})
            self.assertTrue(server_id is None or isinstance(server_id, tuple | list | dict))
        enabled = self.enable_like_client(client, ["CONDSTORE"])
        if b"LIST-EXTENDED" in caps and b"SPECIAL-USE" in caps:
            lines = self.raw(client, "LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
            self.assertTrue(any(b"INBOX" in line for line in lines), lines)
        else:
            self.assertIn("INBOX", [f[2] for f in client.list_folders()])
        info = client.select_folder("INBOX")
        self.assertEqual(info[b"EXISTS"], len(self.inbox))
        self.assertIn(b"UIDVALIDITY", info)
        if "CONDSTORE" in enabled:
            self.assertGreater(info[b"HIGHESTMODSEQ"], 0)
        # Literally FETCH 1:* (UID FLAGS), as sent by the clients.
        typ, lines = client._imap.fetch("1:*", "(UID FLAGS)")
        self.assertEqual(typ, "OK", lines)
        self.assertEqual(len(lines), len(self.inbox))
        for line, msg in zip(lines, self.inbox, strict=True):
            got = re.search(rb"FLAGS \(([^)]*)\)", line).group(1).decode().split()
            self.assertEqual(set(got) - {"\\Recent"}, msg.flags, line)
        uids = client.search(["ALL"])
        self.assertEqual(uids, sorted(int(re.search(rb"UID (\d+)", x).group(1)) for x in lines))
        item = b"BODY.PEEK[HEADER.FIELDS (" + THUNDERBIRD_HEADERS + b")]"
        headers = client.fetch(uids[-20:], [item, b"RFC822.SIZE", b"FLAGS", b"INTERNALDATE"])
        for uid, msg in zip(uids[-20:], self.inbox[-20:], strict=True):
            data = headers[uid]
            self.assertEqual(data[b"RFC822.SIZE"], len(msg.data))
            got = data[b"BODY[HEADER.FIELDS (" + THUNDERBIRD_HEADERS.upper() + b")]"]
            self.assertIn(b"Message-ID: " + msg.message_id.encode(), got)
            self.assertTrue(got.endswith(b"\r\n\r\n"))
            self.assertNotIn(b"Received:", got)
        if "CONDSTORE" in enabled:
            changed = client.fetch(uids, ["FLAGS"],
                                   modifiers=[f"CHANGEDSINCE {info[b'HIGHESTMODSEQ']}"])
            self.assertEqual(changed, {})

        # IDLE until another session delivers (APPEND) a message.
        self.assertIn(b"IDLE", caps)
        new = self.gen.message()
        client.idle()
        other_done = threading.Event()

        def deliver() -> None:
            other = self.connect()
            other.append("INBOX", new.data)
            other.logout()
            other_done.set()

        thread = threading.Thread(target=deliver)
        thread.start()
        responses = []
        for _ in range(20):
            responses += client.idle_check(timeout=1)
            if any(r[1:2] == (b"EXISTS",) for r in responses):
                break
        client.idle_done()
        thread.join(30)
        self.assertTrue(other_done.is_set())
        self.assertIn((len(self.inbox) + 1, b"EXISTS"), [r[:2] for r in responses])
        client.logout()

    def test_apple_mail_status_bodystructure_append_sent(self) -> None:
        client = self.connect()
        caps = client.capabilities()
        self.enable_like_client(client, ["QRESYNC"])
        created_special = False
        if b"CREATE-SPECIAL-USE" in caps:
            self.raw(client, "CREATE", "Sent", "(USE (\\Sent))")
            created_special = True
        else:
            client.create_folder("Sent")
        client.create_folder("Trash")
        if b"SPECIAL-USE" in caps and created_special:
            self.assertEqual(client.find_special_folder(imapclient.imapclient.SENT), "Sent")
        if b"LIST-STATUS" in caps:
            lines = self.raw(client, "LIST", '""', '"*"', "RETURN", "(STATUS (MESSAGES UNSEEN))")
            status = [line for line in lines if line.startswith(b"STATUS")]
            inbox = [s for s in status if re.search(rb"STATUS \"?INBOX\"? ", s)]
            self.assertTrue(inbox, lines)
            self.assertIn(b"MESSAGES %d" % len(self.inbox), inbox[0])
        for name in ("INBOX", "Sent", "Trash"):
            st = client.folder_status(name, ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"])
            self.assertEqual(st[b"MESSAGES"], len(self.inbox) if name == "INBOX" else 0)

        sent = self.gen.message(kind="attachment")
        result = client.append("Sent", sent.data, [b"\\Seen"], sent.date)
        if b"UIDPLUS" in caps:
            self.assertRegex(result, rb"APPENDUID \d+ 1")
        client.select_folder("Sent", readonly=True)
        data = client.fetch([1], ["BODYSTRUCTURE", "ENVELOPE", "BODY.PEEK[1]<0.64>", "FLAGS"])[1]
        structure = data[b"BODYSTRUCTURE"]
        self.assertTrue(structure.is_multipart)
        self.assertEqual(structure[1], b"mixed")
        self.assertEqual(data[b"ENVELOPE"].message_id, sent.message_id.encode())
        self.assertEqual(len(data[b"BODY[1]<0>"]), 64)
        self.assertIn(b"\\Seen", data[b"FLAGS"])
        client.logout()

    def test_k9_search_move_to_trash_uid_expunge(self) -> None:
        client = self.connect()
        caps = client.capabilities()
        client.create_folder("Trash")
        client.select_folder("INBOX")
        unseen = client.search(["UNSEEN"])
        expected_unseen = [i + 1 for i, m in enumerate(self.inbox) if "\\Seen" not in m.flags]
        self.assertEqual(unseen, expected_unseen)
        since = client.search(["SINCE", self.inbox[20].date.date()])
        self.assertEqual(since[0] <= 21, True)
        subject = self.inbox[5].subject.split()[0]
        hits = client.search(["SUBJECT", subject])
        self.assertIn(6, hits)

        # Mark read, then move one message to Trash.
        client.add_flags([1, 2], [b"\\Seen"])
        self.assertEqual(client.search(["UNSEEN"]), [u for u in expected_unseen if u > 2])
        if b"MOVE" in caps:
            client.move([3], "Trash")
        else:
            client.copy([3], "Trash")
            client.delete_messages([3])
            client.expunge([3]) if b"UIDPLUS" in caps else client.expunge()
        self.assertEqual(client.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"], 1)
        self.assertEqual(len(client.search(["ALL"])), len(self.inbox) - 1)

        # UID EXPUNGE removes only the UIDs named, though more are \Deleted.
        if b"UIDPLUS" in caps:
            client.delete_messages([4, 5])
            client.uid_expunge([4])
            remaining = client.search(["ALL"])
            self.assertNotIn(4, remaining)
            self.assertIn(5, remaining)
            self.assertEqual(client.search(["DELETED"]), [5])
        client.logout()

    def test_k9_compress_deflate(self) -> None:
        """K-9 turns on COMPRESS=DEFLATE (RFC 4978) right after login."""
        client = self.connect()
        caps = client.capabilities()
        client.logout()
        if b"COMPRESS=DEFLATE" not in caps:
            raise SkipTest("COMPRESS=DEFLATE not advertised")
        sock = socket.create_connection(("127.0.0.1", self.master.ports["imap"]), 30)
        self.addCleanup(sock.close)
        buf = b""

        def until(tag: bytes, read: Callable[[], bytes]) -> bytes:
            nonlocal buf
            while not re.search(rb"(^|\r\n)" + tag + rb" [^\r\n]*\r\n", buf):
                chunk = read()
                if not chunk:
                    raise EOFError(buf)
                buf += chunk
            out, buf = buf, b""
            return out

        until(b"\\*", lambda: sock.recv(65536))
        sock.sendall(b"a LOGIN alice secret\r\n")
        self.assertIn(b"a OK", until(b"a", lambda: sock.recv(65536)))
        sock.sendall(b"b COMPRESS DEFLATE\r\n")
        self.assertIn(b"b OK", until(b"b", lambda: sock.recv(65536)))
        out = zlib.compressobj(6, zlib.DEFLATED, -15)
        inflate = zlib.decompressobj(-15)

        def send(line: bytes) -> None:
            sock.sendall(out.compress(line) + out.flush(zlib.Z_SYNC_FLUSH))

        def read() -> bytes:
            data = sock.recv(65536)
            return inflate.decompress(data) if data else b""

        send(b"c SELECT INBOX\r\n")
        self.assertIn(b"* %d EXISTS" % len(self.inbox), until(b"c", read))
        send(b"d UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        data = until(b"d", read)
        self.assertEqual(data.count(b" FETCH ("), len(self.inbox))
        self.assertIn(b"d OK", data)
        send(b"e LOGOUT\r\n")
        self.assertIn(b"* BYE", until(b"e", read))
