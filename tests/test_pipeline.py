"""End to end: the real Snakefile on the small test configs, offline, in temporary directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import sacrebleu

from snakemake_runner import REPO_ROOT, SNAKEMAKE, snakemake, write_config

TEST_CONFIG = REPO_ROOT / "workflow" / "configs" / "test.yaml"
DECODER_CONFIG = REPO_ROOT / "workflow" / "configs" / "test_decoder.yaml"
ALL_METHODS = {"prompted", "sft", "seqkd", "kl", "js", "tvd", "llmr", "llmr-mean", "llmr-minvar", "ketchup",
               "llmr-ppo", "ketchup-ppo", "gkd", "srkl"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seq2seq")
    snakemake(workdir, TEST_CONFIG, "results/tables/main.csv")
    return workdir


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("decoder")
    snakemake(workdir, DECODER_CONFIG, "results/tables/main.csv")
    return workdir


def test_lint_is_clean():
    proc = subprocess.run([str(SNAKEMAKE), "--lint"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_default_config_dry_run(tmp_path):
    proc = snakemake(tmp_path, None, "-n", "results/tables/main.csv")
    out = proc.stdout + proc.stderr
    # 3 tasks x 2 student sizes x 12 methods x 1 seed; each size pretrained per task
    for rule, count in {"student": 72, "score_student": 72, "teacher": 3, "pretrain": 6, "main_table": 1}.items():
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), (rule, out[-3000:])
    assert not (tmp_path / "results").exists()


def test_seq2seq_main_table(seq2seq_run):
    table = pd.read_csv(seq2seq_run / "results" / "tables" / "main.csv")
    assert list(table.columns) == ["task", "metric", "student", "method", "k", "seeds", "mean", "std"]
    expected_metrics = {"en_nl": {"bleu", "chrf"}}
    for task, metrics in expected_metrics.items():
        sub = table[table.task == task]
        assert set(sub.metric) == metrics
        for metric in metrics:
            rows = sub[sub.metric == metric]
            assert set(rows.method) == ALL_METHODS | {"teacher"}
            assert len(rows) == len(ALL_METHODS) + 1
    assert table["mean"].between(0, 100).all()
    assert (table["seeds"] == 1).all() and table["std"].isna().all()
    k = table.set_index(["task", "method"])["k"].groupby(level=[0, 1]).first()
    assert k[("en_nl", "ketchup")] == 2 and k[("en_nl", "ketchup-ppo")] == 2 and k[("en_nl", "llmr-ppo")] == 1
    assert k[("en_nl", "llmr")] == 1 and k[("en_nl", "llmr-mean")] == 1 and k[("en_nl", "llmr-minvar")] == 1
    assert pd.isna(k[("en_nl", "kl")])


def test_table_values_match_the_metric_library(seq2seq_run):
    """The teacher's BLEU in main.csv is sacrebleu's corpus BLEU of its test outputs."""
    rows = [json.loads(line) for line in (seq2seq_run / "results/teacher_outputs/en_nl/test.jsonl").open()]
    expected = sacrebleu.corpus_bleu([r["prediction"] for r in rows], [[r["reference"] for r in rows]]).score
    table = pd.read_csv(seq2seq_run / "results" / "tables" / "main.csv")
    got = table[(table.task == "en_nl") & (table.metric == "bleu") & (table.method == "teacher")]["mean"].item()
    assert got == pytest.approx(expected, abs=1e-3)
    assert len(rows) == 40


def test_teacher_beats_untrained_student(seq2seq_run):
    check = pd.read_csv(seq2seq_run / "results" / "tables" / "teacher_vs_untrained.csv")
    assert set(check.task) == {"en_nl"}
    assert (check["teacher"] > check["untrained_student"]).all(), check


def test_logs_benchmarks_and_training_metrics(seq2seq_run):
    results = seq2seq_run / "results"
    for rule in ("data", "tokenizer", "pretrain", "teacher", "teacher_outputs", "student", "score", "tables"):
        assert list((results / "logs" / rule).rglob("*.log")), rule
        assert list((results / "benchmarks" / rule).rglob("*.tsv")), rule
    teacher_log = (results / "logs" / "teacher" / "en_nl.log").read_text()
    assert "train teacher/en_nl" in teacher_log  # the progress bar
    rl_rows = [json.loads(line) for line in
               (results / "models/students/en_nl/tiny/ketchup/seed0/metrics.jsonl").open()]
    steps = [r for r in rl_rows if "loss" in r]
    assert len(steps) == 20
    for key in ("mean_return", "mean_reward", "advantage_std", "grad_norm", "rollout_length", "tokens"):
        assert all(key in r for r in steps), key
    assert [r["step"] for r in rl_rows if "dev_metric" in r] == [0, 10, 20]
    summary = json.loads((results / "models/students/en_nl/tiny/ketchup/seed0/train_summary.json").read_text())
    assert summary["k"] == 2 and summary["method"] == "ketchup" and summary["best_step"] in (10, 20)


def test_methods_start_from_the_pretrained_student(seq2seq_run):
    """prompted is the pretrained model itself, which saved the tokenizer the teacher saved; prompted
    and kl started from it (the DAG's --init), ketchup from kl."""
    results = seq2seq_run / "results"
    pretrained, teacher = results / "models/pretrained/en_nl/tiny", results / "models/teacher/en_nl"
    assert json.loads((pretrained / "train_summary.json").read_text())["steps"] == 8
    prompted = results / "models/students/en_nl/tiny/prompted/seed0"
    assert (prompted / "model.safetensors").read_bytes() == (pretrained / "model.safetensors").read_bytes()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (pretrained / name).read_bytes() == (teacher / name).read_bytes(), name
    starts = {"prompted": "results/models/pretrained/en_nl/tiny", "kl": "results/models/pretrained/en_nl/tiny",
              "ketchup": "results/models/students/en_nl/tiny/kl/seed0"}
    for method, init in starts.items():
        log = (results / f"logs/student/en_nl/tiny/{method}/seed0.log").read_text()
        assert f"student en_nl/tiny/{method}: starting from {init}\n" in log, (method, log[:2000])


def test_second_run_does_nothing(seq2seq_run):
    proc = snakemake(seq2seq_run, TEST_CONFIG, "-n", "results/tables/main.csv")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_decoder_only_pipeline(decoder_run):
    table = pd.read_csv(decoder_run / "results" / "tables" / "main.csv")
    assert set(table.method) == ALL_METHODS | {"teacher"}
    bleu = table[table.metric == "bleu"].set_index("method")["mean"]
    assert bleu["teacher"] > bleu["prompted"]
    config = json.loads((decoder_run / "results/models/teacher/en_nl/config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert not (decoder_run / "results/models/pretrained").exists()  # no pretrain block: built from its spec


GSM8K_TASK = {"source": "synthetic", "n_train": 300, "n_dev": 30, "n_test": 30, "k": 4,
              "max_source_length": 48, "max_target_length": 40}


def test_same_config_twice_gives_identical_table(tmp_path):
    """Also the GSM8K path end to end, two seeds aggregated into mean and std, and the warm worker:
    run a forks every job from it, run b gives each job a fresh process, with the same bytes."""
    config = write_config(tmp_path / "cfg.yaml", TEST_CONFIG, seeds=[0, 1], methods=["sft"],
                          tasks={"gsm8k": GSM8K_TASK})
    tables = []
    for name, switch in (("a", "1"), ("b", "0")):
        snakemake(tmp_path / name, config, "results/tables/main.csv", env={"KETCHUP_WARM_WORKER": switch})
        tables.append((tmp_path / name / "results" / "tables" / "main.csv").read_bytes())
    assert tables[0] == tables[1]
    logs = {name: (tmp_path / name / "results/logs/student/gsm8k/tiny/sft/seed0.log").read_text() for name in "ab"}
    assert "ketchup.worker: job used" in logs["a"] and "ketchup.worker" not in logs["b"]
    for path in ("results/models/teacher/gsm8k/model.safetensors", "results/predictions/gsm8k/tiny/sft/seed1.jsonl",
                 "results/models/students/gsm8k/tiny/sft/seed1/model.safetensors"):
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path
    table = pd.read_csv(tmp_path / "a" / "results" / "tables" / "main.csv")
    assert set(table.metric) == {"accuracy"}
    students = table[table.method != "teacher"]
    assert (students["seeds"] == 2).all() and students["std"].notna().all()
    per_seed = [json.loads((tmp_path / "a" / f"results/metrics/gsm8k/tiny/sft/seed{s}.json").read_text())
                for s in (0, 1)]
    values = [m["metrics"]["accuracy"] for m in per_seed]
    assert students["mean"].item() == pytest.approx(sum(values) / 2, abs=1e-4)


def test_killed_teacher_training_resumes_to_the_same_result(tmp_path):
    """SIGKILL snakemake mid-teacher; a rerun resumes from the checkpoint and matches a clean run."""
    config = TEST_CONFIG
    target = "results/models/teacher/en_nl"
    snakemake(tmp_path / "clean", config, target)

    killed = tmp_path / "killed"
    cmd = [str(SNAKEMAKE), "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(killed), "--cores", "2",
           target, "--configfile", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = killed / "results/checkpoints/teacher/en_nl/last/trainer_state.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["step"] >= 40):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint appeared before the deadline"
    stopped_at = json.loads(state.read_text())["step"]
    assert 0 < stopped_at < 120
    assert not (killed / target / "train_summary.json").exists()

    snakemake(killed, config, "--unlock")  # the SIGKILL left snakemake's lock behind
    snakemake(killed, config, target, "--rerun-incomplete")
    log = (killed / "results/logs/teacher/en_nl.log").read_text()
    assert f"resuming from step {stopped_at}" in log

    clean_rows = (tmp_path / "clean" / target / "metrics.jsonl").read_text().splitlines()
    resumed_rows = (killed / target / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed_rows) == strip(clean_rows)
    assert json.loads((killed / target / "train_summary.json").read_text()) == \
        json.loads((tmp_path / "clean" / target / "train_summary.json").read_text())
    assert (killed / target / "model.safetensors").read_bytes() == \
        (tmp_path / "clean" / target / "model.safetensors").read_bytes()
