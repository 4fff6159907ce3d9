"""scripts/pipeline_v2.py's measures (docs/experiments/pipeline_v2_plan.md) on made-up runs whose answers
are known: the pooled change per reward model, its reading, and a reward model against BT paired by
prompt and seed with the smallest detectable difference."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import pipeline_v2  # noqa: E402


def _run(label, seed, changes):
    per_prompt = {f"p{i}": c for i, c in enumerate(changes)}
    gain = sum(changes) / len(changes)
    return {"reward_model": label, "seed": seed, "run": f"{label}-s{seed}",
            "gold_v2": {"gain": gain, "ci_low": gain - 0.01, "ci_high": gain + 0.01},
            "gold_v2_at_no_length_change": {"intercept": gain / 2},
            "per_prompt_change": {k: per_prompt for k in ("gold_v2", "gold", "length", "proxy")}}


def test_pooled_changes_readings_and_differences_paired_by_prompt_and_seed():
    runs = [_run("bt", 0, [0.1, 0.1, 0.1, 0.1]), _run("bt", 1, [0.0, 0.0, 0.0, 0.0]),
            _run("bsr", 0, [0.2, 0.2, 0.2, 0.2]), _run("bsr", 1, [0.0, 0.1, 0.0, 0.1])]
    models = pipeline_v2.by_reward_model(runs)
    assert models["bt"]["pooled_gold_v2"]["value"] == pytest.approx(0.05)
    assert models["bt"]["gold_v2_gain_sample_sd"] == pytest.approx(math.sqrt(0.005))  # n - 1
    assert models["bt"]["reading"] == "above 0" and models["bt"]["n_seeds"] == 2
    diff = pipeline_v2.against(runs)["bsr - bt"]
    assert diff["per_seed"] == pytest.approx([0.1, 0.05]) and diff["difference"]["value"] == pytest.approx(0.075)
    assert diff["smallest_detectable_from_seeds"] == pytest.approx(2.8 * math.sqrt(0.00125) / math.sqrt(2))
    assert diff["reading"] == "above 0"
