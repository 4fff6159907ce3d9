"""What the phases of an RLOO step hand back to the driver (`rl/groups.py` makes them, `rl/loop.py`
reads them): small typed values, so no step state is read off the groups object."""
from __future__ import annotations

from dataclasses import dataclass

from rlhf_ray.actor_group import Submitted


@dataclass(frozen=True)
class Generating:
    """A step's samples being generated: the workers' calls, which prompts each got, and the weights
    version they generate with (what the driver had synced when it started them)."""

    submitted: Submitted
    shard_index: list[list[int]]
    weights_version: int


@dataclass(frozen=True)
class Generation:
    """One step's samples: a ref of `Rollouts` per rollout worker that got prompts, and which prompts
    (indices into the batch) each holds; a prompt's k samples are on one worker; the weights version
    that generated them."""

    refs: list
    shard_index: list[list[int]]
    weights_version: int = 0
