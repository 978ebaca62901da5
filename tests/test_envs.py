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
from packaging.version import Version
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
    prefix = jobenv.shell_prefix(src, own_python=False)
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
    prefix = jobenv.shell_prefix(src, own_python=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/elsewhere"}
    run = _bash(prefix, 'echo "$PYTHONPATH"; echo "$PATH"', env, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{src}:/elsewhere", "/usr/bin:/bin"]
    run = _bash(prefix, 'echo "$PYTHONPATH"', {"PATH": "/usr/bin:/bin"}, tmp_path)  # no trailing ":" (the cwd)
    assert run.stdout.strip() == str(src)


# --- the lock files (envs/lock/*.txt, made by envs/lock.sh; docs/environment.md) ---

# file: (torch's local version label: +cpu, or PyPI's CUDA build or a PyTorch CUDA index's (+cu128...); extras)
LOCKS = {"cpu.txt": (r"cpu", ["test"]), "cuda.txt": (r"(cu\d+)?", [])}


def _lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, sha256 hashes)} of a lock file in pip's hash-checking format."""
    text = path.read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"{path.name}: option {line.split()[0]!r}: a lock names no index or location"
        requirement, *options = line.split()
        req = Requirement(requirement)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {requirement!r} is not an exact pin"
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")]
        assert hashes and len(hashes) == len(options), f"{path.name}: {requirement!r} needs sha256 hashes only"
        name = canonicalize_name(req.name)
        assert name not in entries, f"{path.name}: {req.name} is listed twice"
        entries[name] = (specs[0].version, hashes)
    return entries


def _lock_path(name: str) -> Path:
    return REPO_ROOT / "envs" / "lock" / name


def test_lock_files_are_the_ones_lock_sh_makes():
    assert sorted(p.name for p in (REPO_ROOT / "envs" / "lock").iterdir()) == sorted(LOCKS)
    script = (REPO_ROOT / "envs" / "lock.sh").read_text()
    for name in LOCKS:
        assert f"-o envs/lock/{name}" in script, f"envs/lock.sh does not write envs/lock/{name}"
        assert _lock_path(name).read_text().splitlines()[1].strip() == "#    bash envs/lock.sh", (
            f"envs/lock/{name} was not made by `bash envs/lock.sh` (its header names another command)")


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_pins_every_dependency_as_pyproject_does(name):
    """Every direct dependency (and the lock's extras) is in the lock at pyproject's version; torch
    with the local label of the lock's build (+cpu on the CPU lock, none or +cuNNN on the CUDA one)."""
    label, extras = LOCKS[name]
    entries = _lock_entries(_lock_path(name))
    lines = list(PYPROJECT["dependencies"]) + [line for extra in extras for line in PYPROJECT["optional-dependencies"][extra]]
    for line in lines:
        req = Requirement(line)
        name_ = canonicalize_name(req.name)
        assert name_ in entries, f"envs/lock/{name}: {req.name} (a dependency in pyproject.toml) is missing"
        version = Version(entries[name_][0])
        (spec,) = list(req.specifier)
        assert version.public == spec.version, (
            f"envs/lock/{name}: {req.name}=={version} but pyproject.toml pins {spec.version}")
        if name_ == "torch":
            assert re.fullmatch(label, version.local or ""), f"envs/lock/{name}: torch=={version} is not the build expected"
        else:
            assert version.local is None, f"envs/lock/{name}: {req.name}=={version} is not a PyPI release"
    other = {canonicalize_name(Requirement(x).name) for x in PYPROJECT["optional-dependencies"]["bench"]}
    assert not other & set(entries), f"envs/lock/{name}: holds the bench extra, which docs/environment.md leaves out"


@pytest.mark.parametrize("path", ENV_FILES, ids=[p.name for p in ENV_FILES])
def test_conda_environment_pip_pins_are_the_locks(path):
    _, pip = _env_entries(path)
    for name in LOCKS:
        entries = _lock_entries(_lock_path(name))
        for line in pip:
            req = Requirement(line)
            (spec,) = list(req.specifier)
            version = Version(entries[canonicalize_name(req.name)][0])
            assert version.public == spec.version, f"{path.name}: {line!r} but envs/lock/{name} has {version}"


def test_lock_reader_rejects_what_it_should(tmp_path):
    def entries(text):
        (tmp_path / "l.txt").write_text(text)
        return _lock_entries(tmp_path / "l.txt")

    assert entries("a==1.0 \\\n    --hash=sha256:ab \\\n    --hash=sha256:cd\n    # via b\n") == {"a": ("1.0", ["ab", "cd"])}
    for bad, message in [("a==1.0\n", "hashes"), ("a>=1.0 --hash=sha256:ab\n", "exact pin"),
                         ("--find-links /somewhere\na==1 --hash=sha256:ab\n", "option"),
                         ("a==1 --hash=sha256:ab\nA==1 --hash=sha256:cd\n", "twice")]:
        with pytest.raises(AssertionError, match=message):
            entries(bad)


# --- the jobs' container (--sdm apptainer; envs/Dockerfile, envs/ketchup.def) ---

FAKE_APPTAINER = r"""#!/usr/bin/env bash
# A stand-in for apptainer: records each `exec` (image, command) and runs the command on the host with
# only FAKE_IMAGE_PATH on PATH, as an image with its own python would.
set -euo pipefail
if [ "$1" = "--version" ]; then echo "apptainer version 1.4.0"; exit 0; fi
while [ "$1" != exec ]; do shift; done; shift
while [[ "$1" == --* ]]; do shift 2; done  # --home, --bind, --pwd: each with a value
image=$1 shell=$2 command=$4
record=$(mktemp "$FAKE_APPTAINER_LOG/exec.XXXXXX")
printf '%s\n%s' "$image" "$command" > "$record"
[ -f "$image" ] || { echo "fake apptainer: no image $image" >&2; exit 255; }
exec env PATH="$FAKE_IMAGE_PATH" "$shell" -c "$command"
"""


def test_sdm_apptainer_runs_every_job_in_the_image_with_its_own_python(tmp_path):
    """Under --sdm apptainer each job runs through `apptainer exec ketchup.sif`, and its command does not
    put the host's interpreter first on PATH (which would run the host's packages, not the image's)."""
    from snakemake_runner import snakemake, write_config

    bin_dir, log_dir, workdir = tmp_path / "bin", tmp_path / "execs", tmp_path / "run"
    for d in (bin_dir, log_dir, workdir):
        d.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    config = write_config(tmp_path / "config.yaml", REPO_ROOT / "workflow" / "configs" / "test.yaml")
    host_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_APPTAINER_LOG": str(log_dir),
           "FAKE_IMAGE_PATH": f"{host_bin}:/usr/bin:/bin"}  # the "image's" python: this one, found by PATH alone

    missing = snakemake(workdir, config, "results/data/en_nl/train.jsonl", "--sdm", "apptainer", env=env, check=False)
    assert missing.returncode != 0 and f"{workdir / jobenv.CONTAINER_IMAGE}, which does not exist" in missing.stderr
    assert not list(log_dir.iterdir()) and not (workdir / "results" / "data").exists()

    (workdir / jobenv.CONTAINER_IMAGE).write_bytes(b"")
    snakemake(workdir, config, "results/data/en_nl/train.jsonl", "--sdm", "apptainer", env=env)
    assert (workdir / "results" / "data" / "en_nl" / "train.jsonl").stat().st_size > 0
    execs = [p.read_text().split("\n", 1) for p in log_dir.iterdir()]
    assert len(execs) == 1, execs  # the data job, and nothing ran outside the container
    image, command = execs[0]
    assert image == jobenv.CONTAINER_IMAGE
    assert "python -m ketchup data --task en_nl" in command
    assert "export PATH" not in command and host_bin not in command


def _recipe_installs() -> dict[str, list[str]]:
    """{recipe: its pip commands, in order}: RUN lines of envs/Dockerfile, %post lines of envs/ketchup.def."""
    docker = [line.removeprefix("RUN ").strip() for line in (REPO_ROOT / "envs" / "Dockerfile").read_text().splitlines()
              if line.startswith("RUN ")]
    sections = re.split(r"^%(\w+)", (REPO_ROOT / "envs" / "ketchup.def").read_text(), flags=re.M)
    post = dict(zip(sections[1::2], sections[2::2]))["post"]
    apptainer = [line.strip() for line in post.splitlines()]
    return {name: [c for c in commands if "pip" in c] for name, commands in
            {"Dockerfile": docker, "ketchup.def": apptainer}.items()}


def test_container_recipes_install_the_cuda_lock_and_nothing_else():
    """Both recipes install envs/lock/cuda.txt hash-checked, then the project without resolving again,
    on the Python the locks are made for; no package is named outside the lock."""
    expected = ["pip install --require-hashes -r envs/lock/cuda.txt", "pip install --no-deps --no-build-isolation ."]
    for recipe, commands in _recipe_installs().items():
        assert commands == expected, f"envs/{recipe}: pip commands {commands}, expected {expected}"
    assert "--python-version 3.11 " in (REPO_ROOT / "envs" / "lock.sh").read_text()
    dockerfile = (REPO_ROOT / "envs" / "Dockerfile").read_text()
    definition = (REPO_ROOT / "envs" / "ketchup.def").read_text()
    assert re.search(r"^FROM docker\.io/library/python:3\.11-", dockerfile, re.M), "envs/Dockerfile: not Python 3.11"
    assert re.search(r"^From: docker\.io/library/python:3\.11-", definition, re.M), "envs/ketchup.def: not Python 3.11"
    for path in ENV_FILES:
        conda, _ = _env_entries(path)
        assert "python=3.11" in conda, f"{path.name}: Python is not the locks' 3.11"
    (backend,) = [Requirement(r) for r in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]]
    for name in LOCKS:  # README's and the recipes' `pip install --no-deps --no-build-isolation` build with it
        entries = _lock_entries(_lock_path(name))
        assert backend.name in entries, f"envs/lock/{name}: the build backend {backend.name} is not locked"
        assert backend.specifier.contains(entries[backend.name][0]), f"envs/lock/{name}: {backend.name} is not {backend}"


def test_workflow_catalog_claims_hold():
    """.snakemake-workflow-catalog.yml says --sdm conda and --sdm apptainer work (not both at once) and
    --report does: every rule that runs a command runs a shell command (a `run:` block would run in
    Snakemake's own process, outside any environment) with `conda:` naming an environment file; the
    rules name the image the recipes build; some outputs are marked for the report (tests/test_analysis.py
    builds one)."""
    catalog = yaml.safe_load((REPO_ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert catalog["software-stack-deployment"] == {"conda": True, "apptainer": True, "apptainer+conda": False,
                                                    "report": True}
    rule_files = [REPO_ROOT / "Snakefile", *sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk"))]
    rules = 0
    for path in rule_files:
        for block in re.split(r"^(?=(?:local)?rule \w+)", path.read_text(), flags=re.M):
            if not (m := re.match(r"(?:local)?rule (\w+)", block)):
                continue
            assert not re.search(r"^\s+(run|script|notebook|wrapper):", block, re.M), f"{path.name}: rule {m[1]}"
            if re.search(r"^\s+shell:", block, re.M):
                env = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", block, re.M)
                assert env, f"{path.name}: rule {m[1]} has no conda: directive"
                assert (path.parent / env[1]).resolve() in ENV_FILES, f"{path.name}: rule {m[1]}: {env[1]}"
                rules += 1
    assert rules > 10
    assert "container: jobenv.CONTAINER_IMAGE" in (REPO_ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert all("ketchup.sif" in (REPO_ROOT / "envs" / r).read_text() for r in ("Dockerfile", "ketchup.def"))
    assert jobenv.CONTAINER_IMAGE == "ketchup.sif"
    assert any("report(" in p.read_text() for p in rule_files)
