"""Weight sync, learner -> rollout workers, in buckets: `bucket_plan` cuts the policy's parameters into
buckets of at most `rollout.sync_bucket_mb` (a larger tensor alone), so a ZeRO-3 learner gathers one
bucket at a time (the extra memory on every rank is one bucket, not the model) and a tied tensor travels
once (its other names are aliases). Each bucket is a `Weights` that the object store path `ray.put`s
and the collective path broadcasts.

The collective transport: a process group of learner rank 0 and every rollout worker (gloo on CPU,
nccl on GPU), in which rank 0 broadcasts the bucket count, then per bucket its layout (names, dtypes,
shapes, aliases) and its tensors as one flat buffer. Engines see no difference: either way they get
`load_weights(version, *buckets)`.

The group is its own (a TCPStore and a ProcessGroup object, not torch.distributed's default group),
so it lives beside the learner's DeepSpeed group. Every collective has the group's timeout: a peer that
never arrives raises in every member instead of hanging.
"""
from __future__ import annotations

import json
from datetime import timedelta

import numpy
import torch

from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.utils.dist import tcp_store


def tensor_bytes(param: torch.Tensor) -> int:
    """A parameter's whole size, also when ZeRO-3 holds only a partition of it here (`ds_numel`)."""
    return getattr(param, "ds_numel", param.numel()) * param.element_size()


def bucket_plan(model: torch.nn.Module, bucket_bytes: int) -> list[tuple[list[str], list, dict[str, str]]]:
    """(names, parameters, aliases) per bucket, in the model's order: parameters while they fit
    `bucket_bytes` (one larger than that is a bucket of its own); a parameter reached under a second
    name (a tied lm_head) is an alias of its first name, in that name's bucket."""
    first_name: dict[int, str] = {}
    entries, aliases = [], {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            aliases[name] = first_name[id(param)]
            continue
        first_name[id(param)] = name
        entries.append((name, param))
    buckets, size = [], 0
    for name, param in entries:
        if not buckets or size + tensor_bytes(param) > bucket_bytes:
            buckets.append(([], [], {}))
            size = 0
        buckets[-1][0].append(name)
        buckets[-1][1].append(param)
        size += tensor_bytes(param)
    for alias, source in aliases.items():
        next(b for b in buckets if source in b[0])[2][alias] = source
    return buckets


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

    @property
    def on_gpu(self) -> bool:
        """Buckets stay on the GPU end to end (nccl): the sender's built from the parameters there, the
        receivers' handed to vLLM there."""
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
        """One bucket: its layout, then its tensors' bytes as one flat buffer (one broadcast, not one per
        tensor), built where the bytes are (the GPU with `Weights.of(..., on_device=True)`)."""
        layout = json.dumps([weights.names, weights.dtypes, weights.shapes, weights.aliases,
                             [int(a.nbytes) for a in weights.arrays]]).encode()
        self._broadcast(torch.tensor([len(layout)], dtype=torch.int64))
        self._broadcast(torch.frombuffer(bytearray(layout), dtype=torch.uint8))
        pieces = [a if isinstance(a, torch.Tensor) else torch.from_numpy(a) for a in weights.arrays]
        self._broadcast(torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.uint8))
        return weights.nbytes

    def receive(self) -> list[Weights]:
        """Every bucket of one sync, as rank 0 sent them."""
        count = int(self._broadcast(torch.zeros(1, dtype=torch.int64)).cpu()[0])
        return [self._receive_bucket() for _ in range(count)]

    def _receive_bucket(self) -> Weights:
        size = int(self._broadcast(torch.zeros(1, dtype=torch.int64)).cpu()[0])
        layout = self._broadcast(torch.empty(size, dtype=torch.uint8)).cpu().numpy().tobytes()
        names, dtypes, shapes, aliases, sizes = json.loads(layout)
        flat = self._broadcast(torch.empty(sum(sizes), dtype=torch.uint8))
        flat = flat if self.on_gpu else flat.numpy()  # on the GPU, vLLM copies from there into its parameters
        offsets = numpy.cumsum([0, *sizes]).tolist()
        arrays = [flat[a:b] for a, b in zip(offsets, offsets[1:])]  # views into the one buffer
        return Weights(names, dtypes, [tuple(s) for s in shapes], arrays, aliases)
