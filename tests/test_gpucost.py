"""GPU-hours before a run (ketchup.gpucost, benchmarks/gpu_hours.py) and the budget config.

- the per-token weights of each paper model give its published parameter count (an independent count);
- the derived unit costs give back the measured steps they were fitted to, through the plan's own
  functions (sft, kl, and js = kl + a decode of its sample rows), and scale with rows and tokens;
- workflow/configs/paper_budget.yaml keeps paper.yaml's models, tasks, methods, seeds and training
  settings (only the stated cuts differ), builds its DAG offline and plans within its budget;
- a prompted teacher's job is sized by its weight files, a fine-tuned one keeps the long default.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ketchup import config as kconfig, costmodel, dagjobs, gpucost, planned

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "workflow" / "configs"
SHAPES = yaml.safe_load((ROOT / "benchmarks" / "paper_shapes.yaml").read_text())
TIMES = yaml.safe_load((ROOT / "benchmarks" / "gpu_times.yaml").read_text())
# The budget docs/cost.md states for paper_budget.yaml: GPU-hours of H100-class cards, upper bound.
BUDGET_H100_GPU_HOURS = 2500


# Parameter counts as the models report them (sum of numel over their weights; Qwen: their model cards).
PUBLISHED = {"google-t5/t5-small": 60_506_624, "google-t5/t5-base": 222_903_552,
             "google-t5/t5-large": 737_668_096, "google/flan-t5-xl": 2_849_757_184,
             "Qwen/Qwen1.5-0.5B": 0.46e9, "Qwen/Qwen1.5-4B": 3.95e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_token_weights_count_the_published_parameters(name):
    counted = gpucost.token_weights(SHAPES["models"][name])["params"]
    # The matmul weights only: layer norms and T5's relative position biases (< 0.1 %), Qwen's
    # q/k/v biases and rounded published counts (< 1 %) are left out.
    tolerance = 1e-3 if name.startswith(("google", )) else 1e-2
    assert counted == pytest.approx(PUBLISHED[name], rel=tolerance)
    assert counted < PUBLISHED[name] or name.startswith("Qwen")


def _measured_config(precision: str = "bf16") -> dict:
    """paper.yaml with the measured step's student alone and its precision."""
    config = kconfig.load(CONFIGS / "paper.yaml")
    config["students"] = {"base": config["students"]["base"]}
    config["train"]["mixed_precision"] = precision
    return config


def test_derived_units_give_back_the_measured_steps():
    cal = gpucost.calibration(_measured_config(), SHAPES["models"], TIMES)
    m, shape = TIMES["measured"], TIMES["shape"]
    rows, s, t = shape["rows"], shape["source"], shape["target"]
    key = costmodel.student_model_key("base")
    adamw = costmodel.optimizer_seconds(cal, key)
    sft = costmodel.loss_seconds(cal, key, "supervised", rows, s, t) + adamw
    kl = costmodel.loss_seconds(cal, key, "divergence", rows, s, t) + adamw
    assert sft == pytest.approx(m["sft_s"], rel=1e-9)
    assert kl == pytest.approx(m["sft_s"] * m["kl_x_sft"], rel=1e-9)
    # js = kl + a decode of its sample rows (8 - 4) to the target length; the decode's start (the
    # encoder pass) is the part the measurement did not separate, and stays under 10 % of it.
    decode = costmodel.decode_seconds(cal, key, 4, t)
    start = cal["models"][key]["decode"]["4"]["coef"][0]
    assert kl + decode - start == pytest.approx(m["sft_s"] * m["js_x_sft"], rel=1e-9)
    assert 0 < start < 0.1 * decode
    # The RL steps (8 rollouts) measured 19.9-23x: the same per-token latency within their spread.
    rl = costmodel.loss_seconds(cal, key, "rl", rows, s, t) + adamw + costmodel.decode_seconds(cal, key, 8, t)
    lo, hi = (m["sft_s"] * x for x in m["rl_x_sft"])
    assert 0.9 * lo < rl < 1.1 * hi


def test_derived_units_scale_with_rows_tokens_layers_and_precision():
    bf16 = gpucost.calibration(_measured_config(), SHAPES["models"], TIMES)
    fp32 = gpucost.calibration(_measured_config("no"), SHAPES["models"], TIMES)
    key = costmodel.student_model_key("base")
    one = costmodel.loss_seconds(bf16, key, "supervised", 8, 512, 128)
    assert costmodel.loss_seconds(bf16, key, "supervised", 8, 1024, 256) == pytest.approx(2 * one)
    assert costmodel.loss_seconds(fp32, key, "supervised", 8, 512, 128) == pytest.approx(
        TIMES["assumed"]["fp32_training_factor"] * one)
    # A decoded token costs the same at any batch (latency-bound) and twice as much with twice the layers.
    per_token = {b: fit["coef"][1] for b, fit in bf16["models"][key]["decode"].items()}
    assert len(set(per_token.values())) == 1
    assert bf16["models"]["teacher"]["decode"]["32"]["coef"][1] == pytest.approx(2 * per_token["32"])


def _differences(a, b, where=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{where}.{k}".lstrip("."))]
    return [] if a == b else [where]


def test_budget_config_keeps_the_paper_but_its_stated_cuts():
    paper, budget = kconfig.load(CONFIGS / "paper.yaml"), kconfig.load(CONFIGS / "paper_budget.yaml")
    assert sorted(_differences(paper, budget)) == sorted(
        ["tasks.en_nl.n_train", "train.dev_eval_examples", "train.eval_every", "generation.batch_size",
         "rl_train.eval_every"])


@pytest.fixture(scope="module")
def budget_rows(tmp_path_factory):
    config = kconfig.load(CONFIGS / "paper_budget.yaml")
    work = tmp_path_factory.mktemp("budget")
    jobs = dagjobs.parse_dry_run(dagjobs.dry_run(ROOT / "Snakefile", work, [CONFIGS / "paper_budget.yaml"], "all"))
    return config, jobs, gpucost.plan_rows(config, jobs, SHAPES, TIMES)


def test_budget_config_builds_its_dag_and_plans_within_its_budget(budget_rows):
    config, jobs, rows = budget_rows
    students = [j for j in jobs if j.rule == "student"]
    # every method of every task, size and seed, and the K sweep's runs
    assert {(j.wildcards["task"], j.wildcards["student"], j.wildcards["seed"]) for j in students} == {
        (t, s, str(x)) for t in config["tasks"] for s in config["students"] for x in config["seeds"]}
    assert set(config["methods"]) <= {j.wildcards["method"] for j in students}
    hours = gpucost.gpu_hours(rows)
    assert hours * TIMES["assumed"]["h100_upper_factor"] <= BUDGET_H100_GPU_HOURS, hours
    # the counts the cuts act on
    en_nl = next(r for r in rows if r["rule"] == "student" and r["task"] == "en_nl" and r["method"] == "kl")
    assert en_nl["steps"] == costmodel.total_steps(kconfig.optim_settings(config, "kl"), 100_000)
    xsum = next(r for r in rows if r["rule"] == "student" and r["task"] == "xsum" and r["method"] == "ketchup")
    assert xsum["dev_evals"] == costmodel.dev_evaluations(2000, 32) and xsum["decoded_examples"] > 64 * 500
    # the parts add up to the total
    parts = gpucost.parts(rows)
    assert sum(parts.values()) == pytest.approx(hours, rel=1e-6)


# --- the prompted teacher's job -------------------------------------------------------------------


def test_prompted_teacher_is_sized_by_its_weight_files(tmp_path, monkeypatch):
    folder = tmp_path / "teacher"
    folder.mkdir()
    with open(folder / "model.safetensors", "wb") as handle:  # a sparse 10 GB file
        handle.truncate(10 * 10**9)
    (folder / "config.json").write_text("{}")
    model = {"name_or_path": str(folder)}
    assert planned.model_bytes(str(folder)) == 10 * 10**9
    assert planned.teacher_default("mem_mb", model, False) == 4000 + 40_000  # float32 + the saved copy
    assert planned.teacher_default("runtime", model, False) == 30 + 7  # 20 GB read and written at 50 MB/s
    # a hub name found in the local cache, the newest snapshot
    snap = tmp_path / "hub" / "models--org--m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"0" * 1000)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert planned.model_bytes("org/m") == 1000
    # not here: a 4B model's worth; fine-tuned: the long default, whatever the files
    assert planned.teacher_default("mem_mb", {"name_or_path": "org/absent"}, False) == \
        planned.PROMPTED_TEACHER_UNKNOWN["mem_mb"]
    assert planned.teacher_default("runtime", model, True) == planned.FINETUNE_TEACHER["runtime"]


def test_prompted_teacher_plan_counts_its_load_and_save():
    config = _measured_config()
    cal = gpucost.calibration(config, SHAPES["models"], TIMES)
    job = costmodel.Job("teacher", {"task": "xsum"}, "results/models/teacher/xsum", "")
    lengths = gpucost.table_lengths({**config, "tasks": {"xsum": config["tasks"]["xsum"]}}, SHAPES["data"])
    c = costmodel.job_counts(job, config, cal, lengths)
    t = cal["models"]["teacher"]
    assert c.seconds["other_s"] == pytest.approx(cal["startup_s"]["model"] + t["load_s"] + t["save_s"])
    assert c.steps == 0 and c.seconds["train_s"] == 0
