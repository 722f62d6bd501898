"""The message as Sieve sees it: header fields (editable, for editheader),
addresses, body text for the body test and the MIME parts foreverypart
walks.

Headers are split from the raw bytes here (linear, no regular expression);
the MIME tree is parsed by the email package on first use only.  Values are
decoded (RFC 2047) and unfolded as RFC 5228 2.4.2.2 asks.  Trusts nothing
in the message: undecodable words and charsets stay as they are.
"""

from __future__ import annotations

import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils

MAX_PARTS = 1000
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def split_message(raw: bytes) -> tuple[list[list[str]], bytes]:
    """``[[name, raw value], ...]`` and the body (after the blank line)."""
    headers: list[list[str]] = []
    pos, n = 0, len(raw)
    while pos < n:
        end = raw.find(b"\n", pos)
        if end < 0:
            end = n
        line = raw[pos:end]
        nxt = end + 1
        if line in (b"", b"\r"):
            return headers, raw[nxt:]
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1][1] += "\r\n" + line.rstrip(b"\r").decode("utf-8", "surrogateescape")
        else:
            name, colon, value = line.rstrip(b"\r").partition(b":")
            if not colon:
                return headers, raw[pos:]  # not a header: the body starts here
            headers.append([name.strip().decode("ascii", "replace"),
                            value.decode("utf-8", "surrogateescape")])
        pos = nxt
    return headers, b""


def unfold(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "").strip(" \t")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; anything undecodable left as it is."""
    value = unfold(value)
    if "=?" not in value:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, ValueError, UnicodeError, email.errors.HeaderParseError):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class Message:
    """One message being filtered; header edits are kept here."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.headers, self.body = split_message(raw)
        self.edited = False
        self._tree: email.message.Message | None = None
        self._texts: dict = {}
        self._lowered: dict = {}

    @property
    def size(self) -> int:
        return len(self.raw)

    def values(self, name: str, headers: list | None = None) -> list[str]:
        lname = name.lower()
        return [decode_words(v) for k, v in (headers if headers is not None else self.headers)
                if k.lower() == lname]

    def raw_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [unfold(v) for k, v in self.headers if k.lower() == lname]

    def as_bytes(self) -> bytes:
        if not self.edited:
            return self.raw
        head = "".join(f"{k}:{v}\r\n" for k, v in self.headers)
        return head.encode("utf-8", "surrogateescape") + b"\r\n" + self.body

    # -- MIME ---------------------------------------------------------------

    def tree(self) -> email.message.Message:
        if self._tree is None:
            self._tree = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
                self.raw)
        return self._tree

    def parse_steps(self, chunk: int = 64 * 1024):
        """Parse the MIME tree a chunk at a time (a generator that yields
        between chunks), so a big message does not hold the reactor."""
        if self._tree is not None:
            return
        parser = email.parser.BytesFeedParser(policy=email.policy.compat32)
        raw = memoryview(self.raw)
        for start in range(0, len(raw), chunk):
            parser.feed(bytes(raw[start:start + chunk]))
            yield
        self._tree = parser.close()

    def lowered(self, text: str) -> str:
        """``text`` ASCII-lowercased, remembered for big texts (body tests
        in loops would redo it for every part)."""
        if len(text) < 65536:
            return text.translate(_ASCII_LOWER)
        hit = self._lowered.get(id(text))
        if hit is None or hit[0] is not text:
            hit = (text, text.translate(_ASCII_LOWER))
            if len(self._lowered) > 16:
                self._lowered.clear()
            self._lowered[id(text)] = hit
        return hit[1]

    def parts(self) -> list[email.message.Message]:
        """Every MIME part below the top level, depth first (RFC 5703)."""
        out = []
        for n, part in enumerate(self.tree().walk()):
            if n == 0:
                continue
            out.append(part)
            if len(out) >= MAX_PARTS:
                break
        return out

    def body_texts(self, transform: str, types: tuple[str, ...] = ()) -> list[str]:
        """RFC 5173 body transforms: "raw", "content" (with types) or "text"."""
        key = (transform, types)
        cached = self._texts.get(key)
        if cached is not None:
            return cached
        if transform == "raw":
            out = [self.body.decode("utf-8", "replace")]
        else:
            out = []
            wanted = types if transform == "content" else ("text",)
            count = 0
            for part in self.tree().walk():
                count += 1
                if count > MAX_PARTS:
                    break
                ctype = part.get_content_type().lower()
                maintype = ctype.split("/")[0]
                if part.is_multipart():
                    if transform == "content" and _type_matches(ctype, wanted) and \
                            maintype == "multipart":
                        out.append(_multipart_text(part))
                    continue
                if not _type_matches(ctype, wanted):
                    continue
                if transform == "text" and ctype not in ("text/plain", "text/html") and \
                        maintype != "text":
                    continue
                out.append(decoded_text(part, html=transform == "text" and
                                         ctype == "text/html"))
        self._texts[key] = out
        return out


def _type_matches(ctype: str, wanted: tuple[str, ...]) -> bool:
    for w in wanted:
        w = w.lower()
        if w == "" or w == ctype or ("/" not in w and ctype.split("/")[0] == w):
            return True
    return False


def _multipart_text(part: email.message.Message) -> str:
    text = part.preamble or ""
    text += part.epilogue or ""
    return text


def decoded_text(part: email.message.Message, html: bool = False) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001  (a broken encoding: the raw text)
        payload = None
    if payload is None:
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = payload.decode(charset, "replace")
    except LookupError:
        text = payload.decode("utf-8", "replace")
    if html:
        text = _strip_html(text)
    return text


def _strip_html(text: str) -> str:
    """Tags removed (Pigeonhole's :text of text/html is its plain text)."""
    out, i, n = [], 0, len(text)
    while i < n:
        j = text.find("<", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = text.find(">", j)
        if k < 0:
            break
        i = k + 1
    return "".join(out)


def parse_addresses(values: list[str]) -> list[str]:
    """``local@domain`` of every address in ``values`` (groups flattened)."""
    out = []
    for _name, addr in email.utils.getaddresses(values):
        if addr:
            out.append(addr)
    return out


def part_headers(part: email.message.Message) -> list[list[str]]:
    return [[k, v if isinstance(v, str) else str(v)] for k, v in part.items()]
