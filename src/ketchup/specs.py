"""Checks of the JSON specs the model stages receive, run before torch is imported.

A stage run by hand with a wrong spec stops at once with a message naming the key, instead of
failing with a traceback after loading torch and the models.
"""

from __future__ import annotations

from typing import Any

from ketchup import registry
from ketchup.config import ConfigError, check_pretrainable
from ketchup.span_corruption import noise_counts

STUDENT_KEYS = ("task", "arch", "student", "method", "model", "train", "generation", "seed",
                "max_source_length", "max_target_length")
TEACHER_KEYS = ("task", "arch", "model", "train", "generation", "seed", "max_source_length", "max_target_length")
PRETRAIN_KEYS = ("task", "arch", "student", "model", "pretrain", "calculator", "seed", "max_source_length",
                 "max_target_length")


def _require(spec: dict[str, Any], keys: tuple[str, ...], stage: str) -> None:
    if not isinstance(spec, dict):
        raise ConfigError(f"{stage} --spec: expected a JSON object, got {type(spec).__name__}")
    missing = [k for k in keys if k not in spec]
    if missing:
        raise ConfigError(f"{stage} --spec: missing key(s) {', '.join(missing)}")
    if spec["arch"] not in ("seq2seq", "decoder"):
        raise ConfigError(f"{stage} --spec: key 'arch' must be 'seq2seq' or 'decoder', got {spec['arch']!r}")


def check_student(spec: dict[str, Any], init: str | None) -> None:
    """The student spec names a known method, and an RL method gets the model it starts from."""
    _require(spec, STUDENT_KEYS, "student")
    try:
        method = registry.get(spec["method"])
    except KeyError as exc:
        raise ConfigError(f"student --spec: key 'method': {exc.args[0]}") from None
    if method.starts_from and not init:
        raise ConfigError(f"student: method {method.name!r} starts from the {method.starts_from!r} student; "
                          f"give it with --init (RL from random weights is not a run of the paper)")
    if method.family == "rl" and "rl" not in spec:
        raise ConfigError(f"student --spec: method {method.name!r} needs the 'rl' settings block")
    missing = [k for k in method.settings if k not in spec.get("divergence", {})]
    if missing:
        raise ConfigError(f"student --spec: method {method.name!r} needs divergence.{', divergence.'.join(missing)}")
    if spec.get("pretrained") and not method.starts_from and not init:
        raise ConfigError(f"student: students.{spec['student']} is pretrained (its pretrain block); give the "
                          "pretrained model with --init")


def check_teacher(spec: dict[str, Any]) -> None:
    _require(spec, TEACHER_KEYS, "teacher")


def check_pretrain(spec: dict[str, Any]) -> None:
    _require(spec, PRETRAIN_KEYS, "pretrain")
    check_pretrainable(spec["student"], spec["model"])


def check_sentinels(spec: dict[str, Any], available: int) -> None:
    """A seq2seq pretrain spec's longest document (max(max_source_length, max_target_length) - 1
    tokens) corrupts into no more spans than the tokenizer has sentinel tokens."""
    length = max(spec["max_source_length"], spec["max_target_length"]) - 1
    pretrain = spec["pretrain"]
    spans = noise_counts(length, pretrain["noise_density"], pretrain["mean_span_length"])[1]
    if spans > available:
        raise ConfigError(f"config key 'students.{spec['student']}.pretrain': span corruption of a {length}-token "
                          f"document of {spec['task']} (tasks.{spec['task']}.max_source_length / max_target_length) "
                          f"makes {spans} spans, more than the tokenizer's {available} sentinel tokens; raise "
                          "mean_span_length, lower noise_density or shorten the task's lengths")
