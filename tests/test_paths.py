"""ketchup.paths: one function per output, used by every rule file and by the run-path parsers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ketchup import paths
from ketchup.analysis.common import MODEL_PATTERN, PREDICTION_PATTERN
from ketchup.tables import parse_run

ROOT = Path(__file__).resolve().parents[1]


def test_run_paths_hand_written():
    want = "results/models/students/en_nl/tiny/ketchup-k4/seed3"
    assert paths.student_model("en_nl", "tiny", "ketchup-k4", 3) == want
    assert paths.predictions("xsum", "small", "kl", 0) == "results/predictions/xsum/small/kl/seed0.jsonl"
    assert paths.metrics("gsm8k", "base", "llmr", 1) == "results/metrics/gsm8k/base/llmr/seed1.json"
    assert paths.student_checkpoints("en_nl", "tiny", "kl", 0) == "results/checkpoints/students/en_nl/tiny/kl/seed0"
    assert paths.data("en_nl", "dev") == "results/data/en_nl/dev.jsonl"
    assert paths.teacher_outputs("en_nl", "train") == "results/teacher_outputs/en_nl/train.jsonl"
    assert paths.pretrained_model("xsum", "small") == "results/models/pretrained/xsum/small"
    assert paths.pretrained_checkpoints("xsum", "small") == "results/checkpoints/pretrained/xsum/small"
    # Snakemake patterns: placeholders pass through untouched
    assert (paths.student_model("{task}", "{student}", "{method}", "{seed}")
            == "results/models/students/{task}/{student}/{method}/seed{seed}")


@pytest.mark.parametrize("make, pattern", [(paths.student_model, MODEL_PATTERN),
                                           (paths.predictions, PREDICTION_PATTERN)])
def test_parsers_read_back_what_paths_write(make, pattern):
    want = {"task": "en_nl", "student": "tiny", "method": "ketchup-k8", "seed": 12}
    assert paths.parse(make(**want), pattern) == want
    with pytest.raises(ValueError):
        paths.parse(make("en_nl", "tiny", "kl", "x"), pattern)
    assert parse_run(paths.metrics(**want)) == want
    assert parse_run(paths.teacher_metrics("xsum"))["method"] == "teacher"


def test_rule_files_name_outputs_only_through_paths():
    """A results/... literal in a rule file (logs and benchmarks aside, each named once) retypes a path."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    found = []
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"results/(?!logs/|benchmarks/)", code):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
