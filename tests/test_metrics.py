"""Metric wrappers, checked against rouge-score and sacrebleu called directly, and on hand cases."""

from __future__ import annotations

import json
import math
import re

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from ketchup import metrics

PREDS = [
    "The cat sat on the mat.",
    "A man was arrested after a police chase through the city centre on Friday night.",
    "Scientists have discovered a new species of frog in the rainforests of Peru.",
    "The government announced new taxes on sugary drinks.",
    "Heavy rain caused flooding in several towns.",
]
REFS = [
    "The cat was sitting on the mat.",
    "Police arrested a man following a chase through the city centre late on Friday.",
    "A new frog species has been found by researchers in Peru's rainforest.",
    "Ministers unveiled a tax on sugary soft drinks.",
    "Several towns were flooded after torrential rain.",
]


def _approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-9)


# --- ROUGE ---------------------------------------------------------------------------------------


def test_rouge_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(PREDS, REFS)]  # score(target, prediction)
    got = metrics.rouge(PREDS, REFS)
    assert set(got) == {"rouge1", "rouge2", "rougeL"}
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(s[key].fmeasure for s in direct) / len(direct)
        assert got[key] == _approx(expected)
    per = metrics.rouge_per_example(PREDS, REFS)
    assert len(per) == len(PREDS)
    for d, s in zip(per, direct):
        for key in ("rouge1", "rouge2", "rougeL"):
            assert d[key] == _approx(100 * s[key].fmeasure)


def test_rouge_uses_stemming():
    # "sitting" vs "sits" only match via the Porter stemmer ("sit"); without it rouge1 would be < 100
    got = metrics.rouge(["cats sitting"], ["cat sits"])
    assert got["rouge1"] == _approx(100.0)
    plain = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False).score("cat sits", "cats sitting")
    assert plain["rouge1"].fmeasure == 0.0


def test_rouge_hand_cases():
    same = metrics.rouge(["the quick brown fox"], ["the quick brown fox"])
    assert same == {"rouge1": _approx(100.0), "rouge2": _approx(100.0), "rougeL": _approx(100.0)}
    disjoint = metrics.rouge(["alpha beta gamma"], ["delta epsilon zeta"])
    assert disjoint == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # hand-computed: pred "a b c d", ref "a b x y": unigram P=R=2/4 -> F1 0.5; bigram "a b" 1/3 -> F1 1/3
    half = metrics.rouge(["a b c d"], ["a b x y"])
    assert half["rouge1"] == _approx(50.0)
    assert half["rouge2"] == _approx(100 / 3)
    assert half["rougeL"] == _approx(50.0)


def test_rouge_is_mean_over_examples():
    got = metrics.rouge(["the quick brown fox", "alpha beta"], ["the quick brown fox", "gamma delta"])
    assert got["rouge1"] == _approx(50.0)


# --- BLEU / chrF ---------------------------------------------------------------------------------


def test_bleu_chrf_match_sacrebleu():
    assert metrics.bleu(PREDS, REFS) == _approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert metrics.chrf(PREDS, REFS) == _approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    assert metrics.sentence_bleu(PREDS, REFS) == [
        _approx(sacrebleu.sentence_bleu(p, [r]).score) for p, r in zip(PREDS, REFS)
    ]
    assert metrics.sentence_chrf(PREDS, REFS) == [
        _approx(sacrebleu.sentence_chrf(p, [r]).score) for p, r in zip(PREDS, REFS)
    ]
    assert 0.0 < metrics.bleu(PREDS, REFS) < 100.0
    assert isinstance(metrics.bleu(PREDS, REFS), float)


def test_bleu_is_corpus_not_mean_of_sentences():
    corpus = metrics.bleu(PREDS, REFS)
    mean_sent = sum(metrics.sentence_bleu(PREDS, REFS)) / len(PREDS)
    assert not math.isclose(corpus, mean_sent)


def test_bleu_chrf_hand_cases():
    same = ["the quick brown fox jumps over the lazy dog", "a second sentence is here"]
    assert metrics.bleu(same, same) == _approx(100.0)
    assert metrics.chrf(same, same) == _approx(100.0)
    assert metrics.sentence_bleu(same, same) == [_approx(100.0), _approx(100.0)]
    assert metrics.bleu(["aaa bbb ccc ddd"], ["www xxx yyy zzz"]) == 0.0
    assert metrics.chrf(["aaa bbb ccc ddd"], ["www xxx yyy zzz"]) == 0.0


def test_bleu_uses_13a_tokenisation():
    # 13a splits the final period off; with tokenize="none" the two would differ
    pred, ref = ["It is a fine day today."], ["It is a fine day today ."]
    assert metrics.bleu(pred, ref) == _approx(100.0)
    assert sacrebleu.corpus_bleu(pred, [ref], tokenize="none").score < 100.0


# --- GSM8K accuracy ------------------------------------------------------------------------------


def test_gsm8k_accuracy():
    refs = ["2+2=<<2+2=4>>4\n#### 4", "#### 1,000", "#### 18", "#### -3"]
    preds = ["The answer is 4.", "#### 1000", "A: 19", "it is -3.0"]
    assert metrics.accuracy_per_example(preds, refs, "number") == [1, 1, 0, 1]
    assert metrics.accuracy(preds, refs, "number") == _approx(75.0)
    assert metrics.accuracy(["no idea"], ["#### 5"], "number") == 0.0


def test_text_exact_match_normalises_case_punctuation_and_spacing():
    refs = ["Paris", "the Eiffel Tower", "42", "New  York"]
    preds = [" paris. ", "The Eiffel-Tower", "42.0", "new york!"]
    # "Eiffel-Tower" loses its hyphen ("eiffeltower"), "42.0" keeps its digits: neither matches as text
    assert metrics.accuracy_per_example(preds, refs, "text") == [1, 0, 0, 1]
    assert metrics.accuracy(preds, refs, "text") == _approx(50.0)
    assert metrics.accuracy_per_example(["", "x"], ["...", "x"], "text") == [0, 1]  # an empty reference never matches


# --- metrics by name -----------------------------------------------------------------------------


def test_compute_and_per_example():
    s = metrics.compute(["rouge1", "rouge2", "rougeL"], PREDS, REFS)
    assert list(s) == ["rouge1", "rouge2", "rougeL"]
    assert s == metrics.rouge(PREDS, REFS)
    t = metrics.compute(["bleu", "chrf"], PREDS, REFS)
    assert list(t) == ["bleu", "chrf"]
    assert t["bleu"] == _approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert t["chrf"] == _approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    assert list(metrics.compute(["chrf", "rougeL"], PREDS, REFS)) == ["chrf", "rougeL"]  # the order asked
    a = metrics.compute(["accuracy"], ["#### 3", "#### 4"], ["#### 3", "#### 5"], "number")
    assert a == {"accuracy": _approx(50.0)}

    assert metrics.per_example("rouge1", PREDS, REFS) == [d["rouge1"] for d in metrics.rouge_per_example(PREDS, REFS)]
    assert metrics.per_example("rougeL", PREDS, REFS) == [d["rougeL"] for d in metrics.rouge_per_example(PREDS, REFS)]
    assert metrics.per_example("bleu", PREDS, REFS) == metrics.sentence_bleu(PREDS, REFS)
    assert metrics.per_example("chrf", PREDS, REFS) == metrics.sentence_chrf(PREDS, REFS)
    assert metrics.per_example("accuracy", ["#### 3", "#### 4"], ["#### 3", "#### 5"], "number") == [100.0, 0.0]
    assert metrics.per_example("accuracy", ["Paris"], ["paris"], "text") == [100.0]
    # the per-example primary metric averages to the corpus primary metric where that is a mean
    per = metrics.per_example("rouge1", PREDS, REFS)
    assert sum(per) / len(per) == _approx(s["rouge1"])


def test_compute_accepts_tuples_and_generators():
    assert metrics.compute(["bleu"], tuple(PREDS), (r for r in REFS))["bleu"] == _approx(metrics.bleu(PREDS, REFS))


@pytest.mark.parametrize("names", [["rouge1", "rouge2", "rougeL"], ["bleu", "chrf"], ["accuracy"]])
def test_length_mismatch_and_empty(names):
    with pytest.raises(ValueError, match=r"3 predictions, 2 references"):
        metrics.compute(names, ["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match=r"3 predictions, 2 references"):
        metrics.per_example(names[0], ["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        metrics.compute(names, [], [])
    with pytest.raises(ValueError, match="empty"):
        metrics.per_example(names[0], [], [])


@pytest.mark.parametrize(
    "fn", [metrics.rouge, metrics.rouge_per_example, metrics.bleu, metrics.chrf, metrics.sentence_bleu,
           metrics.accuracy, metrics.accuracy_per_example],
)
def test_each_wrapper_validates(fn):
    with pytest.raises(ValueError, match=r"1 predictions, 2 references"):
        fn(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        fn([], [])


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute(["poetry"], ["a"], ["a"])
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.per_example("poetry", ["a"], ["a"])
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute("bleu", ["a"], ["a"])  # a list of names, not one name


def test_single_string_rejected():
    with pytest.raises(TypeError):
        metrics.bleu("a sentence", "a sentence")


# --- the scoring stage: per-example scores cover every prediction (issue 10) ---------------------------


def _predictions(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_keeps_one_score_per_prediction(tmp_path):
    from ketchup.scoring import score

    rows = [{"id": i, "prediction": p, "reference": r} for i, (p, r) in enumerate(zip(PREDS, REFS))]
    score("xsum", str(_predictions(tmp_path / "p.jsonl", rows)), str(tmp_path / "m.json"))
    out = json.loads((tmp_path / "m.json").read_text())
    assert out["n"] == len(rows) and list(out["per_example"]) == [str(i) for i in range(len(rows))]
    assert out["metrics"]["rouge1"] == pytest.approx(sum(out["per_example"].values()) / len(rows))


def test_score_rejects_duplicate_ids_naming_both_lines(tmp_path):
    from ketchup.io import DataError
    from ketchup.scoring import score

    rows = [{"id": "a", "prediction": "x y", "reference": "x y"}, {"id": "b", "prediction": "x", "reference": "y"},
            {"id": "a", "prediction": "z", "reference": "y"}]
    path = _predictions(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(f"{path}:3: duplicate example id 'a', already used at {path}:1")):
        score("xsum", str(path), str(tmp_path / "m.json"))
    path = _predictions(tmp_path / "p.jsonl", [{"id": "a", "prediction": "x"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: missing field(s) ['reference']")):
        score("xsum", str(path), str(tmp_path / "m.json"))
    assert not (tmp_path / "m.json").exists()
