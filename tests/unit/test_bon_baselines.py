"""Best-of-n's baselines beside the reward models (the oracle picks by gold, `longest` by word count) and
the policy-sample tau with length partialled out."""
import math

import pytest
import torch
from scipy.stats import kendalltau

from rlhf_ray.config import load_config
from rlhf_ray.data.schema import Ranking
from rlhf_ray.rm import eval_metrics as M
from rlhf_ray.rm.bon import curves


def _groups() -> list[Ranking]:
    texts = [["a b", "a b c d", "a", "a b c"], ["x y z", "x", "x y", "w x y z v"], ["p", "p q", "p q r", "p q r s"]]
    gold = [[0.2, 0.9, 0.1, 0.5], [0.7, 0.0, 0.3, 0.4], [0.3, 0.1, 0.8, 0.2]]
    return [Ranking(f"g{i}", f"prompt {i}", "open", t, s, ["policy"] * 4) for i, (t, s) in enumerate(zip(texts, gold))]


def test_the_oracle_and_longest_of_n_sit_beside_every_reward_model():
    groups = _groups()
    cfg = load_config(None, ["eval.bootstrap=20"])
    rm = torch.tensor([0.0, 1.0, 2.0, 3.0] * 3, dtype=torch.float64)  # prefers the last sample of each prompt
    out = curves(groups, {"rm": rm}, cfg)
    assert set(out) == {"rm", "oracle", "longest"}
    full = {name: out[name]["best_of_n"][-1] for name in out}  # best of all 4
    assert full["oracle"]["gold"] == pytest.approx((0.9 + 0.7 + 0.8) / 3)
    assert full["longest"]["gold"] == pytest.approx((0.9 + 0.4 + 0.2) / 3)
    assert full["rm"]["gold"] == pytest.approx((0.5 + 0.4 + 0.2) / 3)
    assert out["oracle"]["policy_tau"]["value"] == pytest.approx(1.0)
    lengths = [[len(c.split()) for c in g.completions] for g in groups]
    own = [kendalltau(g.scores, n).statistic for g, n in zip(groups, lengths)]
    assert out["longest"]["policy_tau"]["value"] == pytest.approx(sum(own) / 3)  # length's own tau with gold
    assert math.isnan(out["longest"]["policy_tau_length_partialled"]["value"])  # nothing is left of it
    assert "best_of_n_gold_v2" not in out["rm"]


def test_the_same_picks_are_scored_on_gold_v2_too():
    groups = _groups()
    cfg = load_config(None, ["eval.bootstrap=20"])
    rm = torch.tensor([0.0, 1.0, 2.0, 3.0] * 3, dtype=torch.float64)
    v2 = [[0.0, 0.1, 0.2, 0.9], [0.5, 0.5, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3]]
    out = curves(groups, {"rm": rm}, cfg, gold_v2=v2)
    assert out["rm"]["best_of_n_gold_v2"][-1]["gold"] == pytest.approx((0.9 + 0.1 + 0.3) / 3)  # its last picks
    assert out["rm"]["best_of_n_gold_v2"][0]["gold"] == pytest.approx(sum(map(sum, v2)) / 12)  # n = 1: the mean
    assert out["oracle"]["best_of_n_gold_v2"][-1]["gold"] == pytest.approx((0.1 + 0.5 + 0.3) / 3)  # v1 picks


def test_partial_tau_is_the_textbook_formula():
    groups = _groups()
    rewards = [[0.1, 0.8, 0.3, 0.4], [0.9, 0.2, 0.1, 0.5], [0.2, 0.3, 0.5, 0.1]]
    control = [[3, 4, 1, 2], [3, 1, 2, 5], [2, 1, 4, 3]]
    got = M.partial_taus(groups, rewards, control)
    for g, r, c, value in zip(groups, rewards, control, got):
        t_rg, t_rc, t_gc = (float(kendalltau(a, b)[0]) for a, b in ((r, g.scores), (r, c), (g.scores, c)))
        assert abs(t_rc) < 1 and abs(t_gc) < 1
        assert value == pytest.approx((t_rg - t_rc * t_gc) / math.sqrt((1 - t_rc**2) * (1 - t_gc**2)))
    plain = [float(kendalltau(r, g.scores)[0]) for g, r in zip(groups, rewards)]
    assert all(-1 <= v <= 1 for v in got) and got != plain  # holding the control fixed changed them
