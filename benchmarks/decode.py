"""New tokens per second of every decode path: dynamic cache, static cache, static cache + compiled
decode step, for both architectures, measured in one run (interleaved rounds, medians).

CPU (default): the default config's shapes, seq2seq (its teacher and both students, T5 built from
config) and decoder-only (the tiny causal pair of the peer benchmark: Qwen2 4 x 256 and 2 x 128), at
the default's generation batch (100) and xsum's lengths (96 source tokens, 20 new tokens).
GPU (``--paper``): the paper's T5 shapes (benchmarks/paper_shape.py's table, random weights, bf16),
batch 32, 512 source tokens, 128 new tokens.

Random weights never emit EOS early, so every row decodes all ``--new-tokens``: the count per
second is the decode's own speed. Also printed: the first call of each path (a compiled path
compiles then), and the share of greedy tokens equal to the dynamic cache's (1.0 in fp32; bf16 near
ties can flip an argmax).

    python benchmarks/decode.py [--rounds 5] [--threads 2] [--no-compile]
    python benchmarks/decode.py --paper --device cuda [--models base xl]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, Qwen2Config, T5Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ketchup.batching import Batch, Decoding, generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAD, EOS, VOCAB_CPU = 0, 1, 600
DECODER = {"teacher 4x256": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2),
           "student 2x128": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)}
PATHS = {"dynamic": Decoding("dynamic", False), "static": Decoding("static", False),
         "static+compile": Decoding("static", True)}


class Tok:  # what generate reads of a tokenizer
    pad_token_id, eos_token_id, bos_token_id = PAD, EOS, None


def models(args) -> list[tuple[str, str, torch.nn.Module]]:
    out = []
    if args.paper:
        from paper_shape import SHAPES, VOCAB
        for name in args.models:
            config = T5Config(vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
                              dropout_rate=0.0, **SHAPES[name])
            torch.manual_seed(0)
            with torch.device(args.device):
                out.append(("seq2seq", f"t5-{name}", AutoModelForSeq2SeqLM.from_config(config).to(torch.bfloat16).eval()))
        return out
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for name, spec in [("teacher", config["teacher"]["model"]), *config["students"].items()]:
        t5 = T5Config(vocab_size=VOCAB_CPU, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
                      **spec["config"])
        torch.manual_seed(0)
        out.append(("seq2seq", f"t5 {name}", AutoModelForSeq2SeqLM.from_config(t5).eval()))
    for name, shape in DECODER.items():
        qwen = Qwen2Config(vocab_size=VOCAB_CPU, pad_token_id=PAD, eos_token_id=EOS, max_position_embeddings=256,
                           tie_word_embeddings=True, **shape)
        torch.manual_seed(0)
        out.append(("decoder", f"qwen2 {name}", AutoModelForCausalLM.from_config(qwen).eval()))
    return out


def sources(n: int, width: int, device: str, vocab: int) -> Batch:
    """Sources of lengths between half and all of ``width`` (padded: right for seq2seq, left for decoder
    prompts; both layouts are made and the caller takes its own)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (n, width), generator=g)
    lengths = torch.randint(width // 2, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    return Batch(ids * mask, mask, torch.zeros(n, 1, dtype=torch.long), torch.zeros(n, 1)).to(device)


def left(batch: Batch) -> Batch:
    order = torch.argsort(batch.attention_mask, dim=1, stable=True)  # padding first
    return Batch(batch.input_ids.gather(1, order), batch.attention_mask.gather(1, order), batch.target_ids,
                 batch.target_mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="the paper's T5 shapes (use with --device cuda)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["base", "xl"], help="with --paper: shapes of paper_shape.py")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--source-len", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="leave out static+compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.batch or (32 if args.paper else 100)
    width = args.source_len or (512 if args.paper else 96)
    new = args.new_tokens or (128 if args.paper else 20)
    paths = {k: v for k, v in PATHS.items() if not (args.no_compile and v.compile)}
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"threads {args.threads}, batch {n}, source {width}, new tokens {new}, rounds {args.rounds}")
    print(f"{'model':<22}{'path':<16}{'first call s':>13}{'tokens/s':>12}{'x dynamic':>11}{'same tokens':>13}")
    for arch, name, model in models(args):
        vocab = model.config.vocab_size
        batch = sources(n, width, args.device, vocab)
        batch = left(batch) if arch == "decoder" else batch
        first, times, outputs = {}, {p: [] for p in paths}, {}
        for path, decoding in paths.items():  # first calls (a compiled path compiles here)
            start = time.perf_counter()
            outputs[path] = generate(model, arch, batch, Tok, new, decoding=decoding).target_ids
            first[path] = time.perf_counter() - start
        for _ in range(args.rounds):
            for path, decoding in paths.items():
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                generate(model, arch, batch, Tok, new, decoding=decoding)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[path].append(time.perf_counter() - start)
        base = statistics.median(times["dynamic"])
        for path in paths:
            t = statistics.median(times[path])
            tokens = outputs[path].numel()
            agree = float((outputs[path] == outputs["dynamic"]).float().mean())
            print(f"{name:<22}{path:<16}{first[path]:>13.2f}{tokens / t:>12.0f}{base / t:>11.2f}{agree:>13.3f}")


if __name__ == "__main__":
    main()
