"""Records and the one preprocessing path from a record to an example.

A task's ``fields`` name the record fields (dotted for nested ones, e.g. ``translation.en``), or give
a template over them (``"{title}: {body}"``), that make the source and the reference
(ketchup.tasks). Synthetic, hub and local records all pass through ``check_record`` and
``to_example``, so the default config exercises exactly the code that the paper configs use.
"""

from __future__ import annotations

import re
from typing import Any

from ketchup import tasks
from ketchup.answers import strip_calculator
from ketchup.calculator import annotate
from ketchup.io import DataError

# GSM8K answers end in "#### <number>" (commas and decimals allowed, as in the hub data).
_FINAL_ANSWER = re.compile(r"####\s*-?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)\s*$")
_MISSING = object()


def _get(record: dict[str, Any], name: str) -> Any:
    """A field's value: the key itself (a CSV column may contain dots), else a dotted path."""
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def has_empty_field(task: str | dict[str, Any], record: Any) -> bool:
    """True if a field the task reads is an empty or blank string (parallel corpora have such pairs)."""
    tdef = tasks.definition(task)
    names = [n for names in tasks.fields_of(tdef).values() for n in names]
    values = (_get(record, n) for n in names) if isinstance(record, dict) else ()
    return any(isinstance(v, str) and not v.strip() for v in values)


def check_record(task: str | dict[str, Any], record: Any, where: str) -> None:
    """Raise DataError naming ``where`` (file:line) and the config key if ``record`` lacks a field
    the task reads (``tasks.<task>.fields``), or has it empty or not as text."""
    tdef = tasks.definition(task)
    name = tdef["name"]
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for role, fields in tasks.fields_of(tdef).items():
        key = f"tasks.{name}.fields.{role}"
        for field in fields:
            value = _get(record, field)
            if value is _MISSING:
                have = ", ".join(sorted(record)) or "none"
                raise DataError(f"{where}: missing field '{field}' that config key '{key}' reads (task {name}; "
                                f"the record has: {have})")
            if not isinstance(value, str):
                raise DataError(f"{where}: field '{field}' (config key '{key}') must be a string, got "
                                f"{type(value).__name__}")
            if not value.strip():
                raise DataError(f"{where}: field '{field}' (config key '{key}') is empty")
    if tdef["answer_format"] == "gsm8k" and not _FINAL_ANSWER.search(_reference(tdef, record)):
        raise DataError(f"{where}: the reference must end in '#### <number>' (GSM8K format, "
                        f"tasks.{name}.answer_format)")


def _text(tdef: dict[str, Any], record: dict[str, Any], role: str) -> str:
    return tasks.fill(tdef["fields"][role], lambda field: _get(record, field))


def _reference(tdef: dict[str, Any], record: dict[str, Any]) -> str:
    return _text(tdef, record, "reference")


def to_example(task: str | dict[str, Any], record: dict[str, Any], prompt: str = "",
               calculator: bool = False) -> dict[str, str]:
    """Map a checked record to {id, source, target}: the model input and its reference output.

    With ``answer_format: gsm8k``, calculator annotations are removed, or with ``calculator`` kept as
    ``[ expr = result ]`` (the form ``ketchup.calculator`` completes when decoding)."""
    tdef = tasks.definition(task)
    source, target = _text(tdef, record, "source"), _reference(tdef, record)
    if tdef["answer_format"] == "gsm8k":
        # Without the calculator, annotations are tool calls the model cannot use: not text to learn.
        target = annotate(target) if calculator else strip_calculator(target)
    return {"id": str(record["id"]), "source": prompt + " ".join(source.split()), "target": target.strip()}
