"""``python -m ketchup <stage> ...``: one command per pipeline stage (each Snakemake rule calls one)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _spec(text: str) -> dict:
    """A JSON object given inline or as @path."""
    if text.startswith("@"):
        with open(text[1:]) as handle:
            return json.load(handle)
    return json.loads(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ketchup", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    sub = parser.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("data", help="write {train,dev,test}.jsonl of a task in the hub schema")
    p.add_argument("--task", required=True)
    p.add_argument("--spec", type=_spec, required=True, help="the task's config block (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")

    p = sub.add_parser("tokenizer", help="train a BPE tokenizer on a task's train split")
    p.add_argument("--task", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("teacher", help="fine-tune the teacher, keep the dev-best checkpoint")
    p.add_argument("--spec", type=_spec, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--checkpoints", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("generate", help="greedy outputs of a saved model on one split")
    p.add_argument("--task", required=True)
    p.add_argument("--arch", default="seq2seq", choices=["seq2seq", "decoder"])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a split file in the hub schema")
    p.add_argument("--prompt", default="")
    p.add_argument("--generation", type=_spec, required=True)
    p.add_argument("--max-source-length", type=int, required=True)
    p.add_argument("--teacher", action="store_true", help="run in half precision on a GPU")
    p.add_argument("--out", required=True)

    p = sub.add_parser("student", help="train one student with its method's objective")
    p.add_argument("--spec", type=_spec, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher-outputs", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--init", default=None, help="start from this saved model (RL starts from KL)")
    p.add_argument("--checkpoints", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("score", help="task metrics of one prediction file")
    p.add_argument("--task", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("table", help="the tidy main table from metric files")
    p.add_argument("--task-k", type=_spec, required=True, help='{"task": K}')
    p.add_argument("--out", required=True)
    p.add_argument("--teacher-check", default=None, help="also write teacher vs untrained student here")
    p.add_argument("metrics", nargs="+")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ketchup.config import ConfigError
    from ketchup.io import DataError

    try:
        return _run(args)
    except (ConfigError, DataError) as exc:
        print(f"ketchup {args.stage}: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.stage == "score":
        from ketchup.scoring import score

        score(args.task, args.predictions, args.out)
        return 0
    if args.stage == "table":
        from ketchup import tables

        table = tables.main_table(args.metrics, args.task_k)
        tables.write_csv(table, args.out)
        if args.teacher_check:
            check = tables.teacher_vs_untrained(table)
            print(check.to_string(index=False))
            tables.write_csv(check, args.teacher_check)
        return 0
    from ketchup import stages

    if args.stage == "data":
        stages.data(args.task, args.spec, args.seed, args.out)
    elif args.stage == "tokenizer":
        stages.tokenizer(args.task, args.data, args.prompt, args.vocab_size, args.out)
    elif args.stage == "teacher":
        stages.teacher(args.spec, args.data, args.tokenizer, args.checkpoints, args.out)
    elif args.stage == "generate":
        stages.outputs(args.task, args.arch, args.model, args.data, args.prompt, args.generation,
                       args.max_source_length, args.out, teacher=args.teacher)
    elif args.stage == "student":
        stages.student(args.spec, args.data, args.teacher_outputs, args.teacher, args.init, args.checkpoints,
                       args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
