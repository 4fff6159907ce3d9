"""The chaos soak in CI (issue 28): a 30-step RLOO run with overlapped generation on a local Ray instance
with real actors, while a seeded killer sends kill -9 to a rollout worker, a scorer and a learner rank
(scripts/chaos_soak.py). Ray restarts the rollout worker and the scorer and their work is retried; the
dead learner makes the driver restart the run from its newest checkpoint. The log must hold every step
once, every prompt batch the uninterrupted run draws once and in order, and every sample once."""
import json
import sys
from pathlib import Path

import pytest

from rlhf_ray.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import chaos_soak  # noqa: E402

pytestmark = pytest.mark.slow


def test_a_seeded_killer_over_thirty_steps_loses_and_repeats_nothing(ray_local, testbeds, tmp_path, capsys):
    kills = chaos_soak.schedule(30, 6, seed=0)
    assert {role for _, role in kills} == set(chaos_soak.ROLES)  # every role at least once
    cfg = load_config(None, [*chaos_soak.TINY, f"output_dir={tmp_path}", f"data.dir={testbeds}",
                             "rloo.steps=30", "learner.max_restarts=1"])
    report = chaos_soak.soak(cfg, kills, seed=0)
    assert report["error"] is None, report["error"]
    assert chaos_soak.check(cfg, report) == []
    summary = report["summary"]
    assert summary["steps"] == 30 and len(summary["learner_restarts"]) == 1
    assert all(k["to_next_row_s"] is not None for k in report["kills"])
    err = capsys.readouterr().err
    assert "(learner restart 1 of 1)" in err and "was restarted" in err  # said, in a line each
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    recovery = chaos_soak.recovery_by_role(report, rows)["recovery_s"]
    assert set(recovery) == set(chaos_soak.ROLES)
