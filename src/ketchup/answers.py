"""Answer handling for exact-match accuracy: GSM8K's calculator annotations, final-number extraction
and numeric comparison (``answer: number``), and normalised text comparison (``answer: text``).

GSM8K reference answers (hub schema, ``openai/gsm8k`` config ``main``) end in ``#### <number>`` and
contain calculator annotations ``<<expr=result>>``. Model outputs may follow the same format, the
``A: <number>`` format of the released example solutions, or be free text. As docs/data.md
('Metrics') says, the answer is the number after the last ``####`` (commas removed), falling back to the
last number in the text, and answers are compared numerically.
"""

from __future__ import annotations

import math
import re
import unicodedata

__all__ = [
    "strip_calculator",
    "extract_answer",
    "answers_equal",
    "gsm8k_correct",
    "normalize_text",
    "text_correct",
    "EXTRACTORS",
]

# Calculator annotations as in GSM8K, ``<<16-3-4=9>>``, or as the calculator writes them,
# ``[ 16-3-4 = 9 ]`` (ketchup.calculator). Non-greedy and single-line-safe.
_CALC_RE = re.compile(r"<<[^<>]*>>|\[[^\[\]=]*=[^\[\]]*\]")

# A number as written in GSM8K text: optional minus (only where it cannot be a binary minus, i.e. not
# right after a word character, a closing bracket or a dot), optional ``$`` on either side of the sign,
# then either a thousands-grouped integer ("1,234,567") or a plain integer, optional decimals; or a
# bare decimal (".5"). A trailing sentence period is not part of the number ("18." -> "18").
_NUMBER_RE = re.compile(
    r"""
    (?P<sign>(?<![\w)\].])-)?       # unary minus, e.g. "-5", "-$5"; not "16-3" nor "16 - 3"
    \$?\s?
    (?P<sign2>(?<![\w)\].])-)?      # "$-5"
    (?P<num>
        \d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?   # 1,234 / 1,234.5
      | \d+(?:\.\d+)?                  # 1234 / 18.00
      | \.\d+                          # .5
    )
    """,
    re.VERBOSE,
)

_REL_TOL = 1e-6
_ABS_TOL = 1e-6


def strip_calculator(text: str) -> str:
    """Remove calculator annotations, GSM8K's ``<<...>>`` and the calculator's ``[ ... = ... ]``.

    >>> strip_calculator("16 - 3 - 4 = <<16-3-4=9>>9 duck")
    '16 - 3 - 4 = 9 duck'
    >>> strip_calculator("16 - 3 - 4 = [ 16-3-4 = 9 ] 9 duck")
    '16 - 3 - 4 =  9 duck'
    """
    return _CALC_RE.sub("", text)


def _numbers(text: str) -> list[str]:
    """All numbers in ``text`` as normalised strings (no commas, no ``$``, optional leading ``-``)."""
    out = []
    for m in _NUMBER_RE.finditer(text):
        num = m.group("num").replace(",", "")
        if num.startswith("."):
            num = "0" + num
        if m.group("sign") or m.group("sign2"):
            num = "-" + num
        out.append(num)
    return out


def extract_answer(text: str | None) -> str | None:
    """Final numeric answer of a GSM8K-style solution, as a normalised string, or None.

    The number after the last ``####`` (the first number following it); if there is no ``####``
    (or nothing numeric follows it), the last number in the whole text, e.g. the ``A: 18`` format or
    free text. Calculator annotations are ignored, commas and ``$`` signs are removed, and a trailing
    period is not part of the number: ``"#### $1,234.00."`` -> ``"1234.00"``. Returns None when the
    text contains no number.
    """
    if text is None:
        return None
    text = strip_calculator(text)
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        nums = _numbers(tail)
        if nums:
            return nums[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def _to_float(value: str | float | int | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    s = str(value).strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        f = float(s)
    except ValueError:
        extracted = extract_answer(str(value))
        if extracted is None:
            return None
        f = float(extracted)
    return f if math.isfinite(f) else None


def answers_equal(pred: str | float | int | None, ref: str | float | int | None) -> bool:
    """Numeric equality of two answers (``18 == 18.0 == "18.00" == "$18"``; ``"1,000" == 1000``).

    Uses ``math.isclose`` with rel_tol=1e-6 and abs_tol=1e-6. None (or anything without a number)
    never equals anything, not even another None.
    """
    a, b = _to_float(pred), _to_float(ref)
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)


def gsm8k_correct(prediction_text: str | None, reference_text: str | None) -> bool:
    """Whether a model solution's final answer equals the reference solution's final answer."""
    return answers_equal(extract_answer(prediction_text), extract_answer(reference_text))


def normalize_text(text: str | None) -> str:
    """Unicode NFKC, case-folded, punctuation removed (every Unicode P* character), whitespace
    collapsed: ``" Paris. "`` and ``"paris"`` compare equal.

    >>> normalize_text("  The  Eiffel-Tower! ")
    'the eiffeltower'
    """
    text = unicodedata.normalize("NFKC", "" if text is None else str(text)).casefold()
    text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    return " ".join(text.split())


def text_correct(prediction_text: str | None, reference_text: str | None) -> bool:
    """Exact match of the whole normalised texts (:func:`normalize_text`); an empty reference never matches."""
    ref = normalize_text(reference_text)
    return bool(ref) and normalize_text(prediction_text) == ref


# A task's ``answer`` key -> its correctness test for the accuracy metric.
EXTRACTORS = {"number": gsm8k_correct, "text": text_correct}
