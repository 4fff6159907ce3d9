"""Ray: connect or start, and actor groups placed by config, named by role and index.

Every remote call goes through `ActorGroup.call`, which waits with a timeout and turns a dead actor or
a hang into an `ActorGroupError` that names the actor (`rm-trainer-1`) and the cause.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlhf_ray.config import ActorGroupConfig, ConfigError, RayConfig

# Every process and actor: one OpenMP thread (two threads on two busy cores halve throughput).
ACTOR_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


TCMALLOC_PATHS = ("{prefix}/lib/tcmalloc/libtcmalloc_minimal.so.4",  # scripts/setup.sh puts it here
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_tcmalloc = "auto"  # ray.tcmalloc of the last connect()
_actor_log_dir: Path | None = None  # where actors' output goes (connect's log_dir), None: to the driver


def tcmalloc_library(setting: str = "auto") -> str | None:
    """The tcmalloc library to preload into actors, or None. vLLM-CPU and the trainers allocate and free
    large tensors all the time; with tcmalloc the rollout worker made 1.1-1.3x more tokens/s and the
    RLOO learner's update ran 1.08x faster here (benchmarks/, README Performance)."""
    if setting == "off":
        return None
    if setting != "auto":
        if not Path(setting).is_file():
            raise FileNotFoundError(f"ray.tcmalloc: no file {setting!r} (use auto, off or the library's path)")
        return setting
    found = (p.format(prefix=sys.prefix) for p in TCMALLOC_PATHS)
    return next((p for p in found if Path(p).is_file()), None)


def actor_env(threads: int | None) -> dict[str, str]:
    """An actor's environment: ACTOR_ENV with its thread count, and tcmalloc preloaded when found."""
    env = {**ACTOR_ENV, "OMP_NUM_THREADS": str(threads or 1), "MKL_NUM_THREADS": str(threads or 1)}
    library = tcmalloc_library(_tcmalloc)
    if library:
        env["LD_PRELOAD"] = ":".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    return env


class ActorGroupError(RuntimeError):
    """An actor died, raised, or did not answer in time; the message names it."""


class Restarted(RuntimeError):
    """Raised by an actor that notices it was restarted since its last call (its state is gone)."""


def connect(cfg: RayConfig, log_dir: str | Path | None = None) -> None:
    """Join the cluster at cfg.address / $RAY_ADDRESS, or start a local instance that listens on
    127.0.0.1 only (`ray.local_loopback`). A no-op when Ray is already initialised (tests, Ray jobs).

    Unless `ray.log_to_driver`, what actors print (Ray, vLLM, DeepSpeed, transformers) goes to
    `<log_dir>/<actor>.log` instead of this terminal, and Ray's own driver messages below errors are
    not shown: the terminal keeps rlhf-ray's lines."""
    import logging

    import ray

    global _tcmalloc, _actor_log_dir
    tcmalloc_library(cfg.tcmalloc)  # a bad path fails here, naming the key
    _tcmalloc = cfg.tcmalloc
    _actor_log_dir = None if cfg.log_to_driver or log_dir is None else Path(log_dir)
    if ray.is_initialized():
        return
    os.environ.update({k: v for k, v in ACTOR_ENV.items() if k not in os.environ})
    quiet = {} if cfg.log_to_driver else {"logging_level": logging.ERROR, "log_to_driver": False}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # no runtime_env here: a Ray job brings its own (working_dir, env_vars) and Ray refuses to merge
        # a second one into it; the actors get ACTOR_ENV through their own options (ActorGroup)
        ray.init(address=address, namespace=cfg.namespace, **quiet)
        return
    def start() -> None:
        with loopback_instance() if cfg.local_loopback else contextlib.nullcontext():
            ray.init(
                address="local",  # a new instance, even if `ray start` left a cluster address on this machine
                num_cpus=cfg.num_cpus,
                include_dashboard=cfg.include_dashboard,
                dashboard_host=cfg.dashboard_host,
                namespace=cfg.namespace,
                runtime_env={"env_vars": dict(ACTOR_ENV)},
                **quiet,
            )

    start_local_instance(start)


def start_local_instance(start, attempts: int = 2) -> None:
    """Run `start` (a `ray.init` of a new local instance) one at a time on this machine, and once more
    when Ray gave up waiting for its own node: Ray waits a fixed 30 s for its raylet to register, which
    two instances starting at once on two busy cores can miss (seen once in the test suite)."""
    import fcntl
    import tempfile

    import ray

    with open(Path(tempfile.gettempdir()) / "rlhf-ray-local-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for attempt in range(attempts):
            try:
                start()
                return
            except Exception as err:  # Ray raises a bare Exception for this
                if "timed out during startup" not in str(err) or attempt == attempts - 1:
                    raise
                print(f"[rlhf-ray] Ray's local instance did not start in time ({err}); starting it again",
                      file=sys.stderr, flush=True)
                ray.shutdown()


@contextlib.contextmanager
def loopback_instance():
    """Around `ray.init`: the Ray instance it starts is a one-machine instance on 127.0.0.1. Ray never
    takes loopback for a node's address (`resolve_ip_for_localhost`) except in its one-machine mode (the
    macOS/Windows default, switched by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); in that mode the node's
    address is 127.0.0.1 and every Ray server (GCS, raylet, workers, agents, metrics) binds to it, and
    so do the process groups' rendezvous, which bind Ray's node address (utils/dist.py). The processes
    Ray starts keep the mode; this one, and what it starts later, get their setting back."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by Ray's address lookup
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def _with_log_file(actor_cls):
    """`actor_cls` whose actors first send their stdout and stderr (the file descriptors, so native
    libraries and child processes too) to the file named by $RLHF_RAY_ACTOR_LOG, when it is set."""

    class Logged(actor_cls):
        def __init__(self, *args, **kwargs):
            path = os.environ.get("RLHF_RAY_ACTOR_LOG")
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                sys.stdout.flush()
                sys.stderr.flush()
                with open(path, "ab", buffering=0) as log:
                    os.dup2(log.fileno(), 1)
                    os.dup2(log.fileno(), 2)
            super().__init__(*args, **kwargs)

    # the role's class name in Ray's dashboard; the module stays this one, so the class travels by value
    Logged.__name__ = Logged.__qualname__ = actor_cls.__name__
    return Logged


class PlacementError(ConfigError):
    """The actor groups a config asks for cannot be placed on the cluster's nodes; names keys and counts."""


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def bundle_of(cfg: ActorGroupConfig) -> dict[str, float]:
    """What one actor of the group asks for: CPUs, GPUs and its custom resources."""
    return {"CPU": cfg.num_cpus, **({"GPU": cfg.num_gpus} if cfg.num_gpus else {}), **cfg.resources}


def check_placement(groups: dict[str, ActorGroupConfig], nodes: list[dict[str, float]] | None) -> None:
    """Fail at once, naming the config keys, where Ray would wait forever: a placement that no
    assignment of the groups' bundles to `nodes` (each node's total resources) can satisfy. Only what
    must hold is checked (an actor fits some node; STRICT_SPREAD has a node per actor; STRICT_PACK a
    node for all; every group together fits the cluster), so a run that could be placed never fails here.
    `nodes` None (an autoscaling cluster): nothing to check against."""
    if nodes is None:
        return

    def fits(need: dict[str, float], node: dict[str, float]) -> bool:
        return all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items())

    where = f"{len(nodes)} node(s): " + ", ".join(_fmt({k: v for k, v in n.items() if k in ("CPU", "GPU")})
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
            parts = ", ".join(f"{s}.num_workers x {s}.num_{resource.lower()}s = {v:g}" for s, v in asked.items() if v)
            raise PlacementError(f"the actor groups need {sum(asked.values()):g} {resource} at once ({parts}) and the "
                                 f"cluster has {total[resource]:g}; the cluster has {where}")


def cluster_nodes(cfg: RayConfig) -> list[dict[str, float]] | None:
    """Each node's total resources: of the cluster Ray is connected to (joined first when an address is
    set), or of the local instance `connect` would start (one node, `ray.num_cpus` or every core); None
    for an autoscaling cluster (`ray.autoscaling`), whose nodes are not all there yet."""
    import ray

    if cfg.autoscaling:
        return None
    if not ray.is_initialized() and (cfg.address or os.environ.get("RAY_ADDRESS")):
        connect(cfg)
    if ray.is_initialized():
        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    import torch

    gpus = torch.cuda.device_count()
    return [{"CPU": float(cfg.num_cpus or os.cpu_count() or 1), **({"GPU": float(gpus)} if gpus else {})}]


def reserve_bundles(role: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float):
    """A placement group of `bundles`, once Ray has placed it: an error naming the role's keys when it
    cannot within `timeout_s` (a cluster that adds GPU nodes on demand takes minutes: raise the group's
    placement_timeout_s)."""
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


@dataclass(frozen=True)
class Submitted:
    """Calls on some actors of a group that run while the caller does other work (`ActorGroup.submit`)."""

    method: str
    args: dict[int, tuple]
    refs: dict[int, Any]


class ActorGroup:
    """N actors of one class in a placement group, named `<role>-<index>` (`<role>-<tag>-<index>` when
    several groups of one role run at once, e.g. an experiment's side-by-side trainings)."""

    def __init__(self, actor_cls, role: str, cfg: ActorGroupConfig, *args, tag: str | None = None,
                 shared_placement=None, **kwargs):
        """`shared_placement`: a placement group another group's actors share, bundle i holding actor i of
        each (colocation); its owner removes it. None: the group's own, one bundle per actor."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.role, self.max_restarts = role, cfg.max_restarts
        self.owns_placement = shared_placement is None
        self.placement_group = shared_placement or reserve_bundles(role, [bundle_of(cfg)] * cfg.num_workers,
                                                                   cfg.placement_strategy, cfg.placement_timeout_s)
        remote_cls = ray.remote(_with_log_file(actor_cls))
        prefix = f"{role}-{tag}" if tag else role
        self.names = [f"{prefix}-{i}" for i in range(cfg.num_workers)]
        env = actor_env(cfg.num_threads)

        def env_of(name: str) -> dict[str, str]:
            return {**env, "RLHF_RAY_ACTOR_LOG": str(_actor_log_dir / f"{name}.log")} if _actor_log_dir else env

        self.actors = [
            remote_cls.options(
                name=name,
                num_cpus=cfg.num_cpus,
                max_restarts=cfg.max_restarts,
                runtime_env={"env_vars": env_of(name)},
                num_gpus=cfg.num_gpus,
                resources=dict(cfg.resources),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, i),
            ).remote(*args, **kwargs)
            for i, name in enumerate(self.names)
        ]

    def __len__(self) -> int:
        return len(self.actors)

    def placement(self) -> dict[str, str]:
        """The node each actor runs on ({name: node id}), as its placement group placed it."""
        from ray.util import placement_group_table

        nodes = placement_group_table(self.placement_group)["bundles_to_node_id"]
        return {name: nodes[i] for i, name in enumerate(self.names)}

    def call(self, method: str, args_per_actor: Sequence[tuple] | None = None, timeout_s: float = 600,
             **kwargs) -> list[Any]:
        """Call `method` on every actor (with its own args) and wait for all, with a timeout."""

        args_per_actor = args_per_actor or [()] * len(self.actors)
        refs = [getattr(a, method).remote(*args, **kwargs) for a, args in zip(self.actors, args_per_actor)]
        return self.wait(refs, method, timeout_s)

    def setup_data_parallel(self, cfg: dict, total_steps: int, timeout_s: float) -> None:
        """The rank-0 handshake of a data-parallel group (RM trainers, the learner): rank 0 reserves the
        rendezvous on its node, then every rank joins the process group through `setup(cfg, rank,
        world_size, addr, port, total_steps)`."""
        addr, port = self.call_one(0, "reserve_address")
        n = len(self.actors)
        self.call("setup", [(cfg, rank, n, addr, port, total_steps) for rank in range(n)], timeout_s)

    def call_one(self, index: int, method: str, *args, timeout_s: float = 600, **kwargs) -> Any:
        ref = getattr(self.actors[index], method).remote(*args, **kwargs)
        return self.wait([ref], method, timeout_s, names=[self.names[index]])[0]

    def wait(self, refs: list, method: str, timeout_s: float, names: list[str] | None = None) -> list[Any]:
        """Results in order; the first failure raises at once (its peers may be blocked on it)."""
        import ray

        names = names or self.names
        self._await(dict(enumerate(refs)), method, timeout_s, names)
        return ray.get(refs)

    def submit(self, method: str, args_per_actor: dict[int, tuple]) -> "Submitted":
        """Call `method` on the actors named by index, each with its args, and return at once: the calls run
        while the caller does something else; `collect` waits for them."""
        refs = {i: getattr(self.actors[i], method).remote(*args) for i, args in args_per_actor.items()}
        return Submitted(method, dict(args_per_actor), refs)

    def collect(self, submitted: "Submitted", timeout_s: float, on_restart=None) -> dict[int, Any]:
        """Wait for submitted calls; return {index: ObjectRef} of the results (they stay in the object
        store). An actor that died and that Ray restarts (max_restarts), or that reports `Restarted` (it came
        back since the last call), gets `on_restart(index, args)` (e.g. the current weights), which returns
        the arguments to call it with again (None: the same)."""
        method, args_per_actor, refs = submitted.method, dict(submitted.args), dict(submitted.refs)
        retries = dict.fromkeys(refs, self.max_restarts)

        def retry(index: int, err: Exception, deadline: float):
            if retries[index] == 0:
                return None
            retries[index] -= 1
            self._wait_restarted(index, method, deadline)
            print(f"[{self.role}] {self.names[index]} was restarted ({_cause(err)}); retrying its {method}",
                  file=sys.stderr, flush=True)
            if on_restart is not None:  # submitted before the retry: an actor runs one caller's calls in order
                args_per_actor[index] = on_restart(index, args_per_actor[index]) or args_per_actor[index]
            refs[index] = getattr(self.actors[index], method).remote(*args_per_actor[index])
            return refs[index]

        self._await(dict(refs), method, timeout_s, self.names, retry)
        return refs

    def map(self, method: str, args_per_actor: dict[int, tuple], timeout_s: float, on_restart=None) -> dict[int, Any]:
        """`submit`, then `collect`: the calls' result refs once all are done (restarted actors retried)."""
        return self.collect(self.submit(method, args_per_actor), timeout_s, on_restart)

    def _await(self, pending: dict[int, Any], method: str, timeout_s: float, names: list[str], retry=None) -> None:
        """Wait for every ref in `pending` ({position: ref}, `names[position]` says whose). A failure raises
        an ActorGroupError naming the actor, unless the actor was restarted and `retry(position, error,
        deadline)` returns a new ref to wait for instead."""
        import time

        import ray

        deadline = time.monotonic() + timeout_s
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = ", ".join(names[i] for i in pending)
                raise ActorGroupError(f"{late}: {method} did not finish within {timeout_s:.0f} s")
            position = next(i for i, r in pending.items() if r == ready[0])
            try:
                ray.get(ready[0])
                del pending[position]
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                died = isinstance(err, ray.exceptions.RayActorError)
                restarted = died or isinstance(getattr(err, "cause", None), Restarted)
                new_ref = retry(position, err, deadline) if retry is not None and restarted else None
                if new_ref is None:
                    verb = "died during" if died else "failed in"
                    raise ActorGroupError(f"{names[position]} {verb} {method}: {_cause(err)}") from err
                pending[position] = new_ref

    def _wait_restarted(self, index: int, method: str, deadline: float) -> None:
        """Until Ray has the actor back (calls in between fail as 'unavailable'); an error if it is dead
        for good or not back by the deadline."""
        import time

        import ray

        while time.monotonic() < deadline:
            try:
                ray.get(self.actors[index].__ray_ready__.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return
            except ray.exceptions.ActorUnavailableError:
                time.sleep(0.5)
            except ray.exceptions.RayActorError as err:
                raise ActorGroupError(f"{self.names[index]} died during {method} and was not restarted: "
                                      f"{_cause(err)}") from err
            except ray.exceptions.GetTimeoutError:
                break
        raise ActorGroupError(f"{self.names[index]}: not back from a restart before {method}'s deadline")

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.owns_placement:
            remove_placement_group(self.placement_group)


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None)
    if cause is not None and not isinstance(cause, type(err)):
        return f"{type(cause).__name__}: {cause}"
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
