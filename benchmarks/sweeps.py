"""What the dev-split sweeps (rl_lr_sweep.py, ppo_sweep.py) share: a sibling working directory that
shares a finished run's upstream outputs, and Snakemake rerunning just the jobs whose settings changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
