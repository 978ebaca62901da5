"""Score one prediction file with its task's metrics (no torch: scoring jobs start fast)."""

from __future__ import annotations

from ketchup import metrics
from ketchup.config import TASK_KINDS
from ketchup.io import read_jsonl, write_json


def score(task: str, predictions_path: str, out_path: str) -> None:
    """Corpus metrics and per-example primary scores (for significance tests) of one prediction file."""
    rows = read_jsonl(predictions_path)
    kind = TASK_KINDS[task]
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    write_json(out_path, {"task": task, "n": len(rows), "metrics": metrics.compute(kind, preds, refs),
                          "per_example": {r["id"]: s for r, s in zip(rows, metrics.per_example(kind, preds, refs))}})
