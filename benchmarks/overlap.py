"""Overlapped (one-step off-policy) RLOO against the on-policy loop, same config and seed, on a simulated
2-node cluster (ray.cluster_utils.Cluster) whose nodes each get a core: the rollout worker and the
scorer on one node, the learner on the other (custom resources `rollout_node`, `learner_node`), each
actor one thread. Steps per second after the warm-up steps; `system` = `sequential` or `overlap`.

    python -m benchmarks.run --only overlap
"""
from __future__ import annotations

import json
import tempfile

from benchmarks.common import steady


def _run(s: dict, overlap: bool) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from rlhf_ray.cluster import ACTOR_ENV
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.loop import run_rloo

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"rollout_node": 2}, object_store_memory=1 << 30)
    cluster.add_node(num_cpus=1, resources={"learner_node": 1}, object_store_memory=1 << 30)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": dict(ACTOR_ENV)})
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config("configs/rloo_smollm2.yaml", [
                f"output_dir={out}", f"data.dir={s['data_dir']}", f"policy.name={s['policy']}",
                f"reward.models=[{s['reward_model']}]", f"rloo.steps={s['steps']}",
                f"rloo.prompts_per_step={s['prompts']}", "rloo.eval_prompts=0", f"rollout.k={s['k']}",
                f"rollout.max_new_tokens={s['max_new_tokens']}", f"rloo.overlap={str(overlap).lower()}",
                "rollout.num_cpus=0.5", "rollout.num_threads=1", "rollout.resources={rollout_node: 1}",
                "scorer.num_workers=1", "scorer.num_cpus=0.5", "scorer.resources={rollout_node: 1}",
                "learner.num_cpus=1", "learner.num_threads=1", "learner.resources={learner_node: 1}",
                f"learner.lr={s['lr']}", "learner.warmup_ratio=0", "tensorboard=false",
                "policy.system_prompt=null"])  # as the runs measured before the config had one
            run_rloo(cfg)
            rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    finally:
        ray.shutdown()
        cluster.shutdown()
    walls = [r["wall_s"] for r in rows]
    return {"step_s": steady(walls, s["warmup"]), "seconds": walls,
            "staleness": [r["staleness"] for r in rows],
            **{f"{phase}_s": steady([r[f"time_{phase}_s"] for r in rows], s["warmup"])
               for phase in ("generate", "score", "learn", "sync")}}


def measure_sequential(s: dict) -> dict:
    return _run(s, overlap=False)


def measure_overlap(s: dict) -> dict:
    return _run(s, overlap=True)
