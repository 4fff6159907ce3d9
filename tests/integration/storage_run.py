"""Run by test_storage.py in its own process: a simulated 3-node cluster (a head with no CPUs and three
worker nodes, each its own raylet) with no shared disk. Each node keeps its own files in its own folder
(RLHF_RAY_SCRATCH/rlhf-ray/<node id>), the driver in its output_dir, and the run's shared files go to a
storage URI (file://, reached through pyarrow as s3:// would be). Every actor group is spread over the
nodes by config: a reward model trains on 3 nodes with a checkpoint; RLOO against it checkpoints, and a
second run resumes from storage. Prints the summaries as JSON."""
import json
import sys

import ray
from ray.cluster_utils import Cluster

from rlhf_ray.cluster import ACTOR_ENV
from rlhf_ray.config import load_config
from rlhf_ray.rl.loop import run_rloo
from rlhf_ray.rm.train import train_reward_model
from tests.integration.shared import TINY_RLOO


def main(testbeds: str, out: str, store: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(3):
        cluster.add_node(num_cpus=2, object_store_memory=256 << 20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": dict(ACTOR_ENV)})
    common = [f"data.dir={testbeds}", "tensorboard=false", f"storage_path={store}"]
    rm = train_reward_model(load_config("configs/rm_bt_gold.yaml", [
        *common, f"output_dir={out}/rm", "model.name=tiny-llama", "rm.max_steps=2", "rm.batch_size=6",
        "rm.save_every=1", "rm.num_workers=3", "rm.num_cpus=0.5", "rm.placement_strategy=STRICT_SPREAD"]))

    def rloo(steps: int, *extra: str) -> dict:
        return run_rloo(load_config(None, [
            *common, *TINY_RLOO, f"output_dir={out}/rloo", f"rloo.steps={steps}", "rloo.prompts_per_step=6",
            "rloo.save_every=1", f"reward.models=[{rm['model']}]", "scorer.num_cpus=0.5",
            "scorer.placement_strategy=STRICT_SPREAD", "learner.num_workers=2", "learner.num_cpus=0.5",
            "learner.placement_strategy=STRICT_SPREAD", "rollout.num_cpus=0.5",
            "rollout.placement_strategy=STRICT_SPREAD", *extra]))

    # every group spread over the nodes (two actors each: actor start-up is most of the time); step 1 is
    # checkpointed (a step is saved when more follow)
    first = rloo(2, "rollout.num_workers=2", "scorer.num_workers=2")
    # from storage's step-000001: steps 2 and 3, the learner ranks loading their state on their nodes
    resumed = rloo(3, "resume=true", "rollout.num_workers=1", "scorer.num_workers=1")
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    print("RESULT " + json.dumps({"worker_nodes": nodes, "rm": rm, "first": first, "resumed": resumed}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
