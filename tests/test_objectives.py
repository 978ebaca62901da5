"""Tests for ketchup.objectives: every value checked against an independent formulation."""

import math

import pytest
import torch
import torch.nn.functional as F

from ketchup import objectives
from ketchup.objectives import (
    cross_entropy,
    induced_values,
    kstep_returns,
    minvar_baseline,
    one_step_rewards,
    policy_gradient_loss,
    score_norms,
    token_divergence,
)

KINDS = ("kl", "js", "tvd")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _right_padded_mask(lengths, time):
    return torch.arange(time)[None, :] < torch.tensor(lengths)[:, None]


# ------------------------------------------------------------------------------------------------
# divergences
# ------------------------------------------------------------------------------------------------


def _reference_divergence(student, teacher, kind):
    """Float64 reference from explicit probabilities and direct sums, one position at a time."""
    vocab = min(student.shape[-1], teacher.shape[-1])
    log_q = torch.log_softmax(student[..., :vocab].double(), -1)
    log_p = torch.log_softmax(teacher[..., :vocab].double(), -1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "kl":
        terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
        return terms.sum(-1)
    if kind == "js":
        mix = (p + q) / 2  # mixture of probabilities
        with torch.no_grad():
            log_mix = torch.log(mix)
        kl_pm = torch.where(p > 0, p * (log_p - log_mix), torch.zeros_like(p)).sum(-1)
        kl_qm = torch.where(q > 0, q * (log_q - log_mix), torch.zeros_like(q)).sum(-1)
        return 0.5 * kl_pm + 0.5 * kl_qm
    return 0.5 * (p - q).abs().sum(-1)


def _naive_divergence(student, teacher, kind):
    """Float64, textbook formulas on softmax probabilities (moderate logits only)."""
    p = torch.softmax(teacher.double(), -1)
    q = torch.softmax(student.double(), -1)
    if kind == "kl":
        return (p * torch.log(p / q)).sum(-1)
    if kind == "js":
        m = 0.5 * (p + q)
        return 0.5 * (p * torch.log(p / m)).sum(-1) + 0.5 * (q * torch.log(q / m)).sum(-1)
    return 0.5 * (p - q).abs().sum(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_random_logits_with_padding(kind):
    g = _gen(1)
    student = torch.randn(3, 5, 11, generator=g) * 2
    teacher = torch.randn(3, 5, 11, generator=g) * 2
    mask = _right_padded_mask([5, 3, 1], 5)
    out = token_divergence(student, teacher, kind, mask)
    assert out.shape == (3, 5) and out.dtype == torch.float32
    expected = _naive_divergence(student, teacher, kind) * mask
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(out[~mask] == 0)
    assert torch.all(out[mask] > 0)


def test_kl_matches_torch_kl_div():
    g = _gen(2)
    student = torch.randn(2, 4, 9, generator=g) * 3
    teacher = torch.randn(2, 4, 9, generator=g) * 3
    mask = torch.ones(2, 4, dtype=torch.bool)
    ref = F.kl_div(
        torch.log_softmax(student.double(), -1), torch.log_softmax(teacher.double(), -1),
        reduction="none", log_target=True,
    ).sum(-1)
    torch.testing.assert_close(token_divergence(student, teacher, "kl", mask).double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e3, 1e4])
@pytest.mark.parametrize("kind", KINDS)
def test_divergence_extreme_logits(kind, scale):
    g = _gen(3)
    student = torch.randn(2, 4, 7, generator=g) * scale
    teacher = torch.randn(2, 4, 7, generator=g) * scale
    student[..., 6] = -math.inf  # masked vocabulary entry, in both
    teacher[..., 6] = -math.inf
    teacher[0, 0, 2] = -math.inf  # teacher-only -inf: p = 0 there, still finite
    student[0, 1, :3] = torch.tensor([scale, -scale, 0.0])  # +-scale in one row
    teacher[0, 1, :3] = torch.tensor([-scale, scale, 0.0])
    teacher[1, 2] = student[1, 2]  # p == q at one position
    # near-ties on top of a huge offset: p and q overlap, so JS and TVD are not saturated
    student[1, 0, :6] = scale + torch.tensor([0.0, -1.0, 0.5, -2.0, -2 * scale, -3 * scale])
    teacher[1, 0, :6] = scale + torch.tensor([0.3, 0.0, -1.0, 1.0, -2 * scale, -4 * scale])
    mask = _right_padded_mask([4, 3], 4)
    student.requires_grad_(True)
    out = token_divergence(student, teacher, kind, mask)
    assert torch.isfinite(out).all()
    expected = _reference_divergence(student.detach(), teacher, kind) * mask
    # float32 log_softmax of logits of size `scale` is exact to about scale * 2**-23
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=scale * 1e-6)
    assert out[1, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert 0.01 < expected[1, 0].item() < {"kl": 5.0, "js": 0.6, "tvd": 0.9}[kind]
    out.sum().backward()
    assert torch.isfinite(student.grad).all()
    assert torch.all(student.grad[~mask] == 0)


def test_divergence_student_minus_inf_where_teacher_has_mass():
    # true KL is +inf here; JS and TVD are finite and must still be exact
    student = torch.tensor([[[0.0, -math.inf, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0, 0.0]]])
    mask = torch.ones(1, 1)
    kl = token_divergence(student, teacher, "kl", mask)
    assert torch.isfinite(kl).all() and kl.item() > 1e20
    for kind in ("js", "tvd"):
        out = token_divergence(student, teacher, kind, mask)
        torch.testing.assert_close(out.double(), _reference_divergence(student, teacher, kind), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_bounds_and_identity(kind):
    g = _gen(4)
    student = torch.randn(4, 6, 5, generator=g) * torch.tensor([0.1, 1.0, 10.0, 100.0])[:, None, None]
    teacher = torch.randn(4, 6, 5, generator=g) * 5
    teacher[:, 0] = student[:, 0]  # p == q
    teacher[:, 1] = student[:, 1] + 7.0  # p == q (shift invariance)
    mask = torch.ones(4, 6)
    out = token_divergence(student, teacher, kind, mask)
    assert torch.all(out >= -1e-6)
    assert torch.all(out[:, :2].abs() < 1e-5)
    if kind == "js":
        assert torch.all(out <= math.log(2) + 1e-6)
        # disjoint supports reach the bound ln 2
        far = token_divergence(torch.tensor([[[50.0, -50.0]]]), torch.tensor([[[-50.0, 50.0]]]), "js", torch.ones(1, 1))
        assert far.item() == pytest.approx(math.log(2), abs=1e-5)
    if kind == "tvd":
        assert torch.all(out <= 1 + 1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_masked_positions_are_zero_and_never_read(kind):
    g = _gen(5)
    student = torch.randn(2, 3, 4, generator=g)
    teacher = torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    student[mask == 0] = math.nan  # garbage at padding must not leak
    teacher[mask == 0] = math.inf
    student.requires_grad_(True)
    out = token_divergence(student, teacher, kind, mask)
    assert torch.all(out[mask == 0] == 0)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.all(student.grad[mask == 0] == 0)
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_unequal_vocab_sizes(kind):
    g = _gen(6)
    student = torch.randn(2, 3, 8, generator=g)
    teacher = torch.randn(2, 3, 6, generator=g)
    mask = torch.ones(2, 3)
    expected = _naive_divergence(student[..., :6], teacher, kind)
    torch.testing.assert_close(token_divergence(student, teacher, kind, mask).double(), expected, rtol=1e-5, atol=1e-6)
    expected = _naive_divergence(teacher, student[..., :6], kind)
    torch.testing.assert_close(token_divergence(teacher, student, kind, mask).double(), expected, rtol=1e-5, atol=1e-6)


def test_divergence_hand_computed():
    # two-entry case: teacher p = (1/2, 1/2), student q = (1/4, 3/4)
    #   KL(p||q) = 1/2 ln(0.5/0.25) + 1/2 ln(0.5/0.75) = 1/2 ln(4/3) = 0.143841036
    #   m = (3/8, 5/8); KL(p||m) = 1/2 ln(4/3) + 1/2 ln(4/5) = 1/2 ln(16/15) = 0.032269261
    #                   KL(q||m) = 1/4 ln(2/3) + 3/4 ln(6/5)              = 0.035374891
    #   JS = (0.032269261 + 0.035374891) / 2 = 0.033822076
    #   TVD = 1/2 (1/4 + 1/4) = 0.25
    # three-entry case, logits shifted (softmax is shift invariant):
    #   teacher logits (ln 2, 0, 0) + 5 -> p = (1/2, 1/4, 1/4)
    #   student logits (0, 0, ln 2) - 3 -> q = (1/4, 1/4, 1/2)
    #   KL = 1/2 ln 2 + 0 + 1/4 ln(1/2) = 1/4 ln 2 = 0.173286795
    #   m = (3/8, 1/4, 3/8); by symmetry JS = KL(p||m) = 1/2 ln(4/3) + 1/4 ln(2/3) = 0.042474759
    #   TVD = 1/2 (1/4 + 0 + 1/4) = 0.25
    ln2 = math.log(2.0)
    student = torch.tensor([[[math.log(0.25), math.log(0.75), -math.inf], [-3.0, -3.0, ln2 - 3.0]]])
    teacher = torch.tensor([[[0.0, 0.0, -math.inf], [ln2 + 5.0, 5.0, 5.0]]])
    mask = torch.ones(1, 2)
    expected = {
        "kl": [0.143841036, 0.173286795],
        "js": [0.033822076, 0.042474759],
        "tvd": [0.25, 0.25],
    }
    for kind, values in expected.items():
        out = token_divergence(student, teacher, kind, mask)
        torch.testing.assert_close(out, torch.tensor([values]), rtol=0, atol=2e-7)


def test_divergence_gradient_reaches_student_only_through_student():
    student = torch.randn(1, 2, 4, generator=_gen(7), requires_grad=True)
    teacher = torch.randn(1, 2, 4, generator=_gen(8))
    token_divergence(student, teacher, "kl", torch.ones(1, 2)).sum().backward()
    # d KL(p||q) / d student_logits = q - p
    expected = torch.softmax(student.detach(), -1) - torch.softmax(teacher, -1)
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-6)


def test_divergence_low_precision_input_is_computed_in_float32():
    g = _gen(9)
    student = (torch.randn(2, 3, 6, generator=g) * 4).bfloat16()
    teacher = (torch.randn(2, 3, 6, generator=g) * 4).bfloat16()
    mask = torch.ones(2, 3)
    for kind in KINDS:
        out = token_divergence(student, teacher, kind, mask)
        assert out.dtype == torch.float32
        expected = _naive_divergence(student.float(), teacher.float(), kind)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_divergence_unknown_kind_names_allowed():
    x = torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match="kl, js, tvd"):
        token_divergence(x, x, "reverse_kl", torch.ones(1, 1))


# ------------------------------------------------------------------------------------------------
# induced values
# ------------------------------------------------------------------------------------------------


def test_induced_values_hand_example():
    # logits (1, 2, 6): mean 3, Q = (-2, -1, 3); V(max) = 3
    # V(expectation) = sum softmax(1,2,6) * (-2,-1,3)
    #   = (-2 e + -1 e^2 + 3 e^6) / (e + e^2 + e^6) = 2.895661757
    # logits (0, 4, 8): mean 4, Q = (-4, 0, 4)
    teacher = torch.tensor([[[1.0, 2.0, 6.0], [0.0, 4.0, 8.0], [9.0, 9.0, 9.0]]], requires_grad=True)
    tokens = torch.tensor([[0, 1, -100]])  # -100 at padding must not be read
    mask = torch.tensor([[1, 1, 0]])
    q, v = induced_values(teacher, tokens, mask)
    torch.testing.assert_close(q, torch.tensor([[-2.0, 0.0, 0.0]]))
    torch.testing.assert_close(v, torch.tensor([[3.0, 4.0, 0.0]]))
    assert not q.requires_grad and not v.requires_grad
    assert q.dtype == v.dtype == torch.float32
    e1 = math.exp(-4) * -4 + 0 + math.exp(4) * 4
    e1 /= math.exp(-4) + 1 + math.exp(4)
    q2, v2 = induced_values(teacher, tokens, mask, value="expectation")
    torch.testing.assert_close(q2, q)
    torch.testing.assert_close(v2, torch.tensor([[2.895661757, e1, 0.0]]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="max, expectation"):
        induced_values(teacher, tokens, mask, value="mean")


def test_induced_values_masked_vocab_entries():
    # a -inf entry is absent: same Q as logits (1, 2, 6) alone; its token gets min Q = -2
    teacher = torch.tensor([[[1.0, 2.0, 6.0, -math.inf]] * 2])
    tokens = torch.tensor([[3, 2]])
    mask = torch.ones(1, 2)
    for value, v_expected in (("max", 3.0), ("expectation", 2.895661757)):
        q, v = induced_values(teacher, tokens, mask, value=value)
        torch.testing.assert_close(q, torch.tensor([[-2.0, 3.0]]))
        torch.testing.assert_close(v, torch.tensor([[v_expected] * 2]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_induced_values_refuse_nan_and_plus_inf_logits(bad):
    """A teacher that overflowed (T5 in fp16) gives NaN or +inf logits: refused, naming the problem,
    instead of NaN rewards; at a padding position they are never read."""
    teacher = torch.tensor([[[1.0, 2.0, 6.0], [0.0, 1.0, 2.0]]])
    tokens = torch.tensor([[2, 1]])
    teacher[0, 1, 0] = bad
    with pytest.raises(ValueError, match="NaN .* or \\+inf .*teacher.dtype"):
        induced_values(teacher, tokens, torch.ones(1, 2))
    q, v = induced_values(teacher, tokens, torch.tensor([[1, 0]]))
    torch.testing.assert_close(q, torch.tensor([[3.0, 0.0]]))
    assert torch.isfinite(v).all()


def test_induced_values_random_against_direct_formula():
    g = _gen(10)
    teacher = torch.randn(3, 4, 9, generator=g) * 1e3
    tokens = torch.randint(0, 9, (3, 4), generator=g)
    mask = _right_padded_mask([4, 2, 0], 4)
    q, v = induced_values(teacher, tokens, mask)
    big_q = teacher.double() - teacher.double().mean(-1, keepdim=True)
    q_ref = big_q.gather(-1, tokens[..., None]).squeeze(-1) * mask
    v_ref = big_q.amax(-1) * mask
    torch.testing.assert_close(q.double(), q_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(v.double(), v_ref, rtol=1e-5, atol=1e-3)
    _, v_exp = induced_values(teacher, tokens, mask, value="expectation")
    v_exp_ref = (torch.softmax(big_q, -1) * big_q).sum(-1) * mask
    torch.testing.assert_close(v_exp.double(), v_exp_ref, rtol=1e-5, atol=1e-3)
    assert torch.all(v >= v_exp - 1e-3)  # max >= expectation


# ------------------------------------------------------------------------------------------------
# rewards and K-step returns
# ------------------------------------------------------------------------------------------------


def _literal_returns(q, v, n, k):
    """docs/math.md's recursion ('K-step returns'), literally, for one unpadded row of length n (Python floats)."""
    g = [0.0] * n
    if n == 0:
        return g
    g[n - 1] = q[n - 1]
    for t in range(n - 2, -1, -1):
        j = min(t + k, n - 1)
        g[t] = (q[t] - v[j]) + g[j]
    return g


def test_one_step_rewards_hand():
    # n = 3: r = (q0 - V1, q1 - V2, q2) = (1 - 20, 2 - 30, 3)
    q = torch.tensor([[1.0, 2.0, 3.0, 99.0], [5.0, 7.0, 99.0, 99.0]])
    v = torch.tensor([[10.0, 20.0, 30.0, 99.0], [50.0, 70.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    expected = torch.tensor([[-19.0, -28.0, 3.0, 0.0], [5.0 - 70.0, 7.0, 0.0, 0.0]])
    torch.testing.assert_close(one_step_rewards(q, v, mask), expected)


def test_kstep_worked_example_n8_k2():
    # q_i = 2^i, V_i = 2^(i+8): every partial sum is an exact float32 integer with a unique pattern
    q = torch.tensor([[2.0**i for i in range(8)]])
    v = torch.tensor([[2.0 ** (i + 8) for i in range(8)]])
    Q = [2**i for i in range(8)]
    V = [2 ** (i + 8) for i in range(8)]
    g = kstep_returns(q, v, torch.ones(1, 8), 2)[0].tolist()
    assert g[0] == Q[0] + Q[2] + Q[4] + Q[6] + Q[7] - V[2] - V[4] - V[6] - V[7]
    assert g[1] == Q[1] + Q[3] + Q[5] + Q[7] - V[3] - V[5] - V[7]
    assert g[2] == Q[2] + Q[4] + Q[6] + Q[7] - V[4] - V[6] - V[7]
    assert g[3] == Q[3] + Q[5] + Q[7] - V[5] - V[7]
    assert g[4] == Q[4] + Q[6] + Q[7] - V[6] - V[7]
    assert g[5] == Q[5] + Q[7] - V[7]
    assert g[6] == Q[6] + Q[7] - V[7]
    assert g[7] == Q[7]
    assert g == _literal_returns(Q, V, 8, 2)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 9])
def test_kstep_random_padded_batch_against_literal_reference(k):
    g = _gen(11 + k)
    lengths = [7, 1, 4, 0, 5]
    time = 7
    q = torch.randn(5, time, generator=g)
    v = torch.randn(5, time, generator=g)
    mask = _right_padded_mask(lengths, time)
    q[~mask] = 1e6  # garbage at padding must not leak
    v[~mask] = -1e6
    out = kstep_returns(q, v, mask, k)
    assert out.shape == (5, time) and out.dtype == torch.float32
    for row, n in enumerate(lengths):
        expected = _literal_returns(q[row].tolist(), v[row].tolist(), n, k) + [0.0] * (time - n)
        torch.testing.assert_close(out[row], torch.tensor(expected), rtol=1e-5, atol=1e-5)
        # the same row alone, unpadded, gives the same numbers
        if n:
            alone = kstep_returns(q[row : row + 1, :n], v[row : row + 1, :n], torch.ones(1, n), k)
            torch.testing.assert_close(out[row, :n], alone[0], rtol=1e-6, atol=1e-6)


def test_kstep_k1_is_reward_to_go_of_one_step_rewards():
    g = _gen(20)
    q = torch.randn(3, 6, generator=g)
    v = torch.randn(3, 6, generator=g)
    mask = _right_padded_mask([6, 4, 2], 6)
    r = one_step_rewards(q, v, mask)
    reward_to_go = r.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(kstep_returns(q, v, mask, 1), reward_to_go, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [5, 6, 100, 10**12])
def test_kstep_large_k_closed_form(k):
    g = _gen(21)
    q = torch.randn(2, 6, generator=g)
    v = torch.randn(2, 6, generator=g)
    lengths = [6, 4]
    mask = _right_padded_mask(lengths, 6)
    out = kstep_returns(q, v, mask, k)
    for row, n in enumerate(lengths):
        for t in range(n - 1):  # G_t = q_t - V_{n-1} + q_{n-1}
            assert out[row, t].item() == pytest.approx((q[row, t] - v[row, n - 1] + q[row, n - 1]).item(), abs=1e-6)
        assert out[row, n - 1].item() == pytest.approx(q[row, n - 1].item())
        assert torch.all(out[row, n:] == 0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_kstep_invalid_k_raises(bad):
    with pytest.raises(ValueError):
        kstep_returns(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), bad)


def test_rewards_reject_left_padded_mask():
    with pytest.raises(ValueError, match="right-padded"):
        kstep_returns(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[0, 1, 1]]), 2)
    with pytest.raises(ValueError, match="right-padded"):
        one_step_rewards(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[1, 0, 1]]))


# ------------------------------------------------------------------------------------------------
# policy-gradient loss
# ------------------------------------------------------------------------------------------------


def _pg_case():
    # position 0: logits (0, 0) -> pi = (1/2, 1/2), token 0, G = 4
    # position 1: logits (ln 3, 0) -> pi = (3/4, 1/4), token 1, G = -2
    # position 2: padding (token -100, garbage return)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]], requires_grad=True)
    tokens = torch.tensor([[0, 1, -100]])
    returns = torch.tensor([[4.0, -2.0, 1e9]])
    mask = torch.tensor([[1, 1, 0]])
    return logits, tokens, returns, mask


def test_policy_gradient_hand_case():
    logits, tokens, returns, mask = _pg_case()
    ln2 = math.log(2.0)
    # prob weight: A0 = 1/2 * 4 = 2, A1 = 1/4 * -2 = -1/2
    #   loss0 = -ln(1/2) * 2 = 2 ln 2;  loss1 = -ln(1/4) * (-1/2) = -ln 2
    loss, stats = policy_gradient_loss(logits, tokens, returns, mask)
    torch.testing.assert_close(loss, torch.tensor([[2 * ln2, -ln2, 0.0]]))
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.562335145
    assert stats["mean_return"] == pytest.approx(1.0)  # (4 - 2) / 2
    assert stats["mean_advantage"] == pytest.approx(0.75)  # (2 - 0.5) / 2
    assert stats["advantage_std"] == pytest.approx(1.25)  # population std of (2, -0.5)
    assert stats["mean_entropy"] == pytest.approx((ln2 + h1) / 2)
    assert all(isinstance(x, float) for x in stats.values())
    # weight one, denom 2: A0 = 4 / 2 = 2, A1 = -2 / 2 = -1: loss1 = -ln(1/4) * -1 = -2 ln 2
    loss, _ = policy_gradient_loss(logits, tokens, returns, mask, token_weight="one", denom=2.0)
    torch.testing.assert_close(loss, torch.tensor([[2 * ln2, -2 * ln2, 0.0]]))
    # entropy bonus 0.1: subtract 0.1 * H_t
    loss, _ = policy_gradient_loss(logits, tokens, returns, mask, entropy_coef=0.1)
    torch.testing.assert_close(loss, torch.tensor([[2 * ln2 - 0.1 * ln2, -ln2 - 0.1 * h1, 0.0]]))


def test_policy_gradient_clip():
    logits, tokens, _, mask = _pg_case()
    returns = torch.tensor([[1e4, -1e4, 0.0]])
    loss, stats = policy_gradient_loss(logits, tokens, returns, mask, token_weight="one", clip=3.0)
    # A = (3, -3): loss0 = ln 2 * 3, loss1 = ln(1/4) * 3
    torch.testing.assert_close(loss, torch.tensor([[3 * math.log(2.0), 3 * math.log(0.25), 0.0]]))
    assert stats["mean_advantage"] == pytest.approx(0.0)
    assert stats["advantage_std"] == pytest.approx(3.0)
    loss, _ = policy_gradient_loss(logits, tokens, returns, mask, token_weight="one", clip=None)
    assert loss[0, 0].item() == pytest.approx(1e4 * math.log(2.0))


def test_policy_gradient_mean_baseline_centres_advantages():
    g = _gen(30)
    logits = torch.randn(3, 5, 6, generator=g)
    tokens = torch.randint(0, 6, (3, 5), generator=g)
    returns = torch.randn(3, 5, generator=g) * 3 + 2
    mask = _right_padded_mask([5, 2, 3], 5)
    returns[~mask] = 1e6  # must not enter the batch mean
    loss, stats = policy_gradient_loss(logits, tokens, returns, mask, token_weight="one", baseline="mean",
                                       baseline_scope="batch")
    logp = torch.log_softmax(logits.double(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    adv = -loss.double()[mask] / logp[mask]  # loss_t = -logp_t A_t
    assert adv.mean().item() == pytest.approx(0.0, abs=1e-5)
    expected = returns[mask].double() - returns[mask].double().mean()
    torch.testing.assert_close(adv, expected, rtol=1e-4, atol=1e-4)
    assert stats["mean_advantage"] == pytest.approx(0.0, abs=1e-5)
    assert stats["mean_return"] == pytest.approx(returns[mask].mean().item(), rel=1e-5)

    # Per sequence (the default, the reference's batch of one): each row's advantages are centred alone.
    loss, _ = policy_gradient_loss(logits, tokens, returns, mask, token_weight="one", baseline="mean")
    adv = torch.zeros(3, 5, dtype=torch.float64)
    adv[mask] = -loss.double()[mask] / logp[mask]
    for i, n in enumerate([5, 2, 3]):
        r = returns[i, :n].double()
        torch.testing.assert_close(adv[i, :n], r - r.mean(), rtol=1e-4, atol=1e-4)


def test_policy_gradient_mean_baseline_hand_case():
    logits, tokens, returns, mask = _pg_case()
    # weight one: A = (4, -2), mean 1 -> (3, -3); loss0 = -ln(1/2) * 3, loss1 = -ln(1/4) * -3
    loss, stats = policy_gradient_loss(logits, tokens, returns, mask, token_weight="one", baseline="mean")
    torch.testing.assert_close(loss, torch.tensor([[3 * math.log(2.0), -6 * math.log(2.0), 0.0]]))
    assert stats["mean_advantage"] == pytest.approx(0.0)


def _score_norms_by_autograd(logits, tokens, mask):
    """c_t = ||d log softmax(z_t)[y_t] / d z_t||^2, each position by its own autograd call (float64)."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for i, t in mask.nonzero().tolist():
        z = logits[i, t].detach().double().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.log_softmax(z, -1)[tokens[i, t]], z)
        out[i, t] = (grad ** 2).sum()
    return out


def test_score_norms_hand_case_and_autograd():
    logits, tokens, _, mask = _pg_case()
    # pi = (1/2, 1/2), y = 0: 1 - 1 + 1/2 = 1/2;  pi = (3/4, 1/4), y = 1: 1 - 1/2 + 10/16 = 9/8
    torch.testing.assert_close(score_norms(logits, tokens, mask), torch.tensor([[0.5, 1.125, 0.0]]))
    g = _gen(33)
    logits = torch.randn(3, 4, 7, generator=g) * 2
    tokens = torch.randint(0, 7, (3, 4), generator=g)
    mask = _right_padded_mask([4, 1, 3], 4)
    tokens[~mask] = -100
    torch.testing.assert_close(score_norms(logits, tokens, mask).double(),
                               _score_norms_by_autograd(logits, tokens, mask), rtol=1e-5, atol=1e-6)


def test_minvar_baseline_against_autograd_score_norms():
    g = _gen(34)
    logits = torch.randn(3, 5, 6, generator=g) * 2
    tokens = torch.randint(0, 6, (3, 5), generator=g)
    adv = torch.randn(3, 5, generator=g) * 3
    lengths = [5, 2, 3]
    mask = _right_padded_mask(lengths, 5)
    tokens[~mask], adv[~mask] = -100, float("nan")  # padding is never read
    c = _score_norms_by_autograd(logits, tokens, mask)
    got = minvar_baseline(logits, tokens, adv, mask)
    for i, n in enumerate(lengths):
        want = (c[i, :n] * adv[i, :n].double()).sum() / c[i, :n].sum()
        torch.testing.assert_close(got[i, :n].double(), want.expand(n), rtol=1e-5, atol=1e-6)
        # A padded row gives the same baseline as the row alone, unpadded.
        alone = minvar_baseline(logits[i:i + 1, :n], tokens[i:i + 1, :n], adv[i:i + 1, :n], mask[i:i + 1, :n])
        torch.testing.assert_close(alone[0], got[i, :n])
    assert torch.all(got[~mask] == 0)
    # Over the whole batch: one c-weighted mean of every real token.
    batch = minvar_baseline(logits, tokens, adv, mask, scope="batch")
    want = (c[mask] * adv[mask].double()).sum() / c[mask].sum()
    torch.testing.assert_close(batch[mask].double(), want.expand(int(mask.sum())), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sequence, batch"):
        minvar_baseline(logits, tokens, adv, mask, scope="token")


def test_minvar_baseline_is_the_mean_when_score_norms_are_equal():
    # Uniform logits: pi(a) = 1/V for every token, so c_t = 1 - 2/V + 1/V is the same everywhere.
    g = _gen(35)
    logits = torch.zeros(2, 4, 5)
    tokens = torch.randint(0, 5, (2, 4), generator=g)
    adv = torch.randn(2, 4, generator=g)
    mask = _right_padded_mask([4, 3], 4)
    got = minvar_baseline(logits, tokens, adv, mask)
    for i, n in enumerate([4, 3]):
        torch.testing.assert_close(got[i, :n], adv[i, :n].mean().expand(n))
    # The loss with the min-variance baseline then equals the loss with the mean baseline.
    kwargs = dict(token_weight="one", clip=None)
    torch.testing.assert_close(policy_gradient_loss(logits, tokens, adv, mask, baseline="minvar", **kwargs)[0],
                               policy_gradient_loss(logits, tokens, adv, mask, baseline="mean", **kwargs)[0])


def test_minvar_baseline_is_detached_and_minimises_the_logit_gradient_norm():
    g = _gen(36)
    logits = (torch.randn(1, 6, 4, generator=g) * 2).requires_grad_(True)
    tokens = torch.randint(0, 4, (1, 6), generator=g)
    returns = torch.randn(1, 6, generator=g) * 4
    mask = torch.ones(1, 6)
    b = minvar_baseline(logits, tokens, returns, mask)
    assert not b.requires_grad  # no gradient through the baseline

    def grad_norm(baseline):
        z = logits.detach().clone().requires_grad_(True)
        logp = torch.log_softmax(z, -1).gather(-1, tokens[..., None]).squeeze(-1)
        (logp * (returns - baseline)).sum().backward()
        return float((z.grad ** 2).sum())

    best = float(b[0, 0])
    assert all(grad_norm(best) <= grad_norm(best + d) + 1e-9 for d in (-0.5, -0.05, 0.05, 0.5))
    # The loss with baseline "minvar": A_t - b, b from the clipped, weighted advantages.
    loss, _ = policy_gradient_loss(logits, tokens, returns, mask, token_weight="prob", clip=1.0, baseline="minvar")
    loss.sum().backward()
    with torch.no_grad():
        logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
        adv = (logp.exp() * returns).clamp(-1.0, 1.0)
        adv = adv - minvar_baseline(logits, tokens, adv, mask)
        torch.testing.assert_close(loss, -logp * adv)


@pytest.mark.parametrize("token_weight", ["one", "prob"])
@pytest.mark.parametrize("entropy_coef", [0.0, 0.3])
def test_policy_gradient_is_reinforce_gradient(token_weight, entropy_coef):
    g = _gen(31)
    logits = (torch.randn(2, 4, 5, generator=g) * 2).requires_grad_(True)
    tokens = torch.randint(0, 5, (2, 4), generator=g)
    returns = (torch.randn(2, 4, generator=g) * 5).requires_grad_(True)
    mask = _right_padded_mask([4, 2], 4)
    tokens[~mask] = -100
    loss, _ = policy_gradient_loss(
        logits, tokens, returns, mask, token_weight=token_weight, denom=1.5, clip=2.0, entropy_coef=entropy_coef
    )
    loss.sum().backward()
    assert returns.grad is None  # no gradient through the returns
    with torch.no_grad():
        pi = torch.softmax(logits.double(), -1)
        log_pi = torch.log_softmax(logits.double(), -1)
        safe_tokens = tokens.clamp(min=0)
        onehot = F.one_hot(safe_tokens, 5).double()
        w = pi.gather(-1, safe_tokens[..., None]).squeeze(-1) if token_weight == "prob" else torch.ones(2, 4)
        adv = (w * returns.double() / 1.5).clamp(-2.0, 2.0)
        entropy = -(pi * log_pi).sum(-1, keepdim=True)
        # d(-logp_y A)/dz = -A (onehot(y) - pi);  d(-c H)/dz = c pi (log pi + H)
        expected = -adv[..., None] * (onehot - pi) + entropy_coef * pi * (log_pi + entropy)
        expected = expected * mask[..., None]
    torch.testing.assert_close(logits.grad.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(logits.grad[~mask] == 0)


def test_policy_gradient_finite_difference_with_tiny_model():
    g = _gen(32)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    x = torch.randn(2, 3, 4, generator=g)
    tokens = torch.randint(0, 6, (2, 3), generator=g)
    returns = torch.randn(2, 3, generator=g) * 2
    mask = _right_padded_mask([3, 2], 3)
    n_real = mask.sum()
    kwargs = dict(denom=1.0, clip=50.0, baseline="mean", entropy_coef=0.2)

    # autograd of the reference loss (prob weights) at theta_0
    loss, _ = policy_gradient_loss(model(x), tokens, returns, mask, token_weight="prob", **kwargs)
    (loss.sum() / n_real).backward()
    params = list(model.parameters())
    direction = [torch.randn(p.shape, generator=g) for p in params]
    autograd = sum((p.grad * d).sum() for p, d in zip(params, direction)).item()

    # the same surrogate with advantages frozen at theta_0: w_0 * G with weight "one"
    with torch.no_grad():
        w0 = torch.softmax(model(x), -1).gather(-1, tokens[..., None]).squeeze(-1)

        def frozen(eps):
            for p, d in zip(params, direction):
                p.add_(eps * d)
            out, _ = policy_gradient_loss(model(x), tokens, returns * w0, mask, token_weight="one", **kwargs)
            for p, d in zip(params, direction):
                p.sub_(eps * d)
            return (out.sum() / n_real).item()

        eps = 1e-2
        finite_difference = (frozen(eps) - frozen(-eps)) / (2 * eps)
        assert frozen(0.0) == pytest.approx((loss.sum() / n_real).item(), rel=1e-6)
    assert autograd == pytest.approx(finite_difference, rel=2e-3, abs=1e-4)


def test_policy_gradient_validates_options():
    logits, tokens, returns, mask = _pg_case()
    with pytest.raises(ValueError, match="prob, one"):
        policy_gradient_loss(logits, tokens, returns, mask, token_weight="sqrt")
    with pytest.raises(ValueError, match="none, mean, minvar"):
        policy_gradient_loss(logits, tokens, returns, mask, baseline="min-variance")
    with pytest.raises(ValueError, match="sequence, batch"):
        policy_gradient_loss(logits, tokens, returns, mask, baseline="mean", baseline_scope="token")
    with pytest.raises(ValueError):
        policy_gradient_loss(logits, tokens, returns, mask, denom=0.0)


def test_policy_gradient_empty_batch():
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    loss, stats = policy_gradient_loss(logits, torch.full((1, 2), -100), torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.all(loss == 0)
    assert stats == {"mean_return": 0.0, "mean_advantage": 0.0, "advantage_std": 0.0, "mean_entropy": 0.0}


# ------------------------------------------------------------------------------------------------
# cross-entropy
# ------------------------------------------------------------------------------------------------


def test_cross_entropy_matches_torch():
    g = _gen(40)
    logits = (torch.randn(3, 4, 7, generator=g) * 3).requires_grad_(True)
    tokens = torch.randint(0, 7, (3, 4), generator=g)
    mask = _right_padded_mask([4, 1, 3], 4)
    tokens[~mask] = -100
    out = cross_entropy(logits, tokens, mask)
    ref = F.cross_entropy(logits.detach().reshape(-1, 7), tokens.reshape(-1), ignore_index=-100, reduction="none")
    torch.testing.assert_close(out, ref.reshape(3, 4))
    assert torch.all(out[~mask] == 0)
    out.sum().backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(ref_logits.reshape(-1, 7), tokens.reshape(-1), ignore_index=-100, reduction="sum").backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


@pytest.mark.parametrize("what", ["kl", "js", "tvd", "cross_entropy", "induced_max", "induced_expectation", "gjsd",
                                  "skl", "srkl"])
def test_chunked_vocabulary_work_equals_one_pass(what, monkeypatch):
    """Chunks over positions (checkpointed with gradient) give the same values and gradients as one pass."""
    gen = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 11
    student = torch.randn(B, T, V, generator=gen) * 3
    teacher = torch.randn(B, T, V, generator=gen) * 3
    tokens = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.ones(B, T)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    tokens[0, 6] = -100  # padding ids are never read

    def run(chunk_elements):
        monkeypatch.setattr(objectives, "CHUNK_ELEMENTS", chunk_elements)
        s = student.clone().requires_grad_(True)
        if what in objectives.DIVERGENCES:
            out = objectives.token_divergence(s, teacher, what, mask)
        elif what in ("gjsd", "skl", "srkl"):
            out = _beyond(what, s, teacher, mask, 0.3)
        elif what == "cross_entropy":
            out = objectives.cross_entropy(s, tokens, mask)
        else:
            q, v = objectives.induced_values(s, tokens, mask, value=what.split("_")[1])
            return torch.stack([q, v]), torch.zeros(1)
        (out * torch.arange(1.0, T + 1)).sum().backward()
        return out.detach(), s.grad

    whole, whole_grad = run(10**9)
    for chunk in (V, 3 * V, 4 * V + 5):  # one position a chunk, several, and an uneven last chunk
        part, part_grad = run(chunk)
        assert torch.allclose(part, whole, atol=1e-6) and torch.allclose(part_grad, whole_grad, atol=1e-6)
    assert whole.abs().sum() > 0


# --- PPO's clipped surrogate (ketchup-ppo, llmr-ppo) ---------------------------------------------


def _ppo_case(seed=0, B=3, T=6, V=9):
    gen = _gen(seed)
    logits = torch.randn(B, T, V, generator=gen) * 2
    tokens = torch.randint(0, V, (B, T), generator=gen)
    advantages = torch.randn(B, T, generator=gen)
    mask = _right_padded_mask([T, T - 2, 1][:B], T)
    return logits, tokens, advantages, mask


def _token_logp(logits, tokens):
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1)


@pytest.mark.parametrize("entropy_coef", [0.0, 0.1])
def test_ppo_at_ratio_one_has_the_reinforce_gradient(entropy_coef):
    """pi_old = pi_theta (r = 1, the first minibatch of the first pass): the gradient of the clipped
    surrogate is the policy gradient's, -A grad log pi, whatever eps."""
    logits, tokens, advantages, mask = _ppo_case()
    old = _token_logp(logits, tokens).detach()
    grads = []
    for ppo in (True, False):
        z = logits.clone().requires_grad_(True)
        if ppo:
            per_token, _ = objectives.ppo_clip_loss(z, tokens, old, advantages, mask, clip_eps=0.1,
                                                    entropy_coef=entropy_coef)
        else:
            per_token, _ = objectives.policy_gradient_loss(z, tokens, advantages, mask, token_weight="one",
                                                           clip=None, entropy_coef=entropy_coef)
        per_token.sum().backward()
        grads.append(z.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-6)
    assert grads[0].abs().sum() > 0


def test_ppo_clip_zeroes_the_gradient_only_on_the_side_the_min_selects():
    """One real token per row, ratio set by hand: A > 0 with r > 1 + eps and A < 0 with r < 1 - eps
    get no gradient; A > 0 with r < 1 - eps, A < 0 with r > 1 + eps and r inside the range get
    -A r (e_y - pi) with respect to the logits."""
    eps, V = 0.2, 5
    gen = _gen(3)
    logits = torch.randn(6, 1, V, generator=gen)
    tokens = torch.tensor([[0], [1], [2], [3], [4], [0]])
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.1, 0.9])
    adv = torch.tensor([2.0, -1.0, 2.0, -1.0, 3.0, -3.0])[:, None]
    zero = [True, True, False, False, False, False]
    logp = _token_logp(logits, tokens)
    old = logp - ratio.log()[:, None]  # r = exp(logp - old)
    z = logits.clone().requires_grad_(True)
    per_token, stats = objectives.ppo_clip_loss(z, tokens, old, adv, torch.ones(6, 1), clip_eps=eps)
    per_token.sum().backward()
    pi = torch.softmax(logits, -1)[:, 0]
    for i in range(6):
        if zero[i]:
            assert torch.equal(z.grad[i, 0], torch.zeros(V))
        else:
            want = -adv[i, 0] * ratio[i] * (F.one_hot(tokens[i, 0], V).float() - pi[i])
            assert torch.allclose(z.grad[i, 0], want, atol=1e-6)
    # values: -min(r A, clip(r) A), by hand
    want = [-min(r * a, min(max(r, 1 - eps), 1 + eps) * a) for r, a in zip(ratio.tolist(), adv[:, 0].tolist())]
    assert per_token[:, 0].tolist() == pytest.approx(want, rel=1e-5)
    assert stats["clip_fraction"] == pytest.approx(4 / 6)
    assert stats["approx_kl"] == pytest.approx(float(((ratio - 1) - ratio.log()).mean()), rel=1e-5)
    assert stats["mean_ratio"] == pytest.approx(float(ratio.mean()), rel=1e-6)


def test_ppo_loss_is_padding_invariant_and_never_reads_padding():
    logits, tokens, advantages, mask = _ppo_case(1)
    old = _token_logp(logits, tokens).detach() + 0.3 * torch.randn(mask.shape, generator=_gen(2))
    full, stats = objectives.ppo_clip_loss(logits, tokens, old, advantages, mask)
    # garbage (NaN, bad ids) everywhere the mask is 0, and two more padding columns
    def pad(t, value):
        return torch.cat([t, torch.full((t.shape[0], 2, *t.shape[2:]), value, dtype=t.dtype)], 1)
    real = mask.bool()
    bad_logits = pad(logits.masked_fill(~real[..., None], float("nan")), float("nan"))
    bad_tokens = pad(tokens.masked_fill(~real, -100), -100)
    bad_old = pad(old.masked_fill(~real, float("nan")), float("nan"))
    bad_adv = pad(advantages.masked_fill(~real, float("inf")), float("inf"))
    padded, padded_stats = objectives.ppo_clip_loss(bad_logits, bad_tokens, bad_old, bad_adv, pad(mask, 0.0))
    assert torch.equal(padded[:, : mask.shape[1]], full) and torch.equal(padded[:, mask.shape[1]:], torch.zeros(3, 2))
    assert padded_stats == stats
    # each row alone, unpadded, gives its row of the batch
    for i, n in enumerate(mask.sum(1).long().tolist()):
        alone, _ = objectives.ppo_clip_loss(logits[i: i + 1, :n], tokens[i: i + 1, :n], old[i: i + 1, :n],
                                            advantages[i: i + 1, :n], torch.ones(1, n))
        assert torch.allclose(alone[0], full[i, :n], atol=1e-7)


@pytest.mark.parametrize("baseline,token_weight,scope", [("none", "prob", "sequence"), ("mean", "one", "sequence"),
                                                         ("minvar", "prob", "sequence"), ("minvar", "one", "batch")])
def test_policy_advantages_are_the_policy_gradient_losses(baseline, token_weight, scope):
    """policy_advantages gives the A_t and log pi of policy_gradient_loss: -logp * A is its per-token loss."""
    logits, tokens, returns, mask = _ppo_case(4)
    returns = returns * 5
    kwargs = dict(token_weight=token_weight, denom=2.0, clip=3.0, baseline=baseline, baseline_scope=scope)
    adv, logp, stats = objectives.policy_advantages(logits, tokens, returns, mask, **kwargs)
    per_token, pg_stats = objectives.policy_gradient_loss(logits, tokens, returns, mask, **kwargs)
    assert torch.equal(-logp * adv, per_token)
    assert torch.equal(logp, _token_logp(logits, tokens) * mask)
    assert stats == pg_stats
    assert not adv.requires_grad and not logp.requires_grad


def test_ppo_clip_eps_must_lie_between_zero_and_one():
    logits, tokens, advantages, mask = _ppo_case()
    for eps in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="clip_eps"):
            objectives.ppo_clip_loss(logits, tokens, advantages, advantages, mask, clip_eps=eps)


# ------------------------------------------------------------------------------------------------
# beyond the paper: GKD's generalized JSD, DistiLLM's skew KL and skew reverse KL
# ------------------------------------------------------------------------------------------------


def _kl64(a, b):
    """KL(a || b) from float64 probabilities, 0 log 0 = 0."""
    return torch.where(a > 0, a * (torch.log(a) - torch.log(b)), torch.zeros_like(a)).sum(-1)


def _reference_beyond(student, teacher, what, setting):
    """Float64 from explicit probabilities: mixtures formed as probabilities, logs taken afterwards."""
    p = torch.softmax(teacher.double(), -1)
    q = torch.softmax(student.double(), -1)
    if what == "gjsd":
        if setting == 0.0:
            return _kl64(p, q)
        if setting == 1.0:
            return _kl64(q, p)
        m = setting * p + (1 - setting) * q
        return setting * _kl64(p, m) + (1 - setting) * _kl64(q, m)
    if what == "skl":
        return _kl64(p, setting * p + (1 - setting) * q)
    return _kl64(q, setting * q + (1 - setting) * p)  # "srkl"


def _beyond(what, student, teacher, mask, setting):
    fn = {"gjsd": objectives.generalized_jsd, "skl": objectives.skew_kl, "srkl": objectives.skew_reverse_kl}[what]
    return fn(student, teacher, mask, setting)


BEYOND = [("gjsd", 0.0), ("gjsd", 0.1), ("gjsd", 0.5), ("gjsd", 0.9), ("gjsd", 1.0), ("skl", 0.1), ("skl", 0.3),
          ("srkl", 0.1), ("srkl", 0.3)]


@pytest.mark.parametrize("what,setting", BEYOND)
def test_beyond_divergences_random_logits_with_padding(what, setting):
    g = _gen(7)
    B, T, V = 3, 6, 11
    student = torch.randn(B, T, V, generator=g) * 3
    teacher = torch.randn(B, T, V, generator=g) * 3
    mask = _right_padded_mask([6, 2, 4], T)
    student[~mask] = float("nan")  # padded positions are never read
    teacher[~mask] = float("inf")
    s = student.clone().requires_grad_(True)
    out = _beyond(what, s, teacher, mask.int(), setting)
    assert out.dtype == torch.float32 and out.shape == (B, T)
    assert (out[~mask] == 0).all() and (out[mask] >= -1e-6).all()
    expected = _reference_beyond(student.nan_to_num(0.0), teacher.nan_to_num(0.0, posinf=0.0), what, setting)
    torch.testing.assert_close(out[mask].double(), expected[mask], rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(s.grad).all() and (s.grad[~mask] == 0).all() and s.grad[mask].abs().sum() > 0


def test_generalized_jsd_ends_and_middle_are_the_project_divergences():
    g = _gen(8)
    student, teacher = torch.randn(2, 5, 17, generator=g) * 4, torch.randn(2, 5, 17, generator=g) * 4
    mask = _right_padded_mask([5, 3], 5)
    gjsd = objectives.generalized_jsd
    # beta = 1/2 is js (to rounding: the mixture is logsumexp(log p + log 1/2, log q + log 1/2), not
    # logaddexp(log p, log q) - log 2), beta = 0 is kl, beta = 1 is kl with the roles swapped.
    torch.testing.assert_close(gjsd(student, teacher, mask, 0.5), token_divergence(student, teacher, "js", mask),
                               rtol=1e-6, atol=1e-7)
    assert torch.equal(gjsd(student, teacher, mask, 0.0), token_divergence(student, teacher, "kl", mask))
    assert torch.equal(gjsd(student, teacher, mask, 1.0), token_divergence(teacher, student, "kl", mask))
    # Symmetry of the mixture: JSD(beta)(p, q) = JSD(1 - beta)(q, p).
    torch.testing.assert_close(gjsd(student, teacher, mask, 0.2), gjsd(teacher, student, mask, 0.8))


def test_skew_divergences_against_distillm_formulation():
    """DistiLLM's losses.py: skewed_forward_kl = -sum p log(a p + (1-a) q) (the cross-entropy, without
    the teacher's entropy); skewed_reverse_kl = sum q log q - sum q log(a q + (1-a) p)."""
    g = _gen(9)
    student, teacher = torch.randn(4, 3, 9, generator=g) * 2, torch.randn(4, 3, 9, generator=g) * 2
    mask = torch.ones(4, 3)
    p, q, a = torch.softmax(teacher.double(), -1), torch.softmax(student.double(), -1), 0.1
    cross = -(p * torch.log(a * p + (1 - a) * q)).sum(-1)
    torch.testing.assert_close(objectives.skew_kl(student, teacher, mask, a).double(),
                               cross + (p * torch.log(p)).sum(-1), rtol=1e-5, atol=1e-6)
    reverse = (q * torch.log(q)).sum(-1) - (q * torch.log(a * q + (1 - a) * p)).sum(-1)
    torch.testing.assert_close(objectives.skew_reverse_kl(student, teacher, mask, a).double(), reverse,
                               rtol=1e-5, atol=1e-6)
    # alpha -> 0 approaches the plain KLs; the skew bounds the value by log(1/alpha).
    torch.testing.assert_close(objectives.skew_kl(student, teacher, mask, 1e-7),
                               token_divergence(student, teacher, "kl", mask), rtol=1e-4, atol=1e-5)
    far = objectives.skew_kl(torch.tensor([[[50.0, -50.0]]]), torch.tensor([[[-50.0, 50.0]]]), torch.ones(1, 1), a)
    assert float(far) == pytest.approx(math.log(1 / a), rel=1e-5)


def test_beyond_divergences_reject_settings_out_of_range():
    x = torch.zeros(1, 1, 3)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            objectives.generalized_jsd(x, x, torch.ones(1, 1), bad)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="alpha"):
            objectives.skew_kl(x, x, torch.ones(1, 1), bad)
        with pytest.raises(ValueError, match="alpha"):
            objectives.skew_reverse_kl(x, x, torch.ones(1, 1), bad)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_against_trl(beta):
    """The bench extra's TRL (trl==1.16.0): GKDTrainer.generalized_jsd_loss summed over unmasked tokens."""
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer",
                              reason="trl (the bench extra: pip install -e '.[bench]') is not installed")
    g = _gen(10)
    student, teacher = torch.randn(3, 7, 13, generator=g) * 3, torch.randn(3, 7, 13, generator=g) * 3
    mask = _right_padded_mask([7, 4, 1], 7)
    labels = torch.where(mask, 1, -100)
    trl_sum = gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta, reduction="sum")
    ours = objectives.generalized_jsd(student, teacher, mask, beta)
    torch.testing.assert_close(ours.sum(), trl_sum.float(), rtol=1e-5, atol=1e-5)
