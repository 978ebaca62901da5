"""Command line: ``python -m ketchup.judge {check,score,pairwise,table,figure} ...``.

The judge settings come from ``--config`` (the pipeline YAML; its ``judge:`` block is used).
"""

from __future__ import annotations

import argparse
import logging
import sys


def _judge_cfg(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    return cfg.get("judge", cfg) if isinstance(cfg, dict) else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ketchup.judge", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="exit 1 with instructions unless the judge is enabled and has a key")
    p.add_argument("--config", required=True)
    p = sub.add_parser("score", help="score one run's predictions")
    for a in ("--config", "--task", "--predictions", "--out", "--cache-dir"):
        p.add_argument(a, required=True)
    p = sub.add_parser("pairwise", help="compare one run with the baseline run, both orders")
    for a in ("--config", "--task", "--predictions", "--baseline-predictions", "--out", "--cache-dir"):
        p.add_argument(a, required=True)
    p.add_argument("--baseline", default=None, help="baseline name to record (default judge.baseline)")
    p = sub.add_parser("table", help="aggregate into llm_judge.csv (run ids parsed from the paths)")
    p.add_argument("--scores", nargs="*", default=[])
    p.add_argument("--pairwise", nargs="*", default=[])
    p.add_argument("--out", required=True)
    p = sub.add_parser("figure", help="draw llm_judge.csv")
    p.add_argument("--csv", required=True)
    p.add_argument("--pdf", required=True)
    p.add_argument("--png", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .config import JudgeConfigError

    try:
        if args.cmd == "check":
            from .config import check_enabled
            check_enabled(_judge_cfg(args.config))
            print("LLM judge: enabled")
        elif args.cmd == "score":
            from .stages import score_run
            score_run(_judge_cfg(args.config), args.task, args.predictions, args.out, args.cache_dir)
        elif args.cmd == "pairwise":
            from .stages import pairwise_run
            pairwise_run(_judge_cfg(args.config), args.task, args.predictions, args.baseline_predictions,
                         args.out, args.cache_dir, baseline=args.baseline)
        elif args.cmd == "table":
            from .stages import judge_table
            judge_table(args.scores, args.pairwise, args.out)
        elif args.cmd == "figure":
            from .figure import judge_figure
            judge_figure(args.csv, args.pdf, args.png)
    except JudgeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
