"""eval-rm end to end on a local Ray instance with scorer actors, on both testbeds, and a small
experiment (two variants trained side by side) that writes its report."""
import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.tracking import mlflow_client
from rlhf_ray.rm.evaluate import evaluate_reward_model
from rlhf_ray.rm.train import train_reward_model

pytestmark = pytest.mark.slow


def test_eval_rm_on_gold_writes_every_scenario(ray_local, testbeds, tmp_path):
    """MiniLM-L6, the default backbone (a decoder reward model, tiny-llama, is evaluated on the collapse
    testbed below, and MiniLM's again in the demo's pipeline test)."""
    model = "minilm-l6"
    cfg = load_config(None, [f"data.dir={testbeds}", "data.testbed=gold", f"output_dir={tmp_path}",
                             "eval.bootstrap=50", "scorer.num_workers=2", "model.max_length=128"])
    result = evaluate_reward_model(cfg, model)
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    for split in ("val1", "val2", "val3", "val4"):
        entry = saved[split]
        assert 0.0 <= entry["accuracy"]["value"] <= 1.0
        assert entry["accuracy"]["ci_low"] <= entry["accuracy"]["value"] <= entry["accuracy"]["ci_high"]
        assert entry["effective_rank"] > 1 and entry["h_norm_mean"] > 0 and entry["h_diff_norm_mean"] >= 0
        if split != "val1":
            assert -1.0 <= entry["kendall_tau"]["value"] <= 1.0
    assert 0.3 < saved["w_norm"] < 3.0
    for png in ("h_norms.png", "scenarios.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 1000
    assert result["plots"]

    # the pool's accuracy and ||h|| on val1 are what one scorer in this process gives, pair by pair
    from rlhf_ray.data.schema import load_rankings
    from rlhf_ray.scoring.scorer import RewardScorer

    scorer, correct, pairs, norms = RewardScorer(model, max_length=128), 0, 0, []
    for group in load_rankings(testbeds / "gold" / "val1.parquet"):
        rewards, hidden = scorer.score([group.prompt] * len(group.completions), group.completions, with_hidden=True)
        for i in range(len(rewards)):  # completions come best first
            for j in range(i + 1, len(rewards)):
                pairs, correct = pairs + 1, correct + bool(rewards[i] > rewards[j])
        norms += hidden.norm(dim=-1).tolist()
    assert saved["val1"]["accuracy"]["value"] == pytest.approx(correct / pairs)
    assert saved["val1"]["h_norm_mean"] == pytest.approx(sum(norms) / len(norms), rel=1e-4)


def test_eval_rm_on_collapse_compares_with_the_trained_utility(ray_local, testbeds, tmp_path):
    run = tmp_path / "pa"
    cfg = load_config(None, [f"data.dir={testbeds}", "data.testbed=collapse", "data.eval=eval", f"output_dir={run}",
                             "model.name=tiny-llama", "loss.name=ranking", "loss.prompt_aware.enabled=true",
                             "rm.num_workers=2", "rm.batch_size=4", "rm.max_steps=2", "tensorboard=false",
                             "eval.bootstrap=0", "model.max_length=160"])
    summary = train_reward_model(cfg)
    result = evaluate_reward_model(cfg, summary["model"])
    curves = result["eval"]["curves"]
    assert curves["open"]["theory_utility"] == "inv" and curves["closed"]["theory_utility"] == "x"
    assert curves["closed"]["theory"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(curves["open"]["mean"]) == 8 and 0 <= result["eval"]["open_closed_gap"] <= 1
    assert result["eval"]["open_l1_to_theory"] >= 0 and (run / "eval" / "reward_by_index.png").exists()


def test_experiment_trains_variants_side_by_side_and_reports(ray_local, tmp_path):
    from rlhf_ray.rm.experiment import run_experiment

    # its own small testbed: an experiment prepares its testbeds, and the session's must stay as they are
    cfg = load_config(None, [
        f"output_dir={tmp_path / 'exp'}", f"data.dir={tmp_path / 'testbeds'}", "prepare.testbeds=[gold]",
        "prepare.sizes.gold_train_prompts=24", "prepare.sizes.gold_valid_prompts=8",
        "tensorboard=false", "eval.bootstrap=20",
        "scorer.num_workers=1", "experiment.base=configs/rm_bt_gold.yaml", "experiment.seeds=[0, 1]",
        "experiment.parallel=2",
        "experiment.variants={bt: [], bsr: [loss.bsr.coef=0.1]}",
        "experiment.overrides=[model.name=tiny-llama, rm.max_steps=2, rm.batch_size=4, rm.num_workers=1]",
        "logging.mlflow.enabled=true",  # a folder store: the trainings as child runs of the experiment's
    ])
    out = run_experiment(cfg)
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "| bt | 2 |" in report and "| bsr | 2 |" in report
    runs = json.loads((tmp_path / "exp" / "experiment.json").read_text())["runs"]
    assert {(r["variant"], r["seed"]) for r in runs} == {("bt", 0), ("bt", 1), ("bsr", 0), ("bsr", 1)}
    for png in ("scenarios.png", "h_norms.png", "training_loss.png"):
        assert (tmp_path / "exp" / png).exists()
    assert out["runs"] == 4
    client = mlflow_client((tmp_path / "exp" / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("rlhf-ray").experiment_id
    tracked = {r.info.run_name: r for r in client.search_runs([experiment])}
    assert set(tracked) == {"exp", "bt-s0", "bt-s1", "bsr-s0", "bsr-s1"}
    parent = tracked.pop("exp").info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent and r.data.params["rm.max_steps"] == "2"
               for r in tracked.values())
    assert [m.step for m in client.get_metric_history(tracked["bsr-s1"].info.run_id, "train/loss")] == [1, 2]
    assert "plots/training_loss.png" in {a.path for a in client.list_artifacts(parent, "plots")}
