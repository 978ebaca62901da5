"""T5's span corruption (Raffel et al. 2020, section 3.1.4) on lists of token ids: the pretraining
objective of seq2seq students (``ketchup.pretraining``). Pure and seeded; numpy only.

    document   a b c d e f g h
    input      a b <extra_id_0> e f <extra_id_1> </s>
    target     <extra_id_0> c d <extra_id_1> g h </s>
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # numpy is imported where masks are drawn: the config checks at DAG build read only
    import numpy as np  # SENTINELS and noise_counts, and every Snakemake start would pay for it

# Sentinel tokens added to the tokenizers this project trains for seq2seq students that are
# pretrained (ketchup.tokenizer). At T5's noise density 0.15 and mean span length 3, a sequence of
# L tokens has round(round(0.15 L) / 3) spans: 32 cover sequences of up to 649 tokens (26 spans at
# 512, 5 at the default config's 96). A config that needs more is refused (ketchup.specs).
SENTINELS = 32


def sentinel_token(i: int) -> str:
    """The i-th sentinel, in T5's spelling (pretrained T5 tokenizers have 100 of them)."""
    return f"<extra_id_{i}>"


def noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of ``length`` tokens, as T5's ``random_spans_noise_mask``.

    With L = max(length, 2): noise = min(max(round(L * noise_density), 1), L - 1) and
    spans = min(max(round(noise / mean_span_length), 1), noise, L - noise): every span at least one
    token, with a non-noise span before it (T5 assumes this; the bound only acts at densities near 1
    or mean span lengths under 1). ``round`` rounds half to even, as TensorFlow's does. Both counts
    are non-decreasing in ``length``.
    """
    length = max(length, 2)
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_span_length), 1)
    return noise, min(spans, noise, length - noise)


def _random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths (each >= 1, summing to ``n_items``) of a uniformly random split of ``n_items`` ordered
    items into ``n_segments`` runs: a segment starts at a shuffled choice of n_segments - 1 of the
    n_items - 1 gaps (T5's ``_random_segmentation``)."""
    import numpy as np

    starts = np.concatenate([[0], rng.permutation(np.arange(n_items - 1) < n_segments - 1)])
    return np.bincount(np.cumsum(starts), minlength=n_segments)


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            seed: int | Sequence[int]) -> list[bool]:
    """Which of ``length`` tokens are noise: alternating non-noise and noise spans, starting with
    non-noise and ending with noise, with the counts of ``noise_counts`` and span lengths from two
    random segmentations (non-noise tokens into ``spans`` runs, noise tokens into ``spans`` runs).
    ``seed``: anything ``numpy.random.default_rng`` takes (e.g. ``(seed, example, epoch)``). A
    sequence shorter than 2 is masked as one of length 2 and cut (one token: no noise)."""
    if length == 0:
        return []
    import numpy as np

    noise, spans = noise_counts(length, noise_density, mean_span_length)
    rng = np.random.default_rng(seed)
    noise_lengths = _random_segmentation(noise, spans, rng)
    kept_lengths = _random_segmentation(max(length, 2) - noise, spans, rng)
    interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
    mask = np.repeat(np.tile([False, True], spans), interleaved)
    return mask[:length].tolist()


def _replace_spans(ids: Sequence[int], mask: Sequence[bool], sentinel_ids: Sequence[int]) -> list[int]:
    """``ids`` with each run of masked tokens replaced by the next sentinel (T5's
    ``noise_span_to_unique_sentinel``)."""
    out: list[int] = []
    used = 0
    for i, (token, masked) in enumerate(zip(ids, mask)):
        if not masked:
            out.append(token)
        elif i == 0 or not mask[i - 1]:
            if used == len(sentinel_ids):
                raise ValueError(f"span corruption needs more than the {len(sentinel_ids)} sentinel tokens given "
                                 f"for a sequence of {len(ids)} tokens")
            out.append(sentinel_ids[used])
            used += 1
    return out


def corrupt(ids: Sequence[int], mask: Sequence[bool], sentinel_ids: Sequence[int],
            eos_id: int) -> tuple[list[int], list[int]]:
    """(input, target) for a given noise ``mask``: input = ``ids`` with each noise span replaced by a
    sentinel, then EOS; target = ``ids`` with each non-noise span replaced by a sentinel, then EOS,
    i.e. each noise span's sentinel followed by the span when the mask starts with non-noise (as
    ``random_spans_noise_mask``'s do). The i-th span of each gets ``sentinel_ids[i]``; too few
    sentinels for the spans is a ValueError."""
    kept = [not m for m in mask]
    return (_replace_spans(ids, mask, sentinel_ids) + [eos_id],
            _replace_spans(ids, kept, sentinel_ids) + [eos_id])


def span_corrupt(ids: Sequence[int], *, noise_density: float, mean_span_length: float,
                 sentinel_ids: Sequence[int], eos_id: int, seed: int | Sequence[int]) -> tuple[list[int], list[int]]:
    """T5's span corruption of one sequence: ``corrupt(ids, random_spans_noise_mask(len(ids),
    noise_density, mean_span_length, seed), sentinel_ids, eos_id)``."""
    return corrupt(ids, random_spans_noise_mask(len(ids), noise_density, mean_span_length, seed), sentinel_ids,
                   eos_id)
