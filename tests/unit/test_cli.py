"""The CLI and the README stay in step (ANCHORS #10: docs that drift from the CLI)."""
import re
from pathlib import Path

from rlhf_ray.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_bad_override_exits_2_and_names_the_key(capsys):
    assert main(["train-rm", "--config", str(ROOT / "configs/rm_bt_gold.yaml"), "rm.num_workres=2"]) == 2
    assert "unknown config key 'rm.num_workres'" in capsys.readouterr().err


def test_missing_config_file(capsys):
    assert main(["train-rm", "--config", "configs/nope.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_prepare_writes_the_testbeds(tmp_path, capsys):
    overrides = [f"data.dir={tmp_path}", "prepare.sizes.gold_train_prompts=8", "prepare.sizes.gold_valid_prompts=4",
                 "prepare.sizes.collapse_train_prompts=4", "prepare.sizes.collapse_eval_prompts=2"]
    # without the policy's samples (tests/integration/test_policy_samples.py): no Ray, no policy in the fast tier
    assert main(["prepare", "--config", str(ROOT / "configs/demo.yaml"), "prepare.testbeds=[gold, collapse]",
                 "prepare.policy_samples.enabled=false", *overrides]) == 0
    for name in ("gold/train.parquet", "gold/val4.parquet", "gold/prompts.parquet", "collapse/eval.parquet"):
        assert (tmp_path / name).exists()


def test_readme_commands_name_real_commands_and_configs():
    used = set(re.findall(r"rlhf-ray ([a-z][a-z-]+)", README))
    assert used and used <= set(COMMANDS), used - set(COMMANDS)
    for config in set(re.findall(r"configs/[\w.]+\.yaml", README)):
        assert (ROOT / config).exists(), config


def test_readme_first_commands_set_up_then_run_the_demo_and_the_ci_test_command():
    """The quick start's two commands: each sets up first; the first's rlhf-ray arguments are a demo the
    CLI's own parser accepts; the second is the very command .ci/run runs for the whole suite."""
    import shlex

    from rlhf_ray.cli import build_parser

    block = re.findall(r"```bash\n(.*?)```", README, re.S)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(commands) == 2 and all(c.startswith("bash scripts/setup.sh && ") for c in commands), commands
    demo = shlex.split(commands[0].split("&&", 1)[1])
    assert demo[0] == ".venv/bin/rlhf-ray" and build_parser().parse_args(demo[1:]).command == "demo"
    tests = commands[1].split("&&", 1)[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert any(line.endswith(tests) and "tests" in tests.split() for line in ci_lines), (tests, ci_lines)
