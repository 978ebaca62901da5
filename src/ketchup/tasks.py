"""Tasks as data: a task of the config (``tasks.<name>``) resolved over its preset.

A task says where its records come from (synthetic, hub, local JSONL / CSV / Parquet), which record
fields (or a template over them) make the source and the reference, and how it is scored (metrics,
primary metric, answer extractor); docs/data.md, 'Adding a task'. The paper's three tasks are the
presets below: a task named ``xsum``, ``en_nl`` or ``gsm8k``, or one with ``preset:``, starts from
that preset and overrides any of its keys. Nothing else in the package knows the three names.
"""

from __future__ import annotations

import copy
import re
from typing import Any

# The metrics the project computes (ketchup.metrics), in the order a table lists them.
METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "accuracy")

PRESETS: dict[str, dict[str, Any]] = {
    "xsum": {
        "title": "XSum",
        "description": "summarise a news article in a single sentence",
        "generator": "xsum",
        "hub_name": "EdinburghNLP/xsum", "hub_config": None,
        "hub_splits": {"train": "train", "dev": "validation", "test": "test"},
        "fields": {"source": "document", "reference": "summary"},
        "metrics": ["rouge1", "rouge2", "rougeL"], "primary_metric": "rouge1",
    },
    "en_nl": {
        "title": "EN-NL",
        "description": "translate the source text from English to Dutch",
        "generator": "en_nl",
        # Europarl has a train split only: dev and test are seeded slices of it.
        "hub_name": "Helsinki-NLP/europarl", "hub_config": "en-nl",
        "hub_splits": {"train": "train", "dev": None, "test": None}, "hub_carved": {"dev": 1000, "test": 1000},
        "fields": {"source": "translation.en", "reference": "translation.nl"},
        "metrics": ["bleu", "chrf"], "primary_metric": "bleu",
    },
    "gsm8k": {
        "title": "GSM8K",
        "description": "solve a grade-school math word problem, showing the reasoning and the final numeric answer",
        "generator": "gsm8k",
        "hub_name": "openai/gsm8k", "hub_config": "main",
        "hub_splits": {"train": "train", "dev": None, "test": "test"}, "hub_carved": {"dev": 500},
        "fields": {"source": "question", "reference": "answer"},
        "answer_format": "gsm8k",
        "metrics": ["accuracy"], "primary_metric": "accuracy", "answer": "number",
    },
}

# Defaults of keys a preset may leave out (the schema documents each).
DEFAULTS: dict[str, Any] = {
    "format": "jsonl",
    "answer_format": "plain",
    "answer": "text",
    "hub_config": None,
    "hub_splits": {"train": "train", "dev": "validation", "test": "test"},
    "hub_carved": {},
    "description": "produce the output the reference gives for the source text",
}

# What says which task it is: a preset gives these only to the task of its own name (a de_en task
# with preset: en_nl is not "EN-NL", nor described as English to Dutch).
IDENTITY_KEYS = ("title", "description")
# What the stages that read records need (how a record becomes {source, target}), and what scoring needs.
READ_KEYS = ("fields", "answer_format")
SCORE_KEYS = ("metrics", "primary_metric", "answer")

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def preset_name(name: str, block: dict[str, Any]) -> str | None:
    """The preset a task starts from: its ``preset`` key, else its name when that is a preset's."""
    return block.get("preset", name if name in PRESETS else None)


def resolve(name: str, block: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task's full definition: defaults < preset < the config's block, plus ``name`` and ``title``
    (default: the name) and ``primary_metric`` (default: the first of the block's metrics, else the
    preset's). Idempotent."""
    block = dict(block or {})
    preset = preset_name(name, block)
    inherited = {k: v for k, v in PRESETS.get(preset, {}).items() if preset == name or k not in IDENTITY_KEYS}
    out = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(inherited), **copy.deepcopy(block)}
    out["name"] = name
    out.setdefault("title", name)
    if out.get("metrics") and ("primary_metric" not in out or ("metrics" in block and "primary_metric" not in block)):
        out["primary_metric"] = out["metrics"][0]  # a task's own metrics replace the preset's primary too
    return out


def definition(task: str | dict[str, Any]) -> dict[str, Any]:
    """A resolved definition, or a preset's by name (for callers that name a paper task)."""
    return resolve(task) if isinstance(task, str) else task


def named(name: str, task_def: dict[str, Any] | None) -> dict[str, Any]:
    """``task_def`` (a task's definition, or the part of it a stage needs) resolved as task ``name``;
    without one, the preset ``name`` (a stage run by hand on a paper task)."""
    if task_def is None and name not in PRESETS:
        from ketchup.config import ConfigError  # here: ketchup.config imports this module

        raise ConfigError(f"task {name!r} is not a preset ({', '.join(PRESETS)}): give its definition "
                          f"(--task-spec, or task_def in --spec)")
    return resolve(name, task_def)


def info(tdef: dict[str, Any]) -> dict[str, Any]:
    """What tables and analyses need of a task: its primary metric and its title."""
    return {"primary": tdef["primary_metric"], "title": tdef["title"]}


def subset(tdef: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The part of a definition one stage needs (so that changing, e.g., the judge's description does
    not rerun training)."""
    return {k: tdef[k] for k in keys if k in tdef}


def template_fields(text: str) -> list[str] | None:
    """The record fields a template ``"... {field} ..."`` names, or None when ``text`` is a plain field
    name (dotted for nested fields). Raises ValueError for an empty or unbalanced placeholder."""
    if "{" not in text and "}" not in text:
        return None
    names = _PLACEHOLDER.findall(text)
    rest = _PLACEHOLDER.sub("", text)
    if "{" in rest or "}" in rest or not names or any(not n.strip() for n in names):
        raise ValueError(f"{text!r} is neither a field name nor a template of {{field}} placeholders")
    return [n.strip() for n in names]


def fields_of(tdef: dict[str, Any]) -> dict[str, list[str]]:
    """Per role (source, reference): the record fields it reads."""
    out = {}
    for role, text in tdef["fields"].items():
        named = template_fields(text)
        out[role] = [text] if named is None else named
    return out


def fill(text: str, value_of) -> str:
    """``text`` as a field name (its value) or a template (placeholders replaced by ``value_of(name)``)."""
    if template_fields(text) is None:
        return value_of(text)
    return _PLACEHOLDER.sub(lambda m: value_of(m.group(1).strip()), text)
