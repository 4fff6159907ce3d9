"""The behaviour correction: its weights against the formulas (OpenRLHF's truncated IS, veRL's
sequence mask), its statistics, and no change to the loss when it is off."""
import math

import pytest
import torch

from rlhf_ray.rl import off_policy as O
from rlhf_ray.rl import rloo as R


def _batch():
    g = torch.Generator().manual_seed(5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    old = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 2
    behaviour = (old + torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.8) * mask
    return old, behaviour, mask


def test_tis_per_token_is_openrlhfs_truncated_ratio():
    old, behaviour, mask = _batch()
    weights, sums = O.behaviour_weights(old, behaviour, mask, "tis", 1.5, per_sequence=False)
    openrlhf = torch.exp(old - behaviour).clamp(max=1.5)  # vllm_is = exp(old - rollout).clamp(max=threshold)
    torch.testing.assert_close(weights, openrlhf * mask)
    ratios = torch.exp(old - behaviour)[mask.bool()]
    assert float(sums["cut"]) == float((ratios > 1.5).sum()) > 0 and float(sums["units"]) == 9
    stats = O.correction_stats([sums])
    d = (old - behaviour)[mask.bool()]
    assert stats["mismatch_kl"] == pytest.approx(float((torch.exp(d) - d - 1).mean()))
    assert stats["is_ratio_mean"] == pytest.approx(float(ratios.mean()))
    assert stats["is_ratio_max"] == pytest.approx(float(ratios.max()))
    assert stats["is_cut_frac"] == pytest.approx(float((ratios > 1.5).double().mean()))


def test_tis_per_sequence_truncates_the_product_of_the_token_ratios():
    old, behaviour, mask = _batch()
    weights, _ = O.behaviour_weights(old, behaviour, mask, "tis", 2.0, per_sequence=True)
    expected = [min(math.exp(float(((old[b] - behaviour[b]) * mask[b]).sum())), 2.0) for b in range(3)]
    assert weights.tolist() == pytest.approx(expected)


def test_seq_mask_drops_sequences_whose_mean_token_ratio_is_off():
    old, behaviour, mask = _batch()
    weights, sums = O.behaviour_weights(old, behaviour, mask, "seq_mask", 1.06, per_sequence=False)
    for b in range(3):
        geo = math.exp(float(((old[b] - behaviour[b]) * mask[b]).sum() / mask[b].sum()))
        kept = 1 / 1.06 <= geo <= 1.06
        assert weights[b].tolist() == (mask[b] * kept).tolist()
    assert float(sums["units"]) == 3 and 0 < float(sums["cut"]) < 3


def test_off_leaves_the_loss_as_it_was_and_a_weight_scales_it():
    old, behaviour, mask = _batch()
    adv = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    new = old + 0.05
    plain, _ = R.sequence_clip_loss(new, old, mask, adv)
    weights, _ = O.behaviour_weights(old, behaviour, mask, "none", 2.0, per_sequence=True)
    assert weights.tolist() == [1.0, 1.0, 1.0]
    assert R.sequence_clip_loss(new, old, mask, adv, weights=weights)[0].item() == plain.item()
    halved, _ = R.sequence_clip_loss(new, old, mask, adv, weights=torch.full((3,), 0.5, dtype=torch.float64))
    assert halved.item() == pytest.approx(plain.item() / 2)
    with pytest.raises(ValueError, match="unknown behaviour correction"):
        O.behaviour_weights(old, behaviour, mask, "ppo", 2.0, per_sequence=True)


@pytest.mark.parametrize("overlap, max_staleness, lag", [(False, 1, 0), (False, 3, 0), (True, 0, 0), (True, 1, 1),
                                                         (True, 2, 2)])
def test_generation_lag_is_zero_unless_overlap_lets_batches_run_ahead(overlap, max_staleness, lag):
    """The driver's loop reads `overlap` only through this lag, so overlap with max_staleness 0 is the on-policy
    loop itself (the integration test runs only the lagged case)."""
    from rlhf_ray.config.rl import RLOOConfig

    assert RLOOConfig(overlap=overlap, max_staleness=max_staleness).generation_lag == lag
