"""The config's ``analysis`` block over its schema defaults, and the K values the analyses use (no heavy imports).

The Snakefile (``workflow/rules/analysis_common.smk``) reads these when the DAG is built, so the
rules and the commands agree on every default.
"""

from __future__ import annotations

import copy
from typing import Any

from ketchup import registry
from ketchup.config import optim_settings, schema_defaults

# analysis.k_sweep when the config gives none (or an empty list).
DEFAULT_K_SWEEP = schema_defaults("properties", "analysis")["k_sweep"]

# The schema's default: values of the analysis block (its sections one level deep).
DEFAULTS: dict[str, Any] = {"k_sweep": DEFAULT_K_SWEEP,
                            "ppo_cost_ratio": schema_defaults("properties", "analysis")["ppo_cost_ratio"],
                            **{section: schema_defaults("properties", "analysis", "properties", section)
                               for section in ("grad_variance", "bootstrap")}}


def analysis_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config's ``analysis`` block over :data:`DEFAULTS` (one level deep per section)."""
    given = config.get("analysis", {}) or {}
    out = copy.deepcopy(DEFAULTS)
    for key, values in given.items():
        if isinstance(out.get(key), dict):
            out[key].update(values or {})
        else:
            out[key] = copy.deepcopy(values)
    return out


def k_sweep(config: dict[str, Any]) -> list[int]:
    """K values of the sweep: ``analysis.k_sweep``, or :data:`DEFAULT_K_SWEEP` when it is missing or empty."""
    ks = analysis_settings(config)["k_sweep"] or DEFAULT_K_SWEEP
    return sorted(set(int(k) for k in ks))


def grad_variance_ks(config: dict[str, Any], task: str) -> list[int]:
    """K values at which the policy-gradient variance is estimated for ``task``."""
    given = analysis_settings(config)["grad_variance"]["k"]
    if given:
        return sorted(set(int(k) for k in given))
    return sorted(set(k_sweep(config)) | {1, int(config["tasks"][task].get("k", 1))})


def ppo_equal_time(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The runs of the equal-time comparison (``ketchup.analysis.equal_time``), by configured PPO method:
    its method without PPO ("plain"), itself at the same rollout batches ("rollouts"), and itself cut
    to the plain run's training time ("time": ``{method}-r{N}``, N = round(max_steps /
    analysis.ppo_cost_ratio)). Empty when ``analysis.ppo_cost_ratio`` is null."""
    ratio = analysis_settings(config)["ppo_cost_ratio"]
    if ratio is None:
        return {}
    out = {}
    for name in config["methods"]:
        if registry.get(name).ppo:
            steps = max(1, round(optim_settings(config, name)["max_steps"] / ratio))
            out[name] = {"plain": registry.without_ppo(name), "rollouts": name, "time": registry.budget_run(name, steps)}
    return out
