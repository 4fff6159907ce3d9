"""The Ray shell of a role: a class whose actors hold one plain-Python core and forward its public
methods to it, so each role is written (and tested) as plain Python and `ActorGroup` places the
shell.

    RLScorerActor = actor_shell(RLScorer, "RLScorerActor")      # built in the actor from its arguments
    RMTrainerActor = actor_shell(RewardModelTrainer, "RMTrainerActor", data_parallel=True)

A data-parallel shell builds its core in `setup(spec, rank, world_size, addr, port, total_steps)`
(`spec`: the role's own typed sections, never the whole config), after rank 0's `reserve_address()`
(see `ActorGroup.setup_data_parallel`). A role that needs more than forwarding subclasses the shell
and adds only that.
"""
from __future__ import annotations

import inspect


def _forwarder(name: str):
    def forward(self, *args, **kwargs):
        return getattr(self.core, name)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    return forward


def _plain_init(core_cls):
    def __init__(self, *args, **kwargs):
        self.core = core_cls(*args, **kwargs)

    return __init__


def _data_parallel_methods(core_cls) -> dict:
    def __init__(self):
        self.core = None

    def reserve_address(self) -> tuple[str, int]:
        from rlhf_ray.utils.dist import reserve_address

        return reserve_address()

    def setup(self, spec, rank: int, world_size: int, addr: str, port: int,
              total_steps: int) -> None:
        self.core = core_cls(spec, rank, world_size, addr, port, total_steps)

    return {"__init__": __init__, "reserve_address": reserve_address, "setup": setup}


def peak_rss_mb(self) -> float:
    """The actor process's peak resident memory so far, in MiB (Linux: ru_maxrss is in KiB): what
    a run's summary reports for each actor."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def actor_shell(core_cls, name: str, data_parallel: bool = False) -> type:
    """A Ray actor class named `name` around `core_cls` (its public methods forwarded), and
    `peak_rss_mb` for every role."""
    methods = _data_parallel_methods(core_cls) if data_parallel else {"__init__": _plain_init(core_cls)}
    methods["peak_rss_mb"] = peak_rss_mb
    for attr, value in inspect.getmembers(core_cls, inspect.isfunction):
        if not attr.startswith("_") and attr not in methods:
            methods[attr] = _forwarder(attr)
    methods["__doc__"] = f"Ray shell of `{core_cls.__name__}`."
    methods["__module__"] = core_cls.__module__
    return type(name, (), methods)
