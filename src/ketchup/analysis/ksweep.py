"""k_sweep.csv: each task's primary metric against K, beside the KL and LLMR levels.

The sweep's run for K is the student trained with KETCHUP's loss at that K: method ``ketchup-k{K}``,
except that the pipeline reuses identical runs instead of training them twice (the Snakefile's
``sweep_run``, recorded in the ``run`` column): K equal to the task's K is the ``ketchup`` run,
and K = 1 is the ``llmr`` run when llmr and ketchup share their training settings (KETCHUP with
K = 1 is exactly LLMR, docs/math.md 'K-step returns').
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ketchup.analysis.common import primary_metric
from ketchup.io import read_json
from ketchup.tables import parse_run

COLUMNS = ["task", "metric", "student", "k", "run", "is_task_k", "seeds", "mean", "std", "kl_mean", "kl_std",
           "llmr_mean", "llmr_std"]


def _scores(paths: list[str], info: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    rows = []
    for path in paths:
        run = parse_run(path)
        metric = primary_metric(run["task"], info)
        rows.append({**run, "metric": metric, "value": float(read_json(path)["metrics"][metric])})
    return pd.DataFrame(rows, columns=["task", "student", "method", "seed", "metric", "value"])


def _agg(values: pd.Series) -> tuple[int, float, float]:
    return int(values.count()), float(values.mean()), float(values.std()) if values.count() > 1 else float("nan")


def k_sweep_table(paths: list[str], sweep: dict[str, dict[Any, str]], task_k: dict[str, int],
                  info: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """``sweep``: task -> {K: run method}; ``paths``: metric files of those runs and of kl / llmr;
    ``info``: each task's primary metric (ketchup.analysis.common.task_info)."""
    scores = _scores(paths, info)
    rows = []
    for task, runs in sorted(sweep.items()):
        sub = scores[scores.task == task]
        for student in sorted(sub.student.unique()):
            mine = sub[sub.student == student]
            refs = {}
            for ref in ("kl", "llmr"):
                vals = mine[mine.method == ref]["value"]
                _, mean, std = _agg(vals) if len(vals) else (0, float("nan"), float("nan"))
                refs[f"{ref}_mean"], refs[f"{ref}_std"] = mean, std
            for k, run in sorted(((int(k), r) for k, r in runs.items())):
                vals = mine[mine.method == run]["value"]
                if not len(vals):
                    continue
                seeds, mean, std = _agg(vals)
                rows.append({"task": task, "metric": primary_metric(task, info), "student": student, "k": k, "run": run,
                             "is_task_k": k == int(task_k.get(task, 1)), "seeds": seeds, "mean": mean, "std": std,
                             **refs})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.round({c: 4 for c in ("mean", "std", "kl_mean", "kl_std", "llmr_mean", "llmr_std")})
