"""Where each pipeline output lives: one function per kind of output, returning its path under
``results/`` as a string.

The rule files call these with wildcard placeholders (``student_model("{task}", "{student}",
"{method}", "{seed}")`` gives Snakemake's pattern) or with values (an input function, ``expand``); the
code that reads a run's identity back from a path uses :func:`run_regex`, built from the same layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

RESULTS = "results"


def run(task: str, student: str, method: str, seed: int | str) -> str:
    """A student run's part of every per-run path: ``{task}/{student}/{method}/seed{seed}``."""
    return f"{task}/{student}/{method}/seed{seed}"


def run_regex(prefix: str, suffix: str = "") -> re.Pattern:
    """Matches ``.../{prefix}/{run}{suffix}`` at the end of a path; groups task, student, method, seed."""
    run_ = r"(?P<task>[^/]+)/(?P<student>[^/]+)/(?P<method>[^/]+)/seed(?P<seed>\d+)"
    return re.compile(f"{re.escape(prefix)}/{run_}{re.escape(suffix)}$")


def parse(path: str | Path, pattern: re.Pattern) -> dict[str, Any]:
    """A run's {task, student, method, seed} read from ``path`` with a :func:`run_regex` pattern."""
    posix = Path(path).as_posix().rstrip("/")
    match = pattern.search(posix)
    if not match:
        raise ValueError(f"{path}: does not match {pattern.pattern}")
    return {**match.groupdict(), "seed": int(match["seed"])}


def data_dir(task: str) -> str:
    return f"{RESULTS}/data/{task}"


def data(task: str, split: str) -> str:
    """A split file in the hub schema."""
    return f"{data_dir(task)}/{split}.jsonl"


def tokenizer(task: str) -> str:
    return f"{RESULTS}/tokenizer/{task}"


def teacher_model(task: str) -> str:
    return f"{RESULTS}/models/teacher/{task}"


def teacher_checkpoints(task: str) -> str:
    return f"{RESULTS}/checkpoints/teacher/{task}"


def pretrained_model(task: str, student: str) -> str:
    """A student size pretrained on the task's text: where its methods that start from the student
    as built start (workflow/rules/pretrain.smk)."""
    return f"{RESULTS}/models/pretrained/{task}/{student}"


def pretrained_checkpoints(task: str, student: str) -> str:
    return f"{RESULTS}/checkpoints/pretrained/{task}/{student}"


def teacher_outputs_dir(task: str) -> str:
    return f"{RESULTS}/teacher_outputs/{task}"


def teacher_outputs(task: str, split: str) -> str:
    """The teacher's greedy outputs on a split (train: the pseudo-targets; test: its scores)."""
    return f"{teacher_outputs_dir(task)}/{split}.jsonl"


STUDENT_MODELS = f"{RESULTS}/models/students"


def student_model(task: str, student: str, method: str, seed: int | str) -> str:
    return f"{STUDENT_MODELS}/{run(task, student, method, seed)}"


def student_checkpoints(task: str, student: str, method: str, seed: int | str) -> str:
    return f"{RESULTS}/checkpoints/students/{run(task, student, method, seed)}"


def predictions(task: str, student: str, method: str, seed: int | str) -> str:
    """The dev-best student's greedy test predictions (JSONL)."""
    return f"{RESULTS}/predictions/{run(task, student, method, seed)}.jsonl"


def metrics(task: str, student: str, method: str, seed: int | str) -> str:
    return f"{RESULTS}/metrics/{run(task, student, method, seed)}.json"


def teacher_metrics(task: str) -> str:
    return f"{RESULTS}/metrics/{task}/teacher.json"


def grad_variance(task: str, student: str, seed: int | str) -> str:
    return f"{RESULTS}/analysis/grad_variance/{task}/{student}/seed{seed}.json"


JUDGE_CACHE = f"{RESULTS}/judge/cache"


def judge_run(task: str, student: str, method: str, seed: int | str) -> str:
    """A run's LLM-judge folder (scores.jsonl, pairwise.jsonl and their .summary.json)."""
    return f"{RESULTS}/judge/{run(task, student, method, seed)}"


def judge_file(task: str, student: str, method: str, seed: int | str, name: str) -> str:
    """A file of a run's LLM-judge folder, e.g. ``name="scores.jsonl"``."""
    return f"{judge_run(task, student, method, seed)}/{name}"


def table(name: str) -> str:
    """A table by file name, e.g. ``table("main.csv")``."""
    return f"{RESULTS}/tables/{name}"


def figure(name: str, ext: str) -> str:
    return f"{RESULTS}/figures/{name}.{ext}"


def plan(name: str) -> str:
    """The cost plan's files (workflow/rules/plan.smk): calibration.json, cost.csv, summary.md."""
    return f"{RESULTS}/plan/{name}"


def worker_log() -> str:
    """The log of a local run's warm worker (ketchup.worker)."""
    return f"{RESULTS}/logs/worker.log"
