"""GSM8K answer extraction and comparison, on hand cases and on the real GSM8K files (docs/data.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketchup.answers import answers_equal, extract_answer, gsm8k_correct, strip_calculator

GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
MODEL_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


# --- strip_calculator ----------------------------------------------------------------------------


def test_strip_calculator_single():
    assert strip_calculator("16 - 3 - 4 = <<16-3-4=9>>9 duck") == "16 - 3 - 4 = 9 duck"


def test_strip_calculator_multiple_and_dollar():
    text = "She makes 9 * 2 = $<<9*2=18>>18 a day.\nTotal 2+1=<<2+1=3>>3 bolts\n#### 18"
    assert strip_calculator(text) == "She makes 9 * 2 = $18 a day.\nTotal 2+1=3 bolts\n#### 18"


def test_strip_calculator_no_annotation_unchanged():
    assert strip_calculator("no annotations 3 < 4 > 2") == "no annotations 3 < 4 > 2"


# --- extract_answer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#### 18", "18"),
        ("She makes $18 a day.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("#### 1,234,567.5", "1234567.5"),
        ("#### $18.00", "18.00"),
        ("#### 18.", "18"),
        ("#### 18 \n", "18"),
        ("#### -3", "-3"),
        ("#### -$3", "-3"),
        ("#### $-3", "-3"),
        ("#### 0.25", "0.25"),
        ("#### .5", "0.5"),
        ("#### 70000", "70000"),
        # the last #### wins, and the first number after it
        ("#### 3\nwait, recompute\n#### 4 eggs, 5 hens", "4"),
        # calculator annotations are ignored
        ("So 9 * 2 = $<<9*2=18>>18\n#### 18", "18"),
        ("He pays 2*9=<<2*9=18>>", "9"),
        # fall back to the last number
        ("Janet makes 9 * 2 = $18 every day.\nA: 18", "18"),
        ("A: 1,000", "1000"),
        ("The answer is $1,250.50.", "1250.50"),
        ("The total is 16 - 3 - 4 = 9", "9"),
        ("The temperature dropped to -4 degrees", "-4"),
        ("He had 7-3 left, i.e. 4 apples", "4"),
        ("10-4", "4"),  # binary minus, not -4
        ("It rose by 25%.", "25"),
        ("#### \nso the answer is 42", "42"),  # nothing numeric after ####: fall back
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", "no number here", "#### ", "#### unknown", None])
def test_extract_answer_none(text):
    assert extract_answer(text) is None


# --- answers_equal / gsm8k_correct ---------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [("18", "18"), ("18", "18.0"), ("18", "18.00"), (18, "18.00"), ("$18.00", 18.0), ("1,000", "1000"),
     ("-3", -3), ("0.1", 0.1), ("1e3", 1000)],
)
def test_answers_equal_true(a, b):
    assert answers_equal(a, b)
    assert answers_equal(b, a)


@pytest.mark.parametrize(
    "a, b",
    [("18", "19"), ("18", "-18"), ("18", "18.01"), ("1000", "100"), (None, None), (None, "18"),
     ("18", None), ("", "18"), ("abc", "abc")],
)
def test_answers_equal_false(a, b):
    assert not answers_equal(a, b)


def test_gsm8k_correct():
    ref = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert gsm8k_correct("She makes 9 * 2 = $18.\n#### 18", ref)
    assert gsm8k_correct("She makes 9 * 2 = $18.00 every day.", ref)
    assert gsm8k_correct("So the answer is:\nA: 18", ref)
    assert not gsm8k_correct("She makes 13 * 2 = $26\nA: 26", ref)
    assert not gsm8k_correct("I do not know.", ref)
    assert not gsm8k_correct("#### 18", "no reference answer")


# --- real GSM8K data -----------------------------------------------------------------------------


def _load_jsonl(name: str) -> list[dict]:
    path = GSM8K_DIR / name
    if not path.is_file():
        pytest.skip(f"GSM8K data not found at {path} (expects ../shared/data/gsm8k beside the repo)")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def gsm8k_test():
    return _load_jsonl("test.jsonl")


@pytest.fixture(scope="module")
def model_solutions():
    return _load_jsonl("example_model_solutions.jsonl")


def test_real_test_answers_parse(gsm8k_test):
    assert len(gsm8k_test) == 1319
    for row in gsm8k_test:
        tail = row["answer"].rsplit("####", 1)[1].strip()
        ans = extract_answer(row["answer"])
        assert ans is not None, row["answer"]
        float(ans)
        # the extracted answer is exactly the #### field, commas removed
        assert ans == tail.replace(",", ""), (tail, ans)
        # annotation-free text gives the same answer
        assert extract_answer(strip_calculator(row["answer"])) == ans
        assert "<<" not in strip_calculator(row["answer"])


def test_real_ground_truth_matches_test_answers(gsm8k_test, model_solutions):
    by_question = {row["question"]: row["answer"] for row in gsm8k_test}
    assert len(model_solutions) == len(gsm8k_test)
    for row in model_solutions:
        assert row["question"] in by_question
        gt = row["ground_truth"]
        assert "A:" in gt.splitlines()[-1]
        assert extract_answer(gt) is not None
        assert answers_equal(extract_answer(gt), extract_answer(by_question[row["question"]])), row["question"]


def test_real_model_solutions_agree_with_human_labels(gsm8k_test, model_solutions):
    by_question = {row["question"]: row["answer"] for row in gsm8k_test}
    n = agree = 0
    disagreements = []
    for row in model_solutions:
        ref = by_question[row["question"]]
        for key in MODEL_KEYS:
            sol = row[key]
            label = sol["is_correct"]
            assert isinstance(label, bool)
            n += 1
            got = gsm8k_correct(sol["solution"], ref)
            if got == label:
                agree += 1
            else:
                disagreements.append((key, label, extract_answer(sol["solution"]), extract_answer(ref)))
    assert n == 4 * 1319
    rate = agree / n
    # measured: 5276/5276 = 100% agreement
    assert rate >= 0.99, f"agreement {rate:.4f} ({agree}/{n}); first disagreements: {disagreements[:10]}"
    # the labels are not trivial: both classes occur in quantity
    n_true = sum(row[k]["is_correct"] for row in model_solutions for k in MODEL_KEYS)
    assert 0.2 * n < n_true < 0.8 * n
