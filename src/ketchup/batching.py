"""Tokenised batches and the one alignment both architectures share.

Every objective sees ``logits [B, T, V]`` aligned with ``target_ids [B, T]`` and ``target_mask
[B, T]`` (1 on real target tokens, the last real one EOS, right-padded). Seq2seq models read the
source in the encoder; decoder-only models read the prompt left-padded as a prefix and are scored on
the continuation only: the source as a user turn of the tokenizer's chat template when it has one
(``models.prepare_tokenizer`` keeps or drops it), else ``source + SEPARATOR``.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from dataclasses import dataclass, replace

import torch
from transformers import CompileConfig, EncoderDecoderCache, GenerationConfig, StaticCache

SEPARATOR = "\n"  # ends a decoder-only prompt, so prompt and continuation are tokenised apart
CACHES = ("auto", "dynamic", "static")
log = logging.getLogger(__name__)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, S] source (seq2seq: right-padded; decoder: left-padded prompt)
    attention_mask: torch.Tensor  # [B, S]
    target_ids: torch.Tensor  # [B, T] right-padded with pad id
    target_mask: torch.Tensor  # [B, T] float, 1 on real tokens up to and including EOS

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.target_ids,
                                              self.target_mask)))

    def with_targets(self, target_ids: torch.Tensor, target_mask: torch.Tensor) -> "Batch":
        return replace(self, target_ids=target_ids, target_mask=target_mask)

    def rows(self, index: slice) -> "Batch":
        """A sub-batch of rows, without the columns that are padding in every kept row."""
        source_cols = self.attention_mask[index].bool().any(0)  # a prefix (right-pad) or suffix (left-pad)
        target_cols = self.target_mask[index].bool().any(0)
        target_cols[0] = True  # keep one column even if every target is empty
        return Batch(self.input_ids[index][:, source_cols], self.attention_mask[index][:, source_cols],
                     self.target_ids[index][:, target_cols], self.target_mask[index][:, target_cols])


def encode_sources(tokenizer, sources: list[str], arch: str, max_length: int) -> list[list[int]]:
    """Token ids of each source: seq2seq ends it with EOS, decoder-only with the separator."""
    if arch == "decoder":
        # Keep the end of a long prompt: it holds the separator the continuation follows.
        return [ids[-max_length:] for ids in tokenizer(decoder_prompts(tokenizer, sources), add_special_tokens=False).input_ids]
    return [ids[: max_length - 1] + [tokenizer.eos_token_id]
            for ids in tokenizer(list(sources), add_special_tokens=False).input_ids]


def decoder_prompts(tokenizer, sources: list[str]) -> list[str]:
    """Decoder-only prompt texts: a user turn and the assistant's opening (chat template), or
    ``source + SEPARATOR`` when the tokenizer has no template."""
    if not getattr(tokenizer, "chat_template", None):
        return [s + SEPARATOR for s in sources]
    return [tokenizer.apply_chat_template([{"role": "user", "content": s}], tokenize=False, add_generation_prompt=True)
            for s in sources]


def encode_targets(tokenizer, targets: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each target, truncated and ended with EOS."""
    return [ids[: max_length - 1] + [tokenizer.eos_token_id]
            for ids in tokenizer(list(targets), add_special_tokens=False).input_ids]


def pad(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        else:
            ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
    return ids, mask


def collate(source_ids: list[list[int]], target_ids: list[list[int]] | None, pad_id: int, arch: str) -> Batch:
    """Pad encoded examples into a Batch (decoder-only prompts on the left, so generation continues
    them all at once; everything else on the right)."""
    input_ids, attention_mask = pad(source_ids, pad_id, "left" if arch == "decoder" else "right")
    if target_ids is None:
        targets = torch.full((len(source_ids), 1), pad_id, dtype=torch.long)
        return Batch(input_ids, attention_mask, targets, torch.zeros_like(targets, dtype=torch.float))
    targets, mask = pad(target_ids, pad_id, "right")
    return Batch(input_ids, attention_mask, targets, mask.float())


def make_batch(tokenizer, sources: list[str], targets: list[str] | None, arch: str,
               max_source_length: int, max_target_length: int) -> Batch:
    return collate(encode_sources(tokenizer, sources, arch, max_source_length),
                   None if targets is None else encode_targets(tokenizer, targets, max_target_length),
                   tokenizer.pad_token_id, arch)


def target_logits(model, arch: str, batch: Batch) -> torch.Tensor:
    """Logits [B, T, V] where position t scores ``batch.target_ids[:, t]`` (teacher forcing)."""
    if arch == "seq2seq":
        start = getattr(model, "module", model).config.decoder_start_token_id  # DDP wraps it
        decoder_input_ids = torch.cat([torch.full_like(batch.target_ids[:, :1], start), batch.target_ids[:, :-1]], 1)
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     decoder_input_ids=decoder_input_ids).logits
    prompt_len = batch.input_ids.shape[1]
    ids = torch.cat([batch.input_ids, batch.target_ids], 1)
    attn = torch.cat([batch.attention_mask, batch.target_mask.long()], 1)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
    width = batch.target_ids.shape[1]
    if "logits_to_keep" in inspect.signature(getattr(model, "module", model).forward).parameters:  # DDP wraps it
        # Only the last width + 1 positions score targets: [B, S + T, V] logits over the prompt too
        # would dominate memory at a real vocabulary.
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, logits_to_keep=width + 1).logits
        return logits[:, :width]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits
    return logits[:, prompt_len - 1: prompt_len - 1 + width]


def mask_after_eos(tokens: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target ids and mask for generated tokens: real up to and including the first EOS."""
    is_eos = (tokens == eos_id).long()
    before = is_eos.cumsum(1) - is_eos  # number of EOS strictly before t
    mask = (before == 0).float()
    return tokens.masked_fill(mask == 0, pad_id), mask


def decoding_config(tokenizer, max_new_tokens: int, sample: bool, num_beams: int,
                    decoder_start_token_id: int | None = None) -> GenerationConfig:
    """Every setting of one decode, complete: greedy / beam, or sampling from the full softmax at T = 1,
    no repetition or length penalty, no forced or suppressed tokens, stopping at EOS or max_new_tokens."""
    return GenerationConfig(
        decoder_start_token_id=decoder_start_token_id,
        max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=sample, num_beams=num_beams,
        temperature=1.0, top_k=0, top_p=1.0, min_p=None, typical_p=1.0, repetition_penalty=1.0,
        encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0, early_stopping=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, use_cache=True)


@dataclass(frozen=True)
class Decoding:
    """How every decode runs: the KV cache (``generation.cache``) and whether the decode step is
    compiled (``generation.compile``). ``auto`` resolves on the model's device (``resolved``)."""
    cache: str = "auto"
    compile: bool | str = "auto"

    @classmethod
    def of(cls, gen: dict) -> "Decoding":
        return cls(gen.get("cache", "auto"), gen.get("compile", "auto"))

    def resolved(self, device: torch.device) -> tuple[str, bool]:
        """(cache, compile) on ``device``. ``auto``: on CPU the dynamic cache, eager (fastest measured on
        CPU, benchmarks/decode.py); on an accelerator a static cache with the decode step compiled
        (transformers' fast path: fixed shapes, so one graph per shape)."""
        if self.cache not in CACHES:
            raise ValueError(f"config key 'generation.cache': {self.cache!r} is not one of {CACHES}")
        on_cpu = device.type == "cpu"
        cache = ("dynamic" if on_cpu else "static") if self.cache == "auto" else self.cache
        compiled = (not on_cpu and cache == "static") if self.compile == "auto" else bool(self.compile)
        if compiled and cache != "static":
            raise ValueError("config key 'generation.compile': compiled decoding needs generation.cache: static "
                             "(a dynamic cache changes shape every step)")
        return cache, compiled


def length_bucket(n: int, smallest: int = 16) -> int:
    """The source width a static-cache decode pads to: the next power of two from ``smallest``, so
    the shapes a compiled decode sees repeat (a handful per run) instead of one per batch."""
    width = smallest
    while width < n:
        width *= 2
    return width


def pad_sources(batch: Batch, width: int, pad_id: int, arch: str) -> Batch:
    """``batch`` with its sources padded to ``width`` columns (masked: the outputs do not change);
    decoder-only prompts are padded on the left, as ``collate`` pads them."""
    extra = width - batch.input_ids.shape[1]
    if extra <= 0:
        return batch
    side = (extra, 0) if arch == "decoder" else (0, extra)
    pad = torch.nn.functional.pad
    return replace(batch, input_ids=pad(batch.input_ids, side, value=pad_id),
                   attention_mask=pad(batch.attention_mask, side, value=0))


# One static cache per model and shape, kept across calls and reset before each: a new cache per call
# would re-record a compiled decode's graphs every call. Weak keys: a model's caches go with it.
_STATIC_CACHES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_GRAPHS = {"shapes": 0, "compiled": 0}  # static cache shapes made and decode graphs compiled, this process


def static_cache(model, arch: str, batch_size: int, source_width: int, max_new_tokens: int):
    """The model's static cache for this shape, reset (empty); made on first use."""
    caches = _STATIC_CACHES.setdefault(model, {})
    key = (batch_size, source_width, max_new_tokens, next(model.parameters()).dtype)
    if key not in caches:
        config = model.config.get_text_config(decoder=True)
        if arch == "seq2seq":  # self-attention over the outputs, cross-attention over the sources
            caches[key] = EncoderDecoderCache(StaticCache(config=config, max_cache_len=max_new_tokens + 1),
                                              StaticCache(config=config, max_cache_len=source_width))
        else:
            caches[key] = StaticCache(config=config, max_cache_len=source_width + max_new_tokens)
        _GRAPHS["shapes"] += 1
        log.info("static decode cache #%d: batch %d, sources %d, %d new tokens", _GRAPHS["shapes"], batch_size,
                 source_width, max_new_tokens)
    cache = caches[key]
    cache.reset()
    return cache


# Dynamo compiles one graph per decode shape and, past its recompile limit (8 by default), silently
# falls back to eager: a run's shapes (batch sizes x source buckets) fit under this one.
RECOMPILE_LIMIT = 64


def _compile_config(device: torch.device) -> CompileConfig:
    """transformers' default for the decode step (CUDA graphs on a GPU); plain inductor on CPU."""
    config = CompileConfig() if device.type == "cuda" else CompileConfig(mode="default")
    config._compile_all_devices = device.type != "cuda"  # transformers compiles on accelerators only, unasked
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return config


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


@torch.no_grad()
def generate(model, arch: str, batch: Batch, tokenizer, max_new_tokens: int, sample: bool = False,
             num_beams: int = 1, dropout: bool = False, logits_processor=None,
             decoding: Decoding = Decoding()) -> Batch:
    """Decode continuations of ``batch`` (greedy, beam, or ancestral sampling from the full softmax).

    In eval mode, unless ``dropout``: then in train mode, so dropout perturbs the decode (the
    reference's RL rollouts). The model's mode is restored afterwards. ``logits_processor``: None, or
    a function of the number of leading non-generated columns that ``generate`` shows a processor,
    returning a list of them (``ketchup.calculator.processors``). ``decoding``: the cache and
    compilation (``Decoding``); with a static cache the sources are padded to ``length_bucket`` and
    the model's cache for that shape is reused, so the tokens are those of the dynamic cache.
    """
    was_training = model.training
    model.train(dropout)
    cache_kind, compiled = decoding.resolved(next(model.parameters()).device)
    source, source_width, cache = batch, batch.input_ids.shape[1], None
    if cache_kind == "static":
        batch = pad_sources(batch, length_bucket(source_width), tokenizer.pad_token_id, arch)
        cache = static_cache(model, arch, batch.input_ids.shape[0] * num_beams, batch.input_ids.shape[1],
                             max_new_tokens)
    # generate() fills every setting left unset from the checkpoint's generation_config (sampling,
    # repetition penalty, lengths ...): decode against a blank one so only decoding_config counts.
    processors = None
    if logits_processor is not None:  # seq2seq: the decoder start token; decoder-only: the prompt
        processors = logits_processor(1 if arch == "seq2seq" else batch.input_ids.shape[1])
    config = decoding_config(tokenizer, max_new_tokens, sample, num_beams,
                             model.config.decoder_start_token_id if arch == "seq2seq" else None)
    config.disable_compile = not compiled
    if compiled:
        config.compile_config = _compile_config(next(model.parameters()).device)
    graphs = _graphs() if compiled else 0
    inherited, model.generation_config = model.generation_config, GenerationConfig()
    try:
        out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             generation_config=config, logits_processor=processors,
                             **({"cache": cache} if cache is not None else {}))
    finally:
        model.generation_config = inherited
    if compiled and _graphs() > graphs:
        _GRAPHS["compiled"] += _graphs() - graphs
        log.info("decode step compiled again (%d graphs in this process, %d static cache shapes)",
                 _GRAPHS["compiled"], _GRAPHS["shapes"])
        if _GRAPHS["compiled"] >= RECOMPILE_LIMIT:
            log.warning("%d compiled decode graphs: past torch._dynamo's recompile limit decodes run eagerly; "
                        "fewer shapes (one generation.batch_size, shorter sources) avoid it", _GRAPHS["compiled"])
    # seq2seq outputs start with the decoder start token; decoder outputs repeat the prompt.
    new = out[:, 1:] if arch == "seq2seq" else out[:, batch.input_ids.shape[1]:]
    if new.shape[1] == 0:
        new = torch.full((out.shape[0], 1), tokenizer.eos_token_id, dtype=out.dtype, device=out.device)
    model.train(was_training)
    target_ids, target_mask = mask_after_eos(new, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return source.with_targets(target_ids, target_mask)  # the sources as given, without the bucket's padding


def decode(tokenizer, batch: Batch) -> list[str]:
    texts = []
    for ids, mask in zip(batch.target_ids.tolist(), batch.target_mask.tolist()):
        real = [t for t, m in zip(ids, mask) if m > 0]
        texts.append(tokenizer.decode(real, skip_special_tokens=True).strip())
    return texts
