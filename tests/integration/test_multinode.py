"""Scaling by config on a simulated 3-node cluster: RM trainers, rollout workers, scorers and learner
ranks land on different nodes as their placement strategies say, and both jobs complete."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_rm_training_and_rloo_spread_over_three_nodes(testbeds, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "tests.integration.multinode_run", str(testbeds),
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [x for x in done.stdout.splitlines() if x.startswith("PLACEMENT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    placed = json.loads(lines[0][len("PLACEMENT "):])
    workers = set(placed["worker_nodes"])
    assert len(workers) == 3
    rm = placed["rm"]
    assert sorted(rm) == ["rm-trainer-0", "rm-trainer-1", "rm-trainer-2"] and set(rm.values()) == workers
    rloo = placed["rloo"]
    for role, count in (("rollout", 3), ("scorer", 3), ("learner", 2)):
        nodes = [node for name, node in rloo.items() if name.startswith(f"{role}-")]
        assert len(nodes) == count and len(set(nodes)) == count and set(nodes) <= workers, (role, rloo)
    assert json.loads((tmp_path / "rloo" / "summary.json").read_text())["steps"] == 1
