"""RLOO advantages, KL estimators and both loss variants against brute-force loops."""
import math

import pytest
import torch

from rlhf_ray.rl import rloo as R


def test_rloo_advantages_brute_force():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 4, generator=g, dtype=torch.float64)
    adv = R.rloo_advantages(rewards)
    for p in range(5):
        for i in range(4):
            others = [rewards[p, j].item() for j in range(4) if j != i]
            assert adv[p, i].item() == pytest.approx(rewards[p, i].item() - sum(others) / 3, abs=1e-12)
    torch.testing.assert_close(adv.sum(-1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)


def test_rloo_k2_is_the_difference_and_k1_is_an_error():
    adv = R.rloo_advantages(torch.tensor([[3.0, 1.0]]))
    assert adv.tolist() == [[2.0, -2.0]]
    with pytest.raises(ValueError, match="k >= 2"):
        R.rloo_advantages(torch.tensor([[1.0]]))


def test_kl_estimators_by_hand_and_unbiased():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert R.kl_k1(logp, ref).tolist() == pytest.approx([0.5, -1.0])
    assert R.kl_k3(logp, ref).tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])
    # E_{x~p}[k1] = E_{x~p}[k3] = KL(p || q) for categorical p, q
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    kl = (p * (p / q).log()).sum()
    assert (p * R.kl_k1(p.log(), q.log())).sum().item() == pytest.approx(kl.item())
    assert (p * R.kl_k3(p.log(), q.log())).sum().item() == pytest.approx(kl.item())
    assert (R.kl_k3(p.log(), q.log()) >= 0).all()


def _batch():
    g = torch.Generator().manual_seed(1)
    B, T = 6, 5
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[4, 1:] = 0
    logp_old = -torch.rand(B, T, generator=g, dtype=torch.float64)
    logp_new = logp_old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    logp_ref = logp_old + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    return logp_new, logp_old, logp_ref, mask.double(), scores


def test_sequence_variant_brute_force():
    new, old, ref, mask, scores = _batch()
    k, beta, clip = 3, 0.05, 0.2
    loss, stats = R.rloo_loss("sequence", new, old, ref, mask, scores, beta, k, clip, "k1")
    terms, outside, clip_set = [], 0, 0
    rs = [scores[b].item() - beta * sum((old[b, t] - ref[b, t]).item() for t in range(5) if mask[b, t])
          for b in range(6)]
    for b in range(6):
        p = b // k
        group = [rs[p * k + j] for j in range(k) if p * k + j != b]
        a = rs[b] - sum(group) / (k - 1)
        ratio = math.exp(sum((new[b, t] - old[b, t]).item() for t in range(5) if mask[b, t]))
        terms.append(max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)))
        outside += not (1 - clip <= ratio <= 1 + clip)
        clip_set += -a * min(max(ratio, 1 - clip), 1 + clip) > -a * ratio
    assert loss.item() == pytest.approx(sum(terms) / 6, rel=1e-10)
    # TRL's / OpenRLHF's clipfrac: sequences whose loss the clip set (fewer than those outside the band)
    assert 0 < clip_set < outside and stats["clip_frac"] == pytest.approx(clip_set / 6)


def test_token_variant_brute_force():
    new, old, ref, mask, scores = _batch()
    k, beta, clip = 2, 0.1, 0.2
    loss, stats = R.rloo_loss("token", new, old, ref, mask, scores, beta, k, clip, "k3")
    total, count, outside, clip_set = 0.0, 0, 0, 0
    for b in range(6):
        p = b // k
        other = scores[p * k + (1 - b % k)].item()
        base = scores[b].item() - other
        for t in range(5):
            if not mask[b, t]:
                continue
            to_go = 0.0
            for s in range(t, 5):
                if mask[b, s]:
                    d = (ref[b, s] - old[b, s]).item()
                    to_go += math.exp(d) - d - 1
            a = base - beta * to_go
            ratio = math.exp((new[b, t] - old[b, t]).item())
            total += max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip))
            outside += not (1 - clip <= ratio <= 1 + clip)
            clip_set += -a * min(max(ratio, 1 - clip), 1 + clip) > -a * ratio
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-10)
    assert 0 < clip_set < outside and stats["clip_frac"] == pytest.approx(clip_set / count)  # real tokens


def test_on_policy_gradient_is_the_rloo_policy_gradient():
    # with logp_new == logp_old (first epoch) the sequence loss gradient is -(1/B) sum_i A_i grad log pi(y_i)
    new, _, ref, mask, scores = _batch()
    new = new.clone().requires_grad_(True)
    loss, _ = R.rloo_loss("sequence", new, new.detach(), ref, mask, scores, 0.0, 3)
    loss.backward()
    adv = R.rloo_advantages(scores.view(-1, 3)).view(-1)
    torch.testing.assert_close(new.grad, (-adv / 6).view(-1, 1) * mask)


def test_unknown_variant():
    new, old, ref, mask, scores = _batch()
    with pytest.raises(ValueError, match="variant"):
        R.rloo_loss("ppo", new, old, ref, mask, scores, 0.1, 2)


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_micro_batch_losses_add_up_to_the_whole_batch_loss(variant):
    new, old, ref, mask, scores = _batch()
    k, beta = 3, 0.05
    whole, _ = R.rloo_loss(variant, new, old, ref, mask, scores, beta, k, 0.2, "k3")
    adv, _ = R.advantages_of(variant, scores, old, ref, mask, beta, k, "k3")
    denominator = R.loss_denominator(variant, mask)
    parts = [R.CLIP_LOSSES[variant](new[s], old[s], mask[s], adv[s], 0.2, denominator)[0]
             for s in (slice(0, 1), slice(1, 4), slice(4, 6))]
    assert sum(p.item() for p in parts) == pytest.approx(whole.item(), rel=1e-12)


def _trl_clipfrac(advantages, ratio, clip):
    """TRL's RLOOTrainer (and PPOTrainer): pg_clipfrac = mean(pg_losses2 > pg_losses)."""
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return (pg_losses2 > pg_losses).float().mean()


def _openrlhf_clip_ratio(advantages, ratio, clip):
    """OpenRLHF's PolicyLoss: surr1 = ratio * A, surr2 = clamp(ratio) * A, clip_ratio = mean(surr2 < surr1)."""
    surr1, surr2 = ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages
    return (surr2 < surr1).float().mean()


def test_clip_frac_counts_only_where_the_clip_changes_the_loss_as_trl_and_openrlhf():
    # 12 sequences: 7 ratios outside [0.8, 1.2], of which the clip changes the loss only where the
    # advantage's sign makes it bind (ratio > 1.2 with A > 0, ratio < 0.8 with A < 0): 4 of 12
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.3, 0.7, 2.0, 1.0, 1.1, 0.9, 1.0, 1.05], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.5, -0.5, -2.0, 1.0, -1.0, 1.0, 0.3, -0.3], dtype=torch.float64)
    logp_new = torch.log(ratio).view(-1, 1)
    mask = torch.ones(12, 1, dtype=torch.float64)
    _, clip_frac = R.sequence_clip_loss(logp_new, torch.zeros_like(logp_new), mask, adv, 0.2)
    assert clip_frac.item() == pytest.approx(4 / 12)
    assert clip_frac.item() == pytest.approx(_trl_clipfrac(adv, ratio, 0.2).item())
    assert clip_frac.item() == pytest.approx(_openrlhf_clip_ratio(adv, ratio, 0.2).item())
    outside = ((ratio < 0.8) | (ratio > 1.2)).double().mean().item()  # what was counted before: 7/12
    assert outside == pytest.approx(7 / 12) and clip_frac.item() < outside
    _, token_frac = R.token_clip_loss(logp_new.view(1, -1), torch.zeros(1, 12, dtype=torch.float64),
                                      torch.ones(1, 12, dtype=torch.float64), adv.view(1, -1), 0.2)
    assert token_frac.item() == pytest.approx(4 / 12)


def test_group_advantages_match_their_formulas_and_the_peers_code():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(5, 4, generator=g, dtype=torch.float64)
    k = 4
    loo = torch.stack([torch.stack([r[p, i] - (r[p].sum() - r[p, i]) / (k - 1) for i in range(k)]) for p in range(5)])
    torch.testing.assert_close(R.group_advantages(r, "rloo"), loo)
    # OpenRLHF's rloo shaping: baseline = (sum - r) / (n - 1)
    torch.testing.assert_close(R.group_advantages(r, "rloo"), r - (r.sum(-1, keepdim=True) - r) / (k - 1))
    # TRL GRPOTrainer: (rewards - mean_grouped) / (std_grouped + 1e-4), std unbiased
    mean = r.view(-1, k).mean(1).repeat_interleave(k)
    std = r.view(-1, k).std(1).repeat_interleave(k)
    torch.testing.assert_close(R.group_advantages(r, "grpo").view(-1), (r.view(-1) - mean) / (std + 1e-4))
    assert R.group_advantages(r, "grpo")[0].std().item() == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(R.group_advantages(r, "dr_grpo"), r - r.mean(-1, keepdim=True))
    # OpenRLHF reinforce_baseline: r - group mean, then (a - mean) * rsqrt(var.clamp(min=1e-8)) over the batch
    a = (r - r.mean(-1, keepdim=True)).view(-1)
    var = ((a - a.mean()) ** 2).mean()
    torch.testing.assert_close(R.group_advantages(r, "reinforce_pp_baseline").view(-1),
                               (a - a.mean()) * var.clamp(min=1e-8).rsqrt())
    whitened = R.group_advantages(r, "reinforce_pp_baseline")
    assert whitened.mean().item() == pytest.approx(0.0, abs=1e-12) and whitened.std(unbiased=False).item() == \
        pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        R.group_advantages(r, "ppo")
    with pytest.raises(ValueError, match="k >= 2"):
        R.group_advantages(r.view(-1, 1))


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_estimators_in_the_loss_and_whitening_over_micro_batches(variant):
    new, old, ref, mask, scores = _batch()
    k = 3
    rloo, _ = R.advantages_of(variant, scores, old, ref, mask, 0.05, k, "k1")
    default, _ = R.advantages_of(variant, scores, old, ref, mask, 0.05, k, "k1", "rloo")
    torch.testing.assert_close(rloo, default)  # rloo: what the learner did before estimators had names
    if variant == "sequence":  # R = score - beta KL, then the named estimator within prompts
        rewards = scores - 0.05 * R.masked_sum(R.kl_k1(old, ref), mask)
        for name in ("grpo", "dr_grpo", "reinforce_pp_baseline"):
            adv, _ = R.advantages_of(variant, scores, old, ref, mask, 0.05, k, "k1", name)
            torch.testing.assert_close(adv, R.group_advantages(rewards.view(-1, k), name).view(-1))
    # whitening with the whole batch's sums, each micro-batch apart, equals whitening the whole batch
    whole, _ = R.advantages_of(variant, scores, old, ref, mask, 0.05, k, "k1", "reinforce_pp_baseline")
    raw = [R.advantages_of(variant, scores[s], old[s], ref[s], mask[s], 0.05, k, "k1", "dr_grpo")[0]
           for s in (slice(0, 3), slice(3, 6))]
    sums = sum(R.whitening_sums(a, mask[s]) for a, s in zip(raw, (slice(0, 3), slice(3, 6))))
    parts = [R.advantages_of(variant, scores[s], old[s], ref[s], mask[s], 0.05, k, "k1", "reinforce_pp_baseline",
                             sums)[0] for s in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close(torch.cat(parts), whole)
