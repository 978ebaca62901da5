"""The cost plan of a run: one row per job of its DAG (results/plan/cost.csv) and a summary
(results/plan/summary.md), from the config, the prepared data's token lengths and a calibration
(ketchup.calibration) made on the machine that runs the jobs."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from ketchup import costmodel, paths, registry
from ketchup.config import (calculator_on, generation_settings, judge_block, task_definition,
                            task_lengths as config_lengths)
from ketchup.costmodel import COMPONENTS, Job, SplitLengths, TaskLengths
from ketchup.judge import RUN_FILES, judge_runs, load_config as judge_config
from ketchup.judge.estimate import CHARS_PER_TOKEN, COLUMNS as JUDGE_COLUMNS, job_estimate

COLUMNS = ["rule", "output", "benchmark", "wildcards", "task", "student", "method", "predicted_s", "predicted_max_s",
           "predicted_peak_mib", "runtime_min", "mem_mb", "steps", "dev_evals", "decoded_examples", "decoded_tokens",
           "decoded_tokens_max", "rollouts", *COMPONENTS, *JUDGE_COLUMNS]
JUDGE_RULES = {"score": "judge_scores", "pairwise": "judge_pairwise"}  # workflow/rules/judge.smk

# The settings that set each component's size (the summary names them for the largest shares).
CONTROLS = {
    "train_s": "train.max_steps / train.epochs, train.batch_size x train.grad_accum (rl_train for the RL methods, method_overrides per method), "
               "the student and teacher sizes, max_source_length / max_target_length",
    "dev_eval_s": "train.eval_every and train.dev_eval_examples (rl_train, method_overrides), generation.batch_size, "
                  "generation.max_new_tokens (decodes stop at the batch's longest output)",
    "rollout_s": "the RL methods' max_steps x batch_size x grad_accum (rl_train, method_overrides), max_target_length (the "
                 "rollouts' length), rollouts decoded batch_size at a time",
    "generation_s": "the test split (n_test) and the teacher's train split decoded once, generation.batch_size, "
                    "generation.max_new_tokens",
    "other_s": "the number of jobs (each starts, loads and saves its models): seeds, methods, sizes, tasks; "
               "checkpoint_every",
}
LABELS = {"train_s": "training", "dev_eval_s": "dev evaluation", "rollout_s": "rollouts (RL, js/tvd samples)",
          "generation_s": "other generation (test predictions, teacher outputs)",
          "other_s": "startup, model loading and saving, CPU jobs"}


def data_lengths(config: dict[str, Any], task: str, data_dir: str | Path, tokenizer) -> TaskLengths:
    """Token lengths of the prepared splits as the jobs encode them (prompt, calculator annotations,
    truncation to max_source_length / max_target_length, EOS)."""
    from ketchup.batching import encode_sources, encode_targets
    from ketchup.data import sources

    max_src, max_tgt = config_lengths(config, task)
    prompt = config["tasks"][task].get("prompt", "")
    splits = {}
    for split in ("train", "dev", "test"):
        examples = sources.examples(task_definition(config, task), Path(data_dir) / f"{split}.jsonl", prompt,
                                    calculator_on(config, task))
        src = encode_sources(tokenizer, [e["source"] for e in examples], config["architecture"], max_src)
        # Targets untruncated, so a decode's predicted length can reach max_new_tokens (capped there).
        tgt = encode_targets(tokenizer, [e["target"] for e in examples], 10**9)
        splits[split] = SplitLengths(tuple(map(len, src)), tuple(map(len, tgt)))
    return TaskLengths(splits, f"the prepared data ({data_dir}), tokenised as the jobs do")


def plan_rows(config: dict[str, Any], cal: dict[str, Any], jobs: list[Job], lengths: dict[str, TaskLengths],
              margin: float, startup: str = "cold") -> list[dict[str, Any]]:
    return [costmodel.plan_row(job, costmodel.job_counts(job, config, cal, lengths, startup), margin) for job in jobs]


def judge_rows(config: dict[str, Any], rows: list[dict[str, Any]], data_dirs: dict[str, str], cal: dict[str, Any],
               lengths: dict[str, TaskLengths], margin: float, startup: str = "cold") -> list[dict[str, Any]]:
    """``rows`` with the judge's columns (ketchup.judge.estimate) on every judge job of the run
    (ketchup.judge.judge_runs) when ``judge.enabled``; a judge job the target's DAG lacks (the judge
    is not part of ``all``) gets a row of its own, whose seconds are its startup (the server's time
    is not predicted)."""
    judge = config.get("judge") or {}
    if not judge.get("enabled"):
        return rows
    from ketchup.data import sources

    cfg = judge_config(judge_block(config))  # each task's description, as the judge jobs get it
    estimates = {}
    for task, spec in config["tasks"].items():
        test = sources.examples(task_definition(config, task), Path(data_dirs[task]) / "test.jsonl",
                                spec.get("prompt", ""), calculator_on(config, task))
        estimates.update({(kind, task): job_estimate(cfg, kind, task, test) for kind in RUN_FILES})
    out = list(rows)
    index = {(r["rule"], r["wildcards"]): r for r in rows}
    for kind, task, student, method, seed in judge_runs(config):
        w = {"task": task, "student": student, "method": method, "seed": str(seed)}
        job = Job(JUDGE_RULES[kind], w, paths.judge_file(task, student, method, seed, RUN_FILES[kind]), "")
        row = index.get((job.rule, ",".join(f"{k}={v}" for k, v in sorted(w.items()))))
        if row is None:
            row = costmodel.plan_row(job, costmodel.job_counts(job, config, cal, lengths, startup), margin)
            out.append(row)
        row.update(estimates[(kind, task)])
    return out


def judge_summary(rows: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    """summary.md's judge section: the totals of the judge columns, by kind of job."""
    judged = [r for r in rows if r.get("judge_requests") not in (None, "")]
    if not judged:
        return []
    cfg = judge_config(config.get("judge") or {})
    lines = ["## The LLM judge", "",
             f"{len(judged)} judge jobs (`results/tables/llm_judge.csv`; not part of `all`), model "
             f"`{cfg.model}` at {cfg.base_url}. Requests and tokens as the jobs will ask them, with the test "
             f"references standing in for the outputs; tokens at {CHARS_PER_TOKEN:g} characters a token; the "
             "upper bound with every judgement's repair turn, max_chars-long outputs and max_tokens-long replies "
             "(ketchup.judge.estimate).", "",
             "| jobs | count | requests | at most | prompt tokens | at most | completion tokens | at most | USD | at most |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, rule in (*((k, JUDGE_RULES[k]) for k in RUN_FILES), ("all", None)):
        part = [r for r in judged if rule is None or r["rule"] == rule]
        sums = [sum(int(r[c]) for r in part) for c in JUDGE_COLUMNS[:6]]
        money = [sum(float(r[c]) for r in part) if part and part[0][c] is not None else None
                 for c in JUDGE_COLUMNS[6:]]
        lines.append(f"| {label} | {len(part)} | " + " | ".join(str(s) for s in sums) + " | "
                     + " | ".join("no price set" if m is None else f"{m:.2f}" for m in money) + " |")
    return lines + ["", "Money where judge.price_per_1m_prompt_tokens / _completion_tokens are set. Retries after "
                        "server errors and timeouts are not counted.", ""]


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _hours_by(rows, key: Callable[[dict], str]) -> list[tuple[str, float, int]]:
    hours, count = defaultdict(float), defaultdict(int)
    for r in rows:
        k = key(r)
        if k:
            hours[k] += float(r["predicted_s"]) / 3600
            count[k] += 1
    return sorted(((k, h, count[k]) for k, h in hours.items()), key=lambda x: -x[1])


def _table(title: str, items, total: float) -> list[str]:
    lines = [f"### By {title}", "", f"| {title} | jobs | hours | share |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {n} | {h:.3g} | {100 * h / total:.1f} % |" for k, h, n in items]
    return lines + [""]


def summary(rows: list[dict[str, Any]], config: dict[str, Any], cal: dict[str, Any],
            lengths: dict[str, TaskLengths], target: str, margin: float, startup: str = "cold") -> str:
    """The plan in words: hours by rule, method, task and student size; the total; the share of each
    component; the settings behind the largest shares; what the prediction rests on; the judge's
    requests and tokens. The hours are the target's jobs' (judge_rows adds judge jobs outside it)."""
    every = rows
    rows = [r for r in rows if not (r["rule"] in JUDGE_RULES.values() and not r["benchmark"])]
    total_s = sum(float(r["predicted_s"]) for r in rows)
    total = total_s / 3600 or 1e-12
    upper = sum(float(r["predicted_max_s"]) for r in rows) / 3600
    model_rules = costmodel.MODEL_RULES
    device_h = sum(float(r["predicted_s"]) for r in rows if r["rule"] in model_rules) / 3600
    where = "CPU-extrapolated from smaller shapes, not a GPU figure" if cal.get("extrapolated") else "measured"
    lines = [
        "# What this run costs (predicted)", "",
        f"Target `{target}`: {len(rows)} jobs, {total:.3g} hours in all if run one after another "
        f"({device_h:.3g} h in the jobs that train or decode: {', '.join(sorted(model_rules))}).",
        f"Upper bound, every decode running to max_new_tokens: {upper:.3g} hours.", "",
        f"Calibration: {cal['device']}, torch {cal['torch']}, median of {cal['repeats']} timings per unit; "
        f"{where}.",
        f"Resources asked for (runtime_min, mem_mb): the prediction x {margin} (plan.margin).",
        "Job startup: " + ("a fork of the local run's warm worker (ketchup.worker)" if startup == "warm" else
                           "a fresh interpreter per job (cluster, conda, or KETCHUP_WARM_WORKER=0)") + ".", "",
        "## Share of each part", "", "| part | hours | share | set by |", "| --- | ---: | ---: | --- |",
    ]
    parts = sorted(((c, sum(float(r[c]) for r in rows) / 3600) for c in COMPONENTS), key=lambda x: -x[1])
    lines += [f"| {LABELS[c]} | {h:.3g} | {100 * h / total:.1f} % | {CONTROLS[c]} |" for c, h in parts]
    lines += ["", f"The largest shares: {LABELS[parts[0][0]]} ({100 * parts[0][1] / total:.0f} %), set by "
                  f"{CONTROLS[parts[0][0]]}; then {LABELS[parts[1][0]]} ({100 * parts[1][1] / total:.0f} %), set by "
                  f"{CONTROLS[parts[1][0]]}.", ""]
    family = lambda r: registry.get(registry.method_and_k(r["method"], 1)[0]).family if r["method"] else ""  # noqa: E731
    lines += _table("rule", _hours_by(rows, lambda r: r["rule"]), total)
    lines += _table("method", _hours_by(rows, lambda r: r["method"]), total)
    lines += _table("method family", _hours_by(rows, family), total)
    lines += _table("task", _hours_by(rows, lambda r: r["task"]), total)
    lines += _table("student size", _hours_by(rows, lambda r: r["student"]), total)
    top = sorted(rows, key=lambda r: -float(r["predicted_s"]))[:10]
    lines += ["### The ten longest jobs", "", "| rule | wildcards | hours | steps | dev evals | decoded tokens | rollouts |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['rule']} | {r['wildcards']} | {float(r['predicted_s']) / 3600:.3g} | {r['steps']} | "
              f"{r['dev_evals']} | {r['decoded_tokens']} | {r['rollouts']} |" for r in top]
    lines += ["", "## What the prediction rests on", "",
              "- Unit costs: loss + backward of a micro-batch per method family (a + b_S S + b_T T), the optimiser "
              "step, and a decode per generation batch size (a + b L), timed at the config's shapes with random "
              "weights (results/plan/calibration.json).",
              "- Padded lengths: the mean longest source / target of random micro-batches of the data "
              "(length-grouped batches when train.group_by_length).",
              "- Decoded lengths: each generation batch decodes as long as its longest reference target "
              "(at most max_new_tokens); RL rollouts and js/tvd samples as long as the longest target of "
              "their micro-batch. An untrained or diverging model that never stops decodes to "
              "max_new_tokens: the upper bound above.",
              "- Startup and model I/O: an interpreter's imports (or a fork of the local warm worker), loading "
              "and saving models, resumable checkpoints, timed per model.",
              "- Not counted: data download, the CPU work of the light jobs beyond their startup, waiting in a queue."]
    for task, tl in lengths.items():
        sizes = ", ".join(f"{s} {sl.n}" for s, sl in tl.splits.items())
        mean_t = {s: sum(sl.target) / max(sl.n, 1) for s, sl in tl.splits.items()}
        lines.append(f"- {task}: {sizes} examples; mean target {mean_t['dev']:.1f} tokens on dev "
                     f"(max_new_tokens {generation_settings(config, task)['max_new_tokens']}); lengths from {tl.how}.")
    if judge := judge_summary(every, config):
        lines += ["", *judge]
    return "\n".join(lines) + "\n"


