"""Build tiny models from config or load pretrained ones by hub name / local path (one code path).

Seq2seq models are T5 (the paper's Flan-T5 / T5 setting); decoder-only models are Qwen2 (the
architecture of the paper's Qwen1.5 setting).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerFast, Qwen2Config, T5Config)

CONFIG_CLASSES = {"seq2seq": T5Config, "decoder": Qwen2Config}
AUTO_CLASSES = {"seq2seq": AutoModelForSeq2SeqLM, "decoder": AutoModelForCausalLM}
GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def _check_config_keys(arch: str, config: dict[str, Any], where: str) -> None:
    known = set(CONFIG_CLASSES[arch]().to_dict())
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"config key '{where}.config': unknown {CONFIG_CLASSES[arch].__name__} keys {unknown}")


def build_model(arch: str, spec: dict[str, Any], tokenizer, seed: int = 0, where: str = "model",
                dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A model from ``spec``: ``{"config": {...}}`` (random init, seeded) or ``{"name_or_path": ...}``."""
    if "name_or_path" in spec:
        kwargs = {"dtype": dtype} if dtype is not None else {}
        return AUTO_CLASSES[arch].from_pretrained(spec["name_or_path"], **kwargs)
    _check_config_keys(arch, spec["config"], where)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if arch == "seq2seq":
        # dropout_rate: T5Config's default 0.1 (pretrained T5's) unless the config sets it
        config = T5Config(vocab_size=len(tokenizer), decoder_start_token_id=tokenizer.pad_token_id,
                          **ids, **spec["config"])
    else:
        config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             **ids, **spec["config"])
    torch.manual_seed(seed)
    model = AUTO_CLASSES[arch].from_config(config).eval()  # eval mode, as from_pretrained returns it
    return model.to(dtype) if dtype is not None else model


def load_model(arch: str, path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    return build_model(arch, {"name_or_path": str(path)}, tokenizer=None, dtype=dtype)


def load_tokenizer(path: str):
    """The tokenizer saved at ``path`` (or a hub name).

    A tokenizer trained by this project is loaded as the generic fast tokenizer it was saved as:
    next to a model's config.json, AutoTokenizer would pick that model type's class (Qwen2's
    byte-level one, say), which encodes and decodes the same vocabulary differently.
    """
    saved = Path(path) / "tokenizer_config.json"
    if saved.exists() and json.loads(saved.read_text()).get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:  # decoder-only tokenizers often lack one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
