"""Three places where the learner follows a cited implementation, each against that implementation's
expression written out by hand on the same tensors: OpenRLHF's truncated IS with its floor, veRL's
sequence-mask loss averaged over the kept tokens, and TRL's GRPO with the KL in the loss."""
from types import SimpleNamespace

import pytest
import torch

from rlhf_ray.config.rl import LearnerConfig
from rlhf_ray.rl import off_policy as O
from rlhf_ray.rl import rloo as R
from rlhf_ray.rl.learner import batch_denominator, micro_batch_loss


def _batch(seed: int = 5, spread: float = 0.8):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64)
    old = -torch.rand(4, 4, generator=g, dtype=torch.float64) * 2
    behaviour = (old + torch.randn(4, 4, generator=g, dtype=torch.float64) * spread) * mask
    ref = (old + torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.3) * mask
    return old, behaviour, ref, mask


def test_tis_clamps_to_openrlhfs_default_thresholds_from_both_sides():
    old, behaviour, _, mask = _batch()
    weights, sums = O.behaviour_weights(old, behaviour, mask, "tis", 5.0, per_sequence=False, is_floor=0.5)
    # OpenRLHF, vllm_is_correction_type tis: exp(old - rollout).clamp(min=low, max=high), [0.5, 5] by default
    openrlhf = torch.exp(old - behaviour).clamp(min=0.5, max=5.0)
    torch.testing.assert_close(weights, openrlhf * mask)
    ratios = torch.exp(old - behaviour)[mask.bool()]
    outside = ((ratios < 0.5) | (ratios > 5.0)).sum()
    assert float(sums["cut"]) == float(outside) and (ratios < 0.5).any()
    capped_only, _ = O.behaviour_weights(old, behaviour, mask, "tis", 5.0, per_sequence=False, is_floor=0.0)
    assert not torch.equal(capped_only, weights)  # the floor is what changed
    assert LearnerConfig().is_floor == 0.5


def _assert_same_loss_and_gradient(loss, reference, new) -> None:
    """The learner's loss equals the reference expression, and so does its gradient in the new log-probs."""
    torch.testing.assert_close(loss, reference)
    (grad,) = torch.autograd.grad(loss, new)
    (expected,) = torch.autograd.grad(reference, new)
    torch.testing.assert_close(grad, expected)


def _learner(**over) -> LearnerConfig:
    return LearnerConfig(**{"beta": 0.0, "clip": 0.2, **over})


@pytest.mark.parametrize("variant", ["token", "sequence"])
def test_seq_mask_loss_is_averaged_over_the_kept_as_verl(variant):
    old, behaviour, ref, mask = _batch(seed=3, spread=0.15)
    lc = _learner(variant=variant, correction="seq_mask", is_cap=1.1)
    batch = SimpleNamespace(mask=mask, k=2, behaviour_logp=behaviour)
    scores = torch.tensor([1.0, 0.0, 0.5, 0.2], dtype=torch.float64)
    new = (old + 0.03).requires_grad_(True)
    denominator = batch_denominator(lc, [(batch, scores)], [(old, None)])
    loss, *_ = micro_batch_loss(lc, new, old, ref, batch, scores, denominator)

    geo = torch.exp(((old - behaviour) * mask).sum(-1) / mask.sum(-1))
    keep = ((geo >= 1 / 1.1) & (geo <= 1.1)).double()
    assert 0 < keep.sum() < 4  # some kept, some rejected: the denominators differ
    adv = R.rloo_advantages(scores.view(-1, 2)).view(-1)
    if variant == "token":  # veRL: token-mean of the surrogate over response_mask * rejection mask
        ratio = torch.exp(new - old)
        a = adv.view(-1, 1)
        surrogate = torch.max(-a * ratio, -a * ratio.clamp(0.8, 1.2))
        loss_mask = mask * keep.view(-1, 1)
        verl = (surrogate * loss_mask).sum() / loss_mask.sum()
    else:  # the sequence ratio's surrogate averaged over the kept sequences
        ratio = torch.exp(((new - old) * mask).sum(-1))
        surrogate = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
        verl = (surrogate * keep).sum() / keep.sum()
    _assert_same_loss_and_gradient(loss, verl, new)


def test_grpo_with_the_kl_in_the_loss_is_trls_grpo():
    old, _, ref, mask = _batch(seed=9)
    beta = 0.05
    lc = _learner(variant="token", estimator="grpo", kl_penalty="loss", kl_estimator="k3", beta=beta)
    batch = SimpleNamespace(mask=mask, k=4, behaviour_logp=None)
    scores = torch.tensor([1.0, 0.0, 0.3, 0.9], dtype=torch.float64)
    new = (old + 0.02).requires_grad_(True)
    denominator = R.loss_denominator("token", mask)
    loss, _, adv, _, _ = micro_batch_loss(lc, new, old, ref, batch, scores, denominator)

    # TRL GRPOTrainer: advantages from the rewards alone, (r - mean) / (std + 1e-4) per prompt ...
    grouped = scores.view(-1, 4)
    trl_adv = ((grouped - grouped.mean(-1, keepdim=True)) / (grouped.std(-1, keepdim=True) + 1e-4)).view(-1, 1)
    torch.testing.assert_close(adv, trl_adv * mask)  # token variant: (B, T), beta x KL-to-go absent
    # ... and beta x k3(ref, new) per token in the loss, token-mean over the batch (its bnpo/dapo aggregation)
    ratio = torch.exp(new - old)
    per_token = torch.max(-trl_adv * ratio, -trl_adv * ratio.clamp(0.8, 1.2))
    per_token = per_token + beta * (torch.exp(ref - new) - (ref - new) - 1)
    trl = (per_token * mask).sum() / mask.sum()
    _assert_same_loss_and_gradient(loss, trl, new)


def test_kl_in_the_reward_stays_the_default_and_differs_from_the_loss_placement():
    old, _, ref, mask = _batch(seed=9)
    batch = SimpleNamespace(mask=mask, k=4, behaviour_logp=None)
    scores = torch.tensor([1.0, 0.0, 0.3, 0.9], dtype=torch.float64)
    assert LearnerConfig().kl_penalty == "reward"
    in_reward = micro_batch_loss(_learner(estimator="grpo", beta=0.05), old, old, ref, batch, scores, 4.0)[2]
    in_loss = micro_batch_loss(_learner(estimator="grpo", beta=0.05, kl_penalty="loss"), old, old, ref, batch,
                               scores, 4.0)[2]
    assert not torch.allclose(in_reward, in_loss)  # score - beta x KL normalised vs the score alone
