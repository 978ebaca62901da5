"""The resources a planned job asks for: its row of the cost plan (results/plan/cost.csv, written
by `snakemake results/plan/cost.csv`), else the profile's default.

The profiles (profiles/slurm, profiles/workstation) call it from their resource expressions, e.g.

    runtime: "__import__('ketchup.planned').planned.resource('runtime', 'student', wildcards, 1440)"

Light on purpose (the standard library and ketchup.paths only): Snakemake evaluates it for every
job while it builds the DAG. The plan's runtime_min and mem_mb already hold the prediction times plan.margin.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

from ketchup import paths

PLAN = paths.plan("cost.csv")  # relative to the working directory
COLUMNS = {"runtime": "runtime_min", "mem_mb": "mem_mb"}
_cache: dict[str, tuple[float, dict[tuple[str, str], dict[str, str]]]] = {}


def key(rule: str, wildcards: Any) -> tuple[str, str]:
    """A job's identity in the plan: its rule and its wildcards, name=value sorted by name."""
    items = dict(wildcards.items()) if hasattr(wildcards, "items") else dict(wildcards or {})
    return rule, ",".join(f"{k}={v}" for k, v in sorted(items.items()))


def _rows(path: str) -> dict[tuple[str, str], dict[str, str]]:
    mtime = os.path.getmtime(path)
    if path not in _cache or _cache[path][0] != mtime:
        with open(path, newline="") as handle:
            _cache[path] = (mtime, {(r["rule"], r["wildcards"]): r for r in csv.DictReader(handle)})
    return _cache[path][1]


def resource(name: str, rule: str, wildcards: Any, default: Any = None, path: str = PLAN) -> Any:
    """``runtime`` (minutes) or ``mem_mb`` of the job from the plan when it exists and lists the job,
    else ``default``."""
    if not os.path.isfile(path):
        return default
    row = _rows(path).get(key(rule, wildcards))
    return int(row[COLUMNS[name]]) if row else default


# A teacher job without a plan. Fine-tuning (teacher.finetune: true) gets the profile's long default.
# A prompted teacher (finetune: false) only loads the model and saves it again (ketchup.stages.teacher):
# a short job whose memory follows its weights, loaded in float32 (up to twice a bf16 checkpoint's
# bytes) while the saved copy is written.
FINETUNE_TEACHER = {"runtime": 2880, "mem_mb": 128000}
PROMPTED_TEACHER_UNKNOWN = {"runtime": 120, "mem_mb": 48000}  # weights not found here: a 4B model in float32, twice


def model_bytes(name_or_path: str, gguf_file: str | None = None) -> int | None:
    """Bytes of a model's weight files (*.safetensors, *.bin, *.gguf): a local folder's (or the GGUF
    file's), or a hub name's snapshot in the local Hugging Face cache; None where neither is here."""
    path = os.path.expanduser(name_or_path)
    if gguf_file:
        path = os.path.join(path, gguf_file) if os.path.isdir(path) else path
    if os.path.isfile(path):
        return os.path.getsize(path)
    folders = [path] if os.path.isdir(path) else []
    if not folders and "/" in name_or_path:
        hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
        snapshots = os.path.join(hub, "models--" + name_or_path.replace("/", "--"), "snapshots")
        if os.path.isdir(snapshots):
            folders = [os.path.join(snapshots, s) for s in sorted(os.listdir(snapshots))][-1:]
    for folder in folders:
        sizes = [os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                 if f.endswith((".safetensors", ".bin", ".gguf"))]
        if sizes:
            return sum(sizes)
    return None


def teacher_default(name: str, model: dict[str, Any], finetune: bool) -> int:
    """``runtime`` (minutes) or ``mem_mb`` of a teacher job the plan does not list: a fine-tuning
    job's long default, or a prompted teacher's load-and-save, sized by its weight files."""
    if finetune:
        return FINETUNE_TEACHER[name]
    size = model_bytes(model.get("name_or_path", ""), model.get("gguf_file")) if "name_or_path" in model else None
    if size is None:
        return PROMPTED_TEACHER_UNKNOWN[name]
    gb = size / 1e9
    # float32 weights (2x a bf16 file) and the copy being saved (2x more), over the interpreter's 4 GB;
    # reading and writing at 50 MB/s or more on a shared file system, over half an hour for the start.
    return {"runtime": 30 + math.ceil(2 * gb * 1e3 / 50 / 60), "mem_mb": 4000 + math.ceil(4 * gb * 1e3)}[name]
