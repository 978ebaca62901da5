"""Time the units the jobs are made of, where the jobs run: loss + backward of each method family,
the optimiser step and a decode at each batch size the config uses, at the config's model shapes,
lengths and precision (ketchup.costmodel turns them into each job's seconds).

Random weights: the cost of a step or a decoded token does not depend on them. A decode is forced
to its length (EOS suppressed), so a length is timed as asked. Every model's config is read first:
one that cannot be read (a hub name offline) stops the calibration, naming its config key, before
any timing.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, SuppressTokensLogitsProcessor

from ketchup import costmodel
from ketchup.batching import Batch, Decoding, generate
from ketchup.config import (GENERATION_DEFAULTS, ConfigError, optim_settings, teacher_dtype_name, teacher_settings,
                            tokenizer_settings)
from ketchup.methods import Objective
from ketchup.models import CONFIG_CLASSES
from ketchup.runtime import compute_device, teacher_dtype

AUTO = {"seq2seq": AutoModelForSeq2SeqLM, "decoder": AutoModelForCausalLM}
PAD, EOS = 0, 1  # the stand-in tokenizer's ids (random weights: which ids does not change the cost)


def _read_config(arch: str, spec: dict[str, Any], where: str, vocab: int, shapes: dict[str, Any]):
    """A transformers config for a model block: built from ``config``, or read from ``name_or_path``
    (hub or folder), or from the offline ``shapes`` table given by name."""
    if "config" in spec:
        return CONFIG_CLASSES[arch](vocab_size=vocab, pad_token_id=PAD, eos_token_id=EOS,
                                    **({"decoder_start_token_id": PAD} if arch == "seq2seq" else {}), **spec["config"])
    name = spec["name_or_path"]
    if name in shapes:
        fields = {"pad_token_id": PAD, "eos_token_id": EOS, **shapes[name]}
        if arch == "seq2seq":
            fields.setdefault("decoder_start_token_id", PAD)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    try:
        return AutoConfig.from_pretrained(os.path.expanduser(name), **({"gguf_file": spec["gguf_file"]}
                                                                      if spec.get("gguf_file") else {}))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config key '{where}.name_or_path': cannot read the config of {name!r} here "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); calibrate where the model "
                          "can be read (the hub, or a local folder), or give its shapes offline "
                          "(python -m ketchup plan-calibrate --shapes FILE)") from exc


def model_configs(config: dict[str, Any], shapes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every model's transformers config, by the cost model's key; raises ConfigError naming the key
    of the first model whose config cannot be read."""
    arch, shapes = config["architecture"], shapes or {}
    tok = tokenizer_settings(config)
    vocab = tok["vocab_size"] if tok["kind"] == "train" else None
    teacher = _read_config(arch, config["teacher"]["model"], "teacher.model", vocab, shapes)
    vocab = vocab or teacher.vocab_size  # students share the teacher's (pretrained) vocabulary
    out = {"teacher": teacher}
    for name, spec in config["students"].items():
        if "from_teacher" in spec:
            cut = teacher.to_dict()
            layers = spec["from_teacher"]
            if arch == "seq2seq":
                cut.update(num_layers=len(layers["encoder_layers"]), num_decoder_layers=len(layers["decoder_layers"]))
            else:
                cut.update(num_hidden_layers=len(layers["layers"]))
            out[costmodel.student_model_key(name)] = type(teacher).from_dict(cut)
        else:
            out[costmodel.student_model_key(name)] = _read_config(arch, spec, f"students.{name}", vocab, shapes)
    return out


def _timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one untimed warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batch(arch: str, rows: int, s: int, t: int, vocab: int, device) -> Batch:
    g = torch.Generator().manual_seed(rows * 1000 + s * 10 + t)
    src = torch.randint(2, vocab, (rows, s), generator=g)
    src[:, -1] = EOS
    tgt = torch.randint(2, vocab, (rows, t), generator=g)
    tgt[:, -1] = EOS
    return Batch(src, torch.ones_like(src), tgt, torch.ones(rows, t)).to(device)


def _fit(xs: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares of ys on [1, *x]; a term whose coefficient comes out negative (noise) is dropped
    and the rest refitted, so no unit gets cheaper with length."""
    keep = list(range(len(xs[0]) + 1))
    while True:
        a = np.array([[1.0, *x] for x in xs])[:, keep]
        coef, *_ = np.linalg.lstsq(a, np.array(ys), rcond=None)
        if (coef[1:] >= 0).all() or len(keep) == 1:
            full = [0.0] * (len(xs[0]) + 1)
            for i, c in zip(keep, coef):
                full[i] = max(float(c), 0.0)
            return full
        keep = [keep[0]] + [k for k, c in zip(keep[1:], coef[1:]) if c >= 0]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _startup(code: str) -> tuple[float, float]:
    """Seconds and peak MiB of a fresh interpreter that runs ``code`` (a job's imports)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _loss_parts(model, teacher, arch, rows, points, vocab, device, repeats) -> tuple[list[float], list[float]]:
    """Fits of the student's forward + backward alone and of the teacher's forward alone at the
    points a loss unit was timed: what extrapolate_layers scales by each model's layers."""
    from ketchup.batching import target_logits

    sup, fwd = [], []
    objective = Objective("sft", arch, None)
    for s, t in points:
        b = _batch(arch, rows, s, t, vocab, device)

        def student_step():
            per_token, _, _ = objective.loss(model, {"data": b})
            per_token.sum().backward()

        sup.append(_timed(student_step, repeats))
        with torch.no_grad():
            fwd.append(_timed(lambda: target_logits(teacher, arch, b), repeats))
    return _fit(points, sup), _fit(points, fwd)


def extrapolate_layers(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """A calibration of the whole models from two made with fewer layers (``--max-layers``): every
    unit is linear in the layers, ``x(L) = x_high + (L - l_high) / (l_high - l_low) (x_high - x_low)``
    per model, the embeddings and the head being the part that does not grow. A loss unit that runs
    the teacher too is split into the student's part, the teacher's part (each extrapolated by its
    own model's layers) and the rest (the objective), kept as timed."""
    import copy

    out = copy.deepcopy(high)
    out["extrapolated"] = True
    out["extrapolated_from_layers"] = {k: [low["models"][k]["layers"], m["layers"]] for k, m in high["models"].items()}

    def slope(key: str) -> float:
        lo, hi = low["models"][key]["layers"], high["models"][key]["layers"]
        return 0.0 if hi == lo else (high["models"][key]["real_layers"] - hi) / (hi - lo)

    def ext(a: list[float] | float, b: list[float] | float, k: float):
        if isinstance(b, list):
            return [max(y + k * (y - x), 0.0) for x, y in zip(a, b)]
        return max(b + k * (b - a), 0.0)

    for key, m in out["models"].items():
        lo, k = low["models"][key], slope(key)
        for name in ("optimizer_s", "save_s", "load_s", "state_s", "peak_mib", "params"):
            m[name] = ext(lo[name], m[name], k)
        for batch, fit in m["decode"].items():
            fit["coef"] = ext(lo["decode"][batch]["coef"], fit["coef"], k)
        for unit, fit in m["loss"].items():
            lf = lo["loss"][unit]
            if "student_coef" not in fit:
                fit["coef"] = ext(lf["coef"], fit["coef"], k)
                continue
            rest = [c - a - b for c, a, b in zip(fit["coef"], fit["student_coef"], fit["teacher_coef"])]
            student = ext(lf["student_coef"], fit["student_coef"], k)
            teacher = ext(lf["teacher_coef"], fit["teacher_coef"], slope("teacher"))
            fit["coef"] = [max(r + a + b, 0.0) for r, a, b in zip(rest, student, teacher)]
        m["layers"] = m["real_layers"]
    return out


def _save_load_seconds(model, optimizer, arch: str, repeats: int) -> dict[str, float]:
    """What a training job pays around its steps: writing the model (a dev-best checkpoint, the
    output), writing model + optimiser state (a resumable checkpoint), loading a saved model."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_s = _timed(lambda: model.save_pretrained(tmp), repeats)
        load_s = _timed(lambda: AUTO[arch].from_pretrained(tmp), repeats)
        state_s = save_s
        if optimizer is not None:
            state_s += _timed(lambda: torch.save(optimizer.state_dict(), f"{tmp}/optimizer.bin"), repeats)
    return {"save_s": save_s, "load_s": load_s, "state_s": state_s}


LAYER_KEYS = ("num_layers", "num_decoder_layers", "num_hidden_layers")


def cut_layers(cfg, max_layers: int | None):
    """A copy of ``cfg`` with at most ``max_layers`` layers in each stack, and (layers timed, layers
    of the model), all stacks together."""
    d = cfg.to_dict()
    stacks = [k for k in LAYER_KEYS if isinstance(d.get(k), int)]
    if "num_layers" in stacks and "num_hidden_layers" in stacks:
        stacks.remove("num_hidden_layers")  # an alias of num_layers in some configs
    real = sum(d[k] for k in stacks)
    if not max_layers:
        return cfg, (real, real)
    for k in stacks:
        d[k] = min(d[k], max_layers)
    if isinstance(d.get("layer_types"), list):
        d["layer_types"] = d["layer_types"][: d.get("num_hidden_layers", max_layers)]
    return type(cfg).from_dict(d), (sum(d[k] for k in stacks), real)


def calibrate(config: dict[str, Any], *, repeats: int = 3, shapes: dict[str, Any] | None = None,
              max_batch: int | None = None, max_length: int | None = None, max_layers: int | None = None,
              log=print) -> dict[str, Any]:
    """Time every unit ``costmodel.units_needed`` lists for ``config``. ``max_batch``, ``max_length``
    and ``max_layers`` time smaller shapes than the config's (a CPU calibration of paper-size
    models): the cost model scales loss and decode by rows, the fits carry lengths beyond those
    timed, and per-layer costs are scaled by layers (the whole model's, head and embeddings
    included: an overestimate); the result says so (``extrapolated``)."""
    read = model_configs(config, shapes)  # fails here, before any timing, when one cannot be read
    configs, layers = {}, {}
    for key, cfg in read.items():
        configs[key], layers[key] = cut_layers(cfg, max_layers)
    arch = config["architecture"]
    decoding = Decoding.of({**GENERATION_DEFAULTS, **config.get("generation", {})})
    need = costmodel.units_needed(config)
    device = compute_device()
    light_s, light_mib = _startup("import ketchup.tables, ketchup.scoring")
    model_s, model_mib = _startup("import ketchup.stages, ketchup.models, ketchup.methods, ketchup.training")
    warm_s, _ = _startup("import ketchup.worker")  # a job's client under a local run's warm worker
    start = time.perf_counter()
    from accelerate import Accelerator

    Accelerator(cpu=device.type != "cuda")
    accelerator_s = time.perf_counter() - start
    cal: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "repeats": repeats, "extrapolated": bool(max_batch or max_length or max_layers),
        "startup_s": {"light": light_s, "model": model_s, "warm": warm_s}, "accelerator_s": accelerator_s,
        "baseline_mib": {"light": light_mib, "model": model_mib},
        "models": {},
    }
    def autocast(key: str):
        """The training precision of ``key``'s model (train.mixed_precision, the teacher's its own)."""
        precision = (teacher_settings(config) if key == "teacher" else optim_settings(config))["mixed_precision"]
        if precision == "no":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    tok = SimpleNamespace(pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)
    dtype = teacher_dtype(teacher_dtype_name(config)) or torch.float32
    teacher = AUTO[arch].from_config(configs["teacher"]).to(device, dtype=dtype).eval()
    teacher.requires_grad_(False)
    cap = (lambda n: min(n, max_length)) if max_length else (lambda n: n)
    bcap = (lambda n: min(n, max_batch)) if max_batch else (lambda n: n)
    for key, units in need.items():
        log(f"calibrating {key}: loss units {sorted(units['loss'])}, decode batches {units['decode']}")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss_before = _rss_mib()
        torch.manual_seed(0)
        model = teacher if key == "teacher" else AUTO[arch].from_config(configs[key]).to(device)
        vocab = configs[key].vocab_size
        entry: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "loss": {}, "decode": {}}
        s_max, t_max = cap(units["max_source"]), cap(units["max_target"])
        trainable = key != "teacher" or config["teacher"].get("finetune", True)
        if trainable and key == "teacher":
            model = AUTO[arch].from_config(configs[key]).to(device)  # trained in float32, as the teacher stage
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if trainable else None
        for unit_batch, method in sorted(units["loss"].items()):
            unit, batch = unit_batch.split("@")
            rows = bcap(int(batch))
            objective = Objective(method, arch, tok, teacher=teacher if unit != "supervised" else None,
                                  max_new_tokens=t_max, k=2)
            points, ys = [], []
            for s in sorted({max(2, s_max // 2), s_max}):
                for t in sorted({max(2, t_max // 2), t_max}):
                    b = _batch(arch, rows, s, t, vocab, device)
                    batches = {"student": b} if unit == "rl" else {"data": b}
                    model.train()

                    def step():
                        with autocast(key):
                            per_token, _, _ = objective.loss(model, batches)
                        per_token.sum().backward()

                    ys.append(_timed(step, repeats))
                    points.append([s, t])
            entry["loss"][unit_batch] = {"batch": rows, "coef": _fit(points, ys), "points": points, "seconds": ys}
            if max_layers and unit != "supervised":  # its parts, for extrapolate_layers
                entry["loss"][unit_batch].update(zip(("student_coef", "teacher_coef"), _loss_parts(
                    model, teacher, arch, rows, points, vocab, device, repeats)))
        if optimizer is not None:
            if all(p.grad is None for p in model.parameters()):  # a model timed for decoding only
                for p in model.parameters():
                    p.grad = torch.zeros_like(p)
            entry["optimizer_s"] = _timed(optimizer.step, repeats)
            optimizer.zero_grad(set_to_none=True)
        else:
            entry["optimizer_s"] = 0.0
        suppress = lambda _n: [SuppressTokensLogitsProcessor([EOS], device=device)]  # noqa: E731
        for batch in units["decode"]:
            rows = bcap(batch)
            b = _batch(arch, rows, s_max, 1, vocab, device)
            lengths = sorted({max(1, cap(units["max_new"]) // 4), max(1, cap(units["max_new"]) // 2),
                              cap(units["max_new"])})
            ys = []
            for length in lengths:
                # The decode every job makes (ketchup.batching.generate), with the config's cache and compilation.
                # The teacher decodes its outputs in teacher.dtype, as the teacher-outputs stage.
                ys.append(_timed(lambda: generate(teacher if key == "teacher" else model, arch, b, tok, length,
                                                  logits_processor=suppress, decoding=decoding), repeats))
            entry["decode"][str(batch)] = {"batch": rows, "coef": _fit([[x] for x in lengths], ys),
                                           "lengths": lengths, "seconds": ys}
        entry.update(_save_load_seconds(model, optimizer, arch, repeats))
        entry["layers"], entry["real_layers"] = layers[key]
        if device.type == "cuda":
            entry["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        else:  # the process's growth while this model was timed, at least its weights (+ gradients, AdamW)
            state = entry["params"] * 4 * (4 if optimizer is not None else 1) / 2**20
            entry["peak_mib"] = max(_rss_mib() - rss_before, state)
        cal["models"][key] = entry
        model = optimizer = None  # freed before the next model is built
    return cal

