"""Evaluation metrics for reward models (PAPERS.md A.6, A.7, B.5). Pure functions on
lists/arrays."""
from __future__ import annotations

import math

import numpy as np

from rlhf_ray.data.schema import Ranking
from rlhf_ray.utils.stats import bootstrap_ci, nanmean  # noqa: F401  (part of this module's API)


def pair_outcomes(rankings: list[Ranking], rewards: list[list[float]]) -> list[list[int]]:
    """Per ranking: 1/0 for each preference pair (i before j, gold scores not tied) the rewards get
    right."""
    out = []
    for g, r in zip(rankings, rewards):
        out.append([
            int(r[i] > r[j])
            for i in range(len(r)) for j in range(i + 1, len(r))
            if not (g.scores and g.scores[i] == g.scores[j])
        ])
    return out


def pairwise_accuracy(rankings: list[Ranking], rewards: list[list[float]]) -> float:
    flat = [x for row in pair_outcomes(rankings, rewards) for x in row]
    return sum(flat) / len(flat) if flat else float("nan")


def kendall_taus(rankings: list[Ranking], rewards: list[list[float]]) -> list[float]:
    """Per-prompt Kendall tau-b between gold scores and rewards (nan where undefined)."""
    from scipy.stats import kendalltau

    return [float(kendalltau(g.scores, r).statistic) for g, r in zip(rankings, rewards)]


def partial_taus(rankings: list[Ranking], rewards: list[list[float]],
                 control: list[list[float]]) -> list[float]:
    """Per-prompt partial Kendall tau of rewards with gold, `control` (e.g. length) held fixed:
    (t_rg - t_rc t_gc) / sqrt((1 - t_rc^2)(1 - t_gc^2)); nan where undefined (a control that orders
    a prompt's samples exactly as either does)."""
    from scipy.stats import kendalltau

    out = []
    for g, r, c in zip(rankings, rewards, control):
        t_rg, t_rc, t_gc = (float(kendalltau(a, b).statistic) for a,
                            b in ((r, g.scores), (r, c), (g.scores, c)))
        denominator = math.sqrt(max(0.0, (1 - t_rc**2) * (1 - t_gc**2)))
        out.append((t_rg - t_rc * t_gc) / denominator if denominator > 1e-12 else math.nan)
    return out


def accuracy_of_rows(rows: list[list[int]]) -> float:
    flat = [x for row in rows for x in row]
    return sum(flat) / len(flat) if flat else float("nan")


def collapse_curves(rankings: list[Ranking], rewards: list[list[float]]) -> dict:
    """Mean and sample SD of R = sigmoid(f) by completion index (1 = shortest) per prompt type, and
    the mean absolute gap between the open and closed mean curves (0 = collapse)."""
    out: dict = {}
    for kind in ("open", "closed"):
        rows = [[1 / (1 + math.exp(-x)) for x in reversed(r)] for g,
                r in zip(rankings, rewards) if g.prompt_type == kind]
        if rows:
            arr = np.array(rows)
            # sample SD over prompts
            sd = arr.std(0, ddof=1).tolist() if len(arr) > 1 else [0.0] * arr.shape[1]
            out[kind] = {"mean": arr.mean(0).tolist(), "std": sd, "prompts": len(rows)}
    if "open" in out and "closed" in out:
        out["open_closed_gap"] = float(np.abs(np.array(out["open"]["mean"]) - np.array(out["closed"]["mean"])).mean())
    return out


def effective_rank(hidden: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the hidden-state matrix (Roy &
    Vetterli)."""
    s = np.linalg.svd(np.asarray(hidden, dtype=np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def l1_to_target(curve: list[float], target) -> float:
    """Mean absolute distance between a mean reward curve and its theoretical optimum."""
    return float(np.abs(np.asarray(curve) - np.asarray(target)).mean())
