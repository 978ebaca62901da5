"""Defaults of the config's ``analysis`` block and the K values the analyses use (no heavy imports).

The Snakefile (``workflow/rules/analysis_common.smk``) reads these when the DAG is built, so the
rules and the commands agree on every default.
"""

from __future__ import annotations

import copy
from typing import Any

# rl.k_sweep when the config gives none (or an empty list).
DEFAULT_K_SWEEP = [1, 2, 4, 8]

DEFAULTS: dict[str, Any] = {
    "grad_variance": {
        "n_minibatches": 20,      # minibatches of rollouts, drawn once (seeded) and shared by every K
        "batch_size": None,       # None: the ketchup method's training batch size
        "k": None,                # None: rl.k_sweep (or DEFAULT_K_SWEEP) plus 1 and the task's K
        "seed": 0,                # seeds the minibatch draw and the sampled rollouts
        "resamples": 1000,        # bootstrap resamples (over minibatches) for the confidence intervals
        "confidence": 0.95,
        "projection_dim": None,   # None: exact Gram matrix when it fits in memory, else CountSketch 2**20
    },
    "bootstrap": {
        "resamples": 1000,        # paired bootstrap resamples (over test examples) for significance.csv
        "seed": 0,
        "confidence": 0.95,
    },
}


def analysis_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config's ``analysis`` block over :data:`DEFAULTS` (one level deep per section)."""
    given = config.get("analysis", {}) or {}
    out = copy.deepcopy(DEFAULTS)
    for section, values in given.items():
        out.setdefault(section, {}).update(values or {})
    return out


def k_sweep(config: dict[str, Any]) -> list[int]:
    """K values of the sweep: ``rl.k_sweep``, or :data:`DEFAULT_K_SWEEP` when it is missing or empty."""
    ks = (config.get("rl") or {}).get("k_sweep") or DEFAULT_K_SWEEP
    return sorted(set(int(k) for k in ks))


def grad_variance_ks(config: dict[str, Any], task: str) -> list[int]:
    """K values at which the policy-gradient variance is estimated for ``task``."""
    given = analysis_settings(config)["grad_variance"]["k"]
    if given:
        return sorted(set(int(k) for k in given))
    return sorted(set(k_sweep(config)) | {1, int(config["tasks"][task].get("k", 1))})
