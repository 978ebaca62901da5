# Configuration checks (before any job starts) and the specs each stage receives as JSON.

import json
import sys
from pathlib import Path

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from ketchup import config as kconfig  # noqa: E402  (light import: no torch at DAG-build time)

# The embedded default applies only when no --configfile is given: a given config replaces it
# whole instead of being merged into it (merging would leak the default's tasks into every run).
if not config:
    config.update(kconfig.load(Path(workflow.basedir) / "config.yaml"))
try:
    kconfig.validate(config)
except kconfig.ConfigError as exc:
    raise WorkflowError(str(exc))



def _python():
    """The conda env's python under --sdm conda, else the interpreter running Snakemake itself."""
    try:
        from snakemake.settings.types import DeploymentMethod

        if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
            return "python"
    except (ImportError, AttributeError):
        return "python"
    return sys.executable


# Every rule runs the package from this checkout.
KETCHUP = f"PYTHONPATH={SRC}${{PYTHONPATH:+:$PYTHONPATH}} {_python()} -m ketchup"
ARCH = config["architecture"]
TASKS = list(config["tasks"])
STUDENTS = list(config["students"])
METHODS = config["methods"]
SEEDS = config["seeds"]
DATA_SEED = config.get("data_seed", 0)
SPLITS = ["train", "dev", "test"]
TRAINED_METHODS = [m for m in METHODS if m != "prompted"]


wildcard_constraints:
    task="|".join(TASKS),
    student="|".join(STUDENTS),
    split="train|dev|test",
    seed=r"\d+",


def task_cfg(task):
    return config["tasks"][task]


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def lengths(task):
    spec = task_cfg(task)
    return spec.get("max_source_length", 512), spec.get("max_target_length", 128)


def teacher_spec(wildcards):
    src_len, tgt_len = lengths(wildcards.task)
    return as_json(
        {
            "task": wildcards.task,
            "arch": ARCH,
            "prompt": task_cfg(wildcards.task).get("prompt", ""),
            "model": config["teacher"]["model"],
            "train": kconfig.teacher_settings(config),
            "generation": kconfig.generation_settings(config),
            "seed": DATA_SEED,
            "max_source_length": src_len,
            "max_target_length": tgt_len,
        }
    )


def student_spec(wildcards):
    src_len, tgt_len = lengths(wildcards.task)
    return as_json(
        {
            "task": wildcards.task,
            "arch": ARCH,
            "prompt": task_cfg(wildcards.task).get("prompt", ""),
            "student": wildcards.student,
            "method": wildcards.method,
            "model": config["students"][wildcards.student],
            "train": kconfig.optim_settings(config, wildcards.method),
            "rl": kconfig.rl_settings(config),
            "k": task_cfg(wildcards.task).get("k", 1),
            "generation": kconfig.generation_settings(config),
            "seed": int(wildcards.seed),
            "max_source_length": src_len,
            "max_target_length": tgt_len,
        }
    )


def student_metric_files():
    return expand(
        "results/metrics/{task}/{student}/{method}/seed{seed}.json",
        task=TASKS,
        student=STUDENTS,
        method=METHODS,
        seed=SEEDS,
    )
