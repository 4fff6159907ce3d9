"""The pipeline report's section on online reward training (issue 27): for each RLOO run with
`online_rm` on, what its refreshes did (versions, labels spent, the reward model's Kendall tau with
the gold on a refreshed step's samples before and after its refresh, their cost), and beside it the
committed frozen-vs-online experiment (`docs/results/exp_online/online_vs_frozen.json`, written by
`scripts/online_vs_frozen.py`), so one run is read against three seeds' paired results."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "results" / "exp_online" / "online_vs_frozen.json"


def _mean(values: list[float]) -> float:
    kept = [v for v in values if v == v]  # a step whose groups all tie has no tau (nan)
    return float(np.mean(kept)) if kept else float("nan")


def refresh_numbers(steps: list[dict], online: dict) -> dict:
    """One run's refreshes, from its per-step metrics and its summary's `online_rm`."""
    refreshed = [s for s in steps if "rm_refreshed_to" in s]
    return {"schedule": online.get("schedule", "online"), "version": online.get("version", 0),
            "labels_spent": online.get("labels_spent", 0),
            "refreshes": len(refreshed) or len(online.get("upfront_refreshes", [])),
            "skipped": sum(1 for s in steps if s.get("rm_refresh_skipped")),
            "tau_served": _mean([s["rm_tau"] for s in steps if "rm_tau" in s]),
            "tau_before": _mean([s["rm_tau_before"] for s in refreshed]),
            "tau_after": _mean([s["rm_tau_after"] for s in refreshed]),
            "refresh_s": _mean([s["rm_refresh_s"] for s in refreshed]),
            "wait_s": sum(s.get("rm_wait_s", 0.0) for s in steps)}


def _ci(d: dict, digits: int = 3) -> str:
    return f"{d['value']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def _num(value: float, fmt: str) -> str:
    return "–" if value != value else format(value, fmt)


def committed_lines(path: Path = COMMITTED) -> list[str]:
    """The committed experiment, seed by seed (its plan says which parts ran and how to read them)."""
    if not path.exists():
        return [f"No committed frozen-vs-online results at `{path}` to put this run beside."]
    seeds = json.loads(path.read_text())["seeds"]
    lines = ["The committed frozen-vs-online experiment beside it (`docs/results/exp_online/`, plan "
             "`docs/experiments/online_rm_plan.md`; online minus frozen at the last step, 95% CIs "
             "paired by held-out prompt, n prompts):", "",
             "| seed | gold v2 | gold v2 at no length difference | reply length | tau on late samples "
             "| frozen over-optimises |", "|---|---|---|---|---|---|"]
    for seed, s in sorted(seeds.items()):
        lines.append(f"| {seed} | {_ci(s['online_minus_frozen_gold_v2'])} (n = "
                     f"{s['online_minus_frozen_gold_v2']['n']}) | "
                     f"{_ci(s['online_minus_frozen_gold_v2_at_no_length_difference'])} | "
                     f"{_ci(s['online_minus_frozen_length'], 1)} | {_ci(s['online_minus_frozen_tau_late'])} | "
                     f"{'yes' if s['frozen_over_optimisation']['over_optimises'] else 'no'} |")
    return lines


def online_rm_lines(runs: list[dict], committed: Path = COMMITTED) -> list[str]:
    """runs: the report's RLOO runs (`label`, and `online_rm`: `refresh_numbers` of those that
    trained online); [] when none did."""
    online = [r for r in runs if r.get("online_rm")]
    if not online:
        return []
    lines = ["## Online reward training", "",
             "The reward model refreshed inside the RLOO job on the policy's own samples (`online_rm`): "
             "tau is the reward model's Kendall tau with the labeller's gold within each prompt's "
             "samples: the served model's on every step's samples (mean over steps), and on a "
             "refreshed step's samples before and after its refresh (mean over refreshes; `upfront` "
             "refreshes before step 1, on the initial policy's samples); wait: the driver's time "
             "waiting for refreshes, what they cost the run.", "",
             "| run | schedule | refreshes (skipped) | final version | labels spent | tau, served | "
             "tau before refresh | tau after | refresh (s, mean) | wait (s, total) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in online:
        n = r["online_rm"]
        lines.append(f"| {r['label']} | {n['schedule']} | {n['refreshes']} ({n['skipped']}) | "
                     f"{n['version']} | {n['labels_spent']} | {_num(n['tau_served'], '+.2f')} | "
                     f"{_num(n['tau_before'], '+.2f')} | {_num(n['tau_after'], '+.2f')} | "
                     f"{_num(n['refresh_s'], '.1f')} | {n['wait_s']:.0f} |")
    return lines + [""] + committed_lines(committed) + [""]
