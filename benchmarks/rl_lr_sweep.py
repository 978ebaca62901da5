"""Choose an RL setting on the dev split: rerun the RL students of a finished run at other learning
rates (``--lrs``) or other values of one ``rl`` key (``--rl-key normalize --rl-values sequence token``).

Starts from a working directory where the config's main table has been built (teachers, KL students
and RL students exist). For each lr it makes a sibling working directory that shares the finished
upstream outputs (hard links; checkpoints are not copied), writes the config with that lr for every
RL method (the same budget for all of them), and lets Snakemake rerun just the RL students (their
spec changed). It prints each run's dev-best metric (the whole dev split at the default settings)
and, per lr, the mean rank over all (task, student, method) cells, the criterion used to choose.
Test numbers are never read.

    python benchmarks/rl_lr_sweep.py --workdir results-parent-dir --lrs 1e-5 3e-5 1e-4 3e-4 [--config config.yaml]
    python benchmarks/rl_lr_sweep.py --workdir results-parent-dir --rl-key normalize --rl-values sequence token
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ketchup import registry  # noqa: E402
from sweeps import sibling, snakemake  # noqa: E402


def dev_scores(workdir: Path, config: dict, lr) -> list[dict]:
    rows = []
    for task in config["tasks"]:
        for student in config["students"]:
            for method in (m for m in config["methods"] if m in registry.RL_METHODS):
                for seed in config["seeds"]:
                    run = workdir / f"results/models/students/{task}/{student}/{method}/seed{seed}"
                    summary = json.loads((run / "train_summary.json").read_text())
                    start = next(json.loads(line)["dev_metric"] for line in (run / "metrics.jsonl").open()
                                 if '"dev_metric"' in line)
                    rows.append({"lr": lr, "task": task, "student": student, "method": method, "seed": seed,
                                 "dev_start": start, "dev_best": summary["best_dev_metric"],
                                 "best_step": summary["best_step"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a working directory whose main table is built")
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--lrs", type=float, nargs="+")
    choice.add_argument("--rl-key", help="a key of the rl block (its values: --rl-values, parsed as YAML)")
    parser.add_argument("--rl-values", nargs="+", default=[])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    base, config = Path(args.workdir).resolve(), yaml.safe_load(Path(args.config).read_text())
    rl = [m for m in config["methods"] if m in registry.RL_METHODS]
    rows = []
    variants = args.lrs or [yaml.safe_load(v) for v in args.rl_values]
    for lr in variants:  # a learning rate, or a value of rl.<rl-key>
        cfg = yaml.safe_load(Path(args.config).read_text())
        if args.rl_key:
            cfg["rl"] = {**cfg.get("rl", {}), args.rl_key: lr}
        else:
            cfg["rl_train"] = {**cfg.get("rl_train", {}), "lr": lr}
            for method in rl:  # a method's own lr would win over rl_train's
                if "lr" in cfg.get("method_overrides", {}).get(method, {}):
                    cfg["method_overrides"][method]["lr"] = lr
        if cfg == config:
            rows += dev_scores(base, config, lr)  # the base run itself
            continue
        work = sibling(base, f"{args.rl_key or 'lr'}-{lr}")
        (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        targets = [f"results/metrics/{t}/{s}/{m}/seed{seed}.json" for t in cfg["tasks"] for s in cfg["students"]
                   for m in rl for seed in cfg["seeds"]]
        print(f"{args.rl_key or 'lr'} {lr}: training {len(targets)} RL students in {work}", file=sys.stderr, flush=True)
        snakemake(work, work / "config.yaml", targets, args.cores)
        rows += dev_scores(work, cfg, lr)
    table = pd.DataFrame(rows)
    table["rank"] = table.groupby(["task", "student", "method", "seed"])["dev_best"].rank(ascending=False)
    table["gain"] = table["dev_best"] - table["dev_start"]
    pd.set_option("display.width", 200)
    print(table.pivot_table(index=["task", "student", "method"], columns="lr", values="dev_best").round(2))  # lr: the variant
    summary = table.groupby("lr").agg(mean_rank=("rank", "mean"), mean_gain=("gain", "mean"),
                                      runs=("rank", "size")).sort_values("mean_rank")
    print(summary.round(3))
    print(f"chosen {args.rl_key or 'lr'} (lowest mean rank on dev): {summary.index[0]}")


if __name__ == "__main__":
    main()
