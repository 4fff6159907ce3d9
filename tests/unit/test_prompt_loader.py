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
