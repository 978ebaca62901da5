"""Build tiny models from config or load pretrained ones by hub name / local path (one code path).

Seq2seq models are T5 (the paper's Flan-T5 / T5 setting); decoder-only models built from config are
Qwen2 (the architecture of the paper's Qwen1.5 setting); loaded ones are whatever their checkpoint
is (a GGUF file included, dequantised to float). Students may also be cut from the teacher.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerFast, Qwen2Config, T5Config)

CONFIG_CLASSES = {"seq2seq": T5Config, "decoder": Qwen2Config}
AUTO_CLASSES = {"seq2seq": AutoModelForSeq2SeqLM, "decoder": AutoModelForCausalLM}
GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
PROMPT_FORMATS = ("chat", "plain")
log = logging.getLogger(__name__)


def _check_config_keys(arch: str, config: dict[str, Any], where: str) -> None:
    known = set(CONFIG_CLASSES[arch]().to_dict())
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"config key '{where}.config': unknown {CONFIG_CLASSES[arch].__name__} keys {unknown}")


def build_model(arch: str, spec: dict[str, Any], tokenizer, seed: int = 0, where: str = "model",
                dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A model from ``spec``: ``{"config": {...}}`` (random init, seeded) or ``{"name_or_path": ...}``
    (with ``gguf_file``: that file of the hub repository / folder, dequantised to a plain float model).
    ``{"from_teacher": ...}`` needs the teacher: see ``cut_from_teacher``."""
    if "from_teacher" in spec:
        raise ValueError(f"config key '{where}.from_teacher': a student cut from the teacher is built by "
                         "cut_from_teacher (the student stage), not from its spec alone")
    if "name_or_path" in spec:
        name_or_path = os.path.expanduser(spec["name_or_path"])
        if spec.get("gguf_file"):
            model = _load_gguf(arch, name_or_path, spec["gguf_file"])
            return model.to(dtype) if dtype is not None else model
        kwargs = {"dtype": dtype} if dtype is not None else {}
        return AUTO_CLASSES[arch].from_pretrained(name_or_path, **kwargs)
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


def _load_gguf(arch: str, name_or_path: str, gguf_file: str) -> PreTrainedModel:
    """A GGUF checkpoint as a plain float model.

    transformers dequantises GGUF tensors to float32 but marks the model quantised, and such a model
    refuses ``save_pretrained``; the same weights in a model built from its config (without the
    quantisation entry) save and reload as plain safetensors, so later stages load them like any other.
    """
    try:
        loaded = AUTO_CLASSES[arch].from_pretrained(name_or_path, gguf_file=gguf_file)
    except (OSError, ValueError) as exc:
        raise ValueError(f"gguf_file {gguf_file!r} in {name_or_path!r}: cannot load it ({exc})") from exc
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AUTO_CLASSES[arch].from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model.eval()


def cut_from_teacher(teacher: PreTrainedModel, arch: str, cut: dict[str, Any], where: str) -> PreTrainedModel:
    """A student made of the teacher's embeddings, the listed layers (in the listed order), the final
    norm and the head: ``{"layers": [...]}`` for decoder-only models, ``{"encoder_layers": [...],
    "decoder_layers": [...]}`` for seq2seq. Keeping every layer gives the teacher itself."""
    keys = ("layers",) if arch == "decoder" else ("encoder_layers", "decoder_layers")
    wrong = sorted(set(cut) - set(keys))
    missing = [k for k in keys if k not in cut]
    if wrong or missing:
        raise ValueError(f"config key '{where}': a {arch} student cut from the teacher needs {list(keys)}"
                         + (f", not {wrong}" if wrong else ""))
    config = copy.deepcopy(teacher.config)
    # (config attribute holding the layer count, state-dict prefix of the layer stack, kept layers)
    if arch == "decoder":
        stacks = [("num_hidden_layers", r"(model\.)?layers\.", cut["layers"])]
    else:
        stacks = [("num_layers", r"encoder\.block\.", cut["encoder_layers"]),
                  ("num_decoder_layers", r"decoder\.block\.", cut["decoder_layers"])]
    for (attr, _, layers), key in zip(stacks, keys):
        total = getattr(config, attr)
        bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < total]
        if not layers or bad:
            raise ValueError(f"config key '{where}.{key}': layers must be a non-empty list of indices in "
                             f"[0, {total}) (the teacher has {total}); got {layers}")
        setattr(config, attr, len(layers))
    if arch == "decoder" and getattr(config, "layer_types", None):  # per-layer attention kinds follow the layers
        config.layer_types = [config.layer_types[i] for i in cut["layers"]]
    student = AUTO_CLASSES[arch].from_config(config, dtype=next(teacher.parameters()).dtype)
    source = teacher.state_dict()

    def teacher_key(key: str) -> str:
        for _, prefix, layers in stacks:
            m = re.match(rf"^({prefix})(\d+)\.(.*)$", key)
            if m:
                original = f"{m.group(1)}{layers[int(m.group(m.lastindex - 1))]}.{m.group(m.lastindex)}"
                # T5 keeps its relative position bias in block 0 only: take it from there.
                if original not in source and "relative_attention_bias" in key:
                    return f"{m.group(1)}0.{m.group(m.lastindex)}"
                return original
        return key

    student.load_state_dict({k: source[teacher_key(k)] for k in student.state_dict()}, strict=True)  # copies
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.train(teacher.training)


def load_model(arch: str, path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    return build_model(arch, {"name_or_path": str(path)}, tokenizer=None, dtype=dtype)


def load_tokenizer(path: str, gguf_file: str | None = None):
    """The tokenizer saved at ``path`` (or a hub name; with ``gguf_file``, the one in that GGUF file).

    A tokenizer trained by this project is loaded as the generic fast tokenizer it was saved as:
    next to a model's config.json, AutoTokenizer would pick that model type's class (Qwen2's
    byte-level one, say), which encodes and decodes the same vocabulary differently.
    """
    path = os.path.expanduser(str(path))
    saved = Path(path) / "tokenizer_config.json"
    if gguf_file:
        tokenizer = AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file)
    elif saved.exists() and json.loads(saved.read_text()).get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = pad_token_for(tokenizer)
    return tokenizer


def pad_token_for(tokenizer, avoid: tuple[int, ...] = ()) -> str:
    """A special token to pad with that the model never has to emit: not EOS (nor ``avoid``).

    With padding = EOS the embedding's ``padding_idx`` would be EOS (no gradient, zero at init) and
    any code that masks padding by id would mask the end of every target. The unknown token comes
    first, then the other special tokens in the tokenizer's order.
    """
    banned = {tokenizer.eos_token_id, *avoid}
    candidates = [tokenizer.unk_token, *tokenizer.all_special_tokens]
    for token in candidates:
        if token is not None and tokenizer.convert_tokens_to_ids(token) not in banned:
            return token
    raise ValueError(f"tokenizer {tokenizer.name_or_path!r}: no special token other than EOS "
                     f"({tokenizer.eos_token!r}) to pad with; give it a padding token")


def end_of_turn_token(tokenizer) -> str:
    """The special token the chat template puts right after an assistant reply (``<|im_end|>`` in ChatML)."""
    marker = "KETCHUP-REPLY"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Q"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
    except Exception as exc:  # templates raise their own errors (jinja2's, ValueError, ...)
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r}: its chat template fails on a user turn and "
                         f"an assistant reply ({exc}); set prompt_format: plain") from exc
    ids = tokenizer(text[text.index(marker) + len(marker):], add_special_tokens=False).input_ids
    special = set(tokenizer.all_special_ids) | {i for t, i in tokenizer.get_added_vocab().items()}
    if not ids or ids[0] not in special:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r}: its chat template ends a reply with no special "
                         f"token ({text[text.index(marker) + len(marker):]!r}); set prompt_format: plain")
    return tokenizer.convert_ids_to_tokens(ids[0])


def prepare_tokenizer(tokenizer, arch: str, prompt_format: str = "chat"):
    """Fix how prompts and outputs are delimited, once, in the stage that first loads the tokenizer
    (the teacher's); every later stage loads the tokenizer saved there.

    Decoder-only with ``prompt_format: chat`` and a chat template: prompts go through the template
    (``batching.encode_sources``) and EOS becomes the template's end-of-turn token. ``plain`` (or no
    template) drops the template: the prompt is ``source + "\\n"`` and EOS stays the tokenizer's.
    The padding token is never EOS (``pad_token_for``).
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"config key 'prompt_format': {prompt_format!r} is not one of {PROMPT_FORMATS}")
    if arch == "decoder" and prompt_format == "chat" and tokenizer.chat_template:
        tokenizer.eos_token = end_of_turn_token(tokenizer)
    elif arch == "decoder":
        if prompt_format == "chat":
            log.info("tokenizer %s has no chat template: plain prompts", tokenizer.name_or_path)
        tokenizer.chat_template = None
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = pad_token_for(tokenizer)
    return tokenizer


def align_special_tokens(model: PreTrainedModel, tokenizer) -> PreTrainedModel:
    """Give a loaded model the tokenizer's EOS and padding ids (config, generation config, and the
    embedding's ``padding_idx``, which receives no gradient)."""
    for cfg in (model.config, model.generation_config):
        cfg.pad_token_id, cfg.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    for emb in (model.get_input_embeddings(),):
        if isinstance(emb, torch.nn.Embedding) and emb.padding_idx is not None:
            emb.padding_idx = tokenizer.pad_token_id
    return model


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
