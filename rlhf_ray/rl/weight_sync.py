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

The shared-memory transport (`rollout.sync: ipc`, learner rank i and rollout worker i colocated on one
machine): rank i copies a gathered bucket into one flat buffer where the bytes are and hands its worker
a handle (`share`) that the worker maps without a copy (`rebuild`): CUDA IPC on a GPU, a shared-memory
file on the CPU (torch's own tensor sharing, the same code on both). The worker pulls bucket after
bucket while vLLM reloads (`SharedBuckets`), so each side holds about one bucket beyond the model.
"""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Callable, Iterator

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


ALIGN = 64  # bytes: every tensor starts at a multiple of this in a flat bucket, so it can be viewed as any dtype


def _layout(weights: Weights) -> list:
    """What a receiver needs to cut a flat bucket back into tensors: names, dtypes, shapes, aliases, each
    tensor's size and offset in bytes, and the bucket's size."""
    sizes = [int(a.nbytes) for a in weights.arrays]
    offsets = numpy.cumsum([0, *(-(-n // ALIGN) * ALIGN for n in sizes)]).tolist()
    return [weights.names, weights.dtypes, [list(x) for x in weights.shapes], weights.aliases, sizes, offsets[:-1],
            offsets[-1]]


def _device_of(weights: Weights) -> torch.device:
    first = next((a for a in weights.arrays if isinstance(a, torch.Tensor)), None)
    return first.device if first is not None else torch.device("cpu")


def _pack(weights: Weights, layout: list, device: torch.device, into: torch.Tensor | None = None) -> torch.Tensor:
    """The bucket's bytes in one flat uint8 buffer on `device` (`into`, or a new one), as `layout` places them."""
    parts = []
    for array, size, start, end in zip(weights.arrays, layout[4], layout[5], [*layout[5][1:], layout[-1]]):
        parts.append(array if isinstance(array, torch.Tensor) else torch.from_numpy(array))
        if end - start > size:
            parts.append(torch.zeros(end - start - size, dtype=torch.uint8, device=device))
    if not parts:
        return torch.empty(0, dtype=torch.uint8, device=device) if into is None else into
    return torch.cat(parts) if into is None else torch.cat(parts, out=into)  # one copy, straight into place


def _split(flat, layout: list) -> Weights:
    """A flat bucket (a tensor, or a numpy array) and its layout back into a `Weights` viewing it."""
    names, dtypes, shapes, aliases, sizes, offsets, _ = layout
    return Weights(names, dtypes, [tuple(x) for x in shapes], [flat[o : o + n] for n, o in zip(sizes, offsets)],
                   aliases)


class BroadcastChannel:
    """Rank 0 (the learner) sends, ranks 1.. (rollout workers) receive."""

    def __init__(self, rank: int, world_size: int, addr: str, port: int, timeout_s: float):
        import torch.distributed as dist

        self.rank, self.timeout = rank, timedelta(seconds=timeout_s)
        store = tcp_store(addr, port, world_size, rank, self.timeout)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = self.timeout  # rollout.sync_timeout_s, not NCCL's 10-minute watchdog default
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, options)
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
        layout = _layout(weights)
        header = json.dumps(layout).encode()
        self._broadcast(torch.tensor([len(header)], dtype=torch.int64))
        self._broadcast(torch.frombuffer(bytearray(header), dtype=torch.uint8))
        self._broadcast(_pack(weights, layout, _device_of(weights)))
        return weights.nbytes

    def receive(self) -> list[Weights]:
        """Every bucket of one sync, as rank 0 sent them."""
        count = int(self._broadcast(torch.zeros(1, dtype=torch.int64)).cpu()[0])
        return [self._receive_bucket() for _ in range(count)]

    def _receive_bucket(self) -> Weights:
        size = int(self._broadcast(torch.zeros(1, dtype=torch.int64)).cpu()[0])
        layout = json.loads(self._broadcast(torch.empty(size, dtype=torch.uint8)).cpu().numpy().tobytes())
        flat = self._broadcast(torch.empty(layout[-1], dtype=torch.uint8))
        return _split(flat if self.on_gpu else flat.numpy(), layout)  # on the GPU, vLLM copies from there




def share(weights: Weights) -> tuple[torch.Tensor, dict]:
    """One bucket for a process on this machine: its bytes copied into one flat buffer on their device (in
    shared memory on the CPU) and {handle, layout}, picklable, for `rebuild`. The sender keeps the
    buffer (returned first) alive until the receiver has rebuilt it."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 - registers torch's sharing reductions with ForkingPickler

    layout, device = _layout(weights), _device_of(weights)
    flat = torch.empty(layout[-1], dtype=torch.uint8, device=device)
    if device.type == "cpu":
        torch.multiprocessing.set_sharing_strategy("file_system")  # a file name travels, not a descriptor
        flat.share_memory_()
    flat = _pack(weights, layout, device, into=flat)
    # pickled as multiprocessing does it: the storage travels as a shared-memory file name or a CUDA IPC
    # handle (plain pickle, as Ray's, would copy the bytes in)
    return flat, {"handle": bytes(ForkingPickler.dumps(flat)), "layout": layout}


def rebuild(shared: dict) -> Weights:
    """The bucket `share` handed over, viewing the sender's memory (CUDA IPC / the shared-memory file)."""
    import pickle

    import torch.multiprocessing  # noqa: F401 - the rebuild functions the handle names

    return _split(pickle.loads(shared["handle"]), shared["layout"])


class SharedBuckets:
    """The buckets of one sync, pulled one at a time while a loader iterates `tensors()`: `fetch(i)` returns
    bucket i's `share` dict (with `count`, the number of buckets), or raises TimeoutError. What vLLM's reload
    or the HF engine's `load_state_dict` reads in place of a `Weights`."""

    def __init__(self, fetch: Callable[[int], dict]):
        self.fetch, self.nbytes, self.count, self.gathered_peak_bytes = fetch, 0, 0, 0

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        index, self.count = 0, 1
        while index < self.count:
            shared = self.fetch(index)
            self.count = shared["count"]
            self.gathered_peak_bytes = max(self.gathered_peak_bytes, shared["gathered_bytes"])
            bucket = rebuild(shared)
            self.nbytes += bucket.nbytes
            yield from bucket.tensors()
            device = _device_of(bucket)
            if device.type == "cuda":  # vLLM's copies out of this bucket may still be queued on the stream:
                torch.cuda.synchronize(device)  # finish them before the next fetch lets the sender reuse it
            index += 1
