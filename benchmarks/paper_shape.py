"""One optimizer step of every method at the paper's model shapes, on a GPU.

Builds the paper's seq2seq models from their published shapes with random weights (Flan-T5-XL as
the teacher in bf16, T5-small/base/large students; no download needed: the weights do not change
the cost) and times a full training step of each method (rollout, teacher pass, loss, backward,
AdamW) at the reference's batch shape, with the student in bf16 autocast. Prints seconds per step,
target tokens per second and peak GPU memory, each also as a ratio to `sft` in the same run.

    python benchmarks/paper_shape.py [--students base] [--batch 8] [--source-len 512] [--target-len 128] \
        [--cache auto|dynamic|static] [--compile auto|true|false]

``--cache`` / ``--compile`` are ``generation.cache`` / ``generation.compile`` for the rollouts and samples
(auto: a static cache, compiled, on a GPU); run once with ``--cache dynamic --compile false`` for
the eager baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import functools
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForSeq2SeqLM, T5Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ketchup.batching import Batch, Decoding  # noqa: E402
from ketchup.methods import Objective  # noqa: E402
from stepbench import METHODS, timed_step  # noqa: E402

VOCAB = 32128  # T5's SentencePiece vocabulary (with padding rows)
SHAPES = {  # the published configs of google/flan-t5-xl and google-t5/t5-{small,base,large}
    "xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32, feed_forward_proj="gated-gelu",
               tie_word_embeddings=False),
    "small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "large": dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
}


def build(shape: str, dtype=None):
    config = T5Config(vocab_size=VOCAB, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      dropout_rate=0.1, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialise on the GPU: a 3B model takes a minute on the CPU
        model = AutoModelForSeq2SeqLM.from_config(config)
    return model.to(dtype) if dtype else model


def batch(n: int, src: int, tgt: int, step: int) -> Batch:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(2, VOCAB, (n, src), generator=g)
    ids[:, -1] = 1
    target = torch.randint(2, VOCAB, (n, tgt), generator=g)
    target[:, -1] = 1
    return Batch(ids, torch.ones_like(ids), target, torch.ones(n, tgt)).to("cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", nargs="+", default=["base"], choices=["small", "base", "large"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source-len", type=int, default=512)
    parser.add_argument("--target-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--cache", default="auto", choices=["auto", "dynamic", "static"])
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("paper_shape: needs a CUDA GPU")
    bf16 = functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=None)
    teacher = build("xl", torch.bfloat16).eval().requires_grad_(False)
    decoding = Decoding(args.cache, {"true": True, "false": False}.get(args.compile, "auto"))
    rows = []
    for size in args.students:
        for method in METHODS:
            student = build(size).train()
            optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
            objective = Objective(method, "seq2seq", tok, teacher=teacher, max_new_tokens=args.target_len,
                                  k=4, decoding=decoding)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times, tokens = [], []
            for step in range(args.steps + 1):  # the first step is a warm-up
                b = batch(args.batch, args.source_len, args.target_len, step)
                torch.cuda.synchronize()
                seconds, n_tokens = timed_step(objective, student, optimizer, b, bf16)
                torch.cuda.synchronize()  # the step's kernels finish inside the next step's timer otherwise
                if step:
                    times.append(seconds)
                    tokens.append(n_tokens)
            rows.append({"student": size, "method": method, "s_per_step": statistics.median(times),
                         "tokens_per_s": sum(tokens) / sum(times),
                         "peak_mib": torch.cuda.max_memory_allocated() / 2**20})
            del student, optimizer, objective
            torch.cuda.empty_cache()
    print(f"paper shapes: teacher flan-t5-xl (bf16), batch {args.batch} x source {args.source_len} x target "
          f"{args.target_len}, {args.steps} timed steps, decoding {decoding.resolved(torch.device('cuda'))} "
          f"(cache, compiled), {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"{'student':<7} {'method':<10} {'s/step':>7} {'x sft':>6} {'tok/s':>8} {'peak MiB':>9} {'x sft':>6}")
    for r in rows:
        base = next(x for x in rows if x["student"] == r["student"] and x["method"] == "sft")
        print(f"{r['student']:<7} {r['method']:<10} {r['s_per_step']:>7.3f} {r['s_per_step'] / base['s_per_step']:>6.2f} "
              f"{r['tokens_per_s']:>8.0f} {r['peak_mib']:>9.0f} {r['peak_mib'] / base['peak_mib']:>6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
