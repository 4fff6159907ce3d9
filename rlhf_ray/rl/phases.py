"""What the phases of an RLOO step hand back to the driver (`rl/actors.py` makes them, `rl/loop.py`
reads them): small typed values, so no step state is read off the groups object."""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_ray.actor_group import Submitted


@dataclass(frozen=True)
class PendingGeneration:
    """A step's samples being generated: the workers' calls, which prompts each got, and the weights
    version they generate with (what the driver had synced when it started them)."""

    submitted: Submitted
    shard_index: list[list[int]]
    weights_version: int


@dataclass(frozen=True)
class Generation:
    """One step's samples: a ref of `Rollouts` per rollout worker that got prompts, and which
    prompts (indices into the batch) each holds; a prompt's k samples are on one worker; the weights
    version that generated them; a ref of each worker's `Generated` (what the driver reads of
    them)."""

    refs: list
    shard_index: list[list[int]]
    weights_version: int = 0
    generated: list = field(default_factory=list)


@dataclass(frozen=True)
class Generated:
    """What the driver reads of one worker's samples (the samples stay in the object store): their
    texts (samples.jsonl), token counts, whether each ended (False: cut at max_new_tokens), and the
    engine's generation time (the step's compute accounting)."""

    texts: list[str]
    length: list[int]
    finished: list[bool]
    compute_s: float
    # the weights the engine generated them with: a worker restarted and retried generates with the
    # current weights, not those the step was submitted with (the step's staleness reads this)
    weights_version: int = 0


@dataclass(frozen=True)
class Scores:
    """One worker's samples as a scorer scored them, in sample order: the reward trained on, the
    proxy reward before the transform, each member's reward, gold v1 and v2 (tracked, NaN without a
    reference), the scorer's time, and the reward-model version that scored them (0: the one the run
    started with; online reward training makes more)."""

    train: list[float]
    proxy: list[float]
    members: list[list[float]]
    gold: list[float]
    gold_v2: list[float]
    score_s: float
    rm_version: int = 0


def generated_of(rollouts) -> Generated:
    """The `Generated` of a worker's `Rollouts` (a Ray task next to them, so only this travels)."""
    return Generated(list(rollouts.texts), [len(r) for r in rollouts.response_ids],
                     list(rollouts.finished), rollouts.compute_s, rollouts.weights_version)


@dataclass(frozen=True)
class LearnerStats:
    """One learner rank's update of a step: the batch's mean sequence KL to the reference, advantage
    mean and std, clipped fraction, loss, gradient norm, learning rate and KL coefficient used, the
    update's time; the policy's entropy where the update's forward gave it; the behaviour
    correction's statistics (mismatch_kl, is_ratio_mean, is_ratio_max, is_cut_frac) where measured."""

    kl: float
    advantage_mean: float
    advantage_std: float
    clip_frac: float
    loss: float
    grad_norm: float
    lr: float
    beta: float
    learn_s: float
    entropy: float | None = None
    correction: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    """One step: its prompts, samples (refs), what the driver read of them, their scores, its
    metrics."""

    batch: list[dict]
    generation: Generation
    generated: list[Generated]
    scores: list[Scores]
    metrics: dict
