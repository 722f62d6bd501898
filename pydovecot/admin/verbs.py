"""pydoveadm's verbs: names, options and where each runs.

One table (:data:`VERBS`) shared by the CLI (to parse) and the master (to
dispatch): ``master`` verbs run in the master itself (process control,
sessions, auth, the error ring), ``mail`` verbs in the user's mail
process (through the master), ``local`` ones in the CLI (``pw``).

Options follow doveadm's: getopt letters after the verb, before its
positional arguments; a letter followed by ``:`` takes a value.
Trusts nothing; it holds no logic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    name: str
    where: str  # "master" | "mail" | "local"
    options: str = ""  # getopt spec of the verb's own options
    usage: str = ""


def _mail(name: str, options: str, usage: str) -> Verb:
    # every mail verb takes doveadm's -u USER / -A / -S SOCKET / -F FILE too
    return Verb(name, "mail", "u:AS:F:" + options, "[-u <user>|-A] [-S <socket_path>] " + usage)


VERBS: dict[str, Verb] = {v.name: v for v in [
    Verb("reload", "master"),
    Verb("stop", "master"),
    Verb("who", "master", "1a:", "[-a <anvil socket path>] [-1] [<user mask>] [<ip/bits>]"),
    Verb("kick", "master", "fa:", "[-a <anvil socket path>] <user mask>[|]<ip/bits>"),
    Verb("auth test", "master", "a:x:M:",
         "[-a <auth socket path>] [-x <auth info>] [-M <master user>] <user> [<password>]"),
    Verb("auth lookup", "master", "a:x:f:",
         "[-a <userdb socket path>] [-x <auth info>] [-f field] <user> [<user> [...]]"),
    Verb("auth cache flush", "master", "a:", "[-a <master socket path>] [<user> [...]]"),
    Verb("user", "master", "a:x:f:e:u",
         "[-a <userdb socket path>] [-x <auth info>] [-f field] [-u] <user mask> [...]"),
    Verb("log errors", "master", "s:", "[-s <min_timestamp>]"),
    Verb("pw", "local", "", "[-l] [-p plaintext] [-r rounds] [-s scheme] [-t hash] [-u user]"),
    _mail("mailbox list", "78s", "[-7|-8] [-s] [<mailbox mask> [...]]"),
    _mail("mailbox create", "sg:", "[-s] [-g <guid>] <mailbox> [...]"),
    _mail("mailbox delete", "rseZ", "[-e] [-r] [-s] [-Z] <mailbox> [...]"),
    _mail("mailbox rename", "s", "[-s] <old name> <new name>"),
    _mail("mailbox subscribe", "", "<mailbox> [...]"),
    _mail("mailbox unsubscribe", "", "<mailbox> [...]"),
    _mail("mailbox status", "t", "[-t] <fields> <mailbox mask> [...]"),
    _mail("mailbox metadata get", "s", "[-s] <mailbox> <key>"),
    _mail("mailbox metadata set", "s", "[-s] <mailbox> <key> <value>"),
    _mail("mailbox metadata unset", "s", "[-s] <mailbox> <key>"),
    _mail("mailbox metadata list", "sp", "[-s] [-p] <mailbox> [<key prefix>]"),
    _mail("fetch", "", "<fields> <search query>"),
    _mail("search", "", "<search query>"),
    _mail("expunge", "md", "[-m] [-d] <search query>"),
    _mail("flags add", "", "<flags> <search query>"),
    _mail("flags remove", "", "<flags> <search query>"),
    _mail("flags replace", "", "<flags> <search query>"),
    _mail("copy", "", "<destination> [user <source user>] <search query>"),
    _mail("move", "", "<destination> [user <source user>] <search query>"),
    _mail("save", "m:", "[-m mailbox]"),
    _mail("force-resync", "f", "[-f] <mailbox mask>"),
    _mail("index", "qn:", "[-q] [-n <max recent>] <mailbox mask>"),
    _mail("quota get", "", ""),
    _mail("quota recalc", "", ""),
]}

#: Commands of more than one word (``mailbox metadata get``) are found by
#: their longest prefix in the arguments.
MAX_WORDS = max(len(name.split()) for name in VERBS)


def find(words: list[str]) -> tuple[Verb | None, list[str]]:
    """The verb named by the first words of ``words`` and the rest."""
    for n in range(min(MAX_WORDS, len(words)), 0, -1):
        verb = VERBS.get(" ".join(words[:n]))
        if verb is not None:
            return verb, words[n:]
    return None, words
