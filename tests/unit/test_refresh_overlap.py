"""`online_rm.max_staleness`: when a refresh running beside the steps is loaded by the scorers (the
driver's schedule, `rl/online/driver.py` `RefreshDriver`), with the Ray calls stood in for: the trainers
are a function that takes a while, loading a version records which step's end it happened after."""
import threading
import time

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rl.online import driver
from rlhf_ray.rl.online.refresh import Refresh


class Trainers:
    """online.refresh: version n after `seconds`; `release` lets a test hold one back."""

    def __init__(self, seconds: float = 0.0):
        self.version, self.seconds, self.release = 0, seconds, threading.Event()
        self.release.set()

    def refresh(self, step, groups, tag=None):
        self.release.wait(5)
        time.sleep(self.seconds)
        self.version += 1
        return Refresh(self.version, f"v{self.version}", 4, 4 * self.version, "", 8, {}, self.seconds)


def _run(monkeypatch, steps: int, trainers: Trainers, last_settles=True, **online) -> list[dict]:
    """The driver's calls of a run of `steps` steps; each step's metrics, plus the version the
    scorers held when each step was scored."""
    loaded = {"version": 0}

    def load(rl, online, done, result, groups, gold, tag=""):
        loaded["version"] = done.version
        return {"rm_refreshed_to": done.version, "labels_spent": done.spent, "rm_refresh_s": 1.0}

    monkeypatch.setattr(driver, "load_refresh", load)
    monkeypatch.setattr(driver, "groups_and_gold", lambda cfg, result: ([], []))
    cfg = load_config(None, ["online_rm.enabled=true", "reward.models=[tiny-llama]",
                             *[f"online_rm.{k}={v}" for k, v in online.items()]])
    refreshes, rows = driver.RefreshDriver(cfg, None, trainers), []
    try:
        for step in range(1, steps + 1):
            scored_by = loaded["version"]
            rows.append({"scored_by": scored_by,
                         **refreshes.after_step(step, None, last_settles and step == steps)})
    finally:
        refreshes.shutdown()
    return rows


def test_without_staleness_each_refresh_is_loaded_before_the_next_step(monkeypatch):
    rows = _run(monkeypatch, 3, Trainers(), every=1, max_staleness=0)
    assert [r["scored_by"] for r in rows] == [0, 1, 2]
    assert [r["rm_refreshed_to"] for r in rows] == [1, 2, 3] and all("rm_wait_s" in r for r in rows)


def test_with_staleness_1_the_next_step_is_scored_by_the_previous_version_and_the_end_waits(monkeypatch):
    trainers = Trainers()
    trainers.release.clear()  # the first refresh cannot finish before step 2 is scored
    threading.Timer(0.3, trainers.release.set).start()
    rows = _run(monkeypatch, 3, trainers, every=1, max_staleness=1)
    assert [r["scored_by"] for r in rows] == [0, 0, 1]  # one step behind, never more
    assert "rm_refreshed_to" not in rows[0] and rows[1]["rm_refreshed_to"] == 1
    # the last step waits for the refresh it was waiting on and the one it started: both loaded, their
    # costs added up
    assert rows[2]["rm_refreshed_to"] == 3 and rows[2]["rm_refreshes_loaded"] == 2
    assert rows[2]["labels_spent"] == 8 and rows[2]["rm_refresh_s"] == 2.0


@pytest.mark.parametrize("every, expected", [(2, [0, 0, 0, 1, 1, 2]), (3, [0, 0, 0, 0, 1, 1])])
def test_a_refresh_every_few_steps_is_loaded_within_the_bound(monkeypatch, every, expected):
    rows = _run(monkeypatch, 6, Trainers(0.05), every=every, max_staleness=1)
    assert [r["scored_by"] for r in rows][:len(expected)] == expected


def test_the_upfront_schedule_starts_no_refresh_after_a_step(monkeypatch):
    rows = _run(monkeypatch, 3, Trainers(), every=1, schedule="upfront")
    assert [r["scored_by"] for r in rows] == [0, 0, 0] and not any("rm_refreshed_to" in r for r in rows)
