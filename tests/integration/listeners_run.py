"""Run by test_first_hour.py in its own process: a local Ray instance as `rlhf-ray` starts it, a 2-rank
RM trainer group (torch.distributed over gloo, DeepSpeed) and a weight-broadcast group set up; prints
every listening TCP address of this process and all it started, and the trainers' rendezvous."""
import json
import sys

import psutil


def listening(pids: set[int]) -> list[str]:
    return sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.pid in pids})


def main(testbeds: str, out: str) -> None:
    import ray

    from rlhf_ray.cluster import connect
    from rlhf_ray.config import load_config
    from rlhf_ray.rm.actor import RMTrainerGroup

    cfg = load_config("configs/rm_bt_gold.yaml", [f"data.dir={testbeds}", f"output_dir={out}", "model.name=tiny-llama",
                                                   "rm.num_workers=2", "rm.batch_size=4", "ray.num_cpus=2"])
    connect(cfg.ray, f"{out}/logs")
    group = RMTrainerGroup(cfg, total_steps=1)
    rendezvous = ray.get(group.group.actors[0].reserve_address.remote())  # a second one, as a sync group would
    me = psutil.Process()
    pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
    print("LISTENING " + json.dumps({"addresses": listening(pids), "rendezvous": rendezvous,
                                     "node_ip": ray.util.get_node_ip_address()}), flush=True)
    group.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
