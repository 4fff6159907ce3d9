"""Correcting for the policy that sampled: pure functions on tensors.

The samples come from the rollout engine's copy of the policy (the behaviour policy, mu): an older
version with overlapped generation (`rloo.max_staleness`), and never quite the learner's numbers
even on-policy (another kernel, another precision). The learner's update assumes they came from its
own policy (pi_old, its log-probs before the update). The per-token importance ratio pi_old / mu,
with the log-probs vLLM returned with each sample (`Rollouts.logprobs`, the temperature-scaled
distribution it drew from), reweights the loss (`learner.correction`):

- `tis`: truncated importance sampling, as OpenRLHF's vLLM correction: the loss of each token
  (`token` variant) or sequence (`sequence`: the product over its tokens) times the ratio clamped to
  [`is_floor`, `is_cap`], detached (OpenRLHF's `vllm_is_truncated_threshold` is [0.5, 5] by default;
  `is_floor` 0 caps from above only);
- `seq_mask`: a sequence whose geometric-mean token ratio lies outside [1 / is_cap, is_cap] is left
  out of the loss, as veRL's sequence-level rejection; the others count fully, and the loss is
  averaged over the kept ones only, as veRL's (`rloo.loss_denominator` with `kept`);
- `none`: weight 1 (the ratios are still measured).

Statistics per step: the mismatch KL(mu || pi_old) per token (k3 estimate on mu's samples, >= 0),
the weights' mean and max, and the fraction truncated (tis) or masked (seq_mask).
"""
from __future__ import annotations

import torch

CORRECTIONS = ("none", "tis", "seq_mask")


def behaviour_weights(logp_old: torch.Tensor, logp_behaviour: torch.Tensor, mask: torch.Tensor,
                      how: str,
                      is_cap: float, per_sequence: bool,
                      is_floor: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The loss weights, detached: (B,) per sequence (the `sequence` variant) or (B, T) per token,
    and the sums behind the step's statistics (added over micro-batches and ranks, see
    `correction_stats`). The units the weights are counted in are sequences for `seq_mask` and
    per-sequence weights, else tokens."""
    if how not in CORRECTIONS:
        raise ValueError(f"unknown behaviour correction {how!r}: use one of {', '.join(CORRECTIONS)}")
    log_ratio = ((logp_old - logp_behaviour) * mask).detach()
    # k3 of KL(mu || pi_old), per token
    mismatch = ((torch.exp(log_ratio) - log_ratio - 1) * mask).sum()
    if how == "seq_mask":
        geo_mean = torch.exp(log_ratio.sum(-1) / mask.sum(-1).clamp(min=1))
        units = ((geo_mean >= 1 / is_cap) & (geo_mean <= is_cap)).to(mask.dtype)
        raw, unit_mask = geo_mean, torch.ones_like(units)
        weights = units if per_sequence else units.unsqueeze(-1) * mask
        cut = (1 - units).sum()
    else:
        raw = torch.exp(log_ratio.sum(-1)) if per_sequence else torch.exp(log_ratio)
        unit_mask = torch.ones_like(raw) if per_sequence else mask
        units = (raw.clamp(min=is_floor,
                           max=is_cap) if how == "tis" else torch.ones_like(raw)) * unit_mask
        weights = units
        outside = (raw > is_cap) | (raw < is_floor)
        cut = (outside.to(mask.dtype) * unit_mask).sum() if how == "tis" else raw.new_zeros(())
    return weights, {"mismatch_kl_sum": mismatch, "tokens": mask.sum(),
                     "ratio_sum": (raw * unit_mask).sum(),
                     "ratio_max": (raw * unit_mask).max(), "cut": cut, "units": unit_mask.sum()}


def correction_stats(parts: list[dict]) -> dict:
    """The step's statistics from the sums of its micro-batches: mismatch KL per token, the
    importance ratios' mean and max (before truncation), and the fraction of units truncated or
    masked."""
    total = {key: sum(float(p[key]) for p in parts) for key in ("mismatch_kl_sum", "tokens",
                                                                "ratio_sum", "cut", "units")}
    units = max(total["units"], 1.0)
    return {"mismatch_kl": total["mismatch_kl_sum"] / max(total["tokens"], 1.0),
            "is_ratio_mean": total["ratio_sum"] / units,
            "is_ratio_max": max(float(p["ratio_max"]) for p in parts),
            "is_cut_frac": total["cut"] / units}
