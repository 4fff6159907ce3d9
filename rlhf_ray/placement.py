"""Placement: what an actor group asks of the cluster, a check that fails at once (naming the keys)
where Ray would wait forever, and placement groups reserved with a timeout."""
from __future__ import annotations

import os

from rlhf_ray.cluster import ActorGroupError, connect
from rlhf_ray.config import ActorGroupConfig, ConfigError, RayConfig


class PlacementError(ConfigError):
    """The actor groups a config asks for cannot be placed on the cluster's nodes; names keys and
    counts."""


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def bundle_of(cfg: ActorGroupConfig) -> dict[str, float]:
    """What one actor of the group asks for: CPUs, GPUs and its custom resources."""
    return {"CPU": cfg.num_cpus, **({"GPU": cfg.num_gpus} if cfg.num_gpus else {}), **cfg.resources}


def check_placement(groups: dict[str, ActorGroupConfig],
                    nodes: list[dict[str, float]] | None) -> None:
    """Fail at once, naming the config keys, where Ray would wait forever: a placement that no
    assignment of the groups' bundles to `nodes` (each node's total resources) can satisfy. Only
    what must hold is checked (an actor fits some node; STRICT_SPREAD has a node per actor;
    STRICT_PACK a node for all; every group together fits the cluster), so a run that could be
    placed never fails here. `nodes` None (an autoscaling cluster): nothing to check against."""
    if nodes is None:
        return

    def fits(need: dict[str, float], node: dict[str, float]) -> bool:
        return all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items())

    where = f"{len(nodes)} node(s): " + ", ".join(_fmt({k: v for k,
                                                        v in n.items() if k in ("CPU", "GPU")})
                                                  for n in nodes) + " (one that adds nodes: set ray.autoscaling=true)"
    for section, cfg in groups.items():
        bundle, n = bundle_of(cfg), cfg.num_workers
        hosts = sum(fits(bundle, node) for node in nodes)
        if hosts == 0:
            raise PlacementError(f"{section}: one actor needs {_fmt(bundle)} ({section}.num_cpus/num_gpus/resources) "
                                 f"and no node has that; the cluster has {where}")
        if cfg.placement_strategy == "STRICT_SPREAD" and n > hosts:
            raise PlacementError(f"{section}.placement_strategy=STRICT_SPREAD puts each of {section}.num_workers={n} "
                                 f"actors on its own node, but only {hosts} node(s) can hold one of {_fmt(bundle)}; "
                                 f"the cluster has {where}. Lower {section}.num_workers or use SPREAD/PACK")
        whole = {k: v * n for k, v in bundle.items()}
        if cfg.placement_strategy == "STRICT_PACK" and not any(fits(whole, node) for node in nodes):
            raise PlacementError(f"{section}.placement_strategy=STRICT_PACK puts all {section}.num_workers={n} actors "
                                 f"({_fmt(whole)}) on one node and no node has that; the cluster has {where}")
    total = {k: sum(node.get(k, 0.0) for node in nodes) for k in ("CPU", "GPU")}
    for resource in ("CPU", "GPU"):
        asked = {s: c.num_workers * bundle_of(c).get(resource, 0.0) for s, c in groups.items()}
        if sum(asked.values()) > total[resource] + 1e-9:
            parts = ", ".join(f"{s}.num_workers x {s}.num_{resource.lower()}s = {v:g}" for s,
                              v in asked.items() if v)
            raise PlacementError(f"the actor groups need {sum(asked.values()):g} {resource} at once ({parts}) and the "
                                 f"cluster has {total[resource]:g}; the cluster has {where}")


def cluster_nodes(cfg: RayConfig) -> list[dict[str, float]] | None:
    """Each node's total resources: of the cluster Ray is connected to (joined first when an address
    is set), or of the local instance `connect` would start (one node, `ray.num_cpus` or every
    core); None for an autoscaling cluster (`ray.autoscaling`), whose nodes are not all there
    yet."""
    import ray

    if cfg.autoscaling:
        return None
    if not ray.is_initialized() and (cfg.address or os.environ.get("RAY_ADDRESS")):
        connect(cfg)
    if ray.is_initialized():
        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    import torch

    gpus = torch.cuda.device_count()
    return [{"CPU": float(cfg.num_cpus or os.cpu_count() or 1),
             **({"GPU": float(gpus)} if gpus else {})}]


def reserve_bundles(role: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float):
    """A placement group of `bundles`, once Ray has placed it: an error naming the role's keys when
    it cannot within `timeout_s` (a cluster that adds GPU nodes on demand takes minutes: raise the
    group's placement_timeout_s)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise ActorGroupError(
            f"{role}: cannot place {len(bundles)} actors of {bundles[0]} with placement_strategy={strategy} "
            f"within {timeout_s:.0f} s ({role}.placement_timeout_s); the cluster has {ray.available_resources()} "
            f"free. Lower {role} num_workers/num_cpus/num_gpus or change its placement_strategy.")
    return group
