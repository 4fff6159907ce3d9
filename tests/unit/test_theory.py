"""optimal_rewards and limit_distribution against the closed forms and reference vectors of
PAPERS.md B.2/B.3 (values copied from there, not computed by the code under test)."""
import math

import numpy as np
import pytest

from rlhf_ray.rm.theory import limit_distribution, objective, optimal_rewards

B3 = [
    ("x", 4, {}, [0, 0, 1, 1], 4.0),
    ("x", 8, {}, [0, 0, 0, 0, 1, 1, 1, 1], 16.0),
    ("log", 4, {}, [0, (5 - math.sqrt(5)) / 10, (5 + math.sqrt(5)) / 10, 1], -4.0236),
    ("log", 8, {}, [0, .0641, .2041, .3954, .6046, .7959, .9359, 1], -27.4849),
    ("inv", 4, {}, [0, .3193, .6807, 1], -12.9689),
    ("pow", 4, {"gamma": 0.5}, [0, .1803, .8197, 1], 4.4596),
    ("neg_pow", 4, {"gamma": 0.5}, [0, .3066, .6934, 1], -8.6217),
    ("logsigmoid", 4, {"c": 4.0}, [0, .3030, .6970, 1], -0.8466),
]


@pytest.mark.parametrize("name, n, params, expected, value", B3, ids=[f"{b[0]}-{b[1]}" for b in B3])
def test_reference_vectors(name, n, params, expected, value):
    r = optimal_rewards(name, n, **params)
    np.testing.assert_allclose(r, expected, atol=1e-4)
    assert objective(r, name, **params) == pytest.approx(value, abs=1e-3)


@pytest.mark.parametrize("name, params", [("inv", {}), ("pow", {"gamma": 0.5}), ("neg_pow", {"gamma": 0.5}),
                                          ("logsigmoid", {"c": 4.0}), ("log", {})])
def test_strictly_concave_n3_is_0_half_1_and_optimum_is_symmetric(name, params):
    np.testing.assert_allclose(optimal_rewards(name, 3, **params), [0, 0.5, 1], atol=1e-4)
    r = optimal_rewards(name, 7, **params)
    np.testing.assert_allclose(r + r[::-1], np.ones(7), atol=1e-4)  # r_i + r_{n+1-i} = 1
    assert r[0] == pytest.approx(0, abs=1e-6) and r[-1] == pytest.approx(1, abs=1e-6)


def test_numerical_optimum_beats_perturbations():
    r = optimal_rewards("inv", 6)
    best = objective(r, "inv")
    rng = np.random.default_rng(0)
    for _ in range(50):
        trial = np.clip(r + rng.normal(0, 1e-3, 6), 0, 1)
        trial[0], trial[-1] = 0, 1
        assert objective(trial, "inv") <= best + 1e-9


def test_log_optimum_is_not_equally_spaced():
    assert not np.allclose(optimal_rewards("log", 8), np.linspace(0, 1, 8), atol=1e-2)


def test_limit_distributions():
    assert limit_distribution("log").mean() == pytest.approx(0.5)
    assert limit_distribution("log").var() == pytest.approx(1 / 8)  # arcsine = Beta(1/2, 1/2)
    assert limit_distribution("inv").var() == pytest.approx(1 / 12)  # uniform
    a = (1 - 0.5) / 2
    assert limit_distribution("pow", gamma=0.5).var() == pytest.approx(a * a / ((2 * a) ** 2 * (2 * a + 1)))
    b = (1 + 0.5) / 2
    assert limit_distribution("neg_pow", gamma=0.5).var() == pytest.approx(b * b / ((2 * b) ** 2 * (2 * b + 1)))
    polar = limit_distribution("x")
    assert polar.pmf(0) == pytest.approx(0.5) and polar.pmf(1) == pytest.approx(0.5)


def test_logsigmoid_limit_has_atoms_at_both_ends():
    law = limit_distribution("logsigmoid", c=4.0, n_numeric=60)
    ends = law.pmf(0.0) + law.pmf(1.0)
    assert 0.15 < ends / 2 < 0.25  # PAPERS.md B.2: about 0.20 per side at c = 4 (large n)
