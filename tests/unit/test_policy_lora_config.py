"""Policy LoRA's settings (issue 29): where it is not built yet it is refused naming the keys; what a
sync sends follows the engine; vLLM's LoRA arguments hold the adapters' rank."""
import pytest

from rlhf_ray.config import LoRAConfig, load_config
from rlhf_ray.config.rl import policy_sync_path
from rlhf_ray.models.lora import is_adapter_state
from rlhf_ray.rl.engines.vllm_engine import lora_args


@pytest.mark.parametrize("keys, named", [(["rollout.sync=ipc", "rollout.colocate_with_learner=true"],
                                          "rollout.sync=ipc"),
                                         (["rollout.sync=collective"], "rollout.sync=collective")])
def test_policy_lora_is_refused_where_it_is_not_built_naming_the_key(keys, named):
    with pytest.raises(ValueError, match=named):
        load_config(None, ["policy.lora.enabled=true", *keys])
    load_config(None, keys)  # without LoRA: fine


def test_what_a_sync_sends_follows_the_engine_and_the_key():
    on = LoRAConfig(enabled=True)
    assert policy_sync_path(LoRAConfig(), "vllm", "adapters") == "full"
    assert policy_sync_path(on, "vllm", "adapters") == "adapters"
    assert policy_sync_path(on, "vllm", "merged") == "merged"
    assert policy_sync_path(on, "hf", "adapters") == "merged"  # the HF engine serves no adapters


def test_vllm_gets_the_smallest_allowed_max_rank_and_two_slots():
    assert lora_args(None) == {}
    assert lora_args({"rank": 4, "alpha": 8}) == {"enable_lora": True, "max_lora_rank": 8, "max_loras": 2}
    assert lora_args({"rank": 300, "alpha": 8})["max_lora_rank"] == 320
    with pytest.raises(ValueError, match="policy.lora.rank=1024"):
        lora_args({"rank": 1024, "alpha": 8})


def test_adapter_tensors_are_told_from_a_models_weights():
    assert is_adapter_state(["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    assert not is_adapter_state(["model.layers.0.self_attn.q_proj.weight", "lm_head.weight"])
