"""Every loss against hand-computed values and gradients (PAPERS.md A.2, B.1, B.4), written here
independently with `math` and explicit loops."""
import math

import pytest
import torch

from rlhf_ray.rm import losses as L


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def t(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_bt_loss_value_and_gradient():
    c, r = t([1.0, 0.0, 2.5], True), t([0.0, 1.0, -0.5], True)
    loss = L.bt_loss(c, r)
    expected = sum(-math.log(sig(a - b)) for a, b in [(1, 0), (0, 1), (2.5, -0.5)]) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    for k, (a, b) in enumerate([(1, 0), (0, 1), (2.5, -0.5)]):
        assert c.grad[k].item() == pytest.approx(-(1 - sig(a - b)) / 3, abs=1e-12)
        assert r.grad[k].item() == pytest.approx((1 - sig(a - b)) / 3, abs=1e-12)


def test_bt_loss_margin():
    assert L.bt_loss(t([2.0]), t([1.0]), margin=0.5).item() == pytest.approx(-math.log(sig(0.5)))


def test_bsr_penalty_is_square_of_batch_mean_not_per_pair():
    c, r = t([1.0, 2.0], True), t([3.0, -2.0], True)
    pen = L.bsr_penalty(c, r)
    assert pen.item() == pytest.approx(((1 + 2 + 3 - 2) / 4) ** 2)  # = 1
    pen.backward()
    # d/dr_k (mean)^2 = 2 * mean / (2B) = 2 * 1 / 4
    assert torch.allclose(c.grad, t([0.5, 0.5])) and torch.allclose(r.grad, t([0.5, 0.5]))
    per_pair = ((1 + 3) ** 2 + (2 - 2) ** 2) / 2
    assert L.center_penalty(c, r).item() == pytest.approx(per_pair)
    assert per_pair != pytest.approx(pen.item())


def test_bsr_is_zero_for_centred_batch():
    assert L.bsr_penalty(t([1.0, -2.0]), t([-1.0, 2.0])).item() == 0.0


def test_hinge_bt_norm_bt_dr_values():
    c, r = t([1.0, -0.5]), t([0.2, 0.5])
    assert L.hinge_loss(c, r, margin=1.0).item() == pytest.approx((max(0, 1 - 0.8) + max(0, 1 + 1.0)) / 2)
    norm = [-math.log(sig((a - b) / math.sqrt(a * a + b * b))) for a, b in [(1, 0.2), (-0.5, 0.5)]]
    assert L.bt_norm_loss(c, r).item() == pytest.approx(sum(norm) / 2)
    dr = [-math.log(sig(a - b)) - math.log(sig(a)) - math.log(sig(-b)) for a, b in [(1, 0.2), (-0.5, 0.5)]]
    assert L.bt_dr_loss(c, r).item() == pytest.approx(sum(dr) / 2)


@pytest.mark.parametrize(
    "name, params, x, expected",
    [
        ("x", {}, 0.3, 0.3),
        ("x", {}, -0.3, -0.3),
        ("log", {}, 0.5, math.log(0.6) - math.log(0.1)),
        ("log", {}, -0.2, -2.0),  # linear continuation, slope 1/eps = 10 (the paper's code)
        ("inv", {}, 0.5, 10 - 1 / 0.6),
        ("inv", {}, -0.1, -10.0),  # slope 1/eps^2 = 100 (the paper's code)
        ("pow", {"gamma": 2.0}, 0.5, 0.6**2 - 0.1**2),
        ("pow", {"gamma": 2.0}, -0.5, -0.5 * 2 * 0.1),
        ("neg_pow", {"gamma": 2.0}, 0.5, 1 / 0.01 - 1 / 0.36),
        ("logsigmoid", {"c": 4.0}, 0.25, math.log(sig(1.0))),
        ("logsigmoid", {"c": 4.0}, -0.25, math.log(sig(-1.0))),
    ],
)
def test_shifted_utilities(name, params, x, expected):
    u = L.utility(name, eps=0.1, **params)
    assert u(t([x])).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    "name, params, x, expected",
    [
        ("log", {}, 0.5, math.log(0.5)),
        ("inv", {}, 0.25, -4.0),
        ("pow", {"gamma": 0.5}, 0.25, 0.5),
        ("neg_pow", {"gamma": 0.5}, 0.25, -2.0),
    ],
)
def test_unshifted_utilities(name, params, x, expected):
    assert L.utility(name, eps=0, **params)(t([x])).item() == pytest.approx(expected)


@pytest.mark.parametrize("name", ["log", "inv", "pow", "neg_pow"])
def test_shifted_utility_is_c1_at_zero(name):
    u = L.utility(name, eps=0.1, gamma=0.5)
    h = 1e-7
    left = (u(t([0.0])) - u(t([-h]))).item() / h
    right = (u(t([h])) - u(t([0.0]))).item() / h
    assert u(t([0.0])).item() == pytest.approx(0.0, abs=1e-12)
    assert left == pytest.approx(right, rel=1e-4)
    assert torch.isfinite(u(t([-1.0, -0.5, 0.0, 0.5, 1.0]))).all()


def test_unknown_utility_and_bad_params():
    with pytest.raises(ValueError, match="unknown utility"):
        L.utility("cubic")
    with pytest.raises(ValueError, match="gamma"):
        L.utility("pow", gamma=0.0)


def _ranking_loss_by_hand(logits, u):
    n = len(logits)
    terms = [-u(sig(logits[i]) - sig(logits[j])) for i in range(n) for j in range(i + 1, n)]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("name", ["x", "log", "inv", "logsigmoid"])
def test_ranking_loss_matches_explicit_pairs(name):
    logits = [2.0, 0.5, -0.3, -2.0]
    u_hand = {
        "x": lambda d: d,
        "log": lambda d: math.log(d + 0.1) - math.log(0.1) if d > 0 else 10 * d,
        "inv": lambda d: 10 - 1 / (d + 0.1) if d > 0 else 100 * d,
        "logsigmoid": lambda d: math.log(sig(4 * d)),
    }[name]
    got = L.ranking_loss(t([logits]), L.utility(name))
    assert got.item() == pytest.approx(_ranking_loss_by_hand(logits, u_hand), rel=1e-10)


def test_ranking_loss_gradient_matches_finite_differences():
    logits = t([[1.0, 0.2, -0.7, 0.4]], True)
    assert torch.autograd.gradcheck(lambda z: L.ranking_loss(z, L.utility("inv")), (logits,))


def test_prompt_aware_picks_utility_per_prompt():
    logits = t([[1.0, 0.0, -1.0], [0.5, 0.4, -2.0]])
    is_open = torch.tensor([True, False])
    u_x, u_inv = L.utility("x"), L.utility("inv")
    got = L.prompt_aware_ranking_loss(logits, is_open, u_closed=u_x, u_open=u_inv)
    expected = (L.ranking_loss(logits[:1], u_inv) + L.ranking_loss(logits[1:], u_x)) / 2
    assert got.item() == pytest.approx(expected.item())


def test_head_init_std():
    from rlhf_ray.models.reward_model import head_init_std

    assert head_init_std(64) == pytest.approx(0.125)
