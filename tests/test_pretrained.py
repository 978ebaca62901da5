"""Pretrained-checkpoint paths: decoding settings never inherited, students cut from the teacher,
chat templates and padding, local data without a dev file."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from ketchup.batching import encode_sources, encode_targets, generate, make_batch
from ketchup.models import (build_model, cut_from_teacher, load_model, load_tokenizer, pad_token_for,
                            prepare_tokenizer)
from ketchup.tokenizer import train_tokenizer

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "one two three four five six",
         "red green blue yellow", "seven eight nine ten"] * 4
ARCHS = {
    "seq2seq": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 3, "num_decoder_layers": 3, "num_heads": 4},
    "decoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 128},
}
# Every generation default a checkpoint may carry that would change our decodes.
POISON = dict(do_sample=True, temperature=0.3, top_k=3, top_p=0.5, repetition_penalty=5.0, no_repeat_ngram_size=1,
              min_new_tokens=7, max_new_tokens=2, max_length=3, suppress_tokens=list(range(4, 60)))


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 120)


def _manual_greedy(model, arch: str, tok, source_ids: list[int], steps: int) -> list[int]:
    """Greedy decoding by argmax over the model's own forward pass, one unpadded row."""
    ids = torch.tensor([source_ids])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            if arch == "seq2seq":
                dec = torch.tensor([[model.config.decoder_start_token_id] + out])
                logits = model(input_ids=ids, decoder_input_ids=dec).logits
            else:
                logits = model(input_ids=torch.cat([ids, torch.tensor([out], dtype=torch.long)], 1)).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == tok.eos_token_id:
                break
    return out


@pytest.mark.parametrize("arch", ["seq2seq", "decoder"])
def test_decoding_ignores_the_checkpoints_generation_config(arch, tok, tmp_path):
    model = build_model(arch, {"config": ARCHS[arch]}, tok, seed=3)
    model.generation_config = GenerationConfig(**POISON, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                               decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None))
    model.save_pretrained(tmp_path)
    poisoned = load_model(arch, tmp_path).eval()
    assert poisoned.generation_config.repetition_penalty == 5.0 and poisoned.generation_config.do_sample
    clean = load_model(arch, tmp_path).eval()
    clean.generation_config = GenerationConfig()
    sources = TEXTS[:3]
    steps = 12
    for i, source in enumerate(sources):
        batch = make_batch(tok, [source], None, arch, 32, 1)
        got = generate(poisoned, arch, batch, tok, steps)
        real = [t for t, m in zip(got.target_ids[0].tolist(), got.target_mask[0].tolist()) if m]
        assert real == _manual_greedy(poisoned, arch, tok, batch.input_ids[0].tolist(), steps)
        assert len(real) > 3  # beyond the checkpoint's max_length / max_new_tokens
    # Sampling: the same draws with the poisoned and a blank generation config.
    batch = make_batch(tok, sources, None, arch, 32, 1)
    draws = []
    for model_ in (poisoned, clean):
        torch.manual_seed(0)
        draws.append(generate(model_, arch, batch, tok, steps, sample=True).target_ids)
    assert torch.equal(draws[0], draws[1])
    assert poisoned.generation_config.repetition_penalty == 5.0  # restored after decoding


@pytest.mark.parametrize("arch", ["seq2seq", "decoder"])
def test_student_cut_with_every_layer_is_the_teacher(arch, tok):
    teacher = build_model(arch, {"config": ARCHS[arch]}, tok, seed=1).eval()
    every = ({"layers": [0, 1, 2]} if arch == "decoder" else {"encoder_layers": [0, 1, 2], "decoder_layers": [0, 1, 2]})
    student = cut_from_teacher(teacher, arch, every, "students.s.from_teacher").eval()
    batch = make_batch(tok, TEXTS[:4], TEXTS[4:8], arch, 32, 16)
    from ketchup.batching import target_logits

    with torch.no_grad():
        assert torch.equal(target_logits(student, arch, batch), target_logits(teacher, arch, batch))
    # The student's weights are copies: training it leaves the teacher alone.
    next(student.parameters()).data.add_(1.0)
    assert not torch.equal(next(student.parameters()), next(teacher.parameters()))


def test_cut_decoder_keeps_listed_layers_in_order(tok):
    teacher = build_model("decoder", {"config": ARCHS["decoder"]}, tok, seed=1)
    student = cut_from_teacher(teacher, "decoder", {"layers": [2, 0]}, "students.s.from_teacher")
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 3
    t, s = teacher.state_dict(), student.state_dict()
    for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
        assert torch.equal(s[f"model.layers.0.{name}"], t[f"model.layers.2.{name}"])
        assert torch.equal(s[f"model.layers.1.{name}"], t[f"model.layers.0.{name}"])
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(s[name], t[name])


def test_cut_seq2seq_takes_the_position_bias_from_block_0(tok):
    teacher = build_model("seq2seq", {"config": ARCHS["seq2seq"]}, tok, seed=1)
    student = cut_from_teacher(teacher, "seq2seq", {"encoder_layers": [1], "decoder_layers": [2, 1]}, "x")
    t, s = teacher.state_dict(), student.state_dict()
    bias = "layer.0.SelfAttention.relative_attention_bias.weight"
    assert torch.equal(s[f"encoder.block.0.{bias}"], t[f"encoder.block.0.{bias}"])
    assert torch.equal(s[f"decoder.block.0.{bias}"], t[f"decoder.block.0.{bias}"])
    assert torch.equal(s["encoder.block.0.layer.1.DenseReluDense.wi.weight"],
                       t["encoder.block.1.layer.1.DenseReluDense.wi.weight"])
    assert torch.equal(s["decoder.block.1.layer.0.SelfAttention.q.weight"], t["decoder.block.1.layer.0.SelfAttention.q.weight"])
    assert torch.equal(s["decoder.block.0.layer.0.SelfAttention.q.weight"], t["decoder.block.2.layer.0.SelfAttention.q.weight"])


@pytest.mark.parametrize("cut, message", [({"layers": [0, 3]}, r"students\.s\.from_teacher\.layers.*\[0, 3\)"),
                                          ({"layers": []}, r"students\.s\.from_teacher\.layers"),
                                          ({"encoder_layers": [0]}, r"students\.s\.from_teacher.*needs \['layers'\]")])
def test_cut_rejects_bad_layers_naming_the_key(tok, cut, message):
    teacher = build_model("decoder", {"config": ARCHS["decoder"]}, tok, seed=1)
    with pytest.raises(ValueError, match=message):
        cut_from_teacher(teacher, "decoder", cut, "students.s.from_teacher")


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _chat_tokenizer():
    """A ChatML tokenizer whose padding token is its EOS, as SmolLM2's is (<|endoftext|> is unk there)."""
    tok = train_tokenizer(TEXTS, 120)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.pad_token = tok.eos_token
    return tok


def test_chat_prompts_end_of_turn_eos_and_padding(tmp_path):
    tok = prepare_tokenizer(_chat_tokenizer(), "decoder", "chat")
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id != tok.eos_token_id
    expected = "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n"  # written out by hand
    assert encode_sources(tok, ["the cat"], "decoder", 64)[0] == tok(expected, add_special_tokens=False).input_ids
    assert encode_targets(tok, ["a dog"], 16)[0][-1] == tok.convert_tokens_to_ids("<|im_end|>")
    # Saved with the teacher and loaded by every later stage: the same template, EOS and padding.
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert (again.eos_token, again.pad_token, again.chat_template) == (tok.eos_token, tok.pad_token, CHATML)
    # A model built for it never pads with (and so never zeroes or freezes the embedding of) EOS.
    model = build_model("decoder", {"config": ARCHS["decoder"]}, again, seed=0)
    assert model.get_input_embeddings().padding_idx == again.pad_token_id != again.eos_token_id


def test_plain_prompts_drop_the_template():
    tok = prepare_tokenizer(_chat_tokenizer(), "decoder", "plain")
    assert tok.chat_template is None and tok.eos_token == "</s>"
    assert tok.pad_token_id != tok.eos_token_id
    assert encode_sources(tok, ["the cat"], "decoder", 64)[0] == tok("the cat\n", add_special_tokens=False).input_ids


def test_pad_token_is_never_eos():
    tok = train_tokenizer(TEXTS, 120)
    tok.pad_token = tok.eos_token
    assert pad_token_for(tok) == "<unk>"
    bare = train_tokenizer(TEXTS, 120)
    for name in ("unk_token", "bos_token", "pad_token"):
        setattr(bare, name, bare.eos_token)
    with pytest.raises(ValueError, match="no special token other than EOS"):
        pad_token_for(bare)


def test_local_gsm8k_without_a_dev_file(tmp_path, jsonl_writer):
    from ketchup.data import sources
    from ketchup.io import read_jsonl

    d = tmp_path / "gsm8k"
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(20)]
    jsonl_writer(d / "train.jsonl", rows)
    jsonl_writer(d / "test.jsonl", rows[:3])
    spec = {"source": "local", "path": str(d), "n_dev": 5}  # no dev.jsonl: dev is carved from train
    sources.build("gsm8k", spec, 7, tmp_path / "a")
    sources.build("gsm8k", spec, 7, tmp_path / "b")
    dev, train = read_jsonl(tmp_path / "a" / "dev.jsonl"), read_jsonl(tmp_path / "a" / "train.jsonl")
    assert len(dev) == 5 and len(train) == 15
    assert {r["question"] for r in dev}.isdisjoint(r["question"] for r in train)
    assert dev == read_jsonl(tmp_path / "b" / "dev.jsonl")  # seeded
    assert dev != rows[:5]  # a shuffled slice, not the head


def test_config_keys_for_pretrained_models(repo_root):
    from ketchup import config as kconfig

    cfg = kconfig.load(repo_root / "workflow" / "configs" / "smollm2_gsm8k.yaml")
    assert cfg["teacher"]["model"]["gguf_file"].endswith(".gguf") and cfg["prompt_format"] == "chat"
    bad = {"students": {"cut": {"from_teacher": {"encoder_layers": [0]}}}}
    with pytest.raises(kconfig.ConfigError, match=r"students\.cut\.from_teacher.*\['layers'\]"):
        kconfig.load(repo_root / "workflow" / "configs" / "smollm2_gsm8k.yaml", bad)
    cut_teacher = {**cfg, "teacher": {"model": {"from_teacher": {"layers": [0]}}}, "tokenizer": {"kind": "pretrained",
                                                                                               "name_or_path": "x"}}
    with pytest.raises(kconfig.ConfigError, match=r"teacher\.model\.from_teacher"):
        kconfig.validate(cut_teacher)
    with pytest.raises(kconfig.ConfigError, match="gguf_file"):
        kconfig.load(repo_root / "config.yaml", {"students": {"small": {"config": {}, "gguf_file": "x.gguf"}}})
    with pytest.raises(kconfig.ConfigError, match="prompt_format"):
        kconfig.load(repo_root / "config.yaml", {"prompt_format": "chatty"})


def test_decoder_target_logits_only_over_targets(tok):
    """Logits kept for the target positions only equal the full forward pass sliced by hand."""
    from ketchup.batching import target_logits

    model = build_model("decoder", {"config": ARCHS["decoder"]}, tok, seed=2).eval()
    batch = make_batch(tok, ["the cat", "one two three four five six seven"], ["a dog ran", "red"], "decoder", 32, 16)
    ids = torch.cat([batch.input_ids, batch.target_ids], 1)
    attn = torch.cat([batch.attention_mask, batch.target_mask.long()], 1)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
        got = target_logits(model, "decoder", batch)
    s, t = batch.input_ids.shape[1], batch.target_ids.shape[1]
    assert got.shape == (2, t, len(tok))
    assert torch.allclose(got, full[:, s - 1: s - 1 + t], atol=1e-5)
