"""The benchmark scripts run end to end with tiny settings: rlhf-ray and the peer measured side by
side, JSON + table + PNG written. (The numbers the README quotes come from the full settings.)"""
import json

import pytest

pytestmark = pytest.mark.slow


def test_benchmarks_run_quick_and_compare_the_same_work(tmp_path, capsys):
    from benchmarks.run import main

    report = main(["--quick", "--repeats", "1", "--only", "rm", "rollout", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "ratios.png").stat().st_size > 0
    assert [r["name"] for r in saved["rows"]] == [r["name"] for r in report["rows"]]
    assert all(r["ratio"]["median"] > 0 for r in saved["rows"])
    rm = saved["results"]["rm"]["tiny-llama"]
    # the same pairs, model initialisation and optimizer on both sides: the loss curves agree
    assert rm["max_loss_difference_vs_trl"] < 1e-4
    assert saved["results"]["rollout"]["runs"][0]["hf"]["16"]["tokens_per_s"] > 0
    assert "RM pairs/s vs TRL RewardTrainer (tiny-llama)" in capsys.readouterr().out
