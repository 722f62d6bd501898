"""A Sieve delivery rehearsed before the mail process drops privileges.

Whatever Sieve's code paths import lazily (the email package's header
decoding, the ``regex`` module's internals, Twisted's process support for
sendmail, JSON) is loaded by filtering one MIME-rich message through a
script that uses every extension, with outgoing mail sent to ``true``.
Trusts nothing external: it works in the caller's throwaway directory.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import defer

from pydovecot.log import silence_prefix
from pydovecot.sieve.deliver import SieveDelivery
from pydovecot.sieve.validate import ALL_EXTENSIONS

SCRIPT = """require [%s];
if header :matches "subject" "*sum*" { set :lower :upperfirst "s" "${1}"; }
if address :domain :is "from" "example.org" { addflag "$Rehearsal"; }
if envelope :detail "to" "tag" { fileinto :create :flags "\\\\Seen" "Rehearsal/${s}"; }
if body :text :contains "caf\\u00e9" { addflag "\\\\Flagged"; }
if body :raw :contains "x" { keep; }
if body :content "text" :contains "x" { keep; }
if header :regex "from" "^(.*)@(.*)$" { set "d" "${2}"; }
if header :value "ge" :comparator "i;ascii-numeric" "x-n" "1" { keep; }
if date :value "ge" :originalzone "date" "year" "2000" { keep; }
if currentdate :zone "+0100" :is "weekday" "9" { keep; }
if spamtest :percent :value "ge" :comparator "i;ascii-numeric" "1" { keep; }
if virustest :value "ge" :comparator "i;ascii-numeric" "1" { keep; }
if environment :is "location" "MDA" { keep; }
if duplicate :seconds 60 { keep; }
if mailboxexists "INBOX" { keep; }
if ihave "fileinto" { keep; }
if string :count "ge" :comparator "i;ascii-numeric" ["${d}"] "1" { keep; }
foreverypart { if header :mime :contenttype "content-type" "text/plain" { extracttext "t";
  } if header :mime :param "charset" "content-type" "utf-8" { keep; } }
addheader "X-Rehearsal" "=?utf-8?q?caf=C3=A9?=";
deleteheader :index 1 "X-Rehearsal";
include :optional "none";
redirect :copy "rehearsal@example.org";
vacation :days 1 :subject "R\\u00e9hearsal" :mime :addresses ["a@example.org"] "x";
"""


@defer.inlineCallbacks
def rehearse_sieve(storage, root: str, message: bytes):
    """Filter ``message`` into ``storage`` (a throwaway Maildir under ``root``)."""
    silence_prefix("lmtp(rehearsal)")
    home = os.path.join(root, "sieve-home")
    os.makedirs(home, exist_ok=True)
    names = ", ".join(f'"{e}"' for e in sorted(ALL_EXTENSIONS))
    with open(os.path.join(home, ".dovecot.sieve"), "w", encoding="utf-8") as f:
        f.write(SCRIPT % names)
    true = shutil.which("true") or "/bin/true"
    config = _Config({"sendmail_path": true, "hostname": "rehearsal",
                      "recipient_delimiter": "+"})
    settings = {"sieve_extensions": " ".join("+" + e for e in sorted(ALL_EXTENSIONS)),
                "sieve_spamtest_status_header": "X-Spam-Score: ([0-9.]+)",
                "sieve_spamtest_max_value": "10",
                "sieve_virustest_status_header": "X-Virus: (.*)",
                "sieve_virustest_status_type": "text", "sieve_virustest_text_value1": "clean"}
    fields = {"home": home, **settings}
    for recipient in ("rehearsal+tag@example.org", "rehearsal+tag@example.org"):
        sieve = SieveDelivery(config, storage, "rehearsal", fields, "juergen@example.org",
                              recipient, "rehearsal-sieve", "<rehearsal@example.org>",
                              "lmtp(rehearsal)")
        yield sieve.run(message)
    # A script that does not compile, and one that fails while running.
    for text in ("frobnicate;", 'require "fileinto"; fileinto "";'):
        with open(os.path.join(home, ".dovecot.sieve"), "w", encoding="utf-8") as f:
            f.write(text)
        yield SieveDelivery(config, storage, "rehearsal", fields, "", "rehearsal",
                            "rehearsal-sieve", "", "lmtp(rehearsal)").run(message)


class _Config:
    def __init__(self, values: dict):
        self.values = values
        self.plugin: dict = {}

    def get(self, key: str, protocol: str | None = None) -> str:  # noqa: ARG002
        return self.values.get(key, "")
