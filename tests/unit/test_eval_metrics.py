"""Evaluation metrics on synthetic scores with known answers."""
import numpy as np
import pytest

from rlhf_ray.data.schema import Ranking
from rlhf_ray.rm import eval_metrics as M


def group(scores, prompt_type="open"):
    return Ranking("p", "prompt", prompt_type, [f"c{k}" for k in range(len(scores))], list(scores))


def test_kendall_tau_known_values():
    g = group([4.0, 3.0, 2.0, 1.0])
    assert M.kendall_taus([g], [[4, 3, 2, 1]]) == [pytest.approx(1.0)]
    assert M.kendall_taus([g], [[1, 2, 3, 4]]) == [pytest.approx(-1.0)]
    # one swapped adjacent pair of 4: (5 concordant - 1 discordant) / 6
    assert M.kendall_taus([g], [[4, 3, 1, 2]]) == [pytest.approx(4 / 6)]
    tau = M.kendall_taus([g], [[1, 1, 1, 1]])[0]  # constant scores: tau-b undefined
    assert tau != tau and M.nanmean([tau, 0.5]) == pytest.approx(0.5)


def test_pairwise_accuracy_skips_gold_ties():
    groups = [group([2.0, 1.0]), group([1.0, 1.0, 0.0])]
    rewards = [[0.3, 0.1], [0.0, 5.0, -1.0]]
    # group 1: 1/1 right; group 2: pair (0,1) tied -> skipped, (0,2) right, (1,2) right
    assert M.pairwise_accuracy(groups, rewards) == pytest.approx(1.0)
    assert M.pairwise_accuracy(groups, [[0.1, 0.3], [0.0, 5.0, 9.0]]) == pytest.approx(0.0)


def test_bootstrap_interval_brackets_the_value_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small, large = list(rng.normal(0.3, 0.2, 20)), list(rng.normal(0.3, 0.2, 2000))
    lo_s, hi_s = M.bootstrap_ci(small, n=300)
    lo_l, hi_l = M.bootstrap_ci(large, n=300)
    assert lo_s < np.mean(small) < hi_s and lo_l < np.mean(large) < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4


def test_effective_rank():
    assert M.effective_rank(np.eye(5)) == pytest.approx(5.0)
    assert M.effective_rank(np.outer(np.arange(1, 7), np.ones(4))) == pytest.approx(1.0, abs=1e-6)


def test_collapse_curves_and_gap():
    big = 20.0  # sigmoid(+-20) is 0/1 to 1e-9
    step = [big] * 4 + [-big] * 4  # stored longest first -> by index: 0,0,0,0,1,1,1,1 reversed order
    groups = [group(range(8, 0, -1), "closed"), group(range(8, 0, -1), "open")]
    curves = M.collapse_curves(groups, [step, step])
    np.testing.assert_allclose(curves["closed"]["mean"], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-6)
    assert curves["open_closed_gap"] == pytest.approx(0.0)
    ramp = list(np.log(np.linspace(0.95, 0.05, 8) / (1 - np.linspace(0.95, 0.05, 8))))
    curves = M.collapse_curves(groups, [step, ramp])
    np.testing.assert_allclose(curves["open"]["mean"], np.linspace(0.05, 0.95, 8), atol=1e-9)
    assert curves["open_closed_gap"] > 0.2
    assert M.l1_to_target([0, 0.5, 1], [0, 0, 1]) == pytest.approx(1 / 6)


def test_a_bootstrap_over_undefined_values_is_an_undefined_interval_without_a_warning():
    """Every prompt's tau undefined (all tied, as a tiny random policy's empty replies give): (nan, nan),
    not numpy's 'All-NaN slice' warning in the user's output."""
    import math
    import warnings

    from rlhf_ray.utils.stats import bootstrap_ci

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = bootstrap_ci([float("nan")] * 5, n=50)
        assert math.isnan(low) and math.isnan(high)
        low, high = bootstrap_ci([float("nan"), 1.0, 2.0], n=50)
    assert 1.0 <= low <= high <= 2.0
