"""Time one optimizer step of every method at the default config's student sizes.

Prints seconds per step and target tokens per second, and both as ratios to `sft` measured in the
same run (this machine is noisy: compare ratios, not absolute numbers). Models are built from the
default config with random weights; the teacher is untrained, which does not change the cost.

    python benchmarks/train_step.py [--task gsm8k] [--steps 20] [--config config.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ketchup import config as kconfig  # noqa: E402
from ketchup.batching import make_batch  # noqa: E402
from ketchup.data import records, synthetic  # noqa: E402
from ketchup.methods import Objective  # noqa: E402
from ketchup.models import build_model  # noqa: E402
from ketchup.tokenizer import train_tokenizer  # noqa: E402
from stepbench import METHODS, timed_step  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--task", default="gsm8k")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = kconfig.load(args.config)
    task, spec = args.task, cfg["tasks"][args.task]
    arch, settings = cfg["architecture"], kconfig.optim_settings(cfg)
    examples = [records.to_example(task, {"id": str(i), **r}, spec.get("prompt", ""))
                for i, r in enumerate(synthetic.generate(task, "train", 512, 0))]
    tok = train_tokenizer([t for e in examples for t in (e["source"], e["target"])], cfg["tokenizer"].get("vocab_size", 600))
    teacher = build_model(arch, cfg["teacher"]["model"], tok, seed=0).eval().requires_grad_(False)
    src_len, tgt_len = kconfig.task_lengths(cfg, task)
    bs = settings["batch_size"]
    rows = []
    for student_name, student_spec in cfg["students"].items():
        for method in METHODS:
            torch.manual_seed(0)
            student = build_model(arch, student_spec, tok, seed=0)
            optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
            objective = Objective(method, arch, tok, teacher=teacher, max_new_tokens=tgt_len,
                                  rl=kconfig.rl_settings(cfg), k=spec.get("k", 1))
            times, tokens = [], []
            for step in range(args.steps + 2):  # two warm-up steps are not timed
                chunk = [examples[(step * bs + i) % len(examples)] for i in range(bs)]
                batch = make_batch(tok, [e["source"] for e in chunk], [e["target"] for e in chunk], arch, src_len, tgt_len)
                seconds, n_tokens = timed_step(objective, student, optimizer, batch)
                if step >= 2:
                    times.append(seconds)
                    tokens.append(n_tokens)
            sec = statistics.median(times)
            rows.append({"student": student_name, "method": method, "s_per_step": sec,
                         "tokens_per_s": sum(tokens) / sum(times)})
    print(f"task={task} arch={arch} batch={bs} steps={args.steps} threads={args.threads} torch={torch.__version__}")
    print(f"{'student':<8} {'method':<10} {'s/step':>8} {'x sft':>7} {'tok/s':>9} {'x sft':>7}")
    for row in rows:
        base = next(r for r in rows if r["student"] == row["student"] and r["method"] == "sft")
        print(f"{row['student']:<8} {row['method']:<10} {row['s_per_step']:>8.4f} {row['s_per_step'] / base['s_per_step']:>7.2f} "
              f"{row['tokens_per_s']:>9.0f} {row['tokens_per_s'] / base['tokens_per_s']:>7.2f}")


if __name__ == "__main__":
    main()
