"""The teacher's speed in float32 and in bf16 on this machine: one training step (AdamW, under bf16
autocast or not, as ``teacher.train.mixed_precision``) and one forward pass without gradient (bf16
weights or float32, as ``teacher.dtype``), at the default's teacher architecture and a task's shapes.

    python benchmarks/teacher_precision.py [--config config.yaml] [--task xsum] [--rounds 5]

Rows are random token ids (timing only). Prints the median seconds of each and the bf16 / float32
ratio, the two settings timed in turn within each round. On a CPU without bf16 arithmetic the ratio
can be above 1: the default's bf16 teacher is for CPUs that have it (docs/default.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

from ketchup import config as kconfig  # noqa: E402


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--task", default="xsum")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="steps timed per round and setting")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = kconfig.read(args.config)
    src, tgt = kconfig.task_lengths(config, args.task)
    train_bs = kconfig.teacher_settings(config, args.task)["batch_size"]
    score_bs = kconfig.optim_settings(config, "kl")["batch_size"]
    cfg = T5Config(vocab_size=config["tokenizer"].get("vocab_size", 600), decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1, **config["teacher"]["model"]["config"])
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    frozen = {"float32": T5ForConditionalGeneration(cfg).eval(),
              "bf16": T5ForConditionalGeneration(cfg).eval().to(torch.bfloat16)}
    ids = torch.randint(2, cfg.vocab_size, (train_bs, src))
    labels = torch.randint(2, cfg.vocab_size, (train_bs, tgt))

    def train_step(bf16: bool):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def forward(name: str):
        rows, dec = ids[:score_bs], labels[:score_bs]

        @torch.no_grad()
        def run():
            frozen[name](input_ids=rows, attention_mask=torch.ones_like(rows), decoder_input_ids=dec)
        return run

    times: dict[str, list[float]] = {k: [] for k in ("train float32", "train bf16", "forward float32", "forward bf16")}
    for _ in range(args.rounds):
        times["train float32"].append(_timed(train_step(False), args.repeats))
        times["train bf16"].append(_timed(train_step(True), args.repeats))
        times["forward float32"].append(_timed(forward("float32"), args.repeats))
        times["forward bf16"].append(_timed(forward("bf16"), args.repeats))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"task {args.task}: sources {src} tokens, targets {tgt}; training batch {train_bs}, scoring batch {score_bs}; "
          f"{args.threads} thread(s), {args.rounds} rounds")
    for what in ("train", "forward"):
        a, b = med[f"{what} float32"], med[f"{what} bf16"]
        print(f"{what:8s} float32 {a * 1000:8.1f} ms   bf16 {b * 1000:8.1f} ms   bf16 / float32 {b / a:.2f}")


if __name__ == "__main__":
    main()
