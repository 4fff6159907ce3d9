"""The collective weight-sync transport: a process group of learner rank 0 and every rollout worker
(gloo on CPU, nccl on GPU), in which rank 0 broadcasts the same `Weights` the object store path
carries: their names, dtypes and shapes first, then each tensor's bytes. Engines see no difference:
either way they get `load_weights(weights, version)`.

The group is its own (a TCPStore and a ProcessGroup object, not torch.distributed's default group),
so it lives beside the learner's DeepSpeed group. Every collective has the group's timeout: a peer that
never arrives raises in every member instead of hanging.
"""
from __future__ import annotations

import json
from datetime import timedelta

import torch

from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.utils.dist import tcp_store


class BroadcastChannel:
    """Rank 0 (the learner) sends, ranks 1.. (rollout workers) receive."""

    def __init__(self, rank: int, world_size: int, addr: str, port: int, timeout_s: float):
        import torch.distributed as dist

        self.rank, self.timeout = rank, timedelta(seconds=timeout_s)
        store = tcp_store(addr, port, world_size, rank, self.timeout)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
            self.group = dist.ProcessGroupNCCL(store, rank, world_size)
        else:
            self.device = torch.device("cpu")
            self.group = dist.ProcessGroupGloo(store, rank, world_size, self.timeout)

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        tensor = tensor.to(self.device)
        self.group.broadcast([tensor], opts).wait(self.timeout)
        return tensor.cpu()

    def send(self, weights: Weights) -> int:
        layout = json.dumps([weights.names, weights.dtypes, weights.shapes, weights.aliases,
                             [a.nbytes for a in weights.arrays]]).encode()
        self._broadcast(torch.tensor([len(layout)], dtype=torch.int64))
        self._broadcast(torch.frombuffer(bytearray(layout), dtype=torch.uint8))
        for array in weights.arrays:
            self._broadcast(torch.from_numpy(array))
        return weights.nbytes

    def receive(self) -> Weights:
        size = int(self._broadcast(torch.zeros(1, dtype=torch.int64))[0])
        layout = self._broadcast(torch.empty(size, dtype=torch.uint8)).numpy().tobytes()
        names, dtypes, shapes, aliases, sizes = json.loads(layout)
        arrays = [self._broadcast(torch.empty(n, dtype=torch.uint8)).numpy() for n in sizes]
        return Weights(names, dtypes, [tuple(s) for s in shapes], arrays, aliases)
