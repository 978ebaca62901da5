"""Content-addressed disk cache of judge replies.

Key: sha256 of the canonical JSON of ``{model, messages, temperature, max_tokens,
template_version}`` plus ``response_format`` when structured output is asked for (sorted keys, no
whitespace, UTF-8). ``messages`` is the prompt, never a repair turn; the repair instruction's
template is part of ``template_version``. The key describes the request as configured, not what a
server made of it: whether the server took ``response_format`` is known only after a request, and a
rerun from the cache makes none (the entry records it as ``structured``). Neither the API key nor
the base URL is part of the key or of the stored entry.

Layout: ``<cache_dir>/<key[:2]>/<key>.json``, one small JSON file per judgement, written atomically
(temporary file + ``os.replace``). An interrupted run therefore keeps every judgement that finished,
and a rerun with the same inputs makes no request for them. Entry fields::

    {"cache_format": 2, "key": ..., "kind": "score"|"pairwise", "model": ...,
     "template_version": ..., "temperature": ..., "max_tokens": ...,
     "response_format": bool (asked for), "structured": bool (sent with the reply's request),
     "reply": <last reply text or null>, "valid": bool, "error": <str or null>,
     "attempts": int (HTTP requests), "repairs": 0|1, "first_reply": <the repaired reply or null>,
     "usage": {"prompt_tokens": int, "completion_tokens": int} (all requests),
     "repair_usage": {...the repair turn's part...}, "created": <unix s>}

Only *replies* are cached (valid ones, and invalid ones whose repair turn was unparseable too);
transport failures (429/5xx/timeouts after all retries) are not, so a rerun tries them again. A run
interrupted between a reply and its repair turn caches nothing for it: the rerun asks from the start.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ketchup.io import write_text

CACHE_FORMAT = 2


def cache_key(model: str, messages: Sequence[dict], temperature: float, max_tokens: int,
              template_version: str, response_format: Mapping[str, Any] | None = None) -> str:
    payload = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "template_version": template_version,
    }
    if response_format is not None:  # absent, not null: keys without structured output stay as they were
        payload["response_format"] = response_format
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    key = staticmethod(cache_key)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or None (missing, unreadable or for another key: treated as a miss)."""
        p = self.path(key)
        try:
            with open(p, encoding="utf-8") as fh:
                entry = json.load(fh)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> Path:
        entry = {"cache_format": CACHE_FORMAT, "key": key, **entry}
        path = self.path(key)
        write_text(path, json.dumps(entry, ensure_ascii=False, indent=1) + "\n")
        return path

    def keys(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for p in sorted(self.root.glob("??/*.json")):
            yield p.stem

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())
