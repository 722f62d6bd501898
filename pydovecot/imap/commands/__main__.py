"""``python -m pydovecot.imap.commands``: print the command table and the
feature registry (name, flags, module)."""

from __future__ import annotations

from pydovecot.imap import commands, features
from pydovecot.imap.commands import registry


def main() -> None:
    commands.load()
    rows = [(c.name, registry.describe(c.flags), c.module) for c in registry.table()]
    width = max(len(r[0]) for r in rows)
    fwidth = max(len(r[1]) for r in rows)
    print("Commands:")
    for name, flags, module in rows:
        print(f"  {name:<{width}}  {flags:<{fwidth}}  {module}")
    print("Features (ENABLE / CAPABILITY):")
    for f in features.features():
        kind = "enable" if f.enable is not None else "capability"
        print(f"  {f.name:<22}  {kind:<10}  {f.module}")


if __name__ == "__main__":
    main()
