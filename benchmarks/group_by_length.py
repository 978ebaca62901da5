"""What `train.group_by_length` saves, and what it costs on dev.

Speed (default): the synthetic xsum and en_nl training splits, tokenised as the default does, and
the default teacher's architecture; seconds per training step with random micro-batches and with
length-grouped ones (the same examples), alternating, on one thread:

    python benchmarks/group_by_length.py [--steps 20] [--repeats 2]

Quality (``--quality --workdir DIR``, DIR holding a finished default main table): retrains the en_nl
and xsum teachers (seeds 1-3) and the KL students of both sizes (seeds 0-2, on DIR's teachers) with
and without grouping, every other setting as DIR's Snakemake would run them, and prints each model's
metric on the whole dev split. Test data are never read. About 20 minutes of jobs on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

LENGTHS = {"xsum": (96, 20), "en_nl": (32, 16)}  # the default's max source / target lengths


def step_times(task: str, steps: int, repeats: int) -> tuple[float, float]:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from ketchup.batching import collate
    from ketchup.data import sources
    from ketchup.tokenizer import train_tokenizer
    from ketchup.training import TrainData, _micro_batch_indices

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sources.build(task, {"source": "synthetic", "n_train": 2000, "n_dev": 10, "n_test": 10}, 0, tmp)
        examples = sources.examples(task, Path(tmp) / "train.jsonl")
    tok = train_tokenizer([t for e in examples for t in (e["source"], e["target"])], 600)
    data = TrainData([e["source"] for e in examples], [e["target"] for e in examples]).encode(
        tok, "seq2seq", *LENGTHS[task])
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tok), d_model=128, d_kv=32, d_ff=512, num_layers=3, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def run(lengths) -> float:
        batches = _micro_batch_indices(data.n, 64, 0, 0, lengths)[:steps]
        started = time.perf_counter()
        for idx in batches:
            pairs = [data.pair(i, 0) for i in idx]
            b = collate([s for s, _ in pairs], [t for _, t in pairs], tok.pad_token_id, "seq2seq")
            labels = b.target_ids.masked_fill(b.target_mask == 0, -100)
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return (time.perf_counter() - started) / len(batches)

    run(None)  # warm-up
    plain, grouped = [], []
    for _ in range(repeats):
        plain.append(run(None))
        grouped.append(run(data.lengths()))
    return min(plain), min(grouped)


def _command(workdir: Path, stage: str, target: str) -> list[str]:
    """The arguments Snakemake would give ``python -m ketchup`` for ``target`` (a ``stage`` job) in
    ``workdir`` (a dry run also lists upstream jobs whose settings changed: only ``stage``'s counts)."""
    out = subprocess.run(["snakemake", "-n", "-p", "-f", target, "--cores", "1", "-d", str(workdir),
                          "-s", str(REPO / "Snakefile")], capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if f" -m ketchup --threads 1 {stage} " in l)
    return shlex.split(line.split(" -m ketchup ", 1)[1].split(" > ")[0])


def _arg(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def quality_job(job: tuple[str, str, int, bool, str, str]) -> dict:
    """One retraining; returns its whole-dev metric."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ketchup import stages
    from ketchup.data import sources

    kind, cell, seed, group, workdir, out = job
    torch.set_num_threads(1)
    root, out = Path(workdir), Path(out)
    args = (_command(root, "teacher", f"results/models/teacher/{cell}") if kind == "teacher"
            else _command(root, "student", f"results/models/students/{cell}/kl/seed0"))
    spec = json.loads(_arg(args, "--spec"))
    spec["seed"], spec["train"]["group_by_length"] = seed, group
    data = root / _arg(args, "--data")
    if kind == "teacher":
        stages.teacher(spec=spec, data_dir=str(data), tokenizer_dir=str(root / _arg(args, "--tokenizer")),
                       ckpt_dir=str(out / "ckpt"), out_dir=str(out / "model"))
    else:
        stages.student(spec=spec, data_dir=str(data), teacher_outputs_dir=str(root / _arg(args, "--teacher-outputs")),
                       teacher_dir=str(root / _arg(args, "--teacher")), init_dir=str(root / _arg(args, "--init")),
                       ckpt_dir=str(out / "ckpt"), out_dir=str(out / "model"),
                       predictions_path=str(out / "predictions.jsonl"))
    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    dev = sources.examples(spec["task"], data / "dev.jsonl", spec["prompt"], False)
    score = stages.dev_evaluator(spec["task"], tok, spec["arch"], dev, spec["generation"],
                                 spec["max_source_length"], len(dev))(model)
    return {"model": kind, "cell": cell, "seed": seed, "group_by_length": group, "dev": round(score, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--workdir", help="a working directory whose default main table is built (--quality)")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    if not args.quality:
        for task in LENGTHS:
            plain, grouped = step_times(task, args.steps, args.repeats)
            print(f"{task}: random {plain:.3f} s/step, grouped {grouped:.3f} s/step, ratio {grouped / plain:.2f}")
        return
    if not args.workdir:
        parser.error("--quality needs --workdir")
    runs = Path(tempfile.mkdtemp(prefix="group_by_length-"))
    jobs = [("teacher", task, seed, group) for task in LENGTHS for seed in (1, 2, 3) for group in (False, True)]
    jobs += [("kl", f"{task}/{size}", seed, group) for task in LENGTHS for size in ("base", "small")
             for seed in (0, 1, 2) for group in (False, True)]
    jobs = [(*job, str(Path(args.workdir).resolve()), str(runs / f"{job[0]}-{job[1].replace('/', '-')}-{job[2]}-{job[3]}"))
            for job in jobs]
    with ProcessPoolExecutor(args.cores) as pool:
        for row in pool.map(quality_job, jobs):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
