"""scripts/gpu_check.py runs its four steps at a tiny shape on the CPU and writes what it measured
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
    assert set(result["steps"]) == {"rm_train_step", "learner_update", "scorer_batch", "hf_generate"}
    for step in result["steps"].values():
        assert step["seconds"] > 0 and step["tokens_per_s"] > 0 and step["mfu"] > 0
    assert result["steps"]["learner_update"]["planned_gb"] > 0 and "learner_update:" in done.stdout
