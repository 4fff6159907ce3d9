"""Scaling by config and run storage on a simulated 3-node cluster with no shared disk: every node's files
in a folder of its own, the run's shared files in storage (a file:// URI, reached through pyarrow as
s3:// would be). RM trainers, rollout workers, scorers and learner ranks land on different nodes as
their placement strategies say; checkpoints commit in storage, --resume continues from there with the
same batches, and scorers and learner ranks on other nodes load the reward model and the checkpoint
from there."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_a_run_without_a_shared_disk_checkpoints_and_resumes_through_storage(testbeds, tmp_path):
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.prompts import PromptLoader, load_prompts
    from tests.integration.shared import TINY_RLOO

    nodes, out, store = tmp_path / "nodes", tmp_path / "driver", tmp_path / "storage"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RLHF_RAY_SCRATCH": str(nodes)}
    done = subprocess.run([sys.executable, "-m", "tests.integration.storage_run", str(testbeds), str(out),
                           f"file://{store}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[0][len("RESULT "):])

    workers = set(result["worker_nodes"])
    assert len(workers) == 3
    # the reward model: trained on three nodes, its checkpoint and model in storage, none in output_dir
    assert result["rm"]["model"] == f"file://{store}/rm/model" and (store / "rm" / "model" / "config.json").exists()
    assert (store / "rm" / "checkpoints" / "step-000001" / "state.json").exists()
    rm = result["rm"]["placement"]
    assert sorted(rm) == ["rm-trainer-0", "rm-trainer-1", "rm-trainer-2"] and set(rm.values()) == workers
    assert not (out / "rm" / "model").exists() and not (out / "rm" / "checkpoints").exists()
    # RLOO: each group spread over the nodes, loading the model and the checkpoint from storage
    first, resumed = result["first"], result["resumed"]
    for role, count in (("rollout", 2), ("scorer", 2), ("learner", 2)):
        placed = [node for name, node in first["placement"].items() if name.startswith(f"{role}-")]
        assert len(placed) == count and len(set(placed)) == count and set(placed) <= workers, (role, first)
    assert resumed["resumed_from_step"] == 1 and resumed["policy"] == f"file://{store}/rloo/policy"
    assert (store / "rloo" / "policy" / "model.safetensors").exists() and not (out / "rloo" / "policy").exists()
    committed = sorted(p.name for p in (store / "rloo" / "checkpoints").iterdir())
    assert committed == ["step-000001", "step-000002"]
    rows = [json.loads(x) for x in (out / "rloo" / "metrics.jsonl").read_text().splitlines()]
    cfg = load_config(None, [f"data.dir={testbeds}", *TINY_RLOO])
    loader = PromptLoader(load_prompts(cfg), 6, cfg.seed)
    assert [r["prompt_ids"] for r in rows] == [[p["prompt_id"] for p in loader.next()] for _ in range(3)]
    # each node kept its own files in its own folder: the scorers' downloaded copies of the reward model
    per_node = [d for d in (nodes / "rlhf-ray").iterdir() if d.name != "local"]
    assert len(per_node) >= 2 and sum((d / "cache" / "models").exists() for d in per_node) >= 2
