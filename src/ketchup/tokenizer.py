"""Train a small BPE tokenizer on a task's data (default config), saved so transformers loads it.

Metaspace pre-tokenisation makes decoding exactly invert encoding (spaces and newlines survive).
Small numbers stay whole tokens, which lets a tiny model copy and add them in a few hundred steps.
Seq2seq students that are pretrained (span corruption) need sentinel tokens: they are added after
training, as extra special tokens at the end of the vocabulary, so the BPE vocabulary and every
other id stay as they are without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ketchup.io import atomic_path
from ketchup.span_corruption import sentinel_token

SPECIAL = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "bos_token": "<s>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int, sentinels: int = 0) -> PreTrainedTokenizerFast:
    """A BPE tokenizer of at most ``vocab_size`` entries (special tokens included), then ``sentinels``
    sentinel tokens (``<extra_id_0>``, ...)."""
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(),
        pre_tokenizers.Punctuation("isolated"),
    ])
    tok.decoder = decoders.Metaspace()
    # pad first: T5 uses id 0 both as padding and as decoder start token.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL[k] for k in
                                  ("pad_token", "eos_token", "unk_token", "bos_token")], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    extra = {"extra_special_tokens": [sentinel_token(i) for i in range(sentinels)]} if sentinels else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIAL, **extra)


def build(examples: list[dict[str, str]], vocab_size: int, out_dir: str | Path, sentinels: int = 0) -> None:
    """Train on the sources and targets of ``examples`` and save with save_pretrained, atomically."""
    texts = [text for ex in examples for text in (ex["source"], ex["target"])]
    tokenizer = train_tokenizer(texts, vocab_size, sentinels)
    with atomic_path(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
