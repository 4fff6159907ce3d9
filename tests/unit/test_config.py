from pathlib import Path

import pytest

from rlhf_ray.config import ConfigError, apply_overrides, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.rm.batch_size % (cfg.rm.num_workers * cfg.rm.grad_accum_steps) == 0


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["rm.num_workers=4", "rm.batch_size=32", "loss.bsr.coef=1e-3", "tensorboard=false"])
    assert cfg.rm.num_workers == 4 and cfg.loss.bsr.coef == pytest.approx(1e-3) and cfg.tensorboard is False


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rm:\n  num_workres: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "unknown config key 'rm.num_workres'" in str(err.value) and str(f) in str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("rm.num_workers=0", "rm.num_workers"),
        ("rm.lr=-1", "rm.lr"),
        ("loss.name=focal", "loss.name"),
        ("loss.utility.name=cubic", "loss.utility.name"),
        ("rm.zero_stage=5", "rm.zero_stage"),
        ("rm.num_cpus=abc", "rm.num_cpus"),
    ],
)
def test_bad_value_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, [override])


def test_batch_must_divide_over_workers():
    with pytest.raises(ConfigError, match="rm.batch_size"):
        load_config(None, ["rm.num_workers=3", "rm.batch_size=16"])


def test_prompt_aware_needs_ranking_loss():
    with pytest.raises(ConfigError, match="prompt_aware"):
        load_config(None, ["loss.prompt_aware.enabled=true"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["rm.num_workers"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rm: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_list_of_overrides_with_brackets_inside_its_items_is_one_list():
    """`pipeline.rloo_overrides=[rloo.prompt_types=[open], rloo.steps=8]` is not valid YAML (a bracket inside a
    plain flow item) but is what a user types: the top-level commas split it, the inner brackets stay."""
    tree = apply_overrides({}, ["pipeline.rloo_overrides=[rloo.prompt_types=[open, closed], rloo.steps=8]",
                                "pipeline.rm_overrides=[rm.lr=1e-4]"])
    assert tree["pipeline"]["rloo_overrides"] == ["rloo.prompt_types=[open, closed]", "rloo.steps=8"]
    assert tree["pipeline"]["rm_overrides"] == ["rm.lr=1e-4"]
    cfg = load_config("configs/demo.yaml", ["pipeline.rloo_overrides=[rloo.prompt_types=[open], rloo.steps=3]"])
    assert cfg.pipeline.rloo_overrides == ["rloo.prompt_types=[open]", "rloo.steps=3"]


def _model_ref_ok(ref: str) -> bool:
    from rlhf_ray.models.aliases import ALIASES

    return ref in ALIASES or Path(ref).exists() or (ref.count("/") == 1 and not ref.startswith((".", "/")))


def _data_ref_ok(ref: str, testbed: str) -> bool:
    if ref.startswith("hub:"):
        name, _, split = ref[4:].rpartition(":")
        return name.count("/") == 1 and bool(split)
    if ref.endswith((".parquet", ".jsonl", ".json")):
        return Path(ref).exists()
    return testbed in ("gold", "collapse") and ref in ("train", "eval", "val1", "val2", "val3", "val4")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_name_resources_that_exist(path):
    from rlhf_ray.config import find_config

    cfg = load_config(path)
    assert _model_ref_ok(cfg.model.name), cfg.model.name
    for ref in [cfg.data.train, cfg.data.eval, *cfg.data.scenarios.values()]:
        assert ref is None or _data_ref_ok(ref, cfg.data.testbed), ref
    for ref in [cfg.experiment.base, *cfg.pipeline.reward_models.values(), cfg.pipeline.rloo]:
        sub = load_config(find_config(ref))  # every referenced config exists and loads
        assert _model_ref_ok(sub.model.name)
    if cfg.rm.num_gpus:
        assert cfg.rm.zero_stage in (0, 1, 2, 3) and cfg.model.dtype == "bfloat16"


@pytest.mark.parametrize("path", [p for p in CONFIGS if "rloo" in p.name], ids=lambda p: p.name)
def test_rloo_configs_name_a_policy_and_prompts_that_resolve(path):
    cfg = load_config(path)
    assert _model_ref_ok(cfg.policy.name)
    prompts = cfg.rloo.prompts
    assert prompts == "gold" or _data_ref_ok(prompts, "custom")
    for model in cfg.reward.models:  # a trained checkpoint under runs/ (made by a documented command) or a ref
        assert model.startswith("runs/") or _model_ref_ok(model)


@pytest.mark.parametrize("overrides, message", [
    (["learner.offload_states_while_generating=true", "learner.zero_stage=3"], "zero_stage 1 or 2"),
    (["learner.offload_states_while_generating=true"], "zero_stage 1 or 2"),
    (["rollout.tensor_parallel_size=2", "rollout.num_gpus=1"], "engines on GPUs are not built yet"),
    (["rollout.tensor_parallel_size=2", "rollout.engine=hf"], "HF generate. has no tensor parallelism"),
    (["rollout.tensor_parallel_size=2", "rollout.colocate_with_learner=true"], "colocation pairs"),
])
def test_gpu_settings_that_would_fail_on_a_cluster_are_refused_at_load(overrides, message):
    """Issue 26 (4, 5, 6): each refused with an error naming its keys, never a hang or a silent no-op."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    fine = {"learner.zero_stage=3": "learner.zero_stage=2", "rollout.sync=collective": "rollout.sync=ipc",
            "rollout.tensor_parallel_size=2": "rollout.tensor_parallel_size=1"}  # (TP = 2 on the CPU: fine)
    fixed = [fine.get(o, o) for o in overrides]
    if "learner.offload_states_while_generating=true" in fixed and "learner.zero_stage=2" not in fixed:
        fixed.append("learner.zero_stage=1")
    load_config(None, fixed)


def test_a_transport_refuses_settings_it_cannot_work_with_before_any_actor_starts():
    """Issue 26 (6), now the transport's own check (issue 25: no `sync ==` outside rl/sync/): collective
    with colocation on GPUs would be two NCCL ranks on one GPU; ipc, the way out it names, is fine."""
    from rlhf_ray.rl.sync import transport_class

    cfg = load_config(None, ["rollout.colocate_with_learner=true", "rollout.sync=collective",
                             "rollout.num_gpus=0.5", "learner.num_gpus=0.5"])
    with pytest.raises(ConfigError, match="two NCCL ranks"):
        transport_class("collective").check(cfg.rollout, cfg.learner)
    transport_class("ipc").check(cfg.rollout, cfg.learner)
    transport_class("collective").check(cfg.rollout, cfg.learner.model_copy(update={"num_gpus": 0}))


@pytest.mark.parametrize("overrides,message", [
    (["rm.standby=1"], "config key 'rm.standby'"),
    (["learner.standby=1"], "config key 'learner.standby'"),
    (["rollout.standby=1", "rollout.colocate_with_learner=true", "rollout.sync=ipc"],
     "rollout.standby with rollout.colocate_with_learner"),
    (["scorer.standby=1", "online_rm.enabled=true", "online_rm.colocate_with_scorers=true",
      "reward.models=[tiny-llama]"], "scorer.standby with online_rm.colocate_with_scorers"),
])
def test_a_standby_only_where_one_can_take_over(overrides, message):
    """Trainer ranks hold optimizer state, and a colocated actor's bundle has no room for a spare."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
