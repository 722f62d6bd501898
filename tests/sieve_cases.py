"""The table of (script, message, envelope) Sieve cases that
tests/test_sieve_cases.py runs through pydovecot's LMTP and through
Pigeonhole's ``sieve-test -e``, expecting the same outcome.

An expectation lists where the message ends up (``Box`` or ``Box:flag
flag``) and what is sent (``redirect:rcpt``, ``vacation:rcpt``,
``reject:rcpt``); nothing stored means discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Folders created before the cases run (fileinto without :create).
FOLDERS = ("Work", "Urgent", "Boss", "Lists", "Net", "Big", "Junk", "Low", "Many", "A", "B")

RECIPIENT = "alice@example.com"

REQ = ('require ["fileinto", "imap4flags", "copy", "reject", "vacation", "envelope", '
       '"subaddress", "variables", "regex", "relational", "comparator-i;ascii-numeric", '
       '"body", "mailbox", "date", "editheader", "spamtest", "duplicate"];\n')


@dataclass
class Case:
    name: str
    script: str
    expect: tuple[str, ...]
    headers: str = ""
    body: str = "Hello there.\r\n"
    sender: str = ""
    recipient: str = RECIPIENT
    subject: str = ""
    compile_error: bool = False  # sieve-test stops there; LMTP keeps

    def message(self, n: int) -> bytes:
        sender = self.envelope_sender(n)
        subject = self.subject or f"case {self.name}"
        text = (f"From: {sender}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n"
                f"Message-ID: <case-{n}@test.example.org>\r\n"
                f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n{self.headers}"
                f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
                f"\r\n{self.body}")
        return text.encode()

    def envelope_sender(self, n: int) -> str:
        return self.sender if self.sender else f"sender{n}@example.org"

    def expected(self, n: int) -> dict:
        stored: dict[str, frozenset] = {}
        sent: list[tuple[str, str]] = []
        for item in self.expect:
            kind, _, rest = item.partition(":")
            if kind in ("redirect", "vacation", "reject"):
                sent.append((kind, rest.replace("$SENDER", self.envelope_sender(n))))
            else:
                stored[kind] = frozenset(f.lower() for f in rest.split())
        return {"stored": stored, "sent": sorted(sent)}


S = "$SENDER"
CASES = [
    Case("keep", "keep;", ("INBOX",)),
    Case("empty", "", ("INBOX",)),
    Case("comment-only", "# nothing\r\n/* at all */\r\n", ("INBOX",)),
    Case("discard", "discard;", ()),
    Case("fileinto", REQ + 'fileinto "Work";', ("Work",)),
    Case("fileinto-copy", REQ + 'fileinto :copy "Work";', ("Work", "INBOX")),
    Case("subject-match", REQ + 'if header :contains "subject" "URGENT" '
         '{ fileinto "Urgent"; }', ("Urgent",), subject="this is urgent!"),
    Case("subject-nomatch", REQ + 'if header :contains "subject" "urgent" '
         '{ fileinto "Urgent"; }', ("INBOX",), subject="calm"),
    Case("fileinto-flags", REQ + 'fileinto :flags ["\\\\Seen", "\\\\Flagged"] "Work";',
         ("Work:\\seen \\flagged",)),
    Case("addflag-keep", REQ + 'addflag "\\\\Flagged"; keep;', ("INBOX:\\flagged",)),
    Case("flags-implicit", REQ + 'setflag "$Label1"; addflag "$Label2"; '
         'removeflag "$Label1";', ("INBOX:$label2",)),
    Case("redirect", REQ + 'redirect "fwd@example.net";', ("redirect:fwd@example.net",)),
    Case("redirect-copy", REQ + 'redirect :copy "fwd@example.net";',
         ("redirect:fwd@example.net", "INBOX")),
    Case("reject", REQ + 'reject "Go away";', (f"reject:{S}",)),
    Case("vacation", REQ + 'vacation :days 1 :subject "Away" "I am away.";',
         ("INBOX", f"vacation:{S}")),
    Case("vacation-list", REQ + 'vacation "I am away.";', ("INBOX",),
         headers="List-Id: <people.example.org>\r\n"),
    Case("vacation-auto", REQ + 'vacation "I am away.";', ("INBOX",),
         headers="Auto-Submitted: auto-generated\r\n"),
    Case("vacation-bulk", REQ + 'vacation "I am away.";', ("INBOX",),
         headers="Precedence: bulk\r\n"),
    Case("vacation-daemon", REQ + 'vacation "I am away.";', ("INBOX",),
         sender="MAILER-DAEMON@example.org"),
    Case("vacation-addresses", REQ + 'vacation :addresses ["alias@example.com"] "Away.";',
         ("INBOX", f"vacation:{S}"), headers="Cc: alias@example.com\r\n"),
    Case("envelope-from", REQ + 'if envelope :is "from" "boss@example.org" '
         '{ fileinto "Boss"; }', ("Boss",), sender="boss@example.org"),
    Case("subaddress", REQ + 'if envelope :detail "to" "lists" { fileinto "Lists"; }',
         ("Lists",), recipient="alice+lists@example.com"),
    Case("address-domain", REQ + 'if address :domain :is "from" "example.net" '
         '{ fileinto "Net"; }', ("Net",), sender="carol@example.net"),
    Case("regex-create", REQ + 'if header :regex "subject" "^\\\\[([a-z]+)\\\\]" '
         '{ fileinto :create "T-${1}"; }', ("T-work",), subject="[work] report"),
    Case("size-over", REQ + 'if size :over 2K { fileinto "Big"; }', ("Big",),
         body="x" * 70 + "\r\n" + ("y" * 76 + "\r\n") * 60),
    Case("body", REQ + 'if body :contains "lottery" { discard; }', (),
         body="You won the lottery.\r\n"),
    Case("spam-flag", REQ + 'if allof(exists "X-Spam-Flag", header :is "X-Spam-Flag" "YES")'
         ' { fileinto "Junk"; stop; } keep;', ("Junk",), headers="X-Spam-Flag: YES\r\n"),
    Case("numeric-value", REQ + 'if header :value "ge" :comparator "i;ascii-numeric" '
         '"X-Priority" "3" { fileinto "Low"; }', ("Low",), headers="X-Priority: 5\r\n"),
    Case("address-count", REQ + 'if address :count "ge" :comparator "i;ascii-numeric" '
         '["to", "cc"] "3" { fileinto "Many"; }', ("Many",),
         headers="Cc: b@example.org, c@example.org\r\n"),
    Case("create", REQ + 'fileinto :create "Fresh";', ("Fresh",)),
    Case("missing-folder", REQ + 'fileinto "Nowhere";', ("INBOX",)),
    Case("stop", REQ + 'fileinto "A"; stop; fileinto "B";', ("A",)),
    Case("anyof-not", REQ + 'if anyof(not exists "subject", header :is "subject" "") '
         '{ discard; }', ("INBOX",)),
    Case("editheader", REQ + 'addheader "X-Filtered" "yes"; '
         'if header :is "x-filtered" "yes" { fileinto "Work"; }', ("Work",)),
    Case("date", REQ + 'if date :value "ge" :originalzone "date" "year" "2026" '
         '{ addflag "\\\\Answered"; }', ("INBOX:\\answered",)),
    Case("mailboxexists", REQ + 'if mailboxexists "Work" { fileinto "Work"; }', ("Work",)),
    Case("variables", REQ + 'if header :matches "subject" "* for *" '
         '{ set :upperfirst "who" "${2}"; fileinto :create "For-${who}"; }',
         ("For-Bob",), subject="report for bob"),
    Case("spamtest", REQ + 'if spamtest :value "ge" :comparator "i;ascii-numeric" "5" '
         '{ fileinto "Junk"; }', ("Junk",), headers="X-Spam-Score: 8.5\r\n"),
    Case("duplicate-first", REQ + 'if duplicate { discard; }', ("INBOX",)),
    Case("syntax-error", "frobnicate;", ("INBOX",), compile_error=True),
    Case("runtime-error", REQ + 'fileinto "Work"; redirect "a@example.net"; '
         'redirect "b@example.net"; redirect "c@example.net"; redirect "d@example.net"; '
         'redirect "e@example.net";', ("INBOX",)),
    Case("discard-then-keep", REQ + 'discard; keep;', ("INBOX",)),
    Case("elsif-else", REQ + 'if header :is "subject" "a" { fileinto "A"; } '
         'elsif header :is "subject" "b" { fileinto "B"; } else { discard; }', ("B",),
         subject="b"),
]

#: plugin { } settings both implementations get.
PLUGIN_SETTINGS = {
    "sieve_extensions": "+editheader +spamtest +virustest +vacation-seconds",
    "sieve_spamtest_status_type": "score",
    "sieve_spamtest_status_header": "X-Spam-Score: ([0-9]+(\\.[0-9]+)?)",
    "sieve_spamtest_max_value": "10",
}
