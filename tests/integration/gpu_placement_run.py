"""Run by test_gpu_placement.py in its own process: a simulated 2-node cluster whose nodes declare 2
GPUs each (Ray accepts GPUs it does not have), one actor group of 4 one-GPU actors and one of 2 CPU
actors, placed by the project's ActorGroup. Each actor reports what it sees; printed as JSON."""
import json

import ray
from ray.cluster_utils import Cluster

from rlhf_ray.actor_group import ActorGroup
from rlhf_ray.cluster import ACTOR_ENV
from rlhf_ray.config import ActorGroupConfig


class DeviceProbe:
    def report(self) -> dict:
        import os

        import torch

        from rlhf_ray.utils.devices import auto_device_type, ray_gpu_ids

        return {"node": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device": auto_device_type(ray_gpu_ids(), torch.cuda.is_available())}


def colocated() -> dict:
    """rollout.colocate_with_learner: 4 learner ranks and 4 rollout workers of half a GPU each, pair i
    in bundle i of one placement group, as RLActors places them."""
    from ray.util.placement_group import remove_placement_group

    from rlhf_ray.config import load_config
    from rlhf_ray.placement import reserve_bundles
    from rlhf_ray.rl.actors import colocated_bundles

    cfg = load_config(None, ["rollout.colocate_with_learner=true", "rollout.num_workers=4", "rollout.num_gpus=0.5",
                             "rollout.num_cpus=0.25", "learner.num_workers=4", "learner.num_gpus=0.5",
                             "learner.num_cpus=0.25", "learner.placement_strategy=SPREAD", "rloo.prompts_per_step=8"])
    shared = reserve_bundles("learner", colocated_bundles(cfg), "SPREAD", 60)
    learner = ActorGroup(DeviceProbe, "learner", cfg.learner, shared_placement=shared)
    rollout = ActorGroup(DeviceProbe, "rollout", cfg.rollout, shared_placement=shared)
    out = {"bundles": colocated_bundles(cfg), "learner": learner.call("report"), "rollout": rollout.call("report")}
    learner.shutdown()
    rollout.shutdown()
    remove_placement_group(shared)
    return out


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=2, object_store_memory=128 << 20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": dict(ACTOR_ENV)})
    gpu = ActorGroup(DeviceProbe, "learner", ActorGroupConfig(num_workers=4, num_cpus=0.25, num_gpus=1,
                                                              placement_strategy="SPREAD"))
    cpu = ActorGroup(DeviceProbe, "scorer", ActorGroupConfig(num_workers=2, num_cpus=0.25))
    report = {"gpu": gpu.call("report"), "cpu": cpu.call("report")}
    gpu.shutdown()
    cpu.shutdown()
    report["colocated"] = colocated()
    print("REPORT " + json.dumps(report))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
