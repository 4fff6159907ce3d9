"""`rollout.sync: ipc` (trainer rank i and serving worker i colocated on one machine): rank i copies
a gathered bucket into one flat buffer where the bytes are and hands its worker a handle (`share`)
that the worker maps without a copy (`rebuild`): CUDA IPC on a GPU, a shared-memory file on the CPU
(torch's own tensor sharing, the same code on both). The worker pulls bucket after bucket while its
engine reloads (`SharedBuckets`), so each side holds about one bucket beyond the model. Every rank
sends (to its own worker); with ZeRO-3 the ranks gather bucket i together as their workers ask for
it.
"""
from __future__ import annotations

from typing import Callable

import torch

from rlhf_ray.config import ConfigError
from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.rl.sync.base import Delivery, Receiver, Sender, Transport
from rlhf_ray.rl.sync.buckets import BucketStream, device_of, layout_of, pack_flat, split_flat


def share(weights: Weights) -> tuple[torch.Tensor, dict]:
    """One bucket for a process on this machine: its bytes copied into one flat buffer on their
    device (in shared memory on the CPU) and {handle, layout}, picklable, for `rebuild`. The sender
    keeps the buffer (returned first) alive until the receiver has rebuilt it."""
    from multiprocessing.reduction import ForkingPickler

    # noqa: F401 - registers torch's sharing reductions with ForkingPickler
    import torch.multiprocessing

    layout, device = layout_of(weights), device_of(weights)
    flat = torch.empty(layout[-1], dtype=torch.uint8, device=device)
    if device.type == "cpu":
        # a file name travels, not a descriptor
        torch.multiprocessing.set_sharing_strategy("file_system")
        flat.share_memory_()
    flat = pack_flat(weights, layout, device, into=flat)
    # pickled as multiprocessing does it: the storage travels as a shared-memory file name or a CUDA
    # IPC handle (plain pickle, as Ray's, would copy the bytes in)
    return flat, {"handle": bytes(ForkingPickler.dumps(flat)), "layout": layout}


def rebuild(shared: dict) -> Weights:
    """The bucket `share` handed over, viewing the sender's memory (CUDA IPC / the shared-memory
    file)."""
    import pickle

    import torch.multiprocessing  # noqa: F401 - the rebuild functions the handle names

    return split_flat(pickle.loads(shared["handle"]), shared["layout"])


class SharedBuckets(BucketStream):
    """The buckets of one sync, mapped one at a time while a loader iterates `tensors()`: `fetch(i)`
    returns bucket i's `share` dict (with `count`, the number of buckets), or raises TimeoutError."""

    def __init__(self, fetch: Callable[[int], dict]):
        def take(index: int) -> tuple[Weights, int, int]:
            shared = fetch(index)
            return rebuild(shared), shared["count"], shared["gathered_bytes"]

        super().__init__(take)


class SharingSender(Sender):
    def __init__(self, *args):
        super().__init__(*args)
        self.plan: list = []  # this sync's buckets, cut when its worker asks for the first
        self.shared_buffer: torch.Tensor | None = None  # the bucket its worker maps now

    def share_bucket(self, index: int) -> dict:
        """Bucket `index` for this rank's worker, as a handle to memory on this machine. The buffer
        lives until the next call (or `release`): the worker has mapped it by then."""
        if index == 0:
            self.plan = self.source.plan()
        self.shared_buffer = None  # the previous bucket's, mapped by the worker already
        with self.source.gathered(self.plan[index], builds=True, on_device=True) as (weights, size):
            self.shared_buffer, shared = share(weights)
        return {**shared, "count": len(self.plan), "gathered_bytes": size}

    def release(self) -> None:
        self.shared_buffer = None


class SharingReceiver(Receiver):
    def pull(self, version: int, sender, timeout_s: float) -> dict:
        """The colocated rank's buckets (`sender`: its actor), each mapped from that rank's memory
        as the engine's reload reaches it, then released there."""
        import ray

        def fetch(index: int) -> dict:
            try:
                return ray.get(sender.send_weights.remote("share_bucket", index), timeout=timeout_s)
            except ray.exceptions.GetTimeoutError as err:
                raise TimeoutError(f"{self.name}: bucket {index} of version {version} was not shared by its "
                                   f"trainer rank within {timeout_s:.0f} s (rollout.sync_timeout_s)") from err

        stream = SharedBuckets(fetch)
        result = self.apply_timed(version, stream)
        ray.get(sender.send_weights.remote("release"), timeout=timeout_s)
        return {**result, "buckets": stream.count,
                "gathered_peak_bytes": stream.gathered_peak_bytes}


class SharedMemory(Transport):
    name = "ipc"
    Sender = SharingSender
    Receiver = SharingReceiver

    @classmethod
    def check(cls, rollout, learner) -> None:
        if not rollout.colocate_with_learner:
            raise ConfigError("rollout.sync=ipc maps learner rank i's memory into rollout worker i, so the "
                              "two must share a machine: set rollout.colocate_with_learner=true (or use "
                              "object_store / collective)")

    def deliver(self, version: int) -> Delivery:
        """Each receiver pulls from its colocated rank (every rank gathers each bucket)."""
        loaded = self.on_every_receiver("pull",
                                        {i: (version, self.senders.actors[i], self.timeout_s)
                                                 for i in range(len(self.receivers))})
        self.version = version
        return Delivery(loaded, 0.0, max(r["gathered_peak_bytes"] for r in loaded))
