"""Task-adaptive pretraining data (``ketchup.stages.pretrain``): the task's training text as
documents, as supervised pairs for the one training loop, and the held-out loss that picks the
checkpoint.

Every source and every target is a document of its own (never the source -> target pairing).
Seq2seq: T5's span corruption (``ketchup.span_corruption``), drawn afresh per (document, epoch)
from the seed. Decoder-only: next-token prediction, the document the continuation of an empty
prompt.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ketchup.batching import collate
from ketchup.config import ConfigError
from ketchup.methods import Objective
from ketchup.span_corruption import sentinel_token, span_corrupt
from ketchup.training import TokenData, TrainData

TRAIN_STREAM, DEV_STREAM = 0, 1  # the two seed streams of the corruption: training and held-out documents


def documents(examples: list[dict[str, str]]) -> list[str]:
    """Each example's source, then its target, each a document of its own."""
    return [text for ex in examples for text in (ex["source"], ex["target"])]


def hold_out(examples: list[dict[str, Any]], n_dev: int, seed: int, where: str) -> tuple[list, list]:
    """(kept, held out): a seeded choice of ``n_dev`` examples held out, both in their original order.
    Holding out whole examples keeps a held-out target from being trained on as its source's pair
    would (a translation, a summary). Leaving none to train on is an error naming ``where``."""
    if n_dev >= len(examples):
        raise ConfigError(f"config key '{where}': {n_dev} held-out examples leave none of the {len(examples)} "
                          "training examples to pretrain on")
    held = set(np.random.default_rng(seed).permutation(len(examples))[:n_dev].tolist())
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])


def sentinel_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's sentinels ``<extra_id_0>``, ``<extra_id_1>``, ... (those it has in a row)."""
    ids: list[int] = []
    while (i := tokenizer.convert_tokens_to_ids(sentinel_token(len(ids)))) not in (None, tokenizer.unk_token_id):
        ids.append(i)
    return ids


def span_corruption_data(tokenizer, docs: list[str], max_length: int, noise_density: float,
                         mean_span_length: float, seed: int, stream: int) -> TokenData:
    """Each document tokenised once, cut to ``max_length - 1`` tokens (input and target each end with
    EOS), and corrupted per (document, epoch) with the seed ``(seed, stream, document, epoch)``."""
    ids = [x[: max_length - 1] for x in tokenizer(docs, add_special_tokens=False).input_ids]
    sentinels, eos = sentinel_ids(tokenizer), tokenizer.eos_token_id

    def pair(i: int, epoch: int) -> tuple[list[int], list[int]]:
        return span_corrupt(ids[i], noise_density=noise_density, mean_span_length=mean_span_length,
                            sentinel_ids=sentinels, eos_id=eos, seed=(seed, stream, i, epoch))

    return TokenData(len(ids), pair)


def next_token_data(docs: list[str]) -> TrainData:
    """Each document the continuation of an empty prompt (decoder-only; ``batching.encode_sources``
    gives the prompt its separator or the chat template's turn, from which the first token is scored)."""
    return TrainData([""] * len(docs), list(docs))


def pairs(tokenizer, arch: str, docs: list[str], settings: dict[str, Any], seed: int, stream: int,
          max_source_length: int, max_length: int) -> TokenData:
    """The documents as the training loop's supervised pairs: span-corrupted (seq2seq, ``settings``'
    noise_density and mean_span_length) or each the continuation of an empty prompt (decoder-only);
    a document is cut to ``max_length`` tokens, EOS included."""
    if arch == "seq2seq":
        return span_corruption_data(tokenizer, docs, max_length, settings["noise_density"],
                                    settings["mean_span_length"], seed, stream)
    return next_token_data(docs).encode(tokenizer, arch, max_source_length, max_length)


def heldout_loss(objective: Objective, data: TokenData, pad_id: int, arch: str,
                 batch_size: int) -> Callable[[Any], float]:
    """A function model -> -(sum of the objective's per-token losses / real target tokens) over
    ``data`` (epoch 0, the same pairs at every evaluation), in eval mode without gradient. Negated:
    the training loop keeps the highest dev metric, here the lowest held-out loss."""
    pairs = [data.pair(i, 0) for i in range(data.n)]

    @torch.no_grad()
    def evaluate(model) -> float:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, tokens = 0.0, 0.0
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start: start + batch_size]
            batch = collate([s for s, _ in chunk], [t for _, t in chunk], pad_id, arch).to(device)
            per_token, mask, _ = objective.loss(model, {"data": batch})
            total, tokens = total + float(per_token.sum()), tokens + float(mask.sum())
        model.train(was_training)
        return -total / max(tokens, 1.0)

    return evaluate
