"""LoRA in the reward-model trainer (issue 29): real peft on real tiny-llama through the trainer core in
this process (real DeepSpeed, world size 1, gloo; no Ray). Only the adapters and the value head train;
the saved adapter folder loads back (onto the base it names) as the model that was trained; the weights
published to scorers are the merged ones; resume continues the same run; the same under ZeRO-3."""
import pytest
import torch

from rlhf_ray.config import load_config
from rlhf_ray.data.schema import load_rankings
from rlhf_ray.rm.metrics import summarise
from rlhf_ray.utils.dist import reserve_address

pytestmark = pytest.mark.slow

LORA = ["model.name=tiny-llama", "rm.num_workers=1", "rm.batch_size=4", "rm.lr=1e-2", "rm.warmup_ratio=0",
        "model.max_length=128", "model.lora.enabled=true", "model.lora.rank=4", "model.lora.save_merged=true"]


def _trainer(overrides, address, total=6):
    from rlhf_ray.rm.trainer import RewardModelTrainer, TrainerSpec

    return RewardModelTrainer(TrainerSpec.of(load_config(None, overrides)), 0, 1, *address, total_steps=total)


def _rewards(model, tokenizer, groups):
    from rlhf_ray.rm.trainer import score_rankings
    from rlhf_ray.models.reward_model import HiddenCapture

    model.eval()
    with torch.no_grad():
        return score_rankings(model, HiddenCapture(model), tokenizer, groups, 128, torch.device("cpu"))[1]


def _served(trainer):
    """What a scorer loads in place after a refresh: the trainer's served view, bucket by bucket, as
    its sender publishes it (each bucket copied: a bucket's views last until the next one)."""
    from rlhf_ray.rl.sync import sender_for

    sender = sender_for("object_store", trainer.served_view(), 1, trainer.cfg.rm.zero_stage, 0)
    buckets, _ = sender.source.send_all(lambda w: [(n, torch.as_tensor(t).clone()) for n, t in w.tensors()])
    return [pair for bucket in buckets for pair in bucket]


def _loaded_as_a_scorer_does(trainer):
    from rlhf_ray.models.reward_model import load_reward_model
    from rlhf_ray.rl.scorer import load_in_place

    plain = load_reward_model("tiny-llama")
    load_in_place(plain, _served(trainer), "the served view")  # every parameter must arrive
    return plain


def test_lora_trains_only_the_adapters_and_head_and_saves_an_adapter_folder_that_loads_as_trained(
        testbeds, tmp_path):
    from rlhf_ray.models.reward_model import load_reward_model

    address = reserve_address()
    trainer = _trainer(LORA, address)
    module = trainer.engine.module
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable), trainable
    total = sum(p.numel() for p in module.parameters())
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trained < 0.1 * total  # optimizer states and gradients for ~5% of the weights
    frozen_before = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    groups = load_rankings(testbeds / "gold" / "train.parquet")[:4]
    steps = [summarise(trainer.train_step(groups)) for _ in range(5)]
    assert steps[-1]["loss"] < steps[0]["loss"], [s["loss"] for s in steps]
    assert all(torch.equal(p, frozen_before[n]) for n, p in module.named_parameters() if not p.requires_grad)

    trained_rewards = _rewards(module, trainer.tokenizer, groups)
    folder = trainer.save(str(tmp_path / "model"))
    assert (tmp_path / "model" / "adapter_config.json").exists()
    assert not (tmp_path / "model" / "model.safetensors").exists()  # the adapters, not the weights
    # every loader reads it onto its base (tiny-llama, by the name the user gave), merged
    loaded = load_reward_model(folder)
    torch.testing.assert_close(_rewards(loaded, trainer.tokenizer, groups), trained_rewards, atol=1e-5, rtol=0)
    merged = load_reward_model(str(tmp_path / "model-merged"))  # save_merged: a plain folder
    torch.testing.assert_close(_rewards(merged, trainer.tokenizer, groups), trained_rewards, atol=1e-5, rtol=0)
    # what a scorer loads in place: the merged weights, under the plain model's names
    plain = _loaded_as_a_scorer_does(trainer)
    torch.testing.assert_close(_rewards(plain, trainer.tokenizer, groups), trained_rewards, atol=1e-5, rtol=0)

    # resume: the DeepSpeed state holds the adapters and their optimizer states
    trainer.save_state(str(tmp_path / "state"))
    after = summarise(trainer.train_step(groups))
    resumed = _trainer(LORA, reserve_address())
    resumed.load_state(str(tmp_path / "state"), 5)
    assert summarise(resumed.train_step(groups))["loss"] == pytest.approx(after["loss"], rel=1e-5)


def test_lora_under_zero_3_trains_partitioned_and_saves_and_publishes_the_merged_model(testbeds, tmp_path):
    from rlhf_ray.models.reward_model import load_reward_model

    trainer = _trainer([*LORA, "rm.zero_stage=3"], reserve_address())
    module = trainer.engine.module
    assert all(hasattr(p, "ds_id") for p in module.parameters())  # every weight partitioned
    groups = load_rankings(testbeds / "gold" / "train.parquet")[:4]
    steps = [summarise(trainer.train_step(groups)) for _ in range(4)]
    assert steps[-1]["loss"] < steps[0]["loss"], [s["loss"] for s in steps]
    folder = trainer.save(str(tmp_path / "model"))
    assert (tmp_path / "model" / "adapter_config.json").exists()
    saved = _rewards(load_reward_model(folder), trainer.tokenizer, groups)
    merged = load_reward_model(str(tmp_path / "model-merged"))
    torch.testing.assert_close(_rewards(merged, trainer.tokenizer, groups), saved, atol=1e-5, rtol=0)
    plain = _loaded_as_a_scorer_does(trainer)  # what a scorer loads: gathered, merged
    torch.testing.assert_close(_rewards(plain, trainer.tokenizer, groups), saved, atol=1e-5, rtol=0)
    assert not torch.equal(saved, _rewards(load_reward_model("tiny-llama"), trainer.tokenizer, groups))
