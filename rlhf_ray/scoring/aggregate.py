"""Combining and transforming rewards for RL (PAPERS.md C (i)-(iii)). Pure functions on tensors.

- ensembles over M reward models (Coste et al.): mean, WCO = min, UWO = mean - lambda * population
  variance;
- transforms against a per-prompt reference: LSC = log sigmoid(r - r_ref(x)) (Wang et al.), where
  r_ref(x) is the 0.85 quantile of a normal fitted to the reference policy's rewards for x; PAR =
  mean_m sigmoid(r - r(x, y_ref,m)) (Fu et al.).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

AGGREGATIONS = ("mean", "wco", "uwo")
TRANSFORMS = ("none", "lsc", "par")


def aggregate(member_rewards: torch.Tensor, how: str = "mean",
              uwo_lambda: float = 0.5) -> torch.Tensor:
    """member_rewards (M, N) -> (N,)."""
    if how == "mean":
        return member_rewards.mean(0)
    if how == "wco":
        return member_rewards.min(0).values
    if how == "uwo":
        return member_rewards.mean(0) - uwo_lambda * member_rewards.var(0, unbiased=False)
    raise ValueError(f"unknown aggregation {how!r}: use one of {AGGREGATIONS}")


LSC_QUANTILE_Z = 1.0364333894937898  # scipy.stats.norm.ppf(0.85)
LSC_STD_EPS = 1e-5


def lsc_reference(reference_rewards: torch.Tensor) -> torch.Tensor:
    """r_ref(x) from the reference policy's rewards (P, m), m >= 2: the 0.85 quantile of a normal
    fitted to them, mean + norm.ppf(0.85) * (sample std + 1e-5), as PAR's released reimplementation
    of LSC computes it (the sample standard deviation, ddof 1, and its 1e-5)."""
    if reference_rewards.shape[-1] < 2:
        raise ValueError("LSC's reference reward needs at least 2 reference samples per prompt "
                         "(reward.reference_samples): it fits a normal to them")
    std = reference_rewards.std(-1, unbiased=True) + LSC_STD_EPS
    return reference_rewards.mean(-1) + LSC_QUANTILE_Z * std


def lsc(rewards: torch.Tensor, r_ref: torch.Tensor) -> torch.Tensor:
    """log sigmoid(r - r_ref(x)); r_ref broadcast per sample."""
    return F.logsigmoid(rewards - r_ref)


def par(rewards: torch.Tensor, reference_rewards: torch.Tensor, k: float = 1.0) -> torch.Tensor:
    """mean over m of sigmoid(k (r - r(x, y_ref,m))); rewards (N,), reference_rewards (N, m)."""
    return torch.sigmoid(k * (rewards.unsqueeze(-1) - reference_rewards)).mean(-1)


def transform(rewards: torch.Tensor, how: str,
              reference_rewards: torch.Tensor | None) -> torch.Tensor:
    """Apply a transform; `reference_rewards` (N, m) are the reference responses' rewards per
    sample."""
    if how == "none":
        return rewards
    if reference_rewards is None:
        raise ValueError(f"reward transform {how!r} needs reference rewards")
    if how == "lsc":
        return lsc(rewards, lsc_reference(reference_rewards))
    if how == "par":
        return par(rewards, reference_rewards)
    raise ValueError(f"unknown reward transform {how!r}: use one of {TRANSFORMS}")
