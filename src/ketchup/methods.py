"""Each distillation method as an Objective: which targets it trains on and which loss it applies.

The training loop calls ``rollout`` (no gradient: decode student samples where the method needs
them) and then ``loss``, which runs the student with gradient and the teacher without, and hands
logits and masks to the pure functions of ``ketchup.objectives``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ketchup import objectives
from ketchup.batching import Batch, Decoding, generate, target_logits
from ketchup import registry
from ketchup.config import RL_DEFAULTS


def split_for_two_sources(batch: Batch) -> tuple[Batch, Batch]:
    """The rows js/tvd score on the teacher's outputs, and the rows whose sources the student samples for.

    The first ceil(B/2) examples keep the teacher's outputs, the rest get the student's samples, so
    the objective 1/2 E_teacher[D] + 1/2 E_student[D] is estimated unbiasedly from B sequences per
    micro-batch, as many as every other method trains on (scoring both sources on every example
    would double the cost and the data per update). A one-example micro-batch gets both sources.
    """
    n = batch.input_ids.shape[0]
    if n == 1:
        return batch, batch
    half = (n + 1) // 2
    return batch.rows(slice(0, half)), batch.rows(slice(half, n))


@dataclass
class Objective:
    method: str
    arch: str
    tokenizer: Any
    teacher: torch.nn.Module | None = None
    max_new_tokens: int = 64
    rl: dict[str, Any] = field(default_factory=dict)
    k: int = 1  # K of the returns (RL): the registry's rule, applied when the spec is built
    logits_processor: Any = None  # for student decodes (ketchup.calculator.processors), or None
    decoding: Decoding = Decoding()  # the cache and compilation of student decodes (generation.cache / compile)

    def __post_init__(self) -> None:
        self.rl = {**RL_DEFAULTS, **self.rl}  # the settings a spec leaves out take the schema's defaults

    @property
    def family(self) -> str:
        return registry.get(self.method).family

    def rollout(self, student, batch: Batch) -> dict[str, Batch]:
        """The batches the loss is taken on, decoded without gradient where the method samples."""
        if self.family == "supervised" or self.method == "kl":
            return {"data": batch}
        if self.family == "divergence":
            data, rest = split_for_two_sources(batch)
            sampled = generate(student, self.arch, rest, self.tokenizer, self.max_new_tokens, sample=True,
                               logits_processor=self.logits_processor, decoding=self.decoding)
            return {"data": data, "student": sampled}
        return {"student": self.rl_rollout(student, batch)}

    def rl_rollout(self, student, batch: Batch) -> Batch:
        """The RL rollout: greedy or sampled (``rl.rollout``), decoded with dropout active when
        ``rl.rollout_dropout`` (the reference decoded with the student in train mode) or in eval mode."""
        return generate(student, self.arch, batch, self.tokenizer, self.max_new_tokens,
                        sample=self.rl["rollout"] == "sample", dropout=bool(self.rl["rollout_dropout"]),
                        logits_processor=self.logits_processor, decoding=self.decoding)

    @property
    def normalize(self) -> str:
        """How the step averages the loss (``objectives.normalization``): RL follows ``rl.normalize``;
        every other method averages over tokens."""
        return self.rl["normalize"] if self.family == "rl" else "token"

    def units(self, batches: dict[str, Batch]) -> float:
        """This micro-batch's share of the step's normaliser (its tokens, or its sequences)."""
        return sum(objectives.normalization(b.target_mask, self.normalize)[1] for b in batches.values())

    @torch.no_grad()
    def _teacher_logits(self, batch: Batch) -> torch.Tensor:
        return target_logits(self.teacher, self.arch, batch).float()

    def loss(self, student, batches: dict[str, Batch]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Per-token loss [B, T] and mask; the loop sums it and divides by the step's ``units``."""
        if self.family == "supervised":
            b = batches["data"]
            return objectives.cross_entropy(target_logits(student, self.arch, b), b.target_ids, b.target_mask), \
                b.target_mask, {}
        if self.method == "kl":
            b = batches["data"]
            per_token = objectives.token_divergence(target_logits(student, self.arch, b), self._teacher_logits(b),
                                                    "kl", b.target_mask)
            return per_token, b.target_mask, {}
        if self.family == "divergence":
            return self._two_source_divergence(student, batches)
        return self._policy_gradient(student, batches["student"])

    def _two_source_divergence(self, student, batches):
        """Average of the divergence over the teacher's outputs and the student's samples, 1/2 each.

        Each source's per-token values are rescaled so that, after the loop divides by the total
        token count, each source contributes half of the mean over its own tokens. The two sources
        are disjoint halves of the micro-batch (``split_for_two_sources``).
        """
        parts, masks, stats = [], [], {}
        total = sum(float(b.target_mask.sum()) for b in batches.values())
        for name, b in batches.items():
            values = objectives.token_divergence(target_logits(student, self.arch, b), self._teacher_logits(b),
                                                 self.method, b.target_mask)
            n = float(b.target_mask.sum())
            stats[f"{self.method}_{name}"] = float(values.detach().sum()) / max(n, 1.0)
            parts.append(values * (total / (2.0 * max(n, 1.0))))
            masks.append(b.target_mask)
        width = max(p.shape[1] for p in parts)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        return torch.cat([pad(p) for p in parts]), torch.cat([pad(m) for m in masks]), stats

    def _policy_gradient(self, student, b: Batch):
        rl = self.rl
        q, v = objectives.induced_values(self._teacher_logits(b), b.target_ids, b.target_mask, value=rl["value"])
        returns = objectives.kstep_returns(q, v, b.target_mask, self.k)
        per_token, stats = objectives.policy_gradient_loss(
            target_logits(student, self.arch, b), b.target_ids, returns, b.target_mask,
            token_weight=rl["token_weight"], denom=rl["denom"], clip=rl["clip"],
            baseline=registry.get(self.method).baseline, baseline_scope=rl["baseline_scope"],
            entropy_coef=rl["entropy_coef"])
        row_scale, _ = objectives.normalization(b.target_mask, self.normalize)
        per_token = per_token * row_scale
        n = float(b.target_mask.sum())
        rewards = objectives.one_step_rewards(q, v, b.target_mask)
        stats.update(mean_reward=float(rewards.sum()) / max(n, 1.0),
                     rollout_length=float(b.target_mask.sum(1).mean()))
        return per_token, b.target_mask, stats
