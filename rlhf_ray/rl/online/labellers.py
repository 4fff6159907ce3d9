"""Labellers behind one interface (issue 27): `label(requests, refresh) -> Labels`, each answered
request a `Ranking` (best first); `placement()` and `shutdown()` for the actors a labeller runs
(none here; the judge's in `judge.py`). Labels cost comparisons (`LabelRequest.cost`); `LabelBudget`
holds the run's total and per-refresh limits and what was spent.

- `GoldLabeller`: the testbed's gold reward (v1 or v2), the stand-in for human labels.
- `QueueLabeller`: a real labelling workflow. The run writes the requests to
  `<run>/labels/requests-<refresh>.jsonl` and reads the answers from
  `<run>/labels/responses-<refresh>.jsonl`, written by any tool or person: one JSON object a line,
  `{"request_id": ..., "ranking": [indices of the request's responses, best first]}`. After
  `timeout_s` it goes on with what was answered (possibly nothing) and says so. A malformed line is
  an error naming the file and the line; an answer to an unknown request, or a ranking that is not a
  permutation of the request's responses, too.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rlhf_ray.data.schema import DataError, Ranking
from rlhf_ray.rl.online.requests import LabelRequest


@dataclass
class Labels:
    """What one refresh got: the answered requests as rankings, the comparisons they cost, and a
    note when fewer came back than were asked for (why)."""

    rankings: list[Ranking]
    spent: int
    note: str = ""


@dataclass
class LabelBudget:
    """`total` comparisons for the run, at most `per_refresh` at a time (None: no limit)."""

    total: int | None
    per_refresh: int | None
    spent: int = 0
    refreshes: list[int] = field(default_factory=list)  # comparisons spent at each refresh

    def allowance(self) -> int:
        """What the next refresh may spend."""
        left = [x for x in (self.per_refresh,
                            None if self.total is None else self.total - self.spent) if x is not None]
        return max(min(left), 0) if left else 1 << 62

    def charge(self, spent: int) -> None:
        if spent > self.allowance():
            raise ValueError(f"a refresh spent {spent} comparisons, over its allowance {self.allowance()}")
        self.spent += spent
        self.refreshes.append(spent)


def ranking_of(request: LabelRequest, order: list[int], scores: list[float] | None = None) -> Ranking:
    p = request.prompt
    return Ranking(p["prompt_id"], p["prompt"], p.get("prompt_type", "open"),
                   [request.responses[i] for i in order], scores or [], [])


class InProcessLabeller:
    """A labeller with no actors of its own (the gold, the queue): nothing to place or stop."""

    def placement(self) -> dict[str, str]:
        return {}

    def shutdown(self) -> None:
        pass


class GoldLabeller(InProcessLabeller):
    """Ranks by the gold reward (`gold(prompt record, response)`); ties keep the request's order."""

    def __init__(self, gold: Callable[[dict, str], float]):
        self.gold = gold

    def label(self, requests: list[LabelRequest], refresh: int) -> Labels:
        rankings = []
        for request in requests:
            scores = [self.gold(request.prompt, r) for r in request.responses]
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            rankings.append(ranking_of(request, order, [round(scores[i], 6) for i in order]))
        return Labels(rankings, sum(r.cost for r in requests))


class QueueLabeller(InProcessLabeller):
    """Requests out to a file, answers back from a file (see the module's docstring)."""

    def __init__(self, folder: str | Path, timeout_s: float, poll_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.folder, self.timeout_s, self.poll_s = Path(folder), timeout_s, poll_s
        self.clock, self.sleep = clock, sleep

    def paths(self, refresh: int) -> tuple[Path, Path]:
        return (self.folder / f"requests-{refresh}.jsonl", self.folder / f"responses-{refresh}.jsonl")

    def label(self, requests: list[LabelRequest], refresh: int) -> Labels:
        asked, answers = self.paths(refresh)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = asked.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"request_id": r.request_id, "prompt": r.prompt["prompt"],
                                           "prompt_type": r.prompt.get("prompt_type", "open"),
                                           "responses": list(r.responses)}) + "\n" for r in requests))
        tmp.replace(asked)  # a reader never sees half a file
        by_id = {r.request_id: r for r in requests}
        deadline = self.clock() + self.timeout_s
        answered: dict[str, list[int]] = {}
        while True:
            answered = self._read(answers, by_id) if answers.exists() else {}
            if len(answered) == len(requests) or self.clock() >= deadline:
                break
            self.sleep(self.poll_s)
        done = [r for r in requests if r.request_id in answered]
        note = ("" if len(done) == len(requests) else
                f"{answers}: {len(done)} of {len(requests)} requests answered within "
                f"{self.timeout_s:g} s; going on with those")
        return Labels([ranking_of(r, answered[r.request_id]) for r in done],
                      sum(r.cost for r in done), note)

    @staticmethod
    def _read(path: Path, by_id: dict[str, LabelRequest]) -> dict[str, list[int]]:
        """Every complete line's answer; a last line without its newline is still being written."""
        text = path.read_text()
        lines = text.split("\n")
        if not text.endswith("\n"):
            lines = lines[:-1]
        out = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                answer = json.loads(line)
                request_id, order = answer["request_id"], [int(i) for i in answer["ranking"]]
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{path}: line {number}: not an answer "
                                f'{{"request_id": ..., "ranking": [...]}}: {err}') from err
            if request_id not in by_id:
                raise DataError(f"{path}: line {number}: request_id {request_id!r} was not asked")
            if sorted(order) != list(range(len(by_id[request_id].responses))):
                raise DataError(f"{path}: line {number}: ranking {order} is not an order of the "
                                f"{len(by_id[request_id].responses)} responses of {request_id}")
            out[request_id] = order
        return out
