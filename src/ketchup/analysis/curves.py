"""Training curves: per-step training loss and dev metric of every run, from its metrics.jsonl.

Each trained model directory holds ``metrics.jsonl`` (written by the training loop): rows with
``loss`` (one per optimizer step) and rows with ``dev_metric`` (every ``eval_every`` steps and at
step 0, the starting point: for RL methods, the KL student). Seeds are averaged per step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ketchup.analysis.common import MODEL_PATTERN
from ketchup.paths import parse

COLUMNS = ["task", "student", "method", "step", "series", "value", "seeds"]


def read_curves(model_dirs: list[str]) -> pd.DataFrame:
    """Tidy frame: task, student, method, step, series (loss | dev_metric), value (seed mean), seeds."""
    rows = []
    for model_dir in model_dirs:
        run = parse(model_dir, MODEL_PATTERN)
        path = Path(model_dir) / "metrics.jsonl"
        if not path.exists():  # the prompted student is saved untrained: no curve
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            for series in ("loss", "dev_metric"):
                if series in rec and rec[series] is not None:
                    rows.append({**run, "step": int(rec["step"]), "series": series, "value": float(rec[series])})
    frame = pd.DataFrame(rows, columns=["task", "student", "method", "seed", "step", "series", "value"])
    grouped = frame.groupby(["task", "student", "method", "step", "series"], sort=True)["value"]
    out = grouped.agg(value="mean", seeds="count").reset_index()
    return out[COLUMNS]
