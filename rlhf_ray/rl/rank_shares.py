"""Which samples each learner rank trains on, and the split that sends each rank only those.

The batch, in worker order (each rollout worker's prompts, a prompt's k samples together), is cut by
prompt group: rank r takes groups r, r + R, r + 2R, ... of the whole batch (R ranks), so every rank
gets whole groups (the RLOO baseline needs a prompt's k samples) and an equal share.
`split_for_ranks` cuts one worker's output that way, knowing where its groups start in the batch; a
Ray task runs it next to the data, so a rank pulls its 1/R of the batch from the object store, not
all of it."""
from __future__ import annotations

from rlhf_ray.rl.engines.base import Rollouts


def shard_positions(n: int, k: int, rank: int, world_size: int, first_group: int = 0) -> list[int]:
    """Positions, among n samples in groups of k, of the groups that rank `rank` of `world_size`
    takes when the first of these groups is group `first_group` of the batch."""
    return [g * k + j for g in range(n // k) if (first_group + g) % world_size == rank for j in range(k)]


def split_for_ranks(rollouts: Rollouts, train: list[float] | None, first_group: int,
                    world_size: int) -> list:
    """One worker's samples (and their training rewards, if scored) cut into each rank's share:
    [rollouts of rank 0, rewards of rank 0, rollouts of rank 1, ...] (rewards left out when
    None)."""
    parts = []
    for rank in range(world_size):
        idx = shard_positions(len(rollouts), rollouts.k, rank, world_size, first_group)
        parts.append(rollouts.select(idx))
        if train is not None:
            parts.append([train[i] for i in idx])
    return parts


def merge_rollouts(rollout_parts) -> Rollouts:
    """Several parts' samples in one `Rollouts`, in the parts' order (prompt groups stay whole)."""
    first = rollout_parts[0]
    merged = Rollouts([], [], [], [], [], first.k, first.weights_version)
    for part in rollout_parts:
        merged.prompt_ids += part.prompt_ids
        merged.response_ids += part.response_ids
        merged.logprobs += part.logprobs
        merged.finished += part.finished
        merged.texts += part.texts
    return merged
