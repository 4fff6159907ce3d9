"""Run by test_multinode.py in its own process: a simulated 3-node cluster (ray.cluster_utils.Cluster:
a head with no CPUs and three worker nodes, each its own raylet), reward-model training and RLOO with
every actor group spread over the nodes by config. Prints the placements as JSON."""
import json
import sys

import ray
from ray.cluster_utils import Cluster

from rlhf_ray.cluster import ACTOR_ENV
from rlhf_ray.config import load_config
from rlhf_ray.rl.loop import run_rloo
from rlhf_ray.rm.train import train_reward_model
from tests.integration.shared import TINY_RLOO


def main(testbeds: str, out: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(3):
        cluster.add_node(num_cpus=2, object_store_memory=256 << 20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": dict(ACTOR_ENV)})
    common = [f"data.dir={testbeds}", "tensorboard=false"]
    rm = train_reward_model(load_config("configs/rm_bt_gold.yaml", [
        *common, f"output_dir={out}/rm", "model.name=tiny-llama", "rm.max_steps=2", "rm.batch_size=6",
        "rm.num_workers=3", "rm.num_cpus=0.5", "rm.placement_strategy=STRICT_SPREAD"]))
    rl = run_rloo(load_config(None, [
        *common, *TINY_RLOO, f"output_dir={out}/rloo", "rloo.steps=1", "rloo.prompts_per_step=6",
        "reward.models=[tiny-llama]",
        "rollout.num_workers=3", "rollout.num_cpus=0.5", "rollout.placement_strategy=STRICT_SPREAD",
        "scorer.num_workers=3", "scorer.num_cpus=0.5", "scorer.placement_strategy=STRICT_SPREAD",
        "learner.num_workers=2", "learner.num_cpus=0.5", "learner.placement_strategy=STRICT_SPREAD"]))
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    print("PLACEMENT " + json.dumps({"worker_nodes": nodes, "rm": rm["placement"], "rloo": rl["placement"]}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
