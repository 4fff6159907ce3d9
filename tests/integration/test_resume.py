"""Checkpoints and resume of reward-model training: a resumed run's losses equal the uninterrupted
run's, step for step. (RLOO's: a driver killed with SIGKILL and resumed, test_ray_jobs.py; a learner
restarted in the run, test_fault_tolerance.py.)"""
import json
import shutil
from pathlib import Path

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rm.train import train_reward_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_model_training_resumes_to_the_same_losses(ray_local, testbeds, tmp_path, capsys):
    def cfg(out, *extra):
        return load_config("configs/rm_bt_gold.yaml", [
            f"output_dir={out}", f"data.dir={testbeds}", "tensorboard=false", "model.name=tiny-llama",
            "rm.max_steps=4", "rm.batch_size=4", "rm.save_every=2", "rm.num_workers=2", *extra])

    whole = tmp_path / "whole"
    train_reward_model(cfg(whole))
    assert [p.name for p in (whole / "checkpoints").iterdir()] == ["step-000002"]

    # a run that stopped after its step-2 checkpoint: its folder as the crash left it
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoints", cut / "checkpoints")
    rows = [r for r in _rows(whole) if r["step"] <= 2]
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (cut / "checkpoints" / ".step-000004.tmp").mkdir()  # a save the crash interrupted: ignored
    capsys.readouterr()
    train_reward_model(cfg(cut, "resume=true"))
    checkpoint = cut / "checkpoints" / "step-000002"
    assert f"[train-rm] resumed from step 2 (checkpoint {checkpoint})" in capsys.readouterr().err

    def losses(out):
        return {r["step"]: r["loss"] for r in _rows(out) if r["split"] == "train"}

    assert sorted(losses(cut)) == [1, 2, 3, 4]
    for step in (3, 4):
        assert losses(cut)[step] == pytest.approx(losses(whole)[step], rel=1e-5, abs=1e-6)
