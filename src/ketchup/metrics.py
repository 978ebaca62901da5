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
- Accuracy: exact match in percent, per the task's answer extractor (``answer``): ``number``, the
  final number of the prediction equals that of the reference numerically (GSM8K's; see
  :mod:`ketchup.answers`), or ``text``, the normalised texts are equal (``answers.normalize_text``).

A task declares its metrics among ``METRICS`` (ketchup.tasks); ``compute(names, ...)`` gives them,
``per_example(name, ...)`` the per-example score of one (its primary, for paired bootstrap tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import sacrebleu

from ketchup.answers import EXTRACTORS
from ketchup.tasks import METRICS

__all__ = [
    "ROUGE_TYPES",
    "METRICS",
    "rouge",
    "rouge_per_example",
    "bleu",
    "chrf",
    "sentence_bleu",
    "sentence_chrf",
    "accuracy",
    "accuracy_per_example",
    "compute",
    "per_example",
]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

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


def accuracy_per_example(predictions: Sequence[str], references: Sequence[str], answer: str = "number") -> list[int]:
    """Per-example correctness, 1 or 0, by the ``answer`` extractor (:data:`ketchup.answers.EXTRACTORS`)."""
    preds, refs = _check(predictions, references)
    correct = EXTRACTORS[answer]
    return [int(correct(p, r)) for p, r in zip(preds, refs)]


def accuracy(predictions: Sequence[str], references: Sequence[str], answer: str = "number") -> float:
    """Exact-match accuracy in percent (0-100)."""
    per = accuracy_per_example(predictions, references, answer)
    return 100.0 * sum(per) / len(per)


def _names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str) or not names or any(n not in METRICS for n in names):
        raise ValueError(f"unknown metric(s) {names!r}; expected a list of {', '.join(METRICS)}")
    return list(names)


def compute(names: Sequence[str], predictions: Sequence[str], references: Sequence[str],
            answer: str = "number") -> dict[str, float]:
    """The metrics ``names`` (a task's ``metrics``), in that order, each on the 0-100 scale
    (``answer``: accuracy's extractor)."""
    names = _names(names)
    preds, refs = _check(predictions, references)
    scores: dict[str, float] = {}
    if any(n in ROUGE_TYPES for n in names):
        scores.update(rouge(preds, refs))
    if "bleu" in names:
        scores["bleu"] = bleu(preds, refs)
    if "chrf" in names:
        scores["chrf"] = chrf(preds, refs)
    if "accuracy" in names:
        scores["accuracy"] = accuracy(preds, refs, answer)
    return {n: scores[n] for n in names}


def per_example(name: str, predictions: Sequence[str], references: Sequence[str],
                answer: str = "number") -> list[float]:
    """Per-example score of the metric ``name`` (a task's primary), 0-100 scale: ROUGE F1 * 100,
    sentence BLEU or chrF, or 0 / 100 for accuracy. The mean of sentence BLEU is not the corpus BLEU."""
    (name,) = _names([name])
    if name in ROUGE_TYPES:
        return [d[name] for d in rouge_per_example(predictions, references)]
    if name == "bleu":
        return sentence_bleu(predictions, references)
    if name == "chrf":
        return sentence_chrf(predictions, references)
    return [100.0 * c for c in accuracy_per_example(predictions, references, answer)]
