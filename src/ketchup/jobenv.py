"""The environment of the pipeline's jobs, as a shell prefix: Snakemake's own process is left as it is."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

# The container image every job runs in under `--sdm apptainer`, relative to the working directory:
# built from envs/Dockerfile or envs/ketchup.def (docs/cluster.md#a-container-for-the-jobs).
CONTAINER_IMAGE = "ketchup.sif"


def shell_prefix(src: Path, own_python: bool) -> str:
    """Shell commands run before every job's command, so it runs ``python -m ketchup`` from this
    checkout with the right interpreter.

    ``src`` goes first on PYTHONPATH. ``own_python``: the job runs in a conda environment or a
    container that brings its own ``python`` with the packages; otherwise the directory of the
    interpreter running Snakemake goes first on PATH, so a job's ``python`` is the one that has the
    packages (inside a container that directory would be the host's virtual environment). Being part
    of the command, the setting holds inside an activated conda environment too (Snakemake drops
    PYTHONPATH from a conda job's environment). Starts with bash's strict mode, which a shell prefix
    replaces.
    """
    lines = ["set -euo pipefail", f'export PYTHONPATH={shlex.quote(str(src))}"${{PYTHONPATH:+:$PYTHONPATH}}"']
    if not own_python:
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    return "; ".join(lines) + "; "


def check_container_image(workdir: Path) -> None:
    """Raises FileNotFoundError, saying how to build it, when the jobs' container image is missing."""
    image = workdir / CONTAINER_IMAGE
    if not image.is_file():
        raise FileNotFoundError(
            f"--sdm apptainer runs every job in {image}, which does not exist: build it from envs/Dockerfile "
            "or envs/ketchup.def (docs/cluster.md, 'A container for the jobs')")
