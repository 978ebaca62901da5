"""Shared fixtures: repository paths, a fresh copy of the default config, a JSONL writer."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
if str(SRC) not in sys.path:  # the package is normally installed (editable); this keeps a bare checkout working
    sys.path.insert(0, str(SRC))

# The real GSM8K files live beside the checkout (../shared/data/gsm8k), not inside it.
GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"

_DEFAULT_CONFIG = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def default_config() -> dict[str, Any]:
    """A deep copy of config.yaml, free to mutate."""
    return copy.deepcopy(_DEFAULT_CONFIG)


@pytest.fixture
def jsonl_writer() -> Callable[[Path, Iterable[Any]], Path]:
    """write(path, rows): dicts become JSON lines, str and bytes rows are written as they are."""

    def write(path: Path, rows: Iterable[Any]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        chunks = []
        for row in rows:
            if isinstance(row, bytes):
                chunks.append(row.rstrip(b"\n") + b"\n")
            elif isinstance(row, str):
                chunks.append(row.rstrip("\n").encode("utf-8") + b"\n")
            else:
                chunks.append(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
        path.write_bytes(b"".join(chunks))
        return path

    return write
