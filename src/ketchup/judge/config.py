"""Judge configuration (the ``judge:`` block of the pipeline config) and its validation."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

log = logging.getLogger("ketchup.judge")

DEFAULT_CRITERIA = ("overall", "informativeness", "coherence")


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
    enabled: bool = False
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 256
    n_examples: int | None = 100  # None or <= 0: every example
    seed: int = 0
    baseline: str = "kl"
    concurrency: int = 4
    max_retries: int = 5
    timeout_s: float = 30.0
    backoff_s: float = 0.5  # first retry delay; doubles each retry
    backoff_max_s: float = 30.0  # cap on one delay (also caps a server's Retry-After)
    price_per_1k_prompt_tokens: float = 0.0
    price_per_1k_completion_tokens: float = 0.0
    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    max_chars: int | None = 6000  # source/reference/output longer than this are cut (cost bound)
    max_invalid_fraction: float = 0.05  # above this share of unparseable judgements the job fails
    task_descriptions: Mapping[str, str] = field(default_factory=dict)  # task name -> text

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens / 1000.0) * self.price_per_1k_prompt_tokens + (
            completion_tokens / 1000.0
        ) * self.price_per_1k_completion_tokens


_FIELDS = {f.name for f in fields(JudgeConfig)}


def load_config(cfg: Mapping[str, Any] | JudgeConfig | None) -> JudgeConfig:
    """Build a validated :class:`JudgeConfig` from the config dict (unknown keys are logged)."""
    if isinstance(cfg, JudgeConfig):
        return cfg
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - _FIELDS)
    if unknown:
        log.warning("ignoring unknown judge config keys: %s", ", ".join(unknown))
    kw = {k: v for k, v in cfg.items() if k in _FIELDS}
    try:
        for k in ("temperature", "timeout_s", "backoff_s", "backoff_max_s",
                  "price_per_1k_prompt_tokens", "price_per_1k_completion_tokens", "max_invalid_fraction"):
            if k in kw:
                kw[k] = float(kw[k])
        for k in ("max_tokens", "seed", "concurrency", "max_retries"):
            if k in kw:
                kw[k] = int(kw[k])
        for k in ("n_examples", "max_chars"):
            if k in kw and kw[k] is not None:
                kw[k] = int(kw[k])
        if "enabled" in kw:
            kw["enabled"] = _as_bool(kw["enabled"])
        if "criteria" in kw:
            crit = kw["criteria"]
            if isinstance(crit, str):
                crit = [crit]
            kw["criteria"] = tuple(str(c) for c in crit)
        if "task_descriptions" in kw:
            kw["task_descriptions"] = dict(kw["task_descriptions"] or {})
        if kw.get("api_key_env") in (None, ""):
            kw.pop("api_key_env", None)
    except (TypeError, ValueError) as exc:
        raise JudgeConfigError(f"invalid judge config: {exc}") from None
    c = JudgeConfig(**kw)
    problems = []
    if c.concurrency < 1:
        problems.append("judge.concurrency must be >= 1")
    if c.max_retries < 0:
        problems.append("judge.max_retries must be >= 0")
    if c.timeout_s <= 0:
        problems.append("judge.timeout_s must be > 0")
    if c.backoff_s < 0 or c.backoff_max_s < 0:
        problems.append("judge.backoff_s / backoff_max_s must be >= 0")
    if not 0 <= c.max_invalid_fraction <= 1:
        problems.append("judge.max_invalid_fraction must be between 0 and 1")
    if c.max_tokens < 1:
        problems.append("judge.max_tokens must be >= 1")
    if not c.criteria:
        problems.append("judge.criteria must name at least one criterion")
    if len(set(c.criteria)) != len(c.criteria):
        problems.append("judge.criteria has duplicates")
    if problems:
        raise JudgeConfigError("invalid judge config: " + "; ".join(problems))
    return c


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in {"1", "true", "yes", "on"}
    return bool(v)


def get_api_key(cfg: JudgeConfig) -> str:
    """The API key, read only from ``os.environ[cfg.api_key_env]``."""
    env = cfg.api_key_env
    key = os.environ.get(env, "")
    if not key.strip():
        raise JudgeConfigError(
            f"The LLM judge reads its API key from the environment variable {env} "
            f"(judge.api_key_env), but {env} is not set or empty. "
            f"Run `export {env}=<your key>` before starting the pipeline "
            f"(for a local OpenAI-compatible server that ignores keys, any non-empty value works)."
        )
    return key.strip()


def _enable_howto(env: str) -> str:
    return (
        "To enable the LLM judge:\n"
        "  1. set `judge.enabled: true` in the pipeline config (config.yaml);\n"
        "  2. set `judge.base_url` (an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
        "http://localhost:8000/v1 for a local vLLM server) and `judge.model`;\n"
        f"  3. export the API key in the environment variable named by `judge.api_key_env` "
        f"(currently {env}): `export {env}=<your key>`."
    )


def check_enabled(judge_cfg: Mapping[str, Any] | JudgeConfig | None) -> JudgeConfig:
    """Raise :class:`JudgeConfigError` (saying how to enable it) unless the judge can run.

    Checks ``enabled``, ``base_url``, ``model`` and that the key variable is set. Makes no request.
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
    if not os.environ.get(c.api_key_env, "").strip():
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
