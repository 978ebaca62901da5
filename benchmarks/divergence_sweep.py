"""Choose divergence.beta and divergence.lambda (gkd) and divergence.alpha (skl, srkl) on the dev split.

Each setting trains the methods that read it with kl's update budget and from kl's starting point (the
pretrained student: neither has method_overrides nor starts_from), in a sibling working directory that
shares the finished upstream outputs of ``--workdir`` (benchmarks/sweeps.py). ``--workdir`` needs no
finished run: the teachers, the pretrained students and the references (kl, and rkl, GKD's beta = 1,
lambda = 1 without settings) are built there first, for the ``--tasks`` and ``--students`` asked only.
Printed per run: the dev metric at the start (the pretrained student) and the dev-best metric
(train_summary.json, on train.dev_eval_examples of the dev split), the step it came at, the seconds of
the training steps (metrics.jsonl); per setting: the mean rank among the settings of its method over
the (task, student, seed) cells, the mean dev-best and the mean difference against kl on the same cell.
Test numbers are never read (each job writes its test predictions, as every student job does; nothing
here opens them).

    python benchmarks/divergence_sweep.py --workdir ../div-dev --tasks en_nl --students base \\
        [--beta 0.1 0.5 0.9] [--lambda 0 0.5 1] [--alpha 0.1 0.2] [--config config.yaml] [--cores 2]

The chosen setting of each method has the lowest mean rank, ties to the higher mean dev-best; alpha is
one setting for skl and srkl, ranked over both. The machine was likely shared: compare seconds within a run.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ketchup import config as kconfig  # noqa: E402
from sweeps import dev_row, model_targets, sibling, snakemake  # noqa: E402

REFERENCES = ["kl", "rkl"]


def run_row(workdir: Path, task: str, student: str, method: str, seed: int) -> dict:
    return dev_row(workdir, task, student, method, seed)[0]


def grid(args) -> list[tuple[list[str], dict[str, float]]]:
    """(methods, divergence settings) of every sibling run: gkd over beta x lambda, skl and srkl over alpha."""
    runs = [(["gkd"], {"beta": b, "lambda": lam}) for b, lam in itertools.product(args.beta, args.lam)]
    return runs + [(["skl", "srkl"], {"alpha": a}) for a in args.alpha]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="working directory of the reference runs (built if missing)")
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--beta", type=float, nargs="+", default=[0.1, 0.5, 0.9], help="GKD's grid (its paper's)")
    parser.add_argument("--lambda", dest="lam", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.1, 0.2], help="DistiLLM's 0.1 and a neighbour")
    parser.add_argument("--tasks", nargs="+", help="default: every task of the config")
    parser.add_argument("--students", nargs="+", help="default: every student size of the config")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    base = Path(args.workdir).resolve()
    config = kconfig.read(args.config)  # extends resolved; written out whole below
    config["methods"] = list(dict.fromkeys([*config["methods"], *REFERENCES, "gkd", "skl", "srkl"]))
    tasks, students = args.tasks or list(config["tasks"]), args.students or list(config["students"])
    seeds = config.get("seeds", [0])

    base.mkdir(parents=True, exist_ok=True)
    (base / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"references ({', '.join(REFERENCES)}) in {base}", file=sys.stderr, flush=True)
    snakemake(base, base / "config.yaml", model_targets(tasks, students, REFERENCES, seeds), args.cores)
    rows = [{**run_row(base, t, s, m, seed), "setting": "-"} for t in tasks for s in students for m in REFERENCES
            for seed in seeds]
    for methods, setting in grid(args):
        name = ",".join(f"{k}={v:g}" for k, v in setting.items())
        cfg = {**config, "divergence": {**config.get("divergence", {}), **setting}}
        work = sibling(base, "div-" + name.replace("=", "").replace(",", "-"))
        (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"setting {name}: training {', '.join(methods)} in {work}", file=sys.stderr, flush=True)
        snakemake(work, work / "config.yaml", model_targets(tasks, students, methods, seeds), args.cores)
        rows += [{**run_row(work, t, s, m, seed), "setting": name} for t in tasks for s in students
                 for m in methods for seed in seeds]

    table = pd.DataFrame(rows)
    cell = ["task", "student", "seed"]
    kl = table[table.method == "kl"][[*cell, "dev_best"]].rename(columns={"dev_best": "kl"})
    table = table.merge(kl, on=cell)
    table["vs_kl"] = table["dev_best"] - table["kl"]
    swept = table[table.setting != "-"].copy()
    swept["family"] = swept.method.map({"gkd": "gkd", "skl": "skl/srkl", "srkl": "skl/srkl"})
    swept["rank"] = swept.groupby([*cell, "method"])["dev_best"].rank(ascending=False)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 30)
    print(table.drop(columns=["kl"]).round(3).to_string(index=False))
    summary = swept.groupby(["family", "setting"]).agg(mean_rank=("rank", "mean"), dev_best=("dev_best", "mean"),
                                                       vs_kl=("vs_kl", "mean"), train_s=("train_s", "mean"),
                                                       runs=("rank", "size"))
    summary = summary.sort_values(["mean_rank", "dev_best"], ascending=[True, False])
    print(summary.round(3).to_string())
    for family, part in summary.groupby(level="family", sort=False):
        print(f"chosen for {family} (lowest mean rank on dev, then highest dev-best): {part.index[0][1]}")


if __name__ == "__main__":
    main()
