"""Variance of the policy-gradient estimator at the KL student, for each K, on shared rollouts.

For one task, student size and seed (docs/math.md, 'K-step returns'; the RL students start from this model):

1. draw ``n_minibatches`` minibatches of ``batch_size`` training sources once (seeded permutation of
   the RL training data, results/teacher_outputs/{task}/train.jsonl) and decode one rollout per
   source with the KL student (``rl.rollout``: sampled or greedy; ``rl.rollout_dropout``: with
   dropout on or off; seeded), exactly as the RL objective does (:meth:`ketchup.methods.Objective.rollout`);
2. score every rollout once with the teacher: q_t, V_t (:func:`ketchup.objectives.induced_values`);
3. for every K, on those same rollouts: returns G_t = :func:`ketchup.objectives.kstep_returns`
   (q, V, K), the loss of :func:`ketchup.objectives.policy_gradient_loss` (the config's rl
   settings; no baseline, as KETCHUP) summed over tokens and divided by the minibatch's real
   tokens, as one training step would; its gradient with respect to every student parameter is
   one vector g_i(K);
4. report the trace of the covariance of g_1(K)..g_m(K), its bootstrap CI over the minibatches, the
   mean gradient norm and related numbers (:func:`ketchup.analysis.variance.summarize`).

The student's loss is taken in eval mode (no dropout), so the only randomness is the minibatch draw
and the rollouts (sampling, and dropout while decoding when ``rl.rollout_dropout``): what the
estimator's variance is about. Gradients are kept as exact float64 vectors when
m x (number of K) x P of them fit in ``EXACT_MAX_BYTES`` and no ``projection_dim`` is given, else as
a seeded :class:`~ketchup.analysis.variance.CountSketch` of ``projection_dim`` (default 2**20)
coordinates; the output says which.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from ketchup.io import read_jsonl, write_json

# torch, transformers and the objectives are imported inside run(): the table job stays light.

EXACT_MAX_BYTES = 2 * 1024 ** 3
DEFAULT_SKETCH_DIM = 2 ** 20


def minibatch_indices(n: int, n_minibatches: int, batch_size: int, seed: int) -> list[list[int]]:
    """Seeded, without replacement while the data lasts (then a fresh permutation is appended)."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    need = n_minibatches * batch_size
    order: list[int] = []
    while len(order) < need:
        order += torch.randperm(n, generator=gen).tolist()
    return [order[i * batch_size: (i + 1) * batch_size] for i in range(n_minibatches)]


def run(spec: dict[str, Any], student_dir: str, teacher_dir: str, train_outputs: str, out_path: str) -> dict:
    """Write the per-run JSON (settings, one row per K with its Gram matrix) and return it.

    ``spec``: task, student, seed, arch, ks, rl (the config's rl settings), n_minibatches,
    batch_size, sample_seed, resamples, confidence, projection_dim, max_source_length,
    max_target_length, calculator (optional: rollouts through ketchup.calculator, as in training).
    """
    import torch
    from tqdm import tqdm

    from ketchup import objectives
    from ketchup.analysis import variance
    from ketchup.batching import Decoding, make_batch, target_logits
    from ketchup.config import RL_DEFAULTS
    from ketchup.calculator import processors
    from ketchup.methods import Objective
    from ketchup.models import load_model, load_tokenizer, n_parameters
    from ketchup.runtime import compute_device, teacher_dtype

    started = time.perf_counter()
    device = compute_device()
    arch, rl, ks = spec["arch"], {**RL_DEFAULTS, **spec["rl"]}, [int(k) for k in spec["ks"]]
    m, bs, seed = int(spec["n_minibatches"]), int(spec["batch_size"]), int(spec["sample_seed"])
    tok = load_tokenizer(student_dir)
    student = load_model(arch, student_dir).to(device).eval()
    teacher = load_model(arch, teacher_dir, dtype=teacher_dtype(spec.get("teacher_dtype", "auto"))).to(device).eval()
    teacher.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    n_params = n_parameters(student)
    flat = sum(p.numel() for p in params)

    dim = spec.get("projection_dim")
    exact = dim is None and m * len(ks) * flat * 8 <= EXACT_MAX_BYTES  # float64 vectors
    sketch = None if exact else variance.CountSketch([p.shape for p in params], int(dim or DEFAULT_SKETCH_DIM),
                                                     seed=seed, device=device)

    rows = read_jsonl(train_outputs)
    batches = minibatch_indices(len(rows), m, bs, seed)
    objective = Objective("ketchup", arch, tok, teacher=teacher, max_new_tokens=spec["max_target_length"], rl=rl,
                          logits_processor=processors(spec, tok), decoding=Decoding.of(spec))
    torch.manual_seed(seed)  # the sampled rollouts and their dropout masks
    vectors: dict[int, list] = {k: [] for k in ks}
    norms: dict[int, list[float]] = {k: [] for k in ks}
    stats: dict[int, list[dict[str, float]]] = {k: [] for k in ks}
    lengths, tokens_per_batch = [], []
    for idx in tqdm(batches, desc=f"grad variance {spec['task']}/{spec['student']}", file=sys.stderr,
                    mininterval=2.0):
        batch = make_batch(tok, [rows[i]["source"] for i in idx], [rows[i]["prediction"] for i in idx], arch,
                           spec["max_source_length"], spec["max_target_length"]).to(device)
        rolled = objective.rollout(student, batch)["student"]
        mask = rolled.target_mask
        with torch.no_grad():
            teacher_logits = target_logits(teacher, arch, rolled).float()
        q, v = objectives.induced_values(teacher_logits, rolled.target_ids, mask, value=rl["value"])
        del teacher_logits
        logits = target_logits(student, arch, rolled)
        n_tokens = mask.sum().clamp(min=1.0)
        lengths += mask.sum(1).tolist()
        tokens_per_batch.append(float(mask.sum()))
        for j, k in enumerate(ks):
            returns = objectives.kstep_returns(q, v, mask, k)
            per_token, st = objectives.policy_gradient_loss(
                logits, rolled.target_ids, returns, mask, token_weight=rl["token_weight"], denom=rl["denom"],
                clip=rl["clip"], baseline="none", entropy_coef=rl["entropy_coef"])
            loss = per_token.sum() / n_tokens
            grads = torch.autograd.grad(loss, params, retain_graph=j < len(ks) - 1, allow_unused=True)
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))
            norms[k].append(float(norm))
            stats[k].append({**st, "loss": float(loss.detach())})
            if exact:
                vectors[k].append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                                             for g, p in zip(grads, params)]).cpu())
            else:
                vectors[k].append(sketch.project(list(grads)).cpu())
        del logits

    out_rows = []
    for k in ks:
        gram = variance.gram_matrix(torch.stack(vectors[k]))
        summary = variance.summarize(gram, np.array(norms[k]), spec["resamples"], seed, spec["confidence"])
        mean = lambda key: float(np.mean([s[key] for s in stats[k]]))  # noqa: E731
        out_rows.append({"k": k, **summary, "mean_return": mean("mean_return"),
                         "mean_advantage": mean("mean_advantage"), "advantage_std": mean("advantage_std"),
                         "mean_loss": mean("loss"), "gram": gram.tolist(), "norms": norms[k]})
    result = {
        "task": spec["task"], "student": spec["student"], "seed": int(spec["seed"]), "params": int(n_params),
        "n_minibatches": m, "batch_size": bs, "rollout": rl["rollout"],
        "rollout_dropout": bool(rl["rollout_dropout"]), "sample_seed": seed,
        "projection": "exact" if exact else "countsketch", "dim": int(flat if exact else sketch.dim),
        "resamples": int(spec["resamples"]), "confidence": float(spec["confidence"]),
        "mean_rollout_tokens": float(np.mean(lengths)), "mean_tokens_per_minibatch": float(np.mean(tokens_per_batch)),
        "device": str(device), "seconds": round(time.perf_counter() - started, 2), "rows": out_rows,
    }
    write_json(out_path, result)
    return result


TABLE_COLUMNS = ["task", "student", "seed", "k", "params", "n_minibatches", "batch_size", "rollout", "projection",
                 "dim", "trace_cov", "trace_ci_low", "trace_ci_high", "relative_variance", "relative_ci_low",
                 "relative_ci_high", "mean_sq_norm",
                 "mean_grad_norm", "grad_norm_ci_low", "grad_norm_ci_high", "norm_of_mean", "signal_sq_norm",
                 "mean_return", "advantage_std", "mean_rollout_tokens", "confidence", "resamples"]


def table(paths: list[str]):
    """grad_variance.csv: one row per (task, student, seed, K) from the per-run JSON files."""
    import pandas as pd

    from ketchup.io import read_json

    rows = []
    for path in paths:
        run_ = read_json(path)
        for r in run_["rows"]:
            rows.append({**{c: run_.get(c) for c in TABLE_COLUMNS if c in run_}, **{c: r[c] for c in TABLE_COLUMNS
                                                                                   if c in r}})
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return frame.sort_values(["task", "student", "seed", "k"]).reset_index(drop=True)
