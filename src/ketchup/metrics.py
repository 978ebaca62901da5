"""Evaluation metrics (docs/data.md, 'Metrics'): thin wrappers over the reference libraries.

All corpus-level scores are on the 0-100 scale.

- Summarization: ROUGE-1/2/L F1 from ``rouge-score``
  (``rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``; default tokenizer,
  Porter stemming, no nltk data needed), averaged over examples (the corpus score is the mean of the
  per-example F1, the usual practice; no bootstrap aggregation), times 100.
- Translation: corpus BLEU from ``sacrebleu.corpus_bleu(predictions, [references])`` and chrF from
  ``sacrebleu.corpus_chrf(predictions, [references])``, sacrebleu defaults (13a tokenisation, BLEU
  exponential smoothing, chrF char order 6 / word order 0 / beta 2). Per-example BLEU uses
  ``sacrebleu.sentence_bleu(prediction, [reference])`` (defaults, i.e. ``effective_order=True``).
- Arithmetic (GSM8K): accuracy in percent, an example being correct when the final number of the
  prediction equals that of the reference numerically (see :mod:`ketchup.answers`).

``compute(kind, ...)`` gives every metric of a task kind, ``per_example(kind, ...)`` the per-example
primary metric (for paired bootstrap significance tests), ``PRIMARY[kind]`` its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import sacrebleu

from ketchup.answers import gsm8k_correct

__all__ = [
    "ROUGE_TYPES",
    "TASK_METRICS",
    "PRIMARY",
    "rouge",
    "rouge_per_example",
    "bleu",
    "chrf",
    "sentence_bleu",
    "sentence_chrf",
    "gsm8k_accuracy",
    "gsm8k_per_example",
    "compute",
    "per_example",
]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

TASK_METRICS: dict[str, list[str]] = {
    "summarization": ["rouge1", "rouge2", "rougeL"],
    "translation": ["bleu", "chrf"],
    "arithmetic": ["accuracy"],
}

PRIMARY: dict[str, str] = {
    "summarization": "rouge1",
    "translation": "bleu",
    "arithmetic": "accuracy",
}


def _check(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    """Materialise both sides as lists; raise ValueError if empty or of different lengths."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings, not a single string")
    preds, refs = list(predictions), list(references)
    if len(preds) != len(refs):
        raise ValueError(
            f"predictions and references differ in length: {len(preds)} predictions, {len(refs)} references"
        )
    if not preds:
        raise ValueError(f"empty input: {len(preds)} predictions, {len(refs)} references")
    return preds, refs


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer  # imported when needed: it pulls in nltk and absl (~0.3 s)

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_example(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Per-example ROUGE-1/2/L F1 * 100 (``rouge-score``, ``use_stemmer=True``).

    Returns one ``{"rouge1", "rouge2", "rougeL"}`` dict per example. Note rouge-score's argument order
    is ``score(target, prediction)``.
    """
    preds, refs = _check(predictions, references)
    scorer = _rouge_scorer()
    out = []
    for p, r in zip(preds, refs):
        s = scorer.score(r, p)
        out.append({k: s[k].fmeasure * 100.0 for k in ROUGE_TYPES})
    return out


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus ROUGE-1/2/L: mean over examples of the F1 * 100 (``rouge-score``, stemming on)."""
    per = rouge_per_example(predictions, references)
    return {k: sum(d[k] for d in per) / len(per) for k in ROUGE_TYPES}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU, ``sacrebleu.corpus_bleu(predictions, [references])`` (13a tokenisation, defaults)."""
    preds, refs = _check(predictions, references)
    return float(sacrebleu.corpus_bleu(preds, [refs]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF, ``sacrebleu.corpus_chrf(predictions, [references])`` (defaults: chrF2, no word n-grams)."""
    preds, refs = _check(predictions, references)
    return float(sacrebleu.corpus_chrf(preds, [refs]).score)


def sentence_bleu(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example BLEU, ``sacrebleu.sentence_bleu(prediction, [reference])`` (defaults, effective order)."""
    preds, refs = _check(predictions, references)
    return [float(sacrebleu.sentence_bleu(p, [r]).score) for p, r in zip(preds, refs)]


def sentence_chrf(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example chrF, ``sacrebleu.sentence_chrf(prediction, [reference])`` (defaults)."""
    preds, refs = _check(predictions, references)
    return [float(sacrebleu.sentence_chrf(p, [r]).score) for p, r in zip(preds, refs)]


def gsm8k_per_example(predictions: Sequence[str], references: Sequence[str]) -> list[int]:
    """Per-example GSM8K correctness, 1 or 0 (:func:`ketchup.answers.gsm8k_correct`)."""
    preds, refs = _check(predictions, references)
    return [int(gsm8k_correct(p, r)) for p, r in zip(preds, refs)]


def gsm8k_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """GSM8K accuracy in percent (0-100)."""
    per = gsm8k_per_example(predictions, references)
    return 100.0 * sum(per) / len(per)


def _kind(kind: str) -> str:
    if kind not in TASK_METRICS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {sorted(TASK_METRICS)}")
    return kind


def compute(kind: str, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """All metrics of a task kind (keys ``TASK_METRICS[kind]``), each on the 0-100 scale."""
    kind = _kind(kind)
    if kind == "summarization":
        return rouge(predictions, references)
    if kind == "translation":
        preds, refs = _check(predictions, references)
        return {"bleu": bleu(preds, refs), "chrf": chrf(preds, refs)}
    return {"accuracy": gsm8k_accuracy(predictions, references)}


def per_example(kind: str, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example primary metric (``PRIMARY[kind]``), 0-100 scale.

    Summarization: ROUGE-1 F1 * 100; translation: sentence BLEU; arithmetic: 0 or 100.
    Note for translation the mean of sentence BLEU is not the corpus BLEU.
    """
    kind = _kind(kind)
    if kind == "summarization":
        return [d["rouge1"] for d in rouge_per_example(predictions, references)]
    if kind == "translation":
        return sentence_bleu(predictions, references)
    return [100.0 * c for c in gsm8k_per_example(predictions, references)]
