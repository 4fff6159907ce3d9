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


def test_lsc_and_par():
    ref = torch.tensor([[0.0, 2.0]])  # mean 1, population std 1
    r_ref = A.lsc_reference(ref)
    assert r_ref.item() == pytest.approx(1 + 1.0364)
    expected = math.log(1 / (1 + math.exp(-(3 - 2.0364))))
    assert A.transform(torch.tensor([3.0]), "lsc", ref).item() == pytest.approx(expected)
    par = A.transform(torch.tensor([1.0]), "par", ref).item()
    assert par == pytest.approx((1 / (1 + math.exp(-1)) + 1 / (1 + math.exp(1))) / 2)  # = 0.5
    assert A.transform(torch.tensor([1.0]), "none", None).item() == 1.0
    with pytest.raises(ValueError, match="reference"):
        A.transform(torch.tensor([1.0]), "par", None)
