"""The jobs of a Snakemake DAG, as its own dry run lists them: one per job, with its rule,
wildcards, outputs and benchmark file (what the cost plan predicts, row by row)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from ketchup.costmodel import Job

_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (?P<rule>[\w-]+):\s*$")
_FIELD = re.compile(r"^    (?P<key>output|benchmark|wildcards): (?P<value>.*)$")
_STAT = re.compile(r"^(?P<rule>[\w-]+)\s+(?P<count>\d+)\s*$")


def parse_dry_run(text: str) -> list[Job]:
    """Every job block of a dry run's output (``rule NAME:`` and its indented fields). Jobs without
    an output (a target rule such as ``all``: it runs nothing) are left out. The count per rule is
    checked against the dry run's own job table, so a format this parser misreads fails loudly."""
    jobs, stats, current, in_stats = [], Counter(), None, False
    for line in text.splitlines():
        if line.startswith("Job stats:"):
            in_stats, stats = True, Counter()  # printed once before and possibly once after the jobs
            continue
        if in_stats:
            if match := _STAT.match(line):
                if match["rule"] != "total":
                    stats[match["rule"]] = int(match["count"])
                continue
            if line.strip() and not line.startswith(("job ", "---")):
                in_stats = False
        if match := _RULE.match(line):
            current = {"rule": match["rule"]}
            jobs.append(current)
        elif current is not None and (match := _FIELD.match(line)):
            current[match["key"]] = match["value"].strip()
        elif current is not None and line and not line.startswith(" "):
            current = None
    seen = Counter(j["rule"] for j in jobs)
    if stats and seen != stats:
        raise ValueError(f"dry run: the job blocks read ({dict(seen)}) differ from its job table ({dict(stats)})")
    out = []
    for j in jobs:
        if "output" not in j:
            continue
        wildcards = dict(pair.split("=", 1) for pair in j.get("wildcards", "").split(", ") if "=" in pair)
        out.append(Job(j["rule"], wildcards, j["output"], j.get("benchmark", "")))
    return out


def dry_run(snakefile: str | Path, workdir: str | Path, configfiles: list[str], target: str) -> str:
    """Snakemake's dry run of ``target`` with every job forced (what a fresh run would do), in
    ``workdir``, without taking its lock (a running workflow may hold it)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir), "--cores", "1",
           "--dry-run", "--forceall", "--nolock", target]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake dry run of {target} failed:\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
    return proc.stdout + proc.stderr
