"""From a batch of ranking to one training loss, as the config says.

Completions of all rankings are flattened into one list (one reward each); every preference inside a
ranking becomes a pair (hi, lo) of indices into that list. Pairwise losses (bt, hinge, bt_norm, bt_dr)
and ranking losses (utility U on sigmoid rewards, optionally prompt-aware) all read the same pairs,
and BSR reads all rewards of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_ray.config import LossConfig, UtilityConfig
from rlhf_ray.data.schema import Ranking
from rlhf_ray.rm import losses as L


@dataclass
class FlatBatch:
    prompts: list[str]  # one per completion
    responses: list[str]
    hi: torch.Tensor  # (P,) index of the preferred completion of each pair
    lo: torch.Tensor  # (P,)
    pair_open: torch.Tensor  # (P,) bool: the pair's prompt is open-ended
    num_rankings: int

    def to(self, device: torch.device) -> "FlatBatch":
        """The pair indices on the rewards' device (the losses index the rewards with them)."""
        return FlatBatch(self.prompts, self.responses, self.hi.to(device), self.lo.to(device),
                         self.pair_open.to(device), self.num_rankings)


def flatten_rankings(rankings: list[Ranking]) -> FlatBatch:
    prompts, responses, hi, lo, pair_open = [], [], [], [], []
    for g in rankings:
        base = len(responses)
        n = len(g.completions)
        prompts.extend([g.prompt] * n)
        responses.extend(g.completions)
        i, j = L.pairs_best_first(n)
        hi.append(i + base)
        lo.append(j + base)
        pair_open.append(torch.full((i.numel(),), g.is_open))
    return FlatBatch(prompts, responses, torch.cat(hi), torch.cat(lo), torch.cat(pair_open),
                     len(rankings))


def make_utility(cfg: UtilityConfig) -> L.Utility:
    return L.utility(cfg.name, eps=cfg.eps, gamma=cfg.gamma, c=cfg.c)


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor, pair_open: torch.Tensor,
                    cfg: LossConfig):
    """The loss's main term (without BSR or centering)."""
    if cfg.name == "bt":
        return L.bt_loss(chosen, rejected, cfg.margin)
    if cfg.name == "hinge":
        return L.hinge_loss(chosen, rejected, cfg.margin)
    if cfg.name == "bt_norm":
        return L.bt_norm_loss(chosen, rejected)
    if cfg.name == "bt_dr":
        return L.bt_dr_loss(chosen, rejected)
    if cfg.prompt_aware.enabled:
        u_closed, u_open = make_utility(cfg.prompt_aware.closed), make_utility(cfg.prompt_aware.open)
        pa = cfg.prompt_aware
        return L.prompt_aware_pair_loss(chosen, rejected, pair_open, u_closed, u_open,
                                        pa.closed_weight, pa.open_weight)
    return L.utility_pair_loss(chosen, rejected, make_utility(cfg.utility))


def rm_loss(rewards: torch.Tensor, batch: FlatBatch, cfg: LossConfig, dp_group=None,
            local_batch_size: int | None = None) -> torch.Tensor:
    """Total loss for one (micro-)batch on one rank, in fp32 whatever the model's dtype.

    BSR scope `local`: lambda * (mean of this micro-batch's rewards)^2, lambda optionally times the
    per-device batch size `local_batch_size` (the paper's code; default: this batch's rankings), which
    does not change when the batch is split into micro-batches. Scope `global`: the mean over all
    data-parallel ranks, scaled so that the averaged gradient equals the full-batch one (see
    losses.bsr_global_penalty).
    """
    rewards = rewards.float()
    chosen, rejected = rewards.index_select(0, batch.hi), rewards.index_select(0, batch.lo)
    main = preference_loss(chosen, rejected, batch.pair_open, cfg)
    total = main
    if cfg.center_coef > 0:
        total = total + cfg.center_coef * L.center_penalty(chosen, rejected)
    if cfg.bsr.coef > 0:
        if cfg.bsr.scope == "global":
            total = total + cfg.bsr.coef * L.bsr_global_penalty(rewards, dp_group)
        else:
            per_device = local_batch_size if local_batch_size is not None else batch.num_rankings
            coef = cfg.bsr.coef * (per_device if cfg.bsr.scale_by_local_batch else 1)
            total = total + coef * L.batch_mean_penalty(rewards)
    return total
