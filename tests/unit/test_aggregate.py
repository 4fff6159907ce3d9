"""Ensembles and reward transforms against their formulas (PAPERS.md C (i)-(iii))."""
import math

import pytest
import torch

from rlhf_ray.scoring import aggregate as A


def test_mean_wco_uwo():
    members = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    assert A.aggregate(members, "mean").tolist() == pytest.approx([2.0, 1.0])
    assert A.aggregate(members, "wco").tolist() == [1.0, 0.0]
    var = [((1 - 2) ** 2 + (3 - 2) ** 2 + 0) / 3, ((0 - 1) ** 2 * 2 + (3 - 1) ** 2) / 3]  # population variance
    assert A.aggregate(members, "uwo", 0.5).tolist() == pytest.approx([2 - 0.5 * var[0], 1 - 0.5 * var[1]])
    with pytest.raises(ValueError, match="aggregation"):
        A.aggregate(members, "max")


def test_lsc_reference_is_pars_released_formula():
    # PAR's code: norm.ppf(0.85, loc=mean, scale=std(ddof=1) + 1e-5); mean 1, sample std sqrt(2)
    from scipy.stats import norm

    ref = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    expected = [norm.ppf(0.85, loc=1.0, scale=math.sqrt(2) + 1e-5), norm.ppf(0.85, loc=1.0, scale=1e-5)]
    assert A.lsc_reference(ref).tolist() == pytest.approx(expected, rel=1e-12)
    assert A.LSC_QUANTILE_Z == pytest.approx(norm.ppf(0.85), rel=1e-15)
    with pytest.raises(ValueError, match="at least 2 reference samples"):
        A.lsc_reference(torch.tensor([[1.0]]))


def test_lsc_needs_two_reference_samples_in_the_config():
    from rlhf_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="reward.reference_samples must be at least 2"):
        load_config(None, ["reward.transform=lsc", "reward.reference_samples=1"])


def test_lsc_and_par():
    ref = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    r_ref = 1 + A.LSC_QUANTILE_Z * (math.sqrt(2) + 1e-5)
    expected = math.log(1 / (1 + math.exp(-(3 - r_ref))))
    assert A.transform(torch.tensor([3.0], dtype=torch.float64), "lsc", ref).item() == pytest.approx(expected)
    par = A.transform(torch.tensor([1.0]), "par", ref).item()
    assert par == pytest.approx((1 / (1 + math.exp(-1)) + 1 / (1 + math.exp(1))) / 2)  # = 0.5
    assert A.transform(torch.tensor([1.0]), "none", None).item() == 1.0
    with pytest.raises(ValueError, match="reference"):
        A.transform(torch.tensor([1.0]), "par", None)
