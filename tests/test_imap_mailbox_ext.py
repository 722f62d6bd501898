"""LIST-EXTENDED, LIST-STATUS, SPECIAL-USE (config, CREATE USE, autocreate),
CHILDREN and the STATUS items SIZE/DELETED/APPENDLIMIT: unit tests over a
StringTransport and end-to-end tests with imapclient on Maildir."""

from __future__ import annotations

import io
import os

from twisted.internet import defer, threads
from twisted.trial import unittest

from pydovecot.imap import specialuse
from pydovecot.session import SessionContext
from pydovecot.storage import open_storage
from pydovecot.storage.interfaces import MailboxStatus
from tests import test_imap_e2e as e2e
from tests.imap_fakes import FakeStorage
from tests.storage_now import result_now
from tests.test_imap_session import MSG1, MSG2, Client

NAMESPACES = {
    "inbox": {
        "name": "inbox", "inbox": "yes",
        "mailboxes": {
            "Sent": {"name": "Sent", "special_use": "\\Sent", "auto": "subscribe"},
            "Trash": {"name": "Trash", "special_use": "\\Trash", "auto": "create"},
            "Junk": {"name": "Junk", "special_use": "\\Junk"},
        },
    },
    "shared": {"name": "shared", "prefix": "shared/", "type": "shared",
               "mailboxes": {"X": {"name": "X", "special_use": "\\All", "auto": "create"}}},
}


class ListTests(unittest.TestCase):
    def setUp(self):
        self.storage = FakeStorage()
        self.storage.append("INBOX", io.BytesIO(MSG1))
        self.storage.append("INBOX", io.BytesIO(MSG2), ["\\Seen", "\\Deleted"])
        for name in ("Work", "Work/2024", "Fun/Games"):
            self.storage.create(name)
        del self.storage.boxes["Fun"]  # Fun is only a hierarchy placeholder now
        self.storage.subscribe("Work/2024")
        self.storage.subscribe("Gone")
        self.c = Client(self.storage, {"namespaces": NAMESPACES})
        self.c.start()

    def lines(self, cmd: bytes) -> list[bytes]:
        out = self.c.send(cmd + b"\r\n").split(b"\r\n")
        self.assertTrue(out[-2].split()[1] == b"OK", out)
        return out[:-2]

    def test_autocreate(self):
        self.assertIn("Sent", self.storage.boxes)
        self.assertIn("Trash", self.storage.boxes)
        self.assertNotIn("Junk", self.storage.boxes)
        self.assertNotIn("X", self.storage.boxes)  # not the personal namespace
        self.assertIn("Sent", self.storage.subs)
        self.assertNotIn("Trash", self.storage.subs)

    def test_basic_list(self):
        lines = self.lines(b'a LIST "" "*"')
        self.assertIn(b'* LIST (\\HasNoChildren \\Sent) "/" Sent', lines)
        self.assertIn(b'* LIST (\\HasNoChildren \\Trash) "/" Trash', lines)
        self.assertIn(b'* LIST (\\Noselect \\HasChildren) "/" Fun', self.lines(b'c LIST "" "%"'))
        self.assertIn(b'* LIST (\\HasChildren) "/" Work', lines)
        self.assertEqual(self.lines(b'b LIST "" ""'), [b'* LIST (\\Noselect) "/" ""'])

    def test_extended_selection(self):
        lines = self.lines(b'a LIST (SUBSCRIBED) "" "*"')
        self.assertEqual(sorted(lines), sorted([
            b'* LIST (\\NonExistent \\Subscribed) "/" Gone',
            b'* LIST (\\Subscribed \\HasNoChildren \\Sent) "/" Sent',
            b'* LIST (\\Subscribed \\HasNoChildren) "/" Work/2024',
        ]))
        lines = self.lines(b'b LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        self.assertIn(b'* LIST (\\HasChildren) "/" Work ("CHILDINFO" ("SUBSCRIBED"))', lines)
        out = self.c.send(b'c LIST (RECURSIVEMATCH) "" "*"\r\n')
        self.assertTrue(out.startswith(b"c BAD "))
        lines = self.lines(b'd LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)')
        self.assertEqual(lines, [b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
                                 b'* LIST (\\HasNoChildren \\Trash) "/" Trash'])
        lines = self.lines(b'e LIST (REMOTE) "" "Fun"')
        self.assertEqual(lines, [b'* LIST (\\NonExistent \\HasChildren) "/" Fun'])
        self.assertTrue(self.c.send(b'f LIST (BOGUS) "" "*"\r\n').startswith(b"f BAD "))

    def test_return_options_and_patterns(self):
        lines = self.lines(b'a LIST "" ("INBOX" "Work*") RETURN (SUBSCRIBED CHILDREN '
                           b'STATUS (MESSAGES UNSEEN SIZE DELETED))')
        self.assertEqual(lines, [
            b'* LIST (\\HasNoChildren) "/" INBOX',
            b"* STATUS INBOX (MESSAGES 2 UNSEEN 1 SIZE 0 DELETED 0)",
            b'* LIST (\\HasChildren) "/" Work',
            b"* STATUS Work (MESSAGES 0 UNSEEN 0 SIZE 0 DELETED 0)",
            b'* LIST (\\Subscribed \\HasNoChildren) "/" Work/2024',
            b"* STATUS Work/2024 (MESSAGES 0 UNSEEN 0 SIZE 0 DELETED 0)",
        ])
        self.assertTrue(self.c.send(b'b LIST "" "*" RETURN (STATUS)\r\n').startswith(b"b BAD"))
        self.assertTrue(self.c.send(b'c LIST "" "*" RETURN (FOO)\r\n').startswith(b"c BAD"))

    def test_rev2_list_and_lsub(self):
        self.c.send(b"e ENABLE IMAP4rev2\r\n")
        self.assertIn(b'* LIST (\\NonExistent \\HasChildren) "/" Fun', self.lines(b'a LIST "" "%"'))
        lines = self.lines(b'b LSUB "" "*"')
        self.assertIn(b'* LSUB (\\Noselect) "/" Gone', lines)
        self.assertIn(b'* LSUB () "/" Work/2024', lines)

    def test_create_use(self):
        out = self.c.send(b"a CREATE Archive (USE (\\Archive \\flagged))\r\n")
        self.assertEqual(out, b"a OK Create completed.\r\n")
        self.assertIn(b'* LIST (\\HasNoChildren \\Archive \\Flagged) "/" Archive',
                      self.lines(b'l LIST "" "Archive"'))
        out = self.c.send(b"b CREATE Other (USE (\\Bogus))\r\n")
        self.assertTrue(out.startswith(b"b NO [USEATTR] "), out)
        self.assertNotIn("Other", self.storage.boxes)
        self.assertTrue(self.c.send(b"c CREATE Other (FOO)\r\n").startswith(b"c BAD "))
        self.assertIn(b"NO [ALREADYEXISTS]", self.c.send(b"d CREATE inbox\r\n"))
        # a deleted mailbox's attributes do not come back with a new namesake
        self.c.send(b"e DELETE Archive\r\nf CREATE Archive\r\n")
        self.assertIn(b'* LIST (\\HasNoChildren) "/" Archive', self.lines(b'l LIST "" "Archive"'))

    def test_status_items(self):
        self.storage.status = lambda name: defer.succeed(
            MailboxStatus(2, 0, 3, 1234, 1, size=99, deleted=1))
        out = self.c.send(b"a STATUS INBOX (MESSAGES DELETED SIZE APPENDLIMIT UIDNEXT)\r\n")
        self.assertEqual(out, b"* STATUS INBOX (MESSAGES 2 DELETED 1 SIZE 99 APPENDLIMIT 67108864 "
                              b"UIDNEXT 3)\r\na OK Status completed.\r\n")
        self.assertTrue(self.c.send(b"b STATUS INBOX (BOGUS)\r\n").startswith(b"b BAD "))
        self.assertTrue(self.c.send(b"c STATUS INBOX ()\r\n").startswith(b"c BAD "))
        del self.storage.status
        self.assertIn(b"c NO [NONEXISTENT]", self.c.send(b"c STATUS Nope (MESSAGES)\r\n"))


class SpecialUseFileTests(unittest.TestCase):
    def test_file_round_trip(self):
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        storage = open_storage("alice", "maildir:~/Maildir", root)
        for name in ("Ärchiv", "INBOX/x", "Name"):
            result_now(storage.create(name))
        su = specialuse.SpecialUse(specialuse.from_namespaces(NAMESPACES), storage)
        result_now(su.set("Ärchiv", ["\\Archive"]))
        result_now(su.set("inbox/x", ["\\Junk", "\\Trash"]))
        again = specialuse.SpecialUse({}, open_storage("alice", "maildir:~/Maildir", root))
        self.assertEqual(result_now(again.all()),
                         {"Ärchiv": {"\\Archive"}, "INBOX/x": {"\\Junk", "\\Trash"}})
        result_now(storage.set_attribute("Name", specialuse.ATTRIBUTE, b"\\Bogus garbage"))
        self.assertEqual(set(result_now(again.all())), {"Ärchiv", "INBOX/x"})
        result_now(again.set("Ärchiv", []))
        self.assertEqual(set(result_now(specialuse.SpecialUse({}, storage).all())), {"INBOX/x"})
        self.assertEqual(result_now(su.attributes("Sent")), {"\\Sent"})


class MailboxExtE2ETests(unittest.TestCase):
    def setUp(self):
        e2e.E2ETests.setUp(self)
        self.session_settings = {"namespaces": NAMESPACES}

    tearDown = e2e.E2ETests.tearDown

    @defer.inlineCallbacks
    def test_imapclient(self):
        import imapclient
        from imapclient.imapclient import ARCHIVE, SENT, TRASH

        # sessions built by the e2e factory get no settings: give them ours
        factory = self.port.factory
        storage = self.storage

        def build():
            session = e2e.GreetingSession(
                storage, SessionContext("alice", "sess", settings={}, namespaces=NAMESPACES))
            self.sessions.append(session)
            return session

        factory.protocol = build

        def run():
            c = imapclient.IMAPClient("127.0.0.1", port=self.addr, ssl=False, timeout=10)
            r = {"sent": c.find_special_folder(SENT), "trash": c.find_special_folder(TRASH)}
            c.create_folder("Arch")
            c._imap._simple_command("CREATE", "Keep", "(USE (\\Archive))")
            r["archive"] = c.find_special_folder(ARCHIVE)
            c.append("INBOX", b"Subject: x\r\n\r\nhello\r\n")
            c.append("INBOX", b"Subject: y\r\n\r\nbye\r\n", flags=[b"\\Deleted"])
            r["status"] = c.folder_status("INBOX", ["MESSAGES", "SIZE", "DELETED", "APPENDLIMIT"])
            r["subscribed"] = [f[2] for f in c.list_sub_folders()]
            typ, data = c._imap._simple_command(
                "LIST", '""', '"*"', "RETURN", "(SPECIAL-USE STATUS (MESSAGES))")
            r["list_status"] = c._imap._untagged_response(typ, data, "STATUS")
            c.logout()
            return r

        r = yield threads.deferToThread(run)
        self.assertEqual(r["sent"], "Sent")
        self.assertEqual(r["trash"], "Trash")
        self.assertEqual(r["archive"], "Keep")
        self.assertEqual(r["status"][b"MESSAGES"], 2)
        self.assertEqual(r["status"][b"SIZE"], 40)
        self.assertEqual(r["status"][b"DELETED"], 1)
        self.assertEqual(r["status"][b"APPENDLIMIT"], 64 * 1024 * 1024)
        self.assertEqual(r["subscribed"], ["Sent"])
        self.assertIn(b"INBOX (MESSAGES 2)", r["list_status"][1])
        self.assertEqual(result_now(self.storage.get_attribute("Keep", specialuse.ATTRIBUTE)),
                         b"\\Archive")
        reopened = open_storage("alice", "maildir:~/Maildir", self.home)
        self.assertIn("Sent", [i.name for i in result_now(reopened.list_mailboxes())])
