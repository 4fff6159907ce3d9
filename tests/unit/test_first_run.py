"""What a new user meets in the first hour, checked before any actor starts: data files that do not
decode, rows numbered one way, rows too large, model paths that do not exist, placements that cannot
be satisfied, `--resume` with nothing to resume, abbreviated or missing flags, and the progress ETA."""
import json
import logging
import shutil
from pathlib import Path

import pytest

from rlhf_ray.cli import build_parser, main
from rlhf_ray.placement import PlacementError, check_placement
from rlhf_ray.config import ActorGroupConfig, load_config
from rlhf_ray.data.schema import DataError, load_rankings
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.rl.engines.vllm_ext import RELOAD_LOGGER, DerivedBufferFilter
from rlhf_ray.rl.prompts import load_prompts
from rlhf_ray.utils.runlog import steady_rate

ROOT = Path(__file__).resolve().parents[2]
PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}


# ---- data files -----------------------------------------------------------------------------------

def test_a_byte_that_is_not_utf8_names_file_row_and_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_bytes((json.dumps(PAIR) + "\n").encode() + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl: row 1 \(line 2\): not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_rankings(f)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "hi"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl: row 1 \(line 2\): not UTF-8"):
        load_prompts(load_config(None, [f"rloo.prompts={prompts}"]))


def test_blank_lines_do_not_make_the_json_check_and_the_field_check_disagree(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = ["", "", json.dumps(PAIR), "{broken", json.dumps({"prompt": "p", "chosen": ""})]
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 1 \(line 4\): not valid JSON"):
        load_rankings(f)
    lines[3] = json.dumps(PAIR)  # now the field check sees the last row: same numbering
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 2 \(line 5\): field 'chosen'"):
        load_rankings(f)


def test_a_row_over_the_size_limit_fails_naming_the_key(tmp_path):
    big = {**PAIR, "chosen": "x" * (2 << 20)}
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(PAIR) + "\n" + json.dumps(big) + "\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\): 2\.0 MB is larger than the 1 MB limit per row "
                                        r"\(config key data\.max_row_mb\)"):
        load_rankings(f)
    assert len(load_rankings(f, max_row_mb=3)) == 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([PAIR, big]), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet: row 1: 2\.0 MB is larger"):
        load_rankings(tmp_path / "d.parquet")
    cfg = load_config(None, [f"data.train={f}", "data.testbed=custom", "data.max_row_mb=0.5"])
    from rlhf_ray.data.loaders import load_split

    with pytest.raises(DataError, match="data.max_row_mb"):
        load_split(cfg, "train")


# ---- model references ------------------------------------------------------------------------------

@pytest.mark.parametrize("ref", ["runs/rm_bsr_gold/model", "./model", "/nowhere/model", "~/nowhere/m"])
def test_a_missing_local_path_is_an_error_naming_the_key_never_a_hub_id(ref, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config key 'reward\.models\[0\]': model path .* does not exist"):
        resolve_model(ref, "reward.models[0]")


def test_a_two_part_name_is_a_hub_id_unless_its_first_part_is_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model("runs/model", "model.name")


# ---- placement -------------------------------------------------------------------------------------

def _group(**kw) -> ActorGroupConfig:
    return ActorGroupConfig(**kw)


def test_strict_spread_with_more_workers_than_nodes_names_the_strategy_and_counts():
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    with pytest.raises(PlacementError, match=r"rm\.placement_strategy=STRICT_SPREAD puts each of rm\.num_workers=3 "
                                             r"actors on its own node, but only 2 node\(s\)"):
        check_placement({"rm": _group(num_workers=3, placement_strategy="STRICT_SPREAD")}, nodes)
    check_placement({"rm": _group(num_workers=2, placement_strategy="STRICT_SPREAD")}, nodes)  # fits


def test_strict_pack_gpus_and_totals_that_cannot_fit_are_named():
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    with pytest.raises(PlacementError, match=r"STRICT_PACK puts all rm\.num_workers=6 actors \(\{CPU: 3\}\)"):
        check_placement({"rm": _group(num_workers=6, placement_strategy="STRICT_PACK")}, nodes)
    check_placement({"rm": _group(num_workers=6, placement_strategy="PACK")}, nodes)  # 3 CPUs over 2 nodes: fits
    with pytest.raises(PlacementError, match=r"learner: one actor needs \{CPU: 0\.5, GPU: 1\}"):
        check_placement({"learner": _group(num_gpus=1)}, nodes)
    with pytest.raises(PlacementError, match=r"need 4\.5 CPU at once \(rollout\.num_workers x rollout\.num_cpus = 4, "
                                             r"scorer\.num_workers x scorer\.num_cpus = 0\.5\)"):
        check_placement({"rollout": _group(num_workers=4, num_cpus=1), "scorer": _group()}, nodes)


@pytest.fixture
def ray_not_started(monkeypatch):
    """As on a fresh `rlhf-ray` process: no Ray instance yet (the session's may be up when integration tests
    ran first), and starting one fails the test."""
    import ray

    def not_initialized():
        return False

    def refuse_to_start(*args, **kwargs):
        raise AssertionError("the command started Ray")

    monkeypatch.setattr(ray, "is_initialized", not_initialized)
    monkeypatch.setattr(ray, "init", refuse_to_start)


def test_an_autoscaling_cluster_is_not_checked_against_todays_nodes(ray_not_started):
    from rlhf_ray.placement import cluster_nodes
    from rlhf_ray.config import RayConfig

    assert cluster_nodes(RayConfig(autoscaling=True)) is None
    check_placement({"learner": _group(num_workers=16, num_gpus=8, placement_strategy="STRICT_SPREAD")}, None)
    assert cluster_nodes(RayConfig(num_cpus=3)) == [{"CPU": 3.0}]  # the local instance connect() would start


def test_train_rm_check_fails_on_a_placement_before_ray_starts(tmp_path, capsys, ray_not_started):
    code = main(["train-rm", "--config", str(ROOT / "configs/rm_bt_gold.yaml"), "--check", f"data.dir={tmp_path}",
                 f"output_dir={tmp_path / 'out'}", "prepare.sizes.gold_train_prompts=16",
                 "prepare.sizes.gold_valid_prompts=4", "rm.num_workers=4", "rm.placement_strategy=STRICT_SPREAD"])
    assert code == 2 and "STRICT_SPREAD" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- resume and flags ------------------------------------------------------------------------------

def _train_rm_check(tmp_path, *extra):
    return main(["train-rm", "--config", str(ROOT / "configs/rm_bt_gold.yaml"), "--check", f"data.dir={tmp_path}",
                 f"output_dir={tmp_path / 'out'}", "prepare.sizes.gold_train_prompts=16",
                 "prepare.sizes.gold_valid_prompts=4", *extra])


def test_resume_with_nothing_to_resume_from_fails_and_auto_says_it_starts_fresh(tmp_path, capsys):
    assert _train_rm_check(tmp_path, "--resume") == 2
    err = capsys.readouterr().err
    assert "--resume: no complete checkpoint under" in err and str(tmp_path / "out" / "checkpoints") in err
    assert _train_rm_check(tmp_path, "resume=auto") == 0
    captured = capsys.readouterr()
    assert [x for x in captured.err.splitlines() if "resume=auto" in x] == [
        f"[rlhf-ray] resume=auto: no checkpoint under {tmp_path / 'out' / 'checkpoints'}, starting fresh"]
    assert captured.out.strip().splitlines()[-1].startswith("[train-rm] check passed")


@pytest.mark.parametrize("argv", [
    ["train-rm", "--config", "configs/rm_bt_gold.yaml", "--resum"],  # an abbreviation is not --resume
    ["rloo", "--conf", "configs/rloo_smollm2.yaml"],
    ["train-rm"],  # no --config: no default full run into runs/default
    ["rloo", "rloo.steps=2"],
    ["experiment"],
])
def test_abbreviated_flags_and_a_missing_config_are_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --resum" in err or "unrecognized arguments: --conf" in err or "--config" in err


def test_missing_config_is_named(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-rm"])
    assert "the following arguments are required: --config" in capsys.readouterr().err


def test_help_shows_the_commands_main_keys_with_defaults_and_an_example(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["rloo", "--help"])
    text = capsys.readouterr().out
    import re

    assert re.search(r"rloo\.prompts_per_step +8\n", text) and re.search(r"learner\.beta +0\.05\n", text)
    assert "example:\n  rlhf-ray rloo --config configs/rloo_smollm2.yaml" in text


# ---- output ----------------------------------------------------------------------------------------

def test_the_eta_counts_steady_steps_not_the_warm_up():
    # step 1 took 30 s (loading, compiling), steps 2 and 3 took 3 s each
    assert steady_rate(1, 30.0, 0, 0.0, None) == pytest.approx(1 / 30)
    assert steady_rate(3, 36.0, 0, 0.0, (1, 30.0)) == pytest.approx(1 / 3)
    assert steady_rate(5, 20.0, 4, 10.0, None) == pytest.approx(0.1)  # a resumed run's first step


def test_the_rotary_reload_warning_is_dropped_and_other_layers_are_not():
    def record(layer):
        return logging.LogRecord(RELOAD_LOGGER, logging.WARNING, "", 0, "%s: Failed to load weights", (layer,), None)

    keep = DerivedBufferFilter()
    assert not keep.filter(record("RotaryEmbedding")) and not keep.filter(record("Llama3RotaryEmbedding"))
    assert keep.filter(record("QKVParallelLinear")) and keep.filter(record("VocabParallelEmbedding"))


def test_readme_rloo_command_on_a_fresh_clone_names_the_missing_reward_model_and_its_step(tmp_path, monkeypatch,
                                                                                       capsys):
    """`rlhf-ray rloo --config configs/rloo_smollm2.yaml` before `train-rm`: an error at once, naming the key."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    assert main(["rloo", "--config", "configs/rloo_smollm2.yaml", "--check", "policy.name=tiny-llama"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "config key 'reward.models[0]': model path 'runs/rm_bsr_gold/model' does not exist" in err
    assert "rlhf-ray train-rm" in err
    assert main(["rloo", "--config", "configs/rloo_smollm2.yaml", "--check", "policy.name=tiny-llama",
                 "rloo.prompts_per_step=1000", "reward.models=[tiny-llama]"]) == 2
    assert "config key 'rloo.prompts_per_step': 1000 is more than the 256 prompts" in capsys.readouterr().err
