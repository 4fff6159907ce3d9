"""The over-optimisation monitor on a run built to over-optimise: a 3-response bandit whose proxy
prefers a response the gold reward dislikes, trained by exact policy-gradient ascent on
E[proxy] - beta KL(pi || pi_0). Gold first rises (mass moves to the response both like), then falls."""
import math

import numpy as np
import pytest

from rlhf_ray.config import MonitorConfig, load_config, ConfigError
from rlhf_ray.rl.monitor import HeldOutEval, OverOptimisationMonitor

PROXY = np.array([0.0, 0.6, 1.0])
GOLD = np.array([0.0, 1.0, -0.5])
THETA0 = np.array([2.0, 0.0, -1.0])


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def run(steps=60, lr=1.5, monitor=None, beta=0.0, disagreement=False):
    """Exact gradient ascent; one held-out evaluation per step. Returns the evaluations, the actions, the
    best evaluation the monitor kept."""
    theta, pi0, evals, actions = THETA0.copy(), softmax(THETA0), [], []
    for step in range(steps + 1):
        pi = softmax(theta)
        kl = float((pi * np.log(pi / pi0)).sum())
        spread = float(pi @ np.array([0.1, 0.1, 0.6])) if disagreement else math.nan  # members part on response 3
        ev = HeldOutEval(step, kl, float(pi @ GOLD), float(pi @ PROXY), spread)
        evals.append(ev)
        if monitor is not None:
            _, action = monitor.observe(ev)
            if action is not None:
                actions.append(action)
                if action.stops:
                    break
                beta = action.beta
        reward = PROXY - beta * (np.log(pi / pi0) + 1)  # d/dpi of E[proxy] - beta KL
        theta = theta + lr * pi * (reward - pi @ reward)  # softmax policy gradient
    return evals, actions, monitor.best if monitor else None


def test_the_toy_run_over_optimises():
    evals, _, _ = run()
    golds = [e.gold for e in evals]
    peak = int(np.argmax(golds))
    assert 0 < peak < len(golds) - 1 and golds[-1] < golds[peak] - 0.3  # gold rises, then falls
    assert evals[-1].proxy > evals[peak].proxy  # while the proxy keeps rising


def test_stop_stops_soon_after_gold_turns_down_and_says_why():
    evals, actions, best = run(monitor=OverOptimisationMonitor(MonitorConfig(action="stop", tolerance=0.05), 0.0))
    golds = [e.gold for e in run()[0]]
    assert len(actions) == 1 and actions[0].action == "stop" and actions[0].signal == "gold"
    assert "below its best" in actions[0].reason and "proxy rose" in actions[0].reason
    assert best.step == int(np.argmax(golds))  # the best evaluation is the gold peak
    assert evals[-1].step > best.step and evals[-1].gold < best.gold - 0.05  # stopped at the first sign
    assert evals[-2].gold >= best.gold - 0.05


def test_off_never_acts_but_still_knows_the_best():
    evals, actions, best = run(monitor=OverOptimisationMonitor(MonitorConfig(), 0.0))
    assert MonitorConfig().action == "off" and actions == [] and len(evals) == 61
    assert best.gold == max(e.gold for e in evals)


def test_patience_waits_for_consecutive_evaluations():
    _, quick, _ = run(monitor=OverOptimisationMonitor(MonitorConfig(action="stop", tolerance=0.05), 0.0))
    _, patient, _ = run(monitor=OverOptimisationMonitor(MonitorConfig(action="stop", tolerance=0.05, patience=3), 0.0))
    assert patient[0].step == quick[0].step + 2


def test_raise_kl_raises_beta_and_keeps_more_gold_than_no_monitor():
    plain, _, _ = run()
    evals, actions, _ = run(monitor=OverOptimisationMonitor(MonitorConfig(action="raise_kl", tolerance=0.05,
                                                                          kl_factor=4.0), 0.05), beta=0.05)
    assert actions and all(a.action == "raise_kl" for a in actions)
    assert actions[0].beta == pytest.approx(0.2) and [a.beta for a in actions] == sorted(a.beta for a in actions)
    assert evals[-1].gold > plain[-1].gold + 0.2 and evals[-1].kl < plain[-1].kl


def test_disagreement_signal_without_gold():
    _, actions, _ = run(monitor=OverOptimisationMonitor(MonitorConfig(action="keep_best"), 0.0), disagreement=True)
    assert actions[0].signal == "gold"  # these evaluations carry gold: auto picks it
    evals, _, _ = run(disagreement=True)
    gold_free = [HeldOutEval(e.step, e.kl, math.nan, e.proxy, e.disagreement) for e in evals]
    monitor = OverOptimisationMonitor(MonitorConfig(action="keep_best", disagreement_ratio=2.0), 0.0)
    for ev in gold_free:
        _, action = monitor.observe(ev)
        if action:
            break
    assert action.signal == "disagreement" and action.action == "keep_best"
    assert ev.disagreement > 2 * gold_free[0].disagreement and monitor.best.step == 0


def test_the_config_refuses_a_monitor_with_nothing_to_read():
    with pytest.raises(ConfigError, match="set rloo.eval_prompts and rloo.eval_every"):
        load_config(None, ["rloo.monitor.action=stop"])
    with pytest.raises(ConfigError, match="reward.models needs two or more"):
        load_config(None, ["rloo.monitor.action=stop", "rloo.monitor.signal=disagreement", "rloo.eval_prompts=4",
                           "rloo.eval_every=2"])
