"""Policy LoRA's settings (issue 29): what cannot work is refused naming the keys; what a sync sends
follows the engine, and the transport it takes the sync path; vLLM's LoRA arguments hold the
adapters' rank."""
import pytest

from rlhf_ray.config import LoRAConfig, load_config
from rlhf_ray.config.rl import PolicySync, RolloutConfig
from rlhf_ray.models.lora import is_adapter_state
from rlhf_ray.rl.engines.vllm_engine import lora_args


def test_adapters_to_colocated_engines_are_refused_naming_the_keys_and_merged_weights_are_not():
    colocated = ["policy.lora.enabled=true", "rollout.colocate_with_learner=true", "rollout.sync=ipc"]
    with pytest.raises(ValueError, match="rollout.colocate_with_learner and rollout.lora_sync=adapters"):
        load_config(None, colocated)
    load_config(None, [*colocated, "rollout.lora_sync=merged"])  # the whole model, restored on wake


def test_adapters_go_by_the_object_store_whatever_the_transport_and_merged_weights_by_it():
    from rlhf_ray.plan import learner_plan, rollout_plan
    from rlhf_ray.plan_check import Machine
    from rlhf_ray.rl.learner import LearnerSpec

    def spec(*keys):
        return LearnerSpec.of(load_config(None, ["policy.lora.enabled=true", "rollout.sync=collective", *keys]))

    assert spec().sync == PolicySync("adapters", "object_store")
    assert spec("rollout.lora_sync=merged").sync == PolicySync("merged", "collective")
    assert LearnerSpec.of(load_config(None, ["rollout.sync=collective"])).sync == PolicySync("full", "collective")
    # the planner follows: the adapters' host copy only, on both sides
    gpu = ["policy.lora.enabled=true", "rollout.sync=collective", "rollout.num_gpus=1", "learner.num_gpus=1"]
    cfg, merged = load_config(None, gpu), load_config(None, [*gpu, "rollout.lora_sync=merged"])
    assert 0 < learner_plan(cfg).once["published weights (rank 0)"] < 0.1 * learner_plan(merged).terms["weights"]
    rollout = rollout_plan(cfg, Machine())
    assert "received sync bucket" not in rollout.terms and rollout.host["received weights"] > 0
    assert "received sync bucket" in rollout_plan(merged, Machine()).terms


def test_what_a_sync_sends_follows_the_engine_and_the_key():
    on = LoRAConfig(enabled=True)

    def path(lora, engine, lora_sync):
        return PolicySync.of(lora, RolloutConfig(engine=engine, lora_sync=lora_sync)).path

    assert path(LoRAConfig(), "vllm", "adapters") == "full"
    assert path(on, "vllm", "adapters") == "adapters"
    assert path(on, "vllm", "merged") == "merged"
    assert path(on, "hf", "adapters") == "merged"  # the HF engine serves no adapters


def test_vllm_gets_the_smallest_allowed_max_rank_and_two_slots():
    assert lora_args(None) == {}
    assert lora_args({"rank": 4, "alpha": 8}) == {"enable_lora": True, "max_lora_rank": 8, "max_loras": 2}
    assert lora_args({"rank": 300, "alpha": 8})["max_lora_rank"] == 320
    with pytest.raises(ValueError, match="policy.lora.rank=1024"):
        lora_args({"rank": 1024, "alpha": 8})


def test_adapter_tensors_are_told_from_a_models_weights():
    assert is_adapter_state(["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    assert not is_adapter_state(["model.layers.0.self_attn.q_proj.weight", "lm_head.weight"])
