"""Each distillation method as an Objective: which targets it trains on and which loss it applies.

The training loop calls ``rollout`` (no gradient: decode student samples where the method needs
them), then ``updates``, which says how the rolled-out micro-batches split into optimizer updates
(one update over all of them, except for the PPO methods), and ``loss`` on each micro-batch of an
update, which runs the student with gradient and the teacher without, and hands logits and masks
to the pure functions of ``ketchup.objectives``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ketchup import objectives
from ketchup.batching import Batch, Decoding, generate, target_logits
from ketchup import registry
from ketchup.config import DIVERGENCE_DEFAULTS, RL_DEFAULTS

PPO_ROWS = "ppo"  # the key of a PPO minibatch's prepared rows in a micro-batch dict


def split_for_two_sources(batch: Batch, share: float = 0.5) -> tuple[Batch | None, Batch | None]:
    """The rows scored on the teacher's outputs, and the rows whose sources the student samples for
    (``registry.source_rows``; None for a source without rows).

    js and tvd (share 1/2): the first ceil(B/2) examples keep the teacher's outputs, the rest get the
    student's samples, so the objective 1/2 E_teacher[D] + 1/2 E_student[D] is estimated unbiasedly
    from B sequences per micro-batch, as many as every other method trains on (scoring both sources
    on every example would double the cost and the data per update). gkd: a share lambda of the rows.
    A split that would leave a source empty (a one-example micro-batch) gives both sources every row.
    """
    n = batch.input_ids.shape[0]
    teacher, student = registry.source_rows(n, share)
    if teacher == student == n:
        return batch, batch
    return (batch.rows(slice(0, teacher)) if teacher else None,
            batch.rows(slice(n - student, n)) if student else None)


# The per-token loss of each divergence method but kl, from the student's and the teacher's logits, the
# mask and its divergence.* settings (objectives.py holds the equations).
DIVERGENCE_LOSSES = {
    "js": lambda s, t, m, d: objectives.token_divergence(s, t, "js", m),
    "tvd": lambda s, t, m, d: objectives.token_divergence(s, t, "tvd", m),
    "gkd": lambda s, t, m, d: objectives.generalized_jsd(s, t, m, d["beta"]),
    "rkl": lambda s, t, m, d: objectives.generalized_jsd(s, t, m, 1.0),  # GKD at beta = 1: KL(q || p)
    "skl": lambda s, t, m, d: objectives.skew_kl(s, t, m, d["alpha"]),
    "srkl": lambda s, t, m, d: objectives.skew_reverse_kl(s, t, m, d["alpha"]),
}


@dataclass
class Prepared:
    """Rollouts prepared once for PPO's updates: the rows, log pi_old of their tokens and their
    advantages A_t ([B, T] each, aligned with ``batch.target_ids``, detached). ``scale`` 0 marks a
    stand-in row that keeps an update's micro-batch count but weighs nothing (``Objective.updates``)."""
    batch: Batch
    old_logp: torch.Tensor
    advantages: torch.Tensor
    scale: float = 1.0

    def rows(self, index: torch.Tensor) -> "Prepared":
        """A sub-batch of rows, trimmed of the columns that are padding in every kept row."""
        b = self.batch.rows(index)
        width = b.target_ids.shape[1]  # targets are right-padded: the kept columns are a prefix
        return Prepared(b, self.old_logp[index][:, :width], self.advantages[index][:, :width], self.scale)


def _rows(b: Batch | Prepared) -> Batch:
    return b.batch if isinstance(b, Prepared) else b


def _scale(b: Batch | Prepared) -> float:
    return b.scale if isinstance(b, Prepared) else 1.0


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
    divergence: dict[str, float] = field(default_factory=dict)  # the divergence.* settings the method reads

    def __post_init__(self) -> None:
        self.rl = {**RL_DEFAULTS, **self.rl}  # the settings a spec leaves out take the schema's defaults
        self.divergence = {**DIVERGENCE_DEFAULTS, **self.divergence}

    @property
    def family(self) -> str:
        return registry.get(self.method).family

    @property
    def student_share(self) -> float:
        """The share of rows a divergence method's student samples for (registry.student_share)."""
        return registry.student_share(self.method, self.divergence)

    @property
    def ppo(self) -> bool:
        return registry.get(self.method).ppo

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per rollout batch: rl.ppo_epochs x rl.ppo_minibatches for PPO, else 1."""
        return self.rl["ppo_epochs"] * self.rl["ppo_minibatches"] if self.ppo else 1

    @staticmethod
    def real_rows(batches: dict[str, Any]) -> float:
        """The rows (examples or rollouts) of one micro-batch, what its logged statistics weigh; PPO's
        stand-in rows count for nothing, and a batch given twice (js / tvd on one example) once."""
        distinct = {id(b): b for b in batches.values()}.values()
        return sum(float(_rows(b).target_ids.shape[0]) * _scale(b) for b in distinct)

    @staticmethod
    def real_tokens(batches: dict[str, Any]) -> float:
        """The real target tokens of one micro-batch (logged; PPO's stand-in rows count for nothing)."""
        return sum(float(_rows(b).target_mask.sum()) * _scale(b) for b in batches.values())

    def updates(self, student, micro: list[dict[str, Batch]], *, seed: int, micro_ids: list[int]
                ) -> tuple[list[list[dict[str, Any]]], dict[str, float]]:
        """The optimizer updates of one rollout batch (each a list of micro-batches for ``loss``) and
        statistics of the batch itself.

        Every method but PPO: one update over all the micro-batches, no statistics. PPO
        (ketchup-ppo, llmr-ppo): each micro-batch is prepared once (``prepare``: teacher returns,
        log pi_old and advantages); then, for each of rl.ppo_epochs passes, its rows are shuffled
        (a generator seeded by ``seed`` and the micro-batch's index in the run, ``micro_ids``, so a
        resumed run deals the same, and two processes deal as one accumulating their micro-batches)
        and dealt into rl.ppo_minibatches parts, and update j takes part j of every micro-batch. A part left
        empty (a micro-batch with fewer rows than minibatches) becomes one row of weight 0, so that
        every process runs as many backward passes per update; an update of such rows only, on every
        process, is skipped by the loop (``training._optimizer_step``).
        """
        if not self.ppo:
            return [micro], {}
        epochs, parts = self.rl["ppo_epochs"], self.rl["ppo_minibatches"]
        prepared, stats = [], {}
        rollouts = float(sum(mb["student"].target_ids.shape[0] for mb in micro))
        for mb in micro:  # each micro-batch's statistics weighed by its rollouts
            p, s = self.prepare(student, mb["student"])
            prepared.append(p)
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + v * (mb["student"].target_ids.shape[0] / rollouts)
        stats["rollouts"] = rollouts
        if epochs == 1 and parts == 1:
            return [[{PPO_ROWS: p} for p in prepared]], stats
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + m) for m in micro_ids]
        updates = []
        for _ in range(epochs):
            deals = [torch.randperm(p.batch.target_ids.shape[0], generator=g) for p, g in zip(prepared, generators)]
            for j in range(parts):
                update = []
                for p, order in zip(prepared, deals):
                    index = order[j::parts].sort().values.to(p.old_logp.device)  # rows keep their order
                    part = p.rows(index) if index.numel() else replace(p.rows(order[:1].to(index.device)), scale=0.0)
                    update.append({PPO_ROWS: part})
                updates.append(update)
        return updates, stats

    @torch.no_grad()
    def prepare(self, student, b: Batch) -> tuple[Prepared, dict[str, float]]:
        """PPO's once-per-rollout-batch work on one micro-batch of rollouts: the teacher's K-step returns,
        and from the student, run as the updates run it (its current mode: train, with dropout if it
        has any, so pi_old comes from one dropout mask), log pi_old of the tokens and the advantages
        exactly as the method without PPO takes them (``objectives.policy_advantages``)."""
        rl = self.rl
        returns, rollout_stats = self._teacher_returns(b)
        advantages, old_logp, stats = objectives.policy_advantages(
            target_logits(student, self.arch, b), b.target_ids, returns, b.target_mask,
            token_weight=rl["token_weight"], denom=rl["denom"], clip=rl["clip"],
            baseline=registry.get(self.method).baseline, baseline_scope=rl["baseline_scope"])
        return Prepared(b, old_logp, advantages), {**stats, **rollout_stats}

    def rollout(self, student, batch: Batch) -> dict[str, Batch]:
        """The batches the loss is taken on, decoded without gradient where the method samples."""
        if self.family == "supervised" or self.method == "kl":
            return {"data": batch}
        if self.family == "divergence":
            data, rest = split_for_two_sources(batch, self.student_share)
            out = {"data": data} if data is not None else {}
            if rest is not None:
                out["student"] = generate(student, self.arch, rest, self.tokenizer, self.max_new_tokens, sample=True,
                                          logits_processor=self.logits_processor, decoding=self.decoding)
            return out
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
        return sum(objectives.normalization(_rows(b).target_mask, self.normalize)[1] * _scale(b)
                   for b in batches.values())

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
        if PPO_ROWS in batches:
            return self._ppo(student, batches[PPO_ROWS])
        return self._policy_gradient(student, batches["student"])

    def _two_source_divergence(self, student, batches):
        """The divergence averaged over the teacher's outputs and the student's samples, weighted
        1 - share and share (js, tvd: 1/2 each; gkd: 1 - lambda and lambda; one source: all of it).

        Each source's per-token values are rescaled so that, after the loop divides by the total
        token count, each source contributes its weight times the mean over its own tokens. The two
        sources are disjoint parts of the micro-batch (``split_for_two_sources``).
        """
        parts, masks, stats = [], [], {}
        total = sum(float(b.target_mask.sum()) for b in batches.values())
        share = self.student_share
        for name, b in batches.items():
            values = DIVERGENCE_LOSSES[self.method](target_logits(student, self.arch, b), self._teacher_logits(b),
                                                    b.target_mask, self.divergence)
            n = float(b.target_mask.sum())
            stats[f"{self.method}_{name}"] = float(values.detach().sum()) / max(n, 1.0)
            weight = share if name == "student" else 1.0 - share
            weight = 1.0 if len(batches) == 1 else weight
            # js / tvd: total * 0.5 / n is the float of total / (2 n) they had before gkd: the same numbers
            parts.append(values * (total * weight / max(n, 1.0)))
            masks.append(b.target_mask)
        width = max(p.shape[1] for p in parts)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        return torch.cat([pad(p) for p in parts]), torch.cat([pad(m) for m in masks]), stats

    @torch.no_grad()
    def _teacher_returns(self, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The K-step returns G_t of the rollouts ``b`` from the teacher's logits, and the rollouts'
        mean one-step reward and length (logged)."""
        q, v = objectives.induced_values(self._teacher_logits(b), b.target_ids, b.target_mask, value=self.rl["value"])
        rewards = objectives.one_step_rewards(q, v, b.target_mask)
        stats = {"mean_reward": float(rewards.sum()) / max(float(b.target_mask.sum()), 1.0),
                 "rollout_length": float(b.target_mask.sum(1).mean())}
        return objectives.kstep_returns(q, v, b.target_mask, self.k), stats

    def _policy_gradient(self, student, b: Batch):
        rl = self.rl
        returns, rollout_stats = self._teacher_returns(b)
        per_token, stats = objectives.policy_gradient_loss(
            target_logits(student, self.arch, b), b.target_ids, returns, b.target_mask,
            token_weight=rl["token_weight"], denom=rl["denom"], clip=rl["clip"],
            baseline=registry.get(self.method).baseline, baseline_scope=rl["baseline_scope"],
            entropy_coef=rl["entropy_coef"])
        row_scale, _ = objectives.normalization(b.target_mask, self.normalize)
        return per_token * row_scale, b.target_mask, {**stats, **rollout_stats}

    def _ppo(self, student, p: Prepared):
        b = p.batch
        per_token, stats = objectives.ppo_clip_loss(
            target_logits(student, self.arch, b), b.target_ids, p.old_logp, p.advantages, b.target_mask,
            clip_eps=self.rl["ppo_clip"], entropy_coef=self.rl["entropy_coef"])
        row_scale, _ = objectives.normalization(b.target_mask, self.normalize)  # as _policy_gradient
        per_token = per_token * (row_scale * p.scale)
        return per_token, b.target_mask, stats
