"""Reward-collapse theory (PAPERS.md B.1-B.3): the reward distribution a ranking loss drives every
prompt to, whatever the prompt.

    max  sum_{i<j} U(r_j - r_i)   over 0 <= r_1 <= ... <= r_n <= 1

`optimal_rewards` solves it for the *unshifted* utilities of `rlhf_ray.rm.losses.utility` (eps = 0):
exactly for `x` (half at 0, half at 1) and `log` (Fekete points), numerically (multi-start) for the
others. `limit_distribution` is the n -> infinity law.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize, stats

SINGULAR_AT_ZERO = ("log", "inv", "neg_pow")  # U(0) = -inf: optimal gaps are strictly positive


def utility_np(name: str, gamma: float = 0.5, c: float = 4.0):
    """The unshifted U on numpy arrays (x > 0 for the singular ones)."""
    return {
        "x": lambda x: x,
        "log": np.log,
        "inv": lambda x: -1.0 / x,
        "pow": lambda x: np.power(np.maximum(x, 0.0), gamma),
        "neg_pow": lambda x: -np.power(x, -gamma),
        "logsigmoid": lambda x: -np.logaddexp(0.0, -c * x),
    }[name]


def objective(rewards: np.ndarray, name: str, gamma: float = 0.5, c: float = 4.0) -> float:
    """sum_{i<j} U(r_j - r_i) for rewards sorted ascending."""
    r = np.sort(np.asarray(rewards, dtype=float))
    i, j = np.triu_indices(len(r), k=1)
    with np.errstate(divide="ignore"):
        return float(np.sum(utility_np(name, gamma, c)(r[j] - r[i])))


def _cumulative(gaps: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(gaps)])


def _from_logits(z: np.ndarray) -> np.ndarray:
    gaps = np.exp(z - z.max())
    gaps /= gaps.sum()
    return np.concatenate([[0.0], np.cumsum(gaps)])


def _numerical(name: str, n: int, gamma: float, c: float, starts: int, seed: int) -> np.ndarray:
    """Multi-start search. The extreme rewards are 0 and 1 for any increasing U (stretching widens
    every gap), so the unknowns are the n-1 gaps, which sum to 1."""
    rng = np.random.default_rng(seed)
    u = utility_np(name, gamma, c)
    i, j = np.triu_indices(n, k=1)
    best, best_value = None, -np.inf
    for start in range(starts):
        init = np.zeros(n - 1) if start == 0 else rng.normal(0.0, 1.0, n - 1)
        if name in SINGULAR_AT_ZERO:
            # gaps = softmax(z): strictly positive, the singularity keeps them away from 0
            res = optimize.minimize(
                lambda z: -np.sum(u(_from_logits(z)[j] - _from_logits(z)[i])), init, method="BFGS",
                options={"gtol": 1e-12, "maxiter": 20000},
            )
            r = _from_logits(res.x)
        else:
            # U finite at 0: gaps may be exactly 0 (atoms), so optimise them directly on the simplex
            g0 = np.exp(init) / np.exp(init).sum()
            res = optimize.minimize(
                lambda g: -np.sum(u(_cumulative(g)[j] - _cumulative(g)[i])), g0, method="SLSQP",
                bounds=[(0.0, 1.0)] * (n - 1),
                constraints=[{"type": "eq", "fun": lambda g: g.sum() - 1.0}],
                options={"ftol": 1e-15, "maxiter": 2000},
            )
            gaps = np.clip(res.x, 0, None)
            r = np.clip(_cumulative(gaps / gaps.sum()), 0.0, 1.0)
        value = objective(r, name, gamma, c)
        if value > best_value:
            best, best_value = r, value
    return np.sort(best)


def optimal_rewards(utility: str, n: int, gamma: float = 0.5, c: float = 4.0, starts: int = 8,
                    seed: int = 0) -> np.ndarray:
    """The optimal n rewards, sorted ascending in [0, 1], for the unshifted utility `utility`."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if utility == "x" or (utility == "pow" and gamma >= 1):
        # linear / convex U: polarised, half at 0 and half at 1 (the middle one of odd n is free:
        # 0.5)
        r = np.zeros(n)
        r[n - n // 2 :] = 1.0
        if n % 2:
            r[n // 2] = 0.5
        return r
    if utility == "log":
        # Fekete points: 0, 1 and (1 + z) / 2 for the roots z of P'_{n-1}
        roots = np.polynomial.legendre.Legendre.basis(n - 1).deriv().roots() if n > 2 else np.array([])
        return np.sort(np.concatenate([[0.0], (1.0 + np.real(roots)) / 2.0, [1.0]]))
    if utility not in ("inv", "pow", "neg_pow", "logsigmoid"):
        raise ValueError(f"unknown utility {utility!r}")
    return _numerical(utility, n, gamma, c, starts, seed)


def limit_distribution(utility: str, gamma: float = 0.5, c: float = 4.0, n_numeric: int = 200):
    """The n -> infinity law of the optimal rewards (PAPERS.md B.2), as a scipy distribution."""
    if utility == "x" or (utility == "pow" and gamma >= 1):
        return stats.rv_discrete(name="polarised", values=([0.0, 1.0], [0.5, 0.5]))
    if utility == "pow":
        return stats.beta((1 - gamma) / 2, (1 - gamma) / 2)
    if utility == "log":
        return stats.beta(0.5, 0.5)
    if utility == "neg_pow" and gamma < 1:
        return stats.beta((1 + gamma) / 2, (1 + gamma) / 2)
    if utility in ("inv", "neg_pow"):
        return stats.uniform(0.0, 1.0)
    if utility == "logsigmoid":
        # atoms at 0 and 1 plus a continuous middle: the empirical law of a large-n optimum
        r = optimal_rewards("logsigmoid", n_numeric, c=c, starts=1)
        r = np.where(r < 1e-4, 0.0, np.where(r > 1 - 1e-4, 1.0, r))  # snap the atoms onto 0 and 1
        values, counts = np.unique(np.round(r, 6), return_counts=True)
        return stats.rv_discrete(name="logsigmoid_limit", values=(values, counts / counts.sum()))
    raise ValueError(f"unknown utility {utility!r}")
