"""Best-of-n: the unbiased estimator over all n-subsets equals brute-force enumeration."""
import itertools
import math

import numpy as np
import pytest

from rlhf_ray.rm import best_of_n as B


def _brute_force(proxy, gold, n):
    """Mean gold of the highest-proxy sample over every n-subset (a tie: each tied sample equally
    likely, so the tied samples' mean gold)."""
    values = []
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        tied = [gold[i] for i in subset if proxy[i] == top]
        values.append(sum(tied) / len(tied))
    return sum(values) / len(values)


def test_a_tie_does_not_favour_the_later_sample():
    """Word count ties often; the samples are stored best first, so order-broken ties picked the worse."""
    assert B.best_of_n_expectation([5, 5], [1.0, 0.0], 2) == pytest.approx(0.5)


@pytest.mark.parametrize("num_samples", [1, 2, 5, 7])
def test_the_estimator_equals_enumerating_every_subset(num_samples):
    rng = np.random.default_rng(num_samples)
    for _ in range(5):
        proxy = rng.normal(size=num_samples).round(1).tolist()  # rounding makes ties
        gold = rng.normal(size=num_samples).tolist()
        for n in range(1, num_samples + 1):
            assert B.best_of_n_expectation(proxy, gold, n) == pytest.approx(_brute_force(proxy, gold, n), abs=1e-12)


def test_weights_kl_and_the_ns():
    for num_samples in (1, 4, 9):
        for n in range(1, num_samples + 1):
            assert B.best_of_n_weights(num_samples, n).sum() == pytest.approx(1.0)
    assert B.kl_best_of_n(1) == 0 and B.kl_best_of_n(8) == pytest.approx(math.log(8) - 7 / 8)
    assert B.powers_of_two(8) == [1, 2, 4, 8] and B.powers_of_two(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="1 <= n <= N"):
        B.best_of_n_weights(4, 5)


def test_the_curve_over_prompts_with_cis():
    # a proxy that agrees with gold raises gold with n; one that disagrees lowers it
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(40, 8))
    good = B.best_of_n_curve(gold.tolist(), gold.tolist(), bootstrap=200)
    bad = B.best_of_n_curve((-gold).tolist(), gold.tolist(), bootstrap=200)
    assert [p["n"] for p in good] == [1, 2, 4, 8]
    assert good[0]["gold"] == pytest.approx(gold.mean()) and good[0]["gold_gain"] == pytest.approx(0.0)
    assert good[-1]["gold"] == pytest.approx(gold.max(1).mean())  # best of all 8: the max
    assert good[-1]["gold_gain_ci_low"] > 0 and bad[-1]["gold_gain_ci_high"] < 0
    assert all(p["gold_ci_low"] <= p["gold"] <= p["gold_ci_high"] for p in good)
    assert good[-1]["proxy"] == pytest.approx(good[-1]["gold"])
    # every prompt's values are shipped: the means (and any paired CI) re-derive from them
    assert good[-1]["per_prompt"]["gold"] == pytest.approx(gold.max(1).tolist())
    assert np.mean(bad[1]["per_prompt"]["gold"]) == pytest.approx(bad[1]["gold"])
