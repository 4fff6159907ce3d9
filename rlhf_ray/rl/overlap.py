"""Batches generating ahead of the learner (`rloo.overlap`): while step t is scored and learned, the
rollout workers already generate the batches of steps t+1 .. t+lag with the weights they hold (so at
most `lag` versions old). With lag 0 each step's batch starts when the step does: on-policy."""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

from rlhf_ray.rl.phases import PendingGeneration, Generation
from rlhf_ray.rl.prompts import PromptLoader


class GenerationQueue:
    def __init__(self, rl, loader: PromptLoader, encode: Callable[[list[dict]], list[list[int]]],
                 lag: int, last_step: int):
        self.rl, self.loader, self.encode, self.lag, self.last_step = rl, loader, encode, lag, last_step
        self.in_flight: deque[tuple[list[dict], PendingGeneration]] = deque()  # oldest first

    def _start(self, step: int) -> None:
        """Step `step`'s batch, generating on the weights the workers hold now."""
        batch = self.loader.next()
        self.in_flight.append((batch, self.rl.generate(self.encode(batch), step)))

    def take(self, step: int) -> tuple[list[dict], Generation, float]:
        """Step `step`'s batch, its samples and the seconds spent waiting for them; then the batches
        of the steps ahead start, generating while this one is scored and learned."""
        if not self.in_flight:
            self._start(step)
        batch, generating = self.in_flight.popleft()
        waited = time.monotonic()
        generation = self.rl.finish_generation(generating)
        waited = time.monotonic() - waited
        for ahead in range(step + 1 + len(self.in_flight),
                           min(step + self.lag, self.last_step) + 1):
            self._start(ahead)
        return batch, generation, waited

    def resume_position(self, prompts_per_step: int) -> int:
        """The loader position a checkpoint stores: the batches generating ahead are drawn again on
        resume (with the checkpoint's weights)."""
        return self.loader.position - len(self.in_flight) * prompts_per_step
