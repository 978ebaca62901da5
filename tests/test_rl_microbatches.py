"""RL loss normalisation (``rl.normalize``) and the reference's 1 x 8 micro-batches against 8 x 1.

The reference trains RL at batch 1: each sequence's summed loss over its own token count, divided by
the 8 accumulation steps of an update. With per-sequence baselines and per-sequence normalisation
(or normalisation over the whole step), decoding the 8 rollouts at once and accumulating them one by
one are the same estimator; checked here through the training loop's own optimizer step, in eval
mode (no dropout), for both normalisations.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from ketchup import objectives
from ketchup.batching import make_batch, target_logits
from ketchup.config import OPTIM_DEFAULTS, RL_DEFAULTS
from ketchup.methods import Objective
from ketchup.models import build_model
from ketchup.tokenizer import train_tokenizer
from ketchup.training import _optimizer_step

ARCH = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4,
        "dropout_rate": 0.0}
SOURCES = ["the cat sits on the mat", "seven and eighteen are twenty five", "a dog sees a cat",
           "the mat is red", "emma buys cookies", "de kat zit op de mat", "one two three four five",
           "cookies for the dog"]


def test_normalization_by_hand():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    scale, units = objectives.normalization(mask, "token")
    assert scale.flatten().tolist() == [1.0, 1.0, 1.0] and units == 4.0
    scale, units = objectives.normalization(mask, "sequence")
    assert torch.allclose(scale.flatten(), torch.tensor([1 / 3, 1.0, 0.0])) and units == 2.0
    with pytest.raises(ValueError, match="normalize"):
        objectives.normalization(mask, "batch")


@pytest.fixture(scope="module")
def setup():
    tok = train_tokenizer(SOURCES * 10, 120)
    student = build_model("seq2seq", {"config": ARCH}, tok, seed=0)
    teacher = build_model("seq2seq", {"config": ARCH}, tok, seed=1)
    # A few supervised steps towards targets of 1 to 6 words, so the greedy rollouts end at different
    # steps (an untrained model repeats one token to the length limit).
    data = make_batch(tok, SOURCES, [" ".join(s.split()[: 1 + i % 6]) for i, s in enumerate(SOURCES)], "seq2seq", 32, 12)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(40):
        loss = objectives.cross_entropy(target_logits(student, "seq2seq", data), data.target_ids, data.target_mask)
        (loss.sum() / data.target_mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return tok, student.eval(), teacher


def _step(student, objective, micro):
    """The loop's optimizer step with SGD at lr 1: the weights move by exactly minus the gradient."""
    model = copy.deepcopy(student)
    model.eval()  # no dropout: the equivalence holds exactly only without random masks
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    row, _ = _optimizer_step(Accelerator(cpu=True), model, optimizer, scheduler, objective, micro,
                             {**OPTIM_DEFAULTS, "max_grad_norm": None})
    return row, {n: before[n] - p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("normalize", ["sequence", "token"])
@pytest.mark.parametrize("method", ["ketchup", "llmr-minvar"])
def test_one_by_eight_is_eight_by_one(setup, normalize, method):
    tok, student, teacher = setup
    rl = {**RL_DEFAULTS, "rollout_dropout": False, "normalize": normalize}
    objective = Objective(method, "seq2seq", tok, teacher=teacher, max_new_tokens=12, rl=rl, k=2)
    batch = make_batch(tok, SOURCES, None, "seq2seq", 32, 12)
    together = [objective.rollout(student, batch)]  # 8 x 1: one micro-batch of 8 rollouts
    alone = [objective.rollout(student, make_batch(tok, [s], None, "seq2seq", 32, 12)) for s in SOURCES]  # 1 x 8
    lengths = together[0]["student"].target_mask.sum(1)
    assert len(set(lengths.tolist())) > 2, "rollouts of one length would not tell the normalisations apart"
    for i, mb in enumerate(alone):  # the same greedy rollouts, padded or not
        n = int(mb["student"].target_mask.sum())
        assert n == lengths[i]
        assert torch.equal(mb["student"].target_ids[0, :n], together[0]["student"].target_ids[i, :n])

    row_8x1, grad_8x1 = _step(student, objective, together)
    row_1x8, grad_1x8 = _step(student, objective, alone)
    assert row_8x1["loss"] == pytest.approx(row_1x8["loss"], abs=1e-6)
    for name in grad_8x1:
        assert torch.allclose(grad_8x1[name], grad_1x8[name], atol=1e-6), name
    assert max(g.abs().max() for g in grad_8x1.values()) > 1e-4  # a gradient that is really there

    # Independently, the reference's own formula: each sequence's loss alone (one sequence, so its
    # token average is its own mean), averaged over the 8 (sequence) or weighted by length (token).
    per_token_objective = Objective(method, "seq2seq", tok, teacher=teacher, max_new_tokens=12,
                                    rl={**rl, "normalize": "token"}, k=2)
    singles = [_step(student, per_token_objective, [mb]) for mb in alone]
    weights = torch.ones(8) / 8 if normalize == "sequence" else lengths / lengths.sum()
    assert row_1x8["loss"] == pytest.approx(sum(float(w) * r["loss"] for w, (r, _) in zip(weights, singles)), abs=1e-6)
    for name in grad_1x8:
        expected = sum(w * g[name] for w, (_, g) in zip(weights, singles))
        assert torch.allclose(grad_1x8[name], expected, atol=1e-6), name


def test_normalizations_differ_and_other_methods_average_tokens(setup):
    tok, student, teacher = setup
    batch = make_batch(tok, SOURCES, None, "seq2seq", 32, 12)
    losses = {}
    for normalize in ("sequence", "token"):
        objective = Objective("llmr", "seq2seq", tok, teacher=teacher, max_new_tokens=12,
                              rl={**RL_DEFAULTS, "rollout_dropout": False, "normalize": normalize})
        mb = objective.rollout(student, batch)
        losses[normalize], _ = _step(student, objective, [mb])
    assert losses["sequence"]["loss"] != pytest.approx(losses["token"]["loss"], rel=1e-3)
    assert losses["sequence"]["tokens"] == losses["token"]["tokens"]  # the log still counts tokens
    kl = Objective("kl", "seq2seq", tok, teacher=teacher, rl={**RL_DEFAULTS, "normalize": "sequence"})
    data = make_batch(tok, SOURCES, SOURCES, "seq2seq", 32, 12)
    assert kl.units({"data": data}) == float(data.target_mask.sum())
