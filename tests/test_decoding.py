"""Every decode path gives the dynamic cache's tokens: the static cache (one per model and shape,
reset and reused, sources padded to a bucket) and the compiled decode step, for T5 and Qwen2, greedy,
in eval mode and fp32, with padded rows, EOS at different steps and the GSM8K calculator forcing tokens.
"""

from __future__ import annotations

import pytest
import torch

from ketchup import batching, objectives
from ketchup.batching import Decoding, decode, generate, length_bucket, make_batch, target_logits
from ketchup.calculator import processors
from ketchup.models import build_model
from ketchup.tokenizer import train_tokenizer

ARCHS = {
    "seq2seq": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4,
                "dropout_rate": 0.0},
    "decoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True},
}
SOURCES = ["the cat sits on the mat today", "sam has 3 apples", "a dog", "emma buys 10 cookies and eats 6 of them",
           "de kat zit op de mat", "one two three", "cookies", "the red mat is on the floor of the house"]
TARGETS = ["de kat zit op de mat", "sam has 3 + 4 = [ 3+4 = 7 ] 7", "een hond", "[ 10-6 = 4 ] 4",
           "the cat", "een twee drie vier", "koekjes", "de rode mat"]
STATIC = Decoding("static", False)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer((SOURCES + TARGETS) * 10, 150)


@pytest.fixture(scope="module")
def trained(tok):
    """Tiny models fitted for a few steps to targets of 2 to 12 tokens, so that greedy decodes end at
    different steps and depend on every cached key and value (an untrained model repeats one token)."""
    out = {}
    for arch, config in ARCHS.items():
        model = build_model(arch, {"config": config}, tok, seed=0)
        data = make_batch(tok, SOURCES, TARGETS, arch, 32, 16)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(0)
        model.train()
        for _ in range(60):
            loss = objectives.cross_entropy(target_logits(model, arch, data), data.target_ids, data.target_mask)
            (loss.sum() / data.target_mask.sum()).backward()
            optimizer.step()
            optimizer.zero_grad()
        out[arch] = model.eval()
    return out


def test_settings_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Decoding().resolved(cpu) == ("dynamic", False)
    assert Decoding().resolved(cuda) == ("static", True)
    assert Decoding("static", "auto").resolved(cpu) == ("static", False)
    assert Decoding("dynamic", "auto").resolved(cuda) == ("dynamic", False)
    with pytest.raises(ValueError, match="generation.compile"):
        Decoding("dynamic", True).resolved(cpu)
    with pytest.raises(ValueError, match="generation.cache"):
        Decoding("paged", False).resolved(cpu)
    assert [length_bucket(n) for n in (1, 16, 17, 96, 128, 129)] == [16, 16, 32, 128, 128, 256]


@pytest.mark.parametrize("arch", ARCHS)
def test_static_cache_gives_the_dynamic_tokens(arch, tok, trained):
    model = trained[arch]
    batching._STATIC_CACHES.pop(model, None)
    batch = make_batch(tok, SOURCES, None, arch, 32, 1)  # padded rows: sources of 2 to 10 tokens
    dynamic = generate(model, arch, batch, tok, 14)
    lengths = dynamic.target_mask.sum(1)
    assert len(set(lengths.tolist())) >= 4 and lengths.min() < 14  # EOS at different steps
    static = generate(model, arch, batch, tok, 14, decoding=STATIC)
    assert torch.equal(static.target_ids, dynamic.target_ids) and torch.equal(static.target_mask, dynamic.target_mask)
    assert torch.equal(static.input_ids, batch.input_ids)  # the bucket's padding does not leak out
    # The cache of this shape is kept and reset: other sources of the same shape, then the first again.
    shuffled = make_batch(tok, SOURCES[::-1], None, arch, 32, 1)
    assert torch.equal(generate(model, arch, shuffled, tok, 14, decoding=STATIC).target_ids,
                       generate(model, arch, shuffled, tok, 14).target_ids)
    assert torch.equal(generate(model, arch, batch, tok, 14, decoding=STATIC).target_ids, dynamic.target_ids)
    assert len(batching._STATIC_CACHES[model]) == 1
    # Fewer rows and a shorter source width: a cache of their own, the same tokens.
    part = make_batch(tok, SOURCES[1:4], None, arch, 32, 1)
    assert torch.equal(generate(model, arch, part, tok, 14, decoding=STATIC).target_ids,
                       generate(model, arch, part, tok, 14).target_ids)
    assert len(batching._STATIC_CACHES[model]) == 2


def _forcing(tok, arch, batch):
    """A logits processor factory: row 1 is made to write "sam has 3 + 4 = [ 3+4 =", then the
    calculator forces " 7 ]" and the model goes on by itself; the other rows decode freely."""
    prefix = tok("sam has 3 + 4 = [ 3+4 =", add_special_tokens=False).input_ids
    calc = processors({"calculator": True}, tok)

    class Prefix:
        def __init__(self, prompt_length):
            self.prompt_length = prompt_length

        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - self.prompt_length
            if step < len(prefix):
                scores[1] = -torch.inf
                scores[1, prefix[step]] = 0.0
            return scores

    return lambda prompt_length: [Prefix(prompt_length)] + calc(prompt_length)


@pytest.mark.parametrize("arch", ARCHS)
def test_static_cache_with_the_calculator_forcing_tokens(arch, tok, trained):
    model = trained[arch]
    batch = make_batch(tok, SOURCES, None, arch, 32, 1)
    runs = {}
    for name, decoding in (("dynamic", Decoding("dynamic", False)), ("static", STATIC)):
        runs[name] = generate(model, arch, batch, tok, 24, logits_processor=_forcing(tok, arch, batch),
                              decoding=decoding)
    assert torch.equal(runs["static"].target_ids, runs["dynamic"].target_ids)
    assert decode(tok, runs["static"])[1].startswith("sam has 3 + 4 = [ 3+4 = 7 ]")  # the calculator forced 7


@pytest.mark.slow
def test_compiled_decoding_gives_the_dynamic_tokens(tok, trained):
    """torch.compile of the decode step (inductor on CPU): the same greedy tokens, one graph per shape."""
    arch, model = "seq2seq", trained["seq2seq"]
    batch = make_batch(tok, SOURCES, None, arch, 32, 1)
    dynamic = generate(model, arch, batch, tok, 14)
    graphs = []
    for _ in range(2):  # the second call reuses the cache and the compiled graph
        compiled = generate(model, arch, batch, tok, 14, decoding=Decoding("static", True))
        assert torch.equal(compiled.target_ids, dynamic.target_ids)
        graphs.append(batching._GRAPHS["compiled"])
    assert graphs[0] >= 1 and graphs[1] == graphs[0]  # compiled once, not again for the same shape
