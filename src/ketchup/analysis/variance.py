"""Trace of the covariance of a set of random vectors, from their Gram matrix, with a bootstrap CI.

The policy-gradient variance analysis (:mod:`ketchup.analysis.grad_variance`) draws m minibatch
gradients g_1..g_m (vectors of every student parameter) and reports

    tr Cov(g) estimated by  T = 1/(m-1) sum_i ||g_i - mean(g)||^2
                              = 1/(2 m (m-1)) sum_{i != j} ||g_i - g_j||^2,

the unbiased (ddof = 1) sample estimate, a sum of the per-coordinate variances. Only inner products
are needed, so everything here works on the m x m Gram matrix G_ij = <g_i, g_j>; the vectors
themselves may be exact or a random projection (:class:`CountSketch`) whose inner products are
unbiased estimates of the exact ones.

Confidence interval: percentile bootstrap over the m vectors, computed on the pair form of T. A
resample draws m indices with replacement (counts n_1..n_m) and takes the mean of
||g_a - g_b||^2 / 2 over the ordered pairs of draws a != b that hit *different* vectors:

    T* = n^T D n / (2 (m^2 - sum_i n_i^2)),   D_ij = ||g_i - g_j||^2.

Counting a vector paired with its own duplicate (distance 0) would bias every replicate low by a
factor (m-1)/m and, in high dimension, make the interval reflect the duplicate pattern instead of
the data; leaving those pairs out keeps each replicate an average of genuine pair distances. In
simulations with m = 20 Gaussian vectors the 95 % interval covers the true trace in about 93 % of
draws for isotropic covariances and 87-91 % for strongly anisotropic ones (few effective
dimensions: the estimate is then nearly a scaled chi-square with m-1 degrees of freedom, and no
bootstrap interval from 20 points reaches nominal coverage); see tests/test_analysis.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["gram_matrix", "pair_distances", "trace_covariance", "bootstrap_trace", "bootstrap_mean",
           "summarize", "CountSketch"]


def gram_matrix(vectors) -> np.ndarray:
    """G = V V^T in float64 for vectors as rows of V [m, d] (a numpy array or a torch tensor)."""
    if hasattr(vectors, "detach"):  # a torch tensor
        import torch

        v = vectors.detach().to(torch.float64)
        return (v @ v.T).cpu().numpy()
    v = np.asarray(vectors, dtype=np.float64)
    return v @ v.T


def _check_gram(gram: np.ndarray) -> np.ndarray:
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] < 2:
        raise ValueError(f"gram must be a square matrix of at least 2 x 2, got shape {g.shape}")
    return (g + g.T) / 2.0


def pair_distances(gram: np.ndarray) -> np.ndarray:
    """D_ij = ||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij (clipped at 0 against rounding)."""
    g = _check_gram(gram)
    diag = np.diag(g)
    d = diag[:, None] + diag[None, :] - 2.0 * g
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def trace_covariance(gram: np.ndarray) -> float:
    """Unbiased estimate of tr Cov: 1/(m-1) sum_i ||g_i - mean||^2 = (tr G - 1^T G 1 / m) / (m-1)."""
    g = _check_gram(gram)
    m = g.shape[0]
    return float((np.trace(g) - g.sum() / m) / (m - 1))


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_counts(m: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Counts [resamples, m]: how often each of m items is drawn in each resample (with replacement)."""
    idx = rng.integers(0, m, size=(resamples, m))
    counts = np.zeros((resamples, m), dtype=np.float64)
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    return counts


def bootstrap_trace(gram: np.ndarray, resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                    counts: np.ndarray | None = None) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap interval of :func:`trace_covariance` over the m vectors (see module doc).

    Returns (low, high, replicates). ``counts`` (from :func:`bootstrap_counts`) lets several
    statistics share one set of resamples.
    """
    d = pair_distances(gram)
    m = d.shape[0]
    n = bootstrap_counts(m, resamples, np.random.default_rng(seed)) if counts is None else counts
    pairs = m * m - (n ** 2).sum(1)  # ordered pairs of draws that hit different vectors
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.einsum("bi,ij,bj->b", n, d, n) / (2.0 * pairs)
    reps[pairs <= 0] = np.nan  # a resample that drew one vector m times says nothing
    lo, hi = _interval(reps, confidence)
    return lo, hi, reps


def bootstrap_mean(values: np.ndarray, counts: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` for resample ``counts`` [B, m]."""
    v = np.asarray(values, dtype=np.float64)
    return bootstrap_ratio(v, np.ones_like(v), counts, confidence)


def bootstrap_ratio(sums: np.ndarray, sizes: np.ndarray, counts: np.ndarray,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled mean sum_i s_i / sum_i n_i when whole clusters i
    (sum s_i over n_i observations) are resampled: replicate b is (counts_b . s) / (counts_b . n)."""
    s, n = np.asarray(sums, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    return _interval(counts @ s / (counts @ n), confidence)


def summarize(gram: np.ndarray, norms: np.ndarray | None = None, resamples: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> dict[str, Any]:
    """Every number the grad-variance table reports for one set of m vectors.

    - ``trace_cov`` with ``trace_ci_low`` / ``trace_ci_high``: tr Cov(g) and its bootstrap interval;
    - ``mean_sq_norm``: mean_i ||g_i||^2 (from the Gram diagonal);
    - ``relative_variance`` with ``relative_ci_low`` / ``relative_ci_high``: trace_cov / mean_sq_norm,
      the share of the gradient's second moment that is noise (scale-free: comparable across K even
      though K changes the size of the returns), its interval from the same resamples;
    - ``mean_grad_norm`` with CI: mean_i ||g_i|| (``norms`` if given, exact even when the Gram matrix
      comes from a projection; else from the Gram diagonal);
    - ``norm_of_mean``: ||mean_i g_i||;
    - ``signal_sq_norm``: sum_{i != j} <g_i, g_j> / (m (m-1)), an unbiased estimate of ||E g||^2.
    """
    g = _check_gram(gram)
    m = g.shape[0]
    counts = bootstrap_counts(m, resamples, np.random.default_rng(seed))
    lo, hi, reps = bootstrap_trace(g, resamples, seed, confidence, counts=counts)
    sq = np.diag(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel_lo, rel_hi = _interval(reps / (counts @ sq / m), confidence)
    norms = np.sqrt(np.maximum(sq, 0.0)) if norms is None else np.asarray(norms, dtype=np.float64)
    n_lo, n_hi = bootstrap_mean(norms, counts, confidence)
    trace = trace_covariance(g)
    mean_sq = float(sq.mean())
    return {
        "n_vectors": m,
        "trace_cov": trace,
        "trace_ci_low": lo,
        "trace_ci_high": hi,
        "mean_sq_norm": mean_sq,
        "relative_variance": trace / mean_sq if mean_sq > 0 else math.nan,
        "relative_ci_low": rel_lo,
        "relative_ci_high": rel_hi,
        "mean_grad_norm": float(norms.mean()),
        "grad_norm_ci_low": n_lo,
        "grad_norm_ci_high": n_hi,
        "norm_of_mean": float(math.sqrt(max(g.sum() / m ** 2, 0.0))),
        "signal_sq_norm": float((g.sum() - np.trace(g)) / (m * (m - 1))),
    }


class CountSketch:
    """A seeded random projection of a parameter-shaped gradient to ``dim`` numbers.

    Coordinate c of parameter tensor j goes to bucket h(c) with sign s(c), both drawn once from a
    CPU generator seeded with (seed, j): S g = sum_c s(c) g_c e_{h(c)}. Then E <S x, S y> = <x, y>
    (unbiased inner products, hence an unbiased trace estimate), with a relative error of about
    sqrt(2 / dim) on squared norms. Used when the exact m x P gradients would not fit in memory.
    """

    def __init__(self, shapes: list, dim: int, seed: int = 0, device="cpu"):
        import torch

        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.device = int(dim), torch.device(device)
        self.buckets, self.signs = [], []
        for j, shape in enumerate(shapes):
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + j)
            numel = int(math.prod(shape))
            self.buckets.append(torch.randint(0, self.dim, (numel,), generator=gen, dtype=torch.int64)
                                .to(torch.int32).to(self.device))
            self.signs.append((torch.randint(0, 2, (numel,), generator=gen, dtype=torch.int8) * 2 - 1)
                              .to(self.device))

    def project(self, tensors: list):
        """S g for a gradient given as one tensor (or None for no gradient) per parameter."""
        import torch

        out = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        for t, b, s in zip(tensors, self.buckets, self.signs):
            if t is None:
                continue
            out.index_add_(0, b.long(), t.detach().reshape(-1).to(torch.float64) * s.to(torch.float64))
        return out
