"""`reward.train_on`: the reference arms of an experiment train on the gold or on length alone."""
import pytest
import torch

from rlhf_ray.config import load_config
from rlhf_ray.rl.scorer import LENGTH_SCALE, training_reward

SHAPED = torch.tensor([0.3, -0.2], dtype=torch.float64)
GOLD, GOLD_V2 = [0.5, 0.6], [0.1, 0.9]
TEXTS = ["one two three", " ".join(["w"] * 64)]


def test_each_arm_trains_on_its_own_reward():
    assert training_reward("reward_model", SHAPED, GOLD, GOLD_V2, TEXTS) is SHAPED
    assert training_reward("gold_v1", SHAPED, GOLD, GOLD_V2, TEXTS).tolist() == GOLD
    assert training_reward("gold_v2", SHAPED, GOLD, GOLD_V2, TEXTS).tolist() == GOLD_V2
    length = training_reward("length", SHAPED, GOLD, GOLD_V2, TEXTS)
    assert length.tolist() == [3 / LENGTH_SCALE, 64 / LENGTH_SCALE]
    assert length.dtype == SHAPED.dtype


def test_an_unknown_arm_names_the_key():
    with pytest.raises(Exception, match="train_on"):
        load_config(None, ["reward.train_on=oracle"])
