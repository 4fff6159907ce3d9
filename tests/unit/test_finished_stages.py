"""A pipeline stage is reused only when it finished with the same config and the same inputs (the
pipeline's own section aside); anything else, or a result cut short, runs it again."""
import json
from pathlib import Path

from rlhf_ray.config import load_config
from rlhf_ray.finished_stages import (MARKER, FinishedStages, data_fingerprint, finished_result, mark_finished,
                                      stage_key)


def _testbed(root: Path) -> Path:
    (root / "gold").mkdir(parents=True)
    (root / "gold" / "train.parquet").write_bytes(b"rows")
    (root / "gold" / "val1.parquet").write_bytes(b"more rows")
    (root / "gold" / "policy_samples.json").write_text("{}")  # the cache: not what stages read
    return root


def _finished_stage(tmp_path: Path, cfg, inputs) -> Path:
    result = tmp_path / "stage" / "summary.json"
    result.parent.mkdir()
    result.write_text(json.dumps({"model": "m", "steps": 3}))
    mark_finished(result, stage_key(cfg, inputs))
    return result


def test_the_testbed_fingerprint_follows_the_parquet_files_bytes_and_names(tmp_path):
    first = data_fingerprint(_testbed(tmp_path / "a"))
    assert data_fingerprint(_testbed(tmp_path / "b")) == first  # same bytes elsewhere: same
    (tmp_path / "b" / "gold" / "policy_samples.json").write_text('{"new": 1}')
    assert data_fingerprint(tmp_path / "b") == first
    (tmp_path / "b" / "gold" / "val1.parquet").write_bytes(b"more rowz")
    assert data_fingerprint(tmp_path / "b") != first
    (tmp_path / "a" / "gold" / "val1.parquet").rename(tmp_path / "a" / "gold" / "val2.parquet")
    assert data_fingerprint(tmp_path / "a") != first


def test_a_stage_is_reused_with_the_same_config_and_inputs_only(tmp_path):
    cfg = load_config("configs/rm_bt_gold.yaml", ["rm.epochs=2"])
    upstream = tmp_path / "upstream.json"
    upstream.write_text('{"model": "rm"}')
    result = _finished_stage(tmp_path, cfg, ["testbed-hash", upstream])

    assert finished_result(result, stage_key(cfg, ["testbed-hash", upstream])) == {"model": "m", "steps": 3}
    # the pipeline's section is no stage's config: changing it reuses the stage
    other_pipeline = load_config("configs/rm_bt_gold.yaml", ["rm.epochs=2", "pipeline.rloo_against=[bt]"])
    assert finished_result(result, stage_key(other_pipeline, ["testbed-hash", upstream])) is not None

    assert finished_result(result, stage_key(load_config("configs/rm_bt_gold.yaml", ["rm.epochs=3"]),
                                             ["testbed-hash", upstream])) is None
    assert finished_result(result, stage_key(cfg, ["other-testbed", upstream])) is None
    upstream.write_text('{"model": "rm", "retrained": true}')  # the upstream stage ran again
    assert finished_result(result, stage_key(cfg, ["testbed-hash", upstream])) is None


def test_a_stage_finished_by_an_earlier_version_is_reused_unless_a_new_key_is_set_away_from_its_default(
        tmp_path):
    """A later rlhf-ray adds config keys (here `resume_changes`, `online_rm.max_rows`) and drops others: a
    stage an earlier version finished is still the same stage when the new keys stay at their defaults."""
    import json

    cfg = load_config("configs/rm_bt_gold.yaml", ["rm.epochs=2"])
    result = _finished_stage(tmp_path, cfg, ["testbed-hash"])
    marker = result.parent / "pipeline_stage.json"
    older = json.loads(marker.read_text())
    del older["config"]["resume_changes"], older["config"]["online_rm"]["max_rows"]
    older["config"]["rm"]["a_key_since_removed"] = 3
    marker.write_text(json.dumps(older))
    assert finished_result(result, stage_key(cfg, ["testbed-hash"])) is not None
    changed = load_config("configs/rm_bt_gold.yaml", ["rm.epochs=2", "online_rm.max_rows=64"])
    assert finished_result(result, stage_key(changed, ["testbed-hash"])) is None


def test_restart_counts_and_timeouts_never_invalidate_a_finished_stage(tmp_path):
    """learner.max_restarts went from 0 to 1 by default between two parts of one experiment: how a
    stage survives a crash does not change what it computed."""
    cfg = load_config("configs/rm_bt_gold.yaml", ["rm.epochs=2"])
    result = _finished_stage(tmp_path, cfg, ["testbed-hash"])
    for override in ["learner.max_restarts=5", "rollout.max_restarts=0", "scorer.timeout_s=3"]:
        other = load_config("configs/rm_bt_gold.yaml", ["rm.epochs=2", override])
        assert finished_result(result, stage_key(other, ["testbed-hash"])) is not None, override


def test_a_stage_without_its_marker_or_with_a_cut_result_runs_again(tmp_path):
    cfg = load_config("configs/rm_bt_gold.yaml")
    result = _finished_stage(tmp_path, cfg, ["t"])
    key = stage_key(cfg, ["t"])
    result.write_text('{"model": "m", "ste')  # a crash while writing the result
    assert finished_result(result, key) is None
    result.write_text('{"model": "m"}')
    (result.parent / MARKER).unlink()  # the stage's own files, but the pipeline never saw it finish
    assert finished_result(result, key) is None
    mark_finished(result, key)
    assert finished_result(result, key) == {"model": "m"}
    assert finished_result(tmp_path / "elsewhere" / "summary.json", key) is None


def test_the_pipeline_runs_a_stage_once_then_reuses_it_unless_told_not_to(tmp_path, capsys):
    cfg = load_config("configs/rm_bt_gold.yaml")
    result_file = tmp_path / "rm" / "summary.json"
    runs = []

    def train() -> dict:  # a stage: writes its result file, returns the same
        runs.append(len(runs) + 1)
        result_file.parent.mkdir(exist_ok=True)
        result_file.write_text(json.dumps({"model": "m", "run": len(runs)}))
        return {"model": "m", "run": len(runs)}

    stages = FinishedStages("pipeline", enabled=True, data="testbed-hash")
    assert stages.reuse_or_run(cfg, result_file, [], train) == {"model": "m", "run": 1}
    assert stages.reuse_or_run(cfg, result_file, [], train) == {"model": "m", "run": 1}
    assert runs == [1] and stages.reused == [result_file]
    assert f"[pipeline]   reused {result_file} (finished with the same config and inputs)" in capsys.readouterr().err

    assert FinishedStages("pipeline", True, "other-testbed").reuse_or_run(cfg, result_file, [], train)["run"] == 2
    rerun = FinishedStages("pipeline", enabled=False, data="other-testbed")
    assert rerun.reuse_or_run(cfg, result_file, [], train)["run"] == 3 and rerun.reused == []
