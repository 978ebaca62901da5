"""The resources a planned job asks for: its row of the cost plan (results/plan/cost.csv, written
by `snakemake results/plan/cost.csv`), else the profile's default.

The profiles (profiles/slurm, profiles/workstation) call it from their resource expressions, e.g.

    runtime: "__import__('ketchup.planned').planned.resource('runtime', 'student', wildcards, 1440)"

Light on purpose (the standard library and ketchup.paths only): Snakemake evaluates it for every
job while it builds the DAG. The plan's runtime_min and mem_mb already hold the prediction times plan.margin.
"""

from __future__ import annotations

import csv
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
