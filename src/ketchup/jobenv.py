"""Environment for the pipeline's jobs, set once when the Snakefile is parsed."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def prepare(src: Path, uses_conda: bool) -> None:
    """Let jobs run ``python -m ketchup`` from this checkout with the right interpreter.

    ``src`` goes first on PYTHONPATH; outside ``--sdm conda`` the directory of the interpreter
    running Snakemake goes first on PATH, so a job's ``python`` is the one that has the packages.
    """
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    if not uses_conda:
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
