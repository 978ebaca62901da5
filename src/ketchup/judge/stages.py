"""Pipeline stages of the LLM judge (plain functions; every output is written atomically).

Inputs
------
Prediction files: JSONL, one record per example ``{"id", "source", "reference", "prediction"}``.

Outputs
-------
``score_run`` writes ``out_path`` (JSONL, one line per judged example, in prediction-file order)::

    {"id": str, "scores": {criterion: int 1..10 | null}, "valid": bool,
     "usage": {"prompt_tokens": int, "completion_tokens": int}, "cost_usd": float | null,
     "attempts": int, "repairs": 0 | 1, "repair_usage": {...the repair turn's part of usage...},
     "error": str | null, "reply": str | null}

(``attempts``: HTTP requests that produced the judgement, transport retries and the repair turn
included; ``reply``: the last reply, the repaired one after a repair turn.) Next to it
:func:`summary_path` (``scores.jsonl`` -> ``scores.summary.json``): counts, per-criterion means over
valid judgements, template version, what producing the judgements took (``requests``,
``repair_requests``, ``prompt_tokens``, ``completion_tokens``, ``repair_prompt_tokens``,
``repair_completion_tokens``, ``cost_usd``; from the cache or not) and what this run itself asked
and spent (``this_run``: ``api_requests``, ``repair_requests``, ``cache_hits``, ``prompt_tokens``,
``completion_tokens``, ``cost_usd``, ``structured_output``: "used", "refused", "off" or "untried").
The summary is written first and the JSONL last, so the JSONL existing means the stage finished.

``pairwise_run`` writes ``out_path`` (JSONL) with, per example, both orders and the combination
(``ab``: method shown as A, baseline as B; ``ba``: swapped; outcomes are the method's)::

    {"id": str, "baseline": str,
     "ab": {"verdict": "A"|"B"|"tie"|null, "outcome": "win"|"tie"|"loss"|null, "valid": bool,
            "attempts": int, "repairs": 0|1, "error": ..., "reply": ...},
     "ba": {...same...},
     "outcome": "win"|"tie"|"loss"|"invalid", "valid": bool,
     "usage": {...both orders summed...}, "repair_usage": {...both orders summed...}, "cost_usd": float}

plus its summary (win/tie/loss counts and rates, position-consistency diagnostics). The combination
rule is documented in :mod:`ketchup.judge.protocol`.

Run identity for ``judge_table``
--------------------------------
Each file in ``score_files`` / ``pairwise_files`` is either a path laid out as
``.../{task}/{student}/{method}/seed{seed}/<file>.jsonl`` (e.g.
``results/judge/xsum/t5-small/ketchup/seed0/scores.jsonl``; the four directories above the file
give the run) or a mapping ``{"path": ..., "task": ..., "student": ..., "method": ..., "seed": ...}``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ketchup import paths
from ketchup.analysis import variance
from ketchup.io import DataError, numbered_jsonl, read_jsonl, write_json, write_jsonl, write_text

from . import protocol
from .cache import JudgeCache
from .client import JudgeClient, Judgement
from .config import JudgeConfig, JudgeConfigError, JudgeInvalidError, check_enabled, is_enabled

__all__ = [
    "score_run", "pairwise_run", "judge_table", "check_enabled", "is_enabled", "summary_path",
    "parse_run_path", "read_predictions", "JudgeConfigError", "TABLE_BASE_COLUMNS",
]

log = logging.getLogger("ketchup.judge")

N_BOOT = 2000
CI_LEVEL = 0.95


def summary_path(out_path: str | os.PathLike) -> Path:
    """``.../scores.jsonl`` -> ``.../scores.summary.json`` (the stage's summary file)."""
    p = Path(out_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(stem + ".summary.json")


def read_predictions(path: str | os.PathLike) -> dict[str, dict]:
    """Prediction records by id (order kept); checks the fields and that ids are unique."""
    out: dict[str, dict] = {}
    for line, r in numbered_jsonl(path):
        missing = [k for k in ("id", "prediction") if k not in r]
        if missing:
            raise DataError(f"{path}:{line}: record lacks {missing}")
        ex_id = str(r["id"])
        if ex_id in out:
            raise DataError(f"{path}:{line}: duplicate example id {ex_id!r}")
        out[ex_id] = r
    return out


def _run_async(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    raise RuntimeError("call the a*-variant (e.g. ascore_run) from inside a running event loop")


def _progress(done: int, total: int) -> None:
    if total and (done == total or done % max(1, total // 10) == 0):
        log.info("judge: %d/%d judgements", done, total)


async def _gather(coros: Sequence) -> list:
    """Run coroutines concurrently (the client's semaphore caps the requests), logging progress."""
    total, done = len(coros), 0
    tasks = [asyncio.ensure_future(c) for c in coros]

    async def _watch():
        nonlocal done
        for fut in asyncio.as_completed(tasks):
            await fut
            done += 1
            _progress(done, total)

    try:
        await _watch()
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [t.result() for t in tasks]


def _check_invalid(records: list[dict], cfg: JudgeConfig, what: str, predictions_path) -> None:
    """Raise JudgeInvalidError, before any output is written, when the share of invalid records
    (unparseable replies; transport failures never get here) exceeds ``judge.max_invalid_fraction``."""
    bad = [r for r in records if not r["valid"]]
    if records and len(bad) / len(records) > cfg.max_invalid_fraction:
        def shown(r):
            reply = r.get("reply") if "reply" in r else next(
                (r[o].get("reply") for o in ("ab", "ba") if not r[o]["valid"]), None)
            return f"{r['id']}: {(reply or '')[:120]!r}"

        raise JudgeInvalidError(
            f"{what} of {predictions_path}: {len(bad)} of {len(records)} judgements invalid (unparseable "
            f"replies from {cfg.model!r} at {cfg.base_url}), above judge.max_invalid_fraction = "
            f"{cfg.max_invalid_fraction}. E.g. " + "; ".join(shown(r) for r in bad[:3])
            + ". They are cached: a rerun asks nothing again; change judge.model, judge.max_tokens or the "
            "prompts (src/ketchup/judge/prompts/), or raise judge.max_invalid_fraction."
        )


# --------------------------------------------------------------------------- score

async def ascore_run(judge_cfg, task: str, predictions_path, out_path, cache_dir) -> dict:
    cfg = check_enabled(judge_cfg)
    preds = read_predictions(predictions_path)
    ids = protocol.sample_ids(preds.keys(), cfg.n_examples, cfg.seed)
    tdesc = protocol.describe_task(task, dict(cfg.task_descriptions))
    version = protocol.template_version("score")
    criteria = list(cfg.criteria)
    rf, repair = protocol.response_format("score", criteria), protocol.repair_message("score", criteria)

    def parse(text):
        return protocol.parse_score_reply(text, criteria)

    async with JudgeClient(cfg, JudgeCache(cache_dir)) as jc:
        coros = []
        for ex_id in ids:
            r = preds[ex_id]
            for msgs in protocol.example_messages("score", tdesc, r.get("source", ""), r.get("reference", ""),
                                                  r["prediction"], None, criteria, cfg.max_chars):
                coros.append(jc.judge(msgs, parse, version, kind="score", response_format=rf, repair=repair))
        results: list[Judgement] = await _gather(coros)
        this_run = jc.run_stats()

    records = []
    for ex_id, j in zip(ids, results):
        scores = j.parsed if j.valid else {c: None for c in criteria}
        records.append({
            "id": ex_id, "scores": scores, "valid": j.valid, "usage": j.usage,
            "cost_usd": j.cost_usd, "attempts": j.attempts, "repairs": j.repairs,
            "repair_usage": j.repair_usage, "error": j.error, "reply": j.reply,
        })
    _check_invalid(records, cfg, "judge scores", predictions_path)
    valid = [r for r in records if r["valid"]]
    summary = {
        "kind": "score", "task": task, "model": cfg.model, "template_version": version,
        "criteria": criteria, "predictions": str(predictions_path),
        "n_examples": len(records), "n_valid": len(valid), "n_invalid": len(records) - len(valid),
        "mean": {c: (float(np.mean([r["scores"][c] for r in valid])) if valid else None) for c in criteria},
        **_usage_totals(records, cfg),
        "this_run": this_run,
    }
    write_json(summary_path(out_path), summary)
    write_jsonl(out_path, records)
    log.info("judge scores: %s (%d valid, %d invalid; this run: %d API requests, %d repair turns, %d cache hits, "
             "%d prompt + %d completion tokens)", out_path, summary["n_valid"], summary["n_invalid"],
             this_run["api_requests"], this_run["repair_requests"], this_run["cache_hits"],
             this_run["prompt_tokens"], this_run["completion_tokens"])
    return summary


def score_run(judge_cfg: Mapping[str, Any] | JudgeConfig, task: str, predictions_path, out_path,
              cache_dir) -> dict:
    """Score a deterministic sample of a run's predictions (1-10 per criterion); returns the summary.

    Writes ``out_path`` (JSONL) and :func:`summary_path` ``(out_path)``; see the module docstring.
    Raises :class:`JudgeConfigError` if the judge is disabled or the key variable is not set,
    :class:`JudgeTransportError` when a request got no reply after every retry, and
    :class:`JudgeInvalidError` when more than ``judge.max_invalid_fraction`` of the judgements are
    unparseable; nothing is written then, but every finished judgement is cached.
    """
    return _run_async(ascore_run(judge_cfg, task, predictions_path, out_path, cache_dir))


def record_requests(r: Mapping[str, Any]) -> tuple[int, int]:
    """(HTTP requests, repair turns) that produced a score or pairwise record (both orders)."""
    parts = [r[o] for o in ("ab", "ba") if isinstance(r.get(o), Mapping)] or [r]
    return (sum(int(p.get("attempts", 0)) for p in parts), sum(int(p.get("repairs", 0)) for p in parts))


def _usage_totals(records: Iterable[dict], cfg: JudgeConfig) -> dict:
    """What producing the records took (from the cache or not): requests, repair turns, tokens, cost."""
    records = list(records)
    pt = sum(int(r["usage"]["prompt_tokens"]) for r in records)
    ct = sum(int(r["usage"]["completion_tokens"]) for r in records)
    reqs = [record_requests(r) for r in records]
    return {
        "requests": sum(n for n, _ in reqs), "repair_requests": sum(k for _, k in reqs),
        "prompt_tokens": pt, "completion_tokens": ct,
        "repair_prompt_tokens": sum(int((r.get("repair_usage") or {}).get("prompt_tokens", 0)) for r in records),
        "repair_completion_tokens": sum(int((r.get("repair_usage") or {}).get("completion_tokens", 0))
                                        for r in records),
        "cost_usd": cfg.cost(pt, ct),
    }


# --------------------------------------------------------------------------- pairwise

async def apairwise_run(judge_cfg, task: str, predictions_path, baseline_predictions_path, out_path,
                        cache_dir, baseline: str | None = None) -> dict:
    cfg = check_enabled(judge_cfg)
    baseline = baseline or cfg.baseline
    preds = read_predictions(predictions_path)
    base = read_predictions(baseline_predictions_path)
    ids = protocol.sample_ids(preds.keys(), cfg.n_examples, cfg.seed)
    missing = [i for i in ids if i not in base]
    if missing:
        raise ValueError(f"{baseline_predictions_path} lacks {len(missing)} example id(s) of "
                         f"{predictions_path}, e.g. {missing[:3]}")
    tdesc = protocol.describe_task(task, dict(cfg.task_descriptions))
    version = protocol.template_version("pairwise")
    criteria = list(cfg.criteria)
    ask = {"response_format": protocol.response_format("pairwise", criteria),
           "repair": protocol.repair_message("pairwise", criteria)}

    async with JudgeClient(cfg, JudgeCache(cache_dir)) as jc:
        coros = []
        for ex_id in ids:
            r, b = preds[ex_id], base[ex_id]
            src, ref = r.get("source", ""), r.get("reference", "")
            for msgs in protocol.example_messages("pairwise", tdesc, src, ref, r["prediction"], b["prediction"],
                                                  criteria, cfg.max_chars):  # ab, then ba
                coros.append(jc.judge(msgs, protocol.parse_pairwise_reply, version, kind="pairwise", **ask))
        results: list[Judgement] = await _gather(coros)
        this_run = jc.run_stats()

    records = []
    per = len(protocol.PAIR_ORDERS)
    for k, ex_id in enumerate(ids):
        j_ab, j_ba = results[per * k: per * (k + 1)]
        o_ab = protocol.orient(j_ab.parsed, "A") if j_ab.valid else None
        o_ba = protocol.orient(j_ba.parsed, "B") if j_ba.valid else None
        combined = protocol.combine_outcomes(o_ab, o_ba)
        pt, ct = j_ab.prompt_tokens + j_ba.prompt_tokens, j_ab.completion_tokens + j_ba.completion_tokens

        def order(j: Judgement, outcome):
            return {"verdict": j.parsed if j.valid else None, "outcome": outcome, "valid": j.valid,
                    "attempts": j.attempts, "repairs": j.repairs, "error": j.error, "reply": j.reply}

        records.append({
            "id": ex_id, "baseline": baseline, "ab": order(j_ab, o_ab), "ba": order(j_ba, o_ba),
            "outcome": combined, "valid": combined != "invalid",
            "usage": {"prompt_tokens": pt, "completion_tokens": ct},
            "repair_usage": {k: j_ab.repair_usage[k] + j_ba.repair_usage[k] for k in j_ab.repair_usage},
            "cost_usd": cfg.cost(pt, ct),
        })
    _check_invalid(records, cfg, "judge pairwise", predictions_path)
    both = [r for r in records if r["valid"]]
    single = [r[o]["verdict"] for r in records for o in ("ab", "ba") if r[o]["valid"]]
    summary = {
        "kind": "pairwise", "task": task, "model": cfg.model, "template_version": version,
        "baseline": baseline, "predictions": str(predictions_path),
        "baseline_predictions": str(baseline_predictions_path),
        "n_examples": len(records),
        **protocol.outcome_rates(r["outcome"] for r in records),
        # diagnostics of position bias: how often both orders agree, how often "A" is picked
        "order_consistency": (sum(r["ab"]["outcome"] == r["ba"]["outcome"] for r in both) / len(both)) if both else None,
        "first_position_rate": (sum(v == "A" for v in single) / len(single)) if single else None,
        **_usage_totals(records, cfg),
        "this_run": this_run,
    }
    write_json(summary_path(out_path), summary)
    write_jsonl(out_path, records)
    log.info("judge pairwise: %s (win %s / tie %s / loss %s, %d invalid)", out_path,
             summary["n_win"], summary["n_tie"], summary["n_loss"], summary["n_invalid"])
    return summary


def pairwise_run(judge_cfg: Mapping[str, Any] | JudgeConfig, task: str, predictions_path,
                 baseline_predictions_path, out_path, cache_dir, baseline: str | None = None) -> dict:
    """Compare a run with the baseline run in both orders; returns the summary.

    ``baseline`` is only the name recorded in the output (default ``judge.baseline``). The same
    example sample as :func:`score_run` is used; every sampled id must be in the baseline file.
    Fails as :func:`score_run` does; a pair counts as invalid when either order's reply is.
    """
    return _run_async(apairwise_run(judge_cfg, task, predictions_path, baseline_predictions_path,
                                    out_path, cache_dir, baseline))


# --------------------------------------------------------------------------- table

RUN_FILE = paths.run_regex("judge")  # the folder of ketchup.paths.judge_file


def parse_run_path(path: str | os.PathLike) -> dict[str, Any]:
    """``.../judge/{task}/{student}/{method}/seed{seed}/<file>`` -> ``{task, student, method, seed}``."""
    try:
        return paths.parse(Path(path).parent, RUN_FILE)
    except ValueError:
        raise DataError(f"{path}: cannot read (task, student, method, seed) from it: expected "
                        ".../judge/{task}/{student}/{method}/seed{seed}/<file>, or pass a mapping with "
                        "path, task, student, method and seed") from None


def _resolve(entry) -> tuple[Path, dict]:
    if isinstance(entry, Mapping):
        missing = [k for k in ("path", "task", "student", "method", "seed") if k not in entry]
        if missing:
            raise ValueError(f"judge_table entry {dict(entry)!r} lacks {missing}")
        return Path(entry["path"]), {k: entry[k] for k in ("task", "student", "method", "seed")}
    return Path(entry), parse_run_path(entry)


def bootstrap_ci(sums: np.ndarray, counts: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                 level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Pooled mean and percentile-bootstrap CI, resampling clusters (examples).

    ``sums[i]`` / ``counts[i]``: sum and number of valid scores of example i over all seeds, so all
    seeds' judgements of one example are resampled together
    (:func:`ketchup.analysis.variance.bootstrap_ratio`). (nan, nan, nan) without data; the CI
    is nan with fewer than two examples.
    """
    sums, counts = np.asarray(sums, float), np.asarray(counts, float)
    keep = counts > 0
    sums, counts = sums[keep], counts[keep]
    if counts.sum() == 0:
        return math.nan, math.nan, math.nan
    mean = float(sums.sum() / counts.sum())
    n = len(sums)
    if n < 2:
        return mean, math.nan, math.nan
    draws = variance.bootstrap_counts(n, n_boot, np.random.default_rng(seed))
    lo, hi = variance.bootstrap_ratio(sums, counts, draws, level)
    return mean, lo, hi


TABLE_BASE_COLUMNS = [
    "task", "student", "method", "n_seeds", "seeds",
    "n_scored", "n_score_invalid",
]
TABLE_PAIR_COLUMNS = [
    "baseline", "n_pairs", "n_pair_invalid", "win_rate", "tie_rate", "loss_rate",
]
TABLE_TAIL_COLUMNS = ["n_invalid", "requests", "repair_requests", "prompt_tokens", "completion_tokens", "cost_usd"]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def judge_table(score_files: Iterable, pairwise_files: Iterable, out_csv, *, n_boot: int = N_BOOT,
                seed: int = 0) -> list[dict]:
    """Aggregate judge outputs into ``llm_judge.csv``: one row per (task, student, method).

    Seeds are pooled. Per criterion ``c``: ``c_mean`` over all valid judgements of all seeds and a
    95 % percentile-bootstrap CI ``c_ci_low``/``c_ci_high`` (``n_boot`` = 2000 resamples of the example ids,
    all seeds of an example moving together; fixed RNG ``seed``). Pairwise: combined outcomes of
    all seeds vs the baseline, rates over valid pairs (empty for rows without pairwise files,
    e.g. the baseline itself). ``n_invalid`` = invalid score judgements + invalid pairs; HTTP
    requests (``requests``, of which ``repair_requests`` were repair turns), tokens and cost are
    summed over both kinds (what producing the judgements cost, cached or not).
    Returns the rows (as written, values unformatted).
    """
    groups: dict[tuple, dict] = defaultdict(lambda: {"seeds": set(), "scores": [], "pairs": []})
    criteria: list[str] = []
    for entry in score_files:
        path, run = _resolve(entry)
        g = groups[(run["task"], run["student"], run["method"])]
        g["seeds"].add(int(run["seed"]))
        for r in read_jsonl(path):
            for c in (r.get("scores") or {}):
                if c not in criteria:
                    criteria.append(c)
            g["scores"].append(r)
    for entry in pairwise_files:
        path, run = _resolve(entry)
        g = groups[(run["task"], run["student"], run["method"])]
        g["seeds"].add(int(run["seed"]))
        g["pairs"].extend(read_jsonl(path))

    rows = []
    for (task, student, method), g in sorted(groups.items()):
        row: dict[str, Any] = {"task": task, "student": student, "method": method,
                               "n_seeds": len(g["seeds"]), "seeds": ";".join(map(str, sorted(g["seeds"])))}
        scores = g["scores"]
        row["n_scored"] = len(scores)
        row["n_score_invalid"] = sum(not r.get("valid") for r in scores)
        for c in criteria:
            sums: dict[str, float] = defaultdict(float)
            counts: dict[str, int] = defaultdict(int)
            for r in scores:
                v = (r.get("scores") or {}).get(c)
                if r.get("valid") and v is not None:
                    sums[str(r["id"])] += v
                    counts[str(r["id"])] += 1
            keys = sorted(sums)
            m, lo, hi = bootstrap_ci(np.array([sums[k] for k in keys]), np.array([counts[k] for k in keys]),
                                     n_boot=n_boot, seed=seed)
            row[f"{c}_mean"], row[f"{c}_ci_low"], row[f"{c}_ci_high"] = m, lo, hi
        pairs = g["pairs"]
        baselines = sorted({str(r.get("baseline")) for r in pairs if r.get("baseline") is not None})
        rates = protocol.outcome_rates(r.get("outcome", "invalid") for r in pairs)
        row.update({
            "baseline": ";".join(baselines), "n_pairs": len(pairs), "n_pair_invalid": rates["n_invalid"],
            "win_rate": rates["win_rate"], "tie_rate": rates["tie_rate"], "loss_rate": rates["loss_rate"],
        })
        row["n_invalid"] = row["n_score_invalid"] + row["n_pair_invalid"]
        allr = scores + pairs
        reqs = [record_requests(r) for r in allr]
        row["requests"], row["repair_requests"] = sum(n for n, _ in reqs), sum(k for _, k in reqs)
        row["prompt_tokens"] = sum(int((r.get("usage") or {}).get("prompt_tokens", 0)) for r in allr)
        row["completion_tokens"] = sum(int((r.get("usage") or {}).get("completion_tokens", 0)) for r in allr)
        costs = [float(r["cost_usd"]) for r in allr if r.get("cost_usd") is not None]
        row["cost_usd"] = float(sum(costs)) if costs else None  # empty without prices
        rows.append(row)

    columns = (TABLE_BASE_COLUMNS
               + [f"{c}_{s}" for c in criteria for s in ("mean", "ci_low", "ci_high")]
               + TABLE_PAIR_COLUMNS + TABLE_TAIL_COLUMNS)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _fmt(row.get(k)) for k in columns})
    write_text(out_csv, buf.getvalue())
    return rows
