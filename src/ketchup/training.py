"""The one training loop: teacher fine-tuning and every student method run through ``train``.

It runs on ``accelerate`` (CPU, one GPU or several), normalises the loss by the number of real
target tokens across gradient accumulation (and processes), evaluates the dev metric, keeps the
best checkpoint, and checkpoints regularly so that a killed run resumes where it stopped and ends
with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import get_constant_schedule_with_warmup

from ketchup.batching import collate, encode_sources, encode_targets
from ketchup.io import atomic_path, write_json
from ketchup.methods import Objective


@dataclass
class TrainData:
    sources: list[str]
    targets: list[str]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def _micro_batch_indices(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Seeded shuffle for one epoch; recomputable, so a resumed run sees the same order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


def train(model, tokenizer, objective: Objective, data: TrainData, settings: dict[str, Any], *,
          arch: str, seed: int, evaluate: Callable[[Any], float], ckpt_dir: str | Path, out_dir: str | Path,
          max_source_length: int, max_target_length: int, run_info: dict[str, Any]) -> dict[str, Any]:
    """Train ``model`` with ``objective``; save the dev-best model to ``out_dir`` (atomically).

    ``evaluate(model) -> float`` gives the dev metric (higher is better). ``ckpt_dir`` holds the
    resumable state: it is outside the pipeline's declared outputs so a rerun finds it.
    """
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    accelerator = Accelerator(mixed_precision=settings["mixed_precision"], cpu=not torch.cuda.is_available())
    set_seed(seed)
    if settings["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    scheduler = get_constant_schedule_with_warmup(optimizer, settings["warmup_steps"])
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if objective.teacher is not None:
        objective.teacher = objective.teacher.to(accelerator.device).eval().requires_grad_(False)

    n, bs, accum = len(data.sources), settings["batch_size"], settings["grad_accum"]
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_per_epoch = math.ceil(n / bs)
    steps_per_epoch = max(1, micro_per_epoch // (accum * world))
    total_steps = settings["max_steps"] or max(1, round(settings["epochs"] * steps_per_epoch))

    key = fingerprint({"run": run_info, "settings": settings, "seed": seed, "n": n, "world": world})
    state = {"step": 0, "best_score": -math.inf, "best_step": None, "fingerprint": key}
    last, best = ckpt_dir / "last", ckpt_dir / "best"
    log_path = ckpt_dir / "metrics.jsonl"
    if (last / "trainer_state.json").exists() and json.loads((last / "trainer_state.json").read_text())["fingerprint"] == key:
        accelerator.load_state(str(last))
        state = json.loads((last / "trainer_state.json").read_text())
        _truncate_log(log_path, state["step"])
        accelerator.print(f"resuming from step {state['step']} of {total_steps} ({last})", file=sys.stderr)
    else:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # stale state from another config: start over
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # Tokenise once: every micro-batch is then only padded together.
    source_ids = encode_sources(tokenizer, data.sources, arch, max_source_length)
    target_ids = encode_targets(tokenizer, data.targets, max_target_length)

    def log(row: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with log_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    def evaluate_and_keep_best(step: int) -> None:
        score = float(evaluate(accelerator.unwrap_model(model)))
        log({"step": step, "dev_metric": score})
        # The starting point is logged (training curves) but is no candidate: every method's
        # result comes from its own updates, so an RL run cannot silently return its KL init.
        if step > 0 and score > state["best_score"]:
            state.update(best_score=score, best_step=step)
            if accelerator.is_main_process:
                with atomic_path(best) as tmp:
                    accelerator.unwrap_model(model).save_pretrained(tmp)

    if state["step"] == 0:
        evaluate_and_keep_best(0)

    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {run_info.get('name', '')}",
               file=sys.stderr, mininterval=2.0, disable=not accelerator.is_main_process)
    while state["step"] < total_steps:
        step = state["step"]
        started = time.perf_counter()
        micro = []
        for j in range(accum):
            m = (step * accum + j) * world + rank
            epoch, within = divmod(m, micro_per_epoch)
            idx = _micro_batch_indices(n, bs, seed, epoch)[within]
            batch = collate([source_ids[i] for i in idx], [target_ids[i] for i in idx], tokenizer.pad_token_id,
                            arch).to(accelerator.device)
            micro.append(objective.rollout(accelerator.unwrap_model(model), batch))
        # Normalise by the real target tokens of the whole optimizer step, after generation.
        tokens = torch.tensor(sum(float(b.target_mask.sum()) for mb in micro for b in mb.values()),
                              device=accelerator.device)
        tokens = accelerator.reduce(tokens, "sum") if world > 1 else tokens
        loss_total, stats_sum = 0.0, {}
        for mb in micro:
            per_token, mask, stats = objective.loss(model, mb)
            loss = per_token.sum() / tokens.clamp(min=1.0) * world  # DDP averages over processes
            accelerator.backward(loss)
            loss_total += float(loss.detach()) / world
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v / accum
        grad_norm = None
        if settings["max_grad_norm"]:
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), settings["max_grad_norm"]))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step + 1
        log({"step": state["step"], "epoch": (state["step"] * accum * world) / micro_per_epoch, "loss": loss_total,
             "tokens": float(tokens), "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
             "seconds": time.perf_counter() - started, **stats_sum, **_cuda_memory()})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_total:.3f}", refresh=False)
        if state["step"] % settings["eval_every"] == 0 or state["step"] == total_steps:
            evaluate_and_keep_best(state["step"])
        if state["step"] % settings["checkpoint_every"] == 0 or state["step"] == total_steps:
            _save_checkpoint(accelerator, last, state)
    bar.close()

    accelerator.wait_for_everyone()
    summary = {"best_step": state["best_step"], "best_dev_metric": state["best_score"], "steps": total_steps,
               **run_info}
    if accelerator.is_main_process:
        with atomic_path(out_dir) as tmp:
            shutil.copytree(best, tmp)
            tokenizer.save_pretrained(tmp)
            shutil.copy(log_path, tmp / "metrics.jsonl")
            write_json(tmp / "train_summary.json", summary)
    return summary


def _save_checkpoint(accelerator: Accelerator, last: Path, state: dict[str, Any]) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    tmp = last.with_name("last.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    shutil.rmtree(last, ignore_errors=True)
    tmp.rename(last)


def _cuda_memory() -> dict[str, float]:
    """Peak GPU memory so far (MiB), logged per step on CUDA (benchmarks/gpu_smoke.sh reads it)."""
    if not torch.cuda.is_available():
        return {}
    return {"cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from, so the log has no duplicates."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
