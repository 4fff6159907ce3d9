"""The demo's code path (`rlhf-ray demo` = the pipeline with configs/demo.yaml), with small settings:
three MiniLM reward models trained 2 steps each on 2 DeepSpeed ranks, evaluated, then one RLOO step of
tiny-llama against each, on a local Ray instance; the report and its numbers are written."""
import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def test_demo_pipeline_with_small_settings(ray_local, tmp_path):
    cfg = load_config("configs/demo.yaml", [
        f"output_dir={tmp_path}", f"data.dir={tmp_path / 'testbeds'}", "tensorboard=false", "eval.bootstrap=50",
        "prepare.sizes.gold_train_prompts=24", "prepare.sizes.gold_valid_prompts=8",
    ])
    cfg.pipeline.rm_overrides = [*cfg.pipeline.rm_overrides, "rm.max_steps=2", "rm.batch_size=4", "rm.num_cpus=0.5"]
    cfg.pipeline.rloo_overrides = [
        *cfg.pipeline.rloo_overrides, "rloo.policy=tiny-llama", "rloo.steps=1", "rloo.prompts_per_step=2",
        "rloo.eval_prompts=2", "rloo.max_prompt_tokens=64", "rollout.k=2", "rollout.max_new_tokens=4",
        "rollout.kv_cache_gb=0.25", "rollout.max_model_len=256", "rollout.num_threads=1", "learner.num_threads=1",
        "scorer.num_workers=1", "reward.max_length=96",
    ]
    result = run_pipeline(cfg, "demo")

    numbers = json.loads((tmp_path / "pipeline.json").read_text())
    assert [r["variant"] for r in numbers["reward_models"]] == ["bt", "bsr", "prompt_aware"]
    assert all(0 <= r["val1_accuracy"] <= 1 for r in numbers["reward_models"])
    assert [r["reward_model"] for r in numbers["rloo"]] == ["bt", "bsr", "prompt_aware"]
    for run in numbers["rloo"]:
        assert [s["step"] for s in run["steps"]] == [1]
        gold = run["held_out"]["gold"]
        assert gold["before"] == gold["before"] and gold["gain"] == pytest.approx(gold["after"] - gold["before"])
        # each RLOO run scored with the reward model the pipeline trained for it
        run_cfg = (tmp_path / "rloo" / run["reward_model"] / "config.yaml").read_text()
        assert str(tmp_path / "rm" / run["reward_model"] / "model") in run_cfg
    report = (tmp_path / "report.md").read_text()
    assert result["report"] == str(tmp_path / "report.md") and "+ RLOO (bsr)" in report and "Seed 0" in report
    for png in ("rloo_curves.png", "held_out_gain.png", "rm/scenarios.png"):
        assert (tmp_path / png).stat().st_size > 1000
