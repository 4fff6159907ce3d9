"""Standby actors (issue 28) on a local Ray instance, with an actor that holds no model: a group keeps
`standby` actors started beside its own; when one of its actors dies mid-call, the first standby takes
its place at once (the caller's `on_restart` first, as a rollout worker gets the current weights) and
the call runs again there; the dead one, which Ray restarts, is then the standby. Without a standby the
call waits for Ray's restart, as before."""
import os
import time

import pytest

from rlhf_ray.actor_group import ActorGroup
from rlhf_ray.config import ActorGroupConfig

pytestmark = pytest.mark.slow


class Worker:
    """A stateless role's actor: `state` stands for what a restarted one must be given again."""

    def __init__(self):
        self.state = 0

    def pid(self) -> int:
        return os.getpid()

    def give(self, state: int) -> int:
        self.state = state
        return state

    def work(self, x: int, seconds: float) -> tuple[int, int, int]:
        time.sleep(seconds)
        return x, os.getpid(), self.state


def _group(standby: int) -> ActorGroup:
    cfg = ActorGroupConfig(num_workers=2, num_cpus=0.25, max_restarts=1, standby=standby)
    return ActorGroup(Worker, "worker", cfg, tag=f"standby{standby}")


def test_a_standby_takes_a_dead_actors_place_and_call_and_the_dead_one_becomes_the_standby(ray_local, capsys):
    import ray

    group = _group(standby=1)
    try:
        first = group.call("pid")
        [(spare_name, spare)] = group.standby
        spare_pid = ray.get(spare.pid.remote(), timeout=60)
        assert spare_name == "worker-standby1-standby-0" and spare_pid not in first
        group.call("give", [(7,), (7,)])
        given = []

        def on_restart(index: int, args: tuple):
            given.append((index, group.names[index]))
            group.actors[index].give.remote(7)  # before the retried call: an actor runs calls in order

        submitted = group.submit("work", {0: (0, 0.0), 1: (1, 3.0)})
        queued = group.submit("work", {1: (2, 0.0)})  # behind it, on the same actor
        time.sleep(1.0)
        ray.kill(group.actors[1], no_restart=False)  # Ray restarts it (max_restarts)
        refs = group.collect(submitted, 60, on_restart=on_restart)
        assert ray.get(refs[0]) == (0, first[0], 7)
        assert ray.get(refs[1]) == (1, spare_pid, 7)  # the standby ran the call, given the state first
        # the call queued on the dead actor goes to the standby too, with no standby or restart more
        assert ray.get(group.collect(queued, 60, on_restart=on_restart)[1]) == (2, spare_pid, 7)
        assert given == [(1, spare_name), (1, spare_name)]
        err = capsys.readouterr().err
        assert "[worker] worker-standby1-1 died (" in err and f"); {spare_name} takes its place" in err
        assert f"worker-standby1-1's work goes to {spare_name}, which took its place" in err
        assert group.names == ["worker-standby1-0", spare_name]
        assert set(group.placement()) == set(group.names)
        # the dead one, back from Ray's restart (a new process), waits as the standby
        [(name, back)] = group.standby
        assert name == "worker-standby1-1" and ray.get(back.pid.remote(), timeout=60) not in first
    finally:
        group.shutdown()
    with pytest.raises(ValueError):  # every actor gone, the standby too
        ray.get_actor("worker-standby1-1")


def test_without_a_standby_the_call_waits_for_rays_restart(ray_local):
    import ray

    group = _group(standby=0)
    try:
        first = group.call("pid")
        submitted = group.submit("work", {0: (0, 3.0)})
        time.sleep(1.0)
        ray.kill(group.actors[0], no_restart=False)
        refs = group.collect(submitted, 60)
        x, pid, state = ray.get(refs[0])
        assert (x, state) == (0, 0) and pid != first[0]  # the same actor, a new process, state anew
        assert group.names == ["worker-standby0-0", "worker-standby0-1"] and group.standby == []
    finally:
        group.shutdown()


def _wait_gone(pid: int, timeout_s: float = 60) -> None:
    """Until process `pid` has exited (`ray.kill` returns before it has)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs {timeout_s:.0f} s after its actor was killed")


def test_an_actor_killed_while_idle_gets_its_next_call_once_ray_has_restarted_it(ray_local):
    """Issue 28's first probe: a colocated rollout worker killed between calls ended the run at its
    next sleep / wake (`rollout-1 died during wake_up`). Those go through `map`, as
    `Colocated._engines` sends them: the call to an actor whose process is gone lands on the
    process Ray restarts (retried if it reached the dead one), and no error reaches the caller (the
    colocated chaos soak, test_fault_tolerance.py, runs the whole loop)."""
    import ray

    group = _group(standby=0)
    try:
        first = group.call("pid")
        ray.kill(group.actors[1], no_restart=False)  # idle: no call in flight
        _wait_gone(first[1])
        refs = group.map("give", {0: (7,), 1: (7,)}, 60)
        assert ray.get([refs[0], refs[1]]) == [7, 7]
        after = group.call("work", [(0, 0.0), (1, 0.0)])
        assert [state for _, _, state in after] == [7, 7]  # the restarted process got the call
        assert after[0][1] == first[0] and after[1][1] != first[1]
    finally:
        group.shutdown()
