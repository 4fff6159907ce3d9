"""RLOO: advantages, KL estimators and the two policy losses users know. Pure functions on tensors.

Formulas: PAPERS.md A.5 and C (iv). Shapes: B = num_prompts * k sequences ordered prompt-major
(the k samples of a prompt are consecutive), T = response tokens, `mask` (B, T) is 1 on real tokens.

Two variants (ANCHORS #9: say which one runs):
- `sequence` (the BSR paper's and TRL's): the KL is summed over the response and folded into the
  reward, R_i = score_i - beta * sum_t kl_t; A = rloo_advantages(R); PPO-clip on the *sequence* ratio
  exp(sum_t logp_new - logp_old).
- `token` (OpenRLHF's): A_t = rloo_advantages(score)_i - beta * sum_{s >= t} kl_s (per-token KL in the
  reward, returns with gamma = 1); PPO-clip on the *token* ratio, averaged over real tokens.
"""
from __future__ import annotations

import torch


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (num_prompts, k) -> A_i = R_i - mean_{j != i} R_j, same shape (k >= 2)."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got {k}")
    total = rewards.sum(-1, keepdim=True)
    return rewards - (total - rewards) / (k - 1)


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(pi || pi_ref): log pi - log pi_ref (unbiased, can be negative)."""
    return logp - logp_ref


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator: exp(d) - d - 1 with d = log pi_ref - log pi (unbiased, >= 0)."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1.0


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def sequence_advantages(scores: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, beta: float, k: int) -> torch.Tensor:
    """Sequence variant: (B,) advantages of R = score - beta * sum_t kl_t, leave-one-out within prompts."""
    rewards = scores - beta * masked_sum(token_kl, mask)
    return rloo_advantages(rewards.view(-1, k)).view(-1)


def token_advantages(scores: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, beta: float, k: int) -> torch.Tensor:
    """Token variant: (B, T) advantages: RLOO on the scores, minus beta times the KL still to come."""
    baseline_free = rloo_advantages(scores.view(-1, k)).view(-1, 1)
    kl_to_go = torch.flip(torch.cumsum(torch.flip(token_kl * mask, [-1]), -1), [-1])
    return (baseline_free - beta * kl_to_go) * mask


def sequence_clip_loss(logp_new, logp_old, mask, advantages, clip: float = 0.2):
    """PPO-clip on the sequence ratio; returns (loss, fraction of sequences clipped)."""
    ratio = torch.exp(masked_sum(logp_new - logp_old, mask))
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = torch.max(-advantages * ratio, -advantages * clipped).mean()
    clip_frac = ((ratio - clipped).abs() > 0).float().mean()
    return loss, clip_frac


def token_clip_loss(logp_new, logp_old, mask, advantages, clip: float = 0.2):
    """PPO-clip on the token ratio, averaged over real tokens; returns (loss, clipped-token fraction)."""
    ratio = torch.exp(logp_new - logp_old)
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.max(-advantages * ratio, -advantages * clipped), mask)
    clip_frac = masked_mean(((ratio - clipped).abs() > 0).float(), mask)
    return loss, clip_frac


def rloo_loss(variant: str, logp_new, logp_old, logp_ref, mask, scores, beta: float, k: int, clip: float = 0.2,
              kl_estimator: str = "k1"):
    """The policy loss of one RLOO update and its stats, for variant `sequence` or `token`."""
    token_kl = KL_ESTIMATORS[kl_estimator](logp_old, logp_ref).detach()
    if variant == "sequence":
        adv = sequence_advantages(scores, token_kl, mask, beta, k)
        loss, clip_frac = sequence_clip_loss(logp_new, logp_old, mask, adv, clip)
    elif variant == "token":
        adv = token_advantages(scores, token_kl, mask, beta, k)
        loss, clip_frac = token_clip_loss(logp_new, logp_old, mask, adv, clip)
    else:
        raise ValueError(f"unknown RLOO variant {variant!r}: use 'sequence' or 'token'")
    stats = {
        "kl": float(masked_sum(token_kl, mask).mean()),
        "advantage_mean": float(adv.mean()),
        "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "clip_frac": float(clip_frac),
    }
    return loss, stats
