"""scripts/gpu_check.py runs its seven steps at a tiny shape on the CPU and writes what it measured
(on a GPU it runs the same code at the Qwen2.5-1.5B shape)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_script_runs_every_step_at_a_tiny_shape(tmp_path):
    argv = ["--shape", "tiny-llama", "--seq", "32", "--batch", "4", "--repeats", "1", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "check.json").read_text())
    assert set(result["steps"]) == {"rm_train_step_zero3", "learner_update_zero3", "learner_lora_zero3",
                                    "learner_offload_reload", "ipc_bucket", "scorer_batch", "hf_generate"}
    for name, step in result["steps"].items():
        assert step["seconds"] > 0, name
        if name != "ipc_bucket":
            assert step["tokens_per_s"] > 0 and step["mfu"] > 0, name
    steps = result["steps"]
    assert steps["rm_train_step_zero3"]["zero_stage"] == 3 and steps["learner_update_zero3"]["zero_stage"] == 3
    assert steps["learner_update_zero3"]["planned_gb"] > 0 and steps["rm_train_step_zero3"]["planned_gb"] > 0
    lora = steps["learner_lora_zero3"]  # the adapters gathered whole, a small share of the model
    assert 0 < lora["adapter_bytes"] < lora["model_bytes"] / 5, lora
    # the bucket came back bit-exact from the second process (a shared-memory file on the CPU)
    assert steps["ipc_bucket"]["bit_exact"] is True and steps["ipc_bucket"]["child_exit"] == 0
    assert steps["ipc_bucket"]["bytes"] > 0 and steps["ipc_bucket"]["gb_per_s"] > 0
    # on the CPU the learner's states are on the host already: said, not hidden
    assert steps["learner_offload_reload"]["offload"].startswith("skipped")
    assert "learner_update_zero3:" in done.stdout and "bit-exact True" in done.stdout
