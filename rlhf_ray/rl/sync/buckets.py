"""Weights in buckets, what every transport sends: `bucket_plan` cuts a model's parameters into
buckets of at most `rollout.sync_bucket_mb` (a larger tensor alone), so a ZeRO-3 trainer gathers one
bucket at a time (the extra memory on every rank is one bucket, not the model) and a tied tensor
travels once (its other names are aliases). `BucketSource` is the sender's side: each bucket
gathered, as a `Weights`, on the sending rank. A flat bucket (`layout_of`, `pack_flat`,
`split_flat`) is how the collective and ipc transports move one bucket as a single buffer.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

import numpy
import torch

from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.utils.dist import gathered_parameters

T = TypeVar("T")


def tensor_bytes(param: torch.Tensor) -> int:
    """A parameter's whole size, also when ZeRO-3 holds only a partition of it here (`ds_numel`)."""
    return getattr(param, "ds_numel", param.numel()) * param.element_size()


def bucket_plan(model: torch.nn.Module,
                bucket_bytes: int) -> list[tuple[list[str], list, dict[str, str]]]:
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


# bytes: every tensor starts at a multiple of this in a flat bucket, so it can be viewed as any
# dtype
ALIGN = 64


def layout_of(weights: Weights) -> list:
    """What a receiver needs to cut a flat bucket back into tensors: names, dtypes, shapes, aliases,
    each tensor's size and offset in bytes, and the bucket's size."""
    sizes = [int(a.nbytes) for a in weights.arrays]
    offsets = numpy.cumsum([0, *(-(-n // ALIGN) * ALIGN for n in sizes)]).tolist()
    return [weights.names, weights.dtypes, [list(x) for x in weights.shapes], weights.aliases,
            sizes, offsets[:-1], offsets[-1]]


def device_of(weights: Weights) -> torch.device:
    first = next((a for a in weights.arrays if isinstance(a, torch.Tensor)), None)
    return first.device if first is not None else torch.device("cpu")


def pack_flat(weights: Weights, layout: list, device: torch.device,
              into: torch.Tensor | None = None) -> torch.Tensor:
    """The bucket's bytes in one flat uint8 buffer on `device` (`into`, or a new one), as `layout`
    places them."""
    parts = []
    for array, size, start, end in zip(weights.arrays, layout[4], layout[5],
                                       [*layout[5][1:], layout[-1]]):
        parts.append(array if isinstance(array, torch.Tensor) else torch.from_numpy(array))
        if end - start > size:
            parts.append(torch.zeros(end - start - size, dtype=torch.uint8, device=device))
    if not parts:
        return torch.empty(0, dtype=torch.uint8, device=device) if into is None else into
    # one copy, straight into place
    return torch.cat(parts) if into is None else torch.cat(parts, out=into)


def split_flat(flat, layout: list) -> Weights:
    """A flat bucket (a tensor, or a numpy array) and its layout back into a `Weights` viewing
    it."""
    names, dtypes, shapes, aliases, sizes, offsets, _ = layout
    return Weights(names, dtypes, [tuple(x) for x in shapes],
                   [flat[o : o + n] for n, o in zip(sizes, offsets)], aliases)


class BucketSource:
    """A trainer rank's model as buckets of `Weights`, for a transport's sender. With ZeRO-3 every
    rank gathers each bucket together, so every rank must go through the same buckets; only a rank
    that sends builds the `Weights` (views of the parameters: valid until the next bucket)."""

    def __init__(self, model: torch.nn.Module, bucket_bytes: int, zero_stage: int):
        self.model, self.bucket_bytes, self.zero_stage = model, bucket_bytes, zero_stage

    def plan(self) -> list[tuple[list[str], list, dict[str, str]]]:
        return bucket_plan(self.model, self.bucket_bytes)

    @contextlib.contextmanager
    def gathered(self, bucket, builds: bool,
                 on_device: bool = False) -> Iterator[tuple[Weights | None, int]]:
        """One bucket of `plan()` whole on this rank: its `Weights` (None unless `builds`) and its
        bytes."""
        names, params, aliases = bucket
        with gathered_parameters(params, self.zero_stage):
            size = sum(tensor_bytes(p) for p in params)
            yield (Weights.of({n: p.detach() for n, p in zip(names, params)}, aliases, on_device)
                   if builds else None), size

    def send_all(self, send: Callable[[Weights], T] | None, on_device: bool = False,
                 plan: list | None = None) -> tuple[list[T], int]:
        """`send` of every bucket of `plan` (default: `plan()`) in turn: [its results] on a rank that
        sends, [] where `send` is None (a rank that only takes part in the gathers); and the most
        parameter bytes held whole at once (the gather's extra memory)."""
        results, peak = [], 0
        for bucket in plan if plan is not None else self.plan():
            with self.gathered(bucket, send is not None, on_device) as (weights, size):
                peak = max(peak, size)
                if send is not None:
                    results.append(send(weights))
        return results, peak


class BucketStream:
    """The buckets of one sync, taken one at a time while a loader iterates `tensors()` (what vLLM's
    reload or the HF engine's `load_state_dict` reads in place of a `Weights`), so a receiver holds
    one bucket beyond its model, never a whole copy. `take(i)` returns (bucket i, the number of
    buckets, the bytes the sender held gathered for it) or raises TimeoutError."""

    def __init__(self, take: Callable[[int], tuple[Weights, int, int]]):
        self.take, self.nbytes, self.count, self.gathered_peak_bytes = take, 0, 0, 0

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        index, self.count = 0, 1
        while index < self.count:
            bucket, self.count, gathered = self.take(index)
            self.gathered_peak_bytes = max(self.gathered_peak_bytes, gathered)
            self.nbytes += bucket.nbytes
            yield from bucket.tensors()
            device = device_of(bucket)
            # the loader's copies out of this bucket may still be queued on the stream: finish them
            # before the next take lets the sender (ipc) or the allocator (nccl) reuse its memory
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            index += 1
