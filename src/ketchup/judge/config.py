"""Judge configuration (the ``judge:`` block of the pipeline config) and its validation."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from ketchup.config import ConfigError, schema_defaults, validate_block

_DEFAULTS = schema_defaults("properties", "judge")


class JudgeConfigError(RuntimeError):
    """The judge is disabled or misconfigured (e.g. the API key variable is not set)."""


class JudgeAPIError(RuntimeError):
    """The judge endpoint rejected us in a way retrying cannot fix (401/403/404, other 4xx)."""


class JudgeTransportError(JudgeAPIError):
    """No reply after every retry (connection refused, DNS, TLS, timeouts, HTTP 429/5xx): the job fails."""


class JudgeInvalidError(JudgeAPIError):
    """More unparseable replies than ``judge.max_invalid_fraction`` allows: the job fails."""


@dataclass(frozen=True)
class JudgeConfig:
    """The judge block; every default is the schema's (ketchup/schema/config.schema.yaml)."""

    enabled: bool = _DEFAULTS["enabled"]
    base_url: str | None = _DEFAULTS["base_url"]
    model: str | None = _DEFAULTS["model"]
    api_key_env: str | None = _DEFAULTS["api_key_env"]  # None: a keyless server
    temperature: float = _DEFAULTS["temperature"]
    max_tokens: int = _DEFAULTS["max_tokens"]
    n_examples: int | None = _DEFAULTS["n_examples"]  # None or <= 0: every example
    seed: int = _DEFAULTS["seed"]
    baseline: str = _DEFAULTS["baseline"]
    concurrency: int = _DEFAULTS["concurrency"]
    max_retries: int = _DEFAULTS["max_retries"]
    timeout_s: float = _DEFAULTS["timeout_s"]
    backoff_s: float = _DEFAULTS["backoff_s"]  # first retry delay; doubles each retry
    backoff_max_s: float = _DEFAULTS["backoff_max_s"]  # cap on one delay (also caps a server's Retry-After)
    price_per_1m_prompt_tokens: float | None = _DEFAULTS["price_per_1m_prompt_tokens"]  # USD; None: no price
    price_per_1m_completion_tokens: float | None = _DEFAULTS["price_per_1m_completion_tokens"]
    criteria: tuple[str, ...] = tuple(_DEFAULTS["criteria"])
    max_chars: int | None = _DEFAULTS["max_chars"]  # source/reference/output longer than this are cut (cost bound)
    max_invalid_fraction: float = _DEFAULTS["max_invalid_fraction"]  # more invalid judgements fail the job
    structured_output: bool = _DEFAULTS["structured_output"]  # send response_format (a JSON schema) if taken
    task_descriptions: Mapping[str, str] = field(default_factory=dict)  # task name -> text

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        """USD for these tokens, rounded to 8 decimals; None when no price is set (an unset one counts 0)."""
        prices = (self.price_per_1m_prompt_tokens, self.price_per_1m_completion_tokens)
        if all(p is None for p in prices):
            return None
        return round((prompt_tokens * (prices[0] or 0.0) + completion_tokens * (prices[1] or 0.0)) / 1e6, 8)



def load_config(cfg: Mapping[str, Any] | JudgeConfig | None) -> JudgeConfig:
    """A :class:`JudgeConfig` from the config's judge block, checked against its part of the schema
    (ketchup/schema/config.schema.yaml, the one place its rules are written)."""
    if isinstance(cfg, JudgeConfig):
        return cfg
    kw = dict(cfg or {})
    try:
        validate_block("judge", kw)
    except ConfigError as exc:
        raise JudgeConfigError(f"invalid judge config: {exc}") from None
    if "criteria" in kw:
        kw["criteria"] = tuple(kw["criteria"])
    if "task_descriptions" in kw:
        kw["task_descriptions"] = dict(kw["task_descriptions"] or {})
    return JudgeConfig(**kw)


NO_KEY = "EMPTY"  # sent where no key is needed: the OpenAI client refuses an empty one (vLLM's convention)


def is_loopback(base_url: str | None) -> bool:
    """Whether ``base_url`` is on this machine: ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = urlsplit(base_url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_key(cfg: JudgeConfig) -> bool:
    """A server on a loopback address, or one the config marks keyless (``api_key_env: null``), needs
    no key; every other one does."""
    return cfg.api_key_env is not None and not is_loopback(cfg.base_url)


def _env_key(cfg: JudgeConfig) -> str:
    return os.environ.get(cfg.api_key_env, "").strip() if cfg.api_key_env else ""


def get_api_key(cfg: JudgeConfig) -> str:
    """The API key, read only from ``os.environ[cfg.api_key_env]``; where no key is needed
    (``needs_key``) and none is set, a placeholder."""
    key = _env_key(cfg)
    if key or not needs_key(cfg):
        return key or NO_KEY
    env = cfg.api_key_env
    raise JudgeConfigError(
        f"The LLM judge reads its API key from the environment variable {env} "
        f"(judge.api_key_env), but {env} is not set or empty. "
        f"Run `export {env}=<your key>` before starting the pipeline "
        f"(a server on a loopback address, or with judge.api_key_env: null, needs no key)."
    )


RUN_FILES = {"score": "scores.jsonl", "pairwise": "pairwise.jsonl"}  # a judge job's output, by kind


def judge_runs(config: Mapping[str, Any]) -> list[tuple[str, str, str, str, int]]:
    """Every judge job ``results/tables/llm_judge.csv`` needs, as (kind, task, student, method, seed):
    the scores of every run, and the pairwise comparison of every run but judge.baseline's."""
    baseline = (config.get("judge") or {}).get("baseline", JudgeConfig.baseline)
    return [(kind, task, student, method, seed)
            for kind in RUN_FILES for task in config["tasks"] for student in config["students"]
            for method in config["methods"] for seed in config["seeds"]
            if kind == "score" or method != baseline]


def _enable_howto(env: str) -> str:
    return (
        "To enable the LLM judge:\n"
        "  1. set `judge.enabled: true` in the pipeline config (config.yaml);\n"
        "  2. set `judge.base_url` (an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
        "http://localhost:8000/v1 for a local vLLM server) and `judge.model`;\n"
        f"  3. export the API key in the environment variable named by `judge.api_key_env` "
        f"(currently {env}): `export {env}=<your key>` (not needed for a server on a loopback address, or "
        "with `judge.api_key_env: null` for a server that takes no key)."
    )


def check_enabled(judge_cfg: Mapping[str, Any] | JudgeConfig | None) -> JudgeConfig:
    """Raise :class:`JudgeConfigError` (saying how to enable it) unless the judge can run.

    Checks ``enabled``, ``base_url``, ``model`` and that the key variable is set where a key is
    needed (``needs_key``). Makes no request.
    Returns the validated config.
    """
    c = load_config(judge_cfg)
    problems = []
    if not c.enabled:
        problems.append("judge.enabled is false")
    if not c.base_url:
        problems.append("judge.base_url is not set")
    if not c.model:
        problems.append("judge.model is not set")
    if needs_key(c) and not _env_key(c):
        problems.append(f"the environment variable {c.api_key_env} (named by judge.api_key_env) is not set")
    if problems:
        raise JudgeConfigError(
            "LLM-judge targets cannot be built: " + "; ".join(problems) + ".\n" + _enable_howto(c.api_key_env)
        )
    return c


def is_enabled(judge_cfg: Mapping[str, Any] | JudgeConfig | None) -> bool:
    """Non-raising variant of :func:`check_enabled` (for optional targets in the Snakefile)."""
    try:
        check_enabled(judge_cfg)
    except JudgeConfigError:
        return False
    return True
