"""The feature registry for ENABLE and CAPABILITY, as Dovecot's
imap_feature_register: a feature is a capability name, optionally with an
``enable(client)`` callback that ENABLE (RFC 5161) calls and an
``enabled(client)`` test.

Capabilities that need no ENABLE (``SORT``, ``ESEARCH``, ``UIDPLUS`` …) are
registered by the command module implementing them with :func:`provide`,
so every advertised capability maps to a command or a feature (a test
checks it).  The advertised order and the settings that change it stay in
:mod:`pydovecot.imap.capability`.  Imports nothing of the engine; the
built-in ENABLE-able features (CONDSTORE, QRESYNC, IMAP4rev2, UTF8=ACCEPT)
call only the client's public surface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Feature:
    """One capability: ``enable`` is None for advertise-only ones."""

    name: str
    module: str
    enable: Callable[[Any], None] | None = None
    enabled: Callable[[Any], bool] | None = None
    #: ENABLE switches it on only while the capability is advertised.
    needs_capability: bool = False


_FEATURES: dict[str, Feature] = {}


def register(name: str, module: str, enable: Callable[[Any], None] | None = None,
             enabled: Callable[[Any], bool] | None = None,
             needs_capability: bool = False) -> Feature:
    """Register a feature; ValueError if the name is taken."""
    key = name.upper()
    if key in _FEATURES:
        raise ValueError(f"feature {name} registered twice")
    feature = Feature(name, module, enable, enabled, needs_capability)
    _FEATURES[key] = feature
    return feature


def provide(module: str, *names: str) -> None:
    """Advertise-only capabilities implemented by ``module``."""
    for name in names:
        register(name, module)


def lookup(name: str) -> Feature | None:
    return _FEATURES.get(name.upper())


def features() -> list[Feature]:
    """Every registered feature, by name."""
    return [_FEATURES[k] for k in sorted(_FEATURES)]


def enable(client: Any, names: list[str], offered: set[str]) -> list[str]:
    """ENABLE: switch on each known, not yet enabled feature in ``names``;
    the names newly enabled (for ``* ENABLED``), in request order."""
    out: list[str] = []
    for name in names:
        f = _FEATURES.get(name.upper())
        if f is None or f.enable is None or f.enabled is None:
            continue
        if f.needs_capability and f.name.upper() not in offered:
            continue
        if f.enabled(client):
            continue
        f.enable(client)
        out.append(f.name)
    return out


# -- the built-in ENABLE-able features ------------------------------------------


def _enable_condstore(client: Any) -> None:
    client.enable_condstore()


def _enable_qresync(client: Any) -> None:
    client.qresync = True
    client.enable_condstore()


def _enable_rev2(client: Any) -> None:
    client.rev2 = client.utf8 = True


def _enable_utf8(client: Any) -> None:
    client.utf8 = True


register("CONDSTORE", __name__, _enable_condstore, lambda c: c.condstore)
register("QRESYNC", __name__, _enable_qresync, lambda c: c.qresync)
register("IMAP4rev2", __name__, _enable_rev2, lambda c: c.rev2, needs_capability=True)
register("UTF8=ACCEPT", __name__, _enable_utf8, lambda c: c.utf8, needs_capability=True)
# The command reader (pydovecot.imap.parser) implements these.
provide("pydovecot.imap.parser", "LITERAL+", "LITERAL-")
