"""What a reward-model refresh trains on (issue 27): this refresh's labels, the earlier refreshes'
(a replay buffer), and the original training data, `original_share` of the mix (pure Python)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from rlhf_ray.data.schema import Ranking


def for_training(ranking: Ranking, selection: str) -> Ranking:
    """A labelled request as a training row: `best_vs_worst` keeps the group's best and worst (its
    one clear preference); a pair or a ranking otherwise as labelled."""
    if selection != "best_vs_worst" or len(ranking.completions) <= 2:
        return ranking
    keep = [0, len(ranking.completions) - 1]
    return Ranking(ranking.prompt_id, ranking.prompt, ranking.prompt_type,
                   [ranking.completions[i] for i in keep],
                   [ranking.scores[i] for i in keep] if ranking.scores else [],
                   [ranking.generators[i] for i in keep] if ranking.generators else [])


@dataclass
class ReplayBuffer:
    """The labels of earlier refreshes, newest last, at most `capacity` rows (the oldest go first)."""

    capacity: int
    rows: list[Ranking] = field(default_factory=list)
    refresh_of: list[int] = field(default_factory=list)

    def add(self, rows: list[Ranking], refresh: int) -> None:
        self.rows += rows
        self.refresh_of += [refresh] * len(rows)
        drop = max(len(self.rows) - self.capacity, 0)
        self.rows, self.refresh_of = self.rows[drop:], self.refresh_of[drop:]

    def state(self) -> dict:
        """For a checkpoint (`from_state` reads it back)."""
        from dataclasses import asdict

        return {"capacity": self.capacity, "rows": [asdict(r) for r in self.rows],
                "refresh_of": list(self.refresh_of)}

    @classmethod
    def from_state(cls, state: dict) -> "ReplayBuffer":
        return cls(state["capacity"], [Ranking(**r) for r in state["rows"]], list(state["refresh_of"]))


def training_mix(fresh: list[Ranking], replay: ReplayBuffer, original: list[Ranking],
                 original_share: float, rng: random.Random, max_rows: int | None = None) -> list[Ranking]:
    """This refresh's rows: the fresh labels, the replay buffer's, and as many original rows (a
    seeded sample) as make them `original_share` of the whole; shuffled. With `max_rows`, at most
    that many: every fresh label, then a seeded sample of the replay buffer up to the labelled
    share, then the original rows (a refresh's cost stays flat as the buffer grows)."""
    if not 0 <= original_share < 1:
        raise ValueError(f"original_share={original_share}: use a share in [0, 1)")
    replayed = replay.rows
    if max_rows is not None:
        room = max(round(max_rows * (1 - original_share)) - len(fresh), 0)
        replayed = rng.sample(replayed, room) if room < len(replayed) else replayed
    labelled = fresh + replayed
    wanted = round(len(labelled) * original_share / (1 - original_share))
    if max_rows is not None:
        wanted = min(wanted, max(max_rows - len(labelled), 0))
    rows = labelled + rng.sample(original, min(wanted, len(original)))
    rng.shuffle(rows)
    return rows
