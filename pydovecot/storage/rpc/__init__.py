"""Storage over RPC: IMailStorage/IMailbox between processes and hosts.

* :mod:`.commands` — the AMP commands (one per interface method, from two
  tables) and the session commands (hello, bodies, views, pushes).
* :mod:`.wire` — structured values split into ≤ 60,000-byte AMP values,
  and the StorageError ↔ declared AMP error mapping (codes kept).
* :mod:`.client` — :class:`RPCStorage`/:class:`RPCMailbox` (the interfaces
  over one AMP connection); :mod:`.server` — :class:`StorageServer`, one
  local storage served to one peer, every call checked by :mod:`.access`.
* :mod:`.tcp` — the same over TCP with TLS and ``storage_rpc_secret``.

Trusts: see each module; nothing crosses without the owner's check.
"""
