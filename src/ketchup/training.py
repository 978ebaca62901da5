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
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration
from tqdm import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import get_length_grouped_indices

from ketchup import checkpoints
from ketchup.batching import collate, encode_sources, encode_targets
from ketchup.checkpoints import disk_errors
from ketchup.config import OPTIM_DEFAULTS
from ketchup.io import atomic_path, write_json
from ketchup.methods import Objective


@dataclass
class TokenData:
    """Training examples as token ids: ``pair(i, epoch) -> (source_ids, target_ids)`` of example ``i``
    of ``n`` (each ended with EOS; decoder-only sources are prompts). A pure function of its
    arguments, so a resumed run sees the same data; it may differ between epochs (the span
    corruption of ``ketchup.pretraining``)."""
    n: int
    pair: Callable[[int, int], tuple[list[int], list[int]]]

    def lengths(self) -> tuple[int, ...]:
        """Tokens of each example (source + target) in epoch 0: what ``group_by_length`` sorts by."""
        return tuple(len(s) + len(t) for s, t in (self.pair(i, 0) for i in range(self.n)))


@dataclass
class TrainData:
    sources: list[str]
    targets: list[str]

    def encode(self, tokenizer, arch: str, max_source_length: int, max_target_length: int) -> TokenData:
        """Tokenised once: every epoch sees the same ids, and a micro-batch is only padded together."""
        source_ids = encode_sources(tokenizer, self.sources, arch, max_source_length)
        target_ids = encode_targets(tokenizer, self.targets, max_target_length)
        return TokenData(len(source_ids), lambda i, epoch: (source_ids[i], target_ids[i]))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank`` of a data-parallel run seeded ``seed``: ``seed`` itself on the main
    process (a one-process run is unchanged), a stream of its own on every other, so that the
    processes draw different samples and dropout masks (the data order comes from ``seed`` alone)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


# Bumped when the checkpoint layout changes, so older checkpoints are never loaded.
CHECKPOINT_FORMAT = 2


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def _micro_batch_indices(n: int, batch_size: int, seed: int, epoch: int,
                         lengths: tuple[int, ...] | None = None) -> list[list[int]]:
    """Seeded shuffle for one epoch; recomputable, so a resumed run sees the same order.

    With ``lengths`` (``train.group_by_length``), examples of similar length share a micro-batch,
    so it pads little: Hugging Face's length-grouped order (random mega-batches of up to 50
    micro-batches, each sorted by length), cut into micro-batches whose order is then shuffled, so
    that an epoch has no long-to-short ramp. Every example still appears once per epoch.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if lengths is None:
        order = torch.randperm(n, generator=generator).tolist()
        return [order[i: i + batch_size] for i in range(0, n, batch_size)]
    order = get_length_grouped_indices(list(lengths), batch_size, generator=generator)
    batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]


def train(model, tokenizer, objective: Objective, data: TrainData | TokenData, settings: dict[str, Any], *,
          arch: str, seed: int, evaluate: Callable[[Any], float], ckpt_dir: str | Path, out_dir: str | Path,
          max_source_length: int, max_target_length: int, run_info: dict[str, Any],
          identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` with ``objective``; save the dev-best model to ``out_dir`` (atomically).

    ``data``: texts (tokenised here, to ``max_source_length`` / ``max_target_length``) or token ids.
    ``evaluate(model) -> float`` gives the dev metric (higher is better). ``ckpt_dir`` holds the
    resumable state: it is outside the pipeline's declared outputs so a rerun finds it. ``identity``
    is everything else that determines the run (the stage's whole spec and the digests of its input
    files): with ``settings``, seed, data size and process count it makes the resume fingerprint, so
    a checkpoint is reused only by the very run that wrote it.
    """
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    settings = {**OPTIM_DEFAULTS, **settings}  # a hand-written spec may leave keys to the schema
    # split_batches: the scheduler steps once per optimizer step, whatever the number of processes
    # (accelerate otherwise steps it once per process, for a data loader's per-process batches; the
    # loop counts total_steps in optimizer steps). No data loader is prepared, so it changes nothing else.
    # The accelerator's state is one per process: a second run in the process (tests; a teacher trained
    # in bf16 before an fp32 student) sets its own precision. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=settings["mixed_precision"], cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    set_seed(rank_seed(seed, accelerator.process_index))
    if settings["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    if isinstance(data, TrainData):
        data = data.encode(tokenizer, arch, max_source_length, max_target_length)
    n, bs, accum = data.n, settings["batch_size"], settings["grad_accum"]
    lengths = data.lengths() if settings["group_by_length"] else None
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_per_epoch = math.ceil(n / bs)
    steps_per_epoch = max(1, micro_per_epoch // (accum * world))
    total_steps = settings["max_steps"] or max(1, round(settings["epochs"] * steps_per_epoch))
    # A step is one batch of rollouts (for methods without rollouts, of data); it makes
    # objective.updates_per_step optimizer updates (1 but for PPO). The schedule advances once per
    # update, over warmup and total lengths counted in steps, so an lr is reached at the same
    # fraction of training whatever the number of updates per step.
    per_step = objective.updates_per_step
    if settings["lr_schedule"] == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, settings["warmup_steps"] * per_step,
                                                    total_steps * per_step)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, settings["warmup_steps"] * per_step)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if objective.teacher is not None:
        objective.teacher = objective.teacher.to(accelerator.device).eval().requires_grad_(False)

    key = fingerprint({"run": run_info, "identity": identity, "settings": settings, "seed": seed, "n": n,
                       "world": world, "format": CHECKPOINT_FORMAT})
    ckpt = _Checkpoints(ckpt_dir, accelerator)
    state = ckpt.resume(key, total_steps)

    def evaluate_and_keep_best(step: int) -> None:
        score = float(evaluate(accelerator.unwrap_model(model)))
        ckpt.log({"step": step, "dev_metric": score})
        # The starting point is logged (training curves) but is no candidate: every method's
        # result comes from its own updates, so an RL run cannot silently return its KL init.
        if step > 0 and score > state["best_score"]:
            state.update(best_score=score, best_step=step)
            ckpt.save_best(accelerator.unwrap_model(model), step)

    if state["step"] == 0:
        evaluate_and_keep_best(0)

    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {run_info.get('name', '')}",
               file=sys.stderr, mininterval=2.0, disable=not accelerator.is_main_process)
    while state["step"] < total_steps:
        step = state["step"]
        started = time.perf_counter()
        micro, micro_ids = [], []
        for j in range(accum):
            m = (step * accum + j) * world + rank
            micro_ids.append(m)
            epoch, within = divmod(m, micro_per_epoch)
            pairs = [data.pair(i, epoch) for i in _micro_batch_indices(n, bs, seed, epoch, lengths)[within]]
            batch = collate([s for s, _ in pairs], [t for _, t in pairs], tokenizer.pad_token_id,
                            arch).to(accelerator.device)
            micro.append(objective.rollout(accelerator.unwrap_model(model), batch))
        updates, batch_stats = objective.updates(accelerator.unwrap_model(model), micro, seed=seed,
                                                 micro_ids=micro_ids)
        if world > 1 and batch_stats:  # of the whole rollout batch: rollouts summed, the rest weighed by them
            rollouts = batch_stats.pop("rollouts")
            total, sums = _across_processes(accelerator, rollouts, {k: v * rollouts for k, v in batch_stats.items()})
            batch_stats = {**{k: v / total for k, v in sums.items()}, "rollouts": total}
        done = [result for update in updates
                if (result := _optimizer_step(accelerator, model, optimizer, scheduler, objective, update, settings))]
        row, stats = _step_row(done, batch_stats, several=len(updates) > 1)
        state["step"] = step + 1
        ckpt.log({"step": state["step"], "epoch": (state["step"] * accum * world) / micro_per_epoch, **row,
                  "seconds": time.perf_counter() - started, **stats, **_cuda_memory()})
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
        if state["step"] % settings["eval_every"] == 0 or state["step"] == total_steps:
            evaluate_and_keep_best(state["step"])
        if state["step"] % settings["checkpoint_every"] == 0 or state["step"] == total_steps:
            ckpt.save(state)
    bar.close()

    accelerator.wait_for_everyone()
    summary = {"best_step": state["best_step"], "best_dev_metric": state["best_score"], "steps": total_steps,
               **run_info}
    if accelerator.is_main_process:
        with disk_errors(out_dir), atomic_path(out_dir) as tmp:
            checkpoints.copy_contents(ckpt.best_dir(state["best_step"]), tmp)
            tokenizer.save_pretrained(tmp)
            shutil.copy(ckpt.log_path, tmp / "metrics.jsonl")
            write_json(tmp / "train_summary.json", summary)
    return summary


def _optimizer_step(accelerator: Accelerator, model, optimizer, scheduler, objective: Objective,
                    micro: list[dict], settings: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]] | None:
    """One update from the rolled-out micro-batches; the loss is normalised over the whole optimizer
    step (after generation, across gradient accumulation and processes): by its real target tokens,
    or for RL with ``rl.normalize: sequence`` by its sequences (``objectives.normalization``).

    An update with nothing to normalise on any process (a PPO minibatch of stand-in rows only) is
    skipped and gives None: AdamW would still move the weights on its momentum and weight decay, and
    the scheduler would spend a step. The logged statistics weigh each micro-batch by its real rows
    (stand-in rows weigh nothing), over all processes."""
    world = accelerator.num_processes
    rows = [objective.real_rows(mb) for mb in micro]
    counts = torch.tensor([sum(objective.real_tokens(mb) for mb in micro), sum(objective.units(mb) for mb in micro),
                           sum(rows)], device=accelerator.device)
    tokens, units, all_rows = accelerator.reduce(counts, "sum") if world > 1 else counts
    if float(units) == 0.0:
        return None
    loss_total, stats_sum = 0.0, {}
    for mb, n_rows in zip(micro, rows):
        per_token, mask, stats = objective.loss(model, mb)
        loss = per_token.sum() / units.clamp(min=1.0) * world  # DDP averages over processes
        accelerator.backward(loss)
        loss_total += float(loss.detach()) / world
        weight = n_rows / float(all_rows)  # exactly 1.0 for a lone micro-batch: its statistics unchanged
        for k, v in stats.items():
            stats_sum[k] = stats_sum.get(k, 0.0) + v * weight
    if world > 1:  # the logged loss and statistics are of the whole step, all processes' micro-batches
        loss_total, stats_sum = _across_processes(accelerator, loss_total, stats_sum)
    if settings["max_grad_norm"]:
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), settings["max_grad_norm"]))
    else:
        grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_total, "tokens": float(tokens), "grad_norm": grad_norm,
            "lr": scheduler.get_last_lr()[0]}, stats_sum


def _step_row(results: list[tuple[dict[str, float], dict[str, float]]], batch_stats: dict[str, float],
              several: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """One log row per step from the rows of the updates it made: one update's as it is; of a step
    planned as ``several`` (PPO): loss, grad_norm and the loss's statistics averaged over the updates
    made (skipped ones, ``_optimizer_step``, are not counted), the lr after the last, the tokens of all
    updates (each pass counts the batch's tokens once), the number of updates, the last update's
    approx_kl (old policy against the one the last update started from). Then ``batch_stats``
    (``Objective.updates``: rollouts, returns, advantages, rewards, the rollout policy's mean_entropy);
    an update statistic of the same name as one of those is logged as ``update_<name>``."""
    if not several:
        row, stats = results[0]
    else:
        rows = [r for r, _ in results]
        n = len(rows)
        row = {"loss": sum(r["loss"] for r in rows) / n, "tokens": sum(r["tokens"] for r in rows),
               "grad_norm": sum(r["grad_norm"] for r in rows) / n, "lr": rows[-1]["lr"], "updates": n}
        stats = {k: sum(s[k] for _, s in results) / n for k in results[0][1]}
        if "approx_kl" in results[-1][1]:
            stats["approx_kl_last"] = results[-1][1]["approx_kl"]
    return row, {**batch_stats, **{f"update_{k}" if k in batch_stats else k: v for k, v in stats.items()}}


def _across_processes(accelerator: Accelerator, loss: float, stats: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The sums over the processes of their loss shares and of their statistics (each already weighed
    by its share of the step's rows), as one process running all the micro-batches would log them."""
    names = sorted(stats)
    values = torch.tensor([loss, *(stats[k] for k in names)], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, "sum")
    return float(values[0]), {k: float(v) for k, v in zip(names, values[1:])}


class _Checkpoints:
    """The resumable state of one run under ``ckpt_dir``.

    ``last`` and ``prev`` are the two newest sealed checkpoints (optimizer, RNG and trainer state,
    and the metrics log up to that step); ``best-{step}`` holds the dev-best model each of them
    refers to; ``metrics.jsonl`` is the live log. Only the main process writes.
    """

    def __init__(self, ckpt_dir: Path, accelerator: Accelerator):
        self.dir, self.accelerator = ckpt_dir, accelerator
        self.last, self.prev = ckpt_dir / "last", ckpt_dir / "prev"
        self.log_path = ckpt_dir / "metrics.jsonl"

    def best_dir(self, step: int | None) -> Path:
        return self.dir / f"best-{step}"

    def resume(self, key: str, total_steps: int) -> dict[str, Any]:
        """The state to continue from: the newest good checkpoint of this fingerprint, or a fresh one."""
        fresh = {"step": 0, "best_score": -math.inf, "best_step": None, "fingerprint": key}
        for folder in (self.last, self.prev):
            if not folder.exists():
                continue
            if (bad := checkpoints.problem(folder)) is None:
                state = json.loads((folder / "trainer_state.json").read_text())
                if state["fingerprint"] != key:
                    self.accelerator.print(f"checkpoint {folder} belongs to another configuration or other inputs "
                                           f"(fingerprint {state['fingerprint']}, this run {key}): starting over",
                                           file=sys.stderr)
                    break
                best = self.best_dir(state["best_step"])
                if state["best_step"] is None or (bad := checkpoints.problem(best)) is None:
                    # Each process loads its own random states (random_states_{rank}.pkl).
                    self.accelerator.load_state(str(folder))
                    if self.accelerator.is_main_process:
                        shutil.copy(folder / "metrics.jsonl", self.log_path)  # the log as it was at that step
                    self.accelerator.print(f"resuming from step {state['step']} of {total_steps} ({folder})",
                                           file=sys.stderr)
                    return state
                bad = f"its best model {best.name}: {bad}"
            self.accelerator.wait_for_everyone()  # every process has read the folder before it is moved
            if self.accelerator.is_main_process:
                checkpoints.set_aside(folder, bad)
        else:
            if self.dir.exists() and any(self.dir.iterdir()):
                self.accelerator.print(f"no usable checkpoint in {self.dir}: starting from scratch", file=sys.stderr)
        self.accelerator.wait_for_everyone()  # every process has read the folders before they are deleted
        if self.accelerator.is_main_process:
            for path in self.dir.glob("*") if self.dir.exists() else []:
                if ".bad-" not in path.name:  # set-aside checkpoints stay for inspection
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            self.dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        return fresh

    def log(self, row: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with self.log_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    def save_best(self, model, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        final = self.best_dir(step)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with disk_errors(tmp):
            model.save_pretrained(tmp)
            checkpoints.seal(tmp)
        checkpoints.install(tmp, final)

    def save(self, state: dict[str, Any]) -> None:
        """Seal a checkpoint of ``state`` as ``last`` (the old one becomes ``prev``), then drop the best
        models neither refers to. Every process writes its own random states into it (its stream
        resumes where it stopped), the main process everything else."""
        main = self.accelerator.is_main_process
        tmp = self.dir / "last.tmp"
        self.accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            with disk_errors(tmp):
                self.accelerator.save_state(str(tmp))
                self.accelerator.wait_for_everyone()
                if main:
                    (tmp / "trainer_state.json").write_text(json.dumps(state))
                    shutil.copy(self.log_path, tmp / "metrics.jsonl")
                    checkpoints.seal(tmp)
        except BaseException:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written checkpoint behind
            raise
        if not main:
            return
        checkpoints.install(tmp, self.last, previous=self.prev)
        keep = {self.best_dir(json.loads((f / "trainer_state.json").read_text())["best_step"]).name
                for f in (self.last, self.prev) if f.exists()}
        for old in self.dir.glob("best-*"):
            if old.name not in keep and ".bad-" not in old.name:
                shutil.rmtree(old, ignore_errors=True)


def _cuda_memory() -> dict[str, float]:
    """Peak GPU memory so far (MiB), logged per step on CUDA (benchmarks/gpu_smoke.sh reads it)."""
    if not torch.cuda.is_available():
        return {}
    return {"cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20}
