"""Small shared helpers of the analyses: run paths, primary metrics, display names, atomic writes."""

from __future__ import annotations

from pathlib import Path

from typing import Any

from ketchup import paths, tasks
from ketchup.registry import METHODS as REGISTRY, NAMES as METHODS

MODEL_PATTERN = paths.run_regex("students")  # ketchup.paths.student_model
PREDICTION_PATTERN = paths.run_regex("predictions", ".jsonl")  # ketchup.paths.predictions

METHOD_ORDER = ["teacher", *METHODS]
METHOD_NAMES = {"teacher": "Teacher", **{name: m.label for name, m in REGISTRY.items()}}
METRIC_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "bleu": "BLEU", "chrf": "chrF",
                "accuracy": "accuracy"}
# Axis labels with units (every metric is on the 0-100 scale, see ketchup.metrics).
METRIC_AXIS = {"rouge1": "ROUGE-1 F1 (x100)", "rouge2": "ROUGE-2 F1 (x100)", "rougeL": "ROUGE-L F1 (x100)",
               "bleu": "BLEU (0-100)", "chrf": "chrF (0-100)", "accuracy": "accuracy (%)"}


def task_info(task: str, info: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A task's primary metric and title: from ``info`` (the Snakefile's ``--tasks``, each task's
    ``ketchup.tasks.info``), else from the preset of that name (an analysis run by hand on a paper task)."""
    if info and task in info:
        return info[task]
    if task not in tasks.PRESETS:
        raise ValueError(f"task {task!r} is not a preset ({', '.join(tasks.PRESETS)}): give the tasks' primary "
                         f"metrics and titles (--tasks)")
    return tasks.info(tasks.resolve(task))


def primary_metric(task: str, info: dict[str, dict[str, Any]] | None = None) -> str:
    return task_info(task, info)["primary"]


def task_title(task: str, info: dict[str, dict[str, Any]] | None = None) -> str:
    return task_info(task, info)["title"] if (info and task in info) or task in tasks.PRESETS else task


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: the paper's row order, unknown methods (e.g. ketchup-k4) after, by name."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def write_csv(frame, out: str | Path) -> None:
    from ketchup.io import atomic_path

    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
