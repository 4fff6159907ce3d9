"""The over-optimisation monitor: reads each held-out evaluation of the policy and says when the
proxy reward has parted from what it stands for, and what to do about it. Pure Python, no Ray.

Signals (`rloo.monitor.signal`):
- `gold`: the held-out gold reward has fallen more than `tolerance` below its best while the
  held-out proxy reward stands above its value at that best: the policy is buying proxy with gold
  (Gao et al.'s over-optimisation). Needs prompts with a gold reward.
- `disagreement`: the reward-model ensemble's members disagree on the policy's held-out samples
  (mean over samples of the members' standard deviation) more than `disagreement_ratio` times as
  much as on the initial policy's: the policy has moved where the reward models were not trained
  (Coste et al.; needs two or more reward models). For runs without a gold reward.
- `auto`: `gold` when the held-out prompts have a gold reward, else `disagreement`.

Actions (`rloo.monitor.action`), each logged with its reason: `log`; `stop` the run; `keep_best`
(stop, and the final policy is the one of the held-out evaluation with the best gold, or the least
disagreement); `raise_kl` (multiply `learner.beta` by `kl_factor` and go on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rlhf_ray.config import MonitorConfig


@dataclass(frozen=True)
class HeldOutEval:
    """One held-out evaluation of the policy, after `step` updates (0: the initial policy)."""

    step: int
    kl: float  # the learner's KL(policy || reference) on that step's samples
    gold: float  # mean over held-out prompts (nan without a gold reward)
    proxy: float
    disagreement: float  # mean over samples of the members' std (nan with one reward model)


@dataclass(frozen=True)
class MonitorAction:
    step: int
    action: str  # log | stop | keep_best | raise_kl
    signal: str
    reason: str
    beta: float | None = None  # learner.beta from now on (raise_kl)

    @property
    def stops(self) -> bool:
        return self.action in ("stop", "keep_best")


class OverOptimisationMonitor:
    def __init__(self, cfg: MonitorConfig, beta: float):
        self.cfg, self.beta = cfg, beta
        self.first: HeldOutEval | None = None
        self.best: HeldOutEval | None = None  # the evaluation whose policy keep_best keeps
        self.strikes = 0  # consecutive evaluations with the signal on

    def signal(self) -> str:
        if self.cfg.signal != "auto":
            return self.cfg.signal
        return "gold" if self.first is not None and not math.isnan(self.first.gold) else "disagreement"

    def _better(self, ev: HeldOutEval) -> bool:
        if self.best is None:
            return True
        if self.signal() == "gold":
            return ev.gold > self.best.gold
        return ev.disagreement < self.best.disagreement

    def _over(self, ev: HeldOutEval) -> str | None:
        """Why `ev` looks over-optimised, or None."""
        if self.signal() == "gold":
            drop = self.best.gold - ev.gold
            if drop > self.cfg.tolerance and ev.proxy > self.best.proxy:
                return (f"held-out gold {ev.gold:.4f} is {drop:.4f} below its best {self.best.gold:.4f} (step "
                        f"{self.best.step}) while the proxy rose {self.best.proxy:.4f} -> {ev.proxy:.4f}")
            return None
        base = self.first.disagreement
        if math.isnan(base) or math.isnan(ev.disagreement):
            raise ValueError("rloo.monitor.signal=disagreement needs two or more reward.models")
        if ev.disagreement > self.cfg.disagreement_ratio * base:
            return (f"the reward models' disagreement on held-out samples is {ev.disagreement:.4f}, "
                    f"{ev.disagreement / base:.2f}x the initial policy's {base:.4f}")
        return None

    def observe(self, ev: HeldOutEval) -> tuple[bool, MonitorAction | None]:
        """Read one evaluation: (is it the best so far, the action to take or None)."""
        if self.first is None:
            self.first = ev
        is_best = self._better(ev)
        if is_best:
            self.best = ev
        reason = None if is_best or self.cfg.action == "off" else self._over(ev)
        self.strikes = self.strikes + 1 if reason else 0
        if reason is None or self.strikes < self.cfg.patience:
            return is_best, None
        self.strikes = 0
        if self.cfg.action == "raise_kl":
            self.beta *= self.cfg.kl_factor
            return is_best, MonitorAction(ev.step, "raise_kl", self.signal(), reason, self.beta)
        return is_best, MonitorAction(ev.step, self.cfg.action, self.signal(), reason)
