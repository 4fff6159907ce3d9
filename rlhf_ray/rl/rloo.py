"""RLOO: advantages, KL estimators and the two policy losses users know. Pure functions on tensors.

Formulas: PAPERS.md A.5 and C (iv). Shapes: B = num_prompts * k sequences ordered prompt-major
(the k samples of a prompt are consecutive), T = response tokens, `mask` (B, T) is 1 on real tokens.

Two variants (ANCHORS #9: say which one runs):
- `sequence` (the BSR paper's and TRL's): the KL is summed over the response and folded into the
  reward, R_i = score_i - beta * sum_t kl_t; A = rloo_advantages(R); PPO-clip on the *sequence*
  ratio exp(sum_t logp_new - logp_old).
- `token` (OpenRLHF's): A_t = rloo_advantages(score)_i - beta * sum_{s >= t} kl_s (per-token KL in
  the reward, returns with gamma = 1); PPO-clip on the *token* ratio, averaged over real tokens.
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


ESTIMATORS = ("rloo", "grpo", "dr_grpo", "reinforce_pp_baseline")
GRPO_STD_EPS = 1e-4  # TRL's GRPOTrainer: (r - mean) / (std + 1e-4)
WHITEN_VAR_MIN = 1e-8  # OpenRLHF: (a - mean) * rsqrt(max(var, 1e-8))


def group_advantages(rewards: torch.Tensor, estimator: str = "rloo") -> torch.Tensor:
    """Sequence-level advantages of rewards (num_prompts, k), by name:

    - `rloo`: R_i - mean_{j != i} R_j (leave-one-out baseline);
    - `grpo`: (R_i - mean) / (sample std + 1e-4) within the prompt, as TRL's GRPOTrainer;
    - `dr_grpo`: R_i - mean within the prompt (Dr. GRPO: no std division; no length normalisation
      either, which is the `sequence` loss variant's sum over tokens);
    - `reinforce_pp_baseline`: R_i - mean within the prompt, then whitened over the whole batch, (a
      - mean) / sqrt(max(population var, 1e-8)), as OpenRLHF's REINFORCE++-baseline (which whitens
      per token; per sequence here, the sequence-level part).
    """
    if rewards.dim() != 2 or rewards.shape[-1] < 2:
        raise ValueError(f"group_advantages needs rewards of shape (num_prompts, k >= 2), got {tuple(rewards.shape)}")
    if estimator == "rloo":
        return rloo_advantages(rewards)
    centred = rewards - rewards.mean(-1, keepdim=True)
    if estimator == "grpo":
        return centred / (rewards.std(-1, keepdim=True) + GRPO_STD_EPS)
    if estimator == "dr_grpo":
        return centred
    if estimator == "reinforce_pp_baseline":
        var = (centred - centred.mean()).pow(2).mean()
        return (centred - centred.mean()) * var.clamp(min=WHITEN_VAR_MIN).rsqrt()
    raise ValueError(f"unknown advantage estimator {estimator!r}: use one of {', '.join(ESTIMATORS)}")


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(pi || pi_ref): log pi - log pi_ref (unbiased, can be
    negative)."""
    return logp - logp_ref


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator: exp(d) - d - 1 with d = log pi_ref - log pi (unbiased, >= 0)."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1.0


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(-1)


WHITENED = ("reinforce_pp_baseline",)  # estimators whose last step whitens over the whole batch


def centring(estimator: str) -> str:
    """The per-prompt part of an estimator: a whitened one is centred per prompt first (dr_grpo)."""
    return "dr_grpo" if estimator in WHITENED else estimator


def sequence_advantages(scores: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor,
                        beta: float, k: int, estimator: str = "rloo") -> torch.Tensor:
    """Sequence variant: (B,) advantages of R = score - beta * sum_t kl_t, by `estimator` within
    prompts."""
    rewards = scores - beta * masked_sum(token_kl, mask)
    return group_advantages(rewards.view(-1, k), centring(estimator)).view(-1)


def token_advantages(scores: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, beta: float,
                     k: int, estimator: str = "rloo") -> torch.Tensor:
    """Token variant: (B, T) advantages: `estimator` on the scores, minus beta times the KL still to
    come."""
    baseline_free = group_advantages(scores.view(-1, k), centring(estimator)).view(-1, 1)
    kl_to_go = torch.flip(torch.cumsum(torch.flip(token_kl * mask, [-1]), -1), [-1])
    return (baseline_free - beta * kl_to_go) * mask


def whitening_sums(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(sum, sum of squares, count) of the advantages over sequences (B,) or real tokens (B, T):
    what micro-batches and ranks add up before `whiten`."""
    weight = torch.ones_like(advantages) if advantages.dim() == 1 else mask.to(advantages.dtype)
    return torch.stack([(advantages * weight).sum(), (advantages**2 * weight).sum(), weight.sum()])


def whiten(advantages: torch.Tensor, mask: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """(A - mean) / sqrt(max(var, 1e-8)) with the batch's mean and population variance from
    `sums`."""
    total, squares, count = sums.unbind()
    mean = total / count
    var = squares / count - mean**2
    out = (advantages - mean) * var.clamp(min=WHITEN_VAR_MIN).rsqrt()
    return out if advantages.dim() == 1 else out * mask


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip: float):
    """PPO's pessimistic surrogate max(-A r, -A clip(r)) elementwise, and where the clip is what it
    took: the clipped term strictly larger. That is TRL's and OpenRLHF's `clipfrac`: a ratio outside
    the band whose advantage's sign makes the clip inactive is not counted."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    return torch.max(unclipped, clipped), (clipped > unclipped).float()


def sequence_clip_loss(logp_new, logp_old, mask, advantages, clip: float = 0.2,
                       denominator: float | None = None, weights: torch.Tensor | None = None):
    """PPO-clip on the sequence ratio; returns (loss, fraction of sequences whose loss the clip
    set). Both are sums over these sequences divided by `denominator` (default: their count), so
    micro-batches add up. `weights` (B,): each sequence's loss times its weight (the behaviour
    correction)."""
    ratio = torch.exp(masked_sum(logp_new - logp_old, mask))
    surrogate, was_clipped = clipped_surrogate(ratio, advantages, clip)
    surrogate = surrogate if weights is None else surrogate * weights
    denominator = denominator or ratio.numel()
    return surrogate.sum() / denominator, was_clipped.sum() / denominator


def token_clip_loss(logp_new, logp_old, mask, advantages, clip: float = 0.2,
                    denominator: float | None = None, weights: torch.Tensor | None = None):
    """PPO-clip on the token ratio over real tokens; returns (loss, fraction of real tokens whose
    loss the clip set), sums divided by `denominator` (default: these sequences' real-token count).
    `weights` (B, T): each token's loss times its weight (the behaviour correction)."""
    ratio = torch.exp(logp_new - logp_old)
    surrogate, was_clipped = clipped_surrogate(ratio, advantages, clip)
    surrogate = surrogate if weights is None else surrogate * weights
    denominator = denominator or mask.sum().clamp(min=1)
    return (surrogate * mask).sum() / denominator, (was_clipped * mask).sum() / denominator


def advantages_of(variant: str, scores, logp_old, logp_ref, mask, beta: float, k: int,
                  kl_estimator: str = "k1",
                  estimator: str = "rloo", batch_sums: torch.Tensor | None = None):
    """The advantages of a batch, (B,) for `sequence` or (B, T) for `token`, and the per-token KL. A
    whitened estimator whitens with `batch_sums` (`whitening_sums` of the whole batch, every
    micro-batch and rank added up), or over these sequences when None."""
    token_kl = KL_ESTIMATORS[kl_estimator](logp_old, logp_ref).detach()
    if variant == "sequence":
        adv = sequence_advantages(scores, token_kl, mask, beta, k, estimator)
    elif variant == "token":
        adv = token_advantages(scores, token_kl, mask, beta, k, estimator)
    else:
        raise ValueError(f"unknown RLOO variant {variant!r}: use 'sequence' or 'token'")
    if estimator in WHITENED:
        adv = whiten(adv, mask, batch_sums if batch_sums is not None else whitening_sums(adv, mask))
    return adv, token_kl


CLIP_LOSSES = {"sequence": sequence_clip_loss, "token": token_clip_loss}


def loss_denominator(variant: str, mask: torch.Tensor, kept: torch.Tensor | None = None) -> float:
    """What a whole batch's loss is averaged over: sequences (`sequence`) or real tokens (`token`);
    with `kept` (a rejection's 0/1 weights, (B,) or (B, T)), the kept ones only, as veRL's
    token-mean over its masked response (the caller keeps the whole batch's total at least 1)."""
    # `behaviour_weights` of seq_mask: (B,) per sequence, or (B, T) times the mask
    if kept is not None:
        return float(kept.sum())
    return float(mask.shape[0]) if variant == "sequence" else float(mask.sum().clamp(min=1))


def kl_loss(logp_new, logp_ref, mask, kl_estimator: str = "k3", denominator: float | None = None):
    """The KL term of a loss that carries it (`learner.kl_penalty` loss, TRL's GRPO): the per-token
    KL of the policy being trained (its gradient flows through logp_new) over real tokens, summed
    and divided by the clip loss's `denominator` (default: the real tokens), so that loss + beta x
    this is TRL's token-mean objective for `token` and its per-sequence sum for `sequence`."""
    kl = KL_ESTIMATORS[kl_estimator](logp_new, logp_ref) * mask
    return kl.sum() / (denominator or mask.sum().clamp(min=1))


def rloo_loss(variant: str, logp_new, logp_old, logp_ref, mask, scores, beta: float, k: int,
              clip: float = 0.2, kl_estimator: str = "k1", estimator: str = "rloo"):
    """The policy loss of one RLOO update on a whole batch, and its stats, for `sequence` or
    `token`."""
    adv, token_kl = advantages_of(variant, scores, logp_old, logp_ref, mask, beta, k, kl_estimator,
                                  estimator)
    loss, clip_frac = CLIP_LOSSES[variant](logp_new, logp_old, mask, adv, clip)
    return loss, {**advantage_stats([adv], [token_kl], [None], [mask]),
                  "clip_frac": float(clip_frac)}


def advantage_stats(advs, token_kls, entropies, masks) -> dict:
    """Stats of a batch given in parts (micro-batches of any widths): the mean sequence KL, the mean
    and std of the advantages (per sequence, or per real token for `token`), the mean token
    entropy."""
    # per sequence, or the real tokens only
    def real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x if x.dim() == 1 else x[mask.bool()]

    adv = torch.cat([real(a, m) for a, m in zip(advs, masks)])
    stats = {
        "kl": float(torch.cat([masked_sum(kl, m) for kl, m in zip(token_kls, masks)]).mean()),
        "advantage_mean": float(adv.mean()),
        "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
    }
    if all(e is not None for e in entropies):
        stats["entropy"] = float(torch.cat([real(e, m) for e, m in zip(entropies, masks)]).mean())
    return stats
