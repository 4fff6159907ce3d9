"""An experiment's arms in `rlhf-ray pipeline` (`pipeline.rloo_arms`): every arm against every target
and seed with its own overrides, the reference arms on their own seeds, and the stage names that let a
pilot's runs be reused by the whole experiment."""
import pytest

from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.pipeline import rloo_runs_of, rloo_targets, run_name


def test_the_frozen_vs_online_experiment_runs_its_arms_seed_by_seed():
    cfg = load_config("configs/exp_online.yaml")
    runs = [(target, arm, seed) for target, arm, seed, _ in rloo_runs_of(cfg)]
    assert runs == [("bsr", "online", 0), ("bsr", "frozen", 0), ("bsr", "gold", 0),
                    ("bsr", "length", 0), ("bsr", "online", 1), ("bsr", "frozen", 1),
                    ("bsr", "online", 2), ("bsr", "frozen", 2)]
    overrides = {arm: o for _, arm, _, o in rloo_runs_of(cfg)}
    assert "online_rm.schedule=upfront" in overrides["frozen"]
    assert "reward.train_on=gold_v2" in overrides["gold"]
    # a pilot with pipeline.seeds=[0] names its stages as the three-seed run does: they are reused
    pilot = load_config("configs/exp_online.yaml", ["pipeline.seeds=[0]"])
    assert run_name("bsr-online", 0, pilot) == run_name("bsr-online", 0, cfg) == "bsr-online-s0"
    assert run_name("bsr", 0, load_config("configs/demo.yaml")) == "bsr"  # no seeds listed: no suffix


def test_without_arms_one_run_per_target_and_seed():
    cfg = load_config("configs/pipeline.yaml")
    assert [(a, s) for _, a, s, _ in rloo_runs_of(cfg)][:1] == [("", 0)]
    assert len(rloo_runs_of(cfg)) == len(cfg.pipeline.seeds) * len(rloo_targets(cfg))


def test_seeds_for_an_arm_that_does_not_exist_name_the_key():
    with pytest.raises(ConfigError, match="pipeline.rloo_arm_seeds"):
        rloo_runs_of(load_config("configs/exp_online.yaml", ["pipeline.rloo_arm_seeds={ceiling: [0]}"]))
