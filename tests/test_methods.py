"""The methods' wiring on tiny real models: alignment, masks, teacher isolation, the RL gradient."""

from __future__ import annotations

import pytest
import torch

from ketchup import objectives, registry
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
METHODS = ["sft", "seqkd", "kl", "js", "tvd", "llmr", "llmr-mean", "llmr-minvar", "ketchup", "gkd", "rkl", "skl", "srkl"]


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


# --- PPO (ketchup-ppo, llmr-ppo) ------------------------------------------------------------------

def _no_dropout(arch, tok, seed):
    config = {**ARCHS[arch], **({"dropout_rate": 0.0} if arch == "seq2seq" else {"attention_dropout": 0.0})}
    return build_model(arch, {"config": config}, tok, seed=seed).train()


def _step_grad(student, objective, micro):
    """The gradient of one optimizer update over ``micro``, normalised as the loop does (one process)."""
    student.zero_grad()
    units = sum(objective.units(mb) for mb in micro)
    for mb in micro:
        per_token, _, _ = objective.loss(student, mb)
        (per_token.sum() / units).backward()
    return [p.grad.clone() for p in student.parameters()]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,k", [("ketchup", 3), ("llmr", 1)])
@pytest.mark.parametrize("normalize", ["sequence", "token"])
def test_ppo_with_one_pass_and_one_minibatch_is_its_method(arch, method, k, normalize, tok):
    """With dropout 0, pi_old is pi_theta on the first update: one pass in one minibatch gives the
    gradient of the method without PPO on the same rollouts (r = 1), under either rl.normalize."""
    student, teacher = _no_dropout(arch, tok, 0), _no_dropout(arch, tok, 1).eval()
    rl = {**RL_DEFAULTS, "rollout": "sample", "normalize": normalize, "ppo_epochs": 1, "ppo_minibatches": 1}
    plain = Objective(method, arch, tok, teacher=teacher, max_new_tokens=6, rl=rl, k=k)
    ppo = Objective(f"{method}-ppo", arch, tok, teacher=teacher, max_new_tokens=6, rl=rl, k=k)
    torch.manual_seed(0)
    micro = [plain.rollout(student, make_batch(tok, s, t, arch, 32, 16))
             for s, t in ((SOURCES, TARGETS), (SOURCES[::-1], TARGETS[::-1]))]
    updates, stats = ppo.updates(student, micro, seed=0, micro_ids=[0, 1])
    assert len(updates) == 1 and stats["rollouts"] == 4.0
    got, want = _step_grad(student, ppo, updates[0]), _step_grad(student, plain, micro)
    assert all(torch.allclose(g, w, atol=1e-7, rtol=1e-5) for g, w in zip(got, want))
    assert sum(float(g.abs().sum()) for g in got) > 0
    _, _, loss_stats = ppo.loss(student, updates[0][0])
    assert loss_stats["mean_ratio"] == pytest.approx(1.0, abs=1e-6) and loss_stats["clip_fraction"] == 0.0


def test_ppo_prepares_each_rollout_batch_once_and_keeps_its_old_log_probs(tok, monkeypatch):
    """Teacher returns, log pi_old and the advantages are taken once per micro-batch of rollouts; the
    later updates read them as stored, so after an optimizer step the ratio moves away from 1."""
    student, teacher = _no_dropout("seq2seq", tok, 0), _no_dropout("seq2seq", tok, 1).eval()
    rl = {**RL_DEFAULTS, "rollout": "sample", "ppo_epochs": 3, "ppo_minibatches": 1}
    ppo = Objective("ketchup-ppo", "seq2seq", tok, teacher=teacher, max_new_tokens=6, rl=rl, k=2)
    torch.manual_seed(0)
    micro = [ppo.rollout(student, make_batch(tok, SOURCES, TARGETS, "seq2seq", 32, 16))]
    calls = []
    prepare = Objective.prepare
    monkeypatch.setattr(Objective, "prepare", lambda self, *a: calls.append(1) or prepare(self, *a))
    updates, _ = ppo.updates(student, micro, seed=0, micro_ids=[0])
    assert len(calls) == 1 and len(updates) == 3
    stored = updates[0][0]["ppo"].old_logp.clone()
    optimizer = torch.optim.SGD(student.parameters(), lr=1.0)
    ratios = []
    for update in updates:
        optimizer.zero_grad()
        per_token, _, stats = ppo.loss(student, update[0])
        (per_token.sum() / ppo.units(update[0])).backward()
        optimizer.step()
        ratios.append(stats["mean_ratio"])
        assert torch.equal(update[0]["ppo"].old_logp, stored)
    assert len(calls) == 1
    assert ratios[0] == pytest.approx(1.0, abs=1e-6) and abs(ratios[1] - 1.0) > 1e-3


def test_ppo_deals_every_rollout_once_per_pass_seeded_by_the_micro_batch(tok, monkeypatch):
    from ketchup import methods

    student, teacher = _no_dropout("seq2seq", tok, 0), _no_dropout("seq2seq", tok, 1).eval()
    rl = {**RL_DEFAULTS, "ppo_epochs": 2, "ppo_minibatches": 3}
    ppo = Objective("llmr-ppo", "seq2seq", tok, teacher=teacher, max_new_tokens=4, rl=rl)
    micro = [ppo.rollout(student, make_batch(tok, SOURCES * 4, TARGETS * 4, "seq2seq", 32, 16))]  # 8 rows
    dealt = []
    rows = methods.Prepared.rows
    monkeypatch.setattr(methods.Prepared, "rows", lambda self, index: dealt.append(index.tolist()) or rows(self, index))

    def deal(step):
        dealt.clear()
        updates, _ = ppo.updates(student, micro, seed=0, micro_ids=[step])
        assert len(updates) == 6
        return [list(d) for d in dealt]

    first = deal(0)
    for epoch in (first[:3], first[3:]):
        assert sorted(i for part in epoch for i in part) == list(range(8))  # each row once per pass
        assert [len(p) for p in epoch] == [3, 3, 2] and all(p == sorted(p) for p in epoch)
    assert first[:3] != first[3:]  # dealt anew each pass
    assert deal(0) == first and deal(1) != first  # a resumed step deals the same


def test_ppo_part_without_rows_weighs_nothing(tok):
    """A micro-batch of 2 rollouts in 3 minibatches: the third update's stand-in row has no tokens and no gradient."""
    student, teacher = _no_dropout("seq2seq", tok, 0), _no_dropout("seq2seq", tok, 1).eval()
    ppo = Objective("llmr-ppo", "seq2seq", tok, teacher=teacher, max_new_tokens=4,
                    rl={**RL_DEFAULTS, "ppo_epochs": 1, "ppo_minibatches": 3})
    micro = [ppo.rollout(student, make_batch(tok, SOURCES, TARGETS, "seq2seq", 32, 16))]
    updates, _ = ppo.updates(student, micro, seed=0, micro_ids=[0])
    scales = [u[0]["ppo"].scale for u in updates]
    assert scales == [1.0, 1.0, 0.0]
    empty = updates[2][0]
    assert ppo.units(empty) == 0.0 and ppo.real_tokens(empty) == 0.0
    assert ppo.units(updates[0][0]) == 1.0  # one sequence (rl.normalize: sequence)
    student.zero_grad()
    per_token, _, _ = ppo.loss(student, empty)
    per_token.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in student.parameters())


# --- beyond the paper: gkd, rkl, skl, srkl ---------------------------------------------------------

SOURCES4 = SOURCES + ["De hond ziet een kat.", "The cat sits."]
TARGETS4 = TARGETS + ["The dog sees a cat and a long story follows", "1"]


def test_source_rows_split_a_share_of_rows_to_the_student():
    assert registry.source_rows(4, 0.5) == (2, 2) and registry.source_rows(5, 0.5) == (3, 2)  # js, tvd
    assert registry.source_rows(8, 0.25) == (6, 2) and registry.source_rows(100, 0.29) == (71, 29)
    assert registry.source_rows(4, 0.0) == (4, 0) and registry.source_rows(4, 1.0) == (0, 4)
    assert registry.source_rows(1, 0.5) == (1, 1) and registry.source_rows(4, 0.1) == (4, 4)  # both, all rows
    assert registry.student_share("gkd", {"lambda": 0.3}) == 0.3 and registry.student_share("rkl", {}) == 1.0
    assert registry.student_share("skl", {"alpha": 0.1}) == 0.0 and registry.student_share("js", {}) == 0.5


def _two_sources(objective, student, teacher, arch, batches):
    """The loss the step takes (sum / tokens), recomputed source by source from the objectives."""
    parts = {}
    for name, b in batches.items():
        values = objective_values(objective, target_logits(student, arch, b), target_logits(teacher, arch, b), b)
        parts[name] = float(values.detach().sum() / b.target_mask.sum())
    return parts


def objective_values(objective, s, t, b):
    d = objective.divergence
    return {"gkd": lambda: objectives.generalized_jsd(s, t, b.target_mask, d["beta"]),
            "rkl": lambda: objectives.generalized_jsd(s, t, b.target_mask, 1.0),
            "skl": lambda: objectives.skew_kl(s, t, b.target_mask, d["alpha"]),
            "srkl": lambda: objectives.skew_reverse_kl(s, t, b.target_mask, d["alpha"])}[objective.method]()


@pytest.mark.parametrize("arch", ARCHS)
def test_gkd_at_beta_and_lambda_one_half_is_js(arch, tok):
    student, teacher = models(arch, tok)
    batch = make_batch(tok, SOURCES4, TARGETS4, arch, 32, 16)
    losses = {}
    for method, divergence in (("js", {}), ("gkd", {"beta": 0.5, "lambda": 0.5})):
        objective = Objective(method, arch, tok, teacher=teacher, max_new_tokens=6, rl=RL_DEFAULTS,
                              divergence=divergence)
        torch.manual_seed(0)
        batches = objective.rollout(student, batch)
        per_token, mask, _ = objective.loss(student, batches)
        losses[method] = per_token.detach().sum() / mask.sum()
        assert sorted(batches) == ["data", "student"] and batches["data"].target_ids.shape[0] == 2
    torch.testing.assert_close(losses["gkd"], losses["js"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,divergence,sources", [
    ("gkd", {"beta": 0.9, "lambda": 0.25}, {"data": 3, "student": 1}),
    ("gkd", {"beta": 0.1, "lambda": 0.0}, {"data": 4}),
    ("gkd", {"beta": 0.5, "lambda": 1.0}, {"student": 4}),
    ("rkl", {}, {"student": 4}),
    ("skl", {"alpha": 0.1}, {"data": 4}),
    ("srkl", {"alpha": 0.2}, {"data": 4}),
])
def test_beyond_methods_train_on_their_sources_with_their_weights(arch, method, divergence, sources, tok):
    student, teacher = models(arch, tok)
    batch = make_batch(tok, SOURCES4, TARGETS4, arch, 32, 16)
    objective = Objective(method, arch, tok, teacher=teacher, max_new_tokens=6, rl=RL_DEFAULTS, divergence=divergence)
    torch.manual_seed(0)
    batches = objective.rollout(student, batch)
    assert {name: b.target_ids.shape[0] for name, b in batches.items()} == sources
    if "data" in batches:  # the teacher's outputs of the first rows, as given
        want = make_batch(tok, SOURCES4[:sources["data"]], TARGETS4[:sources["data"]], arch, 32, 16)
        assert torch.equal(batches["data"].target_ids, want.target_ids)
    if "student" in batches:  # the student's samples for the sources of the last rows
        want = make_batch(tok, SOURCES4[4 - sources["student"]:], None, arch, 32, 16)
        assert torch.equal(batches["student"].input_ids, want.input_ids)
    per_token, mask, _ = objective.loss(student, batches)
    parts = _two_sources(objective, student, teacher, arch, batches)
    share = registry.student_share(method, objective.divergence)
    weights = {"data": 1.0 - share, "student": share} if len(parts) == 2 else {name: 1.0 for name in parts}
    expected = sum(weights[name] * value for name, value in parts.items())
    assert float(per_token.detach().sum() / mask.sum()) == pytest.approx(expected, rel=1e-5)


def _loop_step(model, objective, update, optimizer, scheduler):
    from accelerate import Accelerator

    from ketchup.config import OPTIM_DEFAULTS
    from ketchup.training import _optimizer_step

    return _optimizer_step(Accelerator(cpu=True), model, optimizer, scheduler, objective, update,
                           {**OPTIM_DEFAULTS, "max_grad_norm": None})


def test_ppo_update_of_stand_in_rows_only_is_skipped(tok):
    """A micro-batch of 2 rollouts in 3 minibatches, one process, no accumulation: the third update has
    only the stand-in row. It makes no optimizer step (AdamW would move the weights on its momentum and
    weight decay) and no scheduler step."""
    student, teacher = _no_dropout("seq2seq", tok, 0), _no_dropout("seq2seq", tok, 1).eval()
    ppo = Objective("llmr-ppo", "seq2seq", tok, teacher=teacher, max_new_tokens=4,
                    rl={**RL_DEFAULTS, "ppo_epochs": 1, "ppo_minibatches": 3})
    micro = [ppo.rollout(student, make_batch(tok, SOURCES, TARGETS, "seq2seq", 32, 16))]
    updates, _ = ppo.updates(student, micro, seed=0, micro_ids=[0])
    assert [u[0]["ppo"].scale for u in updates] == [1.0, 1.0, 0.0]
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    assert all(_loop_step(student, ppo, u, optimizer, scheduler) is not None for u in updates[:2])
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    steps = scheduler.last_epoch
    assert _loop_step(student, ppo, updates[2], optimizer, scheduler) is None
    assert scheduler.last_epoch == steps
    for name, p in student.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_step_statistics_weigh_micro_batches_by_their_real_rows(tok):
    """Two micro-batches of 3 and 1 rollouts: the logged statistics are the rows' mean (3:1), not the
    micro-batches' mean; a PPO stand-in row weighs nothing."""
    student, teacher = _no_dropout("seq2seq", tok, 0), _no_dropout("seq2seq", tok, 1).eval()
    sources, targets = SOURCES * 2, TARGETS * 2
    rl = {**RL_DEFAULTS, "rollout": "sample"}
    torch.manual_seed(0)
    ketchup = Objective("ketchup", "seq2seq", tok, teacher=teacher, max_new_tokens=6, rl=rl, k=2)
    micro = [ketchup.rollout(student, make_batch(tok, sources[:3], targets[:3], "seq2seq", 32, 16)),
             ketchup.rollout(student, make_batch(tok, sources[3:], targets[3:], "seq2seq", 32, 16))]
    alone = [ketchup.loss(student, mb)[2] for mb in micro]
    assert alone[0]["mean_entropy"] != pytest.approx(alone[1]["mean_entropy"], rel=1e-3)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    _, stats = _loop_step(student, ketchup, micro, optimizer, scheduler)
    for key in alone[0]:
        assert stats[key] == pytest.approx((3 * alone[0][key] + alone[1][key]) / 4, rel=1e-6, abs=1e-9), key

    # PPO: 4 and 2 rollouts in 3 minibatches; the third update is one real row and one stand-in row.
    ppo = Objective("ketchup-ppo", "seq2seq", tok, teacher=teacher, max_new_tokens=6,
                    rl={**rl, "ppo_epochs": 1, "ppo_minibatches": 3}, k=2)
    micro = [ppo.rollout(student, make_batch(tok, SOURCES * 2, TARGETS * 2, "seq2seq", 32, 16)),
             ppo.rollout(student, make_batch(tok, SOURCES, TARGETS, "seq2seq", 32, 16))]
    updates, _ = ppo.updates(student, micro, seed=0, micro_ids=[0, 1])
    last = updates[2]
    assert [mb["ppo"].scale for mb in last] == [1.0, 0.0] and ppo.real_rows(last[0]) == 1.0
    assert ppo.real_rows(last[1]) == 0.0
    real = ppo.loss(student, last[0])[2]
    stand_in = ppo.loss(student, last[1])[2]
    assert real["mean_entropy"] != pytest.approx(stand_in["mean_entropy"], rel=1e-3)
    _, stats = _loop_step(student, ppo, last, optimizer, scheduler)
    assert stats == pytest.approx(real, rel=1e-6, abs=1e-9)


def test_ppo_log_keeps_the_rollout_policys_entropy():
    """A PPO step logs the rollout batch's mean_entropy (pi_old, Objective.updates) as it is, and the
    updates' own (pi_theta) as update_mean_entropy: neither overwrites the other."""
    from ketchup.training import _step_row

    batch = {"mean_entropy": 0.75, "mean_return": 0.25, "rollouts": 4.0}
    update = lambda h, kl: ({"loss": 1.0, "tokens": 8.0, "grad_norm": 0.5, "lr": 1e-3},  # noqa: E731
                            {"mean_entropy": h, "approx_kl": kl, "clip_fraction": 0.0})
    row, stats = _step_row([update(1.0, 0.0), update(2.0, 0.2)], batch, several=True)
    assert (stats["mean_entropy"], stats["update_mean_entropy"], stats["approx_kl"], stats["approx_kl_last"]) == \
        (0.75, 1.5, 0.1, 0.2)
    assert row["updates"] == 2 and stats["mean_return"] == 0.25 and stats["rollouts"] == 4.0
    _, stats = _step_row([update(3.0, 0.0)], batch)  # one pass, one minibatch
    assert (stats["mean_entropy"], stats["update_mean_entropy"]) == (0.75, 3.0)


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_teacher_dtype_is_never_float16(monkeypatch, bf16, expected):
    """teacher.dtype auto on a GPU: bf16 where it has it, else float32 (T5 overflows in fp16)."""
    from ketchup import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert runtime.teacher_dtype("auto") == expected
