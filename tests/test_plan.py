"""The cost plan (workflow/rules/plan.smk): its counts against hand-computed values, its job list
against Snakemake's own summary of the DAG, the profiles' resources from it, and the calibration's
early failure on a model whose config cannot be read."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from ketchup import costmodel, dagjobs, planned
from ketchup.costmodel import Job, SplitLengths

from snakemake_runner import REPO_ROOT, snakemake

TEST_CONFIG = REPO_ROOT / "workflow" / "configs" / "test.yaml"
PAPER_CONFIG = REPO_ROOT / "workflow" / "configs" / "paper.yaml"


# --- pure counts -------------------------------------------------------------------------------


def test_total_steps_and_dev_evaluations_match_the_training_loop():
    base = {"batch_size": 8, "grad_accum": 64, "epochs": 5, "max_steps": None}
    # ceil(204045 / 8) = 25506 micro-batches, // 64 = 398 updates an epoch, x 5 epochs
    assert costmodel.total_steps(base, 204045) == 1990
    assert costmodel.total_steps({**base, "max_steps": 2000}, 10) == 2000
    assert costmodel.total_steps({**base, "grad_accum": 1, "epochs": 1}, 3) == 1
    # step 0, then 12, 24, ... 1980, then the last (1990): 1 + 165 + 1
    assert costmodel.dev_evaluations(1990, 12) == 167
    assert costmodel.dev_evaluations(120, 40) == 4  # 0, 40, 80, 120 (the last is one of them)


def test_decode_batches_take_the_longest_target_of_each_batch_capped():
    split = SplitLengths(source=(5, 1, 3, 2, 4), target=(9, 2, 30, 4, 7))
    # order by source length: examples 1, 3, 2, 4, 0 -> targets 2, 4 | 30, 7 | 9
    assert costmodel.decode_batches(split, 5, 2, 20) == [4, 20, 9]
    # the first three examples of the split (generation takes dev[:n]), then sorted: 1, 2 | 0
    assert costmodel.decode_batches(split, 3, 2, 100) == [30, 9]


def test_expected_max_is_the_maximum_when_a_batch_holds_everything():
    assert costmodel.expected_max([3, 9, 4], 5, 100) == 9
    assert costmodel.expected_max([3, 9, 4], 5, 6) == 6
    assert costmodel.grouped_max([1, 2, 3, 10], 2, 100) == (2 + 10) / 2


def _cal(loss=(1.0, 0.0, 0.0), decode=(0.5, 0.25), opt=2.0):
    model = {"loss": {f"{u}@{b}": {"batch": b, "coef": list(loss)} for u in ("supervised", "divergence", "rl")
                      for b in (1, 2, 4)},
             "decode": {str(b): {"batch": b, "coef": list(decode)} for b in (1, 2, 4)},
             "optimizer_s": opt, "save_s": 0.0, "load_s": 0.0, "state_s": 0.0, "peak_mib": 10.0}
    return {"models": {"teacher": model, "student:s": model}, "startup_s": {"light": 0.1, "model": 3.0, "warm": 0.2},
            "accelerator_s": 0.0, "baseline_mib": {"light": 50.0, "model": 300.0}}


def test_a_supervised_job_by_hand():
    """sft, 4 examples, batch 2, accum 1, 3 updates, eval every 2, 2 dev examples decoded 2 at a time:
    3 x (1 s loss + 2 s optimiser) = 9; dev evaluations at 0, 2, 3 = 3, each one batch of length
    min(max target 6, max_new 5) = 5: 0.5 + 0.25 x 5 = 1.75 each; test: one batch of 4 at length
    5 (one batch of 4 rows: decode fit at batch 4) = 1.75; startup 3 (a cold model job)."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["students"] = {"s": config["students"]["tiny"]}
    config["tasks"]["en_nl"].update(max_target_length=5)
    config["train"] = {"batch_size": 2, "max_steps": 3, "eval_every": 2, "dev_eval_examples": 2,
                       "checkpoint_every": 10}
    config["generation"] = {"max_new_tokens": 5, "batch_size": 4}
    split = SplitLengths((3, 3, 3, 3), (2, 6, 3, 4))
    lengths = {"en_nl": costmodel.TaskLengths({"train": split, "dev": split, "test": split}, "hand")}
    job = Job("student", {"task": "en_nl", "student": "s", "method": "sft", "seed": "0"}, "x", "y")
    c = costmodel.job_counts(job, config, _cal(), lengths)
    assert c.steps == 3 and c.dev_evals == 3
    assert c.seconds["train_s"] == pytest.approx(9.0)
    # dev: the first two examples in source order (ties keep order): targets 2, 6 -> length 5
    assert c.seconds["dev_eval_s"] == pytest.approx(3 * 1.75 * 4 / 4)
    assert c.seconds["generation_s"] == pytest.approx(1.75)
    assert c.seconds["other_s"] == pytest.approx(3.0)
    assert c.total == pytest.approx(9 + 5.25 + 1.75 + 3)
    assert c.decoded_examples == 3 * 2 + 4 and c.decoded_tokens == 3 * 2 * 5 + 4 * 5
    row = costmodel.plan_row(job, c, margin=2.0)
    assert row["runtime_min"] == 1 and row["mem_mb"] == int(-(-(300 + 10 + 10) * 2 * 1.048576 // 1))


def test_a_two_process_job_by_hand():
    """The job above with train.processes 2 and epochs instead of max_steps: 8 examples in micro-batches
    of 2 are 4 a epoch, 2 per step (one per process): 2 steps of 1 s loss + 2 s optimiser (a process's
    time); dev, 4 examples in batches of 2 at lengths 5, 5: one batch per process, 1.75 s each, at
    steps 0, 1, 2; test, 8 examples in 2 batches of 4: one per process. It asks for two GPUs and
    memory for both processes; the one-process job takes twice as long to decode."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["students"] = {"s": config["students"]["tiny"]}
    config["tasks"]["en_nl"].update(max_target_length=5)
    config["train"] = {"batch_size": 2, "epochs": 1, "eval_every": 1, "dev_eval_examples": 4,
                       "checkpoint_every": 10, "processes": 2}
    config["generation"] = {"max_new_tokens": 5, "batch_size": 2}
    split = SplitLengths((3,) * 8, (6,) * 8)
    lengths = {"en_nl": costmodel.TaskLengths({"train": split, "dev": split, "test": split}, "hand")}
    job = Job("student", {"task": "en_nl", "student": "s", "method": "sft", "seed": "0"}, "x", "y")
    c = costmodel.job_counts(job, config, _cal(), lengths)
    assert c.steps == 2 and c.dev_evals == 3
    assert c.seconds["train_s"] == pytest.approx(2 * 3.0)
    assert c.seconds["dev_eval_s"] == pytest.approx(3 * 1.75)
    assert c.seconds["generation_s"] == pytest.approx(2 * 1.75)  # 4 batches of 2, two per process
    assert c.decoded_examples == 3 * 4 + 8  # the work is all done, only shared
    row = costmodel.plan_row(job, c, margin=2.0, processes=costmodel.job_processes(job, config))
    assert row["processes"] == 2
    assert row["mem_mb"] == int(-(-2 * (300 + 10 + 10) * 2 * 1.048576 // 1))
    config["train"]["processes"] = 1
    one = costmodel.job_counts(job, config, _cal(), lengths)
    assert one.steps == 4 and one.seconds["dev_eval_s"] == pytest.approx(5 * 2 * 1.75)
    assert costmodel.job_processes(job, config) == 1


def test_an_rl_job_decodes_its_rollouts_micro_batch_by_micro_batch():
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["students"] = {"s": config["students"]["tiny"]}
    config["tasks"]["en_nl"].update(max_target_length=8)
    config["method_overrides"] = {"ketchup": {"batch_size": 1, "grad_accum": 4, "max_steps": 2, "eval_every": 100,
                                              "dev_eval_examples": 1}}
    config["generation"] = {"max_new_tokens": 8, "batch_size": 4}
    split = SplitLengths((3,), (6,))
    lengths = {"en_nl": costmodel.TaskLengths({"train": split, "dev": split, "test": split}, "hand")}
    job = Job("student", {"task": "en_nl", "student": "s", "method": "ketchup", "seed": "0"}, "x", "y")
    c = costmodel.job_counts(job, config, _cal(), lengths, startup="warm")
    assert c.rollouts == 2 * 4
    assert c.seconds["rollout_s"] == pytest.approx(8 * (0.5 + 0.25 * 6))  # 8 decodes of one row, 6 tokens
    assert c.seconds["train_s"] == pytest.approx(8 * 1.0 + 2 * 2.0)
    assert c.seconds["other_s"] == pytest.approx(0.2)  # a fork of the warm worker
    # PPO: the same rollouts; per micro-batch one preparing pass and 2 passes, 2 x 2 updates per step
    config["method_overrides"]["ketchup-ppo"] = config["method_overrides"]["ketchup"]
    config["rl"] = {**config.get("rl", {}), "ppo_epochs": 2, "ppo_minibatches": 2}
    ppo = costmodel.job_counts(Job("student", {**job.wildcards, "method": "ketchup-ppo"}, "x", "y"), config, _cal(),
                               lengths, startup="warm")
    assert ppo.rollouts == c.rollouts and ppo.seconds["rollout_s"] == pytest.approx(c.seconds["rollout_s"])
    assert ppo.seconds["train_s"] == pytest.approx(8 * 3 * 1.0 + 2 * 4 * 2.0)
    # an equal-time run {method}-r{N}: the method's settings for N rollout batches
    short = costmodel.job_counts(Job("student", {**job.wildcards, "method": "ketchup-ppo-r1"}, "x", "y"), config,
                                 _cal(), lengths, startup="warm")
    assert short.rollouts == ppo.rollouts // 2 and short.seconds["train_s"] == pytest.approx(ppo.seconds["train_s"] / 2)


def test_divergence_jobs_decode_the_rows_their_student_samples_for():
    """js: half of each micro-batch; gkd: its lambda; rkl: every row; skl, srkl and kl: none."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["students"] = {"s": config["students"]["tiny"]}
    config["tasks"]["en_nl"].update(max_target_length=8)
    config["train"] = {"batch_size": 4, "grad_accum": 1, "max_steps": 2, "eval_every": 100, "dev_eval_examples": 1}
    config["generation"] = {"max_new_tokens": 8, "batch_size": 4}
    config["divergence"] = {"lambda": 0.25}
    split = SplitLengths((3,), (6,))
    lengths = {"en_nl": costmodel.TaskLengths({"train": split, "dev": split, "test": split}, "hand")}
    rollouts = {}
    for method in ("kl", "js", "gkd", "rkl", "skl", "srkl"):
        job = Job("student", {"task": "en_nl", "student": "s", "method": method, "seed": "0"}, "x", "y")
        rollouts[method] = costmodel.job_counts(job, config, _cal(), lengths, startup="warm").rollouts
    assert rollouts == {"kl": 0, "js": 2 * 2, "gkd": 2 * 1, "rkl": 2 * 4, "skl": 0, "srkl": 0}


# --- the DAG's jobs ----------------------------------------------------------------------------


DRY_RUN = """Job stats:
job        count
-------  -------
data           1
student        2
all            1
total          4

[Wed Dec  2 17:41:26 2026]
rule data:
    output: results/data/a/train.jsonl, results/data/a/dev.jsonl
    log: results/logs/data/a.log
    jobid: 5
    benchmark: results/benchmarks/data/a.tsv
    wildcards: task=a
    resources: tmpdir=/tmp
[Wed Dec  2 17:41:26 2026]
rule student:
    output: results/models/students/a/s/kl/seed0
    benchmark: results/benchmarks/student/a/s/kl/seed0.tsv
    wildcards: task=a, student=s, method=kl, seed=0
[Wed Dec  2 17:41:26 2026]
rule student:
    output: results/models/students/a/s/sft/seed0
    benchmark: results/benchmarks/student/a/s/sft/seed0.tsv
    wildcards: task=a, student=s, method=sft, seed=0
[Wed Dec  2 17:41:26 2026]
localrule all:
    input: results/tables/main.csv
    jobid: 0
"""


def test_parse_dry_run_reads_every_job_block():
    jobs = dagjobs.parse_dry_run(DRY_RUN)
    assert [(j.rule, j.wildcards.get("method")) for j in jobs] == [("data", None), ("student", "kl"), ("student", "sft")]
    assert jobs[0].output == "results/data/a/train.jsonl, results/data/a/dev.jsonl"
    assert jobs[1].benchmark == "results/benchmarks/student/a/s/kl/seed0.tsv"
    assert jobs[2].wildcards == {"task": "a", "student": "s", "method": "sft", "seed": "0"}


def test_parse_dry_run_fails_when_its_blocks_disagree_with_the_job_table():
    with pytest.raises(ValueError, match="differ from its job table"):
        dagjobs.parse_dry_run(DRY_RUN.replace("student        2", "student        3"))


# --- the profiles' resources -------------------------------------------------------------------


def test_planned_resource_reads_the_plan_row_else_the_default(tmp_path):
    path = tmp_path / "cost.csv"
    assert planned.resource("runtime", "student", {"task": "a"}, 1440, path=str(path)) == 1440
    path.write_text("rule,wildcards,runtime_min,mem_mb\nstudent,\"seed=0,task=a\",7,900\n")
    assert planned.resource("runtime", "student", {"task": "a", "seed": "0"}, 1440, path=str(path)) == 7
    assert planned.resource("mem_mb", "student", {"seed": "0", "task": "a"}, 1, path=str(path)) == 900
    assert planned.resource("mem_mb", "teacher", {"seed": "0", "task": "a"}, 64000, path=str(path)) == 64000


# --- end to end on the test config -------------------------------------------------------------


@pytest.fixture(scope="module")
def planned_run(tmp_path_factory):
    """`snakemake results/plan/cost.csv` on the test config (one timing per unit)."""
    work = tmp_path_factory.mktemp("plan")
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["plan"] = {"repeats": 1, "margin": 2.0}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(work, path, "results/plan/cost.csv", timeout=900)
    with (work / "results" / "plan" / "cost.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return work, path, rows


def test_the_plan_lists_every_job_of_the_dag_once_with_positive_predictions(planned_run):
    work, config, rows = planned_run
    summary = snakemake(work, config, "--summary", "--forceall", "--nolock", "all").stdout
    records = [line.split("\t") for line in summary.splitlines()[1:] if "\t" in line]
    rule_of = {r[0]: r[2] for r in records}  # every output file of the DAG and the rule that writes it
    planned_outputs = [o for row in rows for o in row["output"].split(", ")]
    # Each output once: a job listed twice would repeat its outputs, a job left out would miss them.
    assert sorted(planned_outputs) == sorted(rule_of)
    assert all(rule_of[o] == row["rule"] for row in rows for o in row["output"].split(", "))
    assert len({(row["rule"], row["wildcards"]) for row in rows}) == len(rows)
    assert all(float(row["predicted_s"]) > 0 and float(row["predicted_peak_mib"]) > 0 for row in rows)
    students = [row for row in rows if row["rule"] == "student" and row["method"] != "prompted"]
    assert students and all(int(row["steps"]) == 20 and int(row["dev_evals"]) == 3 for row in students)
    assert all(row["benchmark"].startswith("results/benchmarks/") for row in rows)
    summary_md = (work / "results" / "plan" / "summary.md").read_text()
    assert f"{len(rows)} jobs" in summary_md and "## Share of each part" in summary_md


def test_the_slurm_profile_asks_for_the_plan_runtime(planned_run):
    work, config, rows = planned_run
    out = snakemake(work, config, "--profile", str(REPO_ROOT / "profiles" / "slurm"), "-n", "--forceall",
                    "results/tables/main.csv")
    text = out.stdout + out.stderr
    plan = {row["wildcards"]: row for row in rows if row["rule"] == "student"}
    seen = 0
    for block in text.split("rule student:")[1:]:
        wildcards = dict(p.split("=") for p in block.split("wildcards: ")[1].split("\n")[0].split(", "))
        row = plan[planned.key("student", wildcards)[1]]
        resources = block.split("resources: ")[1].split("\n")[0]
        assert f"runtime={row['runtime_min']}," in resources and f"mem_mb={row['mem_mb']}," in resources
        seen += 1
    # the main table's students: not the K sweep's nor the equal-time runs (analyses)
    assert seen == sum(1 for r in rows if r["rule"] == "student" and not re.search(r"-[kr]\d+$", r["method"]))
    # the teachers' come through their rule (workflow/rules/common.smk, teacher_resource)
    teachers = {row["wildcards"]: row for row in rows if row["rule"] == "teacher"}
    blocks = text.split("rule teacher:")[1:]
    assert teachers and len(blocks) == len(teachers)
    for block in blocks:
        row = teachers["task=" + block.split("wildcards: task=")[1].split("\n")[0].strip()]
        resources = block.split("resources: ")[1].split("\n")[0]
        assert f"runtime={row['runtime_min']}," in resources and f"mem_mb={row['mem_mb']}," in resources


# --- the calibration's early failure -----------------------------------------------------------


def test_calibration_of_an_unreadable_model_fails_naming_the_key_before_timing(tmp_path):
    config = yaml.safe_load(PAPER_CONFIG.read_text())
    config["teacher"]["model"] = {"name_or_path": str(tmp_path / "no-such-model")}
    spec = tmp_path / "config.json"
    spec.write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "ketchup", "plan-calibrate", "--config", f"@{spec}", "--out",
                           str(tmp_path / "cal.json")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "config key 'teacher.model.name_or_path'" in proc.stderr
    assert "calibrating" not in proc.stdout + proc.stderr and not (tmp_path / "cal.json").exists()


# --- extrapolating a calibration made with fewer layers ----------------------------------------


def test_extrapolate_layers_is_linear_in_each_models_layers():
    from ketchup.calibration import extrapolate_layers

    def cal(layers_s, layers_t, scale_s, scale_t):
        unit = {"batch": 1, "coef": [1.0 + scale_s + scale_t, 0.0, 0.0], "student_coef": [scale_s, 0.0, 0.0],
                "teacher_coef": [scale_t, 0.0, 0.0]}
        model = lambda layers, real, x: {"layers": layers, "real_layers": real, "optimizer_s": x, "save_s": x,  # noqa: E731
                                         "load_s": x, "state_s": x, "peak_mib": x, "params": x,
                                         "decode": {"4": {"batch": 4, "coef": [x, x]}}, "loss": {}}
        student, teacher = model(layers_s, 12, scale_s), model(layers_t, 48, scale_t)
        student["loss"]["rl@1"] = unit
        return {"models": {"student:s": student, "teacher": teacher}, "device": "cpu"}

    # student: 2 layers cost 3, 4 layers cost 5 (1 + 1 per layer) -> 12 layers: 13
    # teacher: 2 layers cost 10, 4 layers cost 14 (6 + 2 per layer) -> 48 layers: 102
    whole = extrapolate_layers(cal(2, 2, 3.0, 10.0), cal(4, 4, 5.0, 14.0))
    s, t = whole["models"]["student:s"], whole["models"]["teacher"]
    assert s["optimizer_s"] == pytest.approx(13.0) and s["decode"]["4"]["coef"] == pytest.approx([13.0, 13.0])
    assert t["load_s"] == pytest.approx(102.0)
    # the rl unit: the objective's own 1 s as timed + the student's part + the teacher's part
    assert s["loss"]["rl@1"]["coef"] == pytest.approx([1.0 + 13.0 + 102.0, 0.0, 0.0])
    assert whole["extrapolated"] and s["layers"] == 12


def test_cut_layers_keeps_at_most_the_layers_asked_for_each_stack():
    from transformers import Qwen2Config, T5Config

    from ketchup.calibration import cut_layers

    cut, (timed, real) = cut_layers(T5Config(num_layers=24, num_decoder_layers=24), 2)
    assert (cut.num_layers, cut.num_decoder_layers, timed, real) == (2, 2, 4, 48)
    cut, (timed, real) = cut_layers(Qwen2Config(num_hidden_layers=40), 3)
    assert (cut.num_hidden_layers, len(cut.layer_types), timed, real) == (3, 3, 3, 40)
    same, (timed, real) = cut_layers(T5Config(num_layers=6, num_decoder_layers=6), None)
    assert same.num_layers == 6 and timed == real == 12
