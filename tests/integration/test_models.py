"""Model aliases resolve offline to real local models; reward models are padding-independent."""
import pytest
import torch

from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.models.reward_model import encode, load_reward_model, load_tokenizer, value_head

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Tell me about your weekend."]
RESPONSES = ["Paris.", "I went hiking with my dog and then we had a long lunch by the lake."]


@pytest.mark.parametrize("alias", ["tiny-llama", "minilm-l6"])
def test_reward_is_the_same_with_left_and_right_padding(alias):
    rewards = {}
    for side in ("left", "right"):
        tokenizer = load_tokenizer(alias, padding_side=side)
        model = load_reward_model(alias, seed=3, pad_token_id=tokenizer.pad_token_id).eval()
        batch = encode(tokenizer, PROMPTS, RESPONSES, 64)
        assert (batch["attention_mask"] == 0).any()  # the batch really is padded
        with torch.no_grad():
            rewards[side] = model(**batch).logits.squeeze(-1)
        single = [model(**encode(tokenizer, [p], [r], 64)).logits.item() for p, r in zip(PROMPTS, RESPONSES)]
        torch.testing.assert_close(rewards[side], torch.tensor(single), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rewards["left"], rewards["right"], rtol=1e-4, atol=1e-4)


def test_fresh_value_head_is_initialised_from_the_seed():
    a = value_head(load_reward_model("tiny-llama", seed=1)).weight
    b = value_head(load_reward_model("tiny-llama", seed=1)).weight
    c = value_head(load_reward_model("tiny-llama", seed=2)).weight
    assert torch.equal(a, b) and not torch.equal(a, c)
    hidden = a.shape[1]
    assert abs(a.std().item() - hidden**-0.5) < 0.5 * hidden**-0.5


def test_missing_local_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    assert resolve_model("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"  # a hub id passes through


def test_smollm2_alias_converts_the_packaged_gguf_and_answers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
