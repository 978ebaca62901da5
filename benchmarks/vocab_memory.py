"""Per-step time and peak memory of every method at a real vocabulary size, against sft in the same run.

Tiny Qwen2 teacher and student (random weights; the cost that grows with the vocabulary is the
[B, T, V] float32 logits of both models, their softmaxes and gradients), vocabulary 49,152
(SmolLM2) and 151,936 (Qwen1.5). Each (vocabulary, method) runs in a fresh process so that its peak
resident memory (ru_maxrss) is its own; "+MiB" is that peak minus the process's peak just before
the first step (models and optimiser state included there), i.e. what the steps themselves add.

    python benchmarks/vocab_memory.py [--steps 3] [--batch 8] [--length 64] [--vocab 49152 151936]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stepbench import METHODS, timed_step  # noqa: E402



def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(vocab: int, method: str, steps: int, batch: int, length: int) -> dict:
    from transformers import AutoModelForCausalLM, Qwen2Config

    from ketchup.batching import Batch
    from ketchup.methods import Objective
    from ketchup.tokenizer import train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer(["a b c d e f g"], 64)  # ids, EOS and padding only; the models' vocabulary is `vocab`

    def model(hidden: int, layers: int):
        return AutoModelForCausalLM.from_config(Qwen2Config(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4 * length,
            tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))

    teacher, student = model(64, 2).eval().requires_grad_(False), model(32, 1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    objective = Objective(method, "decoder", tok, teacher=teacher, max_new_tokens=length, k=4)  # rl: the defaults
    gen = torch.Generator().manual_seed(0)
    times = []
    before = _peak_mib()
    for step in range(steps + 1):  # the first step is a warm-up, not timed
        src = torch.randint(5, vocab, (batch, length), generator=gen)
        tgt = torch.randint(5, vocab, (batch, length), generator=gen)
        tgt[:, -1] = tok.eos_token_id
        b = Batch(src, torch.ones_like(src), tgt, torch.ones_like(tgt, dtype=torch.float))
        seconds, _ = timed_step(objective, student, optimizer, b)
        if step:
            times.append(seconds)
    return {"vocab": vocab, "method": method, "s_per_step": statistics.median(times),
            "peak_mib": _peak_mib(), "step_mib": _peak_mib() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64, help="prompt and target tokens each")
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--one", nargs=2, metavar=("VOCAB", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.steps, args.batch, args.length)))
        return
    rows = []
    for vocab in args.vocab:
        for method in args.methods:
            out = subprocess.run([sys.executable, __file__, "--one", str(vocab), method, "--steps", str(args.steps),
                                  "--batch", str(args.batch), "--length", str(args.length)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"batch={args.batch} length={args.length}+{args.length} steps={args.steps} threads=1 torch={torch.__version__}")
    print(f"{'vocab':>7} {'method':<10} {'s/step':>8} {'x sft':>6} {'peak MiB':>9} {'+MiB':>7} {'x sft':>6}")
    for r in rows:
        base = next(b for b in rows if b["vocab"] == r["vocab"] and b["method"] == "sft")
        print(f"{r['vocab']:>7} {r['method']:<10} {r['s_per_step']:>8.3f} {r['s_per_step'] / base['s_per_step']:>6.2f} "
              f"{r['peak_mib']:>9.0f} {r['step_mib']:>7.0f} {r['step_mib'] / max(base['step_mib'], 1):>6.2f}")


if __name__ == "__main__":
    main()
