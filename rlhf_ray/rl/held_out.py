"""The held-out side of an RLOO run, as the driver uses it: the over-optimisation curve's points,
the monitor (replayed on resume) and its actions, and which policy the run ends with."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhf_ray.config import Config
from rlhf_ray.rl.monitor import HeldOutEval, MonitorAction, OverOptimisationMonitor
from rlhf_ray.rl.policy_eval import held_out_point
from rlhf_ray.utils import storage


def eval_k(cfg: Config) -> int:
    """Samples per held-out prompt: `rloo.eval_k`, else as many as a training prompt gets."""
    return cfg.rloo.eval_k or cfg.rollout.k


def held_out_point_of(cfg: Config, scores: list[dict], held_out: list[dict], step: int) -> dict:
    return held_out_point(scores, len(held_out), eval_k(cfg), step, cfg.rloo.bootstrap,
                          cfg.rloo.ci_level, cfg.seed)


def replayed_monitor(cfg: Config, curve: list[dict]) -> OverOptimisationMonitor:
    """The monitor as it stood after `curve` (a resumed run reads its evaluations again; same
    beta)."""
    monitor = OverOptimisationMonitor(cfg.rloo.monitor, cfg.learner.beta)
    for point in curve:
        monitor.observe(as_eval(point))
    return monitor


def as_eval(point: dict) -> HeldOutEval:
    return HeldOutEval(point["step"], point["kl"], point["gold"], point["proxy"],
                       point["disagreement"])


def act_on(action: MonitorAction, rl, out: Path) -> None:
    """Carry out what the monitor said (raise_kl sets the learner's beta; stop and keep_best end the
    loop) and log it with its reason: on the terminal and in monitor.jsonl."""
    if action.action == "raise_kl":
        rl.set_beta(action.beta)
    then = (f": learner.beta is now {action.beta:g}" if action.action == "raise_kl" else
            {"log": "", "stop": ": stopping",
             "keep_best": ": stopping, keeping the best policy"}[action.action])
    print(f"[rloo] over-optimisation monitor at step {action.step} ({action.signal}): {action.reason}{then}",
          file=sys.stderr, flush=True)
    with (out / "monitor.jsonl").open("a") as f:
        f.write(json.dumps({"step": action.step, "action": action.action, "signal": action.signal,
                            "reason": action.reason, "beta": action.beta}) + "\n")


def keep_best(rl, stored: str, scores: list[dict], step: int) -> None:
    """The policy of the best held-out evaluation so far, with its scores, in policy_best/ of the
    run's storage."""
    best = storage.join(stored, "policy_best")
    rl.save_policy(best)
    storage.write_text(storage.join(best, "held_out.json"),
                       json.dumps({"step": step, "scores": scores}))


def final_policy(rl, stored: str, stopped_at_best: bool, last_scores, eval_final) -> tuple[str,
                                                                                           list[dict] | None]:
    """The run's policy and its held-out scores: policy_best/ with the best evaluation's when
    keep_best stopped the run; else policy/ (written now) with the last step's evaluation, or a
    fresh one."""
    if stopped_at_best:
        best = storage.join(stored, "policy_best")
        return best, json.loads(storage.read_text(storage.join(best, "held_out.json")))["scores"]
    rl.save_policy(storage.join(stored, "policy"))
    scores = last_scores if last_scores is not None or eval_final is None else eval_final()
    return storage.join(stored, "policy"), scores


class HeldOutCurve:
    """The run's held-out evaluations: the initial policy's scores (`before`), the curve so far
    (each point at the evaluated policy's own KL), the monitor reading it (replayed on resume), its
    last action, and the last evaluation's step and scores (the final policy's when it was the last
    step)."""

    def __init__(self, cfg: Config, rl, prompts: list[dict], encode, stored: str, out: Path,
                 before: list[dict] | None, curve: list[dict], baselines: dict | None = None):
        self.cfg, self.rl, self.prompts, self.encode, self.stored, self.out = cfg, rl, prompts, encode, stored, out
        self.before, self.curve = before, curve
        self.baselines = baselines  # LSC / PAR's reference rewards by prompt id, or None
        self.monitor = replayed_monitor(cfg, curve)
        self.action: MonitorAction | None = None
        self.last: tuple[int, list[dict]] | None = None

    def evaluate(self) -> list[dict]:
        """The held-out prompts generated and scored by the current policy (no learning)."""
        return self.rl.evaluate(self.encode(self.prompts), self.prompts, eval_k(self.cfg),
                                self.baselines)

    def due(self, step: int) -> bool:
        every = self.cfg.rloo.eval_every
        return bool(self.prompts and every and step % every == 0)

    def observe(self, step: int) -> None:
        """Evaluate now, add the point, and carry out what the monitor says about it."""
        scores = self.evaluate()
        self.last = (step, scores)
        self.curve.append(held_out_point_of(self.cfg, scores, self.prompts, step))
        is_best, action = self.monitor.observe(as_eval(self.curve[-1]))
        if is_best and self.cfg.rloo.monitor.action == "keep_best":
            keep_best(self.rl, self.stored, scores, step)
        self.action = action  # until the next evaluation
        if action is not None:
            act_on(action, self.rl, self.out)

    @property
    def stops(self) -> bool:
        return self.action is not None and self.action.stops

    @property
    def stopped_at_best(self) -> bool:
        return self.action is not None and self.action.action == "keep_best"

    def final(self, last_step: int) -> tuple[str, list[dict] | None]:
        """The run's policy and its held-out scores (`final_policy`)."""
        last_scores = self.last[1] if self.last is not None and self.last[0] == last_step else None
        return final_policy(self.rl, self.stored, self.stopped_at_best, last_scores,
                            self.evaluate if self.prompts else None)

    def monitor_summary(self) -> dict | None:
        a = self.action
        return {"action": a.action, "step": a.step, "reason": a.reason} if a else None
