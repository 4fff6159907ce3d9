"""The pipeline report's summary over seeds of each reward source's best-of-n result (sample SDs, n - 1)."""
import math

import pytest

from rlhf_ray.report.pipeline_report import best_of_n_over_seeds


def curve(tau: float, gains: list[float]) -> dict:
    return {"policy_tau": {"value": tau, "ci_low": tau - 0.1, "ci_high": tau + 0.1},
            "best_of_n": [{"n": 2 ** i, "gold_gain": g} for i, g in enumerate(gains)]}


def test_best_of_n_over_seeds_takes_each_sources_largest_n_per_seed():
    bon = {0: {"bt": curve(0.4, [0.0, 0.01, 0.03]), "ensemble_mean": curve(0.5, [0.0, 0.02, 0.05])},
           1: {"bt": curve(0.2, [0.0, 0.02, 0.01]), "ensemble_mean": curve(0.3, [0.0, 0.01, 0.01])},
           2: {"bt": curve(0.3, [0.0, 0.00, 0.02])}}
    summary = best_of_n_over_seeds(bon)
    assert list(summary) == ["bt", "ensemble_mean"]
    bt = summary["bt"]
    assert bt["seeds"] == 3
    assert bt["policy_tau_mean"] == pytest.approx(0.3) and bt["policy_tau_std"] == pytest.approx((0.02 / 2) ** 0.5)
    assert bt["gold_gain_mean"] == pytest.approx(0.02) and bt["gold_gain_std"] == pytest.approx((0.0002 / 2) ** 0.5)
    ensemble = summary["ensemble_mean"]
    assert ensemble["seeds"] == 2 and ensemble["gold_gain_mean"] == pytest.approx(0.03)
    assert ensemble["gold_gain_std"] == pytest.approx(0.02 * 2 ** 0.5)


def test_one_seed_has_no_spread():
    summary = best_of_n_over_seeds({0: {"bsr": curve(0.25, [0.0, 0.04])}})
    assert math.isnan(summary["bsr"]["gold_gain_std"]) and summary["bsr"]["gold_gain_mean"] == pytest.approx(0.04)
