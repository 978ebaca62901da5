"""The conda environments (envs/*.yaml, used under `--sdm conda`) pin what pyproject.toml pins.

Every package an environment file names is pinned exactly, to the version pyproject.toml gives it;
the Python version it asks for satisfies pyproject's requires-python. The jobs' shell prefix (ketchup.jobenv) runs
this checkout's package with the interpreter running Snakemake.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from ketchup import jobenv

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((REPO_ROOT / "envs").glob("*.yaml"))
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _pyproject_pins() -> dict[str, str]:
    """{canonical name: exact version} of every dependency, optional ones included."""
    lines = list(PYPROJECT["dependencies"])
    for extra in PYPROJECT.get("optional-dependencies", {}).values():
        lines.extend(extra)
    pins = {}
    for line in lines:
        req = Requirement(line)
        (spec,) = list(req.specifier) or [None]
        assert spec is not None and spec.operator == "==", f"pyproject.toml: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _env_entries(path: Path) -> tuple[list[str], list[str]]:
    """(conda entries, pip entries) of an environment file."""
    env = yaml.safe_load(path.read_text())
    conda, pip = [], []
    for dep in env.get("dependencies", []):
        if isinstance(dep, dict):
            pip.extend(dep.get("pip", []))
        else:
            conda.append(str(dep))
    return conda, pip


def test_there_are_environment_files():
    assert ENV_FILES, "envs/*.yaml: no conda environment files"


def test_pyproject_pins_are_exact():
    assert _pyproject_pins()


@pytest.mark.parametrize("path", ENV_FILES, ids=[p.name for p in ENV_FILES])
def test_pip_pins_agree_with_pyproject(path):
    pins = _pyproject_pins()
    _, pip = _env_entries(path)
    assert pip, f"{path.name}: no pip packages"
    for line in pip:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r} is not an exact pin"
        assert name in pins, f"{path.name}: {req.name} is not a dependency in pyproject.toml"
        assert specs[0].version == pins[name], (
            f"{path.name}: {req.name}=={specs[0].version} but pyproject.toml pins {pins[name]}")


@pytest.mark.parametrize("path", ENV_FILES, ids=[p.name for p in ENV_FILES])
def test_conda_pins_agree_with_pyproject(path):
    pins = _pyproject_pins()
    conda, _ = _env_entries(path)
    for entry in conda:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:={1,2}\s*([^\s=]+))?", entry)
        assert m, f"{path.name}: cannot read conda entry {entry!r}"
        name, version = canonicalize_name(m.group(1)), m.group(2)
        if name == "python":
            assert version, f"{path.name}: python is not pinned"
            allowed = SpecifierSet(PYPROJECT["requires-python"])
            assert allowed.contains(f"{version}.0" if version.count(".") == 1 else version), (
                f"{path.name}: python={version} is outside pyproject's requires-python {allowed}")
        elif name in pins:
            assert version == pins[name], f"{path.name}: {entry!r} but pyproject.toml pins {pins[name]}"


# --- the jobs' environment (ketchup.jobenv; workflow/rules/common.smk puts it in every shell command) ---


def _bash(prefix: str, command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", prefix + command], env=env, cwd=cwd, capture_output=True, text=True)


def test_job_prefix_runs_this_checkouts_package_with_this_interpreter(tmp_path):
    src = REPO_ROOT / "src"
    before = dict(os.environ)
    prefix = jobenv.shell_prefix(src, uses_conda=False)
    assert dict(os.environ) == before  # nothing changes in the process that parses the Snakefile
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH, no virtual environment
    run = _bash(prefix, 'python -c "import sys, ketchup; print(sys.executable); print(ketchup.__file__)"', bare,
                tmp_path)
    assert run.returncode == 0, run.stderr
    exe, module = run.stdout.split()
    assert Path(exe).parent == Path(sys.executable).parent
    assert Path(module) == src / "ketchup" / "__init__.py"
    failed = _bash(prefix, "false; echo reached", bare, tmp_path)  # bash's strict mode is kept
    assert failed.returncode != 0 and "reached" not in failed.stdout


def test_job_prefix_under_conda_leaves_path_and_quotes_the_source_folder(tmp_path):
    src = tmp_path / "a checkout" / "src"
    prefix = jobenv.shell_prefix(src, uses_conda=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/elsewhere"}
    run = _bash(prefix, 'echo "$PYTHONPATH"; echo "$PATH"', env, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{src}:/elsewhere", "/usr/bin:/bin"]
    run = _bash(prefix, 'echo "$PYTHONPATH"', {"PATH": "/usr/bin:/bin"}, tmp_path)  # no trailing ":" (the cwd)
    assert run.stdout.strip() == str(src)
