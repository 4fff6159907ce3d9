"""Issue 28 (5): every unreadable input fails before anything starts, with one `error:` line naming the
file, key or flag (no traceback): configs that are folders, binary, images, not YAML or not a mapping
(for `plan` too), data paths that are folders, and machine values that are not finite and positive."""
from pathlib import Path

import pytest

from rlhf_ray.cli import main

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


def _one_error_line(capsys, *named: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and ": error: " in err, err
    for name in named:
        assert name in err, (name, err)
    return err


@pytest.mark.parametrize("command", ["rloo", "train-rm", "plan"])
@pytest.mark.parametrize("kind,content,says", [
    ("folder", None, "is a folder"),
    ("binary", bytes(range(256)) * 4, "is not text"),
    ("png", PNG, "is not text"),
    ("not_yaml", b"a: [1, 2\nb: : :\n", "is not valid YAML"),
    ("a_list", b"- 1\n- 2\n", "must hold a mapping"),
])
def test_a_config_that_cannot_be_read_is_one_line_naming_the_file(tmp_path, capsys, command, kind, content,
                                                                   says):
    path = tmp_path / f"{kind}.yaml"
    path.mkdir() if content is None else path.write_bytes(content)
    assert main([command, "--config", str(path)]) == 2
    _one_error_line(capsys, str(path), says)


@pytest.mark.parametrize("name", ["x.jsonl", "prompts"])
def test_a_folder_as_the_prompts_names_the_key(tmp_path, capsys, name):
    (tmp_path / name).mkdir()
    assert main(["rloo", "--config", str(ROOT / "configs/rloo_smollm2.yaml"), f"rloo.prompts={tmp_path / name}",
                 f"output_dir={tmp_path / 'out'}", "--check"]) == 2
    _one_error_line(capsys, "rloo.prompts", "is a folder")


def test_a_folder_as_rm_data_names_the_key(tmp_path, capsys):
    (tmp_path / "train.jsonl").mkdir()
    assert main(["train-rm", "--config", str(ROOT / "configs/rm_bt_gold.yaml"), "data.testbed=custom",
                 f"data.train={tmp_path / 'train.jsonl'}", f"output_dir={tmp_path / 'out'}", "--check"]) == 2
    _one_error_line(capsys, "data.train", "is a folder")


@pytest.mark.parametrize("flag,value", [("--gpu-memory-gb", "nan"), ("--gpu-memory-gb", "inf"),
                                        ("--gpu-memory-gb", "-1"), ("--gpu-memory-gb", "0"),
                                        ("--gpus-per-node", "0"), ("--gpus-per-node", "-2"),
                                        ("--host-memory-gb", "-5"), ("--host-memory-gb", "nan")])
def test_plan_takes_only_finite_positive_machine_values(capsys, flag, value):
    assert main(["plan", "--config", str(ROOT / "configs/rloo_smollm2.yaml"), flag, value]) == 2
    _one_error_line(capsys, flag, "finite number above 0")


def test_overrides_may_follow_a_flag(tmp_path, capsys):
    """`k=v --check k2=v2`: both overrides apply (the second used to be an unrecognised argument)."""
    assert main(["rloo", "--config", str(ROOT / "configs/rloo_smollm2.yaml"), "rloo.prompts=nope.jsonl",
                 "--check", "rloo.steps=0"]) == 2
    err = capsys.readouterr().err  # validated before the prompts are looked for
    assert "config key 'rloo.steps'" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["rloo", "--config", str(ROOT / "configs/rloo_smollm2.yaml"), "--check", "--nope"])
    assert "unrecognized arguments: --nope" in capsys.readouterr().err
