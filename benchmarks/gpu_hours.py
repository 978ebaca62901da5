"""GPU-hours of a config before it runs, from GPU step times already measured
(benchmarks/gpu_times.yaml: the card, the date, what was assumed) and the models' public shapes
(benchmarks/paper_shapes.yaml), without a GPU, the hub or the data: the cost plan's counts (its own
dry run of the DAG, ketchup.costmodel) times unit costs derived by ketchup.gpucost.

    python benchmarks/gpu_hours.py workflow/configs/paper.yaml [--out DIR] [--no-scenarios]

Prints the total (H200 figures, and an upper bound for H100-class cards), the split by part,
method, task, student and rule, the counts per kind of run, and what each cost-cutting setting
saves when applied alone (the same DAG, the setting changed). With --out, also the plan's rows
(cost.csv) and the numbers as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ketchup import config as kconfig, dagjobs, gpucost, plan, registry  # noqa: E402
from ketchup.costmodel import COMPONENTS  # noqa: E402


def scenarios(config: dict) -> list[tuple[str, dict, float]]:
    """(what, config overrides, decode-time factor): each cost-cutting setting alone."""
    return [
        ("tasks.en_nl.n_train: 200000 (Europarl capped)", {"tasks": {"en_nl": {"n_train": 200000}}}, 1.0),
        ("train.dev_eval_examples: 1000", {"train": {"dev_eval_examples": 1000}}, 1.0),
        ("train.dev_eval_examples: 500", {"train": {"dev_eval_examples": 500}}, 1.0),
        ("train.eval_every: 48 (non-RL)", {"train": {"eval_every": 48}}, 1.0),
        ("rl_train.eval_every: 32", {"rl_train": {"eval_every": 32}}, 1.0),
        ("rl_train.max_steps: 1000", {"rl_train": {"max_steps": 1000}}, 1.0),
        ("generation.batch_size: 64", {"generation": {"batch_size": 64}}, 1.0),
        ("generation.max_new_tokens: 256", {"generation": {"max_new_tokens": 256}}, 1.0),
        ("decoding 2x faster per token (cache/compile; NOT measured)", {}, 0.5),
        ("students in bf16 (train.mixed_precision: bf16; departs from the reference's fp32)",
         {"train": {"mixed_precision": "bf16"}}, 1.0),
    ]


def run_kinds(rows: list[dict]) -> list[dict]:
    """Counts of one run per task of sft, kl, js and ketchup (the base-size student where there is
    one), as the plan counts them."""
    out, seen = [], set()
    for r in rows:
        if r["rule"] != "student" or r["method"] not in ("sft", "kl", "js", "ketchup") or (r["task"], r["method"]) in seen:
            continue
        if r["student"] not in ("base", "qwen-0_5b"):
            continue
        seen.add((r["task"], r["method"]))
        out.append({"task": r["task"], "method": r["method"], "steps": int(r["steps"]), "dev_evals": int(r["dev_evals"]),
                    "decoded_tokens": int(r["decoded_tokens"]), "rollouts": int(r["rollouts"]),
                    **{c: float(r[c]) / 3600 for c in COMPONENTS}, "gpu_h": float(r["predicted_s"]) / 3600})
    return sorted(out, key=lambda r: (r["task"], r["method"]))


def report(rows: list[dict], times: dict) -> dict:
    total = gpucost.gpu_hours(rows)
    family = lambda r: registry.get(registry.method_and_k(r["method"], 1)[0]).family if r["method"] else ""  # noqa: E731
    return {
        "card": times["card"], "measured": times["date"], "gpu_h": total,
        "gpu_h_h100_upper": total * times["assumed"]["h100_upper_factor"],
        "gpu_h_every_decode_to_max": gpucost.gpu_hours_max(rows),
        "gpu_jobs": sum(r["rule"] in gpucost.GPU_RULES for r in rows), "jobs": len(rows),
        "by_part": gpucost.parts(rows), "by_method": gpucost.split(rows, lambda r: r["method"]),
        "by_family": gpucost.split(rows, family), "by_task": gpucost.split(rows, lambda r: r["task"]),
        "by_student": gpucost.split(rows, lambda r: r["student"]), "by_rule": gpucost.split(rows, lambda r: r["rule"]),
        "runs": run_kinds(rows),
    }


def show(name: str, rep: dict) -> None:
    t = rep["gpu_h"]
    print(f"\n## {name}: {rep['gpu_h']:,.0f} GPU-hours ({rep['card']}-derived, steps measured {rep['measured']}); "
          f"at most {rep['gpu_h_h100_upper']:,.0f} on H100-class cards; {rep['gpu_jobs']} GPU jobs of {rep['jobs']}; "
          f"{rep['gpu_h_every_decode_to_max']:,.0f} h if every decode ran to max_new_tokens")
    for title in ("part", "family", "method", "task", "student", "rule"):
        items = rep[f"by_{title}"]
        print(f"  by {title}: " + ", ".join(f"{k} {h:,.0f} h ({100 * h / t:.0f} %)" for k, h in items.items()))
    print("  one run each (base-size student): updates, dev evaluations, decoded tokens (dev, test), rollouts; GPU-hours")
    for r in rep["runs"]:
        print(f"    {r['task']:<6} {r['method']:<8} {r['steps']:>6} upd {r['dev_evals']:>5} evals "
              f"{r['decoded_tokens']:>12,} tok {r['rollouts']:>8,} roll: {r['gpu_h']:6.1f} h (training {r['train_s']:.1f}, "
              f"dev eval {r['dev_eval_s']:.1f}, rollouts {r['rollout_s']:.1f}, test {r['generation_s']:.1f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--times", type=Path, default=ROOT / "benchmarks" / "gpu_times.yaml")
    parser.add_argument("--shapes", type=Path, default=ROOT / "benchmarks" / "paper_shapes.yaml")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-scenarios", action="store_true")
    args = parser.parse_args()
    config = kconfig.load(args.config)
    times, shapes = yaml.safe_load(args.times.read_text()), yaml.safe_load(args.shapes.read_text())
    with tempfile.TemporaryDirectory() as work:
        target = kconfig.plan_settings(config)["target"]
        jobs = dagjobs.parse_dry_run(dagjobs.dry_run(ROOT / "Snakefile", work, [args.config.resolve()], target))
    rows = gpucost.plan_rows(config, jobs, shapes, times)
    rep = report(rows, times)
    print(f"GPU-hours of {args.config} (target {target}); unit costs: {times['card']}, {times['source']}, "
          f"measured {times['date']}; other shapes scaled by ketchup.gpucost (rules and assumptions: {args.times.name})")
    show(args.config.name, rep)
    if not args.no_scenarios:
        print("\n## Each setting alone (same DAG): GPU-hours and the saving")
        rep["scenarios"] = []
        for what, overrides, factor in scenarios(config):
            variant = kconfig.deep_update(copy.deepcopy(config), overrides)
            kconfig.validate(variant)
            h = gpucost.gpu_hours(gpucost.plan_rows(variant, jobs, shapes, times, factor))
            rep["scenarios"].append({"setting": what, "gpu_h": h, "saved_h": rep["gpu_h"] - h})
            print(f"  {what}: {h:,.0f} h (saves {rep['gpu_h'] - h:,.0f} h, {100 * (1 - h / rep['gpu_h']):.0f} %)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        plan.write_csv(rows, args.out / "cost.csv")
        (args.out / "gpu_hours.json").write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
