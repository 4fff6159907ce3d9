"""Ray with fake GPUs (a simulated 2-node cluster declaring 2 GPUs per node): every GPU actor sees
exactly the CUDA_VISIBLE_DEVICES Ray assigned it and picks `cuda`; CPU actors pick `cpu`; colocated,
learner rank i and rollout worker i share one node and one GPU, and the 4 pairs use all 4 GPUs; so do
scorer i and RM trainer rank i with online_rm.colocate_with_scorers."""
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_actors_see_their_own_gpu_and_pick_cuda_cpu_actors_pick_cpu():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "tests.integration.gpu_placement_run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [x for x in done.stdout.splitlines() if x.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    report = json.loads(lines[0][len("REPORT "):])
    per_node = defaultdict(list)
    for actor in report["gpu"]:
        assert len(actor["gpu_ids"]) == 1 and actor["visible"] == actor["gpu_ids"][0], actor
        assert actor["device"] == "cuda", actor
        per_node[actor["node"]].append(actor["gpu_ids"][0])
    assert len(per_node) == 2 and all(sorted(ids) == ["0", "1"] for ids in per_node.values()), per_node
    for actor in report["cpu"]:
        assert actor["gpu_ids"] == [] and actor["device"] == "cpu" and not actor["visible"], actor

    for placed, role, other in ((report["colocated"], "learner", "rollout"),
                                (report["scorers_with_rm_trainers"], "scorer", "rm")):
        assert placed["bundles"] == [{"CPU": 0.5, "GPU": 1.0}] * 4
        pairs = set()
        for first, second in zip(placed[role], placed[other]):
            assert first["node"] == second["node"] and first["gpu_ids"] == second["gpu_ids"], (first, second)
            assert first["device"] == second["device"] == "cuda" and len(first["gpu_ids"]) == 1
            pairs.add((first["node"], first["gpu_ids"][0]))
        assert len(pairs) == 4, role  # a GPU per pair: two pairs on each node
