"""The GSM8K calculator, as the reference decodes every GSM8K model (docs/data.md, 'GSM8K's calculator'; docs/math.md, 'The reference code, as it runs').

GSM8K answers carry calculator annotations ``<<48/2=24>>``. With ``tasks.gsm8k.calculator`` on, the
targets keep them, rewritten as the reference does, ``[ 48/2 = 24 ]`` (:func:`annotate`): T5's
SentencePiece vocabulary has no ``<``, and ``[``/``]``/``=`` are single tokens in every vocabulary
the pipeline uses. Every decode then goes through :class:`CalculatorLogitsProcessor`: once a row's
generated text ends in an open annotation ``[ expr =``, the tokens of `` result ]`` are forced, one
per step, where ``result`` is :func:`evaluate` (safe arithmetic, never ``eval``) formatted by
:func:`format_result`. An expression that does not evaluate forces nothing.
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction
from typing import Any, Callable, Mapping

__all__ = ["OPEN", "CLOSE", "CalculatorError", "evaluate", "format_result", "calculate", "annotate",
           "CalculatorLogitsProcessor", "processors"]

OPEN, CLOSE = "[", "]"
MAX_EXPRESSION_CHARS = 200  # GSM8K's longest is under 100
MAX_EXPONENT = 64  # x ** y with |y| above this is refused (a model could write 9**9**9)
MAX_MAGNITUDE = 10 ** 30  # no step may leave this range: GSM8K quantities are far smaller
DECIMALS = 2  # the reference rounds non-integer results to 2 decimals
MAX_FORCED_TOKENS = 32  # how far back a row is searched for the "=" its forced tokens follow

# GSM8K's annotation: ``<<expr=result>>`` (the last ``=`` separates the result).
_GSM8K_ANNOTATION = re.compile(r"<<([^<>]*)=([^<>=]*)>>(\s?)")
# An open annotation at the end of the generated text, stopped at its first ``=``: group 1 the
# expression, group 2 what follows that ``=`` (the result written so far).
_OPEN_ANNOTATION = re.compile(r"\[([^\[\]=]*)=([^\[\]=]*)$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A percentage: a number, then ``%`` not followed by an operand (``50%*4``, ``(20%)``); ``7 % 3`` is modulo.
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%(?=\s*(?:$|[)+\-*/%]))")

_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate."""


def _number(value: Any) -> Fraction | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CalculatorError(f"not a number: {value!r}")
    return Fraction(value) if isinstance(value, int) else Fraction(str(value))


def _power(base: Fraction | float, exponent: Fraction | float) -> Fraction | float:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is larger than {MAX_EXPONENT}")
    if isinstance(exponent, Fraction) and exponent.denominator == 1:
        if base == 0 and exponent < 0:
            raise CalculatorError("zero to a negative power")
        return base ** int(exponent)
    if base < 0:
        raise CalculatorError("fractional power of a negative number")
    return float(base) ** float(exponent)


def _eval_node(node: ast.AST) -> Fraction | float:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant):
        return _number(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and (type(node.op) in _BINARY or isinstance(node.op, ast.Pow)):
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow):
            value = _power(left, right)
        else:
            if right == 0 and isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
                raise CalculatorError("division by zero")
            value = _BINARY[type(node.op)](left, right)
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
            raise CalculatorError("result out of range")
        return value
    raise CalculatorError(f"not allowed in a calculator expression: {type(node).__name__}")


def evaluate(expr: str) -> Fraction | float:
    """Value of an arithmetic expression as GSM8K writes one: numbers (``1,234``, ``.5``, ``2.50``,
    ``$3``, ``50%`` = 0.5), ``+ - * / // % **`` (``%`` between operands is modulo, ``**`` with
    |exponent| <= MAX_EXPONENT), unary minus and parentheses. Exact (fractions) unless a fractional
    power makes it a float. Anything else (names, calls, attributes, strings, ...) raises
    CalculatorError; the text is parsed with ``ast``, never evaluated by Python.
    """
    if not isinstance(expr, str) or len(expr) > MAX_EXPRESSION_CHARS:
        raise CalculatorError("not an expression, or too long")
    text = _THOUSANDS.sub("", expr.replace("$", "")).strip()
    text = _PERCENT.sub(r"(\1/100)", text)
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise CalculatorError(f"cannot parse {expr!r}") from exc
    return _eval_node(tree)


def format_result(value: Fraction | float) -> str:
    """A result as GSM8K writes it: an integer without ``.0`` (values within 1e-4 of one, as the
    reference), else rounded to ``DECIMALS`` decimals without trailing zeros (``2.5``, ``0.33``)."""
    nearest = round(value)
    if abs(value - nearest) < Fraction(1, 10 ** 4):
        return str(int(nearest))
    text = f"{float(value):.{DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def calculate(expr: str) -> str | None:
    """:func:`format_result` of :func:`evaluate`, or None where the expression does not evaluate."""
    try:
        return format_result(evaluate(expr))
    except (CalculatorError, ArithmeticError, ValueError, TypeError):
        return None


def annotate(text: str) -> str:
    """Rewrite GSM8K's annotations ``<<expr=result>>`` as ``[ expr = result ]``, the form the
    processor completes, followed by a space as in the reference (``= <<9*2=18>>18`` becomes
    ``= [ 9*2 = 18 ] 18``); the written result is kept as it is."""
    return _GSM8K_ANNOTATION.sub(
        lambda m: f"{OPEN} {m.group(1).strip()} = {m.group(2).strip()} {CLOSE}{m.group(3) or ' '}", text)


class CalculatorLogitsProcessor:
    """A transformers ``LogitsProcessor`` that completes calculator annotations, row by row.

    ``prompt_length`` leading columns of ``input_ids`` are not generated text (seq2seq: the decoder
    start token; decoder-only: the left-padded prompt). For each unfinished row whose generated text
    ends in ``[ expr =`` (``=`` the first after the open ``[``) and whose ``expr`` evaluates, the
    continuation `` result ]`` is tokenised once, and its tokens are forced one per step: every other
    score becomes -inf and the forced one 0 (probability 1 after softmax; a beam's score is
    unchanged). Which forced token comes next is read from the row itself (stateless), so greedy,
    sampled and beam decoding (rows reordered between steps) all work.
    """

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer = tokenizer
        self.prompt_length = int(prompt_length)
        self._encoded: dict[str, list[int]] = {}

    def _encode(self, text: str) -> list[int]:
        if text not in self._encoded:
            self._encoded[text] = self.tokenizer(text, add_special_tokens=False).input_ids
        return self._encoded[text]

    def _plan(self, text: str) -> tuple[str, list[int]] | None:
        """(expected text after the ``=``, its forced ids) when ``text`` ends right after ``[ expr =``."""
        m = _OPEN_ANNOTATION.search(text)
        if m is None or m.group(2).strip():
            return None
        result = calculate(m.group(1))
        if result is None:
            return None
        continuation = ("" if m.group(2) else " ") + f"{result} {CLOSE}"
        return continuation, self._encode(continuation)

    def next_token(self, ids: list[int], text: str) -> int | None:
        """The token to force after ``ids`` (generated so far, decoding to ``text``), or None."""
        m = _OPEN_ANNOTATION.search(text)
        if m is None:
            return None
        if not m.group(2).strip():  # right after the "=": start the result
            plan = self._plan(text)
            return plan[1][0] if plan and plan[1] else None
        if calculate(m.group(1)) is None:  # a failed expression forced nothing: leave the row alone
            return None
        # Part of the result is written: the "=" ends ids[:-j] for the smallest j that decodes so;
        # the j tokens after it must be the first j forced ones.
        for j in range(1, min(len(ids), MAX_FORCED_TOKENS + 1)):
            plan = self._plan(self.tokenizer.decode(ids[:-j], skip_special_tokens=True))
            if plan is not None:
                forced = plan[1]
                return forced[j] if j < len(forced) and ids[-j:] == forced[:j] else None
        return None

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] == 0:
            return scores
        eos = self.tokenizer.eos_token_id
        rows = generated.tolist()
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        for b, (ids, text) in enumerate(zip(rows, texts)):
            if OPEN not in text or eos in ids:  # no annotation, or the row has finished
                continue
            token = self.next_token(ids, text)
            if token is not None:
                scores[b] = -torch.inf
                scores[b, token] = 0.0
        return scores


def processors(spec: Mapping[str, Any], tokenizer) -> Callable[[int], list] | None:
    """The logits processors a decode of this run uses, as a factory of the prompt length, or None.

    ``spec`` is a stage's spec holding ``calculator`` (the generation settings, or the gradient-
    variance spec); the one place that turns the config's ``tasks.<task>.calculator`` into decoding.
    """
    if not spec.get("calculator", False):
        return None
    return lambda prompt_length: [CalculatorLogitsProcessor(tokenizer, prompt_length)]
