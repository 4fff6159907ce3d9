"""Splitting a rank's batch into micro-batches by a token budget, and to a count shared by all
ranks. Pure functions on lists: both trainers use them (the RM trainer on prompt groups, the learner
on prompt groups of k samples)."""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def chunk_by_tokens(items: list[T], rows: Callable[[T], int], width: Callable[[T], int],
                    budget: int) -> list[list[T]]:
    """`items`, in order, cut into consecutive chunks whose padded size (their rows x the widest
    one's width) stays within `budget` tokens; an item that alone exceeds it is a chunk of its
    own."""
    chunks: list[list[T]] = [[]]
    widest = 0
    for item in items:
        grown = chunks[-1] + [item]
        if chunks[-1] and sum(rows(i) for i in grown) * max(widest, width(item)) > budget:
            chunks.append([item])
            widest = width(item)
        else:
            chunks[-1] = grown
            widest = max(widest, width(item))
    return chunks


def split_to_count(chunks: list[list[T]], count: int, unit: int = 1) -> list[list[T]]:
    """The chunks split (the largest first, at a multiple of `unit` items) until there are `count`:
    every data-parallel rank must run as many forward/backward passes as the others, or ZeRO's
    collectives wait on the rank that has none left."""
    out = [list(c) for c in chunks]
    while len(out) < count:
        largest = max(range(len(out)), key=lambda i: len(out[i]))
        units = len(out[largest]) // unit
        if units < 2:
            raise ValueError(f"cannot make {count} micro-batches of whole units out of {len(chunks)} "
                             f"({sum(len(c) for c in chunks) // unit} units)")
        half = units // 2 * unit
        out[largest:largest + 1] = [out[largest][:half], out[largest][half:]]
    return out


def common_count(count: int, world_size: int) -> int:
    """The largest of every rank's micro-batch count (an all-reduce; this rank's own at world size
    1)."""
    if world_size == 1:
        return count
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([count])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)
