"""A plan's groups and the machine they are checked against: the table `rlhf-ray plan` prints and
the check that every group fits its GPU and every node's host memory (`rlhf_ray/plan.py` estimates
the terms)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhf_ray.config import ConfigError

GIB = float(1 << 30)
# what torch reports of a GPU sold as N GB: an H100 80GB shows 79.2 GiB (`total_memory`)
REPORTED_SHARE = 0.99


class PlanError(ConfigError):
    """A group does not fit its device; names the group, its config keys and its largest term."""


@dataclass
class GroupPlan:
    group: str  # the config section
    what: str
    terms: dict[str, float] = field(default_factory=dict)  # bytes per device
    on_gpu: bool = True
    # bytes on the host per actor (its device's too, off GPU)
    host: dict[str, float] = field(default_factory=dict)
    # host bytes of one actor of the group (rank 0's)
    once: dict[str, float] = field(default_factory=dict)
    actors: int = 1  # actors in the group
    gpus_per_actor: float = 0.0
    # the keys that change its memory, for the error when it does not fit
    advice: str = "micro-batch tokens, gradient checkpointing, ZeRO stage, ranks"
    problem: str = ""  # a reason it cannot start whatever the GPU (check_fits raises it)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def largest(self) -> tuple[str, float]:
        return max(self.terms.items(), key=lambda kv: kv[1])

    @property
    def host_per_actor(self) -> float:
        return sum(self.host.values()) + (0.0 if self.on_gpu else self.total)

    def actors_per_node(self, gpus_per_node: int) -> int:
        """The group's actors that can share one node: as many as its GPUs hold, all of a CPU
        group."""
        if self.gpus_per_actor <= 0:
            return self.actors
        return max(1, min(self.actors, int(gpus_per_node // self.gpus_per_actor)))


    def host_on_node(self, gpus_per_node: int) -> float:
        """Host bytes of the group's actors that share one node."""
        return self.actors_per_node(gpus_per_node) * self.host_per_actor + sum(self.once.values())


@dataclass(frozen=True)
class Machine:
    """What a plan is checked against: one GPU's memory, GPUs and host memory of a node (None:
    unchecked)."""

    gpu_memory_gb: float = 80.0  # as the card is sold: it reports REPORTED_SHARE of that in GiB
    gpus_per_node: int = 8
    host_memory_gb: float | None = None

    def __post_init__(self):
        for flag, value in (("--gpu-memory-gb", self.gpu_memory_gb), ("--gpus-per-node", self.gpus_per_node),
                            ("--host-memory-gb", self.host_memory_gb)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{flag} {value}: a machine's value must be a finite number above 0")

    @property
    def gpu_bytes(self) -> float:
        return self.gpu_memory_gb * REPORTED_SHARE * GIB


def host_per_node(groups: list[GroupPlan], gpus_per_node: int) -> dict[str, float]:
    """Host bytes per group on one node holding as many of its actors as fit; all groups together is
    the sum."""
    return {g.group: g.host_on_node(gpus_per_node) for g in groups}


def format_plan(groups: list[GroupPlan], machine: Machine) -> list[str]:
    lines = []
    for g in groups:
        where = (f"per GPU of {machine.gpu_memory_gb:g} GB ({machine.gpu_bytes / GIB:.1f} GiB usable)"
                 if g.on_gpu else "per actor, on the host (no GPU in the config)")
        verdict = ("fits" if g.total <= machine.gpu_bytes and not g.problem
                   else "DOES NOT FIT") if g.on_gpu else "host"
        lines.append(f"{g.group}: {g.what}: {g.total / GIB:.1f} GB {where}: {verdict}")
        lines += [f"    {name:<34} {value / GIB:8.2f} GB" for name, value in g.terms.items()]
    per_group = host_per_node(groups, machine.gpus_per_node)
    total = sum(per_group.values())
    limit = machine.host_memory_gb
    verdict = ("not checked (--host-memory-gb)" if limit is None
               else "fits" if total <= limit * GIB else "DOES NOT FIT")
    lines.append(f"host memory per node (every group's actors that fit a node of {machine.gpus_per_node} GPUs, "
                 f"together): {total / GIB:.1f} GB: {verdict}")
    for g in groups:
        terms = ", ".join(f"{name} {value / GIB:.2f}" for name,
                          value in {**g.host, **g.once}.items())
        device = "" if g.on_gpu else f", its device terms {g.total / GIB:.2f}"
        lines.append(f"    {g.group:<8} {g.actors_per_node(machine.gpus_per_node)} x {g.host_per_actor / GIB:.2f} GB "
                     f"= {per_group[g.group] / GIB:6.2f} GB  ({terms}{device})")
    return lines


def check_fits(groups: list[GroupPlan], machine: Machine) -> None:
    for g in groups:
        if g.on_gpu and g.problem:
            raise PlanError(f"{g.group}: {g.problem}")
        if g.on_gpu and g.total > machine.gpu_bytes:
            name, value = g.largest
            raise PlanError(f"{g.group} needs {g.total / GIB:.1f} GB per GPU, over {machine.gpu_memory_gb:g} GB "
                            f"({machine.gpu_bytes / GIB:.1f} GiB usable); its largest term is {name} "
                            f"({value / GIB:.1f} GB): see the memory keys of the '{g.group}' section "
                            f"({g.advice})")
    per_group = host_per_node(groups, machine.gpus_per_node)
    if machine.host_memory_gb is not None and sum(per_group.values()) > machine.host_memory_gb * GIB:
        group = max(per_group, key=per_group.__getitem__)
        raise PlanError(f"the host memory of a node needs {sum(per_group.values()) / GIB:.1f} GB, over "
                        f"{machine.host_memory_gb:g} GB; the largest share is {group}'s "
                        f"({per_group[group] / GIB:.1f} GB): fewer of its actors per node, or a smaller "
                        f"'{group}' section (its device terms count on the host when it has no GPU)")
