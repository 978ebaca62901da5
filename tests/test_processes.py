"""Processes per job (config key ``processes``), started by Snakemake itself: the rules run the
job under ``accelerate launch`` (ketchup.launch), here on the CPU (gloo), two processes.

A 2-process student takes the updates of a 1-process student with twice the accumulation (weights to
1e-5), writes its outputs once, scores and predicts as the 1-process job does with each process
decoding only its share (the teacher's outputs too); a job one of whose processes dies fails without
hanging or leaving an output, and its rerun resumes to the bytes of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from snakemake_runner import REPO_ROOT, SNAKEMAKE, snakemake

TEST_CONFIG = REPO_ROOT / "workflow" / "configs" / "test.yaml"
STUDENT = "results/models/students/en_nl/tiny/kl/seed0"
PREDICTIONS = "results/predictions/en_nl/tiny/kl/seed0.jsonl"
CHECKPOINT = "results/checkpoints/students/en_nl/tiny/kl/seed0/last/trainer_state.json"
LOG = "results/logs/student/en_nl/tiny/kl/seed0.log"
STEPS = 24


def _config(tmp: Path, processes: int, grad_accum: int) -> Path:
    """test.yaml cut to one KL student without dropout (two processes then match one), an untrained
    teacher (its outputs are what the student learns from) and dev, test and generation batches small
    enough that each process decodes two of four."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["tasks"]["en_nl"].update(n_train=64, n_dev=16, n_test=16, max_target_length=12)
    config["teacher"]["finetune"] = False
    config["teacher"]["train"] = {"processes": processes}
    student = config["students"]["tiny"]
    student.pop("pretrain")
    student["config"]["dropout_rate"] = 0.0
    config["methods"] = ["kl"]
    config["train"] = {"lr": 3.0e-3, "max_steps": STEPS, "batch_size": 4, "grad_accum": grad_accum,
                       "eval_every": 8, "checkpoint_every": 2, "dev_eval_examples": 16, "processes": processes}
    config.pop("method_overrides", None)
    config["generation"].update(max_new_tokens=12, batch_size=4)
    path = tmp / f"config-{processes}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / STUDENT / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _shares(log: str, desc: str) -> list[tuple[int, int, int]]:
    """(process, decoded, of) for each process line of one decoding (ketchup.stages.generate_texts)."""
    return sorted((int(p), int(k), int(n)) for p, k, n in
                  re.findall(rf"{re.escape(desc)}: process (\d+) of 2 decoded (\d+) of (\d+) examples", log))


def _copy_results(source: Path, target: Path, parts: tuple[str, ...]) -> None:
    for part in parts:
        shutil.copytree(source / "results" / part, target / "results" / part, symlinks=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same student run by one process accumulating two micro-batches and by two processes."""
    root = tmp_path_factory.mktemp("processes")
    out = {}
    for name, processes, accum in (("one", 1, 2), ("two", 2, 1)):
        out[name] = root / name
        if name == "two":  # the data, tokenizer and (untrained) teacher of the first run: the same files
            _copy_results(out["one"], out[name], ("data", "tokenizer", "models/teacher"))
        snakemake(out[name], _config(root, processes, accum), PREDICTIONS, env={"OMP_NUM_THREADS": "1"})
    out["config-two"] = root / "config-2.yaml"
    return out


@pytest.mark.slow
def test_two_processes_take_the_updates_of_one_with_twice_the_accumulation(runs):
    one, two = runs["one"], runs["two"]
    a, b = load_file(two / STUDENT / "model.safetensors"), load_file(one / STUDENT / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-5), (name, float((a[name] - b[name]).abs().max()))
    rows_two, rows_one = _metrics(two), _metrics(one)
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
    # Written once, by the main process: each step and each dev evaluation one line.
    assert [r["step"] for r in rows_two if "loss" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in rows_two if "dev_metric" in r] == [0, 8, 16, 24]
    assert [r.get("dev_metric") for r in rows_two] == [r.get("dev_metric") for r in rows_one]
    assert (two / PREDICTIONS).read_text() == (one / PREDICTIONS).read_text()
    assert len((two / PREDICTIONS).read_text().splitlines()) == 16
    teacher_outputs = "results/teacher_outputs/en_nl/train.jsonl"
    assert (two / teacher_outputs).read_bytes() == (one / teacher_outputs).read_bytes()


@pytest.mark.slow
def test_each_process_decodes_its_share(runs):
    """Four batches of four: each of the two processes decodes two, at every dev evaluation, for the
    test predictions and for the teacher's outputs; the one-process job says nothing of shares."""
    log = (runs["two"] / LOG).read_text()
    dev = _shares(log, "dev")
    assert dev == sorted([(0, 8, 16), (1, 8, 16)] * 4)  # steps 0, 8, 16, 24
    assert _shares(log, "generate kl/seed0") == [(0, 8, 16), (1, 8, 16)]
    outputs_log = (runs["two"] / "results/logs/teacher_outputs/en_nl/train.log").read_text()
    assert _shares(outputs_log, "generate en_nl/train") == [(0, 32, 64), (1, 32, 64)]
    assert "decoded" not in (runs["one"] / LOG).read_text()


def _rank_one(tag: str) -> int | None:
    """The pid of process 1 of the student job started with KETCHUP_TEST_TAG=tag."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if env.get(b"KETCHUP_TEST_TAG") == tag.encode() and env.get(b"RANK") == b"1" and b"student" in cmdline:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_a_job_whose_process_dies_fails_and_its_rerun_resumes(runs, tmp_path):
    """Process 1 of the 2-process student is killed (SIGKILL) after a checkpoint: the job fails
    within a minute, leaves neither model nor predictions, and the rerun resumes from the checkpoint
    to the bytes of the uninterrupted run."""
    config, run, tag = runs["config-two"], tmp_path / "killed", uuid.uuid4().hex
    _copy_results(runs["two"], run, ("data", "tokenizer", "models/teacher", "teacher_outputs"))
    snakemake(run, config, "results/teacher_outputs/en_nl/train.jsonl")
    cmd = [str(SNAKEMAKE), "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(run), "--cores", "2",
           PREDICTIONS, "--configfile", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "KETCHUP_TEST_TAG": tag, "OMP_NUM_THREADS": "1"})
    state, victim, deadline = run / CHECKPOINT, None, time.time() + 240
    try:
        while time.time() < deadline and victim is None:
            if state.exists() and json.loads(state.read_text())["step"] >= 2:
                victim = _rank_one(tag)
            time.sleep(0.05)
        assert victim is not None, "no checkpoint or no process 1 before the deadline"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        assert proc.wait(timeout=120) != 0  # the job failed, and did not hang
        assert time.time() - killed_at < 90
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stopped_at = json.loads(state.read_text())["step"]
    assert 2 <= stopped_at < STEPS, "the job ended before process 1 was killed"
    assert not (run / STUDENT).exists() and not (run / PREDICTIONS).exists()
    assert not [p for p in (run / "results").rglob("*") if ".tmp" in p.name and "checkpoints" not in str(p)]

    snakemake(run, config, PREDICTIONS)
    log = (run / LOG).read_text()
    assert re.search(rf"resuming from step \d+ of {STEPS}", log)
    two = runs["two"]
    assert _metrics(run) == _metrics(two)
    assert (run / STUDENT / "model.safetensors").read_bytes() == (two / STUDENT / "model.safetensors").read_bytes()
    assert (run / PREDICTIONS).read_bytes() == (two / PREDICTIONS).read_bytes()


@pytest.mark.slow
def test_a_two_process_job_through_the_slurm_profile_is_one_task(runs, tmp_path):
    """profiles/slurm on CI's one-node cluster (.ci/slurm_setup.sh; skips without one): the 2-process
    student runs as one SLURM job of one task that starts both processes, and ends as the local run."""
    from test_slurm import _FAST_POLL, _local_partition, _local_profile

    partition = _local_partition()
    profile = _local_profile(tmp_path, partition)
    run = tmp_path / "slurm"
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-c", _FAST_POLL, "-s", str(REPO_ROOT / "Snakefile"), "--profile",
                           str(profile), PREDICTIONS, "--configfile", str(runs["config-two"])],
                          cwd=run, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    log = (run / LOG).read_text()
    assert _shares(log, "generate kl/seed0") == [(0, 8, 16), (1, 8, 16)]  # two processes, once
    assert (run / PREDICTIONS).read_text() == (runs["two"] / PREDICTIONS).read_text()
    a, b = load_file(run / STUDENT / "model.safetensors"), load_file(runs["two"] / STUDENT / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
