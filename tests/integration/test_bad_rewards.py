"""A reward model that produces NaN (a real one, with a poisoned value head) stops the step with an
error naming the samples and prompts, before anything is trained on it."""
import math

import pytest
import torch

from rlhf_ray.models.reward_model import value_head
from rlhf_ray.rl.engines.base import Rollouts
from rlhf_ray.rl.scorer import RLScorer


def _reward_cfg(**extra):
    from rlhf_ray.config import RewardConfig

    return RewardConfig(models=["tiny-llama"], max_length=64, **extra)


def test_nan_rewards_name_the_samples_and_prompts():
    scorer = RLScorer(_reward_cfg())
    with torch.no_grad():
        value_head(scorer.members[0].model).weight[0, :3] = math.nan
    rollouts = Rollouts([[1, 2], [1, 2], [3, 4], [3, 4]], [[5], [6], [7], [8]], [[0.0]] * 4, [True] * 4,
                        ["a reply", "another", "third", "fourth"], k=2)
    prompts = [{"prompt": "hi", "prompt_id": "p-1", "prompt_type": "open", "reference": "hello"},
               {"prompt": "what?", "prompt_id": "p-2", "prompt_type": "closed", "reference": "x"}]
    with pytest.raises(FloatingPointError,
                       match=r"reward model .*tiny-llama.* non-finite rewards for rows \[0, 1, 2, 3\].*p-1.*p-2"):
        scorer.score(rollouts, prompts)


def test_finite_rewards_score_and_gold_is_tracked_not_trained_on():
    scorer = RLScorer(_reward_cfg())
    rollouts = Rollouts([[1, 2]] * 2, [[5], [6]], [[0.0]] * 2, [True, False], ["Paris", "no idea"], k=2)
    out = scorer.score(rollouts, [{"prompt": "Capital of France?", "prompt_id": "q", "prompt_type": "closed",
                                   "reference": "Paris"}])
    assert all(math.isfinite(x) for x in out.train) and out.train == out.proxy
    assert out.gold[0] > out.gold[1] and len(out.gold_v2) == 2 and out.score_s > 0
