"""The GSM8K calculator: safe evaluation, result formatting, annotations, and the logits processor
on tiny real models (greedy, sampled, beams; seq2seq and decoder-only) and on real GSM8K text."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest
import torch

from conftest import GSM8K_DIR
from ketchup.answers import answers_equal, extract_answer, gsm8k_correct
from ketchup.batching import decode, generate, make_batch
from ketchup.calculator import (CalculatorError, CalculatorLogitsProcessor, annotate, calculate, evaluate,
                                format_result, processors)
from ketchup.models import build_model
from ketchup.tokenizer import train_tokenizer

# --- evaluator ---------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, value", [
    ("48/2", 24), ("16-3-4", 9), ("9*2", 18), ("2.5*2", 5), ("1/3", Fraction(1, 3)), ("(3+4)*2", 14),
    ("-(3+4)", -7), ("-5+2", -3), ("2**10", 1024), ("2**-1", Fraction(1, 2)), ("10//3", 3), ("10 % 3", 1),
    ("1,000*2", 2000), ("1,234,567+1", 1234568), ("$5*3", 15), ("50%*4", 2), ("(20%)", Fraction(1, 5)),
    ("12.5%*80", 10), (".5+.25", Fraction(3, 4)), ("0.1+0.2", Fraction(3, 10)), (" 7 ", 7),
])
def test_evaluate_hand_cases(expr, value):
    assert evaluate(expr) == value


def test_evaluate_fractional_power_is_a_float():
    assert evaluate("4**0.5") == pytest.approx(2.0)


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "abs(-3)", "a+1", "(1).real", "x.y", "'a'*3", "[1, 2]", "{1: 2}",
    "3 if 1 else 2", "True+1", "None", "lambda: 1", "1 < 2", "1 and 2", "9**9**9", "2**65", "10**40",
    "1/0", "5//0", "5%0", "0**-1", "(-8)**(1/3)", "", "   ", "1+", "2 3", "x" * 300, "1e400*1",
])
def test_evaluate_rejects(expr):
    with pytest.raises(CalculatorError):
        evaluate(expr)
    assert calculate(expr) is None


@pytest.mark.parametrize("value, text", [
    (24, "24"), (Fraction(5, 1), "5"), (Fraction(1, 3), "0.33"), (Fraction(2, 3), "0.67"), (2.5, "2.5"),
    (Fraction(-7, 2), "-3.5"), (Fraction(1, 100000), "0"), (Fraction(99999, 100000), "1"), (0, "0"),
    (2.0000001, "2"), (1234.5, "1234.5"), (-0.001, "0"),
])
def test_format_result(value, text):
    assert format_result(value) == text


# --- annotations -------------------------------------------------------------------------------

REF = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"


def test_annotate_writes_the_reference_form():
    assert annotate(REF) == ("Janet sells 16 - 3 - 4 = [ 16-3-4 = 9 ] 9 duck eggs a day.\n"
                             "She makes 9 * 2 = $[ 9*2 = 18 ] 18 every day.\n#### 18")
    assert annotate("x = <<2+2=4>>\nnext") == "x = [ 2+2 = 4 ]\nnext"  # a newline stays the separator
    assert annotate("no annotations") == "no annotations"


def test_answer_extraction_with_annotations_in_the_text():
    annotated = annotate(REF)
    assert extract_answer(annotated) == "18"
    assert gsm8k_correct(annotated, REF)
    # the last-number fallback skips an annotation: its numbers are not the answer
    assert extract_answer("So she has 5 = [ 2+3 = 5 ] 5 left [ 5*4 = 20 ]") == "5"
    assert extract_answer("He pays 2*9 = [ 2*9 = 18 ]") == "9"


# --- the processor, step by step, without a model ------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    texts = [annotate(REF), "Sam has 3 + 4 = [ 3+4 = 7 ] 7 apples.", "Emma has 10 - 6 = [ 10-6 = 4 ] 4 cookies.",
             "The cat sits on the mat.", "[ a+b = 3 ]", "2.5 0.33 -7 100 1234"]
    return train_tokenizer(texts * 5, 150)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_processor_forces_the_result_then_the_closing_mark(tok):
    proc = CalculatorLogitsProcessor(tok, prompt_length=0)
    ids = ids_of(tok, "Sam has 3 + 4 = [ 3+4 =")
    forced = []
    for _ in range(10):
        token = proc.next_token(ids, tok.decode(ids))
        if token is None:
            break
        forced.append(token)
        ids = ids + [token]
    assert forced == ids_of(tok, " 7 ]")
    assert tok.decode(ids) == "Sam has 3 + 4 = [ 3+4 = 7 ]"
    # after the annotation is closed, nothing more is forced
    assert proc.next_token(ids + ids_of(tok, " 7"), tok.decode(ids + ids_of(tok, " 7"))) is None


@pytest.mark.parametrize("text", ["Sam has 3 + 4 = 7", "[ 3+4", "[ a+b =", "[ 3+4 = 7 ]", "[ 3 = 3 =",
                                  "3+4 =", "[ 2**99 ="])
def test_processor_forces_nothing(tok, text):
    ids = ids_of(tok, text)
    assert CalculatorLogitsProcessor(tok, 0).next_token(ids, tok.decode(ids)) is None


def test_processor_call_masks_rows_independently(tok):
    rows = [ids_of(tok, t) for t in ("Sam has [ 3+4 =", "The cat sits", "[ a+b =", "[ 10-6 = 4")]
    width = max(map(len, rows))
    # left-pad with pad id, behind a 2-column "prompt" the processor must skip
    input_ids = torch.tensor([[tok.pad_token_id] * (2 + width - len(r)) + r for r in rows])
    proc = CalculatorLogitsProcessor(tok, prompt_length=2)
    # the pads sit in the generated part here; decode skips them, so the rows still read as intended
    scores = torch.randn(len(rows), len(tok))
    out = proc(input_ids, scores.clone())
    assert out[0].argmax() == ids_of(tok, " 7 ]")[0] and torch.isinf(out[0]).sum() == len(tok) - 1
    assert torch.equal(out[1], scores[1]) and torch.equal(out[2], scores[2])  # untouched rows
    assert out[3].argmax() == ids_of(tok, " 4 ]")[1]  # the row is halfway through its forced tokens
    # a finished row (EOS written) is left alone
    done = torch.cat([input_ids[:1], torch.tensor([[tok.eos_token_id]])], 1)
    assert torch.equal(proc(done, scores[:1].clone()), scores[:1])


# --- the processor inside transformers' generate, on tiny models -----------------------------------

ARCHS = {
    "seq2seq": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4},
    "decoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True},
}
# What a "model" wants to write (forced by Script below), and what it writes through the calculator.
# The wrong results are single tokens like the right ones, so the script stays aligned with the text.
WANTS = ["Sam has 3 + 4 = [ 3+4 = 9 ] 9 apples.", "The cat sits on the mat.", "[ a+b = 3 ] 3",
         "Emma has 10 - 6 = [ 10-6 = 7 ] 7 cookies."]
WRITES = ["Sam has 3 + 4 = [ 3+4 = 7 ] 9 apples.", "The cat sits on the mat.", "[ a+b = 3 ] 3",
          "Emma has 10 - 6 = [ 10-6 = 4 ] 7 cookies."]


class Script:
    """Stands in for a trained model: at step t, row b's scores allow only token t of WANTS[b]."""

    def __init__(self, tok, prompt_length, num_beams):
        self.ids = [ids_of(tok, t) + [tok.eos_token_id] for t in WANTS]
        self.prompt_length, self.num_beams, self.eos = prompt_length, num_beams, tok.eos_token_id

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        for row in range(scores.shape[0]):
            want = self.ids[row // self.num_beams]
            scores[row] = -torch.inf
            scores[row, want[step] if step < len(want) else self.eos] = 0.0
        return scores


def run_generate(arch, tok, calculator, sample=False, num_beams=1):
    model = build_model(arch, {"config": ARCHS[arch]}, tok, seed=0)
    batch = make_batch(tok, ["question one", "q2", "a longer question three", "four"], None, arch, 16, 1)
    calc = processors({"calculator": calculator}, tok)

    def factory(prompt_length):
        return [Script(tok, prompt_length, num_beams)] + (calc(prompt_length) if calc else [])

    out = generate(model, arch, batch, tok, max_new_tokens=30, sample=sample, num_beams=num_beams,
                   logits_processor=factory)
    return decode(tok, out)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sample, num_beams", [(False, 1), (True, 1), (False, 2)])
def test_generate_through_the_calculator(arch, tok, sample, num_beams):
    assert [len(ids_of(tok, w)) for w in WANTS] == [len(ids_of(tok, w)) for w in WRITES]
    assert run_generate(arch, tok, True, sample, num_beams) == WRITES


@pytest.mark.parametrize("arch", ARCHS)
def test_calculator_off_changes_nothing(arch, tok):
    assert processors({"calculator": False}, tok) is None and processors({}, tok) is None
    assert run_generate(arch, tok, False) == WANTS


# --- real GSM8K text -------------------------------------------------------------------------------


def _gsm8k_test():
    path = GSM8K_DIR / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K data not found at {path} (expects ../shared/data/gsm8k beside the repo)")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_real_annotations_reproduce_their_written_results():
    rows = _gsm8k_test()
    n = same = 0
    misses = []
    for row in rows:
        for expr, written in re.findall(r"<<([^<>]*)=([^<>=]*)>>", row["answer"]):
            n += 1
            got = calculate(expr)
            if got is not None and answers_equal(got, written):
                same += 1
            else:
                misses.append((expr, written, got))
    print(f"GSM8K test annotations reproduced: {same}/{n}; misses: {misses[:10]}")
    # measured: 4281/4282 (the miss: <<3/4=3/4>>, written as a fraction)
    assert n > 4000 and same / n >= 0.99, (same, n, misses[:20])


def test_real_answers_keep_their_final_answer_when_annotated():
    for row in _gsm8k_test():
        annotated = annotate(row["answer"])
        assert "<<" not in annotated and ">>" not in annotated
        assert extract_answer(annotated) == extract_answer(row["answer"]), row["answer"]


def test_processor_replays_real_solutions():
    """Feed real annotated solutions token by token: wherever the processor forces a token, it is the
    token the solution itself has there (solutions whose written results all read as ours)."""
    rows = _gsm8k_test()[:200]
    texts = [annotate(r["answer"]) for r in rows
             if all(calculate(e) == w for e, w in re.findall(r"<<([^<>]*)=([^<>=]*)>>", r["answer"]))]
    tok = train_tokenizer(texts * 2, 600)
    proc = CalculatorLogitsProcessor(tok, 0)
    forced = agree = 0
    for text in texts:
        ids = ids_of(tok, text)
        for t in range(1, len(ids)):
            token = proc.next_token(ids[:t], tok.decode(ids[:t]))
            if token is not None:
                forced += 1
                agree += token == ids[t]
    n_annotations = sum(text.count("[ ") for text in texts)
    print(f"replayed {len(texts)} of {len(rows)} solutions (the rest write a result as e.g. 16.00): "
          f"{agree}/{forced} forced tokens equal the written ones, {n_annotations} annotations")
    assert len(texts) > 0.8 * len(rows)
    # every annotation forces its result and the "]" (at least 2 tokens each)
    assert forced >= 2 * n_annotations
    assert agree == forced, (agree, forced)


# --- configuration and data ---------------------------------------------------------------------


def test_config_key_gsm8k_only(default_config):
    from ketchup import config as kconfig

    default_config["tasks"]["gsm8k"]["calculator"] = True
    kconfig.validate(default_config)
    assert kconfig.generation_settings(default_config, "gsm8k")["calculator"] is True
    assert kconfig.generation_settings(default_config, "xsum")["calculator"] is False
    default_config["tasks"]["xsum"]["calculator"] = True
    with pytest.raises(kconfig.ConfigError, match=r"tasks\.xsum\.calculator"):
        kconfig.validate(default_config)
    default_config["tasks"]["xsum"]["calculator"] = "yes"
    with pytest.raises(kconfig.ConfigError, match=r"tasks\.xsum\.calculator"):
        kconfig.validate(default_config)


def test_paper_configs_turn_the_calculator_on(repo_root):
    from ketchup import config as kconfig

    for name in ("paper.yaml", "paper_qwen.yaml"):
        assert kconfig.calculator_on(kconfig.load(repo_root / "workflow" / "configs" / name), "gsm8k"), name


def test_examples_keep_annotations_only_with_the_calculator(tmp_path, jsonl_writer):
    from ketchup.data import sources

    path = jsonl_writer(tmp_path / "test.jsonl", [{"id": 1, "question": "Q?", "answer": REF}])
    (off,), (on,) = sources.examples("gsm8k", path), sources.examples("gsm8k", path, calculator=True)
    assert "[" not in off["target"] and "<<" not in off["target"]
    assert on["target"] == annotate(REF)
    assert extract_answer(on["target"]) == extract_answer(off["target"]) == "18"
