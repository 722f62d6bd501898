"""Auth penalty: longer failure delays for remote IPs that keep failing.

Dovecot's anvil counts failed logins per remote IP and delays that IP's
next attempts by 2 s doubled per failure, at most 15 s, forgetting an IP an
hour after its last failure.  Here the penalty is the failure delay itself,
in the same shape and scaled by ``auth_failure_delay`` (so tests can make it
tiny):

    n = failures recorded for the IP (within the last hour), n >= 1
    delay(n) = min(2 ** n, 15) * auth_failure_delay / 2

With the default ``auth_failure_delay = 2 s`` that is 2, 4, 8, 15, 15, … s,
Dovecot's series; an IP without failures gets the plain
``auth_failure_delay``.  A successful login from the IP resets it.  The
count stops at 13 failures (Dovecot's AUTH_PENALTY_MAX_PENALTY).

- IPv6 addresses are counted by their /48 network, as Dovecot does, since
  one client easily owns many addresses; IPv4 per address.
- Addresses in ``login_trusted_networks`` (webmail, proxies: many users
  behind one IP) are never penalised: they get the plain delay.
- Temporary failures (backend trouble) are not the client's fault and are
  not counted (the engine only records real refusals).
- At most ``max_entries`` IPs are tracked; the least recently failed are
  forgotten first, so a botnet cannot grow it without bound.

Trust: the remote IP is what the login process reported (trusted: it got it
from the kernel or a trusted proxy header).
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any

INIT_SECS = 2.0
MAX_SECS = 15.0
MAX_PENALTY = 13
EXPIRE_SECS = 3600.0
IPV6_MASK_BITS = 48


def _networks(nets: list[str]) -> list[Any]:
    parsed = []
    for net in nets:
        try:
            parsed.append(ipaddress.ip_network(net, strict=False))
        except ValueError:
            continue
    return parsed


class AuthPenalty:
    """Failure counts per remote IP."""

    def __init__(self, clock: Any, trusted_networks: list[str] | None = None,
                 expire: float = EXPIRE_SECS, max_entries: int = 100_000):
        self.clock = clock
        self.trusted = _networks(trusted_networks or [])
        self.expire = expire
        self.max_entries = max_entries
        # ident -> (failures, time of the last failure), oldest first
        self._entries: collections.OrderedDict[str, tuple[int, float]] = (
            collections.OrderedDict()
        )

    def ident(self, remote_ip: str | None) -> str | None:
        """The key an IP is counted under; None: no penalty for it."""
        if not remote_ip:
            return None
        try:
            addr = ipaddress.ip_address(remote_ip)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.trusted):
            return None
        if isinstance(addr, ipaddress.IPv6Address):
            return str(ipaddress.ip_network(f"{addr}/{IPV6_MASK_BITS}", strict=False))
        return str(addr)

    def _prune(self) -> None:
        now = self.clock.seconds()
        while self._entries:
            key, (_count, last) = next(iter(self._entries.items()))
            if now - last < self.expire and len(self._entries) <= self.max_entries:
                break
            del self._entries[key]

    def failures(self, remote_ip: str | None) -> int:
        """Failures counted for the IP now."""
        key = self.ident(remote_ip)
        if key is None:
            return 0
        self._prune()
        entry = self._entries.get(key)
        return entry[0] if entry else 0

    def failed(self, remote_ip: str | None) -> None:
        """Record one failed login."""
        key = self.ident(remote_ip)
        if key is None:
            return
        self._prune()
        count = min(self.failures(remote_ip) + 1, MAX_PENALTY)
        self._entries.pop(key, None)
        self._entries[key] = (count, self.clock.seconds())
        self._prune()

    def succeeded(self, remote_ip: str | None) -> None:
        """A successful login resets the IP."""
        key = self.ident(remote_ip)
        if key is not None:
            self._entries.pop(key, None)

    def delay(self, remote_ip: str | None, base: float) -> float:
        """Seconds to wait before answering a failure (``base`` is
        auth_failure_delay)."""
        n = self.failures(remote_ip)
        if n <= 0 or base <= 0:
            return max(base, 0.0)
        return min(2.0**n, MAX_SECS) * base / INIT_SECS

    def __len__(self) -> int:
        return len(self._entries)
