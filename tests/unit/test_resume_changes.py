"""Issue 28 (6): `--resume` refuses a changed run definition (seed, prompt order, batch shape, model,
loss, optimizer), naming the keys that differ, unless `resume_changes=allow`; how long, how often,
where and on how many stateless actors a run goes on may change freely. Checked before anything starts."""
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config import load_config
from rlhf_ray.config.resume import run_definition_changes
from rlhf_ray.utils.train_state import Checkpoints, ResumeError

ROOT = Path(__file__).resolve().parents[2]
RLOO = str(ROOT / "configs/rloo_smollm2.yaml")


def _definition(*overrides: str) -> dict:
    return load_config(RLOO, list(overrides)).model_dump(mode="json")


def _checkpoint(root: Path, definition: dict) -> Checkpoints:
    checkpoints = Checkpoints(root, definition=definition)
    with checkpoints.saving(2, {"position": 4}) as (folder, written):
        (Path(folder) / "engine").mkdir(parents=True)
        written.arrived([[]])
    return checkpoints


def test_the_keys_that_define_a_run_are_named_and_the_rest_may_change():
    changes = run_definition_changes(_definition(), _definition(
        "seed=7", "rloo.prompts_per_step=2", "learner.lr=1e-3", "rloo.steps=50", "rollout.num_workers=3",
        "scorer.num_cpus=2", "learner.timeout_s=99", "tensorboard=false", "rloo.save_every=5"))
    assert [key for key, _, _ in changes] == ["learner.lr", "rloo.prompts_per_step", "seed"]
    assert ("seed", 0, 7) in changes
    # the learner's ranks hold ZeRO shards of its state: their count defines the run
    assert [k for k, _, _ in run_definition_changes(_definition(), _definition("learner.num_workers=2"))] == [
        "learner.num_workers"]


def test_resume_refuses_a_changed_definition_unless_allowed_and_says_what_it_allowed(tmp_path, capsys):
    _checkpoint(tmp_path, _definition())
    same = Checkpoints(tmp_path, definition=_definition("rloo.steps=99"))
    assert same.resume_point(True)[1] == {"step": 2, "position": 4}  # the config is not handed on
    changed = _definition("seed=7", "rloo.prompts_per_step=2")
    with pytest.raises(ResumeError, match=r"rloo.prompts_per_step 8 -> 2, seed 0 -> 7; .*resume_changes=allow"):
        Checkpoints(tmp_path, definition=changed).resume_point(True)
    capsys.readouterr()
    assert Checkpoints(tmp_path, definition=changed, changes="allow").resume_point(True)[1]["step"] == 2
    assert "resume_changes=allow: resuming" in capsys.readouterr().err


def test_the_cli_refuses_before_anything_starts_with_overrides_on_both_sides_of_the_flag(tmp_path, capsys):
    out = tmp_path / "run"
    run = [f"output_dir={out}", f"data.dir={tmp_path / 'testbeds'}", "reward.models=[tiny-llama]",
           "policy.name=tiny-llama"]
    _checkpoint(out / "checkpoints", _definition(*run))
    assert main(["rloo", "--config", RLOO, *run, "seed=7", "--resume", "rloo.prompts_per_step=2", "--check"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "rloo.prompts_per_step 8 -> 2, seed 0 -> 7" in errors[0], err
