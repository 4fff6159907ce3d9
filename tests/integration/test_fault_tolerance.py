"""The chaos soak in CI (issue 28): a 30-step RLOO run with overlapped generation and online reward
training on a local Ray instance with real actors, while a seeded killer sends kill -9 to a rollout
worker, a scorer, the RM trainer and a learner rank (scripts/chaos_soak.py). A standby rollout worker
and scorer take the dead ones' places and their work is retried (without a standby Ray restarts them:
the second test); the RM trainer's group is started again from the served reward model (at its next
refresh or checkpoint); the dead learner makes the driver start the learner group anew from its newest
checkpoint, the other actors running on. The log must hold every step once, every prompt batch the
uninterrupted run draws once and in order, every sample once, every label counted once and every
reward-model version loaded once. And without overlap, a run whose
rollout worker and learner were killed is the uninterrupted run number for number: the same samples,
rewards, KLs and losses (seeded sampling: each prompt's samples from a seed of their own). The
colocated variant (rollout worker i in learner rank i's bundle) loses nothing either, the run
restarted whole after its learner rank's death."""
import json
import re
import sys
from pathlib import Path

import pytest

from rlhf_ray.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import chaos_soak  # noqa: E402

pytestmark = pytest.mark.slow


def _soak_30_steps(tmp_path, testbeds, every: int, roles: tuple, *overrides: str) -> dict:
    """A 30-step soak of the tiny run with `overrides`, each of `roles` killed once (one kill every
    `every` steps): its report, once the run has ended cleanly, passed the soak's checks and
    restarted its learner once."""
    kills = chaos_soak.schedule(30, every, seed=0, roles=roles)
    assert sorted(role for _, role in kills) == sorted(roles)  # each role once
    cfg = load_config(None, [*chaos_soak.TINY, *overrides, f"output_dir={tmp_path}", f"data.dir={testbeds}",
                             "rloo.steps=30", "learner.max_restarts=1"])
    report = chaos_soak.soak(cfg, kills, seed=0)
    assert report["error"] is None, report["error"]
    assert chaos_soak.check(cfg, report) == []
    assert report["summary"]["steps"] == 30 and len(report["summary"]["learner_restarts"]) == 1
    return report


def test_a_seeded_killer_over_thirty_steps_loses_and_repeats_nothing(ray_local, testbeds, tmp_path, capsys):
    """With online reward training on: the RM trainer is a fourth role to kill."""
    # a standby rollout worker and scorer take a dead one's place (Ray's restart of one without a
    # standby: the other two tests)
    report = _soak_30_steps(tmp_path, testbeds, 6, chaos_soak.ONLINE_ROLES, *chaos_soak.ONLINE,
                            "rollout.standby=1", "scorer.standby=1")
    summary = report["summary"]
    # the learner group alone started anew: the rollout workers, scorers and RM trainer kept running
    assert summary["learner_restarts"][0]["learner_alone"] is True
    assert all(k["to_next_row_s"] is not None for k in report["kills"])
    err = capsys.readouterr().err
    assert "(learner restart 1 of 1)" in err  # said, in a line each
    assert re.search(r"\[rollout\] rollout-\d died \(.*\); rollout-standby-0 takes its place", err), err
    assert re.search(r"\[scorer\] scorer-\d died \(.*\); scorer-standby-0 takes its place", err), err
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    recovery = chaos_soak.recovery_by_role(report, rows)["recovery_s"]
    assert set(recovery) == set(chaos_soak.ONLINE_ROLES)
    # the RM trainer's kill cost at most its next refresh, whose labels were kept
    assert [r["step"] for r in rows if "rm_refreshed_to" in r or "rm_refresh_skipped" in r] == \
        list(range(5, 31, 5))
    skipped = [r for r in rows if "rm_refresh_skipped" in r]  # (check() above: labels, versions)
    assert len(skipped) <= 1 and (skipped or "died before the checkpoint; the RM trainers were restarted" in err)
    assert {r["rm_delivery"] for r in rows if "rm_refreshed_to" in r} == {"object_store"}


# what a step computes (not how long it took, or the timing-dependent restarts and staleness)
SAME_RUN_KEYS = ("prompt_ids", "proxy_reward_mean", "proxy_reward_std", "gold_reward_mean", "kl", "loss",
                 "grad_norm", "response_length", "entropy", "mismatch_kl")


def _numbers(out: Path) -> tuple[list[dict], list[str]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [{k: r[k] for k in SAME_RUN_KEYS if k in r} for r in rows if r.get("split", "train") == "train"]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return steps, [(s["step"], s["prompt_id"], s["response"], s["proxy"]) for s in samples]


def test_a_run_whose_rollout_worker_and_learner_were_killed_is_the_uninterrupted_run(ray_local, testbeds,
                                                                                      tmp_path):
    from rlhf_ray.rl.loop import run_rloo

    base = [*chaos_soak.TINY, f"data.dir={testbeds}", "rloo.steps=6", "rloo.overlap=false",
            "rollout.num_workers=1", "scorer.num_workers=1", "learner.max_restarts=1"]
    run_rloo(load_config(None, [*base, f"output_dir={tmp_path / 'whole'}"]))
    killed = load_config(None, [*base, f"output_dir={tmp_path / 'killed'}"])
    report = chaos_soak.soak(killed, [(2, "rollout"), (4, "learner")], seed=0)
    assert report["error"] is None and len(report["summary"]["learner_restarts"]) == 1, report
    assert report["summary"]["learner_restarts"][0]["learner_alone"] is True
    whole_steps, whole_samples = _numbers(tmp_path / "whole")
    killed_steps, killed_samples = _numbers(tmp_path / "killed")
    assert len(whole_steps) == 6 and {"proxy_reward_mean", "kl", "loss"} <= set(whole_steps[0])
    assert killed_steps == whole_steps  # exactly: no tolerance
    assert killed_samples == whole_samples


def test_a_colocated_run_under_the_killer_loses_and_repeats_nothing(ray_local, testbeds, tmp_path, capsys):
    """The second variant: rollout worker i in learner rank i's bundle (2 pairs, weights by shared
    memory, no overlap, the ranks' optimizer states offloaded while their engines generate); a rollout
    worker, a scorer and a learner rank killed over 30 steps. Ray restarts the worker and the scorer
    (their sleep / wake and calls retried); the dead learner rank restarts the run whole from its
    newest checkpoint. Every step generates from the current weights (staleness 0), even the restarted
    worker's."""
    report = _soak_30_steps(tmp_path, testbeds, 8, chaos_soak.ROLES, *chaos_soak.COLOCATED,
                            "learner.zero_stage=1", "learner.offload_states_while_generating=true")
    summary = report["summary"]
    assert summary["learner_restarts"][0]["learner_alone"] is False  # colocated: the run restarts whole
    assert all(summary["placement"][f"learner-{i}"] == summary["placement"][f"rollout-{i}"] for i in (0, 1))
    assert all(k["to_next_row_s"] is not None for k in report["kills"])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness"] for r in rows] == [0] * 30
    err = capsys.readouterr().err
    assert re.search(r"rollout-\d was restarted", err) and re.search(r"scorer-\d was restarted", err), err
    assert "(learner restart 1 of 1)" in err
    log = (tmp_path / "logs" / "rollout-0.log").read_text()
    assert "sleep/wake skipped: vLLM-CPU keeps its weights and KV cache" in log
