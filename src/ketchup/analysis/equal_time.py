"""equal_time.csv: the PPO methods against their methods without PPO, at equal rollouts and at equal time.

Per task and student size, three runs of each PPO method's comparison: the method without PPO
(``ketchup`` or ``llmr``: one update per rollout batch), the PPO method with the same rollout
batches (``ketchup-ppo``: rl.ppo_epochs x rl.ppo_minibatches updates each), and the PPO method cut to
the training time of the first (``ketchup-ppo-r{N}``: N = round(max_steps / analysis.ppo_cost_ratio)
rollout batches). Each row gives the primary test metric (mean and sample std over seeds), the
rollout batches, and the training time: the sum of the training loop's per-step seconds in the run's
``metrics.jsonl`` (rollouts, teacher scoring and updates; not the dev evaluations, whose count is a
selection protocol), averaged over seeds, also as a ratio to the run without PPO. Times are
measured, so they vary with the machine and its load; the paired intervals are in significance.csv.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ketchup.analysis.common import MODEL_PATTERN, primary_metric
from ketchup.io import read_json
from ketchup.paths import parse
from ketchup.tables import parse_run

COLUMNS = ["task", "metric", "student", "method", "run", "budget", "seeds", "rollout_batches", "train_s",
           "time_vs_plain", "mean", "std", "diff_vs_plain"]


def train_time(model_dir: str | Path) -> tuple[int, float]:
    """(optimizer steps, seconds) of a run: its step rows in metrics.jsonl and their summed ``seconds``."""
    steps, seconds = 0, 0.0
    for line in (Path(model_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if "seconds" in rec:
            steps, seconds = max(steps, int(rec["step"])), seconds + float(rec["seconds"])
    return steps, seconds


def equal_time_table(metric_paths: list[str], model_dirs: list[str], comparisons: dict[str, dict[str, str]],
                     info: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """``comparisons``: PPO method -> {"plain": run, "rollouts": run, "time": run} (the three runs above);
    ``info``: each task's primary metric (common.task_info)."""
    runs = {}
    for path in metric_paths:
        run = parse_run(path)
        metric = primary_metric(run["task"], info)
        runs[(run["task"], run["student"], run["method"], run["seed"])] = {
            "metric": metric, "value": float(read_json(path)["metrics"][metric])}
    for model_dir in model_dirs:
        run = parse(model_dir, MODEL_PATTERN)
        key = (run["task"], run["student"], run["method"], run["seed"])
        if key in runs:
            runs[key]["steps"], runs[key]["seconds"] = train_time(model_dir)
    frame = pd.DataFrame([{"task": t, "student": s, "run": m, "seed": seed, **v} for (t, s, m, seed), v in runs.items()])
    rows = []
    for (task, student), sub in frame.groupby(["task", "student"], sort=True):
        for method, named in comparisons.items():
            plain = sub[sub.run == named["plain"]]
            for budget in ("plain", "rollouts", "time"):
                mine = sub[sub.run == named[budget]]
                if mine.empty:
                    continue
                row = {"task": task, "metric": primary_metric(task, info), "student": student, "method": method,
                       "run": named[budget], "budget": budget, "seeds": int(mine["value"].count()),
                       "rollout_batches": int(mine["steps"].max()), "train_s": float(mine["seconds"].mean()),
                       "mean": float(mine["value"].mean()),
                       "std": float(mine["value"].std()) if len(mine) > 1 else float("nan")}
                row["time_vs_plain"] = row["train_s"] / float(plain["seconds"].mean()) if len(plain) else float("nan")
                row["diff_vs_plain"] = row["mean"] - float(plain["value"].mean()) if len(plain) else float("nan")
                rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS)
    return out.round({"train_s": 2, "time_vs_plain": 3, "mean": 4, "std": 4, "diff_vs_plain": 4})
