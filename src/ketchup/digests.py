"""Content digests of a run's inputs (data files, tokenizers, model folders), for resume fingerprints.

A file's digest is cached in a small JSON file beside the input (``<name>.digest.json``: beside a
folder, not inside it, so the folder's contents and modification time stay as Snakemake wrote
them), keyed by the file's size and modification time: a rerun does not rehash gigabytes of
weights, and a file that changed is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _cache_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.digest.json")


def _walk(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not _is_cache(p))


def _is_cache(path: Path) -> bool:
    return path.name.startswith(".") and ".digest.json" in path.name


def content_digest(path: str | Path) -> str:
    """sha256 of a file, or of a folder's (relative path, file digest) list; cached beside it.

    A path that does not exist locally (a hub model name) digests to its name: the hub revision is
    then what the name resolves to, which the run cannot see.
    """
    path = Path(path)
    if not path.exists():
        return f"name:{path}"
    files = [path] if path.is_file() else _walk(path)
    key = {str(f.relative_to(path) if f != path else f.name): _stat_key(f) for f in files}
    cache = _cache_path(path)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["digest"]
    except (OSError, ValueError, KeyError):
        pass
    if path.is_file():
        digest = sha256_file(path)
    else:
        listing = hashlib.sha256()
        for f in files:
            listing.update(f"{f.relative_to(path)}\0{sha256_file(f)}\n".encode())
        digest = listing.hexdigest()
    _write_cache(cache, {"key": key, "digest": digest})
    return digest


def _write_cache(cache: Path, entry: dict) -> None:
    """Best effort: a read-only location (a shared hub cache) just goes uncached."""
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)


def input_digests(paths: dict[str, str | Path | None]) -> dict[str, str | None]:
    """{name: digest} for a run's inputs; None stays None (an input the run does not have)."""
    return {name: None if p is None else content_digest(p) for name, p in sorted(paths.items())}
