"""Tests of the LLM judge (issue 5) against a real local HTTP server speaking chat completions."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge_server import FakeJudgeServer  # noqa: E402

from ketchup.judge import protocol  # noqa: E402
from ketchup.judge.cache import JudgeCache, cache_key  # noqa: E402
from ketchup.judge.config import (  # noqa: E402
    JudgeAPIError, JudgeConfigError, JudgeInvalidError, JudgeTransportError, check_enabled, is_enabled, load_config,
)
from ketchup.judge.stages import (  # noqa: E402
    ascore_run, judge_table, pairwise_run, parse_run_path, score_run, summary_path,
)

KEY_ENV = "KETCHUP_TEST_JUDGE_KEY"
KEY = "sk-ketchup-TEST-3f9c1d7e-DO-NOT-LEAK-8842"
REMOTE = "https://judge.example.com/v1"  # not on a loopback address: needs the key (never contacted)
CRITERIA = ["overall", "informativeness", "coherence"]


def expected_scores(q: int) -> dict:
    return {"overall": q, "informativeness": max(1, q - 1), "coherence": min(10, q + 1)}


def make_cfg(server: FakeJudgeServer | None = None, **kw) -> dict:
    cfg = {
        "enabled": True, "base_url": server.base_url if server else "http://127.0.0.1:9/v1",
        "model": "fake-judge-1", "api_key_env": KEY_ENV, "temperature": 0.0, "max_tokens": 64,
        "n_examples": 0, "seed": 13, "baseline": "kl", "concurrency": 4, "max_retries": 3,
        "timeout_s": 0.4, "backoff_s": 0.01, "backoff_max_s": 0.05,
        "price_per_1m_prompt_tokens": 1000.0, "price_per_1m_completion_tokens": 2000.0, "criteria": CRITERIA,
    }
    cfg.update(kw)
    return cfg


def write_preds(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows: (id, source, prediction)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for ex_id, src, pred in rows:
            fh.write(json.dumps({"id": ex_id, "source": src, "reference": f"reference of {ex_id}",
                                 "prediction": pred}) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def assert_no_key_in(*dirs: Path) -> int:
    n = 0
    for d in dirs:
        for p in Path(d).rglob("*"):
            if p.is_file():
                n += 1
                assert KEY.encode() not in p.read_bytes(), f"API key leaked into {p}"
    return n


def counts(summary: dict) -> dict:
    """A summary's requests and cache hits of this run."""
    return {k: summary["this_run"][k] for k in ("api_requests", "cache_hits")}


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def server():
    with FakeJudgeServer() as s:
        yield s


# --------------------------------------------------------------------------- pure logic

def test_sample_ids_deterministic_and_order_free():
    ids = [f"ex{i}" for i in range(50)]
    a = protocol.sample_ids(ids, 10, seed=3)
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(ids)
    assert a == protocol.sample_ids(ids, 10, seed=3)
    assert set(protocol.sample_ids(list(reversed(ids)), 10, seed=3)) == set(a)  # order-free
    assert a == [i for i in ids if i in set(a)]  # kept in input order
    assert set(protocol.sample_ids(ids, 10, seed=4)) != set(a)
    assert protocol.sample_ids(ids, None, 0) == ids
    assert protocol.sample_ids(ids, 0, 0) == ids
    assert protocol.sample_ids(ids, 500, 0) == ids
    with pytest.raises(ValueError):
        protocol.sample_ids(["a", "a"], 1, 0)


@pytest.mark.parametrize("text,expected", [
    ('{"overall": 7, "informativeness": 6, "coherence": 9}', {"overall": 7, "informativeness": 6, "coherence": 9}),
    ('Sure.\n```json\n{"overall": 7, "informativeness": 6, "coherence": 9}\n```', {"overall": 7, "informativeness": 6, "coherence": 9}),
    ('My scores: {"Overall": 1, "Informativeness": 10.0, "Coherence": 2} hope it helps', {"overall": 1, "informativeness": 10, "coherence": 2}),
    ('{"scores": {"overall": 3, "informativeness": 3, "coherence": 3}, "why": "ok"}', {"overall": 3, "informativeness": 3, "coherence": 3}),
    ('{"overall": 11, "informativeness": 6, "coherence": 9}', None),
    ('{"overall": 0, "informativeness": 6, "coherence": 9}', None),
    ('{"overall": "7", "informativeness": 6, "coherence": 9}', None),
    ('{"overall": true, "informativeness": 6, "coherence": 9}', None),
    ('{"overall": 7.5, "informativeness": 6, "coherence": 9}', None),
    ('{"overall": 7, "coherence": 9}', None),
    ("a seven out of ten", None),
    ("", None),
    (None, None),
])
def test_parse_score_reply(text, expected):
    assert protocol.parse_score_reply(text, CRITERIA) == expected


@pytest.mark.parametrize("text,expected", [
    ('{"winner": "A"}', "A"), ('{"winner": "b"}', "B"), ('{"winner": "tie"}', "tie"),
    ('```json\n{"winner": "Output B"}\n```', "B"), ('Verdict: {"Winner": "TIE"}.', "tie"),
    ("A", "A"), ('{"winner": "both"}', None), ("I like the first one", None), (None, None),
])
def test_parse_pairwise_reply(text, expected):
    assert protocol.parse_pairwise_reply(text) == expected


@pytest.mark.parametrize("ab,ba,combined", [
    ("win", "win", "win"), ("win", "tie", "win"), ("tie", "win", "win"),
    ("loss", "loss", "loss"), ("loss", "tie", "loss"), ("tie", "loss", "loss"),
    ("tie", "tie", "tie"), ("win", "loss", "tie"), ("loss", "win", "tie"),
    (None, "win", "invalid"), ("tie", None, "invalid"),
])
def test_combine_outcomes(ab, ba, combined):
    assert protocol.combine_outcomes(ab, ba) == combined
    flip = {"win": "loss", "loss": "win", "tie": "tie", None: None, "invalid": "invalid"}
    assert protocol.combine_outcomes(flip[ab], flip[ba]) == flip[combined]  # symmetric


def test_position_bias_cancels():
    # a judge that always says "A": method is A in order ab (win) and B in order ba (loss) -> tie
    assert protocol.combine_outcomes(protocol.orient("A", "A"), protocol.orient("A", "B")) == "tie"
    r = protocol.outcome_rates(["win", "win", "tie", "loss", "invalid"])
    assert (r["n_valid"], r["n_invalid"], r["win_rate"], r["tie_rate"], r["loss_rate"]) == (4, 1, 0.5, 0.25, 0.25)


def test_cache_key_covers_request_not_secrets():
    msgs = [{"role": "user", "content": "hi"}]
    k = cache_key("m", msgs, 0.0, 256, "score-v1-x")
    assert len(k) == 64 and k == cache_key("m", [dict(m) for m in msgs], 0, 256, "score-v1-x")
    others = [cache_key("m2", msgs, 0.0, 256, "score-v1-x"),
              cache_key("m", [{"role": "user", "content": "hi!"}], 0.0, 256, "score-v1-x"),
              cache_key("m", msgs, 0.5, 256, "score-v1-x"), cache_key("m", msgs, 0.0, 128, "score-v1-x"),
              cache_key("m", msgs, 0.0, 256, "score-v2-x")]
    assert len({k, *others}) == 6
    # template text is part of the version string, and both templates exist with their placeholders
    assert protocol.template_version("score") != protocol.template_version("pairwise")
    assert "{output}" in protocol.load_template("score") and "{output_b}" in protocol.load_template("pairwise")


# --------------------------------------------------------------------------- config checks

def test_check_enabled_messages(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeConfigError) as e:
        check_enabled({"enabled": False})
    msg = str(e.value)
    assert "judge.enabled: true" in msg and "base_url" in msg and "OPENAI_API_KEY" in msg and "export" in msg
    assert not is_enabled({"enabled": False})

    with pytest.raises(JudgeConfigError) as e:  # enabled, a remote server, but the key variable is missing
        check_enabled(make_cfg(base_url=REMOTE))
    assert KEY_ENV in str(e.value) and "export" in str(e.value)

    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(JudgeConfigError) as e:
        check_enabled(make_cfg(model=None))
    assert "judge.model" in str(e.value)
    cfg = check_enabled(make_cfg())
    assert cfg.model == "fake-judge-1" and is_enabled(make_cfg())
    assert KEY not in repr(cfg)
    with pytest.raises(JudgeConfigError):
        load_config({"concurrency": 0})


def test_missing_key_or_disabled_makes_no_request(monkeypatch, tmp_path, server):
    preds = write_preds(tmp_path / "p.jsonl", [("a", "s", "q=5")])
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeConfigError, match=KEY_ENV):
        score_run(make_cfg(server, base_url=REMOTE), "xsum", preds, tmp_path / "out" / "scores.jsonl",
                  tmp_path / "cache")
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(JudgeConfigError, match="enabled"):
        score_run(make_cfg(server, enabled=False), "xsum", preds, tmp_path / "out" / "scores.jsonl", tmp_path / "cache")
    assert server.n_requests == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url, loopback", [
    ("http://localhost:8000/v1", True), ("http://127.0.0.1:9/v1", True), ("http://127.4.5.6/v1", True),
    ("http://[::1]:8000/v1", True), (REMOTE, False), ("http://10.0.0.1:8000/v1", False),
    ("http://localhost.example.com/v1", False), ("https://api.openai.com/v1", False),
])
def test_loopback_servers_need_no_key(monkeypatch, url, loopback):
    from ketchup.judge.config import NO_KEY, get_api_key, is_loopback

    monkeypatch.delenv(KEY_ENV, raising=False)
    assert is_loopback(url) == loopback
    cfg = load_config(make_cfg(base_url=url))
    if loopback:
        assert check_enabled(cfg) and get_api_key(cfg) == NO_KEY
    else:
        with pytest.raises(JudgeConfigError, match=KEY_ENV):
            check_enabled(cfg)
        with pytest.raises(JudgeConfigError, match=KEY_ENV):
            get_api_key(cfg)
    monkeypatch.setenv(KEY_ENV, KEY)  # a key that is set is sent, to a loopback server too
    assert get_api_key(cfg) == KEY and check_enabled(cfg)


def test_a_server_marked_keyless_needs_no_key(monkeypatch):
    from ketchup.judge.config import NO_KEY, get_api_key

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = check_enabled(make_cfg(base_url=REMOTE, api_key_env=None))
    assert get_api_key(cfg) == NO_KEY
    with pytest.raises(JudgeConfigError, match="OPENAI_API_KEY"):  # the default names a variable: needed
        check_enabled({k: v for k, v in make_cfg(base_url=REMOTE).items() if k != "api_key_env"})


def test_loopback_server_without_a_key_variable_is_judged(monkeypatch, tmp_path):
    """The fake server on 127.0.0.1 with no key variable set: the job runs, sending the placeholder."""
    from ketchup.judge.config import NO_KEY

    monkeypatch.delenv(KEY_ENV, raising=False)
    preds = write_preds(tmp_path / "p.jsonl", [("a", "s", "q=5"), ("b", "s", "q=7")])
    with FakeJudgeServer(expected_key=NO_KEY) as srv:
        summary = score_run(make_cfg(srv), "xsum", preds, tmp_path / "scores.jsonl", tmp_path / "cache")
    assert summary["n_valid"] == 2 and srv.n_requests == 2


# --------------------------------------------------------------------------- scoring against the server

FAULTS = {  # marker -> (requests it needs with max_retries=3, valid?); unparseable: one repair turn
    "": (1, True), "[[MALFORMED_ONCE]]": (2, True), "[[ALWAYS_MALFORMED]]": (2, False),
    "[[OUT_OF_RANGE]]": (2, False), "[[RATE_LIMIT_ONCE]]": (2, True), "[[ERROR_ONCE]]": (2, True),
    "[[SLOW_ONCE]]": (2, True), "[[FENCED]]": (1, True),
}


def test_score_run_recovers_counts_invalid_and_caches(tmp_path, key_env):
    rows, expect = [], {}
    for k, (marker, (n_req, valid)) in enumerate(FAULTS.items()):
        q = 2 + k
        rows.append((f"id{k}", f"source {k} {marker}", f"prediction q={q}"))
        expect[f"id{k}"] = (n_req, valid, q)
    preds = write_preds(tmp_path / "preds.jsonl", rows)
    out, cache = tmp_path / "out" / "scores.jsonl", tmp_path / "cache"
    with FakeJudgeServer(slow_s=1.0, expected_key=KEY) as srv:
        t0 = time.monotonic()
        summary = score_run(make_cfg(srv, max_invalid_fraction=0.25), "xsum", preds, out, cache)
        assert time.monotonic() - t0 < 10
        recs = read_jsonl(out)
        assert [r["id"] for r in recs] == [r[0] for r in rows]  # nothing dropped, file order kept
        for r in recs:
            n_req, valid, q = expect[r["id"]]
            assert r["valid"] is valid, r
            assert r["attempts"] == n_req
            if valid:
                assert r["scores"] == expected_scores(q) and r["error"] is None
            else:
                assert r["scores"] == {c: None for c in CRITERIA} and r["error"] == "unparseable reply"
        assert srv.n_requests == sum(v[0] for v in expect.values())
        assert summary["n_examples"] == len(rows) and summary["n_invalid"] == 2 and summary["n_valid"] == len(rows) - 2
        assert counts(summary) == {"api_requests": srv.n_requests, "cache_hits": 0}
        # every request: the configured model/parameters, the key only as the bearer token
        assert all(r["auth"] == f"Bearer {KEY}" and r["model"] == "fake-judge-1" and r["max_tokens"] == 64
                   and r["temperature"] == 0.0 for r in srv.requests)
        # usage: every reply the client received (not the timed-out one, not 429/500) is counted
        got = [r["usage"] for r in srv.requests if r["status"] == 200 and not r["slow"]]
        pt, ct = sum(u["prompt_tokens"] for u in got), sum(u["completion_tokens"] for u in got)
        assert (summary["prompt_tokens"], summary["completion_tokens"]) == (pt, ct)
        assert summary["cost_usd"] == pytest.approx(pt / 1000 * 1.0 + ct / 1000 * 2.0)
        assert sum(r["usage"]["prompt_tokens"] for r in recs) == pt
        s = json.loads(summary_path(out).read_text())
        assert s["mean"]["overall"] == pytest.approx(sum(expect[r["id"]][2] for r in recs if r["valid"]) / 6)

        # a second run: everything (valid and unparseable) comes from the cache, zero requests
        first = out.read_text()
        n = srv.n_requests
        summary2 = score_run(make_cfg(srv, max_invalid_fraction=0.25), "xsum", preds, out, cache)
        assert srv.n_requests == n
        assert counts(summary2) == {"api_requests": 0, "cache_hits": len(rows)}
        assert out.read_text() == first
    assert len(JudgeCache(cache)) == len(rows)
    assert assert_no_key_in(tmp_path / "out", cache) >= len(rows) + 2


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_fails_the_run_and_writes_nothing(tmp_path, key_env):
    preds = write_preds(tmp_path / "p.jsonl", [(f"e{i}", f"s{i}", "q=5") for i in range(3)])
    out = tmp_path / "o" / "scores.jsonl"
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(JudgeTransportError) as e:
        score_run(make_cfg(base_url=url, max_retries=1), "xsum", preds, out, tmp_path / "cache")
    msg = str(e.value)
    assert url in msg and "after 2 attempt(s)" in msg and "connection error" in msg and KEY not in msg, msg
    assert not out.exists() and not summary_path(out).exists() and len(JudgeCache(tmp_path / "cache")) == 0


def test_unreachable_endpoint_fails_the_cli_job(tmp_path, key_env):
    preds = write_preds(tmp_path / "p.jsonl", [("e0", "s0", "q=5")])
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = subprocess.run(
        [sys.executable, "-m", "ketchup", "judge-score", "--task", "xsum", "--spec",
         json.dumps(make_cfg(base_url=url, max_retries=0)), "--predictions", str(preds),
         "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o" / "scores.jsonl")],
        capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert url in proc.stderr and "Traceback" not in proc.stderr and KEY not in proc.stdout + proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("marker, last_error", [("[[ERROR_ONCE]]", "HTTP 500"), ("[[RATE_LIMIT_ONCE]]", "HTTP 429"),
                                                ("[[SLOW_ONCE]]", "timeout")])
def test_transport_failure_fails_then_rerun_asks_only_what_is_missing(tmp_path, key_env, marker, last_error):
    rows = [(f"e{i}", f"source {i}" + (f" {marker}" if i == 4 else ""), f"q={1 + i}") for i in range(8)]
    preds = write_preds(tmp_path / "p.jsonl", rows)
    out, cache = tmp_path / "o" / "scores.jsonl", tmp_path / "cache"
    with FakeJudgeServer(slow_s=1.0) as srv:
        cfg = make_cfg(srv, max_retries=0)  # the failing request is not retried in this run
        with pytest.raises(JudgeTransportError, match=re.escape(f"(last: {last_error})")) as e:
            score_run(cfg, "xsum", preds, out, cache)
        assert srv.base_url in str(e.value) and str(cache) in str(e.value)
        assert not out.exists() and not summary_path(out).exists()
        cached = set(JudgeCache(cache).keys())  # what finished before the failure stopped the run
        assert len(cached) < len(rows)
        n_first = srv.quiet()  # requests cancelled by the failure may reach the server a little later
        s = score_run(cfg, "xsum", preds, out, cache)  # the server answers it now
        assert counts(s) == {"api_requests": len(rows) - len(cached), "cache_hits": len(cached)}
        assert s["n_valid"] == len(rows)
        # the rerun asked exactly the judgements missing from the cache, each once
        version = protocol.template_version("score")
        asked = [cache_key(r["model"], r["messages"], r["temperature"], r["max_tokens"], version,
                           response_format=r["response_format"]) for r in srv.requests[n_first:]]
        assert len(asked) == len(set(asked)) == len(rows) - len(cached) and not set(asked) & cached
    assert [r["scores"] for r in read_jsonl(out)] == [expected_scores(1 + i) for i in range(8)]


def test_bad_request_fails_at_once(tmp_path, key_env, server):
    preds = write_preds(tmp_path / "p.jsonl", [("e0", "s [[BAD_REQUEST]]", "q=5")])
    with pytest.raises(JudgeAPIError, match="HTTP 400.*maximum context length.*judge.max_chars"):
        score_run(make_cfg(server), "xsum", preds, tmp_path / "o.jsonl", tmp_path / "cache")
    # a 400 to the run's first request with response_format may be a refusal of it: asked once
    # more without, the request itself is refused
    assert [r["response_format"] is not None for r in server.requests] == [True, False]
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(JudgeAPIError, match="HTTP 400.*maximum context length"):
        score_run(make_cfg(server, structured_output=False), "xsum", preds, tmp_path / "o.jsonl", tmp_path / "cache")
    assert server.n_requests == 3 and not (tmp_path / "o.jsonl").exists()


def test_too_many_unparseable_replies_fail_the_run(tmp_path, key_env, server):
    rows = [(f"e{i}", f"s{i}" + (" [[ALWAYS_MALFORMED]]" if i < 2 else ""), "q=6") for i in range(10)]
    preds = write_preds(tmp_path / "p.jsonl", rows)
    out, cache = tmp_path / "o" / "scores.jsonl", tmp_path / "cache"
    with pytest.raises(JudgeInvalidError) as e:  # 2 of 10 > the default 0.05
        score_run(make_cfg(server, max_retries=1), "xsum", preds, out, cache)
    msg = str(e.value)
    assert "2 of 10" in msg and "judge.max_invalid_fraction = 0.05" in msg and "e0" in msg, msg
    assert not out.exists() and not summary_path(out).exists()
    n = server.n_requests
    assert n == 8 + 2 * 2 and len(JudgeCache(cache)) == 10  # unparseable replies are kept too
    s = score_run(make_cfg(server, max_retries=1, max_invalid_fraction=0.2), "xsum", preds, out, cache)
    assert server.n_requests == n and (s["n_valid"], s["n_invalid"]) == (8, 2)  # 0.2 is not above 0.2


def test_concurrency_cap_holds(tmp_path, key_env):
    rows = [(f"e{i:02d}", f"source {i}", f"q={1 + i % 10}") for i in range(16)]
    preds = write_preds(tmp_path / "p.jsonl", rows)
    with FakeJudgeServer(delay=0.12) as srv:
        score_run(make_cfg(srv, concurrency=3, n_examples=12), "gsm8k", preds, tmp_path / "s.jsonl", tmp_path / "c")
        assert srv.n_requests == 12
        assert srv.max_in_flight == 3  # the cap holds, and requests did overlap
    ids = [r["id"] for r in read_jsonl(tmp_path / "s.jsonl")]
    assert ids == protocol.sample_ids([r[0] for r in rows], 12, 13)


def test_wrong_key_is_fatal_and_not_leaked(tmp_path, monkeypatch):
    wrong = "sk-wrong-key-77aa11-DO-NOT-LEAK"
    monkeypatch.setenv(KEY_ENV, wrong)
    preds = write_preds(tmp_path / "p.jsonl", [(f"i{i}", "s", "q=3") for i in range(5)])
    with FakeJudgeServer(expected_key=KEY) as srv:
        with pytest.raises(JudgeAPIError) as e:
            score_run(make_cfg(srv), "xsum", preds, tmp_path / "o" / "s.jsonl", tmp_path / "c")
        assert 1 <= srv.n_requests <= 5 and all(r["attempt"] == 0 for r in srv.requests)  # no retries on 401
    assert "401" in str(e.value) and KEY_ENV in str(e.value) and wrong not in str(e.value)
    assert not (tmp_path / "o" / "s.jsonl").exists()


# --------------------------------------------------------------------------- pairwise

def test_pairwise_both_orders_and_combination(tmp_path, key_env, server):
    # (id, source marker, method q, baseline q, expected combined outcome)
    cases = [("w", "", 8, 4, "win"), ("l", "", 3, 6, "loss"), ("t", "", 5, 5, "tie"),
             ("b", "[[BIASED]]", 9, 1, "tie"), ("x", "[[ALWAYS_MALFORMED]]", 9, 1, "invalid"),
             ("r", "[[RATE_LIMIT_ONCE]] [[MALFORMED_ONCE]]", 7, 2, "win")]
    method = write_preds(tmp_path / "m.jsonl", [(i, f"src {i} {mk}", f"method says q={qm}") for i, mk, qm, _, _ in cases])
    base = write_preds(tmp_path / "kl.jsonl", [(i, f"src {i} {mk}", f"baseline says q={qb}") for i, mk, _, qb, _ in cases])
    out, cache = tmp_path / "pw" / "pairwise.jsonl", tmp_path / "cache"
    s = pairwise_run(make_cfg(server, max_invalid_fraction=0.2), "xsum", method, base, out, cache)
    recs = {r["id"]: r for r in read_jsonl(out)}
    for i, _, qm, qb, combined in cases:
        assert recs[i]["outcome"] == combined, recs[i]
        assert recs[i]["baseline"] == "kl"
    assert recs["b"]["ab"]["verdict"] == "A" and recs["b"]["ba"]["verdict"] == "A"
    assert (recs["b"]["ab"]["outcome"], recs["b"]["ba"]["outcome"]) == ("win", "loss")
    assert recs["x"]["valid"] is False and recs["x"]["ab"]["error"] == "unparseable reply"
    assert (s["n_win"], s["n_tie"], s["n_loss"], s["n_invalid"]) == (2, 2, 1, 1)
    assert s["win_rate"] == pytest.approx(0.4) and s["tie_rate"] == pytest.approx(0.4)

    # both orders were really asked: for every example one prompt shows the method's output as A and
    # the baseline's as B, and another one the reverse
    shown = set()
    for req in server.requests:
        user = req["messages"][1]["content"]  # the prompt (a repair turn follows it)
        a = user.split("<output_a>")[1].split("</output_a>")[0]
        b = user.split("<output_b>")[1].split("</output_b>")[0]
        ex = user.split("<source>")[1].split("</source>")[0].split()[1]
        shown.add((ex, "method" if "method" in a else "baseline", "method" if "method" in b else "baseline"))
    for i, *_ in cases:
        assert (i, "method", "baseline") in shown and (i, "baseline", "method") in shown

    n = server.n_requests
    with pytest.raises(JudgeInvalidError, match="judge pairwise .* 1 of 6"):  # the default allows 0.05
        pairwise_run(make_cfg(server), "xsum", method, base, out, cache)
    s2 = pairwise_run(make_cfg(server, max_invalid_fraction=0.2), "xsum", method, base, out, cache)
    assert server.n_requests == n and s2["this_run"]["api_requests"] == 0
    assert assert_no_key_in(out.parent, cache) > 0


def test_pairwise_rejects_missing_baseline_ids(tmp_path, key_env, server):
    m = write_preds(tmp_path / "m.jsonl", [("a", "s", "x"), ("b", "s", "y")])
    b = write_preds(tmp_path / "b.jsonl", [("a", "s", "x")])
    with pytest.raises(ValueError, match="lacks"):
        pairwise_run(make_cfg(server), "xsum", m, b, tmp_path / "o.jsonl", tmp_path / "c")
    assert server.n_requests == 0


# --------------------------------------------------------------------------- interruption

def test_cancelled_run_keeps_finished_judgements(tmp_path, key_env):
    preds = write_preds(tmp_path / "p.jsonl", [(f"e{i}", f"s{i}", f"q={1 + i}") for i in range(8)])
    out, cache = tmp_path / "o" / "scores.jsonl", tmp_path / "cache"
    cfg = make_cfg(concurrency=2, timeout_s=20)
    with FakeJudgeServer(hold_after=5) as srv:  # requests after the 5th hang until released
        cfg["base_url"] = srv.base_url

        async def interrupted():
            task = asyncio.create_task(ascore_run(cfg, "xsum", preds, out, cache))
            for _ in range(200):
                await asyncio.sleep(0.02)
                if len(JudgeCache(cache)) >= 5 and srv.n_requests >= 7:
                    break
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(interrupted())
        assert len(JudgeCache(cache)) == 5  # every finished judgement kept
        assert not out.exists() and not summary_path(out).exists()  # no complete-looking output
        srv.release()
        n = srv.n_requests
        s = score_run(cfg, "xsum", preds, out, cache)
        assert counts(s) == {"api_requests": 3, "cache_hits": 5}
        assert srv.n_requests == n + 3
    assert all(r["valid"] for r in read_jsonl(out))


def test_killed_process_keeps_finished_judgements(tmp_path, key_env):
    preds = write_preds(tmp_path / "p.jsonl", [(f"e{i}", f"s{i}", f"q={1 + i}") for i in range(6)])
    out, cache = tmp_path / "o" / "scores.jsonl", tmp_path / "cache"
    with FakeJudgeServer(hold_after=3) as srv:
        cfg = make_cfg(srv, concurrency=1, timeout_s=20)
        code = textwrap.dedent(f"""
            import json, sys
            from ketchup.judge.stages import score_run
            score_run(json.loads(sys.argv[1]), "xsum", {str(preds)!r}, {str(out)!r}, {str(cache)!r})
        """)
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], env=dict(os.environ))
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and srv.n_requests < 4:
                time.sleep(0.02)
            assert srv.n_requests == 4  # 3 answered, the 4th hangs
            time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait()
        assert len(JudgeCache(cache)) == 3 and not out.exists()
        srv.release()
        s = score_run(cfg, "xsum", preds, out, cache)
        assert counts(s) == {"api_requests": 3, "cache_hits": 3}
    assert assert_no_key_in(out.parent, cache) > 0


# --------------------------------------------------------------------------- table and figure

def test_judge_table_and_figure(tmp_path, key_env, server):
    from ketchup.judge.figure import judge_figure

    ids = [f"x{i}" for i in range(6)]
    qual = {"kl": [4, 5, 6, 4, 5, 6], "ketchup": [7, 8, 6, 9, 7, 8]}
    root = tmp_path / "results" / "judge"
    cfg = make_cfg(server, max_invalid_fraction=0.2)  # 1 of 6 invalid in one run
    score_files, pair_files = [], []
    for method, qs in qual.items():
        for seed in (0, 1):
            bad = method == "ketchup" and seed == 1  # x5 of this run always gets an unparseable reply
            rows = [(i, f"src {i}" + (" [[ALWAYS_MALFORMED]]" if bad and i == "x5" else ""), f"{method} output q={q}")
                    for i, q in zip(ids, qs)]
            preds = write_preds(tmp_path / "preds" / method / f"seed{seed}.jsonl", rows)
            run_dir = root / "xsum" / "t5-small" / method / f"seed{seed}"
            score_run(cfg, "xsum", preds, run_dir / "scores.jsonl", tmp_path / "cache")
            score_files.append(run_dir / "scores.jsonl")
            if method != "kl":
                pairwise_run(cfg, "xsum", preds, tmp_path / "preds" / "kl" / f"seed{seed}.jsonl",
                             run_dir / "pairwise.jsonl", tmp_path / "cache")
                pair_files.append(run_dir / "pairwise.jsonl")
    assert parse_run_path(score_files[0]) == {"task": "xsum", "student": "t5-small", "method": "kl", "seed": 0}
    with pytest.raises(ValueError, match="seed"):
        parse_run_path(tmp_path / "scores.jsonl")

    out_csv = tmp_path / "results" / "tables" / "llm_judge.csv"
    # one file passed as a mapping instead of a parsed path
    entries = [{"path": str(score_files[0]), "task": "xsum", "student": "t5-small", "method": "kl", "seed": 0}]
    judge_table(entries + score_files[1:], pair_files, out_csv)
    with open(out_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = {r["method"]: r for r in reader}
        cols = reader.fieldnames
    for c in ["task", "student", "method", "n_seeds", "n_invalid", "win_rate", "tie_rate", "loss_rate",
              "prompt_tokens", "completion_tokens", "cost_usd", "baseline"] + [
              f"{c}_{s}" for c in CRITERIA for s in ("mean", "ci_low", "ci_high")]:
        assert c in cols
    assert set(rows) == {"kl", "ketchup"}
    k, b = rows["ketchup"], rows["kl"]
    assert k["task"] == "xsum" and k["student"] == "t5-small" and k["n_seeds"] == "2" and k["seeds"] == "0;1"
    # ketchup: 12 judgements, one unparseable (x5 of seed 1) -> mean over the 11 valid ones
    valid_q = qual["ketchup"] * 2
    valid_q = valid_q[:-1]
    assert float(k["overall_mean"]) == pytest.approx(sum(valid_q) / 11)
    assert float(b["overall_mean"]) == pytest.approx(5.0)
    assert float(b["coherence_mean"]) == pytest.approx(6.0)
    for r in (k, b):
        for c in CRITERIA:
            assert float(r[f"{c}_ci_low"]) <= float(r[f"{c}_mean"]) <= float(r[f"{c}_ci_high"])
            assert 1 <= float(r[f"{c}_ci_low"]) and float(r[f"{c}_ci_high"]) <= 10
    assert k["n_score_invalid"] == "1" and k["n_pair_invalid"] == "1" and k["n_invalid"] == "2"
    assert b["n_invalid"] == "0"
    # ketchup beats kl on every example except x2 (q 6 vs 6 -> tie); x5 of seed 1 is invalid
    assert float(k["win_rate"]) == pytest.approx(9 / 11) and float(k["tie_rate"]) == pytest.approx(2 / 11)
    assert float(k["loss_rate"]) == 0.0 and k["baseline"] == "kl" and k["n_pairs"] == "12"
    assert b["win_rate"] == "" and b["n_pairs"] == "0"  # the baseline has no pairwise rows
    files = [Path(f) for f in score_files + pair_files]
    tok = sum(r["usage"]["prompt_tokens"] for f in files if "ketchup" in str(f) for r in read_jsonl(f))
    assert int(k["prompt_tokens"]) == tok > 0
    assert float(k["cost_usd"]) > float(b["cost_usd"]) > 0

    pdf, png = tmp_path / "results" / "figures" / "llm_judge.pdf", tmp_path / "results" / "figures" / "llm_judge.png"
    judge_figure(out_csv, pdf, png)
    assert pdf.read_bytes()[:4] == b"%PDF" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in pdf.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    assert assert_no_key_in(tmp_path / "results", tmp_path / "cache") > 10


def test_bootstrap_ci_matches_resampling_examples_directly():
    """The pooled-mean CI against an independent formulation: draw example indices, pool their sums."""
    import numpy as np

    from ketchup.judge.stages import bootstrap_ci

    sums, counts = np.array([14.0, 5.0, 0.0, 9.0, 16.0]), np.array([2, 1, 0, 2, 2])  # example 3: no valid score
    mean, lo, hi = bootstrap_ci(sums, counts, n_boot=500, seed=7, level=0.9)
    assert mean == pytest.approx(44 / 7)
    s, c = sums[counts > 0], counts[counts > 0]
    idx = np.random.default_rng(7).integers(0, 4, size=(500, 4))
    want = np.quantile(s[idx].sum(1) / c[idx].sum(1), [0.05, 0.95])
    assert (lo, hi) == pytest.approx(tuple(want), rel=1e-12)
    one = bootstrap_ci(np.array([3.0]), np.array([1]))  # one example: a mean, no CI
    assert one[0] == 3.0 and np.isnan(one[1]) and np.isnan(one[2])


def test_read_predictions_names_file_and_line(tmp_path):
    from ketchup.io import DataError
    from ketchup.judge.stages import read_predictions

    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prediction": "x"}\n\n{"id": "a", "prediction": "y"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:3: duplicate example id 'a'"):
        read_predictions(path)
    path.write_text('{"id": "a"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:1: record lacks \['prediction'\]"):
        read_predictions(path)


# --------------------------------------------------------------------------- structured output, repair turns

def test_response_format_is_a_json_schema_of_the_criteria(tmp_path, key_env, server):
    import jsonschema

    criteria = ["overall", "fluency"]  # not the defaults: the schema follows the config
    preds = write_preds(tmp_path / "p.jsonl", [(f"e{i}", f"s{i}", f"q={3 + i}") for i in range(3)])
    s = score_run(make_cfg(server, criteria=criteria), "xsum", preds, tmp_path / "o" / "scores.jsonl", tmp_path / "c")
    assert server.n_requests == 3 and s["this_run"]["structured_output"] == "used"
    for req in server.requests:
        rf = req["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
        schema = rf["json_schema"]["schema"]
        assert list(schema["properties"]) == criteria and schema["required"] == criteria
        assert schema["additionalProperties"] is False
        assert all(p == {"type": "integer", "minimum": 1, "maximum": 10} for p in schema["properties"].values())
        jsonschema.validate({"overall": 1, "fluency": 10}, schema)
        for bad in ({"overall": 11, "fluency": 3}, {"overall": 3}, {"overall": 3, "fluency": 3, "coherence": 3},
                    {"overall": "3", "fluency": 3}):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, schema)
    # pairwise: the verdict; and judge.structured_output: false sends none
    m = write_preds(tmp_path / "m.jsonl", [("a", "s", "q=7")])
    b = write_preds(tmp_path / "b.jsonl", [("a", "s", "q=2")])
    pairwise_run(make_cfg(server), "xsum", m, b, tmp_path / "pw.jsonl", tmp_path / "c")
    schema = server.requests[-1]["response_format"]["json_schema"]["schema"]
    assert schema["properties"] == {"winner": {"type": "string", "enum": ["A", "B", "tie"]}}
    n = server.n_requests
    s = score_run(make_cfg(server, structured_output=False), "xsum", preds, tmp_path / "o2.jsonl", tmp_path / "c")
    assert s["this_run"]["structured_output"] == "off" and s["this_run"]["api_requests"] == 3
    assert server.n_requests == n + 3 and all(r["response_format"] is None for r in server.requests[n:])


@pytest.mark.parametrize("status", [400, 422])
def test_refused_response_format_is_detected_once_per_run(tmp_path, key_env, status, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="ketchup.judge")
    rows = [(f"e{i}", f"s{i}", f"q={1 + i}") for i in range(8)]
    preds = write_preds(tmp_path / "p.jsonl", rows)
    with FakeJudgeServer(delay=0.05, refuse_response_format=status) as srv:
        for run in range(2):  # each run finds out once (its own cache, so both ask everything)
            n0 = srv.n_requests
            caplog.clear()
            out = tmp_path / f"run{run}" / "scores.jsonl"
            s = score_run(make_cfg(srv, concurrency=4), "xsum", preds, out, tmp_path / f"cache{run}")
            reqs = srv.requests[n0:]
            # exactly one refused request (the run's first, carrying response_format); after it none
            # carries response_format, though four requests at a time were allowed
            assert [r["status"] for r in reqs] == [status] + [200] * 8
            assert reqs[0]["response_format"] is not None and all(r["response_format"] is None for r in reqs[1:])
            assert s["this_run"]["structured_output"] == "refused" and s["this_run"]["api_requests"] == 9
            said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(said) == 1 and f"HTTP {status} to response_format" in said[0], said  # logged once
            assert s["n_valid"] == 8 and [r["scores"] for r in read_jsonl(out)] == [expected_scores(1 + i) for i in range(8)]
        assert srv.max_in_flight > 1
        # a rerun from the cache asks nothing: the key is the request as configured
        s = score_run(make_cfg(srv, concurrency=4), "xsum", preds, tmp_path / "again.jsonl", tmp_path / "cache0")
        assert counts(s) == {"api_requests": 0, "cache_hits": 8} and s["this_run"]["structured_output"] == "untried"
    entries = [JudgeCache(tmp_path / "cache0").get(k) for k in JudgeCache(tmp_path / "cache0").keys()]
    assert len(entries) == 8 and all(e["response_format"] is True and e["structured"] is False for e in entries)


def test_unparseable_reply_gets_one_repair_turn_never_the_same_prompt(tmp_path, key_env, server):
    rows = [("ok", "s ok", "q=4"), ("once", "s [[MALFORMED_ONCE]]", "q=6"), ("never", "s [[ALWAYS_MALFORMED]]", "q=8")]
    preds = write_preds(tmp_path / "p.jsonl", rows)
    out, cache = tmp_path / "o" / "scores.jsonl", tmp_path / "cache"
    cfg = make_cfg(server, max_retries=5, max_invalid_fraction=0.5)
    s = score_run(cfg, "xsum", preds, out, cache)
    recs = {r["id"]: r for r in read_jsonl(out)}
    reqs = server.requests
    assert len(reqs) == 1 + 2 + 2  # not 1 + 2 + 6: no identical re-asks
    keys = [json.dumps(r["messages"], sort_keys=True) for r in reqs]
    assert len(set(keys)) == len(keys), "the same messages were sent twice"
    repair = protocol.repair_message("score", CRITERIA)
    assert '"overall": <1-10>' in repair["content"] and repair["role"] == "user"
    for ex_id in ("once", "never"):
        first, second = [r for r in reqs if f"s {'[[MALFORMED_ONCE]]' if ex_id == 'once' else '[[ALWAYS_MALFORMED]]'}"
                         in r["messages"][1]["content"]]
        assert not first["repair"] and second["repair"]
        assert second["messages"] == first["messages"] + [{"role": "assistant", "content": first["reply"]}, repair]
        assert recs[ex_id]["attempts"] == 2 and recs[ex_id]["repairs"] == 1
        assert recs[ex_id]["reply"] == second["reply"]  # the last reply is the one parsed
        entry = next(JudgeCache(cache).get(k) for k in JudgeCache(cache).keys()
                     if JudgeCache(cache).get(k)["reply"] == second["reply"])
        assert entry["first_reply"] == first["reply"] and entry["repairs"] == 1
        assert recs[ex_id]["repair_usage"] == {k: second["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
        assert recs[ex_id]["usage"] == {k: first["usage"][k] + second["usage"][k]
                                        for k in ("prompt_tokens", "completion_tokens")}
    assert recs["once"]["valid"] and recs["once"]["scores"] == expected_scores(6)
    assert not recs["never"]["valid"] and recs["never"]["error"] == "unparseable reply"
    assert recs["ok"]["repairs"] == 0 and recs["ok"]["attempts"] == 1
    # what the output says was spent is what the server saw
    pt, ct = sum(r["usage"]["prompt_tokens"] for r in reqs), sum(r["usage"]["completion_tokens"] for r in reqs)
    rpt = sum(r["usage"]["prompt_tokens"] for r in reqs if r["repair"])
    rct = sum(r["usage"]["completion_tokens"] for r in reqs if r["repair"])
    assert s["this_run"] == {"api_requests": 5, "repair_requests": 2, "cache_hits": 0, "prompt_tokens": pt,
                             "completion_tokens": ct, "cost_usd": pytest.approx(pt / 1000 + 2 * ct / 1000),
                             "structured_output": "used"}
    assert (s["requests"], s["repair_requests"], s["prompt_tokens"], s["completion_tokens"],
            s["repair_prompt_tokens"], s["repair_completion_tokens"]) == (5, 2, pt, ct, rpt, rct)
    assert (s["n_valid"], s["n_invalid"]) == (2, 1)

    # from the cache: the same judgements and what they cost, nothing spent now
    s2 = score_run(cfg, "xsum", preds, tmp_path / "o2" / "scores.jsonl", cache)
    assert server.n_requests == 5 and s2["this_run"]["prompt_tokens"] == 0 == s2["this_run"]["api_requests"]
    assert read_jsonl(tmp_path / "o2" / "scores.jsonl") == read_jsonl(out)
    assert {k: s2[k] for k in ("requests", "repair_requests", "prompt_tokens", "repair_prompt_tokens")} == \
        {k: s[k] for k in ("requests", "repair_requests", "prompt_tokens", "repair_prompt_tokens")}

    # the table counts the requests and repair turns that produced the judgements
    run = tmp_path / "results" / "judge" / "xsum" / "t5-small" / "kl" / "seed0" / "scores.jsonl"
    run.parent.mkdir(parents=True)
    run.write_text(out.read_text())
    rows_out = judge_table([run], [], tmp_path / "t.csv")
    assert (rows_out[0]["requests"], rows_out[0]["repair_requests"], rows_out[0]["prompt_tokens"]) == (5, 2, pt)
    with open(tmp_path / "t.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert (row["requests"], row["repair_requests"]) == ("5", "2")


def test_pairwise_repair_turn_and_counts(tmp_path, key_env, server):
    m = write_preds(tmp_path / "m.jsonl", [("a", "s [[MALFORMED_ONCE]]", "q=7"), ("b", "s b", "q=1")])
    base = write_preds(tmp_path / "kl.jsonl", [("a", "s [[MALFORMED_ONCE]]", "q=2"), ("b", "s b", "q=5")])
    s = pairwise_run(make_cfg(server), "xsum", m, base, tmp_path / "pw.jsonl", tmp_path / "c")
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "pw.jsonl")}
    assert recs["a"]["outcome"] == "win" and recs["b"]["outcome"] == "loss"
    assert (recs["a"]["ab"]["repairs"], recs["a"]["ba"]["repairs"], recs["b"]["ab"]["repairs"]) == (1, 1, 0)
    repaired = [r for r in server.requests if r["repair"]]
    assert len(repaired) == 2 and all(r["messages"][-1] == protocol.repair_message("pairwise", CRITERIA)
                                      for r in repaired)
    assert '"winner"' in repaired[0]["messages"][-1]["content"]
    assert (s["requests"], s["repair_requests"]) == (6, 2) == (server.n_requests, len(repaired))
    assert s["this_run"]["repair_requests"] == 2
    assert s["repair_prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in repaired)
    assert recs["a"]["repair_usage"]["prompt_tokens"] == s["repair_prompt_tokens"]


def test_cache_key_includes_the_configured_response_format(tmp_path, key_env, server):
    msgs = [{"role": "user", "content": "hi"}]
    rf = protocol.response_format("score", CRITERIA)
    plain = cache_key("m", msgs, 0.0, 256, "v")
    keys = {plain, cache_key("m", msgs, 0.0, 256, "v", response_format=rf),
            cache_key("m", msgs, 0.0, 256, "v", response_format=protocol.response_format("score", ["overall"])),
            cache_key("m", msgs, 0.0, 256, "v", response_format=protocol.response_format("pairwise", CRITERIA))}
    assert len(keys) == 4 and cache_key("m", msgs, 0.0, 256, "v", response_format=None) == plain
    # the repair instruction is part of the template version (editing it invalidates the cache)
    assert protocol.load_template("repair").count("{reply_format}") == 1
    assert protocol.template_version("score").startswith("score-v2-")
    # answers got without structured output are not served to a run that asks for it, and back
    preds = write_preds(tmp_path / "p.jsonl", [("a", "s", "q=3")])
    cache = tmp_path / "cache"
    for structured, asked in ((False, 1), (True, 1), (False, 0), (True, 0)):
        n = server.n_requests
        score_run(make_cfg(server, structured_output=structured), "xsum", preds, tmp_path / "o.jsonl", cache)
        assert server.n_requests - n == asked
    assert len(JudgeCache(cache)) == 2


def test_run_interrupted_before_the_repair_turn_asks_again_from_the_prompt(tmp_path, key_env):
    preds = write_preds(tmp_path / "p.jsonl", [("a", "s [[MALFORMED_ONCE]]", "q=9")])
    out, cache = tmp_path / "o" / "scores.jsonl", tmp_path / "cache"
    with FakeJudgeServer(hold_after=1) as srv:  # the repair turn (request 2) hangs
        cfg = make_cfg(srv, timeout_s=20)

        async def interrupted():
            task = asyncio.create_task(ascore_run(cfg, "xsum", preds, out, cache))
            for _ in range(250):
                await asyncio.sleep(0.02)
                if srv.n_requests >= 2:
                    break
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(interrupted())
        assert srv.n_requests == 2 and srv.requests[1]["repair"]
        assert len(JudgeCache(cache)) == 0 and not out.exists()  # nothing half-done is kept
        srv.release()
        s = score_run(cfg, "xsum", preds, out, cache)
        # the prompt again (the server now answers it well), no repair needed
        assert counts(s) == {"api_requests": 1, "cache_hits": 0} and s["repair_requests"] == 0
        assert srv.requests[2]["messages"] == srv.requests[0]["messages"]
    assert read_jsonl(out)[0]["scores"] == expected_scores(9)


def test_money_only_where_prices_are_set(monkeypatch, tmp_path):
    """Prices are USD per million tokens, none by default: no cost then (null, an empty table cell)."""
    assert load_config({}).cost(10**6, 10**6) is None
    assert load_config({"price_per_1m_prompt_tokens": 2.5}).cost(400_000, 10**6) == pytest.approx(1.0)
    assert load_config({"price_per_1m_prompt_tokens": 2.5, "price_per_1m_completion_tokens": 10.0}).cost(
        400_000, 100_000) == pytest.approx(2.0)
    monkeypatch.setenv(KEY_ENV, KEY)
    preds = write_preds(tmp_path / "p.jsonl", [("a", "s", "q=5")])
    unpriced = {k: v for k, v in make_cfg().items() if not k.startswith("price")}
    with FakeJudgeServer() as srv:
        summary = score_run({**unpriced, "base_url": srv.base_url}, "xsum", preds, tmp_path / "scores.jsonl",
                            tmp_path / "cache")
    assert summary["prompt_tokens"] > 0 and summary["cost_usd"] is None and summary["this_run"]["cost_usd"] is None
    assert [r["cost_usd"] for r in read_jsonl(tmp_path / "scores.jsonl")] == [None]
