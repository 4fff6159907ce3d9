"""Weight delivery from a group of trainer ranks to a group of serving workers, one transport per
file:

    buckets.py       the weights cut into buckets; the sender's view of its model (BucketSource)
    base.py          Sender (in a trainer rank), Receiver (in a worker), Transport (the driver's side)
    object_store.py  rank 0 puts each bucket in Ray's object store; every worker maps it
    collective.py    rank 0 broadcasts in a process group of rank 0 and the workers (gloo / nccl)
    ipc.py           rank i shares each bucket's memory with its colocated worker i (CUDA IPC / shm)
    colocation.py    around any of them when workers and trainer ranks share GPUs (sleep / wake)

The transport is picked once, by name (`rollout.sync`), with `transport_class`; the learner builds
its `Sender`, each rollout worker its `Receiver`, and the driver its `Transport`, from that one
class.
"""
from __future__ import annotations

from rlhf_ray.rl.sync.base import Delivery, Receiver, Sender, Transport
from rlhf_ray.rl.sync.collective import Collective
from rlhf_ray.rl.sync.colocation import Colocated
from rlhf_ray.rl.sync.ipc import SharedMemory
from rlhf_ray.rl.sync.object_store import ObjectStore

TRANSPORTS: dict[str,
                 type[Transport]] = {t.name: t for t in (ObjectStore, Collective, SharedMemory)}


def sender_for(transport: str, model, bucket_mb: float, zero_stage: int, rank: int) -> Sender:
    """Trainer rank `rank`'s side of `transport`: `model` (anything with `named_parameters`) cut
    into buckets of `bucket_mb` MiB."""
    return transport_class(transport).Sender(model, int(bucket_mb * 2**20), zero_stage, rank)


def transport_class(name: str) -> type[Transport]:
    """The transport called `name` (`rollout.sync`)."""
    if name not in TRANSPORTS:
        raise ValueError(f"rollout.sync: unknown transport {name!r} (one of {sorted(TRANSPORTS)})")
    return TRANSPORTS[name]


__all__ = ["Colocated", "Delivery", "Receiver", "Sender", "TRANSPORTS", "Transport",
           "sender_for", "transport_class"]
