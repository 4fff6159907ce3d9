"""The frozen-vs-online experiment's measures (scripts/online_vs_frozen.py) on run folders made up so
the answers are known: online ends 0.1 gold v2 above frozen on every prompt at the same length, frozen
falls from its best point while its proxy rises, online's reward model ranks late samples better."""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import online_vs_frozen  # noqa: E402

PROMPTS = 16


def _write(root: Path, arm: str, seed: int, gold_by_step: list[float], proxy_by_step: list[float],
           tau: float, rng) -> None:
    folder = root / "rloo" / f"bsr-{arm}-s{seed}"
    folder.mkdir(parents=True)
    noise = rng.normal(0, 0.01, PROMPTS)
    curve = [{"step": 4 * i, "kl": 1.5 * i, "gold_v2": g, "proxy": p,
              "per_prompt": {"gold_v2": list(g + noise), "proxy": [p] * PROMPTS, "length": [20.0] * PROMPTS,
                             "kl": [1.5 * i] * PROMPTS}}
             for i, (g, p) in enumerate(zip(gold_by_step, proxy_by_step))]
    summary = {"held_out_curve": curve, "online_rm": {"labels_spent": 288}}
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [{"step": s, "rm_tau_per_prompt": list(tau + rng.normal(0, 0.05, 8))} for s in range(1, 13)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_pairing_check_holds_when_the_arms_start_from_the_same_samples(tmp_path):
    for arm in ("online", "frozen"):  # the same noise: the same step-0 samples
        _write(tmp_path, arm, 0, [0.50, 0.55, 0.58, 0.60], [0.0, 0.2, 0.3, 0.4], 0.4, np.random.default_rng(1))
    seed = online_vs_frozen.main([str(tmp_path), "--out", str(tmp_path / "out")])["seeds"]["0"]
    assert seed["pairing_check"] == {"step0_max_abs_gold_v2_difference": 0.0, "holds": True}


def test_the_measures_find_what_the_runs_were_made_to_show(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path, "online", 0, [0.50, 0.55, 0.58, 0.60], [0.0, 0.2, 0.3, 0.4], 0.4, rng)
    _write(tmp_path, "frozen", 0, [0.50, 0.56, 0.53, 0.50], [0.0, 0.3, 0.5, 0.7], 0.1, rng)
    result = online_vs_frozen.main([str(tmp_path), "--out", str(tmp_path / "out")])
    seed = result["seeds"]["0"]
    gain = seed["online_minus_frozen_gold_v2"]
    assert abs(gain["value"] - 0.10) < 0.01 and gain["ci_low"] > 0.08 and gain["n"] == PROMPTS
    frozen = seed["frozen_over_optimisation"]
    assert frozen["best_step"] == 4 and frozen["over_optimises"] and frozen["last_minus_best"]["ci_high"] < 0
    assert not seed["online_over_optimisation"]["over_optimises"]
    assert seed["online_minus_frozen_tau_late"]["ci_low"] > 0.2
    assert seed["online_minus_frozen_length"]["value"] == 0
    # each arm's noise is the same at every step here, so the difference of the changes is exact
    assert abs(seed["online_minus_frozen_change_gold_v2"]["value"] - 0.10) < 1e-9
    # no length difference: the gain at no length difference is the gain
    assert abs(seed["online_minus_frozen_gold_v2_at_no_length_difference"]["value"] - gain["value"]) < 1e-9
    # the arms' step-0 samples were separate draws here (noise of their own): the pairing check fails
    assert not seed["pairing_check"]["holds"] and seed["pairing_check"]["step0_max_abs_gold_v2_difference"] > 0
    assert result["missing"] == ["online-s1", "frozen-s1", "online-s2", "frozen-s2", "gold-s0", "length-s0"]
    assert (tmp_path / "out" / "online_vs_frozen.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "online_vs_frozen.json").read_text())["seeds"]["0"]
