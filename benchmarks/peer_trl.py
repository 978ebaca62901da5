"""Our ketchup training step against TRL's DistillationTrainer on the same tiny causal pair and batch.

Both train a Qwen2 student (2 layers x 128 hidden) from a Qwen2 teacher (4 layers x 256 hidden), built
with random weights from config (the same seed, so both students start identical) over a tokenizer
trained here on the task's synthetic data (default config). Both decode the same 16 prompts (the
task's first training examples, token for token the same: checked) for up to 32 new tokens, run the
teacher on the rollouts, take a loss and one clipped AdamW step. The steps are interleaved, theirs,
ours, theirs, ours ..., each TRL step inside ``trainer.train()`` (its own loop, timed from
``on_step_begin`` to ``on_step_end`` by a callback, which then runs our step), after warm-up steps
of each that are not counted. Ours is one step of ``ketchup.training``: collate, ``Objective.rollout``
and ``training._optimizer_step`` (loss, backward, clip, AdamW, scheduler). Its breakdown (rollout,
teacher forward, student forward + loss + backward + clip, AdamW) is measured in the same steps.

It prints the median milliseconds per step of each, the ratio theirs / ours (the median of the
paired ratios, and the ratio of the medians), the breakdowns, and what differs between the two
steps. Wall-clock times on a shared machine are noisy: quote the ratios of one run, with the load
average it prints.

TRL is a benchmark-only extra (never imported by the package or the tests)::

    pip install -e '.[bench]'          # or just: pip install trl==1.16.0
    PYTHONPATH=src python benchmarks/peer_trl.py [--steps 20] [--warmup 3] [--threads 1]
        [--rollout greedy|sample] [--cache dynamic|static] [--compile] [--beta 1.0]

``--cache`` and ``--compile`` go to our Objective's decodes (``generation.cache`` / ``generation.compile``:
a static KV cache / compiled decoding in ``batching.generate``). TRL gets the same
cache (its ``cache_implementation``); it builds its generation config with ``disable_compile=True``,
so ``--compile`` is ours only (give it enough ``--warmup`` steps to compile before timing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# TRL 1.16 still uses transformers' deprecated gradient_checkpointing names: not ours to act on.
warnings.filterwarnings("ignore", category=FutureWarning)

try:
    import trl
    from trl import DistillationConfig, DistillationTrainer
except ImportError as error:  # a benchmark-only extra: say how to get it
    raise SystemExit(f"benchmarks/peer_trl.py needs TRL: pip install -e '.[bench]' ({error})")

import datasets  # noqa: E402
import transformers  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import PrinterCallback, TrainerCallback, get_constant_schedule  # noqa: E402

from ketchup import config as kconfig  # noqa: E402
from ketchup import training  # noqa: E402
from ketchup.batching import Decoding, collate, decoder_prompts, encode_sources  # noqa: E402
from ketchup.data import records, synthetic  # noqa: E402
from ketchup.methods import Objective  # noqa: E402
from ketchup.models import build_model, n_parameters  # noqa: E402
from ketchup.tokenizer import train_tokenizer  # noqa: E402

ARCH = "decoder"
METHOD = "ketchup"
STUDENT = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True}
TEACHER = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True}
LR = 1e-4
MAX_GRAD_NORM = 1.0  # both clip at the schema's default


def decoding_options(cache: str, compile_: bool) -> tuple[dict, str, list[str]]:
    """The Objective keyword for ``--cache`` / ``--compile`` (``decoding``: ketchup.batching.Decoding),
    the cache both sides then decode with, and notes (none: every setting is supported)."""
    return {"decoding": Decoding(cache, compile_)}, cache, []


class Ours:
    """One optimizer step as ``ketchup.training.train`` takes it, timed in parts."""

    def __init__(self, objective: Objective, student, tokenizer, source_ids: list[list[int]]):
        self.objective, self.tokenizer, self.source_ids = objective, tokenizer, source_ids
        self.accelerator = Accelerator(cpu=True)
        optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            student, optimizer, get_constant_schedule(optimizer))
        self.settings = {"max_grad_norm": MAX_GRAD_NORM}
        self.parts = {"teacher": 0.0, "adamw": 0.0}
        teacher_logits = objective._teacher_logits  # the instance attribute shadows the method

        def timed_teacher(batch):
            start = time.perf_counter()
            try:
                return teacher_logits(batch)
            finally:
                self.parts["teacher"] += time.perf_counter() - start

        objective._teacher_logits = timed_teacher
        # hooks on the torch optimizer itself, under accelerate's wrapper
        optimizer.register_step_pre_hook(lambda *_: self.parts.__setitem__("adamw_start", time.perf_counter()))
        optimizer.register_step_post_hook(lambda *_: self.parts.__setitem__(
            "adamw", self.parts["adamw"] + time.perf_counter() - self.parts["adamw_start"]))

    def step(self) -> dict[str, float]:
        self.parts.update(teacher=0.0, adamw=0.0)
        self.model.train()
        start = time.perf_counter()
        batch = collate(self.source_ids, None, self.tokenizer.pad_token_id, ARCH)
        micro = [self.objective.rollout(self.accelerator.unwrap_model(self.model), batch)]
        rolled = time.perf_counter()
        training._optimizer_step(self.accelerator, self.model, self.optimizer, self.scheduler, self.objective,
                                 micro, self.settings)
        end = time.perf_counter()
        teacher, adamw = self.parts["teacher"], self.parts["adamw"]
        rollout = micro[0]["student"]
        completions = [[t for t, m in zip(ids, mask) if m > 0]
                       for ids, mask in zip(rollout.target_ids.tolist(), rollout.target_mask.tolist())]
        return {"step": end - start, "rollout": rolled - start, "teacher": teacher, "adamw": adamw,
                "student": end - rolled - teacher - adamw, "length": float(rollout.target_mask.sum(1).mean()),
                "completions": completions}


class Paired(TrainerCallback):
    """Times each TRL step (on_step_begin to on_step_end), then runs one step of ours."""

    def __init__(self, ours: Ours, trainer_parts: dict[str, float], threads: int):
        self.ours, self.trl_parts, self.threads = ours, trainer_parts, threads
        self.trainer = None
        self.theirs, self.loop, self.mine = [], [], []
        self._begin = self._last_end = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.trl_parts.update(generate=0.0, teacher=0.0)
        self._begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        end = time.perf_counter()
        if torch.get_num_threads() != self.threads:
            raise RuntimeError(f"torch threads changed to {torch.get_num_threads()} during the run")
        lengths = self.trainer._metrics["train"]["completions/mean_length"]
        self.theirs.append({"step": end - self._begin, "generate": self.trl_parts["generate"],
                            "teacher": self.trl_parts["teacher"],
                            "rest": end - self._begin - self.trl_parts["generate"] - self.trl_parts["teacher"],
                            "length": lengths[-1] if lengths else float("nan"),
                            "completions": self.trl_parts["completions"]})
        # Its whole iteration: from the end of our previous step to the end of this one (dataloader,
        # callbacks and logging included).
        self.loop.append(end - self._last_end if self._last_end is not None else float("nan"))
        self.mine.append(self.ours.step())
        self._last_end = time.perf_counter()


def build_trainer(student, teacher, tokenizer, prompts: list[str], args, cache: str, workdir: str):
    config = DistillationConfig(
        output_dir=workdir, use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=args.seed, max_steps=args.warmup + args.steps,
        per_device_train_batch_size=len(prompts), gradient_accumulation_steps=1, shuffle_dataset=False,
        dataloader_num_workers=0,
        # TRL's defaults differ from ours here; set to ours: fp32 and no gradient checkpointing
        bf16=False, fp16=False, gradient_checkpointing=False,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch", max_grad_norm=MAX_GRAD_NORM,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"do_sample": args.rollout == "sample"},
        cache_implementation=None if cache == "dynamic" else cache,
        beta=args.beta,
    )
    dataset = datasets.Dataset.from_dict({"prompt": prompts})
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                                  processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    if trainer.model.is_gradient_checkpointing or trainer.args.bf16:
        raise RuntimeError("TRL's trainer kept gradient checkpointing or bf16 on: the steps would not compare")
    return trainer


def time_trl_parts(trainer) -> dict[str, float]:
    """Wrap the trainer's generation and backbone calls so its step is timed in parts."""
    parts = {"generate": 0.0, "teacher": 0.0}
    generate, hidden = trainer._generate_single_turn, trainer._get_last_hidden_state
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)

    def timed_generate(*a, **kw):
        start = time.perf_counter()
        try:
            parts["completions"] = generate(*a, **kw)
            return parts["completions"]
        finally:
            parts["generate"] += time.perf_counter() - start

    def timed_hidden(model, *a, **kw):
        start = time.perf_counter()
        try:
            return hidden(model, *a, **kw)
        finally:
            if model is teacher:
                parts["teacher"] += time.perf_counter() - start

    trainer._generate_single_turn, trainer._get_last_hidden_state = timed_generate, timed_hidden
    return parts


def ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def report(args, paired: Paired, notes: list[str], cache: str, objective_kwargs: dict, shapes: dict,
           load_before, load_after) -> None:
    w = args.warmup
    theirs, mine, loop = paired.theirs[w:], paired.mine[w:], paired.loop[w:]
    if not theirs or len(theirs) != len(mine):
        raise RuntimeError(f"expected {args.steps} timed steps of each, got {len(theirs)} / {len(mine)}")
    ours_ms, theirs_ms = ms([m["step"] for m in mine]), ms([t["step"] for t in theirs])
    ratios = [t["step"] / m["step"] for t, m in zip(theirs, mine)]
    print(f"peer_trl: {METHOD} (ours) vs TRL {trl.__version__} DistillationTrainer; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; threads={torch.get_num_threads()}")
    print(f"student Qwen2 2x128 ({shapes['student']:,} params), teacher Qwen2 4x256 ({shapes['teacher']:,} params), "
          f"vocab {shapes['vocab']}; batch {shapes['batch']} prompts of {shapes['prompt_min']}-{shapes['prompt_max']} "
          f"tokens; max_new_tokens {args.max_new_tokens}; rollout {args.rollout}; cache {cache}; "
          f"ours: K={shapes['k']}, Objective settings {objective_kwargs or 'none (this checkout has no cache/compile)'}")
    for note in notes:
        print(f"NOTE {note}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after} on {os.cpu_count()} CPUs")
    print(f"median over {len(mine)} paired steps after {w} warm-up steps of each, ms per step:")
    parts = [("rollout (collate + generate)", "rollout"), ("teacher forward", "teacher"),
             ("student forward + loss + backward + clip", "student"), ("AdamW step", "adamw")]
    print(f"  ours {'(ketchup step)':<42} {ours_ms:8.1f}")
    for label, key in parts:
        v = ms([m[key] for m in mine])
        print(f"    {label:<44} {v:8.1f}  ({v / ours_ms:4.0%})")
    print(f"    {'sum of the part medians / step median':<44} {sum(ms([m[k] for m in mine]) for _, k in parts) / ours_ms:8.2f}")
    print(f"  theirs {'(DistillationTrainer step)':<40} {theirs_ms:8.1f}")
    for label, key in [("generate", "generate"), ("teacher forward (backbone)", "teacher"),
                       ("rest (tokenize, student, JSD, bwd, clip, AdamW)", "rest")]:
        v = ms([t[key] for t in theirs])
        print(f"    {label:<44} {v:8.1f}  ({v / theirs_ms:4.0%})")
    print(f"  theirs incl. its loop (dataloader, callbacks)   {ms(loop):8.1f}")
    print(f"ratio theirs / ours: {statistics.median(ratios):.2f} (median of paired ratios), "
          f"{theirs_ms / ours_ms:.2f} (ratio of medians), {ms(loop) / ours_ms:.2f} (theirs incl. loop); "
          f"rollout ours / generate theirs {ms([m['rollout'] for m in mine]) / ms([t['generate'] for t in theirs]):.2f}")
    print(f"mean completion length (tokens): ours {statistics.mean(m['length'] for m in mine):.1f}, "
          f"theirs {statistics.mean(t['length'] for t in theirs):.1f}")
    if args.rollout == "greedy":  # identical students and prompts: the first greedy rollouts must agree
        same = paired.theirs[0]["completions"] == paired.mine[0]["completions"]
        print(f"first step's greedy rollouts identical on both sides (same batch check): {'yes' if same else 'NO'}")
    print("What differs:")
    beta = {0.0: "forward KL", 0.5: "JSD", 1.0: "reverse KL"}.get(args.beta, "generalised JSD")
    for line in (
        f"loss: ours KETCHUP's policy-gradient loss (K-step returns from the teacher's logits, "
        f"rewards from full [B, T, V] logits); theirs TRL's generalised JSD at beta={args.beta} ({beta}) between "
        "student and teacher over the full vocabulary, temperature 1, computed from backbone hidden states by "
        "its chunked divergence (on CPU it projects every completion position, padding included, then masks)",
        f"rollout: both {args.rollout} (sampling: T = 1, full softmax), up to {args.max_new_tokens} tokens, stopping "
        "at EOS, the student in train mode (Qwen2's dropouts are 0 here); ours through ketchup.batching.generate, "
        "theirs through its _generate_single_turn (both call transformers' generate)",
        "prompts: the same token ids; theirs tokenizes the prompt texts inside each step, ours collates "
        "pre-encoded ids (as ketchup's training loop does)",
        f"optimizer: both torch AdamW lr {LR}, no weight decay, constant schedule, clip at {MAX_GRAD_NORM}; both fp32, "
        "no gradient checkpointing (TRL's defaults bf16=True and gradient_checkpointing=True overridden)",
        "decoding: TRL's generation config has disable_compile=True, so --compile (if supported) is ours only; "
        f"the cache ({cache}) is the same on both sides",
        "timing: theirs from on_step_begin to on_step_end of its Trainer loop; its dataloader and callbacks are "
        "in 'incl. its loop'; ours from collate to the scheduler step",
    ):
        print(f"  - {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml", help="where the task and the tokenizer size come from")
    parser.add_argument("--task", default="gsm8k")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rollout", choices=["greedy", "sample"], default="greedy",
                        help="greedy: ketchup's default rl.rollout; TRL decodes with do_sample=False then")
    parser.add_argument("--cache", choices=["dynamic", "static"], default="dynamic")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--beta", type=float, default=1.0, help="TRL's generalised JSD beta (its default 1.0: reverse KL)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = tuple(round(x, 2) for x in os.getloadavg())

    cfg = kconfig.load(args.config)
    spec = cfg["tasks"][args.task]
    examples = [records.to_example(args.task, {"id": str(i), **r}, spec.get("prompt", ""))
                for i, r in enumerate(synthetic.generate(args.task, "train", spec.get("n_train", 512), args.seed))]
    tok = train_tokenizer([t for e in examples for t in (e["source"], e["target"])],
                          cfg["tokenizer"].get("vocab_size", 600))
    sources = [e["source"] for e in examples[: args.batch]]
    max_source_length, _ = kconfig.task_lengths(cfg, args.task)
    source_ids = encode_sources(tok, sources, ARCH, max_source_length)
    prompts = decoder_prompts(tok, sources)
    if tok(text=prompts)["input_ids"] != source_ids:  # TRL's tokenisation of the prompt texts
        raise SystemExit("TRL would tokenize the prompts differently from ketchup (a prompt longer than "
                         f"max_source_length {max_source_length}?): the batches would differ")

    objective_kwargs, cache, notes = decoding_options(args.cache, args.compile)
    rl = kconfig.rl_settings(cfg) | {"rollout": args.rollout}
    k = spec.get("k", 1)
    pair = {}
    for side in ("ours", "theirs"):  # the same seeds: both students start identical, both teachers are equal
        teacher = build_model(ARCH, {"config": TEACHER}, tok, seed=args.seed + 1).eval().requires_grad_(False)
        pair[side] = (build_model(ARCH, {"config": STUDENT}, tok, seed=args.seed), teacher)
    objective = Objective(METHOD, ARCH, tok, teacher=pair["ours"][1], max_new_tokens=args.max_new_tokens,
                          rl=rl, k=k, **objective_kwargs)
    ours = Ours(objective, pair["ours"][0], tok, source_ids)
    shapes = {"student": n_parameters(pair["ours"][0]), "teacher": n_parameters(pair["ours"][1]), "vocab": len(tok),
              "batch": len(prompts), "prompt_min": min(map(len, source_ids)),
              "prompt_max": max(map(len, source_ids)), "k": k}

    with tempfile.TemporaryDirectory() as workdir:
        trainer = build_trainer(*pair["theirs"], tok, prompts, args, cache, workdir)
        torch.set_num_threads(args.threads)  # in case building the trainer changed it
        paired = Paired(ours, time_trl_parts(trainer), args.threads)
        paired.trainer = trainer
        trainer.add_callback(paired)
        trainer.train()
    report(args, paired, notes, cache, objective_kwargs, shapes, load_before,
           tuple(round(x, 2) for x in os.getloadavg()))


if __name__ == "__main__":
    main()
