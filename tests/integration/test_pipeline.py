"""The demo as a user runs it (`rlhf-ray demo` = the pipeline with configs/demo.yaml), with small settings:
three MiniLM reward models trained 2 steps each on 2 DeepSpeed ranks, evaluated, then one RLOO step of
tiny-llama against each, on the local Ray instance the command starts; the report and its numbers are
written, and the terminal shows rlhf-ray's own lines (at least 80%), ending with where the report is."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_ray.config import load_config
from tests.integration.shared import TINY_RLOO, own_fraction

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_demo_with_small_settings(tmp_path):
    demo = load_config("configs/demo.yaml").pipeline
    rm = [*demo.rm_overrides, "rm.max_steps=2", "rm.batch_size=4", "rm.num_cpus=0.5"]
    rloo = [*demo.rloo_overrides, *TINY_RLOO, "rloo.steps=1", "rloo.prompts_per_step=2", "rloo.eval_prompts=2",
            "rollout.num_threads=1", "learner.num_threads=1", "scorer.num_workers=1"]
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_ray.cli", "demo", f"output_dir={tmp_path}", f"data.dir={tmp_path / 'testbeds'}",
         "tensorboard=false", "eval.bootstrap=50", "prepare.sizes.gold_train_prompts=24",
         "prepare.sizes.gold_valid_prompts=8", f"pipeline.rm_overrides=[{', '.join(rm)}]",
         f"pipeline.rloo_overrides=[{', '.join(rloo)}]"],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, capture_output=True, text=True,
        timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = done.stderr + done.stdout
    assert own_fraction(shown) >= 0.8, shown
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("[demo] done in ") and last.endswith(f"; report {tmp_path / 'report.md'}")

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
        assert (tmp_path / "rloo" / run["reward_model"] / "logs" / "rollout-0.log").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "+ RLOO (bsr)" in report and "Seed 0" in report
    for png in ("rloo_curves.png", "held_out_gain.png", "rm/scenarios.png"):
        assert (tmp_path / png).stat().st_size > 1000
