"""length_by_k.csv: the distribution of test-output lengths per K (task, student size, K).

Length is counted in **tokens of the student's own tokenizer** (the one saved in the run's model
directory; no special tokens, so EOS is not counted), over the greedy test predictions of every
seed pooled. ``mean_words`` adds the mean whitespace-separated word count, and ``reference_mean``
the mean token length of the references, for scale. Quantiles use numpy's default (linear).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ketchup.analysis.common import MODEL_PATTERN, PREDICTION_PATTERN
from ketchup.io import read_jsonl
from ketchup.paths import parse

COLUMNS = ["task", "student", "k", "run", "unit", "seeds", "n", "mean", "std", "min", "q10", "q25", "median",
           "q75", "q90", "max", "empty_share", "mean_words", "reference_mean", "reference_std"]


@lru_cache(maxsize=None)
def _tokenizer(model_dir: str):
    """The run's fast tokenizer from its tokenizer.json (``tokenizers``: no transformers import), else
    transformers' AutoTokenizer (a slow tokenizer saved without tokenizer.json)."""
    path = Path(model_dir) / "tokenizer.json"
    if path.exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def token_lengths(texts: list[str], tokenizer) -> np.ndarray:
    """Token count of each text without special tokens (a ``tokenizers.Tokenizer`` or a transformers one)."""
    if not texts:
        return np.zeros(0)
    if hasattr(tokenizer, "encode_batch"):
        encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return np.array([len(e.ids) for e in encodings], dtype=float)
    return np.array([len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]], dtype=float)


def describe(lengths: np.ndarray) -> dict[str, float]:
    q = np.quantile(lengths, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(lengths.size), "mean": float(lengths.mean()), "std": float(lengths.std(ddof=1)) if lengths.size > 1
            else float("nan"), "min": float(lengths.min()), "q10": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "q90": float(q[4]), "max": float(lengths.max()),
            "empty_share": float((lengths == 0).mean())}


def length_table(predictions: list[str], models: list[str], sweep: dict[str, dict[Any, str]],
                 tokenizer_loader=_tokenizer) -> pd.DataFrame:
    """``predictions`` and ``models`` of the sweep's runs; ``sweep``: task -> {K: run method}."""
    model_dirs = {}
    for m in models:
        run = parse(m, MODEL_PATTERN)
        model_dirs[(run["task"], run["student"], run["method"], run["seed"])] = m
    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for p in predictions:
        run = parse(p, PREDICTION_PATTERN)
        groups.setdefault((run["task"], run["student"], run["method"]), []).append((p, run))
    rows = []
    for task, runs in sorted(sweep.items()):
        for k, method in sorted(((int(k), r) for k, r in runs.items())):
            for (t, student, meth), files in sorted(groups.items()):
                if t != task or meth != method:
                    continue
                preds, refs, words = [], [], []
                for path, run in sorted(files, key=lambda f: f[1]["seed"]):
                    key = (task, student, method, run["seed"])
                    if key not in model_dirs:
                        raise ValueError(f"{path}: no model directory given for {key} (its tokenizer counts tokens)")
                    tok = tokenizer_loader(model_dirs[key])
                    records = read_jsonl(path)
                    preds.append(token_lengths([r["prediction"] for r in records], tok))
                    refs.append(token_lengths([r["reference"] for r in records], tok))
                    words += [len(r["prediction"].split()) for r in records]
                lengths, ref_lengths = np.concatenate(preds), np.concatenate(refs)
                rows.append({"task": task, "student": student, "k": k, "run": method, "unit": "tokens",
                             "seeds": len(files), **describe(lengths), "mean_words": float(np.mean(words)),
                             "reference_mean": float(ref_lengths.mean()),
                             "reference_std": float(ref_lengths.std(ddof=1)) if ref_lengths.size > 1 else float("nan")})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.round({c: 4 for c in COLUMNS if c not in ("task", "student", "k", "run", "unit", "seeds", "n")})
