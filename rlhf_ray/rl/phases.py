"""What the phases of an RLOO step hand back to the driver (`rl/groups.py` makes them, `rl/loop.py`
reads them): small typed values, so no step state is read off the groups object."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    """One step's samples: a ref of `Rollouts` per rollout worker that got prompts, and which prompts
    (indices into the batch) each holds; a prompt's k samples are on one worker."""

    refs: list
    shard_index: list[list[int]]


@dataclass(frozen=True)
class Synced:
    """A weight sync: what each worker loaded, and the learner's time to gather and put the weights."""

    loaded: list[dict]
    publish_s: float
