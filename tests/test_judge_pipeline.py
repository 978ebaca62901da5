"""The LLM judge as pipeline targets (workflow/rules/judge.smk), end to end through Snakemake.

A real HTTP server on loopback speaks chat completions with scripted replies (tests/judge_server.py):
per example, valid, malformed once, 429 once, 500 once, slow once (past the timeout), fenced JSON or
always malformed. The judge stages then run on a small copy of workflow/configs/test.yaml.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import select
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge_server import FakeJudgeServer, _block  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO_ROOT / "Snakefile"
TEST_CONFIG = REPO_ROOT / "workflow" / "configs" / "test.yaml"

KEY_ENV = "KETCHUP_PIPELINE_JUDGE_KEY"
KEY = "sk-pipeline-TEST-7d41b2c9-NEVER-STORE-0b55"
CRITERIA = ["overall", "informativeness", "coherence"]
METHODS = ["sft", "seqkd"]
BASELINE = "sft"
N_EXAMPLES = 8
CONCURRENCY = 3
RUN = "results/judge/en_nl/tiny/{method}/seed0"
TARGETS = ["results/tables/llm_judge.csv", "results/figures/llm_judge.png"]

ALWAYS_MALFORMED = "[[ALWAYS_MALFORMED]]"
# Behaviours given to the examples in the order their source is first seen (so all are used).
BEHAVIOURS = ["[[MALFORMED_ONCE]]", "[[RATE_LIMIT_ONCE]]", "[[ERROR_ONCE]]", "[[SLOW_ONCE]]", "[[FENCED]]",
              ALWAYS_MALFORMED, ""]


def q_of(text: str) -> int:
    """The quality the server gives an output: a pure function of its text, 1..10."""
    return 1 + int(hashlib.sha256(text.strip().encode("utf-8")).hexdigest(), 16) % 10


def expected_scores(q: int) -> dict:
    return {"overall": q, "informativeness": max(1, q - 1), "coherence": min(10, q + 1)}


def _sleep_unless_hung_up(conn: socket.socket, seconds: float) -> None:
    """Sleep, but return early when the client closes the connection (it timed out)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([conn], [], [], min(left, 0.02))
        if ready:
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    return
            except OSError:
                return
            time.sleep(min(left, 0.02))


class PipelineJudgeServer(FakeJudgeServer):
    """FakeJudgeServer with behaviours keyed on the example and qualities keyed on the output text.

    A request is in flight until it is answered or its client hangs up (a timed-out client no
    longer holds one of its concurrency slots).
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.behaviour: dict[str, str] = {}
        self.asked: list[tuple] = []  # ("score", source, output) / ("pairwise", source, a, b)

    def respond(self, body, auth):
        messages = [dict(m) for m in body.get("messages", [])]
        user = next(m for m in messages if m.get("role") == "user")
        text = user["content"]
        src = _block(text, "source")
        with self.lock:
            if src not in self.behaviour:
                self.behaviour[src] = BEHAVIOURS[len(self.behaviour) % len(BEHAVIOURS)]
            marker = self.behaviour[src]
            if "<output_a>" in text:
                self.asked.append(("pairwise", src, _block(text, "output_a"), _block(text, "output_b")))
            else:
                self.asked.append(("score", src, _block(text, "output")))

        def with_q(m):
            return f"{m.group(1)}{m.group(2)} q={q_of(m.group(2))}{m.group(3)}"

        text = re.sub(r"(<(?:output|output_a|output_b)>\n?)(.*?)(\n?</(?:output|output_a|output_b)>)", with_q,
                      text, flags=re.S)
        user["content"] = text + "\n" + marker
        return super().respond({**body, "messages": messages}, auth)

    def _handler_class(self):
        server = self
        base = super()._handler_class()

        class Handler(base):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, body, headers, delay = server.respond(json.loads(raw), self.headers.get("Authorization"))
                    if delay:
                        _sleep_unless_hung_up(self.connection, delay)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                self._send(status, body, headers)

        return Handler


# --------------------------------------------------------------------------- helpers


def small_config(judge: dict | None) -> dict:
    """workflow/configs/test.yaml cut to one task, two methods, one seed and a few steps."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    task = cfg["tasks"]["en_nl"]
    task.update(n_train=160, n_dev=16, n_test=16)
    cfg["tasks"] = {"en_nl": task}
    cfg["methods"] = list(METHODS)
    cfg["seeds"] = [0]
    cfg["teacher"]["train"].update(max_steps=10, eval_every=10, checkpoint_every=10, dev_eval_examples=16)
    cfg["train"].update(max_steps=4, eval_every=4, checkpoint_every=4, dev_eval_examples=16)
    cfg["generation"] = {**cfg.get("generation", {}), "max_new_tokens": 16}
    if judge is not None:
        cfg["judge"] = judge
    return cfg


def judge_block(server: FakeJudgeServer) -> dict:
    return {
        "enabled": True, "base_url": server.base_url, "model": "fake-judge-1", "api_key_env": KEY_ENV,
        "temperature": 0.0, "max_tokens": 64, "n_examples": N_EXAMPLES, "seed": 3, "baseline": BASELINE,
        "concurrency": CONCURRENCY, "max_retries": 3, "max_invalid_fraction": 0.5,  # 1 in 7 always malformed
        "timeout_s": 1.0, "backoff_s": 0.01,
        "backoff_max_s": 0.05, "price_per_1m_prompt_tokens": 1000.0, "price_per_1m_completion_tokens": 2000.0,
        "criteria": CRITERIA,
    }


def env_with_key(key: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    if key is not None:
        env[KEY_ENV] = key
    return env


def snakemake(workdir: Path, configfile: Path, targets: list[str], env: dict, *extra: str,
              timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile", str(configfile),
           "--directory", str(workdir), "--cores", "2", *targets, *extra]  # extra last: --forcerun takes a list
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def files_under(*dirs: Path):
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file():
                yield p


# --------------------------------------------------------------------------- fail fast


@pytest.mark.parametrize(
    "case, reason",
    [
        ("disabled", "judge.enabled is false"),
        ("no-key", KEY_ENV),
        ("bad-baseline", "judge.baseline"),
    ],
)
def test_judge_target_fails_fast(tmp_path, case, reason):
    judge = {"enabled": False}
    key = None
    if case != "disabled":
        # not a loopback address, so a key is needed (nothing is ever sent there)
        judge = {"enabled": True, "base_url": "https://judge.example.com/v1", "model": "m", "api_key_env": KEY_ENV,
                 "baseline": BASELINE}
    if case == "bad-baseline":
        judge["baseline"] = "kl"  # not among the configured methods
        key = KEY
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(small_config(judge)))
    work = tmp_path / "work"
    work.mkdir()
    t0 = time.monotonic()
    proc = snakemake(work, cfg, TARGETS, env_with_key(key), timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert reason in out, out
    if case != "bad-baseline":
        assert "To enable the LLM judge" in out and "judge.enabled: true" in out and "export " in out, out
    assert "Traceback (most recent call last)" not in out, out
    assert not (work / "results").exists(), "a job started before the judge check failed"
    assert time.monotonic() - t0 < 60
    assert KEY not in out


def test_judge_targets_not_in_default_dag(tmp_path):
    # Off by default: `all` (main table) needs no judge and builds without a key.
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(small_config({"enabled": False})))
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, cfg, [], env_with_key(None), "-n", timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "main_table" in out, out
    assert not any(r in out for r in ("judge_scores", "judge_pairwise", "judge_table", "judge_figure")), out


# --------------------------------------------------------------------------- end to end


def test_judge_pipeline_end_to_end(tmp_path):
    with PipelineJudgeServer(delay=0.05, slow_s=2.5, expected_key=KEY) as server:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(yaml.safe_dump(small_config(judge_block(server))))
        work = tmp_path / "work"
        work.mkdir()
        env = env_with_key(KEY)

        proc = snakemake(work, cfg, TARGETS, env)
        out1 = proc.stdout + proc.stderr
        assert proc.returncode == 0, out1
        n_first = server.n_requests
        assert n_first > 0

        # ---- the scripted failures all happened, and the cap held
        statuses = [r["status"] for r in server.requests]
        assert 429 in statuses and 500 in statuses, statuses
        assert any(r["slow"] for r in server.requests)
        assert set(server.behaviour.values()) == set(BEHAVIOURS), server.behaviour
        assert 2 <= server.max_in_flight <= CONCURRENCY, server.max_in_flight
        assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)

        # ---- every score recovered (or, for the always-malformed example, counted invalid)
        preds = {m: {r["id"]: r for r in read_jsonl(work / f"results/predictions/en_nl/tiny/{m}/seed0.jsonl")}
                 for m in METHODS}
        sampled = None
        expected_rows = {}
        for m in METHODS:
            recs = read_jsonl(work / RUN.format(method=m) / "scores.jsonl")
            ids = [r["id"] for r in recs]
            assert len(ids) == N_EXAMPLES
            sampled = sampled or ids
            assert ids == sampled, "every method must be judged on the same examples"
            valid_q = []
            for r in recs:
                pred = preds[m][r["id"]]
                beh = server.behaviour[pred["source"]]
                if beh == ALWAYS_MALFORMED:
                    assert not r["valid"] and r["error"] == "unparseable reply" and r["attempts"] == 2, r
                    assert r["repairs"] == 1, r  # the prompt, then one repair turn
                    assert r["scores"] == {c: None for c in CRITERIA}
                else:
                    assert r["valid"], (beh, r)
                    assert r["scores"] == expected_scores(q_of(pred["prediction"])), (beh, r)
                    valid_q.append(q_of(pred["prediction"]))
            summary = json.loads((work / RUN.format(method=m) / "scores.summary.json").read_text())
            assert summary["n_valid"] == N_EXAMPLES - 1 and summary["n_invalid"] == 1
            assert summary["prompt_tokens"] > 0 and summary["completion_tokens"] > 0 and summary["cost_usd"] > 0
            expected_rows[m] = {"overall_mean": sum(valid_q) / len(valid_q), "n_score_invalid": 1}

        # ---- pairwise: both orders asked for every pair, outcome from the qualities, order cancelled
        asked = {a[1:] for a in server.asked if a[0] == "pairwise"}
        for m in METHODS:
            if m == BASELINE:
                assert not (work / RUN.format(method=m) / "pairwise.jsonl").exists()
                continue
            recs = read_jsonl(work / RUN.format(method=m) / "pairwise.jsonl")
            assert [r["id"] for r in recs] == sampled
            wins = ties = losses = invalid = 0
            for r in recs:
                mine, base = preds[m][r["id"]], preds[BASELINE][r["id"]]
                src = mine["source"]
                assert (src, mine["prediction"], base["prediction"]) in asked
                assert (src, base["prediction"], mine["prediction"]) in asked
                if server.behaviour[src] == ALWAYS_MALFORMED:
                    assert r["outcome"] == "invalid" and not r["valid"]
                    invalid += 1
                    continue
                qm, qb = q_of(mine["prediction"]), q_of(base["prediction"])
                want = "win" if qm > qb else "loss" if qm < qb else "tie"
                assert r["outcome"] == want, r
                assert r["ab"]["outcome"] == r["ba"]["outcome"] == want  # this judge has no position bias
                wins, ties, losses = wins + (want == "win"), ties + (want == "tie"), losses + (want == "loss")
            n = wins + ties + losses
            expected_rows[m].update(n_pair_invalid=invalid, win_rate=wins / n, tie_rate=ties / n,
                                    loss_rate=losses / n)

        # ---- the table
        with open(work / "results/tables/llm_judge.csv", newline="") as fh:
            rows = {r["method"]: r for r in csv.DictReader(fh)}
        assert set(rows) == set(METHODS)
        cols = next(iter(rows.values())).keys()
        for c in CRITERIA:
            assert {f"{c}_mean", f"{c}_ci_low", f"{c}_ci_high"} <= set(cols)
        assert {"win_rate", "tie_rate", "loss_rate", "n_invalid", "cost_usd", "prompt_tokens",
                "completion_tokens", "baseline"} <= set(cols)
        for m, row in rows.items():
            want = expected_rows[m]
            assert (row["task"], row["student"], row["n_seeds"]) == ("en_nl", "tiny", "1")
            assert float(row["overall_mean"]) == pytest.approx(want["overall_mean"], abs=1e-5)
            assert float(row["overall_ci_low"]) <= float(row["overall_mean"]) <= float(row["overall_ci_high"])
            assert int(row["n_score_invalid"]) == 1
            runs = [RUN.format(method=m) + "/scores.summary.json"]
            if m == BASELINE:
                assert row["win_rate"] == "" and row["n_pairs"] == "0" and int(row["n_invalid"]) == 1
            else:
                runs.append(RUN.format(method=m) + "/pairwise.summary.json")
                assert row["baseline"] == BASELINE
                for k in ("win_rate", "tie_rate", "loss_rate"):
                    assert float(row[k]) == pytest.approx(want[k], abs=1e-5)
                assert int(row["n_invalid"]) == 1 + want["n_pair_invalid"] == 2
            cost = sum(json.loads((work / p).read_text())["cost_usd"] for p in runs)
            assert float(row["cost_usd"]) == pytest.approx(cost, rel=1e-4) and cost > 0
        mask = os.umask(0)
        os.umask(mask)
        assert stat.S_IMODE((work / "results/tables/llm_judge.csv").stat().st_mode) == 0o666 & ~mask
        png = work / "results/figures/llm_judge.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (work / "results/figures/llm_judge.pdf").read_bytes()[:4] == b"%PDF"

        # ---- the key is nowhere on disk (outputs, cache, logs, benchmarks, Snakemake's metadata)
        checked = 0
        for p in files_under(work / "results", work / ".snakemake"):
            checked += 1
            assert KEY.encode() not in p.read_bytes(), f"API key leaked into {p}"
        assert checked > 20 and KEY not in out1
        assert list((work / "results/judge/cache").rglob("*.json"))

        # ---- a rerun of every judge job makes no request (everything comes from the cache)
        table_before = (work / "results/tables/llm_judge.csv").read_text()
        # (--rerun-triggers mtime: only the forced judge jobs rerun, even if rule code was edited meanwhile)
        proc = snakemake(work, cfg, TARGETS, env, "--rerun-triggers", "mtime",
                         "--forcerun", "judge_scores", "judge_pairwise")
        out2 = proc.stdout + proc.stderr
        assert proc.returncode == 0, out2
        assert "localrule judge_scores" in out2 and "localrule judge_pairwise" in out2, out2  # they ran again
        assert "localrule student" not in out2, out2
        assert server.n_requests == n_first, "the second run called the API"
        for m in METHODS:
            s = json.loads((work / RUN.format(method=m) / "scores.summary.json").read_text())
            assert s["this_run"]["api_requests"] == 0 and s["this_run"]["cache_hits"] == N_EXAMPLES
        assert (work / "results/tables/llm_judge.csv").read_text() == table_before
        for p in files_under(work / "results", work / ".snakemake"):
            assert KEY.encode() not in p.read_bytes(), f"API key leaked into {p}"


# --------------------------------------------------------------------------- config schema


def test_schema_judge_block_matches_the_judge_package(default_config):
    from dataclasses import fields

    from ketchup import config as kconfig
    from ketchup.judge.config import JudgeConfig

    schema = yaml.safe_load(kconfig.SCHEMA_PATH.read_text())["properties"]["judge"]
    assert set(schema["properties"]) == {f.name for f in fields(JudgeConfig)}
    assert schema["additionalProperties"] is False
    assert default_config["judge"]["enabled"] is False  # off in the offline default
    kconfig.validate(default_config)
    for bad, key in [({"enabled": True, "temprature": 0.0}, "judge.temprature"),
                     ({"enabled": True, "base_url": "http://x/v1"}, "judge"),  # enabled without a model
                     ({"concurrency": 0}, "judge.concurrency"),
                     ({"baseline": "gpt"}, "judge.baseline"),
                     ({"api_key": "sk-123"}, "judge.api_key")]:  # the key itself has no place in a config
        cfg = {**default_config, "judge": bad}
        with pytest.raises(kconfig.ConfigError, match=re.escape(key)):
            kconfig.validate(cfg)
