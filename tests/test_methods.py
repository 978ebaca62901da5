"""The methods' wiring on tiny real models: alignment, masks, teacher isolation, the RL gradient."""

from __future__ import annotations

import pytest
import torch

from ketchup import objectives
from ketchup.batching import generate, make_batch, mask_after_eos, target_logits
from ketchup.config import RL_DEFAULTS
from ketchup.methods import Objective, split_for_two_sources
from ketchup.models import build_model
from ketchup.tokenizer import train_tokenizer

ARCHS = {
    "seq2seq": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4},
    "decoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True},
}
SOURCES = ["The cat sits on the mat.", "Emma has 7 cookies and buys 18 more cookies today"]
TARGETS = ["De kat zit op de mat.", "25"]
METHODS = ["sft", "seqkd", "kl", "js", "tvd", "llmr", "llmr-mean", "llmr-minvar", "ketchup"]


@pytest.fixture(scope="module")
def tok():
    texts = SOURCES + TARGETS + ["Emma has 7 + 18 = 25 cookies.", "De hond ziet een kat."]
    return train_tokenizer(texts * 10, 120)


def models(arch, tok):
    return build_model(arch, {"config": ARCHS[arch]}, tok, seed=0), build_model(arch, {"config": ARCHS[arch]}, tok, seed=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_does_not_change_target_logits(arch, tok):
    student, _ = models(arch, tok)
    batch = make_batch(tok, SOURCES, TARGETS, arch, 32, 16)
    together = target_logits(student, arch, batch)
    for i in range(len(SOURCES)):
        alone_batch = make_batch(tok, SOURCES[i:i + 1], TARGETS[i:i + 1], arch, 32, 16)
        alone = target_logits(student, arch, alone_batch)
        n = int(alone_batch.target_mask.sum())
        assert torch.allclose(together[i, :n], alone[0, :n], atol=1e-5)
        assert n == int(batch.target_mask[i].sum())
        assert batch.target_ids[i, n - 1] == tok.eos_token_id


def test_mask_after_eos():
    tokens = torch.tensor([[5, 6, 1, 0, 0], [5, 1, 7, 1, 0], [5, 6, 7, 8, 9]])
    ids, mask = mask_after_eos(tokens, eos_id=1, pad_id=0)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ids.tolist() == [[5, 6, 1, 0, 0], [5, 1, 0, 0, 0], [5, 6, 7, 8, 9]]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_the_student_and_never_the_teacher(arch, method, tok):
    student, teacher = models(arch, tok)
    teacher.requires_grad_(False)
    objective = Objective(method, arch, tok, teacher=teacher, max_new_tokens=8, rl=RL_DEFAULTS, k=2)
    batch = make_batch(tok, SOURCES, TARGETS, arch, 32, 16)
    torch.manual_seed(0)
    per_token, mask, _ = objective.loss(student, objective.rollout(student, batch))
    assert per_token.shape == mask.shape and torch.isfinite(per_token).all()
    assert (per_token[mask == 0] == 0).all()
    (per_token.sum() / mask.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("kind", ["js", "tvd"])
def test_two_source_divergence_weights_each_source_one_half(kind, tok):
    student, teacher = models("seq2seq", tok)
    objective = Objective(kind, "seq2seq", tok, teacher=teacher, max_new_tokens=6, rl=RL_DEFAULTS)
    batch = make_batch(tok, SOURCES, TARGETS, "seq2seq", 32, 16)
    torch.manual_seed(0)
    batches = objective.rollout(student, batch)
    per_token, mask, stats = objective.loss(student, batches)
    expected = []
    for b in batches.values():
        values = objectives.token_divergence(target_logits(student, "seq2seq", b), target_logits(teacher, "seq2seq", b),
                                             kind, b.target_mask)
        expected.append(values.sum() / b.target_mask.sum())
    assert float(per_token.detach().sum() / mask.sum()) == pytest.approx(float(sum(expected).detach() / 2), rel=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_js_tvd_score_each_source_on_its_own_half_of_the_micro_batch(arch, tok):
    sources = SOURCES + ["De hond ziet een kat.", "The cat sits."]
    targets = TARGETS + ["The dog sees a cat and a long story follows", "1"]
    batch = make_batch(tok, sources, targets, arch, 32, 16)
    student, teacher = models(arch, tok)
    objective = Objective("js", arch, tok, teacher=teacher, max_new_tokens=5, rl=RL_DEFAULTS)
    torch.manual_seed(0)
    batches = objective.rollout(student, batch)
    # Teacher outputs on the first half, the student's own samples for the sources of the second.
    want_data = make_batch(tok, sources[:2], targets[:2], arch, 32, 16)
    for field in ("input_ids", "attention_mask", "target_ids", "target_mask"):
        assert torch.equal(getattr(batches["data"], field), getattr(want_data, field)), field
    want_rest = make_batch(tok, sources[2:], None, arch, 32, 16)
    assert torch.equal(batches["student"].input_ids, want_rest.input_ids)
    assert batches["student"].target_mask.sum() > 0
    # Dropping the columns that are padding in every kept row leaves the logits unchanged.
    full = target_logits(student, arch, batch)[:2]
    half = target_logits(student, arch, batches["data"])
    mask = batches["data"].target_mask.bool()
    assert torch.allclose(full[:, : half.shape[1]][mask], half[mask], atol=1e-5)
    # One example cannot be split: it is scored on both sources.
    one = make_batch(tok, sources[:1], targets[:1], arch, 32, 16)
    assert all(part is one for part in split_for_two_sources(one))


@pytest.mark.parametrize("normalize", ["sequence", "token"])
@pytest.mark.parametrize("method,k", [("llmr", 1), ("llmr-mean", 1), ("llmr-minvar", 1), ("ketchup", 3)])
def test_rl_loss_uses_the_teacher_returns_with_its_k(method, k, normalize, tok):
    student, teacher = models("seq2seq", tok)
    rl = {**RL_DEFAULTS, "rollout": "greedy", "rollout_dropout": False, "token_weight": "one", "clip": 1e9,
          "normalize": normalize}
    objective = Objective(method, "seq2seq", tok, teacher=teacher, max_new_tokens=8, rl=rl, k=3)
    batch = make_batch(tok, SOURCES, TARGETS, "seq2seq", 32, 16)
    rollout = objective.rollout(student, batch)["student"]
    assert torch.equal(rollout.target_ids, generate(student, "seq2seq", batch, tok, 8).target_ids)  # greedy
    per_token, mask, stats = objective.loss(student, {"student": rollout})
    q, v = objectives.induced_values(target_logits(teacher, "seq2seq", rollout), rollout.target_ids,
                                     rollout.target_mask)
    returns = objectives.kstep_returns(q, v, rollout.target_mask, k)
    if method == "llmr-mean":  # per sequence (rl.baseline_scope's default)
        advantage = returns - ((returns * mask).sum(1) / mask.sum(1))[:, None]
    elif method == "llmr-minvar":
        logits = target_logits(student, "seq2seq", rollout)
        advantage = returns - objectives.minvar_baseline(logits, rollout.target_ids, returns, mask)
    else:
        advantage = returns
    logp = torch.log_softmax(target_logits(student, "seq2seq", rollout), -1).gather(
        -1, rollout.target_ids.unsqueeze(-1)).squeeze(-1)
    row_scale = 1 / mask.sum(1, keepdim=True) if normalize == "sequence" else 1.0  # the loop divides by #seqs
    assert torch.allclose(per_token, -(logp * advantage) * mask * row_scale, atol=1e-4)
    assert objective.units({"student": rollout}) == (len(SOURCES) if normalize == "sequence" else float(mask.sum()))
    assert stats["mean_return"] == pytest.approx(float((returns * mask).sum() / mask.sum()), rel=1e-5)


def test_policy_gradient_is_the_reinforce_estimator_on_a_tiny_model(tok):
    """grad of the loss == -(1/N) sum_t A_t grad log pi(y_t | s_t), each term by its own backward pass."""
    student, teacher = models("seq2seq", tok)
    rl = {**RL_DEFAULTS, "rollout": "greedy", "token_weight": "one", "clip": 1e9, "normalize": "token"}
    objective = Objective("ketchup", "seq2seq", tok, teacher=teacher, max_new_tokens=6, rl=rl, k=2)
    batch = make_batch(tok, SOURCES, TARGETS, "seq2seq", 32, 16)
    rollout = objective.rollout(student, batch)
    per_token, mask, _ = objective.loss(student, rollout)
    (per_token.sum() / mask.sum()).backward()
    loss_grad = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()

    b = rollout["student"]
    q, v = objectives.induced_values(target_logits(teacher, "seq2seq", b), b.target_ids, b.target_mask)
    advantages = objectives.kstep_returns(q, v, b.target_mask, 2)
    n = float(b.target_mask.sum())
    reinforce = [torch.zeros_like(p) for p in student.parameters()]
    for i, t in b.target_mask.nonzero().tolist():
        logp = torch.log_softmax(target_logits(student, "seq2seq", b)[i, t], -1)[b.target_ids[i, t]]
        grads = torch.autograd.grad(logp, list(student.parameters()), allow_unused=True)
        for acc, g in zip(reinforce, grads):
            if g is not None:
                acc -= advantages[i, t] * g / n
    for got, want in zip(loss_grad, reinforce):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def _forward_modes(model) -> list[bool]:
    """Records model.training at every forward call (generate calls forward once per new token)."""
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    return modes


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rollout", ["greedy", "sample"])
@pytest.mark.parametrize("dropout", [True, False])
def test_rl_rollouts_follow_rollout_and_rollout_dropout(arch, rollout, dropout, tok):
    student, teacher = models(arch, tok)
    student.train()  # as the training loop leaves it
    modes = _forward_modes(student)
    rl = {**RL_DEFAULTS, "rollout": rollout, "rollout_dropout": dropout}
    objective = Objective("ketchup", arch, tok, teacher=teacher, max_new_tokens=5, rl=rl, k=2)
    batch = make_batch(tok, SOURCES, TARGETS, arch, 32, 16)
    torch.manual_seed(0)
    got = objective.rollout(student, batch)["student"]
    assert modes and set(modes) == {dropout}  # train mode (dropout on) or eval mode throughout the decode
    assert student.training  # the loop's mode is restored
    torch.manual_seed(0)
    want = generate(student, arch, batch, tok, 5, sample=rollout == "sample", dropout=dropout)
    assert torch.equal(got.target_ids, want.target_ids)


def test_rl_rollout_defaults_are_the_reference(tok):
    assert (RL_DEFAULTS["rollout"], RL_DEFAULTS["rollout_dropout"], RL_DEFAULTS["baseline_scope"]) == \
        ("greedy", True, "sequence")
    student, teacher = models("seq2seq", tok)
    assert student.config.dropout_rate == 0.1  # T5's default, as pretrained T5 (the reference's students)
    student.train()
    modes = _forward_modes(student)
    Objective("llmr", "seq2seq", tok, teacher=teacher, max_new_tokens=4, rl={}).rollout(
        student, make_batch(tok, SOURCES, TARGETS, "seq2seq", 32, 16))
    assert set(modes) == {True}


def test_greedy_rollouts_with_dropout_differ_from_eval_mode(tok):
    """Dropout perturbs the greedy path (the reference's rollouts); eval mode is deterministic."""
    spec = {"config": {**ARCHS["seq2seq"], "dropout_rate": 0.5}}
    student = build_model("seq2seq", spec, tok, seed=0)
    batch = make_batch(tok, SOURCES * 4, TARGETS * 4, "seq2seq", 32, 16)
    torch.manual_seed(0)
    eval_runs = [generate(student, "seq2seq", batch, tok, 8).target_ids for _ in range(2)]
    dropout_runs = [generate(student, "seq2seq", batch, tok, 8, dropout=True).target_ids for _ in range(3)]
    assert torch.equal(*eval_runs)
    assert any(not torch.equal(run, eval_runs[0]) for run in dropout_runs)


@pytest.mark.parametrize("arch", ARCHS)
def test_dev_evaluation_and_predictions_decode_in_eval_mode(arch, tok):
    from ketchup.stages import generate_texts

    key = "dropout_rate" if arch == "seq2seq" else "attention_dropout"
    student = build_model(arch, {"config": {**ARCHS[arch], key: 0.5}}, tok, seed=0)
    assert getattr(student.config, key) == 0.5  # the config's dropout reaches the model
    assert not student.training  # built models come in eval mode, as loaded ones
    student.train()  # as the training loop leaves it when it evaluates
    modes = _forward_modes(student)
    gen = {"max_new_tokens": 6, "batch_size": 2, "num_beams": 1}
    first = generate_texts(student, tok, arch, SOURCES, gen, 32)
    assert modes and set(modes) == {False} and student.training
    assert generate_texts(student, tok, arch, SOURCES, gen, 32) == first
