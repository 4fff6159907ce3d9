"""Reward-model losses: pure functions on reward tensors.

Formulas follow ../shared/reference/PAPERS.md (A.2 for the pairwise losses and BSR, B.1/B.4 for the
ranking utilities). Every function takes raw rewards (the value head's output, "logits") and returns
a scalar loss to *minimise*.

Pairwise losses take `chosen` and `rejected` of equal shape: element k of `chosen` is preferred to
element k of `rejected`. Ranking data (a prompt with n completions, best first) is turned into all
n(n-1)/2 such pairs by `pairs_best_first`, so every pairwise loss also trains on rankings.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Utility = Callable[[torch.Tensor], torch.Tensor]

# --------------------------------------------------------------------------------------------
# Bradley-Terry and the paper's baselines (PAPERS.md A.2)
# --------------------------------------------------------------------------------------------


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Bradley-Terry: mean of -log sigmoid(chosen - rejected - margin)."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def hinge_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """BT-Hinge as the BSR paper's code runs it: mean relu(margin - (chosen - rejected)), no BT
    term."""
    return F.relu(margin - (chosen - rejected)).mean()


def bt_norm_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """BT-Norm (logit normalisation): -log sigmoid(delta / sqrt(r_w^2 + r_l^2)), no epsilon."""
    return -F.logsigmoid((chosen - rejected) / torch.sqrt(chosen**2 + rejected**2)).mean()


def bt_dr_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """BT-DR (Eurus): BT plus -log sigmoid(r_w) - log sigmoid(-r_l), per pair, averaged."""
    return (-F.logsigmoid(chosen - rejected) - F.logsigmoid(chosen) - F.logsigmoid(-rejected)).mean()


def center_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair centering (TRL's center_rewards, Eisenstein et al.): mean of (r_w + r_l)^2.

    Not BSR: this squares each pair's sum, BSR squares the mean over the whole batch.
    """
    return ((chosen + rejected) ** 2).mean()


# --------------------------------------------------------------------------------------------
# BSR: batch-wise sum-to-zero regularisation (PAPERS.md A.2 item 2)
# --------------------------------------------------------------------------------------------


def batch_mean_penalty(rewards: torch.Tensor) -> torch.Tensor:
    """(mean of every reward in the batch)^2 - the BSR term for any set of rewards."""
    return rewards.mean() ** 2


def bsr_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """BSR: (mean of the 2B values in cat(chosen, rejected))^2. Not a sum of squares, not per
    pair."""
    return batch_mean_penalty(torch.cat([chosen.reshape(-1), rejected.reshape(-1)]))


def global_batch_mean(local_rewards: torch.Tensor, group=None) -> torch.Tensor:
    """Mean of the rewards of *all* data-parallel ranks, differentiable in this rank's rewards.

    The other ranks' sums arrive by all-reduce and are constants here. Each rank's penalty
    `world_size * mean**2` then back-propagates exactly its share of d(mean**2)/d(theta); after the
    data-parallel gradient average (divide by world size) the gradient equals that of one process
    computing mean(all rewards)**2 on the full batch. `bsr_global_penalty` applies that factor.
    """
    import torch.distributed as dist

    local_sum = local_rewards.sum()
    # built on the rewards' device with no host round trip (nccl reduces device tensors only)
    count = torch.full((), float(local_rewards.numel()), dtype=local_sum.dtype,
                       device=local_sum.device)
    totals = torch.stack([local_sum.detach(), count])
    dist.all_reduce(totals, group=group)
    global_sum, global_count = totals.unbind()
    return (local_sum + (global_sum - local_sum.detach())) / global_count


def bsr_global_penalty(local_rewards: torch.Tensor, group=None) -> torch.Tensor:
    """Per-rank BSR term whose data-parallel *average* has the full-batch value and gradient.

    Its gradient is world_size * d(mean**2) (see `global_batch_mean`), but its value is mean**2, the
    same on every rank: a logged loss averaged over ranks then holds the BSR term once, not
    world-size times."""
    import torch.distributed as dist

    penalty = global_batch_mean(local_rewards, group) ** 2
    scaled = dist.get_world_size(group) * penalty
    return scaled - (scaled - penalty).detach()


# --------------------------------------------------------------------------------------------
# Ranking utilities (PAPERS.md B.1, B.2, B.4)
# --------------------------------------------------------------------------------------------

UTILITY_NAMES = ("x", "log", "inv", "pow", "neg_pow", "logsigmoid")


def _unshifted(name: str, gamma: float, c: float) -> Utility:
    return {
        "x": lambda x: x,
        "log": torch.log,
        "inv": lambda x: -1.0 / x,
        "pow": lambda x: x**gamma,
        "neg_pow": lambda x: -(x ** (-gamma)),
        "logsigmoid": lambda x: F.logsigmoid(c * x),
    }[name]


def _slope_at_zero(name: str, eps: float, gamma: float) -> float:
    """U'(0) of the eps-shifted utility: the slope of its linear continuation for x <= 0."""
    return {
        "log": 1.0 / eps,
        "inv": 1.0 / eps**2,
        "pow": gamma * eps ** (gamma - 1.0),
        "neg_pow": gamma * eps ** (-gamma - 1.0),
    }[name]


def utility(name: str, eps: float = 0.1, gamma: float = 0.5, c: float = 4.0) -> Utility:
    """The utility U as a function on tensors.

    name: `x`, `log`, `inv` (-1/x), `pow` (x^gamma), `neg_pow` (-x^-gamma), `logsigmoid` (log sigmoid(c x)).
    eps > 0 (training): the reward-collapse code's shifted form U(x + eps) - U(eps) for x > 0, continued
      linearly with slope U'(0) for x <= 0 - finite and C^1 everywhere. For `log` and `inv` this is
      exactly the code's `log` (slope 10) and `x_inv` (slope 100) at eps = 0.1. (For x2/x_inv2 the
      code continues with slope 1; we use U'(0) for every utility.)
    eps = 0 (theory): the unshifted U, defined for x > 0.
    `x` and `logsigmoid` are finite everywhere and ignore eps.
    """
    if name not in UTILITY_NAMES:
        raise ValueError(f"unknown utility {name!r}; choose one of {', '.join(UTILITY_NAMES)}")
    if eps < 0:
        raise ValueError(f"utility eps must be >= 0, got {eps}")
    if name in ("pow", "neg_pow") and not gamma > 0:
        raise ValueError(f"utility {name!r} needs gamma > 0, got {gamma}")
    base = _unshifted(name, gamma, c)
    if name in ("x", "logsigmoid") or eps == 0:
        return base
    offset = float(base(torch.tensor(eps, dtype=torch.float64)))
    slope = _slope_at_zero(name, eps, gamma)

    def shifted(x: torch.Tensor) -> torch.Tensor:
        positive = base(x.clamp(min=0.0) + eps) - offset
        return torch.where(x > 0, positive, slope * x)

    shifted.__name__ = f"{name}_shifted_eps{eps}"
    return shifted


def utility_pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, u: Utility) -> torch.Tensor:
    """Mean over pairs of -U(sigmoid(chosen) - sigmoid(rejected)): rewards R = sigmoid(f) in (0,
    1)."""
    return -u(torch.sigmoid(chosen) - torch.sigmoid(rejected)).mean()


def pairs_best_first(n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j), i < j, of n completions listed best first: i is preferred to j."""
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


def ranking_loss(logits: torch.Tensor, u: Utility) -> torch.Tensor:
    """Ranking loss of the reward-collapse paper.

    logits: (..., n), a prompt's n completions listed best first. R = sigmoid(logit).
    Returns the mean over all pairs i < j (and over leading dims) of -U(R_i - R_j).
    """
    i, j = pairs_best_first(logits.shape[-1], logits.device)
    return utility_pair_loss(logits[..., i], logits[..., j], u)


def prompt_aware_pair_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, is_open: torch.Tensor, u_closed: Utility,
    u_open: Utility, closed_weight: float = 1.0, open_weight: float = 1.0,
) -> torch.Tensor:
    """Like `utility_pair_loss`, with U chosen per pair: u_open where is_open, else u_closed, each
    times its weight. A positive weight scales a prompt's utility, so it moves no prompt's optimum;
    it sets how much of the shared model's gradient each prompt type gets."""
    diff = torch.sigmoid(chosen) - torch.sigmoid(rejected)
    return -torch.where(is_open, open_weight * u_open(diff), closed_weight * u_closed(diff)).mean()


def prompt_aware_ranking_loss(
    logits: torch.Tensor, is_open: torch.Tensor, u_closed: Utility, u_open: Utility
) -> torch.Tensor:
    """Prompt-aware ranking loss: U per prompt from its type.

    logits: (G, n) best first; is_open: (G,) bool.
    """
    i, j = pairs_best_first(logits.shape[-1], logits.device)
    pair_open = is_open.reshape(-1, 1).expand(-1, i.numel())
    return prompt_aware_pair_loss(logits[..., i], logits[..., j], pair_open, u_closed, u_open)

