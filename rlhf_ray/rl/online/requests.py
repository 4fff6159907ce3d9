"""Which of a step's samples to ask a labeller about (issue 27): pure functions from one step's
prompt groups (a prompt and its k responses) to labelling requests.

A request is one prompt and two or more of its responses; the labeller ranks them. Its cost is what
a person would do: `len(responses) - 1` comparisons (ranking k responses is k - 1 adjacent
judgements), so a pair costs 1. Three ways to choose:

- `best_vs_worst`: each prompt's whole group, ranked by the labeller; training keeps its best and
  its worst (k - 1 comparisons for one clear preference).
- `random`: one random pair of each prompt's responses.
- `disagreement`: the pair on which the reward models disagree most: of all pairs, the one whose
  reward differences have the largest spread across the models (with one model, the pair it finds
  closest: the one it is least sure of).
"""
from __future__ import annotations

import itertools
import random
import statistics
from dataclasses import dataclass

SELECTIONS = ("best_vs_worst", "random", "disagreement")


@dataclass(frozen=True)
class PromptGroup:
    """One prompt of a step and its k sampled responses, with each reward model's scores of them
    (`scores[m][j]`: model m, response j; empty when not scored)."""

    prompt: dict  # the prompt record: prompt_id, prompt, prompt_type (and the gold's reference)
    responses: tuple[str, ...]
    scores: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class LabelRequest:
    """Rank these responses to this prompt. `request_id` is unique in a run."""

    request_id: str
    prompt: dict
    responses: tuple[str, ...]

    @property
    def cost(self) -> int:
        return len(self.responses) - 1


def _pair_spread(group: PromptGroup, i: int, j: int) -> float:
    """How much the reward models disagree on (i, j): the spread of their reward differences, or
    with one model the closeness of its two rewards (a larger value: less agreement)."""
    diffs = [model[i] - model[j] for model in group.scores]
    if len(diffs) == 1:
        return -abs(diffs[0])
    return statistics.pstdev(diffs)


def select(groups: list[PromptGroup], selection: str, budget: int, rng: random.Random,
           tag: str) -> list[LabelRequest]:
    """Requests for `groups` (in their order) that together cost at most `budget` comparisons;
    ids are `<tag>-<n>`. `disagreement` needs every group scored by the reward models."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r} is not one of {SELECTIONS}")
    requests, spent = [], 0
    for group in groups:
        k = len(group.responses)
        if k < 2:
            continue
        if selection == "best_vs_worst":
            picked = tuple(range(k))
        elif selection == "random":
            picked = tuple(sorted(rng.sample(range(k), 2)))
        else:
            if not group.scores:
                raise ValueError(f"selection disagreement: prompt {group.prompt['prompt_id']} "
                                 "has no reward-model scores")
            picked = max(itertools.combinations(range(k), 2), key=lambda p: _pair_spread(group, *p))
        request = LabelRequest(f"{tag}-{len(requests)}", group.prompt,
                               tuple(group.responses[i] for i in picked))
        if spent + request.cost > budget:
            break
        requests.append(request)
        spent += request.cost
    return requests
