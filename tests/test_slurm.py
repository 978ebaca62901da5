"""The pipeline through profiles/slurm on a real (one-node, local) SLURM cluster.

.ci/slurm_setup.sh brings such a cluster up; without one (no `sinfo`, or no idle node) these tests
skip, saying why. The run uses the test config cut to one task and two methods, and the slurm profile
with only its site-specific values swapped for the local cluster (partition, no account, no GPU,
1 CPU and little memory per job, squeue for job states). Its main table must equal the one a plain
local run of the same config writes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO_ROOT / "Snakefile"
SLURM_PROFILE = REPO_ROOT / "profiles" / "slurm" / "config.yaml"
TEST_CONFIG = REPO_ROOT / "workflow" / "configs" / "test.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _run(cmd: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _local_partition() -> str:
    """The default partition of a running cluster with an idle node; skip the test otherwise."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (no sinfo/sbatch); run .ci/slurm_setup.sh to test the slurm profile")
    try:
        out = _run(["sinfo", "-h", "-o", "%P|%T"], timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo did not answer within 20 s: the SLURM controller is not up (.ci/slurm_setup.sh)")
    if out.returncode != 0:
        pytest.skip(f"the SLURM cluster is not up (sinfo: {out.stderr.strip()}); run .ci/slurm_setup.sh")
    rows = [line.split("|") for line in out.stdout.split() if "|" in line]
    idle = [(part, state) for part, state in rows if state.rstrip("*~#") in ("idle", "mixed")]
    if not idle:
        pytest.skip(f"no idle SLURM node (sinfo: {out.stdout.strip() or 'empty'}); run .ci/slurm_setup.sh")
    default = [p for p, _ in idle if p.endswith("*")]
    return (default or [idle[0][0]])[0].rstrip("*")


def _small_config(tmp: Path) -> Path:
    """workflow/configs/test.yaml cut to one task, two methods and fewer steps (well under a minute)."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    task = "en_nl" if "en_nl" in config["tasks"] else next(iter(config["tasks"]))
    config["tasks"] = {task: {**config["tasks"][task], "n_train": 64, "n_dev": 16, "n_test": 16,
                              "max_target_length": 16}}
    config["methods"] = ["prompted", "sft"]
    config["seeds"] = config["seeds"][:1]
    config["students"] = dict(list(config["students"].items())[:1])
    config["teacher"]["train"].update(max_steps=20, eval_every=10, checkpoint_every=10, dev_eval_examples=16)
    config["train"].update(max_steps=10, eval_every=5, checkpoint_every=5, dev_eval_examples=16)
    config.pop("method_overrides", None)
    config["generation"].update(max_new_tokens=16)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _local_profile(tmp: Path, partition: str) -> Path:
    """The slurm profile with its site values swapped for this one-node, GPU-less cluster.

    Everything else (executor, retries, rerun-incomplete, which rules get which resource keys) is
    the shipped profile's.
    """
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    assert profile["executor"] == "slurm"
    defaults = profile["default-resources"]
    defaults.pop("slurm_account", None)  # no accounting here: the plugin proceeds without -A
    defaults.update(slurm_partition=partition, mem_mb=500, runtime=30, cpus_per_task=1)
    for rule, res in profile.get("set-resources", {}).items():
        for key in ("gpu_model", "gres", "slurm_account", "tasks_per_gpu"):
            res.pop(key, None)
        if "slurm_partition" in res:  # a GPU rule: its jobs ask for a GPU per process, and this cluster has none
            res["gpu"] = 0
        if "slurm_partition" in res:
            res["slurm_partition"] = partition
        res.update(cpus_per_task=1, mem_mb=500, runtime=30)
    profile["set-threads"] = {rule: 1 for rule in profile.get("set-threads", {})}
    profile.update({
        "jobs": 2,
        "latency-wait": 5,
        "retries": 0,
        "slurm-status-command": "squeue",  # no slurmdbd: sacct cannot answer
        "slurm-init-seconds-before-status-checks": 1,
        "slurm-logdir": str(tmp / "slurm_logs"),
        "slurm-keep-successful-logs": True,
    })
    out = tmp / "profile"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return out


# The plugin backs off between job-state queries (+10 s after every query that finds nothing finished,
# up to 180 s), which spares a busy cluster's controller but would make this small run wait minutes
# on an idle one-node cluster. The test runs Snakemake with that wait capped at 2 s; nothing else of
# the plugin changes.
_FAST_POLL = """
import sys
import snakemake_executor_plugin_slurm as plugin
prop = plugin.Executor.next_seconds_between_status_checks
plugin.Executor.next_seconds_between_status_checks = property(
    prop.fget, lambda self, value: prop.fset(self, None if value is None else min(value, 2)))
from snakemake.cli import main
sys.argv[0] = "snakemake"
main()
"""


@pytest.mark.slow
def test_slurm_profile_run_matches_local_run(tmp_path):
    partition = _local_partition()
    config = _small_config(tmp_path)
    profile = _local_profile(tmp_path, partition)
    target = "results/tables/main.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    cluster.mkdir()

    # Both runs at once: the SLURM run mostly waits on job start-up and state queries.
    started = time.time()
    slurm_run = subprocess.Popen(
        [sys.executable, "-c", _FAST_POLL, "-s", str(SNAKEFILE), "--configfile", str(config),
         "--profile", str(profile), target],
        cwd=cluster, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        local_run = _run([*SNAKEMAKE, "-s", str(SNAKEFILE), "--configfile", str(config), "--cores", "1", target],
                         timeout=300, cwd=local, env=env)
        slurm_out, _ = slurm_run.communicate(timeout=300)
    finally:
        if slurm_run.poll() is None:  # a hung run: stop it (Snakemake cancels its SLURM jobs on SIGTERM)
            slurm_run.terminate()
            slurm_run.communicate(timeout=60)
    assert local_run.returncode == 0, f"local run failed:\n{local_run.stderr[-4000:]}"
    logs = sorted((tmp_path / "slurm_logs").rglob("*.log"))
    tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}" for p in logs[-3:])
    assert slurm_run.returncode == 0, f"slurm run failed:\n{slurm_out[-6000:]}\n--- SLURM job logs ---\n{tails}"
    print(f"local and slurm runs: {time.time() - started:.0f} s, {len(logs)} SLURM job logs")

    # Every job went through SLURM: one submission and one SLURM log per job.
    n_jobs = int(re.search(r"^total\s+(\d+)", slurm_out, re.M).group(1))
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", slurm_out)
    assert len(submitted) == n_jobs, slurm_out[-4000:]
    rules = {p.relative_to(tmp_path / "slurm_logs").parts[0] for p in logs}
    assert rules >= {"rule_teacher", "rule_student", "rule_score_student", "rule_main_table"}, rules
    assert len(logs) == n_jobs

    local_table = (local / target).read_text()
    slurm_table = (cluster / target).read_text()
    assert slurm_table == local_table, f"main.csv differs:\nlocal:\n{local_table}\nslurm:\n{slurm_table}"
