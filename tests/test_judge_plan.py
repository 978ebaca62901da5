"""The judge in the cost plan (ketchup.judge.estimate, ketchup.plan.judge_rows): its requests and
prompt tokens are those the judge stage sends (checked against a local server's record of every
request), its upper bound holds when every judgement needs its repair turn, and its rows and totals
reach cost.csv and summary.md, with money only where prices are set."""

from __future__ import annotations

import csv
import math

import pytest
import yaml

from judge_server import FakeJudgeServer
from ketchup.judge import judge_runs, load_config, pairwise_run, score_run
from ketchup.judge.estimate import COLUMNS, job_estimate
from ketchup.io import write_jsonl
from snakemake_runner import REPO_ROOT
from test_judge import KEY, KEY_ENV, make_cfg


def _examples(n: int, marker: str = "") -> list[dict]:
    return [{"id": f"e{i}", "source": f"{marker}source {i} " + "word " * i, "target": f"q={i % 9 + 1} ref {i}"}
            for i in range(n)]


def _predictions(path, examples, baseline: bool = False):
    """What the student job writes, with each prediction its reference (the estimate's stand-in); the
    baseline's upper-cased: as long, but not the same text (identical prompts are asked once)."""
    write_jsonl(path, ({"id": e["id"], "source": e["source"], "reference": e["target"],
                        "prediction": e["target"].upper() if baseline else e["target"]} for e in examples))
    return path


def _sent(server) -> tuple[int, int, int]:
    """(requests, prompt tokens at 4 characters a token, completion tokens) of what the server received."""
    got = [r for r in server.requests if r["status"] == 200]
    prompt = sum(math.ceil(sum(len(m["content"]) for m in r["messages"]) / 4) for r in got)
    return len(server.requests), prompt, sum(r["usage"]["completion_tokens"] for r in got)


@pytest.mark.parametrize("kind", ["score", "pairwise"])
def test_estimate_counts_what_the_stage_sends(monkeypatch, tmp_path, kind):
    monkeypatch.setenv(KEY_ENV, KEY)
    examples = _examples(7)
    preds = _predictions(tmp_path / "p.jsonl", examples)
    base = _predictions(tmp_path / "b.jsonl", examples, baseline=True)
    with FakeJudgeServer() as srv:
        cfg = load_config(make_cfg(srv, n_examples=5))  # a seeded sample of 5 of the 7
        if kind == "score":
            score_run(cfg, "xsum", preds, tmp_path / "out.jsonl", tmp_path / "cache")
        else:
            pairwise_run(cfg, "xsum", preds, base, tmp_path / "out.jsonl", tmp_path / "cache")
        requests, prompt, _ = _sent(srv)
    est = job_estimate(cfg, kind, "xsum", examples)
    assert requests == est["judge_requests"] == 5 * (1 if kind == "score" else 2)
    assert prompt == est["judge_prompt_tokens"]
    assert est["judge_requests_max"] == 2 * requests + 1  # a repair turn each, one refused response_format


def test_the_upper_bound_holds_when_every_judgement_needs_its_repair_turn(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, KEY)
    examples = _examples(4, marker="[[ALWAYS_MALFORMED]] ")
    preds = _predictions(tmp_path / "p.jsonl", examples)
    base = _predictions(tmp_path / "b.jsonl", examples, baseline=True)
    with FakeJudgeServer() as srv:
        cfg = load_config(make_cfg(srv, n_examples=0, max_invalid_fraction=1.0, max_chars=200))
        pairwise_run(cfg, "xsum", preds, base, tmp_path / "out.jsonl", tmp_path / "cache")
        requests, prompt, completion = _sent(srv)
    est = job_estimate(cfg, "pairwise", "xsum", examples)
    assert requests == 2 * est["judge_requests"] <= est["judge_requests_max"]
    assert est["judge_prompt_tokens"] < prompt <= est["judge_prompt_tokens_max"]
    assert completion <= est["judge_completion_tokens_max"] == 2 * est["judge_requests"] * cfg.max_tokens


def _plan_config(prices: bool) -> dict:
    config = yaml.safe_load((REPO_ROOT / "workflow" / "configs" / "test.yaml").read_text())
    config["judge"] = {"enabled": True, "base_url": "http://127.0.0.1:9/v1", "model": "m", "baseline": "kl",
                       "n_examples": 5}
    if prices:
        config["judge"].update(price_per_1m_prompt_tokens=2.0, price_per_1m_completion_tokens=8.0)
    return config


@pytest.mark.parametrize("prices", [False, True])
def test_plan_rows_and_summary(tmp_path, prices):
    from test_plan import _cal

    from ketchup import costmodel, plan
    from ketchup.costmodel import Job, SplitLengths, TaskLengths
    from ketchup.data import sources, synthetic

    config = _plan_config(prices)
    for split in ("train", "dev", "test"):
        write_jsonl(tmp_path / "en_nl" / f"{split}.jsonl", synthetic.generate("en_nl", split, 12, 0))
    split = SplitLengths((3,) * 12, (4,) * 12)
    lengths = {"en_nl": TaskLengths({"train": split, "dev": split, "test": split}, "hand")}
    cal = {**_cal(), "device": "cpu", "torch": "x", "repeats": 1}
    data_job = Job("data", {"task": "en_nl"}, "results/data/en_nl", "results/benchmarks/data/en_nl.tsv")
    rows = [costmodel.plan_row(data_job, costmodel.job_counts(data_job, config, cal, lengths), 1.5)]
    rows = plan.judge_rows(config, rows, {"en_nl": str(tmp_path / "en_nl")}, cal, lengths, 1.5)
    runs = judge_runs(config)
    n = len(config["methods"])  # a score per method, a comparison with kl for every other method
    assert len(runs) == n + (n - 1) and len(rows) == 1 + len(runs)
    test = sources.examples("en_nl", tmp_path / "en_nl" / "test.jsonl", config["tasks"]["en_nl"]["prompt"])
    cfg = load_config(config["judge"])
    want = {kind: job_estimate(cfg, kind, "en_nl", test) for kind in ("score", "pairwise")}
    for row in rows[1:]:
        kind = "score" if row["rule"] == "judge_scores" else "pairwise"
        assert {c: row[c] for c in COLUMNS} == want[kind] and row["output"].endswith(f"/{row['method']}/seed0/"
                                                                                        f"{'scores' if kind == 'score' else 'pairwise'}.jsonl")
    assert want["score"]["judge_requests"] == 5 and want["pairwise"]["judge_requests"] == 10
    plan.write_csv(rows, tmp_path / "cost.csv")
    with (tmp_path / "cost.csv").open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert sum(int(r["judge_requests"] or 0) for r in read) == n * 5 + (n - 1) * 10
    assert read[0]["judge_requests"] == "" and (read[1]["judge_cost_usd"] != "") == prices
    md = plan.summary(rows, config, cal, lengths, "all", 1.5)
    assert "Target `all`: 1 jobs" in md  # the judge's jobs are not in the target's hours
    line = next(r for r in md.splitlines() if r.startswith(f"| all | {len(runs)} | {n * 5 + (n - 1) * 10} |"))
    if prices:
        total = sum(float(r["judge_cost_usd"]) for r in rows[1:])
        assert f"| {total:.2f} |" in line and total > 0
    else:
        assert "no price set" in line
