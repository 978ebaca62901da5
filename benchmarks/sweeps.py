"""What the dev-split sweeps (rl_lr_sweep.py, ppo_sweep.py, divergence_sweep.py) share: a sibling working directory that
shares a finished run's upstream outputs, and Snakemake rerunning just the jobs whose settings changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ketchup import paths  # noqa: E402


def sibling(base: Path, suffix: str) -> Path:
    """``base``'s sibling ``{base.name}-{suffix}``, holding ``base``'s results as hard links (shared, not
    copied: a rerun job replaces its own files) and its Snakemake metadata; checkpoints are left out."""
    work = base.parent / f"{base.name}-{suffix}"
    if not (work / "results").exists():
        shutil.copytree(base / "results", work / "results", copy_function=os.link,
                        ignore=shutil.ignore_patterns("checkpoints", "*.tmp"))
        shutil.copytree(base / ".snakemake" / "metadata", work / ".snakemake" / "metadata")
    return work


def snakemake(work: Path, config_path: Path, targets: list[str], cores: int) -> None:
    """Build ``targets`` in ``work``; jobs whose params (settings) changed rerun."""
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", str(cores),
                    f"--configfile={config_path}", "--rerun-triggers=params", *targets],
                   cwd=work, check=True, stdout=subprocess.DEVNULL)


def model_targets(tasks, students, methods, seeds) -> list[str]:
    return [paths.student_model(t, s, m, seed) for t in tasks for s in students for m in methods for seed in seeds]


def dev_row(workdir: Path, task: str, student: str, method: str, seed: int) -> tuple[dict, list[dict]]:
    """Dev numbers and training seconds of one finished student run (never its test metrics), and its
    metrics log for callers that read more of it."""
    run = workdir / paths.student_model(task, student, method, seed)
    summary = json.loads((run / "train_summary.json").read_text())
    log = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return {"task": task, "student": student, "method": method, "seed": seed,
            "dev_start": next(r["dev_metric"] for r in log if "dev_metric" in r),
            "dev_best": summary["best_dev_metric"], "best_step": summary["best_step"],
            "train_s": sum(r.get("seconds", 0.0) for r in log)}, log
