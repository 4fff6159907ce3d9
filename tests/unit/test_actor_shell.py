"""The generic Ray shell: it builds the core from its arguments (or in `setup`, for a data-parallel
rank) and forwards every public method; a subclass adds only what it overrides. No Ray needed."""
from dataclasses import dataclass

from rlhf_ray.utils.actor_shell import actor_shell


@dataclass(frozen=True)
class Spec:
    seed: int


class Counter:
    def __init__(self, start: int, step: int = 1):
        self.value, self.step = start, step

    def add(self, times: int = 1) -> int:
        self.value += self.step * times
        return self.value

    def _hidden(self):
        return "not forwarded"


class Rank:
    def __init__(self, cfg, rank, world_size, addr, port, total_steps):
        self.seed, self.rank, self.world = cfg.seed, rank, world_size

    def where(self):
        return self.rank, self.world, self.seed


def test_a_plain_shell_builds_its_core_and_forwards_public_methods():
    CounterActor = actor_shell(Counter, "CounterActor")
    actor = CounterActor(10, step=5)
    assert actor.add() == 15 and actor.add(times=2) == 25
    assert CounterActor.__name__ == "CounterActor" and not hasattr(CounterActor, "_hidden")


def test_a_data_parallel_shell_builds_its_core_in_setup():
    RankActor = actor_shell(Rank, "RankActor", data_parallel=True)
    actor = RankActor()
    addr, port = actor.reserve_address()
    assert isinstance(port, int) and port > 0
    spec = Spec(seed=7)  # the role's own sections, passed to the core as they are
    actor.setup(spec, 1, 2, addr, port, total_steps=3)
    assert actor.where() == (1, 2, 7)


def test_a_subclass_overrides_only_what_it_adds():
    class Doubling(actor_shell(Counter, "CounterShell")):
        def add(self, times: int = 1) -> int:
            return 2 * self.core.add(times)

    assert Doubling(0).add() == 2
