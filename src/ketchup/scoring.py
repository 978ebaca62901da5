"""Score one prediction file with its task's metrics (no torch: scoring jobs start fast)."""

from __future__ import annotations

from typing import Any

from ketchup import metrics, tasks
from ketchup.io import DataError, numbered_jsonl, write_json


def score(task: str, predictions_path: str, out_path: str, scoring: dict[str, Any] | None = None) -> None:
    """Corpus metrics and per-example primary scores (for significance tests) of one prediction file,
    by the task's ``metrics``, ``primary_metric`` and ``answer`` (``scoring``; default: the preset
    of that name, ketchup.tasks).

    Every row needs an ``id``, a ``prediction`` and a ``reference``, and ids are unique: the corpus
    metrics count rows while ``per_example`` keeps one score per id, so the two must cover the same
    examples (DataError naming the file and lines otherwise).
    """
    numbered = numbered_jsonl(predictions_path)
    seen: dict[str, int] = {}
    for lineno, row in numbered:
        missing = [k for k in ("id", "prediction", "reference") if k not in row]
        if missing:
            raise DataError(f"{predictions_path}:{lineno}: missing field(s) {missing}")
        ex_id = str(row["id"])
        if ex_id in seen:
            raise DataError(f"{predictions_path}:{lineno}: duplicate example id {ex_id!r}, already used at "
                            f"{predictions_path}:{seen[ex_id]}")
        seen[ex_id] = lineno
    rows = [row for _, row in numbered]
    tdef = tasks.named(task, scoring)
    answer = tdef.get("answer", "text")
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    scores = metrics.per_example(tdef["primary_metric"], preds, refs, answer)
    per_example = {str(r["id"]): s for r, s in zip(rows, scores)}
    if not len(scores) == len(per_example) == len(rows):  # one score per prediction, keyed by its id
        raise DataError(f"{predictions_path}: {len(rows)} predictions but {len(scores)} per-example scores "
                        f"for {len(per_example)} ids")
    write_json(out_path, {"task": task, "n": len(rows),
                          "metrics": metrics.compute(tdef["metrics"], preds, refs, answer),
                          "per_example": per_example})
