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
    terms, outside = [], 0
    rs = [scores[b].item() - beta * sum((old[b, t] - ref[b, t]).item() for t in range(5) if mask[b, t])
          for b in range(6)]
    for b in range(6):
        p = b // k
        group = [rs[p * k + j] for j in range(k) if p * k + j != b]
        a = rs[b] - sum(group) / (k - 1)
        ratio = math.exp(sum((new[b, t] - old[b, t]).item() for t in range(5) if mask[b, t]))
        terms.append(max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)))
        outside += not (1 - clip <= ratio <= 1 + clip)
    assert loss.item() == pytest.approx(sum(terms) / 6, rel=1e-10)
    assert 0 < outside < 6 and stats["clip_frac"] == pytest.approx(outside / 6)  # sequences whose ratio was clipped


def test_token_variant_brute_force():
    new, old, ref, mask, scores = _batch()
    k, beta, clip = 2, 0.1, 0.2
    loss, stats = R.rloo_loss("token", new, old, ref, mask, scores, beta, k, clip, "k3")
    total, count, outside = 0.0, 0, 0
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
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-10)
    assert 0 < outside < count and stats["clip_frac"] == pytest.approx(outside / count)  # real tokens clipped


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
