"""The cost plan against reality: each job's predicted seconds (results/plan/cost.csv) against the
seconds Snakemake measured (its benchmark file, column s), in one finished run's directory.

    python benchmarks/plan_accuracy.py RUN_DIR [--plan RUN_DIR/results/plan/cost.csv] [--json OUT]

Prints one line per job with both numbers, then the median absolute relative error over the
training jobs (teacher, pretrain, and the students of every trained method), the same over all
jobs, and the totals. Jobs without a benchmark file in RUN_DIR (not run) are counted and left out.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ketchup import registry  # noqa: E402

TRAINING_RULES = {"teacher", "pretrain", "student"}


def measured(path: Path) -> tuple[float, float]:
    """(seconds, max RSS MiB) of a Snakemake benchmark file (the first repeat)."""
    with path.open() as handle:
        row = next(csv.DictReader(handle, delimiter="\t"))
    rss = row.get("max_rss", "NA")
    return float(row["s"]), float(rss) if rss not in ("NA", "-", "") else float("nan")


def is_training(row: dict[str, str]) -> bool:
    if row["rule"] not in TRAINING_RULES:
        return False
    if row["rule"] == "student":
        return registry.get(registry.method_and_k(row["method"], 1)[0]).family != "untrained"
    return int(row["steps"] or 0) > 0


def compare(run_dir: Path, plan_path: Path) -> dict:
    with plan_path.open(newline="") as handle:
        plan = list(csv.DictReader(handle))
    jobs, missing = [], []
    for row in plan:
        bench = run_dir / row["benchmark"] if row["benchmark"] else None
        if bench is None or not bench.is_file():
            missing.append(row["benchmark"] or row["output"])
            continue
        seconds, rss = measured(bench)
        pred = float(row["predicted_s"])
        jobs.append({"rule": row["rule"], "wildcards": row["wildcards"], "predicted_s": pred, "measured_s": seconds,
                     "rel_err": (pred - seconds) / seconds if seconds > 0 else float("nan"),
                     "predicted_peak_mib": float(row["predicted_peak_mib"]), "measured_max_rss_mib": rss,
                     "training": is_training(row)})
    train = [abs(j["rel_err"]) for j in jobs if j["training"]]
    total_pred, total_meas = sum(j["predicted_s"] for j in jobs), sum(j["measured_s"] for j in jobs)
    tp = sum(j["predicted_s"] for j in jobs if j["training"])
    tm = sum(j["measured_s"] for j in jobs if j["training"])
    return {
        "jobs": jobs, "missing": missing,
        "training_jobs": len(train),
        "median_abs_rel_err_training": statistics.median(train) if train else float("nan"),
        "median_abs_rel_err_all": statistics.median(abs(j["rel_err"]) for j in jobs) if jobs else float("nan"),
        "total_predicted_s": total_pred, "total_measured_s": total_meas,
        "total_rel_err": (total_pred - total_meas) / total_meas if total_meas else float("nan"),
        "training_total_rel_err": (tp - tm) / tm if tm else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--plan", type=Path, default=None, help="default RUN_DIR/results/plan/cost.csv")
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    result = compare(args.run_dir, args.plan or args.run_dir / "results" / "plan" / "cost.csv")
    print(f"{'rule':<22} {'wildcards':<48} {'pred s':>9} {'meas s':>9} {'err':>7} {'pred MiB':>9} {'RSS MiB':>8}")
    for j in sorted(result["jobs"], key=lambda j: -j["measured_s"]):
        print(f"{j['rule']:<22} {j['wildcards'][:48]:<48} {j['predicted_s']:9.1f} {j['measured_s']:9.1f} "
              f"{100 * j['rel_err']:6.0f}% {j['predicted_peak_mib']:9.0f} {j['measured_max_rss_mib']:8.0f}")
    print(f"\n{len(result['jobs'])} jobs compared, {len(result['missing'])} without a benchmark file here")
    print(f"median |relative error|, {result['training_jobs']} training jobs: "
          f"{100 * result['median_abs_rel_err_training']:.1f} %  (all jobs: {100 * result['median_abs_rel_err_all']:.1f} %)")
    print(f"total: predicted {result['total_predicted_s']:.0f} s, measured {result['total_measured_s']:.0f} s "
          f"({100 * result['total_rel_err']:+.1f} %); training jobs {100 * result['training_total_rel_err']:+.1f} %")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
