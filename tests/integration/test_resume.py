"""Checkpoints and resume. RLOO: the driver is killed with SIGKILL mid-run, `--resume` continues from
the newest complete checkpoint, and the prompt batches are the run's own prompt stream (what an
uninterrupted run draws: its order comes from the seed alone), each step once. Reward-model
training: a resumed run's losses equal the uninterrupted run's, step for step."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rm.train import train_reward_model
from tests.integration.shared import TINY_RLOO

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _rloo(out: Path, testbeds, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rlhf_ray.cli", "rloo", "--config", str(ROOT / "configs" / "rloo_smollm2.yaml"),
            f"output_dir={out}", f"data.dir={testbeds}", "tensorboard=false", *TINY_RLOO, "rloo.steps=6",
            "rloo.prompts_per_step=2", "rloo.eval_prompts=0", "rloo.save_every=2", "rollout.num_threads=1",
            "learner.num_threads=1", "scorer.num_workers=1", "reward.models=[tiny-llama]", "ray.num_cpus=2",
            "rloo.overlap=true", *extra]  # a batch in flight at every checkpoint: drawn again on resume


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _env():
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _uninterrupted_batches(testbeds, steps: int, per_step: int) -> list[tuple[int, list[str]]]:
    """The prompt ids an uninterrupted run trains on, step by step: its loader, without running it."""
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.prompts import PromptLoader, load_prompts

    cfg = load_config(ROOT / "configs" / "rloo_smollm2.yaml", [f"data.dir={testbeds}", *TINY_RLOO])
    loader = PromptLoader(load_prompts(cfg), per_step, cfg.seed)
    return [(step, [p["prompt_id"] for p in loader.next()]) for step in range(1, steps + 1)]


def test_rloo_resumes_after_sigkill_with_the_same_batches(testbeds, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_rloo(killed, testbeds), cwd=ROOT, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "killed.log", "w"))
    deadline = time.monotonic() + 600
    while not ((killed / "metrics.jsonl").exists() and any(r["step"] >= 3 for r in _rows(killed))):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-run, with no chance to clean up
    proc.wait()
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)  # then whatever it had started on this machine, as a reboot would
    assert not (killed / "summary.json").exists()

    resumed = subprocess.run([*_rloo(killed, testbeds), "--resume"], cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] in (2, 4)
    step = summary["resumed_from_step"]
    checkpoint = killed / "checkpoints" / f"step-{step:06d}"
    assert f"[rloo] resumed from step {step} (checkpoint {checkpoint})" in resumed.stderr
    assert summary["steps"] == 6 and summary["prompt_position"] == 12
    batches = [(r["step"], r["prompt_ids"]) for r in _rows(killed) if r["split"] == "train"]
    # each step once (rows after the checkpoint were redone), on the batches an uninterrupted run draws
    assert batches == _uninterrupted_batches(testbeds, 6, 2)
    steps_in_samples = [json.loads(x)["step"] for x in (killed / "samples.jsonl").read_text().splitlines()]
    assert steps_in_samples == sorted(steps_in_samples) and len(steps_in_samples) == 6 * 2 * 2
    kept = sorted(p.name for p in (killed / "checkpoints").iterdir() if not p.name.startswith("."))
    assert kept == ["step-000002", "step-000004"]


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
