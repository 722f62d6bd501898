"""The mail process's rehearsal really runs its sessions."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from pydovecot.mailproc import rehearsal


class RehearsalTests(TestCase):
    @defer.inlineCallbacks
    def test_core_commands_all_succeed(self) -> None:
        outputs = []
        original = rehearsal._run

        def spy(session, start, marker, timeout):
            d = original(session, start, marker, timeout)
            d.addCallback(lambda _: outputs.append(session.transport.value()))
            return d

        self.patch(rehearsal, "_run", spy)
        yield rehearsal.rehearse({})
        imap, pop3 = outputs
        tagged = [line for line in imap.split(b"\r\n") if line[:1] in b"abc" and b" " in line
                  and line.split(b" ", 1)[0][1:].isdigit()]
        core = {line.split(b" ", 1)[0] for line in rehearsal.IMAP_SCRIPT.split(b"\r\n")
                if line[:1] in b"abc" and line.split(b" ", 1)[0][1:].isdigit()}
        # a0 is the login tag the session starts with.
        self.assertEqual({line.split(b" ", 1)[0] for line in tagged}, core | {b"a0"})
        for line in tagged:
            self.assertTrue(line.split(b" ")[1] == b"OK", line)
        self.assertIn(b"z9 OK", imap)
        self.assertTrue(pop3.endswith(b"+OK Logging out.\r\n"), pop3[-200:])
