"""The demo as a user runs it (`rlhf-ray demo` = the pipeline with configs/demo.yaml), with small settings:
the gold testbed with tiny-llama's samples (the demo samples SmolLM2), the demo's MiniLM reward models
trained 2 steps each on 2 DeepSpeed ranks, evaluated on the five scenarios, their best-of-n curves, then
RLOO of tiny-llama against the first, with held-out evaluations along the way, on the local Ray instance
the command starts; the report and its numbers are written, and the terminal shows rlhf-ray's own lines
(at least 80%), ending with where the report is."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.tracking import mlflow_client
from rlhf_ray.data.gold import gold_reward
from rlhf_ray.data.schema import load_rankings, read_records
from rlhf_ray.rl.policy_samples import CACHE
from tests.integration.shared import TINY_RLOO, own_fraction

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_demo_with_small_settings(tmp_path, capsys):
    demo = load_config("configs/demo.yaml").pipeline
    first = next(iter(demo.reward_models))
    # one scorer where the demo has two (eval-rm, best-of-n): the scoring pool's sharding is tested apart
    # and one RM trainer where the demo has two (data-parallel training is tested in test_rm_training.py)
    rm = [*demo.rm_overrides, "rm.max_steps=2", "rm.batch_size=4", "rm.num_cpus=0.5", "scorer.num_workers=1",
          "rm.num_workers=1"]
    # the demo's online reward training on one RM-trainer rank (two: test_online_rm.py), a refresh
    # after step 2
    rloo = [*demo.rloo_overrides, *TINY_RLOO, "rloo.steps=2", "rloo.prompts_per_step=2", "rloo.eval_prompts=2",
            "rloo.eval_every=1", "rollout.num_threads=1", "learner.num_threads=1", "scorer.num_workers=1",
            "rm.num_workers=1", "rm.batch_size=4"]
    overrides = [f"output_dir={tmp_path}", f"data.dir={tmp_path / 'testbeds'}", "tensorboard=false",
                 "eval.bootstrap=50", "prepare.sizes.gold_train_prompts=16", "prepare.sizes.gold_valid_prompts=6",
                 "prepare.policy_samples.train_k=3", "prepare.policy_samples.eval_k=4",
                 "prepare.policy_samples.max_new_tokens=8", "scorer.num_workers=1",
                 f"pipeline.rm_overrides=[{', '.join(rm)}]",
                 f"pipeline.rloo_overrides=[{', '.join(rloo)}]", f"pipeline.rloo_against=[{first}]",
                 "logging.wandb.enabled=true", "logging.mlflow.enabled=true"]  # both offline
    done = _demo(overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = done.stderr + done.stdout
    assert own_fraction(shown) >= 0.8, shown
    assert re.search(r"policy samples: (\d+)/\1 prompts \(100%\)", done.stderr)  # sampling shows its progress
    _assert_the_policys_samples_are_in_the_gold_testbed(tmp_path / "testbeds" / "gold", train_k=3, eval_k=4,
                                                         valid_prompts=6)
    _assert_a_second_sampling_reuses_the_cache(load_config("configs/demo.yaml", overrides), capsys)
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("[demo] done in ") and last.endswith(f"; report {tmp_path / 'report.md'}")

    numbers = json.loads((tmp_path / "pipeline.json").read_text())
    assert [r["variant"] for r in numbers["reward_models"]] == list(demo.reward_models)
    for r in numbers["reward_models"]:  # the policy-sample scenario and the best-of-n curve, per reward model
        assert 0 <= r["val1_accuracy"] <= 1 and -1 <= r["policy_tau"] <= 1
        assert [p["n"] for p in r["best_of_n"]] == [1, 2, 4]
        for p in r["best_of_n"]:
            assert {"n", "kl", "gold", "proxy", "gold_ci_low", "gold_ci_high", "proxy_ci_low"} <= set(p)
            assert p["gold_ci_low"] <= p["gold"] <= p["gold_ci_high"]
    assert {"ensemble_mean", "ensemble_wco", "ensemble_uwo", "ensemble_mean+lsc"} <= set(numbers["best_of_n"]["0"])
    [run] = numbers["rloo"]
    assert run["reward_model"] == first and [s["step"] for s in run["steps"]] == [1, 2]
    assert [p["step"] for p in run["held_out_curve"]] == [0, 1, 2]
    gold = run["held_out"]["gold"]
    assert gold["before"] == gold["before"] and gold["gain"] == pytest.approx(gold["after"] - gold["before"])
    # the RLOO run scored with the reward model the pipeline trained for it
    run_cfg = (tmp_path / "rloo" / first / "config.yaml").read_text()
    assert str(tmp_path / "rm" / first / "model") in run_cfg
    assert (tmp_path / "rloo" / first / "logs" / "rollout-0.log").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert f"+ RLOO ({first})" in report and "Seed 0" in report and "Best-of-n" in report
    # the four roles in one job: the reward model refreshed once on the policy's samples, beside the
    # committed frozen-vs-online results
    assert run["online_rm"]["version"] == 1 and run["online_rm"]["refreshes"] == 1
    assert 0 < run["online_rm"]["labels_spent"] <= 24
    assert "## Online reward training" in report and f"| {first} | online | 1 (0) | 1 |" in report
    assert "The committed frozen-vs-online experiment beside it" in report
    for png in ("rloo_curves.png", "held_out_gain.png", "rl_over_optimisation.png", "rm/scenarios.png",
                "bon/best_of_n.png"):
        assert (tmp_path / png).stat().st_size > 1000
    _assert_the_trackers_hold_every_run(tmp_path, list(demo.reward_models), first)
    _assert_a_second_run_reuses_every_finished_stage(overrides, tmp_path, numbers)


def _assert_the_trackers_hold_every_run(out: Path, reward_models: list[str], rloo: str):
    """Issue 29: the demo's runs, logged offline to MLflow (one folder store) and W&B, read back."""
    client = mlflow_client((out / "mlruns").resolve().as_uri())
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("rlhf-ray").experiment_id])}
    assert set(runs) == {out.name, *(f"rm/{m}" for m in reward_models), f"rloo/{rloo}"}
    pipeline = runs.pop(out.name)
    assert all(r.data.tags["mlflow.parentRunId"] == pipeline.info.run_id for r in runs.values())
    assert all(r.info.status == "FINISHED" for r in [pipeline, *runs.values()])
    assert {"plots/held_out_gain.png", "plots/rloo_curves.png"} <= {
        a.path for a in client.list_artifacts(pipeline.info.run_id, "plots")}
    rl = runs[f"rloo/{rloo}"]
    assert rl.data.params["rloo.steps"] == "2"
    assert [m.step for m in client.get_metric_history(rl.info.run_id, "train/kl")] == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(rl.info.run_id, "held_out/gold")) == [0, 1, 2]
    rm_loss = client.get_metric_history(runs[f"rm/{reward_models[0]}"].info.run_id, "train/loss")
    assert [m.step for m in rm_loss] == [1, 2]
    wandb_runs = list(out.glob("**/wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == len(reward_models) + 2  # each stage's run in its folder, and the pipeline's


def _demo(overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_ray.cli", "demo", *overrides], cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, capture_output=True,
                          text=True, timeout=1200)


def _assert_a_second_run_reuses_every_finished_stage(overrides: list[str], out: Path, numbers: dict):
    """The same command again (as after a crash, or with a stage added): every stage finished with the same
    config and inputs, so none runs (no actor, no training line) and the report holds the same numbers."""
    stages = [out / "rm" / rm / result for rm in ("bt", "bsr") for result in ("summary.json", "eval/eval.json")]
    stages += [out / "bon" / "bon.json", out / "rloo" / "bt" / "summary.json"]
    written = {stage: stage.stat().st_mtime_ns for stage in stages}
    again = _demo(overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in stages:
        assert f"reused {stage} (finished with the same config and inputs)" in again.stderr
        assert stage.stat().st_mtime_ns == written[stage]
    assert "[train-rm]" not in again.stderr and "[rloo]" not in again.stderr, again.stderr
    renumbered = json.loads((out / "pipeline.json").read_text())
    for key in ("reward_models", "best_of_n", "rloo"):
        assert renumbered[key] == numbers[key]
    assert numbers["stages_reused"] == 0 and renumbered["stages_reused"] == len(stages)
    assert f"(this invocation; {len(stages)} stages reused from an earlier one)" in (out / "report.md").read_text()


def _assert_the_policys_samples_are_in_the_gold_testbed(gold, train_k: int, eval_k: int, valid_prompts: int):
    """`prepare`'s policy samples (the rollout workers on vLLM-CPU, labelled by the gold reward): train_k per
    training prompt mixed into the train split (demo.yaml's train_share 0.5: as many rule-made groups),
    eval_k per held-out prompt in the `policy` scenario, best first by gold."""
    prompts = {r["prompt_id"]: r for _, _, r in read_records(gold / "prompts.parquet")}
    samples = json.loads((gold / CACHE).read_text())["samples"]
    assert {len(v) for pid, v in samples.items() if prompts[pid]["split"] == "train"} == {train_k}
    assert {len(v) for pid, v in samples.items() if prompts[pid]["split"] == "valid"} == {eval_k}

    scenario = load_rankings(gold / "policy.parquet")
    assert len(scenario) == valid_prompts and all(prompts[g.prompt_id]["split"] == "valid" for g in scenario)
    for g in scenario:
        p = prompts[g.prompt_id]
        assert g.generators == ["policy"] * eval_k and sorted(g.completions) == sorted(samples[g.prompt_id])
        assert g.scores == sorted(g.scores, reverse=True)
        assert g.scores == pytest.approx([gold_reward(p["prompt_type"], p["reference"], c) for c in g.completions],
                                        abs=1e-6)  # stored to 6 decimals

    train = load_rankings(gold / "train.parquet")
    policy_groups = [g for g in train if g.generators[0] == "policy"]
    assert len(policy_groups) > 0 and len(train) - len(policy_groups) == len(policy_groups)
    for g in policy_groups:  # one response per gold value: no tied pair
        assert len(set(g.scores)) == len(g.scores) >= 2


def _assert_a_second_sampling_reuses_the_cache(cfg, capsys):
    """The pipeline's first two stages again, in this process (the testbeds, then the policy's samples):
    the cache's key matches, so no actor starts, and the train split is the same mix of the same groups."""
    from rlhf_ray.data.loaders import prepare
    from rlhf_ray.pipeline import check_stages, sample_policy

    train = Path(cfg.data.dir) / "gold" / "train.parquet"
    before = [(g.prompt_id, g.completions, g.scores) for g in load_rankings(train)]
    capsys.readouterr()
    prepare(cfg)
    sample_policy(cfg, check_stages(cfg)[1])
    assert "policy samples: reusing" in capsys.readouterr().err
    assert [(g.prompt_id, g.completions, g.scores) for g in load_rankings(train)] == before
