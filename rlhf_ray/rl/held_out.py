"""The held-out side of an RLOO run, as the driver uses it: the over-optimisation curve's points, the
monitor (replayed on resume) and its actions, and which policy the run ends with."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhf_ray.config import Config
from rlhf_ray.rl.monitor import HeldOutEval, MonitorAction, OverOptimisationMonitor
from rlhf_ray.rl.policy_eval import held_out_point
from rlhf_ray.utils import storage


def held_out_point_of(cfg: Config, scores: list[dict], held_out: list[dict], step: int) -> dict:
    return held_out_point(scores, len(held_out), cfg.rollout.k, step, cfg.eval.bootstrap, cfg.eval.ci_level,
                          cfg.seed)


def replayed_monitor(cfg: Config, curve: list[dict]) -> OverOptimisationMonitor:
    """The monitor as it stood after `curve` (a resumed run reads its evaluations again; same beta)."""
    monitor = OverOptimisationMonitor(cfg.rloo.monitor, cfg.learner.beta)
    for point in curve:
        monitor.observe(as_eval(point))
    return monitor


def as_eval(point: dict) -> HeldOutEval:
    return HeldOutEval(point["step"], point["kl"], point["gold"], point["proxy"], point["disagreement"])


def act_on(action: MonitorAction, rl, out: Path) -> None:
    """Carry out what the monitor said (raise_kl sets the learner's beta; stop and keep_best end the
    loop) and log it with its reason: on the terminal and in monitor.jsonl."""
    if action.action == "raise_kl":
        rl.set_beta(action.beta)
    then = (f": learner.beta is now {action.beta:g}" if action.action == "raise_kl" else
            {"log": "", "stop": ": stopping", "keep_best": ": stopping, keeping the best policy"}[action.action])
    print(f"[rloo] over-optimisation monitor at step {action.step} ({action.signal}): {action.reason}{then}",
          file=sys.stderr, flush=True)
    with (out / "monitor.jsonl").open("a") as f:
        f.write(json.dumps({"step": action.step, "action": action.action, "signal": action.signal,
                            "reason": action.reason, "beta": action.beta}) + "\n")


def keep_best(rl, stored: str, scores: list[dict], step: int) -> None:
    """The policy of the best held-out evaluation so far, with its scores, in policy_best/ of the run's
    storage."""
    best = storage.join(stored, "policy_best")
    rl.save_policy(best)
    storage.write_text(storage.join(best, "held_out.json"), json.dumps({"step": step, "scores": scores}))


def final_policy(rl, stored: str, stopped_at_best: bool, last_scores, eval_final) -> tuple[str, list[dict] | None]:
    """The run's policy and its held-out scores: policy_best/ with the best evaluation's when keep_best
    stopped the run; else policy/ (written now) with the last step's evaluation, or a fresh one."""
    if stopped_at_best:
        best = storage.join(stored, "policy_best")
        return best, json.loads(storage.read_text(storage.join(best, "held_out.json")))["scores"]
    rl.save_policy(storage.join(stored, "policy"))
    scores = last_scores if last_scores is not None or eval_final is None else eval_final()
    return storage.join(stored, "policy"), scores
