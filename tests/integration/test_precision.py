"""bf16 training keeps fp32 master weights and Adam states at every ZeRO stage (real DeepSpeed, world
size 1, tiny-llama policy in bfloat16): the model computes in bf16, the optimizer updates fp32 copies,
and the loss arithmetic is fp32."""
import pytest
import torch

from rlhf_ray.config import load_config
from rlhf_ray.rl.engines.base import Rollouts
from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
from rlhf_ray.utils.dist import reserve_address

pytestmark = pytest.mark.slow

MASTER_COPIES = ("fp32_groups", "fp32_groups_flat_partition", "single_partition_of_fp32_groups",
                 "fp32_partitioned_groups_flat")  # DeepSpeed's names, by optimizer


def _master_dtypes(optimizer) -> set:
    found = set()
    for name in MASTER_COPIES:
        for item in getattr(optimizer, name, None) or []:
            for tensor in item if isinstance(item, list) else [item]:
                found.add(tensor.dtype)
    return found


@pytest.mark.parametrize("zero_stage", [0, 1, 3])
def test_a_bf16_policy_trains_on_fp32_master_weights(zero_stage):
    cfg = load_config(None, ["policy.name=tiny-llama", "policy.dtype=bfloat16", f"learner.zero_stage={zero_stage}",
                             "learner.lr=1e-3", "learner.warmup_ratio=0", "rollout.temperature=1.0"])
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=2)
    assert {p.dtype for p in learner.engine.module.parameters()} == {torch.bfloat16}
    assert _master_dtypes(learner.engine.optimizer) == {torch.float32}
    rollouts = Rollouts([[5, 6, 7]] * 2 + [[8, 9]] * 2, [[10, 11], [12], [13, 14, 15], [16]], [[0.0]] * 4,
                        [True] * 4, [], 2, 0)
    stats = learner.update(rollouts, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert stats.grad_norm > 0 and stats.loss == stats.loss
    adam = getattr(learner.engine.optimizer, "optimizer", learner.engine.optimizer).state.values()  # the torch AdamW
    assert adam and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in adam)


def test_zero3_builds_the_models_partitioned_and_their_value_head_as_initialised():
    """Under ZeRO-3 no rank holds the whole model at load: the parameters come from deepspeed.zero.Init
    (partitioned, empty until gathered), and the fresh value head is still N(0, 1/sqrt(H))."""
    from rlhf_ray.models.reward_model import load_reward_model, value_head
    from rlhf_ray.utils.dist import deepspeed_config, gathered_parameters, init_distributed, zero3_init

    init_distributed(0, 1, *reserve_address())
    with zero3_init(deepspeed_config(1, 1, 1.0, 3, False)):
        model = load_reward_model("tiny-llama", seed=0)
    params = list(model.parameters())
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in params)  # partitions, not whole tensors
    head = value_head(model)
    with gathered_parameters([head.weight], 3):
        assert 0.5 < float(head.weight.norm()) < 2.0
    plain = load_reward_model("tiny-llama", seed=0)  # outside the context: whole, as before
    assert not any(hasattr(p, "ds_id") for p in plain.parameters())
