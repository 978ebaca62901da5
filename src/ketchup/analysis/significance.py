"""Paired bootstrap significance of every method against the baselines (``kl``, ``llmr``, ``ketchup``:
those configured) on per-example scores.

Per task and student size: each run's per-example primary score (``per_example`` of its metrics
JSON: ROUGE-1 F1 x100, sentence BLEU, or 0/100 GSM8K correctness) is averaged over the run's
seeds per example id; a method and a baseline are compared on the ids both have. With d_i the
per-example difference (method - baseline), the observed difference is mean(d) and each of B
resamples (test examples drawn with replacement; the same resample indices for every comparison of
a task and student, seeded) gives mean(d*).

p-value (two-sided, "is the difference different from zero"): twice the smaller tail of the
bootstrap distribution on either side of zero, with the usual +1 correction so that it is never
exactly 0: p = min(1, 2 min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (B + 1)). Identical systems give
p = 1; a system better on nearly every resample gives p = 2 / (B + 1), the smallest value B
resamples can show. The CI is the percentile interval of mean(d*).

For translation the per-example score is sentence BLEU, whose mean is not the corpus BLEU of the
main table: the differences here are in mean sentence BLEU.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from ketchup.analysis.common import method_rank, primary_metric
from ketchup.io import read_json
from ketchup.tables import parse_run

COLUMNS = ["task", "metric", "student", "method", "baseline", "n_examples", "method_seeds", "baseline_seeds",
           "method_mean", "baseline_mean", "mean_diff", "ci_low", "ci_high", "p_value", "significant",
           "resamples", "confidence"]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                     indices: np.ndarray | None = None) -> dict[str, float]:
    """Paired bootstrap of mean(a - b) over examples; see the module doc for the p-value."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be non-empty 1-d arrays of one shape, got {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size)) if indices is None else indices
    means = d[idx].mean(1)
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p = min(1.0, 2.0 * min(below + 1, above + 1) / (resamples + 1))
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_value": p,
            "method_mean": float(a.mean()), "baseline_mean": float(b.mean())}


def per_example_scores(paths: list[str]) -> dict[tuple[str, str, str], tuple[dict[str, float], int]]:
    """(task, student, method) -> ({example id: score averaged over seeds}, number of seeds).

    The teacher's file (results/metrics/{task}/teacher.json) is read as method ``teacher`` of every
    student size (student key ``*``).
    """
    sums: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[tuple, set] = defaultdict(set)
    for path in paths:
        run = parse_run(path)
        key = (run["task"], "*" if run["method"] == "teacher" else run["student"], run["method"])
        seeds[key].add(run["seed"])
        for ex_id, score in read_json(path)["per_example"].items():
            sums[key][ex_id].append(float(score))
    return {key: ({i: float(np.mean(v)) for i, v in per.items()}, len(seeds[key])) for key, per in sums.items()}


def significance_table(paths: list[str], baselines: list[str] | tuple[str, ...] = ("kl", "llmr"),
                       resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                       alpha: float = 0.05, info: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """Each method against each baseline on the task's primary metric (``info``: common.task_info)."""
    scores = per_example_scores(paths)
    rows: list[dict[str, Any]] = []
    pairs = sorted({(t, s) for t, s, _ in scores if s != "*"})
    for task, student in pairs:
        methods = sorted({m for t, s, m in scores if t == task and s == student}, key=method_rank)
        runs = {m: scores[(task, student, m)] for m in methods}
        if (task, "*", "teacher") in scores:
            runs = {"teacher": scores[(task, "*", "teacher")], **runs}
        for baseline in baselines:
            if baseline not in runs:
                continue
            base, base_seeds = runs[baseline]
            for method, (values, method_seeds) in runs.items():
                if method == baseline:
                    continue
                ids = sorted(set(values) & set(base))
                if not ids:
                    continue
                # One index draw per (task, student, baseline, n): every method sees the same resamples.
                rng = np.random.default_rng([seed, len(ids)])
                indices = rng.integers(0, len(ids), size=(resamples, len(ids)))
                res = paired_bootstrap(np.array([values[i] for i in ids]), np.array([base[i] for i in ids]),
                                       resamples, seed, confidence, indices=indices)
                rows.append({"task": task, "metric": primary_metric(task, info), "student": student, "method": method,
                             "baseline": baseline, "n_examples": len(ids), "method_seeds": method_seeds,
                             "baseline_seeds": base_seeds, **res, "significant": bool(res["p_value"] < alpha),
                             "resamples": resamples, "confidence": confidence})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("method_mean", "baseline_mean", "mean_diff", "ci_low", "ci_high"):
        frame[col] = frame[col].astype(float).round(4)
    frame["p_value"] = frame["p_value"].astype(float).map(lambda p: p if math.isnan(p) else round(p, 6))
    return frame
