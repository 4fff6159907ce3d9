import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.data.schema import DataError
from rlhf_ray.rl.prompts import PromptLoader, load_prompts


def test_prompt_loader_is_deterministic_and_resumable():
    prompts = [{"prompt_id": str(i)} for i in range(10)]
    a = PromptLoader(prompts, 4, seed=1)
    batches = [[p["prompt_id"] for p in a.next()] for _ in range(5)]  # crosses two epochs
    assert a.position == 20
    epoch1 = [x for b in batches for x in b][:10]
    assert sorted(epoch1) == [str(i) for i in range(10)]  # each prompt once per epoch
    b = PromptLoader(prompts, 4, seed=1, position=8)  # resume at the third batch
    assert [p["prompt_id"] for p in b.next()] == batches[2]
    with pytest.raises(DataError, match="prompts_per_step"):
        PromptLoader(prompts, 11, seed=0)


def test_prompt_file_rows_are_validated(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"instruction": "Explain rain."}) + "\n")
    rows = load_prompts(load_config(None, [f"rloo.prompts={f}"]))
    assert [r["prompt"] for r in rows] == ["Hi", "Explain rain."] and rows[1]["prompt_type"] == "open"
    f.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\): field 'prompt'"):
        load_prompts(load_config(None, [f"rloo.prompts={f}"]))


def test_a_system_prompt_replaces_the_templates_default_system_turn():
    from transformers import AutoTokenizer

    from rlhf_ray.models.aliases import resolve_model
    from rlhf_ray.rl.prompts import encode_prompts

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    prompt = [{"prompt": "How was your weekend?"}]
    default = tokenizer.decode(encode_prompts(tokenizer, prompt, 192)[0])
    brief = tokenizer.decode(encode_prompts(tokenizer, prompt, 192, "Reply in one sentence.")[0])
    assert "named SmolLM" in default and "Reply in one sentence." not in default
    assert "Reply in one sentence." in brief and "named SmolLM" not in brief
    assert brief.rstrip().endswith("assistant") and "How was your weekend?" in brief


def test_the_policy_samples_cache_key_holds_the_system_prompt_only_when_one_is_set(tmp_path):
    from rlhf_ray.rl.policy_samples import cache_key

    prompts = [{"prompt_id": "a", "prompt": "Hi", "split": "train"}]
    unset = cache_key(load_config(None, []), prompts)
    assert cache_key(load_config(None, ["policy.system_prompt=null"]), prompts) == unset
    assert cache_key(load_config(None, ["policy.system_prompt=Be brief."]), prompts) != unset


def test_the_token_cap_script_counts_a_reply_cut_unless_it_ended_within_the_cap():
    from scripts.token_cap import cut_at, wilson

    assert not cut_at(40, True, 48) and not cut_at(48, True, 48)
    assert cut_at(49, True, 48) and cut_at(30, False, 48)  # unfinished: cut at any cap
    low, high = wilson(10, 100)
    assert low < 0.10 < high and 0.04 < low < 0.06 and 0.16 < high < 0.18
