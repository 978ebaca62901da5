"""What the step benchmarks (train_step.py, vocab_memory.py, paper_shape.py) share: the methods to
time and one optimizer step of a method, as the training loop takes it (rollout, loss normalised by
the real target tokens, backward, AdamW)."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ketchup.registry import TRAINED_METHODS  # noqa: E402

METHODS = list(TRAINED_METHODS)


def timed_step(objective, student, optimizer, batch, autocast=contextlib.nullcontext) -> tuple[float, float]:
    """(seconds, real target tokens) of one optimizer step; ``autocast`` wraps rollout and loss."""
    start = time.perf_counter()
    with autocast():
        batches = objective.rollout(student, batch)
        per_token, mask, _ = objective.loss(student, batches)
    (per_token.float().sum() / mask.sum().clamp(min=1)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(mask.sum())
