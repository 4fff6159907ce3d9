"""Issue 28 (2), the driver's decision on its own: a dead learner rank restarts the run from the newest
intact checkpoint while `learner.max_restarts` allows (resume on); past it, or before any checkpoint,
or for another actor's failure, the run stops naming the actor and the checkpoint to resume from."""
from pathlib import Path

import pytest

from rlhf_ray.cluster import ActorGroupError
from rlhf_ray.config import load_config
from rlhf_ray.rl import loop


class _Checkpoints:
    def __init__(self, latest):
        self._latest = latest

    def latest(self):
        return self._latest


def _patched(monkeypatch, failures: list, latest=("runs/x/checkpoints/step-000004", {"step": 4})):
    attempts = []

    def run(cfg, plan, trackers, restarts):
        attempts.append(cfg.resume)
        if failures:
            raise failures.pop(0)
        return {"steps": 8}

    monkeypatch.setattr(loop, "plan_run", lambda cfg: type("Plan", (), {"checkpoints": _Checkpoints(latest)}))
    monkeypatch.setattr(loop, "_run", run)
    return attempts


def _died(actor="learner-0"):
    return ActorGroupError(f"{actor} died during update: its process died", actor, died=True)


def test_a_dead_learner_restarts_the_run_from_its_checkpoint_then_stops_past_max_restarts(
        monkeypatch, tmp_path, capsys):
    cfg = load_config(None, [f"output_dir={tmp_path}", "learner.max_restarts=1"])
    attempts = _patched(monkeypatch, [_died()])
    summary = loop.run_rloo(cfg)
    assert attempts == [False, True] and summary["learner_restarts"][0]["step"] == 4
    assert "restarting the run from runs/x/checkpoints/step-000004 (learner restart 1 of 1)" in capsys.readouterr().err
    assert (Path(tmp_path) / "summary.json").exists()

    _patched(monkeypatch, [_died(), _died()])
    with pytest.raises(ActorGroupError, match=r"The run stopped; resume from runs/x/checkpoints/step-000004 "
                                              r"with --resume") as stopped:
        loop.run_rloo(cfg)
    assert stopped.value.actor == "learner-0"


@pytest.mark.parametrize("failure,latest", [(_died("rollout-1"), ("c", {"step": 2})), (_died(), None)])
def test_other_failures_and_a_learner_before_any_checkpoint_stop_the_run(monkeypatch, tmp_path, failure, latest):
    cfg = load_config(None, [f"output_dir={tmp_path}", "learner.max_restarts=3"])
    attempts = _patched(monkeypatch, [failure], latest)
    with pytest.raises(ActorGroupError, match="The run stopped"):
        loop.run_rloo(cfg)
    assert attempts == [False]
