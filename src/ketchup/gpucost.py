"""GPU-hours of a config before it runs, where no GPU is at hand to calibrate on: the cost plan's
counts (ketchup.costmodel) times unit costs derived from a few measured GPU step times
(benchmarks/gpu_times.yaml) and the models' public shapes (benchmarks/paper_shapes.yaml).

Pure functions, no torch. From one measured shape (a student S, a teacher T, ``rows`` x ``source``
x ``target`` tokens) the units of every model are scaled as follows (each rule stated in the times
file, with its basis):

    student loss + backward   6 x rows x (S P_src + T P_tgt) / train_flops          (x fp32 factor)
    teacher forward           2 x rows x (S P_src + T P_tgt) / forward_flops
    a decoded token           decode_s_per_layer x decoder layers   (latency-bound: rows up to the
                              generation batch cost the same)
    a decode's start          the encoder (or prompt) forward at the longest source

where ``P_src`` / ``P_tgt`` are the weights one source / target token passes through (the encoder,
or the decoder and the output head) and the two FLOP rates are fitted so the measured sft and kl
steps come out exactly. The result is a calibration in ``ketchup.calibration``'s format, so the
plan's own functions turn it into each job's seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ketchup import config as kconfig, costmodel, plan
from ketchup.costmodel import SplitLengths, TaskLengths

GPU_RULES = costmodel.MODEL_RULES  # the jobs that hold a GPU (one each); every other rule runs on CPUs


# ---------------------------------------------------------------------------------------------------
# Shapes


def token_weights(shape: dict[str, Any]) -> dict[str, float]:
    """Per-token matmul weights of a model from its public config: ``src`` (what one source token
    passes through), ``tgt`` (one target token), ``params`` (all weights), ``decoder_layers``."""
    vocab = shape["vocab_size"]
    if shape["model_type"] == "t5":
        d, inner = shape["d_model"], shape["num_heads"] * shape["d_kv"]
        ff = (3 if "gated" in shape.get("feed_forward_proj", "relu") else 2) * d * shape["d_ff"]
        enc, dec = shape["num_layers"], shape.get("num_decoder_layers", shape["num_layers"])
        head = d * vocab
        src, tgt = enc * (4 * d * inner + ff), dec * (8 * d * inner + ff) + head
        embed = d * vocab * (1 if shape.get("tie_word_embeddings", True) else 2)
        return {"src": float(src), "tgt": float(tgt), "params": float(src + tgt - head + embed),
                "decoder_layers": dec}
    d, layers = shape["hidden_size"], shape["num_hidden_layers"]  # decoder-only (qwen2)
    head_dim = d // shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads", shape["num_attention_heads"]) * head_dim
    layer = 2 * d * d + 2 * d * kv + 3 * d * shape["intermediate_size"]
    head = d * vocab  # logits at every position (the prompt's too)
    embed = d * vocab * (1 if shape.get("tie_word_embeddings", True) else 2)
    return {"src": float(layers * layer + head), "tgt": float(layers * layer + head),
            "params": float(layers * layer + embed), "decoder_layers": layers}


def model_shapes(config: dict[str, Any], shapes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every model's public shape by the cost model's key (teacher, student:<size>)."""
    def shape(spec: dict[str, Any], where: str) -> dict[str, Any]:
        name = spec.get("name_or_path")
        if name not in shapes:
            raise kconfig.ConfigError(f"config key '{where}.name_or_path': {name!r} has no shape in the shapes file")
        return shapes[name]

    out = {"teacher": shape(config["teacher"]["model"], "teacher.model")}
    for name, spec in config["students"].items():
        out[costmodel.student_model_key(name)] = shape(spec, f"students.{name}")
    return out


# ---------------------------------------------------------------------------------------------------
# Rates from the measured steps


def rates(times: dict[str, Any], shapes: dict[str, Any]) -> dict[str, float]:
    """The FLOP rates and the per-layer decode latency that reproduce the measured steps exactly.

    sft step = student 6 x tokens + AdamW; kl = sft + the teacher's forward; js = kl + a decode of
    the js sample rows to the target length (js's loss over data and samples costs about kl's)."""
    m, s = times["measured"], times["shape"]
    student, teacher = token_weights(shapes[s["student"]]), token_weights(shapes[s["teacher"]])
    rows, src, tgt = s["rows"], s["source"], s["target"]
    sft = m["sft_s"]
    kl = sft * m["kl_x_sft"]
    js = sft * m["js_x_sft"]
    adamw = adamw_seconds(times, student["params"])
    train_flops = 6 * rows * (src * student["src"] + tgt * student["tgt"]) / (sft - adamw)
    forward_flops = 2 * rows * (src * teacher["src"] + tgt * teacher["tgt"]) / (kl - sft)
    per_token = (js - kl) / tgt
    return {"train_flops": train_flops, "forward_flops": forward_flops, "decode_token_s": per_token,
            "decode_s_per_layer": per_token / student["decoder_layers"], "adamw_s": adamw,
            "rl_decode_token_s": [(sft * x - kl) / tgt for x in m["rl_x_sft"]]}


def adamw_seconds(times: dict[str, Any], params: float) -> float:
    """One AdamW update: memory-bound, its bytes per weight at the card's bandwidth and efficiency."""
    a = times["assumed"]
    return params * a["adamw_bytes_per_param"] / (a["memory_bandwidth_gb_s"] * 1e9 * a["bandwidth_efficiency"])


def calibration(config: dict[str, Any], shapes: dict[str, Any], times: dict[str, Any]) -> dict[str, Any]:
    """A calibration (``ketchup.calibration``'s format) of every unit the config's jobs use, derived
    from the measured times and the models' shapes (the module docstring gives the rules)."""
    r, a = rates(times, shapes), times["assumed"]
    models = model_shapes(config, shapes)
    weights = {k: token_weights(v) for k, v in models.items()}
    need = costmodel.units_needed(config)
    fp32 = a["fp32_training_factor"] if kconfig.optim_settings(config)["mixed_precision"] == "no" else 1.0
    teacher_fwd = weights["teacher"]
    cal: dict[str, Any] = {
        "device": f"{times['card']} (derived from steps measured {times['date']}, {times['source']}; "
                  "other shapes scaled: benchmarks/gpu_times.yaml)",
        "torch": times.get("torch", "?"), "repeats": times.get("repeats", 1), "extrapolated": False,
        "gpu_estimate": True,
        "startup_s": {"light": a["startup_light_s"], "model": a["startup_model_s"], "warm": a["startup_light_s"]},
        "accelerator_s": a["accelerator_s"],
        "baseline_mib": {"light": a["baseline_host_mib"], "model": a["baseline_host_mib"]},
        "models": {},
    }
    io = lambda params: params * 4 / (a["disk_gb_s"] * 1e9)  # noqa: E731  (float32 safetensors)
    for key, units in need.items():
        w = weights[key]
        trainable = key != "teacher" or config["teacher"].get("finetune", True)
        entry: dict[str, Any] = {"params": w["params"], "loss": {}, "decode": {}, "layers": w["decoder_layers"],
                                 "real_layers": w["decoder_layers"]}
        for unit_batch in units["loss"]:
            unit, batch = unit_batch.split("@")
            rows = int(batch)
            # seconds = a + b_S S + b_T T for `rows` rows: the student's 6 x weights (x fp32) and, for the
            # divergence and RL units, the teacher's forward over the same tokens.
            bs = 6 * rows * w["src"] * fp32 / r["train_flops"]
            bt = 6 * rows * w["tgt"] * fp32 / r["train_flops"]
            if unit != "supervised":
                bs += 2 * rows * teacher_fwd["src"] / r["forward_flops"]
                bt += 2 * rows * teacher_fwd["tgt"] / r["forward_flops"]
            entry["loss"][unit_batch] = {"batch": rows, "coef": [0.0, bs, bt]}
        for batch in units["decode"]:
            start = 2 * batch * units["max_source"] * w["src"] / r["forward_flops"]
            entry["decode"][str(batch)] = {"batch": batch, "coef": [start, r["decode_s_per_layer"] * w["decoder_layers"]]}
        entry["optimizer_s"] = adamw_seconds(times, w["params"]) if trainable else 0.0
        entry["save_s"] = entry["load_s"] = io(w["params"])
        entry["state_s"] = 3 * io(w["params"])  # the weights and AdamW's two moments
        entry["peak_mib"] = w["params"] * (16 if trainable and key != "teacher" else 2) / 2**20
        cal["models"][key] = entry
    return cal


# ---------------------------------------------------------------------------------------------------
# Lengths of data that is not here


def table_lengths(config: dict[str, Any], table: dict[str, Any], seed: int = 0) -> dict[str, TaskLengths]:
    """Each task's token lengths drawn, seeded, from a log-normal around the mean lengths of a table
    of the public datasets (benchmarks/paper_shapes.yaml ``data``), with the splits' sizes as the
    config takes them (``tasks.<task>.n_train`` / ``n_dev`` / ``n_test`` cap the table's)."""
    rng = np.random.default_rng(seed)
    sigma = table["sigma"]
    out = {}
    for task, spec in config["tasks"].items():
        row = table[task]
        max_src, _ = kconfig.task_lengths(config, task)
        splits = {}
        for split in ("train", "dev", "test"):
            n = row[split]
            if isinstance(spec.get(f"n_{split}"), int):
                n = min(n, spec[f"n_{split}"])

            def draw(mean: float) -> np.ndarray:
                return np.maximum(2, np.round(mean * rng.lognormal(-sigma ** 2 / 2, sigma, n))).astype(int)

            splits[split] = SplitLengths(tuple(np.minimum(draw(row["source"]), max_src).tolist()),
                                         tuple(draw(row["target"]).tolist()))
        out[task] = TaskLengths(splits, f"estimates (mean source {row['source']}, target {row['target']} tokens, "
                                        f"log-normal sigma {sigma})")
    return out


# ---------------------------------------------------------------------------------------------------
# GPU-hours from the plan's rows


def plan_rows(config: dict[str, Any], jobs: list[costmodel.Job], shapes: dict[str, Any], times: dict[str, Any],
              decode_factor: float = 1.0) -> list[dict[str, Any]]:
    """The plan's rows of ``jobs`` (a dry run's, ketchup.dagjobs) under ``config``, with unit costs
    derived from ``times`` and lengths drawn from ``shapes["data"]``; every decoded token's time
    x ``decode_factor`` (what a faster decode would save)."""
    cal = calibration(config, shapes["models"], times)
    for m in cal["models"].values():
        for fit in m["decode"].values():
            fit["coef"] = [fit["coef"][0], fit["coef"][1] * decode_factor]
    lengths = table_lengths(config, shapes["data"])
    return plan.plan_rows(config, cal, jobs, lengths, kconfig.plan_settings(config)["margin"], "cold")


def gpu_hours(rows: list[dict[str, Any]]) -> float:
    """GPU-hours of a plan: the seconds of the jobs that hold a GPU (one each), summed."""
    return sum(float(r["predicted_s"]) for r in rows if r["rule"] in GPU_RULES) / 3600


def gpu_hours_max(rows: list[dict[str, Any]]) -> float:
    """The same, every decode running to max_new_tokens (a model that never stops)."""
    return sum(float(r["predicted_max_s"]) for r in rows if r["rule"] in GPU_RULES) / 3600


def split(rows: list[dict[str, Any]], key) -> dict[str, float]:
    """GPU-hours of the GPU jobs grouped by ``key(row)`` (rows whose key is empty left out)."""
    out: dict[str, float] = {}
    for r in rows:
        if r["rule"] in GPU_RULES and key(r):
            out[key(r)] = out.get(key(r), 0.0) + float(r["predicted_s"]) / 3600
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def parts(rows: list[dict[str, Any]]) -> dict[str, float]:
    """GPU-hours of the GPU jobs by part (training, dev evaluation, rollouts, generation, other)."""
    return {c: sum(float(r[c]) for r in rows if r["rule"] in GPU_RULES) / 3600 for c in costmodel.COMPONENTS}
