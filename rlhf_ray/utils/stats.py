"""Statistics shared by the reward-model evaluation and the policy's held-out check: pure
functions."""
from __future__ import annotations

from typing import Callable

import numpy as np


def nanmean(values) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def bootstrap_ci(per_prompt: list, statistic: Callable = nanmean, n: int = 1000,
                 level: float = 0.95, seed: int = 0):
    """Percentile bootstrap over prompts: (low, high) of `statistic` at `level`."""
    if not per_prompt or n <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    k = len(per_prompt)
    stats = np.asarray([statistic([per_prompt[i] for i in rng.integers(0, k, k)]) for _ in range(n)],
                       dtype=float)
    if not np.isfinite(stats).any():  # e.g. every prompt's tau undefined (all tied): no interval
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    return (float(np.nanquantile(stats, alpha)), float(np.nanquantile(stats, 1 - alpha)))
