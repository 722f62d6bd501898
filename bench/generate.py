"""A realistic, reproducible mailbox generator for tests and benchmarks.

Makes RFC 5322 messages the way a busy personal mailbox holds them: mostly
short text/plain mail, multipart/alternative (text + HTML) newsletters,
mail with base64 attachments (a long-tailed size distribution), forwarded
mail as nested message/rfc822, mailing-list traffic with List-Id, threads
(Re: subjects, In-Reply-To, References), Received chains, encoded-word
subjects and quoted-printable bodies.  Everything derives from one seed, so
a given (seed, count) always yields the same bytes.

It writes them either as a list of :class:`Message` (CRLF bytes, flags,
date) for clients to APPEND, or straight into a Maildir++ folder with a
``dovecot-uidlist`` (version 3, as Dovecot 2.3 writes it), file names
carrying ``S=``/``W=`` sizes and ``:2,`` flags, and mtimes set to the
message dates (Dovecot's INTERNALDATE for Maildir).  Trusts nothing but
its arguments; it only writes under the directory it is given.

    python3 bench/generate.py --count 100000 --seed 1 /tmp/mail/Maildir
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import random
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their been has when who will "
    "more no if out so said what up its about into than them can only other new some could "
    "time these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take "
    "three meeting report budget release server mailbox index cache deploy review patch "
    "invoice schedule quarter project design draft agenda thanks please attached update "
    "question customer support ticket issue build test failure latency storage network"
).split()
FIRST = ("Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy "
         "Rupert Sybil Trent Victor Walter Zoë José Müller Søren Chloé").split()
LAST = ("Smith Jones Taylor Brown Williams Wilson Johnson Davies Robinson Wright Thompson "
        "Evans Walker White Roberts Green Hall Wood Jackson Clarke Ångström Østergaard").split()
DOMAINS = ("example.com example.org example.net mail.example.com lists.example.org "
           "corp.example uni.example.edu").split()
LISTS = ("python-dev", "debian-devel", "dovecot", "twisted", "announce")
MAILERS = ("Mozilla Thunderbird 115.6", "Apple Mail (2.3774)", "K-9 Mail 6.7",
           "Microsoft Outlook 16.0", "mutt 2.2.9", "Roundcube Webmail/1.6.5")
ATTACHMENTS = (("application/pdf", "report.pdf"), ("image/jpeg", "photo.jpg"),
               ("image/png", "screenshot.png"), ("application/zip", "logs.zip"),
               ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "budget.xlsx"), ("text/csv", "export.csv"))
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S",
                "\\Deleted": "T"}
# (kind, weight): the share of each message shape.
KINDS = (("plain", 56), ("alternative", 18), ("attachment", 11), ("list", 9),
         ("forward", 4), ("qp", 2))
_BLOB = random.Random(0).randbytes(1 << 20)


@dataclass
class Message:
    """One generated message: ``data`` has CRLF line ends."""

    data: bytes
    flags: set[str] = field(default_factory=set)
    date: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC))
    message_id: str = ""
    subject: str = ""
    kind: str = "plain"

    def lf(self) -> bytes:
        return self.data.replace(b"\r\n", b"\n")


def _encoded_word(text: str) -> str:
    if text.isascii():
        return text
    return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="


def _qp(text: str) -> str:
    """Quoted-printable of UTF-8 text, soft-wrapped at 76 columns."""
    out = []
    for line in text.split("\n"):
        enc = "".join(
            c if (c.isascii() and c.isprintable() and c != "=") else
            "".join(f"={b:02X}" for b in c.encode()) for c in line)
        while len(enc) > 75:
            cut = 75
            while "=" in enc[cut - 2:cut]:
                cut -= 1
            out.append(enc[:cut] + "=")
            enc = enc[cut:]
        out.append(enc)
    return "\n".join(out)


class MailGenerator:
    """A deterministic stream of messages (see the module docstring)."""

    def __init__(self, seed: int = 1, start: datetime.datetime | None = None,
                 attachment_scale: float = 1.0):
        self.rng = random.Random(seed)
        self.seed = seed
        self.when = start or datetime.datetime(2023, 1, 2, 8, 0, tzinfo=datetime.UTC)
        self.attachment_scale = attachment_scale
        self.threads: list[tuple[str, list[str]]] = []  # (subject, message-ids)
        self.count = 0
        self.me = "Alice Example <alice@example.com>"

    # -- pieces --------------------------------------------------------------

    def person(self) -> str:
        r = self.rng
        first, last = r.choice(FIRST), r.choice(LAST)
        local = f"{first}.{last}".lower().encode("ascii", "ignore").decode() or "user"
        return f"{_encoded_word(first + ' ' + last)} <{local}@{r.choice(DOMAINS)}>"

    def sentence(self, lo: int = 6, hi: int = 18) -> str:
        words = self.rng.choices(WORDS, k=self.rng.randint(lo, hi))
        return " ".join(words).capitalize() + self.rng.choice(".!?.")

    def paragraph(self) -> str:
        lines, line = [], ""
        for _ in range(self.rng.randint(2, 7)):
            for word in self.sentence().split():
                if len(line) + len(word) >= 72:
                    lines.append(line)
                    line = ""
                line = f"{line} {word}" if line else word
        lines.append(line)
        return "\n".join(lines)

    def text(self, paragraphs: int | None = None) -> str:
        n = paragraphs if paragraphs is not None else max(1, int(self.rng.lognormvariate(1.0, 0.7)))
        return "\n\n".join(self.paragraph() for _ in range(n))

    def subject(self) -> str:
        s = " ".join(self.rng.choices(WORDS, k=self.rng.randint(2, 8))).capitalize()
        if self.rng.random() < 0.05:
            s += " – Grüße, ½ € ✓"
        return s

    def attachment(self) -> tuple[str, str, bytes]:
        ctype, name = self.rng.choice(ATTACHMENTS)
        size = int(min(2_000_000, self.rng.lognormvariate(10.0, 1.0)) * self.attachment_scale)
        size = max(512, size)
        off = self.rng.randrange(0, len(_BLOB) - min(size, len(_BLOB) - 1))
        raw = (_BLOB[off:] + _BLOB)[:size]
        return ctype, name, raw

    def boundary(self) -> str:
        return f"=_{self.rng.getrandbits(64):016x}"

    # -- headers and bodies ----------------------------------------------------

    def _next_date(self) -> datetime.datetime:
        self.when += datetime.timedelta(seconds=self.rng.expovariate(1 / 900))
        return self.when

    def headers(self, kind: str, date: datetime.datetime) -> tuple[list[str], str, str]:
        r = self.rng
        msgid = f"<{self.seed}.{self.count}.{r.getrandbits(40):010x}@{r.choice(DOMAINS)}>"
        refs: list[str] = []
        if self.threads and r.random() < 0.35:
            subject, refs = r.choice(self.threads[-200:])
            subject = subject if subject.startswith("Re: ") else "Re: " + subject
        else:
            subject = self.subject()
            if kind == "list":
                subject = f"[{r.choice(LISTS)}] {subject}"
        self.threads.append((subject, (refs + [msgid])[-10:]))
        if len(self.threads) > 1000:
            del self.threads[:500]
        sender = self.person()
        h = []
        for hop in range(r.randint(1, 3)):
            stamp = (date - datetime.timedelta(seconds=hop * 3)).strftime(
                "%a, %d %b %Y %H:%M:%S +0000")
            h.append(f"Received: from mx{hop}.{r.choice(DOMAINS)} (mx{hop}.example [192.0.2.{hop + 1}])"
                     f"\n\tby mail.example.com (Postfix) with ESMTPS id {r.getrandbits(40):010X}"
                     f"\n\tfor <alice@example.com>; {stamp}")
        h += [f"Date: {date.strftime('%a, %d %b %Y %H:%M:%S +0000')}",
              f"From: {sender}",
              f"To: {self.me}" + (f", {self.person()}" if r.random() < 0.3 else ""),
              ]
        if r.random() < 0.2:
            h.append(f"Cc: {self.person()}")
        h += [f"Subject: {_encoded_word(subject)}", f"Message-ID: {msgid}"]
        if refs:
            h += [f"In-Reply-To: {refs[-1]}", "References: " + "\n\t".join(refs)]
        if kind == "list":
            name = subject.split("]")[0].strip("[") if subject.startswith("[") else LISTS[0]
            h += [f"List-Id: <{name}.lists.example.org>",
                  f"List-Unsubscribe: <mailto:{name}-leave@lists.example.org>",
                  "Precedence: list"]
        h += [f"X-Mailer: {r.choice(MAILERS)}", "MIME-Version: 1.0"]
        return h, msgid, subject

    def body(self, kind: str) -> tuple[list[str], str]:
        """(content headers, body) for one message kind, LF line ends."""
        if kind in ("plain", "list"):
            text = self.text()
            if kind == "list":
                text += "\n\n-- \nlist info: https://lists.example.org/\n"
            return ["Content-Type: text/plain; charset=us-ascii; format=flowed",
                    "Content-Transfer-Encoding: 7bit"], text
        if kind == "qp":
            text = self.text() + "\n\nGrüße aus Köln — “quoted” = equals\n"
            return ["Content-Type: text/plain; charset=utf-8",
                    "Content-Transfer-Encoding: quoted-printable"], _qp(text)
        if kind == "alternative":
            return self._alternative(self.boundary(), self.text(self.rng.randint(2, 6)))
        if kind == "attachment":
            b = self.boundary()
            parts = [f"--{b}\nContent-Type: text/plain; charset=utf-8\n\n{self.text()}\n"]
            for _ in range(1 if self.rng.random() < 0.8 else 2):
                ctype, name, raw = self.attachment()
                enc = base64.encodebytes(raw).decode()
                parts.append(f"--{b}\nContent-Type: {ctype}; name=\"{name}\"\n"
                             f"Content-Disposition: attachment; filename=\"{name}\"\n"
                             f"Content-Transfer-Encoding: base64\n\n{enc}")
            return [f"Content-Type: multipart/mixed; boundary=\"{b}\""], "\n".join(parts) + f"--{b}--\n"
        if kind == "forward":
            b = self.boundary()
            inner_h, _, _ = self.headers("plain", self.when - datetime.timedelta(days=3))
            self.threads.pop()
            ih, ib = self._alternative(self.boundary(), self.text(2))
            inner = "\n".join(inner_h + ih) + "\n\n" + ib
            body = (f"--{b}\nContent-Type: text/plain; charset=utf-8\n\nFYI, see below.\n\n"
                    f"--{b}\nContent-Type: message/rfc822\n"
                    f"Content-Disposition: inline\n\n{inner}\n--{b}--\n")
            return [f"Content-Type: multipart/mixed; boundary=\"{b}\""], body
        raise ValueError(kind)

    def _alternative(self, b: str, text: str) -> tuple[list[str], str]:
        html = "".join(f"<p>{p.replace(chr(10), ' ')}</p>\n" for p in text.split("\n\n"))
        html = (f"<html><head><meta charset=\"utf-8\"></head><body>\n{html}"
                f"<table><tr><td>{self.sentence()}</td></tr></table></body></html>\n")
        body = (f"--{b}\nContent-Type: text/plain; charset=utf-8\n"
                f"Content-Transfer-Encoding: quoted-printable\n\n{_qp(text)}\n"
                f"--{b}\nContent-Type: text/html; charset=utf-8\n"
                f"Content-Transfer-Encoding: quoted-printable\n\n{_qp(html)}\n--{b}--\n")
        return [f"Content-Type: multipart/alternative; boundary=\"{b}\""], body

    def flags(self, age_rank: float) -> set[str]:
        """Older mail is mostly read; some answered, flagged, a few drafts."""
        r = self.rng
        flags = set()
        if r.random() < 0.55 + 0.4 * age_rank:
            flags.add("\\Seen")
            if r.random() < 0.12:
                flags.add("\\Answered")
        if r.random() < 0.04:
            flags.add("\\Flagged")
        if r.random() < 0.003:
            flags = {"\\Draft", "\\Seen"}
        return flags

    # -- messages ----------------------------------------------------------------

    def message(self, age_rank: float = 0.5, kind: str | None = None) -> Message:
        kind = kind or self.rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        date = self._next_date()
        self.count += 1
        head, msgid, subject = self.headers(kind, date)
        content, body = self.body(kind)
        text = "\n".join(head + content) + "\n\n" + body
        data = text.encode("utf-8").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return Message(data, self.flags(age_rank), date, msgid, subject, kind)

    def messages(self, count: int) -> Iterator[Message]:
        for i in range(count):
            yield self.message(1.0 - i / max(1, count))


def generate(count: int, seed: int = 1, attachment_scale: float = 1.0) -> list[Message]:
    """``count`` messages, oldest first."""
    return list(MailGenerator(seed, attachment_scale=attachment_scale).messages(count))


# -- Maildir output ------------------------------------------------------------


def maildir_flags(flags: Iterable[str]) -> str:
    return "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))


def write_maildir(path: str, messages: Iterable[Message], uidvalidity: int | None = None,
                  uid: tuple[int, int] | None = None) -> int:
    """Write messages into Maildir folder ``path`` (made if missing) with a
    fresh ``dovecot-uidlist``; returns the number written.  ``uid`` is
    ``(uid, gid)`` to chown everything to (when run as root)."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    pid = os.getpid()
    lines = []
    n = 0
    for n, msg in enumerate(messages, 1):
        data = msg.lf()
        stamp = int(msg.date.timestamp())
        base = f"{stamp}.M{n}P{pid}.{host},S={len(data)},W={len(msg.data)}"
        name = os.path.join(path, "cur", f"{base}:2,{maildir_flags(msg.flags)}")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.utime(name, (stamp, stamp))
        if uid:
            os.chown(name, *uid)
        lines.append(f"{n} :{base}\n")
    validity = uidvalidity or int(time.time())
    header = f"3 V{validity} N{n + 1} G{uuid.uuid4().hex}\n"
    uidlist = os.path.join(path, "dovecot-uidlist")
    with open(uidlist, "w") as f:
        f.write(header + "".join(lines))
    if uid:
        for p in (path, uidlist, *(os.path.join(path, s) for s in ("cur", "new", "tmp"))):
            os.chown(p, *uid)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("maildir")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--attachment-scale", type=float, default=1.0)
    args = parser.parse_args()
    start = time.monotonic()
    gen = MailGenerator(args.seed, attachment_scale=args.attachment_scale)
    n = write_maildir(args.maildir, gen.messages(args.count))
    print(f"{n} messages in {args.maildir} in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
