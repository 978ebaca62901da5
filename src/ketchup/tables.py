"""Aggregate per-run metric files into the tidy main table (seeds -> mean and std)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from ketchup import paths, registry
from ketchup.io import atomic_path, read_json

COLUMNS = ["task", "metric", "student", "method", "k", "seeds", "mean", "std"]
# results/metrics/{task}/{student}/{method}/seed{seed}.json, or results/metrics/{task}/teacher.json
RUN_PATTERN = paths.run_regex("metrics", ".json")
TEACHER_PATTERN = re.compile(r"metrics/(?P<task>[^/]+)/teacher\.json$")


def method_k(method: str, task_k: int) -> int | None:
    """K of a run's returns (RL runs only; ketchup.registry decides it)."""
    if method == "teacher":
        return None
    name, k = registry.method_and_k(method, task_k)
    return k if registry.get(name).family == "rl" else None


def parse_run(path: str) -> dict[str, Any]:
    posix = Path(path).as_posix()
    if match := TEACHER_PATTERN.search(posix):
        return {"task": match["task"], "student": "teacher", "method": "teacher", "seed": 0}
    if match := RUN_PATTERN.search(posix):
        return {**match.groupdict(), "seed": int(match["seed"])}
    raise ValueError(f"{path}: not a metrics file path (expected .../metrics/{{task}}/{{student}}/{{method}}/seed{{N}}.json)")


def long_scores(paths: list[str], task_k: dict[str, int]) -> pd.DataFrame:
    """One row per (run, metric) with the run's identifiers parsed from its path."""
    rows = []
    for path in paths:
        run = parse_run(path)
        for metric, value in read_json(path)["metrics"].items():
            rows.append({**run, "k": method_k(run["method"], task_k.get(run["task"], 1)), "metric": metric,
                         "value": float(value)})
    return pd.DataFrame(rows)


def main_table(paths: list[str], task_k: dict[str, int]) -> pd.DataFrame:
    scores = long_scores(paths, task_k)
    keys = ["task", "metric", "student", "method", "k"]
    grouped = scores.groupby(keys, dropna=False, sort=True)["value"]
    table = grouped.agg(seeds="count", mean="mean", std="std").reset_index()  # std: sample (ddof=1)
    table["k"] = table["k"].astype("Int64")
    return table[COLUMNS].round({"mean": 4, "std": 4})


def write_csv(frame: pd.DataFrame, out: str) -> None:
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)


def teacher_vs_untrained(table: pd.DataFrame, primary: dict[str, str] | None = None) -> pd.DataFrame:
    """Per task and student size: the teacher's primary metric (``primary``: task -> metric; default,
    the preset of the task's name) beside the untrained student's.

    Distillation results mean nothing unless the teacher clearly beats a student that was never
    trained; this table makes that visible for every run of the pipeline.
    """
    from ketchup import tasks

    rows = []
    for task in sorted(table["task"].unique()):
        metric = (primary or {}).get(task) or tasks.named(task, None)["primary_metric"]
        sub = table[(table["task"] == task) & (table["metric"] == metric)]
        teacher = sub[sub["method"] == "teacher"]["mean"]
        for _, row in sub[sub["method"] == "prompted"].iterrows():
            t = float(teacher.iloc[0]) if len(teacher) else float("nan")
            rows.append({"task": task, "metric": metric, "student": row["student"], "teacher": t,
                         "untrained_student": row["mean"], "margin": round(t - row["mean"], 4)})
    return pd.DataFrame(rows, columns=["task", "metric", "student", "teacher", "untrained_student", "margin"])
