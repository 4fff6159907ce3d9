"""`rollout.sync: collective`: a process group of trainer rank 0 and every receiver (gloo on CPU,
nccl on GPU), in which rank 0 broadcasts the bucket count, then per bucket its layout (names,
dtypes, shapes, aliases) and its tensors as one flat buffer. On GPUs the buckets never leave them.
A vLLM engine receives inside its own workers, each at a rank of its own (a tensor-parallel engine
of t workers takes t consecutive ranks; vLLM's weight-transfer engine `BucketBroadcastReceiver`);
an engine without workers (HF generate) receives in the rollout actor's process.

The group is its own (a TCPStore and a ProcessGroup object, not torch.distributed's default group),
so it lives beside the trainer's DeepSpeed group. Every collective has the group's timeout: a peer
that never arrives raises in every member instead of hanging. A restarted receiver is not in the
group: it gets the weights through the object store and the group is formed again before the next
broadcast.
"""
from __future__ import annotations

import json
import time
from datetime import timedelta

import torch

from rlhf_ray.config import ConfigError
from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.rl.sync.base import Delivery, Receiver, Sender, Transport
from rlhf_ray.rl.sync.buckets import BucketStream, device_of, layout_of, pack_flat, split_flat
from rlhf_ray.utils.dist import tcp_store


class BroadcastChannel:
    """Rank 0 (the learner) sends, ranks 1.. (rollout workers) receive."""

    def __init__(self, rank: int, world_size: int, addr: str, port: int, timeout_s: float):
        import torch.distributed as dist

        self.rank, self.timeout = rank, timedelta(seconds=timeout_s)
        store = tcp_store(addr, port, world_size, rank, self.timeout)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
            options = dist.ProcessGroupNCCL.Options()
            # rollout.sync_timeout_s, not NCCL's 10-minute watchdog default
            options._timeout = self.timeout
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, options)
        else:
            self.device = torch.device("cpu")
            self.group = dist.ProcessGroupGloo(store, rank, world_size, self.timeout)

    @property
    def on_gpu(self) -> bool:
        """Buckets stay on the GPU end to end (nccl): the sender's built from the parameters there,
        the receivers' handed to vLLM there."""
        return self.device.type == "cuda"

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (rank 0's) into every member's, on the group's device; returned there."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        tensor = tensor.to(self.device)
        self.group.broadcast([tensor], opts).wait(self.timeout)
        return tensor

    def send_count(self, buckets: int) -> None:
        self._broadcast(torch.tensor([buckets], dtype=torch.int64))

    def send(self, weights: Weights) -> int:
        """One bucket: its layout, then its tensors' bytes as one flat buffer (one broadcast, not
        one per tensor), built where the bytes are (the GPU with `Weights.of(...,
        on_device=True)`)."""
        layout = layout_of(weights)
        header = json.dumps(layout).encode()
        self._broadcast(torch.tensor([len(header)], dtype=torch.int64))
        self._broadcast(torch.frombuffer(bytearray(header), dtype=torch.uint8))
        self._broadcast(pack_flat(weights, layout, device_of(weights)))
        return weights.nbytes

    def receive_count(self) -> int:
        """How many buckets this sync has (rank 0's `send_count`)."""
        return int(self._broadcast(torch.zeros(1, dtype=torch.int64)).cpu()[0])

    def receive_bucket(self) -> Weights:
        """The next bucket, as rank 0 sent it."""
        size = int(self._broadcast(torch.zeros(1, dtype=torch.int64)).cpu()[0])
        layout = json.loads(self._broadcast(torch.empty(size,
                                                        dtype=torch.uint8)).cpu().numpy().tobytes())
        flat = self._broadcast(torch.empty(layout[-1], dtype=torch.uint8))
        # on the GPU, vLLM copies from there
        return split_flat(flat if self.on_gpu else flat.numpy(), layout)


class CollectiveSender(Sender):
    def __init__(self, *args):
        super().__init__(*args)
        self.channel: BroadcastChannel | None = None  # rank 0, once joined

    def join(self, world_size: int, addr: str, port: int, timeout_s: float) -> None:
        """Rank 0 only: become the sender of the group."""
        self.channel = BroadcastChannel(0, world_size, addr, port, timeout_s)

    def broadcast(self) -> dict:
        """Every rank calls; rank 0 sends the bucket count, then each bucket (on the GPU with
        nccl)."""
        plan, send, on_gpu = self.source.plan(), None, False
        if self.channel is not None:
            self.channel.send_count(len(plan))
            send, on_gpu = self.channel.send, self.channel.on_gpu
        sent, peak = self.source.send_all(send, on_gpu, plan)
        return {"bytes": sum(sent), "gathered_peak_bytes": peak}


class CollectiveReceiver(Receiver):
    def __init__(self, *args):
        super().__init__(*args)
        self.channel: BroadcastChannel | None = None
        # the engine's workers are the group's members (vLLM), not this process
        self.in_engine = hasattr(self.engine, "join_broadcast")

    def ranks(self) -> int:
        """How many ranks of the group this receiver takes (a TP engine: one per worker)."""
        return self.engine.broadcast_ranks if self.in_engine else 1

    def join(self, rank: int, world_size: int, addr: str, port: int, timeout_s: float) -> None:
        """Join at `rank` (and the next `ranks() - 1`)."""
        if self.in_engine:
            self.engine.join_broadcast(rank, world_size, addr, port, timeout_s)
        else:
            self.channel = BroadcastChannel(rank, world_size, addr, port, timeout_s)

    def receive(self, version: int) -> dict:
        """Take rank 0's broadcast bucket by bucket while the engine loads them (`BucketStream`,
        or the same in every engine worker): a receiver holds one bucket beyond its model, never a
        whole copy."""
        if self.in_engine:
            start = time.monotonic()
            try:
                got = self.engine.receive_broadcast(version)
            except (RuntimeError, TimeoutError) as err:  # a worker's, as vLLM's RPC raises it
                raise TimeoutError(f"{self.name}: weight sync to version {version} failed: {err}") from err
            return {"sync_s": time.monotonic() - start, "version": version, **got}
        channel = self.channel

        def take(index: int) -> tuple[Weights, int, int]:
            try:
                count = channel.receive_count() if index == 0 else stream.count
                return channel.receive_bucket(), count, 0
            except RuntimeError as err:  # gloo/nccl timeout or a peer gone
                raise TimeoutError(f"weight broadcast for version {version} failed: {err}") from err

        stream = BucketStream(take)
        return {**self.apply_timed(version, stream), "buckets": stream.count}


class Collective(Transport):
    name = "collective"
    receives_bucket_on_gpu = True
    Sender = CollectiveSender
    Receiver = CollectiveReceiver

    @classmethod
    def check(cls, rollout, learner) -> None:
        if rollout.colocate_with_learner and rollout.num_gpus and learner.num_gpus:
            raise ConfigError("rollout.sync=collective with rollout.colocate_with_learner on GPUs puts learner "
                              "rank 0 and rollout worker 0 on one GPU as two NCCL ranks, which NCCL refuses: "
                              "use rollout.sync=ipc (or object_store)")

    def __init__(self, senders, receivers, timeout_s: float):
        super().__init__(senders, receivers, timeout_s)
        # a receiver was restarted: form the group again before the next broadcast
        self.regroup = False

    def connect(self) -> None:
        """Trainer rank 0 (rank 0 of the group) and every receiver (ranks 1.., as many each as it
        takes) form one group."""
        import ray

        addr, port = self.senders.call_one(0, "reserve_address")
        ranks = ray.get([a.receive_weights.remote("ranks") for a in self.receivers.actors],
                        timeout=self.timeout_s)
        first = [1 + sum(ranks[:i]) for i in range(len(ranks))]
        world = 1 + sum(ranks)
        refs = [self.senders.actors[0].send_weights.remote("join", world, addr, port,
                                                           self.timeout_s)]
        refs += [a.receive_weights.remote("join", first[i], world, addr, port, self.timeout_s)
                 for i, a in enumerate(self.receivers.actors)]
        self.receivers.wait(refs, "join", self.timeout_s,
                            [self.senders.names[0], *self.receivers.names])

    def deliver(self, version: int) -> Delivery:
        """A receiver lost mid-broadcast fails the broadcast: the run stops, resumable."""
        if self.regroup:
            self.connect()
            self.regroup = False
        sends = [a.send_weights.remote("broadcast") for a in self.senders.actors]
        receives = [a.receive_weights.remote("receive", version) for a in self.receivers.actors]
        results = self.receivers.wait([*sends, *receives], "weight broadcast", self.timeout_s,
                                      [*self.senders.names, *self.receivers.names])
        self.version = version
        peak = max(r["gathered_peak_bytes"] for r in results[:len(sends)])
        return Delivery(results[len(sends):], 0.0, peak)  # sending happens inside the broadcast

    def replay(self, worker: int) -> None:
        if self.version > 0:
            self.regroup = True  # the new process is not in the group
        super().replay(worker)
