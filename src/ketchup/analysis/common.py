"""Small shared helpers of the analyses: run paths, primary metrics, display names, atomic writes."""

from __future__ import annotations

from pathlib import Path

from ketchup import paths
from ketchup.config import TASK_KINDS
from ketchup.registry import METHODS as REGISTRY, NAMES as METHODS

# ketchup.metrics.PRIMARY, copied so that table jobs do not import the metric libraries (nltk: ~1.5 s);
# tests/test_analysis.py checks that the two agree.
PRIMARY = {"summarization": "rouge1", "translation": "bleu", "arithmetic": "accuracy"}

MODEL_PATTERN = paths.run_regex("students")  # ketchup.paths.student_model
PREDICTION_PATTERN = paths.run_regex("predictions", ".jsonl")  # ketchup.paths.predictions

METHOD_ORDER = ["teacher", *METHODS]
METHOD_NAMES = {"teacher": "Teacher", **{name: m.label for name, m in REGISTRY.items()}}
TASK_NAMES = {"xsum": "XSum", "en_nl": "EN-NL", "gsm8k": "GSM8K"}
METRIC_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "bleu": "BLEU", "chrf": "chrF",
                "accuracy": "accuracy"}
# Axis labels with units (every metric is on the 0-100 scale, see ketchup.metrics).
METRIC_AXIS = {"rouge1": "ROUGE-1 F1 (x100)", "rouge2": "ROUGE-2 F1 (x100)", "rougeL": "ROUGE-L F1 (x100)",
               "bleu": "BLEU (0-100)", "chrf": "chrF (0-100)", "accuracy": "accuracy (%)"}


def primary_metric(task: str) -> str:
    return PRIMARY[TASK_KINDS[task]]


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: the paper's row order, unknown methods (e.g. ketchup-k4) after, by name."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def write_csv(frame, out: str | Path) -> None:
    from ketchup.io import atomic_path

    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
