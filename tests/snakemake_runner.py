"""Run the real Snakefile in a temporary working directory (never in the repo's results/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def write_config(path: Path, base: str | Path, **overrides) -> Path:
    """A copy of a config file with top-level keys replaced."""
    config = yaml.safe_load(Path(base).read_text())
    config.update(overrides)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, configfile: Path | None, *args: str, timeout: int = 600,
              env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    if configfile is not None:  # last: --configfile takes several values and would swallow targets
        cmd += ["--configfile", str(configfile)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in (workdir / "results" / "logs").rglob("*.log")
                         if "Error" in p.read_text())
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{logs}")
    return proc
