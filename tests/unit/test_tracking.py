"""Experiment trackers (issue 29): the real W&B (offline mode) and MLflow (a local folder store) get a
run's config, its per-step metrics, the held-out curve, the summary and the run folder's plots, and a
pipeline's runs are grouped (a W&B group, an MLflow parent run). What was logged is read back from the
files the libraries wrote; nothing touches the network."""
import json
import struct
from pathlib import Path

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.tracking import Trackers, mlflow_client, numbers

wandb = pytest.importorskip("wandb", reason="the tracking extra (scripts/setup.sh installs it)")
pytest.importorskip("mlflow")


def wandb_records(run_dir: Path) -> list:
    """The records of an offline run's `.wandb` file: a W&B header, then LevelDB-log records (32 KiB
    blocks, each record cut into chunks with a 7-byte header), each a `Record` protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    # W&B's service writes the offline file on its own, finishing shortly after `run.finish()` returns
    # (a read straight after it raced the writer and once found the file cut: the suite of 633aa91);
    # what the process's exit does, done here: the service flushes every run's file and stops
    wandb.teardown()
    [path] = run_dir.glob("run-*.wandb")
    data, pos, chunks, records = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or a record's last chunk
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _wandb_history(records) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def _a_run(out: Path, tracking: list[str], name: str | None = None) -> Trackers:
    cfg = load_config(None, [f"output_dir={out}", "learner.lr=3e-6", *tracking])
    trackers = Trackers.open(cfg, name)
    for step in (1, 2, 3):
        trackers.log(step, {"loss": 1.0 / step, "kl": 0.1 * step, "prompt_ids": ["a"], "nan": float("nan")}, "train")
    trackers.log(3, {"gold": 0.5}, "eval")
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.new("RGB", (4, 4)).save(out / "curve.png")
    (out / "summary.json").write_text('{"steps": 3}')
    return trackers


SUMMARY = {"steps": 3, "held_out": {"gold": {"gain": 0.02}},
           "held_out_curve": [{"step": 0, "gold": 0.5, "kl": 0.0}, {"step": 3, "gold": 0.52, "kl": 0.4}]}


def test_a_metrics_row_becomes_its_finite_numbers_under_the_split():
    row = {"loss": 1, "ok": True, "ids": [1], "text": "x", "nan": float("nan"), "eval": {"tau": 0.5}}
    assert numbers(row, "train") == {"train/loss": 1.0, "train/eval.tau": 0.5}


def test_wandb_offline_gets_the_config_metrics_curve_summary_and_plots(tmp_path, capfd):
    out = tmp_path / "run"
    _a_run(out, ["logging.wandb.enabled=true", "logging.wandb.project=proj", "logging.wandb.group=g"],
           "bt-s0").finish(SUMMARY, out)
    assert "wandb" not in capfd.readouterr().err  # quiet: the terminal is the run's own
    [run_dir] = (out / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.display_name) == ("proj", "g", "bt-s0")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["learner"]["lr"] == 3e-6 and config["output_dir"] == str(out)
    history = _wandb_history(records)
    steps = {h["_step"]: h for h in history if "train/loss" in h}
    assert sorted(steps) == [1, 2, 3] and steps[2]["train/loss"] == 0.5 and steps[3]["eval/gold"] == 0.5
    assert not any("train/nan" in h or "train/prompt_ids" in h for h in history)
    curve = [h for h in history if "held_out/step" in h]
    assert [(h["held_out/step"], h["held_out/gold"]) for h in curve] == [(0, 0.5), (3, 0.52)]
    summary = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert summary["steps"] == 3 and summary["held_out.gold.gain"] == 0.02
    assert any(h.get("plots/curve/_type") == "image-file" for h in history)
    assert (run_dir / "files" / "summary.json").exists()
    [exit_record] = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


def test_mlflow_file_store_gets_the_config_metrics_curve_summary_and_plots(tmp_path):
    out = tmp_path / "run"
    _a_run(out, ["logging.mlflow.enabled=true", "logging.mlflow.experiment=exp"]).finish(SUMMARY, out)
    client = mlflow_client((out / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["learner.lr"] == "3e-06" and run.data.params["seed"] == "0"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert "train/nan" not in run.data.metrics and run.data.metrics["eval/gold"] == 0.5
    curve = client.get_metric_history(run.info.run_id, "held_out/gold")
    assert sorted((m.step, m.value) for m in curve) == [(0, 0.5), (3, 0.52)]
    assert run.data.metrics["summary/held_out.gold.gain"] == 0.02
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "summary.json"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curve.png"]


def test_a_pipeline_s_runs_are_grouped_under_it_and_a_failed_run_says_so(tmp_path):
    both = ["logging.wandb.enabled=true", "logging.mlflow.enabled=true"]
    parent = Trackers.open(load_config(None, [f"output_dir={tmp_path / 'pipe'}", *both]))
    child_cfg = load_config(None, [f"output_dir={tmp_path / 'pipe' / 'rm' / 'bt-s0'}"])
    child = Trackers.open(child_cfg.model_copy(update={"logging": parent.child("rm/bt-s0")}))
    child.log(1, {"loss": 0.7}, "train")
    child.finish(None, tmp_path / "pipe" / "rm" / "bt-s0", failed=True)
    parent.finish({"minutes": 1.5}, tmp_path / "pipe")

    client = mlflow_client((tmp_path / "pipe" / "mlruns").resolve().as_uri())  # one store for both
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("rlhf-ray").experiment_id])}
    assert set(runs) == {"pipe", "rm/bt-s0"}
    assert runs["rm/bt-s0"].data.tags["mlflow.parentRunId"] == runs["pipe"].info.run_id
    assert runs["rm/bt-s0"].info.status == "FAILED" and runs["pipe"].info.status == "FINISHED"
    [child_dir] = (tmp_path / "pipe" / "rm" / "bt-s0" / "wandb").glob("offline-run-*")
    [run] = [r.run for r in wandb_records(child_dir) if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "pipe" and run.display_name == "rm/bt-s0"
    [exit_record] = [r.exit for r in wandb_records(child_dir) if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 1


def test_trackers_are_off_by_default_and_never_in_a_stage_s_key(tmp_path):
    from rlhf_ray.finished_stages import stage_key

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    trackers = Trackers.open(cfg)
    assert trackers.runs == []
    trackers.log(1, {"loss": 1.0}, "train")
    trackers.finish({"steps": 1}, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written
    tracked = load_config(None, [f"output_dir={tmp_path}", "logging.wandb.enabled=true"])
    assert stage_key(tracked, ["t"]) == stage_key(cfg, ["t"])  # a finished stage stays finished
