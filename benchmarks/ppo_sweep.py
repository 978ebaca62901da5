"""Choose rl.ppo_epochs, rl.ppo_minibatches and rl.ppo_clip on the dev split (ketchup-ppo, llmr-ppo).

Each setting trains the PPO students with the budget of rollouts of their methods without PPO (the
same max_steps of the same batch size: rl_train and method_overrides are untouched) in a sibling working
directory that shares the finished upstream outputs of ``--workdir`` (hard links; checkpoints are
not copied). ``--workdir`` needs no finished run: whatever the chosen cells need (teachers, KL
students, the ketchup / llmr references) is built there first, for the ``--tasks`` and
``--students`` asked only. Printed per run: the dev-best metric (train_summary.json), the dev metric
at the start (the KL student), the seconds of the training steps (metrics.jsonl: rollouts and
updates, no evaluation) and of the whole job (Snakemake's benchmark file: loading, evaluations,
test predictions too); per setting: the mean rank over the (task, student, method, seed) cells,
the mean gain over the start, the mean dev difference against the method without PPO on the same
cell (equal rollouts) and the mean ratio of training-step seconds against it. Test numbers are never
read (each job writes its test predictions, as every student job does; nothing here opens them).

    python benchmarks/ppo_sweep.py --workdir ../ppo-dev --settings 4x1@0.2 2x2@0.2 1x4@0.2 4x4@0.1 \\
        [--tasks en_nl] [--students base] [--methods ketchup-ppo llmr-ppo] [--config config.yaml] [--cores 2]

A setting is EPOCHSxMINIBATCHES@CLIP. The chosen one has the lowest mean rank; ties go to the
cheaper (fewer updates per rollout batch). The machine was likely shared: compare seconds within a run.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ketchup import config as kconfig, registry  # noqa: E402
from sweeps import dev_row, model_targets, sibling, snakemake  # noqa: E402

SETTING = re.compile(r"(\d+)x(\d+)@([0-9.eE-]+)")


def parse_setting(text: str) -> dict[str, float | int]:
    match = SETTING.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"setting {text!r}: expected EPOCHSxMINIBATCHES@CLIP, e.g. 4x1@0.2")
    return {"ppo_epochs": int(match[1]), "ppo_minibatches": int(match[2]), "ppo_clip": float(match[3])}


def plain_method(method: str) -> str:
    """The method a PPO method optimises with one update per rollout batch (the same advantages)."""
    plain = method.removesuffix("-ppo")
    assert not registry.get(plain).ppo and registry.get(plain).k == registry.get(method).k, method
    return plain


def run_row(workdir: Path, task: str, student: str, method: str, seed: int) -> dict:
    """Dev numbers, seconds and PPO statistics of one finished student run (never its test metrics)."""
    row, log = dev_row(workdir, task, student, method, seed)
    bench = workdir / f"results/benchmarks/student/{task}/{student}/{method}/seed{seed}.tsv"
    job_s = float(next(csv.DictReader(bench.open(), delimiter="\t"))["s"]) if bench.exists() else float("nan")
    return {**row, "job_s": job_s, "rollouts": sum(r.get("rollouts", 0.0) for r in log),
            "clip_fraction": _mean(r.get("clip_fraction") for r in log),
            "approx_kl": _mean(r.get("approx_kl") for r in log)}


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="working directory of the reference runs (built if missing)")
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--settings", type=parse_setting, nargs="+", required=True)
    parser.add_argument("--tasks", nargs="+", help="default: every task of the config")
    parser.add_argument("--students", nargs="+", help="default: every student size of the config")
    parser.add_argument("--methods", nargs="+", default=registry.PPO_METHODS, choices=registry.PPO_METHODS)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    base = Path(args.workdir).resolve()
    config = kconfig.read(args.config)  # extends resolved; written out whole below
    config["methods"] = list(dict.fromkeys([*config["methods"], *args.methods]))
    tasks, students = args.tasks or list(config["tasks"]), args.students or list(config["students"])
    seeds = config.get("seeds", [0])
    plain = [plain_method(m) for m in args.methods]

    base.mkdir(parents=True, exist_ok=True)
    (base / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"references ({', '.join(plain)}) in {base}", file=sys.stderr, flush=True)
    snakemake(base, base / "config.yaml", model_targets(tasks, students, plain, seeds), args.cores)
    rows = [{**run_row(base, t, s, m, seed), "setting": "none"} for t in tasks for s in students for m in plain
            for seed in seeds]

    for setting in args.settings:
        name = f"{setting['ppo_epochs']}x{setting['ppo_minibatches']}@{setting['ppo_clip']:g}"
        cfg = {**config, "rl": {**config.get("rl", {}), **setting}}
        work = sibling(base, f"ppo{name.replace('@', '-clip')}")
        (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"setting {name}: training {', '.join(args.methods)} in {work}", file=sys.stderr, flush=True)
        snakemake(work, work / "config.yaml", model_targets(tasks, students, args.methods, seeds), args.cores)
        rows += [{**run_row(work, t, s, m, seed), "setting": name} for t in tasks for s in students
                 for m in args.methods for seed in seeds]

    table = pd.DataFrame(rows)
    cell = ["task", "student", "seed"]
    reference = table[table.setting == "none"].assign(method=lambda f: f.method + "-ppo")
    ppo = table[table.setting != "none"].merge(reference[[*cell, "method", "dev_best", "train_s"]],
                                               on=[*cell, "method"], suffixes=("", "_plain"))
    ppo["vs_plain"] = ppo["dev_best"] - ppo["dev_best_plain"]
    ppo["time_ratio"] = ppo["train_s"] / ppo["train_s_plain"]
    ppo["gain"] = ppo["dev_best"] - ppo["dev_start"]
    ppo["rank"] = ppo.groupby([*cell, "method"])["dev_best"].rank(ascending=False)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 30)
    print(table.drop(columns=["rollouts"]).round(3).to_string(index=False))
    updates = {s: int(s.split("x")[0]) * int(s.split("x")[1].split("@")[0]) for s in ppo.setting.unique()}
    summary = ppo.groupby("setting").agg(mean_rank=("rank", "mean"), mean_gain=("gain", "mean"),
                                         vs_plain=("vs_plain", "mean"), time_ratio=("time_ratio", "mean"),
                                         clip_fraction=("clip_fraction", "mean"), runs=("rank", "size"))
    summary["updates"] = [updates[s] for s in summary.index]
    summary = summary.sort_values(["mean_rank", "updates"])
    print(summary.round(3).to_string())
    print(f"chosen (lowest mean rank on dev, then fewest updates): {summary.index[0]}")


if __name__ == "__main__":
    main()
