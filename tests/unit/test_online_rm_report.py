"""The pipeline report's online reward-training section (issue 27, item 7): each online run's
refreshes read off its metrics, and the committed frozen-vs-online results put beside it."""
import json
import math

import pytest

from rlhf_ray.report.online_rm_report import COMMITTED, committed_lines, online_rm_lines, refresh_numbers


def _steps() -> list[dict]:
    return [{"step": 1, "rm_tau": 0.2, "rm_refreshed_to": 1, "rm_tau_before": 0.2, "rm_tau_after": 0.6,
             "rm_refresh_s": 4.0, "rm_wait_s": 5.0},
            {"step": 2, "rm_tau": float("nan"), "rm_refresh_skipped": "rm-trainer-online-0 died",
             "rm_wait_s": 1.0},
            {"step": 3, "rm_tau": 0.4, "rm_refreshed_to": 2, "rm_tau_before": float("nan"),
             "rm_tau_after": 0.8, "rm_refresh_s": 6.0, "rm_wait_s": 2.0}]


def test_refreshes_are_counted_and_a_step_without_a_tau_is_left_out_of_the_means():
    n = refresh_numbers(_steps(), {"schedule": "online", "version": 2, "labels_spent": 48})
    assert (n["refreshes"], n["skipped"], n["version"], n["labels_spent"]) == (2, 1, 2, 48)
    assert n["tau_served"] == pytest.approx(0.3) and n["tau_before"] == pytest.approx(0.2)
    assert n["tau_after"] == pytest.approx(0.7) and n["refresh_s"] == pytest.approx(5.0)
    assert n["wait_s"] == pytest.approx(8.0)
    upfront = refresh_numbers([{"step": 1, "rm_tau": 0.5}], {"schedule": "upfront", "version": 3,
                                                             "upfront_refreshes": [{}, {}, {}]})
    assert upfront["refreshes"] == 3 and math.isnan(upfront["tau_after"])


def _seed(gain: float) -> dict:
    ci = {"value": gain, "ci_low": gain - 0.04, "ci_high": gain + 0.04, "n": 64}
    return {"online_minus_frozen_gold_v2": ci, "online_minus_frozen_gold_v2_at_no_length_difference": ci,
            "online_minus_frozen_length": {**ci, "value": -5.0}, "online_minus_frozen_tau_late": ci,
            "frozen_over_optimisation": {"over_optimises": gain > 0.05}}


def test_the_section_puts_the_run_beside_every_committed_seed(tmp_path):
    path = tmp_path / "online_vs_frozen.json"
    path.write_text(json.dumps({"seeds": {"1": _seed(0.01), "0": _seed(0.07)}}))
    online = refresh_numbers(_steps(), {"schedule": "online", "version": 2, "labels_spent": 48})
    runs = [{"label": "bsr", "online_rm": online},
            {"label": "bt"}]  # trained nothing online: not in the table
    lines = online_rm_lines(runs, path)
    assert lines[0] == "## Online reward training"
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[1].startswith("| bsr | online | 2 (1) | 2 | 48 | +0.30 | +0.20 | +0.70 | 5.0 | 8 |")
    seeds = [row for row in rows if row.startswith(("| 0 |", "| 1 |"))]
    assert seeds[0].startswith("| 0 | +0.070 [+0.030, +0.110] (n = 64)") and seeds[0].endswith("| yes |")
    assert seeds[1].startswith("| 1 | +0.010") and seeds[1].endswith("| no |")
    assert online_rm_lines(runs[1:], path) == []


def test_a_missing_committed_file_is_said_and_the_repository_holds_one(tmp_path):
    assert "No committed frozen-vs-online results" in committed_lines(tmp_path / "none.json")[0]
    rows = [line for line in committed_lines() if line.startswith("| ") and line[2].isdigit()]
    assert COMMITTED.exists() and rows and rows[0].startswith("| 0 |")  # a row per committed seed


def test_the_pipeline_report_reads_each_online_run_once_into_its_table_and_numbers(tmp_path):
    from rlhf_ray.report.pipeline_report import write_pipeline_report

    run_dir = tmp_path / "rloo" / "bsr-online"
    run_dir.mkdir(parents=True)
    rows = [{**s, "split": "train", "proxy_reward_mean": 0.1, "gold_reward_mean": 0.5, "kl": 0.0,
             "response_length": 30.0}
            for s in _steps()]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"online_rm": {"schedule": "online", "version": 2, "labels_spent": 48}}
    rm = [{"variant": "bsr", "seed": 0, "model": "m", "eval": None}]
    run = {"reward_model": "bsr-online", "seed": 0, "run_dir": run_dir, "summary": summary}
    report = write_pipeline_report(tmp_path / "out", rm, {}, [run], 1.0, "test")
    numbers = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert numbers["rloo"][0]["online_rm"]["refreshes"] == 2
    assert "| bsr-online | online | 2 (1) | 2 | 48 |" in report.read_text()
