"""The cost plan of a config whose models and data cannot be reached here (the paper configs
offline): calibrated on this machine from the models' shapes (benchmarks/paper_shapes.yaml), at
fewer rows, tokens and layers than the real jobs and extrapolated (rows and tokens by the fitted
unit costs, layers linearly from two calibrations), with the data's lengths estimated from the
same file. A CPU figure, extrapolated: not a GPU figure, and labelled so in the summary.

    python benchmarks/plan_paper.py workflow/configs/paper.yaml --out /tmp/paper_plan

Writes calibration.json, cost.csv and summary.md to --out. On a machine that reaches the hub and
the GPU, `snakemake results/plan/cost.csv --configfile ... --profile ...` is the real thing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ketchup import config as kconfig, dagjobs, gpucost, plan  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", type=Path, default=ROOT / "benchmarks" / "paper_shapes.yaml")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--layers", type=int, nargs=2, default=[1, 2], help="the two layer counts timed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from ketchup.calibration import calibrate, extrapolate_layers

    config = kconfig.load(args.config)
    shapes = yaml.safe_load(args.shapes.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    cals = [calibrate(config, repeats=args.repeats, shapes=shapes["models"], max_batch=args.max_batch,
                      max_length=args.max_length, max_layers=layers) for layers in args.layers]
    cal = extrapolate_layers(*cals)
    cal["device"] += (f"; CPU-extrapolated from {args.max_batch} rows, {args.max_length} tokens and "
                      f"{args.layers} layers per stack: NOT a GPU figure")
    (args.out / "calibration.json").write_text(json.dumps({"low": cals[0], "high": cals[1], "whole": cal}, indent=1))
    settings = kconfig.plan_settings(config)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    jobs = dagjobs.parse_dry_run(dagjobs.dry_run(ROOT / "Snakefile", work, [args.config.resolve()], settings["target"]))
    lengths = gpucost.table_lengths(config, shapes["data"])
    rows = plan.plan_rows(config, cal, jobs, lengths, settings["margin"], "cold")
    plan.write_csv(rows, args.out / "cost.csv")
    (args.out / "summary.md").write_text(plan.summary(rows, config, cal, lengths, settings["target"],
                                                      settings["margin"], "cold"))
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
