"""Actor groups placed by config, named by role and index.

Every remote call goes through `ActorGroup.call`, which waits with a timeout and turns a dead actor
or a hang into an `ActorGroupError` that names the actor (`rm-trainer-1`) and the cause. A group of
a stateless role may keep standby actors (`standby`): started with it, each takes a dead actor's place
at once, and the dead one, once Ray has restarted it, is a standby in its turn.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

from rlhf_ray.cluster import ActorGroupError, ActorSetup, Restarted, with_log_file
from rlhf_ray.config import ActorGroupConfig
from rlhf_ray.placement import bundle_of, reserve_bundles


@dataclass(frozen=True)
class Submitted:
    """Calls on some actors of a group that run while the caller does other work
    (`ActorGroup.submit`)."""

    method: str
    args: dict[int, tuple]
    refs: dict[int, Any]
    sent_to: dict[int, str]  # the name of the actor each call went to


class ActorGroup:
    """N actors of one class in a placement group, named `<role>-<index>` (`<role>-<tag>-<index>`
    when several groups of one role run at once, e.g. an experiment's side-by-side trainings)."""

    def __init__(self, actor_cls, role: str, cfg: ActorGroupConfig, *args, tag: str | None = None,
                 shared_placement=None, setup: ActorSetup | None = None, **kwargs):
        """`shared_placement`: a placement group another group's actors share, bundle i holding
        actor i of each (colocation); its owner removes it. None: the group's own, one bundle per
        actor. `setup`: the run's, from `connect` (None: output to the driver, tcmalloc found
        automatically)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.role, self.max_restarts = role, cfg.max_restarts
        self.owns_placement = shared_placement is None
        # a shared placement has no bundle for a standby (validated in the config)
        standby = cfg.standby if self.owns_placement else 0
        self.placement_group = shared_placement or reserve_bundles(
            role, [bundle_of(cfg)] * (cfg.num_workers + standby), cfg.placement_strategy,
            cfg.placement_timeout_s)
        remote_cls = ray.remote(with_log_file(actor_cls))
        prefix = f"{role}-{tag}" if tag else role
        setup = setup or ActorSetup()

        def start(name: str, bundle: int):
            return remote_cls.options(
                name=name,
                num_cpus=cfg.num_cpus,
                max_restarts=cfg.max_restarts,
                runtime_env={"env_vars": setup.env(name, cfg.num_threads)},
                num_gpus=cfg.num_gpus,
                resources=dict(cfg.resources),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, bundle),
            ).remote(*args, **kwargs)

        # the actors in service, by position (a standby that took a place keeps its own name)
        self.names = [f"{prefix}-{i}" for i in range(cfg.num_workers)]
        self.actors = [start(name, i) for i, name in enumerate(self.names)]
        spares = [f"{prefix}-standby-{j}" for j in range(standby)]
        self.standby = [(name, start(name, cfg.num_workers + j)) for j, name in enumerate(spares)]
        self.bundle = {name: i for i, name in enumerate([*self.names, *spares])}

    def __len__(self) -> int:
        return len(self.actors)

    def placement(self) -> dict[str, str]:
        """The node each actor runs on ({name: node id}), as its placement group placed it."""
        from ray.util import placement_group_table

        nodes = placement_group_table(self.placement_group)["bundles_to_node_id"]
        return {name: nodes[self.bundle[name]] for name in self.names}

    def call(self, method: str, args_per_actor: Sequence[tuple] | None = None,
             timeout_s: float = 600, **kwargs) -> list[Any]:
        """Call `method` on every actor (with its own args) and wait for all, with a timeout."""

        args_per_actor = args_per_actor or [()] * len(self.actors)
        refs = [getattr(a, method).remote(*args, **kwargs) for a,
                args in zip(self.actors, args_per_actor)]
        return self.wait(refs, method, timeout_s)

    def setup_data_parallel(self, spec, total_steps: int, timeout_s: float) -> None:
        """The rank-0 handshake of a data-parallel group (RM trainers, the learner): rank 0 reserves
        the rendezvous on its node, then every rank joins the process group through `setup(spec,
        rank, world_size, addr, port, total_steps)`."""
        addr, port = self.call_one(0, "reserve_address")
        n = len(self.actors)
        self.call("setup", [(spec, rank, n, addr, port, total_steps) for rank in range(n)],
                  timeout_s)

    def call_one(self, index: int, method: str, *args, timeout_s: float = 600, **kwargs) -> Any:
        ref = getattr(self.actors[index], method).remote(*args, **kwargs)
        return self.wait([ref], method, timeout_s, names=[self.names[index]])[0]

    def wait(self, refs: list, method: str, timeout_s: float,
             names: list[str] | None = None) -> list[Any]:
        """Results in order; the first failure raises at once (its peers may be blocked on it)."""
        import ray

        names = names or self.names
        self._await(dict(enumerate(refs)), method, timeout_s, names)
        return ray.get(refs)

    def submit(self, method: str, args_per_actor: dict[int, tuple]) -> "Submitted":
        """Call `method` on the actors named by index, each with its args, and return at once: the
        calls run while the caller does something else; `collect` waits for them."""
        refs = {i: getattr(self.actors[i], method).remote(*args) for i,
                args in args_per_actor.items()}
        return Submitted(method, dict(args_per_actor), refs,
                         {i: self.names[i] for i in args_per_actor})

    def collect(self, submitted: "Submitted", timeout_s: float, on_restart=None) -> dict[int, Any]:
        """Wait for submitted calls; return {index: ObjectRef} of the results (they stay in the
        object store). An actor that died and that Ray restarts (max_restarts), or that reports
        `Restarted` (it came back since the last call), gets `on_restart(index, args)` (e.g. the
        current weights), which returns the arguments to call it with again (None: the same)."""
        method, args_per_actor, refs = submitted.method, dict(submitted.args), dict(submitted.refs)
        retries, sent_to = dict.fromkeys(refs, self.max_restarts), dict(submitted.sent_to)

        def retry(index: int, err: Exception, deadline: float):
            import ray

            if sent_to[index] != self.names[index]:  # a standby took its place since the call
                print(f"[{self.role}] {sent_to[index]}'s {method} goes to {self.names[index]}, "
                      f"which took its place", file=sys.stderr, flush=True)
            else:
                if retries[index] == 0:
                    return None
                retries[index] -= 1
                spare = (self._ready_standby() if isinstance(err, ray.exceptions.RayActorError)
                         else None)
                if spare is not None:
                    self._take_standby(index, spare, err, method)
                else:
                    self._wait_restarted(index, method, deadline)
                    print(f"[{self.role}] {self.names[index]} was restarted ({_cause(err)}); "
                          f"retrying its {method}", file=sys.stderr, flush=True)
            sent_to[index] = self.names[index]
            # submitted before the retry: an actor runs one caller's calls in order
            if on_restart is not None:
                args_per_actor[index] = on_restart(index,
                                                   args_per_actor[index]) or args_per_actor[index]
            refs[index] = getattr(self.actors[index], method).remote(*args_per_actor[index])
            return refs[index]

        self._await(dict(refs), method, timeout_s, self.names, retry)
        return refs

    def map(self, method: str, args_per_actor: dict[int, tuple], timeout_s: float,
            on_restart=None) -> dict[int, Any]:
        """`submit`, then `collect`: the calls' result refs once all are done (restarted actors
        retried)."""
        return self.collect(self.submit(method, args_per_actor), timeout_s, on_restart)

    def _await(self, pending: dict[int, Any], method: str, timeout_s: float, names: list[str],
               retry=None) -> None:
        """Wait for every ref in `pending` ({position: ref}, `names[position]` says whose). A
        failure raises an ActorGroupError naming the actor, unless the actor was restarted and
        `retry(position, error, deadline)` returns a new ref to wait for instead."""
        import time

        import ray

        deadline = time.monotonic() + timeout_s
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=1,
                                timeout=max(0.0, deadline - time.monotonic()))
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
                new_ref = retry(position, err,
                                deadline) if retry is not None and restarted else None
                if new_ref is None:
                    verb = "died during" if died else "failed in"
                    raise ActorGroupError(f"{names[position]} {verb} {method}: {_cause(err)}",
                                          names[position], died) from err
                pending[position] = new_ref

    def _ready_standby(self) -> int | None:
        """The place in `standby` of the first one that is up (not one Ray is still restarting or
        starting); None: none is."""
        import ray

        for j, (_, actor) in enumerate(self.standby):
            ready, _ = ray.wait([actor.__ray_ready__.remote()], timeout=0.5)
            if not ready:
                continue
            try:
                ray.get(ready[0])
                return j
            except ray.exceptions.RayActorError:  # restarting
                continue
        return None

    def _take_standby(self, index: int, spare: int, err: Exception, method: str) -> None:
        """Standby `spare` takes the dead actor's place (the caller's `on_restart` then gives it the
        state the others hold); the dead one, which Ray restarts, waits at the end of the standby
        list."""
        name, actor = self.standby.pop(spare)
        self.standby.append((self.names[index], self.actors[index]))
        print(f"[{self.role}] {self.names[index]} died ({_cause(err)}); {name} takes its place and "
              f"its {method}", file=sys.stderr, flush=True)
        self.names[index], self.actors[index] = name, actor

    def _wait_restarted(self, index: int, method: str, deadline: float) -> None:
        """Until Ray has the actor back (calls in between fail as 'unavailable'); an error if it is
        dead for good or not back by the deadline."""
        import time

        import ray

        while time.monotonic() < deadline:
            try:
                ray.get(self.actors[index].__ray_ready__.remote(),
                        timeout=max(0.1, deadline - time.monotonic()))
                return
            except ray.exceptions.ActorUnavailableError:
                time.sleep(0.5)
            except ray.exceptions.RayActorError as err:
                raise ActorGroupError(f"{self.names[index]} died during {method} and was not restarted: "
                                      f"{_cause(err)}", self.names[index], True) from err
            except ray.exceptions.GetTimeoutError:
                break
        raise ActorGroupError(f"{self.names[index]}: not back from a restart before {method}'s deadline")

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in [*self.actors, *(actor for _, actor in self.standby)]:
            ray.kill(actor, no_restart=True)
        if self.owns_placement:
            remove_placement_group(self.placement_group)


CAUSE_CHARS = 120  # of an actor's error in the one line the driver prints; the rest is in its log


def _cause(err: Exception) -> str:
    """What went wrong in an actor, in a few words: the exception it raised, or for a dead process
    Ray's exit detail (its ~800-character message lists the actor's ids and common causes)."""
    cause = getattr(err, "cause", None)
    if cause is not None and not isinstance(cause, type(err)):
        text = f"{type(cause).__name__}: {cause}"
    else:
        full = " ".join(str(err).split())
        detail = full.partition("Worker exit detail: ")[2].partition(" Some common causes")[0]
        lines = str(err).strip().splitlines()
        text = (f"its process died ({detail.rstrip('. ')})" if detail
                else lines[-1] if lines else type(err).__name__)
    text = " ".join(text.split())
    return text if len(text) <= CAUSE_CHARS else text[:CAUSE_CHARS - 3] + "..."
