"""The environment of the pipeline's jobs, as a shell prefix: Snakemake's own process is left as it is."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def shell_prefix(src: Path, uses_conda: bool) -> str:
    """Shell commands run before every job's command, so it runs ``python -m ketchup`` from this
    checkout with the right interpreter.

    ``src`` goes first on PYTHONPATH; outside ``--sdm conda`` the directory of the interpreter
    running Snakemake goes first on PATH, so a job's ``python`` is the one that has the packages
    (under conda, the activated environment's). Being part of the command, the setting holds inside
    an activated conda environment too (Snakemake drops PYTHONPATH from a conda job's environment).
    Starts with bash's strict mode, which a shell prefix replaces.
    """
    lines = ["set -euo pipefail", f'export PYTHONPATH={shlex.quote(str(src))}"${{PYTHONPATH:+:$PYTHONPATH}}"']
    if not uses_conda:
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    return "; ".join(lines) + "; "
