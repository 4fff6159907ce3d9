"""Issue 28 (4): a checkpoint is checked before it is trusted. state.json, written last, carries a
manifest of every other file's size and CRC-32; `--resume` checks it before anything starts and falls
back to the newest intact checkpoint, saying which and why; with none intact, one `error:` line names
the damage. A metrics row the crash cut off is cut cleanly."""
import json
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.utils.runlog import truncate_jsonl
from rlhf_ray.utils.train_state import Checkpoints, ResumeError

ROOT = Path(__file__).resolve().parents[2]


def _save(checkpoints: Checkpoints, step: int, payload: bytes = b"weights" * 100) -> Path:
    """A checkpoint as the ranks and the driver write it (a file:// storage is a folder underneath)."""
    with checkpoints.saving(step, {"position": step * 2}) as (folder, written):
        local = Path(folder.removeprefix("file://"))
        (local / "engine" / "engine").mkdir(parents=True)
        (local / "engine" / "engine" / "mp_rank_00_model_states.pt").write_bytes(payload)
        (local / "engine" / "latest").write_text("engine")
        written.arrived([[]])
    return local


@pytest.mark.parametrize("damage,says", [
    (lambda f: (f / "engine/engine/mp_rank_00_model_states.pt").write_bytes(b"weig"), "is 4 bytes, 700 when saved"),
    (lambda f: (f / "engine/engine/mp_rank_00_model_states.pt").write_bytes(b"x" * 700), "differs from what"),
    (lambda f: (f / "engine/engine/mp_rank_00_model_states.pt").unlink(), "is missing"),
    (lambda f: (f / "state.json").write_text((f / "state.json").read_text()[:20]), "state.json is not valid JSON"),
])
def test_resume_passes_over_a_damaged_checkpoint_to_the_newest_intact_one(tmp_path, capsys, damage, says):
    checkpoints = Checkpoints(tmp_path / "checkpoints", keep=2)
    _save(checkpoints, 2)
    newest = _save(checkpoints, 4)
    assert checkpoints.resume_point(True)[1] == {"step": 4, "position": 8}
    damage(newest)
    folder, state = checkpoints.resume_point(True)
    assert folder == str(tmp_path / "checkpoints" / "step-000002") and state == {"step": 2, "position": 4}
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged (" in err and says in err and f"resuming from {folder}" in err


def test_with_every_checkpoint_damaged_resume_is_one_error_line_naming_the_file(tmp_path, capsys):
    out = tmp_path / "rm"
    only = _save(Checkpoints(out / "checkpoints"), 2)
    (only / "engine" / "engine" / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(ResumeError, match="mp_rank_00_model_states.pt is 0 bytes"):
        Checkpoints(out / "checkpoints").resume_point(True)
    assert main(["train-rm", "--config", str(ROOT / "configs/rm_bt_gold.yaml"), f"output_dir={out}",
                 f"data.dir={tmp_path / 'testbeds'}", "--check", "--resume"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1, err
    assert "error: checkpoint" in errors[0] and "no earlier checkpoint is intact" in errors[0]


def test_a_checkpoint_from_before_manifests_and_one_in_a_uri_storage_are_checked_as_far_as_they_can_be(tmp_path):
    legacy = Checkpoints(tmp_path / "old")
    folder = _save(legacy, 2)
    state = json.loads((folder / "state.json").read_text())
    state.pop("manifest")
    (folder / "state.json").write_text(json.dumps(state))
    assert legacy.resume_point(True)[1]["step"] == 2  # taken as it is

    uri = Checkpoints(f"file://{tmp_path / 'store'}")
    stored = _save(uri, 2)
    manifest = json.loads((stored / "state.json").read_text())["manifest"]
    assert manifest["engine/engine/mp_rank_00_model_states.pt"] == [700, None]  # sizes only: no download
    (stored / "engine" / "engine" / "mp_rank_00_model_states.pt").write_bytes(b"cut")
    with pytest.raises(ResumeError, match="is 3 bytes, 700 when saved"):
        uri.resume_point(True)


def test_a_metrics_row_cut_by_a_crash_is_cut_cleanly_and_damage_elsewhere_is_named(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    truncate_jsonl(metrics, 3)
    assert metrics.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    metrics.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ResumeError, match="metrics.jsonl: line 2 is not valid JSON"):
        truncate_jsonl(metrics, 3)
