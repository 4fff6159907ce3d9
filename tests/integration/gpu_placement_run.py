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


def _pairs(role: str, other: str, bundles: list[dict], first_section, second_section) -> dict:
    """Two groups of probes sharing one placement group, actor i of each in bundle i."""
    from ray.util.placement_group import remove_placement_group

    from rlhf_ray.placement import reserve_bundles

    shared = reserve_bundles(role, bundles, "SPREAD", 60)
    first = ActorGroup(DeviceProbe, role, first_section, shared_placement=shared)
    second = ActorGroup(DeviceProbe, other, second_section, shared_placement=shared)
    out = {"bundles": bundles, role: first.call("report"), other: second.call("report")}
    first.shutdown()
    second.shutdown()
    remove_placement_group(shared)
    return out


def colocated() -> dict:
    """rollout.colocate_with_learner: 4 learner ranks and 4 rollout workers of half a GPU each, pair i
    in bundle i of one placement group, as RLActors places them."""
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.actors import colocated_bundles

    cfg = load_config(None, ["rollout.colocate_with_learner=true", "rollout.num_workers=4", "rollout.num_gpus=0.5",
                             "rollout.num_cpus=0.25", "learner.num_workers=4", "learner.num_gpus=0.5",
                             "learner.num_cpus=0.25", "learner.placement_strategy=SPREAD", "rloo.prompts_per_step=8"])
    return _pairs("learner", "rollout", colocated_bundles(cfg), cfg.learner, cfg.rollout)


def scorers_with_rm_trainers() -> dict:
    """online_rm.colocate_with_scorers: 4 scorers and 4 RM trainer ranks of half a GPU each, pair i in
    bundle i of the scorers' placement group, as RLActors and OnlineRewardTraining place them."""
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.actors import paired_bundles

    cfg = load_config(None, ["online_rm.enabled=true", "online_rm.colocate_with_scorers=true",
                             "scorer.num_workers=4", "scorer.num_gpus=0.5", "scorer.num_cpus=0.25",
                             "rm.num_workers=4", "rm.num_gpus=0.5", "rm.num_cpus=0.25"])
    return _pairs("scorer", "rm", paired_bundles(cfg.scorer, cfg.rm, 4), cfg.scorer, cfg.rm)


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
    report["scorers_with_rm_trainers"] = scorers_with_rm_trainers()
    print("REPORT " + json.dumps(report))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
