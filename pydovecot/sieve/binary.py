"""Compiling a script file, with the compiled form cached beside it.

``foo.sieve`` is cached as ``foo.pdvbin`` (never Pigeonhole's
``foo.svbin``): JSON holding the script's mtime, size and SHA-256, the
extensions it was compiled against and the compiled form.  The cache is
used only when all of these still match, and is written crash-safely
(a temporary file in the same directory, fsync, rename).  A directory we
may not write (global scripts) just goes without a cache.  Trusts the
cache only as far as it matches the script's hash; a cache that does not
parse is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os

from pydovecot.sieve.errors import SieveSyntaxError
from pydovecot.sieve.parser import DEFAULT_MAX_SCRIPT_SIZE, parse
from pydovecot.sieve.validate import DEFAULT_EXTENSIONS, compile_script

FORMAT = "pydovecot-sieve-1"
SUFFIX = ".pdvbin"


def binary_path(script: str) -> str:
    """Where ``script``'s compiled form lives (beside the real file)."""
    real = os.path.realpath(script)
    base = real[:-len(".sieve")] if real.endswith(".sieve") else real
    return base + SUFFIX


def compile_file(path: str, extensions: frozenset[str] = DEFAULT_EXTENSIONS,
                 max_size: int = DEFAULT_MAX_SCRIPT_SIZE, cache: bool = True) -> dict:
    """The compiled form of the script at ``path`` (OSError if unreadable,
    :class:`SieveSyntaxError` if it does not compile)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size > max_size:
            raise SieveSyntaxError(f"script is too large (max {max_size} bytes)")
        source = f.read(max_size + 1)
    if len(source) > max_size:
        raise SieveSyntaxError(f"script is too large (max {max_size} bytes)")
    digest = hashlib.sha256(source).hexdigest()
    key = {"format": FORMAT, "mtime_ns": st.st_mtime_ns, "size": len(source),
           "sha256": digest, "extensions": sorted(extensions)}
    bin_path = binary_path(path)
    if cache:
        cached = _load(bin_path, key, max_size)
        if cached is not None:
            return cached
    compiled = compile_script(parse(source, max_size), extensions)
    if cache:
        _store(bin_path, {**key, "compiled": compiled})
    return compiled


def _load(bin_path: str, key: dict, max_size: int) -> dict | None:
    try:
        with open(bin_path, "rb") as f:
            data = f.read(max_size * 16 + 4096)
        doc = json.loads(data)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in key.items()):
        return None
    compiled = doc.get("compiled")
    if not isinstance(compiled, dict) or not isinstance(compiled.get("commands"), list):
        return None
    return compiled


def _store(bin_path: str, doc: dict) -> None:
    directory = os.path.dirname(bin_path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(bin_path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, bin_path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
