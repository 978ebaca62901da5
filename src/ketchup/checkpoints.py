"""Durable, verifiable checkpoint folders.

A checkpoint is written into a temporary folder, every file flushed to disk (``fsync``), then a
manifest of each file's size and sha256 is written last and flushed, and only then is the folder
renamed into place (and its parent flushed). Resuming verifies the manifest: a folder that was cut
short (a killed job, a full disk, a truncated file) is never loaded, it is set aside with a warning
naming its path and the run falls back to an older checkpoint or starts over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

from ketchup.digests import sha256_file
from ketchup.io import StorageError

MANIFEST = "manifest.json"


def fsync_path(path: Path) -> None:
    """Flush a file or a folder entry (after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(folder: str | Path) -> None:
    """Flush every file of ``folder``, then write and flush its manifest (sizes and digests)."""
    folder = Path(folder)
    entries = {}
    for path in _files(folder):
        fsync_path(path)
        entries[str(path.relative_to(folder))] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = folder / MANIFEST
    with manifest.open("w") as handle:
        json.dump({"files": entries}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    for sub in sorted({p.parent for p in _files(folder)} | {folder}, key=lambda p: -len(p.parts)):
        fsync_path(sub)


def problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint (None if its manifest checks out)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "no manifest (written last, so the checkpoint was never completed)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, the manifest says {entry['size']}"
        if sha256_file(path) != entry["sha256"]:
            return f"{name} does not match its digest"
    extra = sorted(str(p.relative_to(folder)) for p in _files(folder) if str(p.relative_to(folder)) not in entries)
    if extra:
        return f"files not in the manifest: {extra}"
    return None


def set_aside(folder: Path, reason: str) -> Path:
    """Rename a bad checkpoint out of the way (kept for inspection) and say so."""
    target = folder.with_name(f"{folder.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    folder.rename(target)
    print(f"WARNING: checkpoint {folder} is incomplete or corrupt ({reason}); set aside as {target}",
          file=sys.stderr)
    return target


def install(tmp: Path, final: Path, previous: Path | None = None) -> None:
    """Rename a sealed ``tmp`` into ``final``; the folder ``final`` held becomes ``previous`` (or goes)."""
    if final.exists():
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
            final.rename(previous)
        else:
            shutil.rmtree(final)
    tmp.rename(final)
    fsync_path(final.parent)


def copy_contents(src: Path, dst: Path) -> None:
    """Copy a checkpoint's files without its manifest (a model folder for later stages)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(MANIFEST))


_DISK_FULL_MARKERS = ("unexpected pos", "file write failed", "no space left")


@contextlib.contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn the many ways a full disk surfaces (ENOSPC, EDQUOT, torch's 'unexpected pos') into one
    clear error naming the path and the free space."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
            marker in str(exc).lower() for marker in _DISK_FULL_MARKERS)
        if not full:
            raise
        where = Path(path)
        probe = next((p for p in (where, *where.parents) if p.exists()), Path("."))
        free = shutil.disk_usage(probe).free
        raise StorageError(f"{path}: no space left on the device while writing ({free / 2**20:.0f} MiB free "
                           f"on {probe}); free some space and rerun, the run resumes from its last good "
                           f"checkpoint ({exc})") from exc
