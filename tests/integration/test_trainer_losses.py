"""Every loss on both testbeds through the trainer core in this process: real DeepSpeed (world size 1,
gloo), real tiny-llama; no Ray. The 2-rank Ray runs are in test_rm_training.py."""
import math

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.data.schema import load_rankings
from rlhf_ray.rm.metrics import summarise
from rlhf_ray.utils.dist import reserve_address
from tests.integration.shared import LOSSES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def address():
    return reserve_address()


@pytest.mark.parametrize("testbed", ["gold", "collapse"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_on_every_testbed(testbeds, address, testbed, loss):
    from rlhf_ray.rm.trainer import RewardModelTrainer, TrainerSpec

    # 8 completions per collapse prompt: 2 of them are as many sequences as 4 gold pairs and 16 pairs
    size = 2 if testbed == "collapse" else 4
    cfg = load_config(
        None,
        ["model.name=tiny-llama", f"data.testbed={testbed}", "rm.num_workers=1", f"rm.batch_size={size}",
         "rm.lr=1e-3", "rm.warmup_ratio=0", "model.max_length=128", *LOSSES[loss]],
    )
    trainer = RewardModelTrainer(TrainerSpec.of(cfg), 0, 1, *address, total_steps=5)
    groups = load_rankings(testbeds / testbed / "train.parquet")[:size]
    steps = [summarise(trainer.train_step(groups)) for _ in range(5)]  # the same batch: it must fit it
    assert all(math.isfinite(s["loss"]) for s in steps)
    assert steps[-1]["loss"] < steps[0]["loss"], [s["loss"] for s in steps]
    assert steps[-1]["margin"] > steps[0]["margin"]
    assert 0.5 < trainer.head_norm() < 2.0  # head init N(0, 1/sqrt(H)): ||W_p|| about 1


def test_micro_batches_by_tokens_give_the_whole_batch_step(testbeds, address):
    """rm.micro_batch_tokens splits a shard into whole groups; each micro-batch's loss weighs by its
    pairs, so the step's gradient equals the unsplit step's."""
    import torch

    from rlhf_ray.rm.trainer import RewardModelTrainer, TrainerSpec

    groups = load_rankings(testbeds / "gold" / "train.parquet")[:4]

    def gradient_of_one_step(*extra):
        cfg = load_config(None, ["model.name=tiny-llama", "rm.num_workers=1", "rm.batch_size=4", "rm.lr=1e-3",
                                 "rm.warmup_ratio=0", "rm.grad_clip=0", "rm.zero_stage=0", "model.max_length=160",
                                 *extra])
        trainer = RewardModelTrainer(TrainerSpec.of(cfg), 0, 1, *address, total_steps=1)
        grads, real_step = {}, trainer.engine.step

        def step_recording_grads():  # the accumulated gradient, just before the optimizer applies it
            grads.update({n: p.grad.detach().clone() for n, p in trainer.engine.module.named_parameters()
                          if p.grad is not None})
            real_step()

        trainer.engine.step = step_recording_grads
        parts = trainer.micro_batches(groups)
        trainer.train_step(groups)
        return len(parts), grads

    whole_parts, whole = gradient_of_one_step()
    split_parts, split = gradient_of_one_step("rm.micro_batch_tokens=300")
    assert whole_parts == 1 and split_parts > 1 and len(whole) > 10 and whole.keys() == split.keys()
    for name, value in whole.items():
        torch.testing.assert_close(split[name], value, atol=1e-6, rtol=1e-4)
