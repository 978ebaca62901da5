"""Distillation objectives as pure functions of logits, tokens and masks (docs/math.md).

Everything here is torch only: no models, no tokenizers, no I/O. Shapes follow one convention:

- logits ``[B, T, V]`` (batch, time, vocabulary), any floating dtype;
- tokens ``[B, T]`` integer ids;
- mask ``[B, T]``, 0/1 as bool, int or float; 1 marks a real target token. Positions where the mask
  is 0 are never read: their logits, tokens (e.g. ``-100`` or the pad id) and returns may hold
  anything, NaN included, and every per-token output is exactly 0 there (with zero gradient).

Numerics: inputs are cast to float32 (``.float()``), log-probabilities come from ``log_softmax``
and mixtures from ``logaddexp`` (a two-term log-sum-exp). Log-probabilities are floored at
``LOG_FLOOR`` (-1e30) so that ``-inf`` logits (masked vocabulary entries) give finite values and
finite gradients instead of ``0 * inf = NaN``; the floor never touches a probability that is
representable in float32 (those have log-probability above -104).

Per-token outputs are *not* averaged: the caller sums them and divides by the number of real target
tokens of the whole optimisation step, so that normalisation across gradient accumulation happens
outside these functions (docs/math.md, 'The policy-gradient loss': normalise by the number of real
target tokens of the whole optimizer step).
"""

from __future__ import annotations

import math
import operator

import torch

__all__ = [
    "DIVERGENCES",
    "LOG_FLOOR",
    "token_divergence",
    "generalized_jsd",
    "skew_kl",
    "skew_reverse_kl",
    "induced_values",
    "one_step_rewards",
    "kstep_returns",
    "policy_gradient_loss",
    "policy_advantages",
    "ppo_clip_loss",
    "NORMALIZATIONS",
    "normalization",
    "score_norms",
    "minvar_baseline",
    "cross_entropy",
]

DIVERGENCES = ("kl", "js", "tvd")
LOG_FLOOR = -1e30
_TOKEN_WEIGHTS = ("prob", "one")
_BASELINES = ("none", "mean", "minvar")
_BASELINE_SCOPES = ("sequence", "batch")
_VALUES = ("max", "expectation")
NORMALIZATIONS = ("sequence", "token")
# Work over the vocabulary is done on at most this many [rows x V] float32 elements at a time (64 MiB):
# at a real vocabulary (49,152 to 151,936 entries) the float32 intermediates of a whole batch
# (log-softmaxes, probabilities, mixtures, kept for the backward pass) dominate a training step's
# memory, so they are computed in chunks of real positions and, with gradient, recomputed chunk by
# chunk in the backward pass (activation checkpointing), as TRL's and Liger's chunked losses do.
CHUNK_ELEMENTS = 2**24


# ---------------------------------------------------------------------------------------------
# helpers: masks, selection of real positions, log-probabilities
# ---------------------------------------------------------------------------------------------


def _as_bool_mask(mask: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _lengths(mask: torch.Tensor) -> torch.Tensor:
    """Number of real tokens n per row of a right-padded mask (1s then 0s); ValueError otherwise."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [batch, time], got shape {tuple(mask.shape)}")
    m = _as_bool_mask(mask, mask.shape)
    n = m.sum(dim=1)
    positions = torch.arange(m.shape[1], device=m.device)
    if not torch.equal(m, positions[None, :] < n[:, None]):
        raise ValueError("mask must be right-padded: in every row, 1s (real tokens, EOS last) then 0s")
    return n


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place per-real-token ``values`` [N] back into a [B, T] float32 tensor, 0 elsewhere (keeps grad)."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=values.device)
    return out.index_put((mask,), values.float())


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log softmax over the last dimension in float32, floored at LOG_FLOOR (finite for -inf logits)."""
    return torch.log_softmax(logits.float(), dim=-1).clamp(min=LOG_FLOOR)


def _gather_tokens(values: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """values[i, tokens[i]] for per-vocabulary values [N, V] and ids [N]; ValueError on bad ids."""
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= values.shape[-1]):
        raise ValueError(
            f"token ids at real (mask=1) positions must lie in [0, {values.shape[-1]}); "
            f"got range [{int(tokens.min())}, {int(tokens.max())}]"
        )
    return values.gather(-1, tokens.long()[:, None]).squeeze(-1)


def _chunked_rows(fn, tensors: tuple[torch.Tensor, ...], mask: torch.Tensor, *args) -> torch.Tensor:
    """``fn(rows_1, rows_2, ..., *args)`` over the real (mask = 1) positions of [B, T, V_i] tensors,
    in chunks of at most ``CHUNK_ELEMENTS // V`` positions, concatenated ([N] or [N, k]).

    Each chunk selects its rows inside ``fn``'s call, so only one chunk's [rows, V] intermediates
    exist at a time; with gradient and more than one chunk, each chunk is checkpointed (its
    intermediates are recomputed in the backward pass instead of kept). One chunk: a plain call.
    """
    # (batch, time) pairs, not a flattened view: logits sliced out of a longer sequence are not
    # contiguous, and reshaping them would copy the whole tensor.
    b_idx, t_idx = mask.nonzero(as_tuple=True)
    width = max(t.shape[-1] for t in tensors)
    step = max(1, CHUNK_ELEMENTS // max(width, 1))

    def rows(bi, ti, *ts):
        return fn(*(t[bi, ti] for t in ts), *args)

    if b_idx.numel() <= step:
        return rows(b_idx, t_idx, *tensors)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    parts = []
    for start in range(0, b_idx.numel(), step):
        bi, ti = b_idx[start: start + step], t_idx[start: start + step]
        parts.append(torch.utils.checkpoint.checkpoint(rows, bi, ti, *tensors, use_reentrant=False) if grad
                     else rows(bi, ti, *tensors))
    return torch.cat(parts)


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"{name} must be [batch, time, vocab], got shape {tuple(logits.shape)}")


def _token_mask(student_logits: torch.Tensor, mask: torch.Tensor, **per_token: torch.Tensor) -> torch.Tensor:
    """The boolean mask of real tokens, after checking the student's logits and that every
    ``per_token`` tensor is [batch, time] like the mask."""
    _check_logits("student_logits", student_logits)
    m = _as_bool_mask(mask, student_logits.shape[:2])
    for name, t in per_token.items():
        if tuple(t.shape) != tuple(m.shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(m.shape)}")
    return m


# ---------------------------------------------------------------------------------------------
# token-level divergences (kl / js / tvd baselines)
# ---------------------------------------------------------------------------------------------


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Per-token divergence between teacher p = softmax(teacher_logits) and student q = softmax(student_logits).

    Returns a float32 tensor [B, T], 0 where ``mask`` is 0. With log p, log q from ``log_softmax``:

    - ``"kl"``:  KL(p || q) = sum_v p_v (log p_v - log q_v)
    - ``"js"``:  JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m),  m = (p + q) / 2 (probabilities are
      mixed, not log-probabilities), log m = logsumexp(log p, log q) - log 2; 0 <= JS <= ln 2
    - ``"tvd"``: TV(p, q) = 1/2 sum_v |p_v - q_v|; 0 <= TV <= 1

    Vocabulary sizes may differ (padded vocabularies, e.g. 32100 vs 32128 rows in the output layer):
    both distributions are then taken over the first min(V_s, V_t) entries of each (softmax over that
    slice), i.e. the extra padded entries of the larger vocabulary are dropped.

    Gradient: nothing is detached here. The caller passes teacher logits computed under
    ``torch.no_grad()`` (or ``.detach()``-ed), so that the gradient flows into the student only.

    ``-inf`` logits are allowed (masked vocabulary entries) and give finite values: log-probabilities
    are floored at ``LOG_FLOOR``. The one case whose true value is infinite, KL with teacher mass on
    an entry where the student's logit is ``-inf``, therefore gives a huge finite number (~1e30 * p).
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence kind {kind!r}; allowed: {', '.join(DIVERGENCES)}")
    return _pair_divergence(_divergence_rows, student_logits, teacher_logits, mask, kind)


def _pair_divergence(rows_fn, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                     *args) -> torch.Tensor:
    """``rows_fn(student_rows, teacher_rows, *args, vocab)`` over the real positions, as a [B, T] float32
    tensor (0 on padding), after checking the shapes; vocab = min(V_s, V_t) (token_divergence)."""
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(
            f"student and teacher logits disagree on [batch, time]: "
            f"{tuple(student_logits.shape[:2])} vs {tuple(teacher_logits.shape[:2])}"
        )
    m = _as_bool_mask(mask, student_logits.shape[:2])
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return _scatter(_chunked_rows(rows_fn, (student_logits, teacher_logits), m, *args, vocab), m)


def _divergence_rows(student_rows: torch.Tensor, teacher_rows: torch.Tensor, kind: str, vocab: int) -> torch.Tensor:
    """token_divergence on real positions only: [N, V] logits -> [N]."""
    log_q = _log_probs(student_rows[:, :vocab])
    log_p = _log_probs(teacher_rows[:, :vocab])
    p, q = log_p.exp(), log_q.exp()
    if kind == "kl":
        return (p * (log_p - log_q)).sum(-1)
    if kind == "js":
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        return 0.5 * (p * (log_p - log_m)).sum(-1) + 0.5 * (q * (log_q - log_m)).sum(-1)
    return 0.5 * (p - q).abs().sum(-1)  # "tvd"


def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_v a_v (log a_v - log b_v) per row, from log-probabilities [N, V] -> [N]."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight: float) -> torch.Tensor:
    """log(w a + (1 - w) b) for 0 < w < 1: probabilities mixed, by log-sum-exp of the weighted logs."""
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log1p(-weight))


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence per token (Agarwal et al., ICLR 2024), float32 [B, T],
    0 on padding. With teacher p and student q (softmax of the logits):

        M_beta = beta p + (1 - beta) q                                   (probabilities mixed)
        JSD(beta)(p, q) = beta KL(p || M_beta) + (1 - beta) KL(q || M_beta)      0 < beta < 1
        JSD(0) = KL(p || q)   (forward KL),   JSD(1) = KL(q || p)   (reverse KL)

    The end points follow TRL's ``generalized_jsd_loss`` (the mixture form itself is 0 at both ends;
    divided by beta, resp. 1 - beta, it tends to these KLs). beta = 1/2 is ``token_divergence``'s
    ``"js"`` (to rounding: log M is taken as logsumexp(log p + log beta, log q + log(1 - beta))).
    Float32, log-sum-exp, the vocabulary and -inf conventions of :func:`token_divergence`; the
    gradient reaches the student through q and through M.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    return _pair_divergence(_generalized_jsd_rows, student_logits, teacher_logits, mask, float(beta))


def _generalized_jsd_rows(student_rows: torch.Tensor, teacher_rows: torch.Tensor, beta: float,
                          vocab: int) -> torch.Tensor:
    log_q = _log_probs(student_rows[:, :vocab])
    log_p = _log_probs(teacher_rows[:, :vocab])
    if beta == 0.0:
        return _kl_rows(log_p, log_q)
    if beta == 1.0:
        return _kl_rows(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl_rows(log_p, log_m) + (1.0 - beta) * _kl_rows(log_q, log_m)


def skew_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            alpha: float) -> torch.Tensor:
    """DistiLLM's skew KL per token (Ko et al., ICML 2024), float32 [B, T], 0 on padding:

        SKL_alpha(p, q) = KL(p || alpha p + (1 - alpha) q),     0 < alpha < 1

    teacher p, student q; alpha -> 0 is KL(p || q). DistiLLM's code (``skewed_forward_kl``) drops the
    constant sum_v p_v log p_v (the same gradient, a value shifted by the teacher's entropy); this is
    the divergence itself, >= 0. Conventions of :func:`generalized_jsd`.
    """
    _check_skew(alpha)
    return _pair_divergence(_skew_rows, student_logits, teacher_logits, mask, float(alpha), False)


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                    alpha: float) -> torch.Tensor:
    """DistiLLM's skew reverse KL per token (Ko et al., ICML 2024), float32 [B, T], 0 on padding:

        SRKL_alpha(q, p) = KL(q || alpha q + (1 - alpha) p),    0 < alpha < 1

    student q, teacher p; alpha -> 0 is KL(q || p) (DistiLLM's ``skewed_reverse_kl``, the same value).
    Conventions of :func:`generalized_jsd`.
    """
    _check_skew(alpha)
    return _pair_divergence(_skew_rows, student_logits, teacher_logits, mask, float(alpha), True)


def _check_skew(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _skew_rows(student_rows: torch.Tensor, teacher_rows: torch.Tensor, alpha: float, reverse: bool,
               vocab: int) -> torch.Tensor:
    log_q = _log_probs(student_rows[:, :vocab])
    log_p = _log_probs(teacher_rows[:, :vocab])
    first, second = (log_q, log_p) if reverse else (log_p, log_q)
    return _kl_rows(first, _log_mixture(first, second, alpha))


# ---------------------------------------------------------------------------------------------
# teacher logits as Q-values, induced rewards, K-step returns (LLMR / KETCHUP)
# ---------------------------------------------------------------------------------------------


def induced_values(
    teacher_logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    value: str = "max",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits read as Q-values (Hao et al. 2022): returns (q, v), each float32 [B, T], detached.

    - Q_t(a) = z_t(a) - mean_a' z_t(a')           (logits centred over the vocabulary)
    - q_t    = Q_t(tokens_t)
    - v_t    = max_a Q_t(a)                        (``value="max"``, default)
      v_t    = sum_a softmax(Q_t)_a Q_t(a)          (``value="expectation"``)

    Both are 0 where ``mask`` is 0; tokens there are never read (pad id or -100 are fine).
    Computed under ``torch.no_grad()``: rewards carry no gradient.

    ``-inf`` teacher logits (masked vocabulary entries) are treated as absent: they are left out of
    the centring mean, the max and the expectation; a token whose teacher logit is ``-inf`` gets
    q_t = min over the finite entries of Q_t (instead of -inf) so that returns stay finite. A NaN or
    ``+inf`` logit at a real position (a teacher overflowing, e.g. T5 in float16) raises ValueError
    naming it, instead of becoming NaN rewards; padding positions are never read.
    """
    if value not in _VALUES:
        raise ValueError(f"unknown value {value!r}; allowed: {', '.join(_VALUES)}")
    _check_logits("teacher_logits", teacher_logits)
    m = _as_bool_mask(mask, teacher_logits.shape[:2])
    if tuple(tokens.shape) != tuple(m.shape):
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected {tuple(m.shape)}")
    with torch.no_grad():
        # The token ids ride along as a [B, T, 1] float tensor so that they are chunked with the logits.
        ids = tokens.masked_fill(~m, 0).to(torch.float64)[..., None]
        qv = _chunked_rows(_induced_rows, (teacher_logits.detach(), ids), m, value)
        return _scatter(qv[:, 0], m), _scatter(qv[:, 1], m)


def _induced_rows(logit_rows: torch.Tensor, id_rows: torch.Tensor, value: str) -> torch.Tensor:
    """induced_values on real positions only: [N, V] logits, [N, 1] ids -> [N, 2] (q, v)."""
    z = logit_rows.float()
    finite = torch.isfinite(z)
    if not bool(finite.all()) and bool((~finite & (z != -math.inf)).any()):
        nan, pos_inf = int(z.isnan().any(-1).sum()), int(z.isposinf().any(-1).sum())
        raise ValueError(f"teacher logits hold NaN ({nan} positions) or +inf ({pos_inf} positions) among the "
                         "real target positions, which would make the rewards NaN: the teacher overflowed "
                         "(a T5 teacher in float16 does; run it in float32 or bfloat16, teacher.dtype)")
    centre = torch.where(finite, z, 0.0).sum(-1) / finite.sum(-1).clamp(min=1)
    big_q = z - centre[:, None]
    q_min = torch.where(finite, big_q, math.inf).amin(-1)
    q = torch.maximum(_gather_tokens(big_q, id_rows[:, 0].long()), q_min)
    if value == "max":
        v = big_q.amax(-1)
    else:
        v = (torch.softmax(big_q, -1) * torch.where(finite, big_q, 0.0)).sum(-1)
    return torch.stack([q, v], -1)


def _kstep_rewards(q: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, k: int):
    """K-step rewards R_t = q_t - V_{min(t+K, n-1)} (t < n-1), R_{n-1} = q_{n-1}, 0 on padding.

    Returns (R [B, T], is_last [B, T] bool marking t = n-1, n [B]).
    """
    n = _lengths(mask)
    if q.shape != mask.shape or v.shape != mask.shape:
        raise ValueError(
            f"q, v and mask must share one [batch, time] shape: "
            f"{tuple(q.shape)}, {tuple(v.shape)}, {tuple(mask.shape)}"
        )
    q, v = q.detach().float(), v.detach().float()
    real = _as_bool_mask(mask, mask.shape)
    positions = torch.arange(q.shape[1], device=q.device)[None, :]  # [1, T]
    last = (n - 1).clamp(min=0)[:, None]  # [B, 1]
    target = torch.minimum(positions + k, last)  # min(t+K, n-1), [B, T]
    is_last = positions == (n - 1)[:, None]
    rewards = torch.where(is_last, q, q - v.gather(1, target))
    return torch.where(real, rewards, 0.0), is_last, n


def one_step_rewards(q: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One-step induced rewards (LLMR), float32 [B, T].

    r_t = q_t - V_{t+1} for t < n-1,  r_{n-1} = q_{n-1},  0 on padding,

    where n is the number of real tokens of the row (``mask`` right-padded, its last real token EOS).
    This is the K = 1 case of the K-step reward of :func:`kstep_returns`.
    """
    return _kstep_rewards(q, v, mask, 1)[0]


def kstep_returns(q: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """KETCHUP's K-step returns, float32 [B, T], 0 on padding. Per row with n real tokens:

        R_t     = q_t - V_{min(t+K, n-1)}             for t < n-1
        G_{n-1} = q_{n-1}
        G_t     = R_t + G_{min(t+K, n-1)}             for t < n-1

    Unrolled: G_t = sum_{i >= 0, t+iK < n-1} R_{t+iK} + q_{n-1}; e.g. n = 8, K = 2:
    G_0 = q0 + q2 + q4 + q6 + q7 - V2 - V4 - V6 - V7. K = 1 is the reward-to-go of
    :func:`one_step_rewards` (LLMR); K >= n-1 gives G_t = q_t - V_{n-1} + q_{n-1}.

    q and v are read as data (detached, cast to float32); the mask must be right-padded
    (ValueError otherwise, e.g. for a left-padded mask).

    Vectorised over the batch and time: the unrolled sum is a reverse cumulative sum with stride K
    (time reshaped to [T/K, K]), so there is no Python loop over rows or positions. ``k`` must be
    an int >= 1 (ValueError otherwise).
    """
    if isinstance(k, bool):
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an int >= 1, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be an int >= 1, got {k}")
    rewards, is_last, n = _kstep_rewards(q, v, mask, k)
    batch, time = rewards.shape
    body = torch.where(is_last, 0.0, rewards)  # R_t for t < n-1, 0 elsewhere
    stride = min(k, max(time, 1))  # any K >= T gives the same returns; keeps the padding small
    padded_time = -(-time // stride) * stride
    body = torch.nn.functional.pad(body, (0, padded_time - time)).view(batch, padded_time // stride, stride)
    strided_suffix = body.flip(1).cumsum(1).flip(1).reshape(batch, padded_time)[:, :time]
    final = (rewards * is_last).sum(1, keepdim=True)  # q_{n-1} (0 for an empty row)
    real = _as_bool_mask(mask, mask.shape)
    return torch.where(real, strided_suffix + final, 0.0)


# ---------------------------------------------------------------------------------------------
# losses on student logits
# ---------------------------------------------------------------------------------------------


def _score_norms(logp_all: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """c = ||e_y - pi||^2 = 1 - 2 pi(y) + sum_a pi(a)^2 per row of log-probabilities [N, V] (detached)."""
    with torch.no_grad():
        pi = logp_all.detach().exp()
        return (1.0 - 2.0 * _gather_tokens(pi, tokens) + (pi * pi).sum(-1)).clamp(min=0.0)


def _baseline(kind: str, adv: torch.Tensor, scores: torch.Tensor | None, rows: torch.Tensor, n_rows: int,
              scope: str) -> torch.Tensor:
    """The baseline b for each real token [N] (detached): a (weighted) mean of ``adv`` per row or per batch.

    mean: b = sum_t A_t / n;  minvar: b = sum_t c_t A_t / sum_t c_t (the plain mean where sum_t c_t = 0:
    then every score function is 0 and no baseline changes the gradient).
    """
    with torch.no_grad():
        weights = torch.ones_like(adv) if kind == "mean" else scores
        group = rows if scope == "sequence" else torch.zeros_like(rows)
        size = n_rows if scope == "sequence" else 1
        zeros = torch.zeros(size, dtype=adv.dtype, device=adv.device)
        num = zeros.index_add(0, group, weights * adv)
        den = zeros.index_add(0, group, weights)
        count = zeros.index_add(0, group, torch.ones_like(adv))
        mean = zeros.index_add(0, group, adv) / count.clamp(min=1.0)
        b = torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), mean)
        return b[group]


def score_norms(student_logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared norm of the score function with respect to the logits, float32 [B, T], 0 on padding:

        c_t = || d log pi(y_t | s_t) / d z_t ||^2 = || e_{y_t} - pi_t ||^2 = 1 - 2 pi(y_t) + sum_a pi_t(a)^2

    with pi_t = softmax(z_t). Detached (a weight, not a loss).
    """
    _check_logits("student_logits", student_logits)
    m = _as_bool_mask(mask, student_logits.shape[:2])
    if tuple(tokens.shape) != tuple(m.shape):
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected {tuple(m.shape)}")
    return _scatter(_score_norms(_log_probs(student_logits[m]), tokens[m]), m)


def minvar_baseline(
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    scope: str = "sequence",
) -> torch.Tensor:
    """The variance-minimising constant baseline, float32 [B, T] (its value at every real token; 0 on padding).

    Per sequence (``scope="sequence"``, as the reference trained one sequence a batch) or over the
    real tokens of the whole batch (``"batch"``):

        b = sum_t c_t A_t / sum_t c_t,      c_t = ||e_{y_t} - pi_t||^2 = 1 - 2 pi(y_t) + sum_a pi_t(a)^2

    The gradient of sum_t log pi(y_t) (A_t - b) with respect to the logits z_t is (e_{y_t} - pi_t)(A_t - b)
    at each position, so its squared norm is sum_t c_t (A_t - b)^2, minimised over a constant b at the
    c-weighted mean above (exact per token: no approximation of the score's norm). Where sum_t c_t = 0
    (every pi(y_t) = 1) the plain mean of A is returned; the gradient is 0 there for any b.
    ``advantages`` A_t are the clipped, weighted returns; b carries no gradient (computed detached).
    Rows of a right-padded batch give the same b as the unpadded rows alone.
    """
    if scope not in _BASELINE_SCOPES:
        raise ValueError(f"unknown baseline scope {scope!r}; allowed: {', '.join(_BASELINE_SCOPES)}")
    m = _token_mask(student_logits, mask, tokens=tokens, advantages=advantages)
    scores = _score_norms(_log_probs(student_logits[m]), tokens[m])
    rows = m.nonzero()[:, 0]
    return _scatter(_baseline("minvar", advantages[m].detach().float(), scores, rows, m.shape[0], scope), m)


def _check_pg_settings(token_weight: str, denom: float, clip: float | None, baseline: str, baseline_scope: str) -> None:
    if token_weight not in _TOKEN_WEIGHTS:
        raise ValueError(f"unknown token_weight {token_weight!r}; allowed: {', '.join(_TOKEN_WEIGHTS)}")
    if baseline not in _BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; allowed: {', '.join(_BASELINES)}")
    if baseline_scope not in _BASELINE_SCOPES:
        raise ValueError(f"unknown baseline_scope {baseline_scope!r}; allowed: {', '.join(_BASELINE_SCOPES)}")
    if not denom > 0:
        raise ValueError(f"denom must be > 0, got {denom}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")


def _advantages(logp: torch.Tensor, logp_all: torch.Tensor, token_ids: torch.Tensor, g: torch.Tensor,
                m: torch.Tensor, *, token_weight: str, denom: float, clip: float | None, baseline: str,
                baseline_scope: str) -> torch.Tensor:
    """A_t of :func:`policy_gradient_loss` on the real tokens [N] (detached), from the policy's
    log-probabilities of the tokens ``logp`` [N] and of the vocabulary ``logp_all`` [N, V]."""
    with torch.no_grad():
        w = logp.exp() if token_weight == "prob" else torch.ones_like(logp)
        adv = w * g / denom
        if clip is not None:
            adv = adv.clamp(-clip, clip)
        if baseline != "none" and adv.numel():
            scores = _score_norms(logp_all, token_ids) if baseline == "minvar" else None
            adv = adv - _baseline(baseline, adv, scores, m.nonzero()[:, 0], m.shape[0], baseline_scope)
    return adv


def _advantage_stats(g: torch.Tensor, adv: torch.Tensor, entropy: torch.Tensor) -> dict[str, float]:
    """Returns, advantages (population std) and entropy over the real tokens; 0.0 when there is none."""
    count = adv.numel()
    return {
        "mean_return": float(g.mean()) if count else 0.0,
        "mean_advantage": float(adv.mean()) if count else 0.0,
        "advantage_std": float(adv.std(unbiased=False)) if count else 0.0,
        "mean_entropy": float(entropy.detach().mean()) if count else 0.0,
    }


def policy_gradient_loss(
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    token_weight: str = "prob",
    denom: float = 1.0,
    clip: float | None = 50.0,
    baseline: str = "none",
    baseline_scope: str = "sequence",
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE surrogate on student outputs; returns (per_token_loss float32 [B, T], stats).

        logp_t = log pi_theta(y_t | s_t) = log_softmax(student_logits_t)[tokens_t]
        w_t    = stopgrad(exp(logp_t))   (``token_weight="prob"``, the reference)  or  1  (``"one"``)
        A_t    = clip(w_t * G_t / denom, -clip, clip)
        A_t   -= b, after clipping:
                 b = mean_t A_t                                 (``baseline="mean"``)
                 b = sum_t c_t A_t / sum_t c_t, c_t = ||e_{y_t} - pi_t||^2   (``"minvar"``, :func:`minvar_baseline`)
                 over each sequence's real tokens (``baseline_scope="sequence"``, the reference's batch of
                 one) or over all real tokens of the batch (``"batch"``)
        loss_t = -logp_t * stopgrad(A_t) - entropy_coef * H_t,    H_t = -sum_a pi(a|s_t) log pi(a|s_t)

    ``returns`` are G_t (e.g. from :func:`kstep_returns`); no gradient flows into them or into A.
    The entropy bonus keeps its gradient. per_token_loss is 0 on padding. The caller sums it and
    divides by the number of real tokens (across gradient accumulation, outside this function):
    ``loss = -(1/#tokens) sum_t logp_t A_t``. ``clip=None`` disables clipping.

    stats (python floats, over real tokens): mean_return, mean_advantage, advantage_std (population
    std), mean_entropy; all 0.0 when there is no real token.
    """
    _check_pg_settings(token_weight, denom, clip, baseline, baseline_scope)
    m = _token_mask(student_logits, mask, tokens=tokens, returns=returns)

    logp_all = _log_probs(student_logits[m])  # [N, V]
    logp = _gather_tokens(logp_all, tokens[m])  # [N]
    g = returns[m].detach().float()
    adv = _advantages(logp, logp_all, tokens[m], g, m, token_weight=token_weight, denom=denom, clip=clip,
                      baseline=baseline, baseline_scope=baseline_scope)
    entropy_grad = entropy_coef != 0.0
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = -logp * adv
    if entropy_grad:
        values = values - entropy_coef * entropy

    return _scatter(values, m), _advantage_stats(g, adv, entropy)


def policy_advantages(
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    token_weight: str = "prob",
    denom: float = 1.0,
    clip: float | None = 50.0,
    baseline: str = "none",
    baseline_scope: str = "sequence",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The advantages A_t and log-probabilities logp_t of :func:`policy_gradient_loss`, taken once from
    the policy that made the rollouts (pi_old); returns (A [B, T], logp [B, T], stats), float32, detached,
    0 on padding:

        logp_t = log pi_old(y_t | s_t);   A_t = clip(w_t * G_t / denom, -clip, clip) - b

    with w_t = pi_old(y_t) (``token_weight="prob"``) or 1, and b the baseline of ``baseline`` over
    ``baseline_scope`` (minvar: with pi_old's score norms), exactly as :func:`policy_gradient_loss`
    computes them from the logits it is given. stats: mean_return, mean_advantage, advantage_std,
    mean_entropy (of pi_old), over real tokens.
    """
    _check_pg_settings(token_weight, denom, clip, baseline, baseline_scope)
    m = _token_mask(student_logits, mask, tokens=tokens, returns=returns)
    with torch.no_grad():
        logp_all = _log_probs(student_logits.detach()[m])
        logp = _gather_tokens(logp_all, tokens[m])
        g = returns[m].detach().float()
        adv = _advantages(logp, logp_all, tokens[m], g, m, token_weight=token_weight, denom=denom, clip=clip,
                          baseline=baseline, baseline_scope=baseline_scope)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return _scatter(adv, m), _scatter(logp, m), _advantage_stats(g, adv, entropy)


def ppo_clip_loss(
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017) per token; returns (per_token_loss float32 [B, T], stats):

        r_t    = pi_theta(y_t | s_t) / pi_old(y_t | s_t) = exp(logp_t - old_logp_t)
        loss_t = -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) - entropy_coef * H_t

    ``old_logp`` (log pi_old of the tokens) and ``advantages`` A_t come from :func:`policy_advantages`
    on the policy that made the rollouts and are read as data (no gradient flows into them). Where
    r_t lies outside [1 - eps, 1 + eps] on the side the min selects (A_t > 0 and r_t > 1 + eps, or
    A_t < 0 and r_t < 1 - eps) the token's gradient is 0. At r_t = 1 the gradient is -A_t grad logp_t,
    the REINFORCE gradient of :func:`policy_gradient_loss`. The caller sums per_token_loss and divides
    by the number of real tokens, as for every loss here; it is 0 on padding.

    stats (over real tokens; 0.0 when there is none): clip_fraction, the share of tokens with
    |r_t - 1| > eps (the usual PPO diagnostic); approx_kl, the estimate mean_t[(r_t - 1) - log r_t] >= 0
    of KL(pi_old || pi_theta) (Schulman's k3); mean_ratio; mean_entropy (of pi_theta).
    """
    if not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must lie in (0, 1), got {clip_eps}")
    m = _token_mask(student_logits, mask, tokens=tokens, old_logp=old_logp, advantages=advantages)
    logp_all = _log_probs(student_logits[m])  # [N, V]
    logp = _gather_tokens(logp_all, tokens[m])  # [N]
    old = old_logp[m].detach().float()
    adv = advantages[m].detach().float()
    log_ratio = logp - old
    ratio = log_ratio.exp()
    values = -torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    entropy_grad = entropy_coef != 0.0
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    if entropy_grad:
        values = values - entropy_coef * entropy
    count = adv.numel()
    with torch.no_grad():
        r, lr = ratio.detach(), log_ratio.detach()
        stats = {
            "clip_fraction": float(((r - 1.0).abs() > clip_eps).float().mean()) if count else 0.0,
            "approx_kl": float(((r - 1.0) - lr).mean()) if count else 0.0,
            "mean_ratio": float(r.mean()) if count else 0.0,
            "mean_entropy": float(entropy.detach().mean()) if count else 0.0,
        }
    return _scatter(values, m), stats


def normalization(mask: torch.Tensor, normalize: str = "token") -> tuple[torch.Tensor, float]:
    """How a micro-batch's per-token loss enters the step's average: (row_scale [B, 1], units).

    The training loop computes, over every micro-batch of an optimizer step (and every process),

        loss = sum_i row_scale_i * sum_t loss_it / sum units

        token:    row_scale_i = 1,      units = sum_i n_i    ->  loss = (1 / #tokens) sum_i sum_t loss_it
        sequence: row_scale_i = 1 / n_i, units = #sequences  ->  loss = (1 / #seqs) sum_i (1 / n_i) sum_t loss_it

    with n_i the real tokens of row i. ``sequence`` is the reference's RL loss (each sequence's summed
    loss over its own token count, averaged over the 8 accumulated sequences of an update): every
    sequence weighs the same whatever its length, and how the step's sequences are split into
    micro-batches does not change it. Rows without a real token count for nothing.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; allowed: {', '.join(NORMALIZATIONS)}")
    lengths = _as_bool_mask(mask, mask.shape).sum(1, keepdim=True).float()
    if normalize == "token":
        return torch.ones_like(lengths), float(lengths.sum())
    return torch.where(lengths > 0, 1.0 / lengths.clamp(min=1.0), 0.0), float((lengths > 0).sum())


def cross_entropy(student_logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood (sft, seqkd), float32 [B, T], 0 on padding:

        nll_t = -log softmax(student_logits_t)[tokens_t]

    Tokens at padded positions are never read (pad id or -100 are fine). The caller sums and divides
    by the number of real tokens.
    """
    _check_logits("student_logits", student_logits)
    m = _as_bool_mask(mask, student_logits.shape[:2])
    if tuple(tokens.shape) != tuple(m.shape):
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected {tuple(m.shape)}")
    ids = tokens.masked_fill(~m, 0).to(torch.float64)[..., None]  # chunked with the logits (_chunked_rows)
    return _scatter(_chunked_rows(_nll_rows, (student_logits, ids), m), m)


def _nll_rows(logit_rows: torch.Tensor, id_rows: torch.Tensor) -> torch.Tensor:
    return -_gather_tokens(_log_probs(logit_rows), id_rows[:, 0].long())
