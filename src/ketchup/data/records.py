"""Record schemas of the hub datasets, and the one preprocessing path from a record to an example.

Synthetic, hub and local records all pass through ``check_record`` and ``to_example``, so the
default config exercises exactly the code that the paper configs use.
"""

from __future__ import annotations

import re
from typing import Any

from ketchup.answers import strip_calculator
from ketchup.calculator import annotate
from ketchup.config import TASK_KINDS
from ketchup.io import DataError

# GSM8K answers end in "#### <number>" (commas and decimals allowed, as in the hub data).
_FINAL_ANSWER = re.compile(r"####\s*-?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)\s*$")

# Required string fields per task kind (nested fields as dotted paths).
SCHEMAS = {
    "summarization": ("document", "summary"),  # EdinburghNLP/xsum (plus id)
    "translation": ("translation.en", "translation.nl"),  # Helsinki-NLP/europarl en-nl
    "arithmetic": ("question", "answer"),  # openai/gsm8k main
}


def _get(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def has_empty_field(task: str, record: Any) -> bool:
    """True if a required field is an empty or blank string (parallel corpora have such pairs)."""
    return isinstance(record, dict) and any(
        isinstance(v, str) and not v.strip() for v in (_get(record, f) for f in SCHEMAS[TASK_KINDS[task]]))


def check_record(task: str, record: Any, where: str) -> None:
    """Raise DataError naming ``where`` (file:line) if ``record`` does not fit the task's schema."""
    kind = TASK_KINDS[task]
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in SCHEMAS[kind]:
        value = _get(record, field)
        if value is None:
            raise DataError(f"{where}: missing field '{field}' for task {task} ({kind})")
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{where}: field '{field}' is empty")
    if kind == "arithmetic" and not _FINAL_ANSWER.search(record["answer"]):
        raise DataError(f"{where}: field 'answer' must end in '#### <number>' (GSM8K format)")


def to_example(task: str, record: dict[str, Any], prompt: str = "", calculator: bool = False) -> dict[str, str]:
    """Map a hub-schema record to {id, source, target}: the model input and its reference output.

    GSM8K's calculator annotations are removed, or with ``calculator`` kept as ``[ expr = result ]``
    (the form ``ketchup.calculator`` completes when decoding)."""
    kind = TASK_KINDS[task]
    if kind == "summarization":
        source, target = record["document"], record["summary"]
    elif kind == "translation":
        source, target = record["translation"]["en"], record["translation"]["nl"]
    else:
        # Without the calculator, annotations are tool calls the model cannot use: not text to learn.
        source = record["question"]
        target = annotate(record["answer"]) if calculator else strip_calculator(record["answer"])
    return {"id": str(record["id"]), "source": prompt + " ".join(source.split()), "target": target.strip()}
