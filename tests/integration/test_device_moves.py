"""Issue 26 (15): every device move in `rlhf_ray/` is caught by a fake-CUDA test when removed
(scripts/device_moves.py removes each in a scratch copy and runs the fake-CUDA files)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_removing_any_device_move_fails_a_fake_cuda_test(tmp_path):
    out = tmp_path / "device_moves.json"
    done = subprocess.run([sys.executable, "scripts/device_moves.py", "--jobs", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    survivors = [line for line in done.stdout.splitlines() if line.endswith("SURVIVED")]
    assert done.returncode == 0, "\n".join(survivors) or done.stderr[-3000:]
    mutants = json.loads(out.read_text())["mutants"]
    assert len(mutants) >= 30 and all(m["caught"] and m["failing_test"] for m in mutants)
    removed = {(m["path"], m["removed"]) for m in mutants}
    # the five the issue found uncaught are among those checked: the scorer's and the HF engine's model,
    # the learner's scores, the reference back from its offload, the collective receiver's buffer
    assert {("rlhf_ray/scoring/scorer.py", ".to(self.device)"), ("rlhf_ray/rl/engines/hf.py", ".to(self.device)"),
            ("rlhf_ray/rl/learner.py", ".to(device)"),
            ("rlhf_ray/rl/sync/collective.py", ".to(self.device)")} <= removed
